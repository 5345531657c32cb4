"""The one exception type for bad user input (files, options, models): its message is the whole
one-line report an entry point prints before exiting with status 2."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message names the value (and file and line where there is one)."""
