"""The one error type users see: the CLI prints its message as a single line and exits 2."""


class EditevalError(Exception):
    """A problem with the user's input (file, schema, name, ...), reported without a traceback."""
