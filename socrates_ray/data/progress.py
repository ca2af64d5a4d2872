"""Progress lines for work in many parts (shards): about ten lines, whatever the count.

A 100-shard prepare used to print 100 "shard k/100 done" lines; `Progress` says the count at each
tenth of the way and at the end, and how long it has been running."""

from __future__ import annotations

import math
import time
from typing import Callable


class Progress:
    def __init__(self, log: Callable[[str], None], total: int, lines: int = 10) -> None:
        self.log, self.total = log, total
        self.every = max(1, math.ceil(total / lines))
        self.started = time.perf_counter()

    def done(self, count: int, line: str) -> None:
        """`line` for the count-th part done, if it is one a tenth of the way (or the last)."""
        if count == self.total or count % self.every == 0:
            self.log(f"{line} [{time.perf_counter() - self.started:.0f}s]")
