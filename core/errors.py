"""The one exception type for a user's mistake.

A :class:`UserError` carries a single line that names the problem and the fix. Entry points
print it without a traceback and exit with status 2; anything else is a bug and keeps its
traceback.
"""


class UserError(ValueError):
    """Bad input: a config value, a model path, a data file. ``str(err)`` is one line."""
