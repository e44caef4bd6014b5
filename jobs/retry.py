"""The one retry policy, next to the error tree it reads.

The render task and the batching session both ask this policy; neither keeps counts of its own.
Two budgets, kept apart because they mean different things:

* **retries**: a ``TransientError`` (Redis, S3, a 5xx) sent the job back to the queue. Counted
  in the job record (``retries``) when the job is re-queued, so the count survives redelivery and
  does not depend on which task message carried the job.
* **worker losses**: a worker took the job (``attempts`` counts every claim) and died before
  ending or re-queueing it: SIGKILL, out-of-memory, a lost machine. A claim that no retry
  explains is a loss. Losing a few workers must not eat the transient budget of the jobs they
  held; a job that keeps killing its workers must still end (``worker_lost``) instead of taking
  the fleet down one worker at a time.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.errors import BrokerUnavailable, PermanentError, TransientError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from jobs.settings import Settings


class WorkerLost(PermanentError):
    """The job's workers died under it more often than the policy allows."""

    code = "worker_lost"


@dataclass(frozen=True)
class RetryPolicy:
    #: Transient failures retried (with backoff) before the job fails with ``retryable: true``.
    max_retries: int = 5
    #: Workers that may die holding the job; one more and the job fails as ``worker_lost``.
    max_worker_losses: int = 3
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: "Settings") -> "RetryPolicy":
        return cls(max_retries=settings.max_retries, max_worker_losses=settings.max_worker_losses)

    def backoff(self, retries: int) -> float:
        """Full-jitter exponential backoff (AWS architecture blog): spreads a thundering herd."""
        return random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**retries))

    def may_retry(self, retries_done: int) -> bool:
        """Whether a transient failure after ``retries_done`` earlier retries is retried again."""
        return retries_done < self.max_retries

    @staticmethod
    def worker_losses(attempts: int, retries: int) -> int:
        """Claims before the current one that neither ended the job nor re-queued it."""
        return max(0, attempts - 1 - retries)

    def check_claim(self, attempts: int, retries: int) -> None:
        """Called once a worker has claimed the job (``attempts`` includes this claim)."""
        lost = self.worker_losses(attempts, retries)
        if lost > self.max_worker_losses:
            raise WorkerLost(
                f"the job's worker died {lost} times while holding it (limit: BATCHRENDER_MAX_WORKER_LOSSES="
                f"{self.max_worker_losses}); it may be crashing workers (out of memory?)",
                worker_losses=lost)


def transient(exc: BaseException) -> TransientError | None:
    """The ``TransientError`` an exception amounts to, or None when it is not transient.

    Ours say so by class. Client libraries raise their own connection errors from paths no
    wrapper covers (a result-backend write, a pipeline, kombu publishing): those are Redis or
    the network going away, and retrying later can succeed, so they are transient too, never a
    job failure (the chaos suite saw two jobs fail as ``internal_error`` that way).
    """
    if isinstance(exc, TransientError):
        return exc
    from kombu.exceptions import OperationalError

    from jobs.redisconn import REDIS_AWAY

    # REDIS_AWAY: also a server that is a replica now (READONLY, MASTERDOWN: a failover).
    if isinstance(exc, (*REDIS_AWAY, OperationalError, ConnectionError, TimeoutError)):
        # The client library's text names hosts and ports of the deployment: the log keeps it, the
        # job (a tenant reads its error while it waits for a retry) gets the project's words.
        log.info("Redis or the network is unavailable: %s: %s", type(exc).__name__, exc)
        return BrokerUnavailable(f"Redis or the network is unavailable ({type(exc).__name__}); "
                                 "retrying later can succeed")
    return None
