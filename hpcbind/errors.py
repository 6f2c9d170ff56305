"""Errors a user can cause and fix.

An ``HpcbindError`` carries one line: what failed, on which path or value, and how to fix it.
The CLI prints it without a traceback and exits 255, as Apptainer does. Anything else that
escapes is a bug and keeps its traceback.
"""

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
