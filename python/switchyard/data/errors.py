"""The one exception type of the data pipeline.

A ``ValueError`` so that callers catching bad-input errors (as for ``ConfigError``) catch it
too; every message names the file (and line) or the config key at fault.
"""


class DataError(ValueError):
    """Bad data input: a missing or malformed file, or data that does not fit the config."""
