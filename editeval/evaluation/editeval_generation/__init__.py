"""The generation scorers as a Hugging Face `evaluate` metric module: ``evaluate.load(PATH)`` with
``PATH = editeval.evaluation.editeval_generation.PATH`` (offline: it is a local folder)."""

from pathlib import Path

PATH = str(Path(__file__).resolve().parent)
