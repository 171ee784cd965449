"""The one exception type that reaches the user as a single clear line and exit code 2."""


class BenchError(Exception):
    """A problem with the user's input or environment (bad option, missing file, unloadable model)."""
