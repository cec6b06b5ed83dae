"""``DatasetError``: a dataset could not be read; the message names the file and the fix."""

from __future__ import annotations

from fsg_core.errors import NonRetryableError

__all__ = ["DatasetError"]


class DatasetError(NonRetryableError, ValueError):
    """A dataset is missing, corrupt, or not in the expected format.

    A ``ValueError`` so that callers validating a ``DataSpec`` (the CLI, the service) can report it
    like any other bad input.
    """
