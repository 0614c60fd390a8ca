"""One exception type for every bad input a user can fix (a path, a file, a parameter, a shape).

The CLI and ``sftnb run`` print it as a single line and exit non-zero; anything else is a bug and keeps
its traceback.
"""


class SftnbError(Exception):
    """A user-facing error: the message alone tells what is wrong and with which input."""
