"""Errors a user can cause and fix.

An ``HpcbindError`` carries one line: what failed, on which path or value, and how to fix it.
The CLI prints it without a traceback and exits 255, as Apptainer does. Anything else that
escapes is a bug and keeps its traceback.
"""

import sys

EXIT_USER_ERROR = 255


class HpcbindError(Exception):
    """A failure the user can act on; ``str()`` is the whole message, one line."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what
        self.fix = fix
        super().__init__(what)

    def __str__(self) -> str:
        line = f"{self.what}; {self.fix}" if self.fix else self.what
        return " ".join(line.split())


# How much hpcrun says, as Apptainer's global flags set it (its sylog levels): -s/--silent
# errors only, -q/--quiet warnings and errors, -v/--verbose and -d/--debug more.
SILENT, QUIET, NORMAL, VERBOSE, DEBUG = -3, -1, 1, 4, 5


def message_level(debug: bool = False, verbose: bool = False, quiet: bool = False,
                  silent: bool = False) -> int:
    """Apptainer's precedence when several are given: debug, verbose, quiet, silent."""
    return (DEBUG if debug else VERBOSE if verbose else QUIET if quiet else SILENT if silent
            else NORMAL)


def warn(level: int, message: str) -> None:
    """One line on standard error, unless -s/--silent."""
    if level > SILENT:
        print(f"hpcrun: warning: {message}", file=sys.stderr, flush=True)


def note(level: int, message: str) -> None:
    """One line on standard error, unless -q/--quiet or -s/--silent."""
    if level >= NORMAL:
        print(f"hpcrun: note: {message}", file=sys.stderr, flush=True)
