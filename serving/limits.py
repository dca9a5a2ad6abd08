"""Limits that keep one client from hurting the others: a rate limit per socket and a cap on
open sockets.

- :class:`FloodGuard`: a token bucket per connection (``rate`` messages per second on
  average, bursts of ``burst``). A message over the limit is answered with a
  ``rate_limited`` error and not processed. A client that keeps sending while the bucket is
  empty is flooding: after ``burst`` refused messages without the bucket ever refilling to
  half, the verdict is :data:`FLOOD` and the socket is closed with 1008 (after the
  ``rate_limited`` error). A client that backs off (the bucket refills to half) starts afresh.
- :class:`ConnectionLimit`: at most ``maximum`` open sockets; the handshake of one more is
  refused (HTTP 503).
"""

from __future__ import annotations

import enum
import time


class Verdict(enum.Enum):
    ALLOW = "allow"
    LIMITED = "limited"
    FLOOD = "flood"


ALLOW, LIMITED, FLOOD = Verdict.ALLOW, Verdict.LIMITED, Verdict.FLOOD


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; one token per message."""

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._stamp = time.monotonic() if now is None else now

    def refill(self, now: float) -> float:
        """Tokens available at ``now``."""
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = max(self._stamp, now)
        return self.tokens

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FloodGuard:
    """The rate limit of one connection (see the module docstring)."""

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.bucket = TokenBucket(rate, burst, now)
        self.strikes = 0
        self.max_strikes = burst

    def check(self, now: float | None = None) -> Verdict:
        """The verdict on one incoming message."""
        stamp = time.monotonic() if now is None else now
        if self.bucket.refill(stamp) >= self.bucket.burst / 2:
            self.strikes = 0
        if self.bucket.take(stamp):
            return ALLOW
        self.strikes += 1
        return FLOOD if self.strikes > self.max_strikes else LIMITED


class ConnectionLimit:
    """At most ``maximum`` open connections (the event loop is the only caller: no lock)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.open = 0

    def acquire(self) -> bool:
        """Count one more connection, unless that would pass the maximum."""
        if self.open >= self.maximum:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open = max(0, self.open - 1)
