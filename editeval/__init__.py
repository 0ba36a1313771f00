"""editeval: benchmarks, reference editing methods and a leaderboard for knowledge editing."""

__version__ = "0.1.0"
