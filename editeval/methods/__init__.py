"""Editing methods: one module each, registered with `editeval.methods.base.register_method`."""

from editeval.methods.base import Backup, HParams, available_methods, get_method, restore

__all__ = ["Backup", "HParams", "available_methods", "get_method", "restore"]
