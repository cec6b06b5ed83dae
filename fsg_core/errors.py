"""Errors that a new attempt cannot fix, whichever process raises them.

A job whose data is missing, whose checkpoint is corrupt or whose spec is invalid fails the same way
every time: the service fails it at once instead of retrying (``workers.policy.retryable`` decides by
type, never by message). Everything else (a dead worker, a lost node, an out-of-memory kill) may
succeed on another attempt.
"""

from __future__ import annotations

__all__ = ["NonRetryableError", "SpecError"]


class NonRetryableError(Exception):
    """The run cannot go on as specified; retrying would fail the same way."""


class SpecError(NonRetryableError, ValueError):
    """A spec (or a stored job's spec) does not validate; the message names the field."""
