"""The one exception type the command line turns into a one-line message (never a traceback),
the function that prints that line (for file-system failures too), and the input checks the
entry points share."""


class CETDError(Exception):
    """Bad input or environment, explained for the terminal: name the file and the reason."""

    exit_code = 2


def check_requirement(requirement: str) -> str:
    """``requirement`` if it holds any text; a CETDError otherwise (an empty query embeds to
    the tokenizer's special tokens alone and would rank the app by noise)."""
    if not requirement.strip():
        raise CETDError("the requirement is empty: say what the code should do, e.g. "
                        "'parse JSON strings into Python objects'")
    return requirement


def check_output_dir(path: str) -> str:
    """``path`` unless it names something other than a folder: checked before any work, so a
    typo'd ``--out``/``--output-dir`` costs a line, not a run that fails when it saves."""
    from pathlib import Path

    if Path(path).exists() and not Path(path).is_dir():
        raise CETDError(f"{path}: exists and is not a folder; outputs go to a folder")
    return path


def report(err: "CETDError | OSError") -> int:
    """Print the one terminal line for ``err`` and return the exit code: a CETDError's own
    message, or for a file-system failure (a cache path that is a file, a folder without write
    permission, a full disk: the environment, not a bug) the path and the system's reason."""
    import sys

    if isinstance(err, CETDError):
        line, code = str(err), err.exit_code
    else:
        line = f"{err.filename}: {err.strerror or err}" if err.filename is not None else str(err)
        code = CETDError.exit_code
    print(f"error: {line}", file=sys.stderr)
    return code
