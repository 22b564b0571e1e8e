"""The one error type the CLI reports: what is wrong and how to fix it, never a traceback."""

from __future__ import annotations


class SlurmlabError(Exception):
    """A refusal or failure with its fix in the message; exit_code 2 means nothing was changed."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
