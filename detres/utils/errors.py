"""What counts as the user's input being wrong (a config, a file, an annotation, an image, a
checkpoint), as opposed to a bug: :class:`InputError` and its kinds. The tools print such an
error as one line naming the file, key or value, and exit with 2 (``--debug``: the
traceback); anything else is a bug and keeps its traceback."""

from __future__ import annotations


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
