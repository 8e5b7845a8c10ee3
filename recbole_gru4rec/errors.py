"""The error a user gets for their own mistakes: one line, before any training starts."""


class UsageError(ValueError):
    """A user's mistake (bad option, missing data, unknown name), reported as one line before training starts."""
