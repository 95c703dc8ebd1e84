"""A circuit breaker for a remote store: after one failure the store is down for a while, and says so once.

A hung server (``SIGSTOP``) answers nothing until each call's socket timeout expires; a killed one refuses
every connection. Without a breaker every graph of a model pays that again (a tiny compile took 61 s behind a
stopped Redis). With one, the first failure costs at most the timeouts, one warning names the store and for how
long it is skipped, and until then every ``get`` is a miss and every ``put`` is skipped at once (counted in
``counters["cache"]["remote_skipped"]``). After the cool-down the next call tries the server again; a success
closes the breaker (an info message), another failure opens it again (warned again: a new outage).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Callable, Optional

from nexfort.core.api import counters

logger = logging.getLogger("nexfort.cache")
COOLDOWN_ENV = "NEXFORT_CACHE_REMOTE_RETRY_S"
DEFAULT_COOLDOWN_S = 60.0


def default_cooldown() -> float:
    try:
        return float(os.environ.get(COOLDOWN_ENV, DEFAULT_COOLDOWN_S))
    except ValueError:
        return DEFAULT_COOLDOWN_S


class CircuitBreaker:
    """``allow()`` before a call, ``success()`` / ``failure(exc)`` after it."""

    def __init__(self, describe: Callable[[], str], cooldown: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.describe = describe
        self.cooldown = default_cooldown() if cooldown is None else float(cooldown)
        self.clock = clock
        self.down_until = 0.0
        self.down = False  # an outage is open (warned once), until a call succeeds again
        self.failures = 0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self.clock() < self.down_until:
                counters["cache"]["remote_skipped"] += 1
                return False
            return True

    def success(self) -> None:
        with self._lock:
            was_down, self.down, self.down_until = self.down, False, 0.0
        if was_down:
            logger.info("nexfort cache: %s answers again; using it.", self.describe())

    def failure(self, exc: BaseException, what: str, scrub: Callable[[str], str] = str) -> None:
        with self._lock:
            self.failures += 1
            counters["cache"]["remote_errors"] += 1
            self.down_until = self.clock() + self.cooldown
            announce, self.down = not self.down, True
        if announce:
            warnings.warn(f"nexfort cache: {what} {self.describe()} failed ({type(exc).__name__}: "
                          f"{scrub(str(exc))}); not using it for the next {self.cooldown:g} s "
                          f"({COOLDOWN_ENV}): graphs compile without it (the local cache still works).",
                          RuntimeWarning, stacklevel=4)
        else:
            logger.info("nexfort cache: %s %s failed again (%s)", what, self.describe(), type(exc).__name__)
