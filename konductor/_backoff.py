"""Jittered exponential backoff, shared by store retries and watch reconnects."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays that double from ``initial`` up to ``cap``, with "equal" jitter.

    Each delay is drawn uniformly between half the exponential bound and the
    bound, which keeps many clients that failed together from retrying together.
    """

    initial: float = 0.05
    cap: float = 2.0
    factor: float = 2.0
    attempt: int = 0

    def next_delay(self) -> float:
        bound = min(self.cap, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return random.uniform(bound / 2, bound)

    def reset(self) -> None:
        self.attempt = 0
