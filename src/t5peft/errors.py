"""The base class of every error a user can cause.

The command line turns a :class:`T5PeftError` into one line on standard error (exit 2); any other exception
is a bug and is reported as one, with the traceback under ``-v``. Each layer defines its own subclasses next
to the code that raises them (``ConfigError``, ``CheckpointError``, ``DataError``, ``MethodConfigError``, ...);
they also derive from ``ValueError`` (or ``OSError`` for the Hub) so callers that catch those keep working.
"""


class T5PeftError(Exception):
    """A problem with the user's input, files, settings or environment: the message says what and where."""
