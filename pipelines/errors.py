"""The one base class that tells an orchestrator not to retry.

A failure of this kind comes back the same when the same call is made again with the same inputs: bad data or
config, a registry request that cannot be carried out, a version whose signature fails, a fit that diverged. The
DAGs' retry policy (``dags/``) fails such a task at once instead of waiting out its retries; a lost connection, a
busy lease or a window that has not landed yet are other exceptions, and are retried.
"""

from __future__ import annotations

__all__ = ["NotRetryable"]


class NotRetryable(Exception):
    """A failure that repeats on retry: the message says what to change."""
