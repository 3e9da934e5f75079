"""What counts as the user's input being wrong (a config, a file, an annotation, an image, a
checkpoint), as opposed to a bug: :class:`InputError` and its kinds. The tools print such an
error as one line naming the file, key or value, and exit with 2 (``--debug``: the
traceback); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import re


class InputError(ValueError):
    """Bad input from the user; the message names the file, key or value at fault."""


class UnknownNameError(InputError, KeyError):
    """A name that is not registered (a backbone, a data set, a format); lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OptionError(InputError, TypeError):
    """An option a builder does not take."""


class FileReadError(InputError, OSError):
    """A data file (an image, a CIFAR batch) that cannot be read or decoded; names the file."""


def error_line(e: BaseException) -> str:
    """The message of ``e`` as one line; for an error re-raised from a DataLoader worker, the
    original error's own message rather than the worker's traceback."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = re.sub(r"^[\w.]+: ", "", last.strip())
    return " ".join(text.split()) or type(e).__name__
