"""Anonymous refusals (401, 404... with no authenticated key) in the audit log, bounded.

Each audit row costs an fsync and lives forever, so a scanner hammering the server must not add one
row per request. Per interval (default 60 s) the first ``burst`` anonymous refusals are logged one
by one; the rest are counted in memory and written as one aggregated row per status when the
interval is over (at the next request after it, or at shutdown).
"""
from __future__ import annotations

import threading
import time
from collections import Counter


class RefusalLimiter:
    def __init__(self, burst: int = 20, interval_s: float = 60.0, clock=time.monotonic):
        self.burst, self.interval, self.clock = burst, interval_s, clock
        self._lock = threading.Lock()
        self._start = clock()
        self._logged = 0
        self._held: Counter = Counter()

    def admit(self, status: int) -> tuple[bool, dict]:
        """(log this refusal individually?, held counts to write now as aggregated rows)."""
        with self._lock:
            flush: dict = {}
            if self.clock() - self._start >= self.interval:
                flush = self._take()
            if self._logged < self.burst:
                self._logged += 1
                return True, flush
            self._held[status] += 1
            return False, flush

    def due(self) -> dict:
        """Held counts whose interval is over (checked on every logged request too, so counts do not
        wait in memory for the next refusal)."""
        with self._lock:
            return self._take() if self._held and self.clock() - self._start >= self.interval else {}

    def drain(self) -> dict:
        with self._lock:
            return self._take()

    def _take(self) -> dict:
        held, self._held = dict(self._held), Counter()
        self._start, self._logged = self.clock(), 0
        return held
