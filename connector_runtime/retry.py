"""Exponential backoff with full jitter for transient failures (design §3)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

T = TypeVar("T")
MAX_RETRY_AFTER = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` calls in all; the wait before call n+1 is uniform in [0, min(cap, base·2ⁿ)]."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        jittered = random.uniform(0, min(self.cap, self.base * 2**attempt))
        # a server's Retry-After is a floor: calling earlier would only be refused again
        # (bounded, so a wild value cannot park a sync for hours)
        return max(jittered, min(retry_after, MAX_RETRY_AFTER)) if retry_after else jittered


def with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    transient: type[Exception] | tuple[type[Exception], ...],
    *,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call until it succeeds or `policy.attempts` are spent; the last error propagates."""
    log = structlog.get_logger()
    for attempt in range(policy.attempts):
        try:
            return call()
        except transient as exc:
            if attempt + 1 >= policy.attempts:
                raise
            wait = policy.delay(attempt, getattr(exc, "retry_after", None))
            log.warning(
                "retrying",
                what=what,
                attempt=attempt + 1,
                of=policy.attempts,
                wait_s=round(wait, 2),
                error=str(exc),
            )
            sleep(wait)
    raise AssertionError("unreachable: attempts >= 1")
