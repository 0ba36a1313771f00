"""The editing methods' public toolkit: locating and replaying layers, key statistics, artifacts, editor training."""
