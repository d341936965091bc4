"""Errors every entry point maps to one line on stderr."""


class UsageError(ValueError):
    """Bad input: printed as one line, exit code 2."""
