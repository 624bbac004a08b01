"""The one exception type the command line turns into a one-line message (never a traceback)."""


class CETDError(Exception):
    """Bad input or environment, explained for the terminal: name the file and the reason."""

    exit_code = 2
