"""The base of the project's own errors.

Every error ft-assets raises about its input (config, data, models, metrics, tracking, a pipeline phase)
derives from :class:`FtAssetsError`, and its message names the file, section, key, row or value at fault:
``except FtAssetsError`` separates a problem the user can fix from a bug.
"""


class FtAssetsError(Exception):
    """A problem with what the user gave ft-assets; the message says what is at fault and where."""
