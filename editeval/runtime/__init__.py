"""Runtime: paths, models, architectures, hooks, processes, the Hub (imports nothing above it)."""
