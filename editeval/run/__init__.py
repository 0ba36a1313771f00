"""The one run pipeline (`editeval.run.session`): edit runs (`editing`, with its `modes`) and
checkpoint scoring (`scoring`) share its session, evaluator and record writer."""
