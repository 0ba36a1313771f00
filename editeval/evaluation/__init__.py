"""Evaluation: the evaluator, metrics and the results record."""
