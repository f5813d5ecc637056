"""What a peer's worker process records of the tasks it ran, and how the benchmark reads it.

A task body calls `RECORDER.add(i, sent, start, end)`: its index, the producer's stamp taken
just before it created the task (0 for a backlog task), and `time.time()` when the body
began and returned. Appending to a list costs well under a microsecond, so recording does
not slow the worker it measures. When the count reaches one of the milestones given in
`BENCH_DUMP_AT` (comma-separated), the stamps so far are written to `BENCH_STAMPS` as JSON
(written aside, then renamed, so a reader never sees half a file); the benchmark waits for
that file. Standard library only: the peers' workers import it from their own virtualenv.

Every figure uses `time.time()` (CLOCK_REALTIME): all processes run on this machine and
read the same clock, so a producer's stamp and a worker's are comparable.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

STAMPS_ENV = "BENCH_STAMPS"
DUMP_AT_ENV = "BENCH_DUMP_AT"


class Recorder:
    def __init__(self, path: str | None, dump_at: list[int]) -> None:
        self.path = Path(path) if path else None
        self.dump_at = sorted(dump_at)
        self.rows: list[tuple[int, float, float, float]] = []
        self._lock = threading.Lock()  # Celery's thread pool calls add() from 8 threads

    @classmethod
    def from_env(cls) -> Recorder:
        marks = [int(x) for x in os.environ.get(DUMP_AT_ENV, "").split(",") if x.strip()]
        return cls(os.environ.get(STAMPS_ENV), marks)

    def add(self, i: int, sent: float, start: float, end: float) -> None:
        self.rows.append((i, sent, start, end))  # atomic under the GIL
        if self.dump_at and len(self.rows) >= self.dump_at[0]:
            self._dump()

    def _dump(self) -> None:
        with self._lock:
            if not self.dump_at or len(self.rows) < self.dump_at[0]:
                return  # another thread wrote this milestone already
            while self.dump_at and len(self.rows) >= self.dump_at[0]:
                self.dump_at.pop(0)
            if self.path is None:
                return
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"at": time.time(), "rows": list(self.rows)}))
            tmp.replace(self.path)


RECORDER = Recorder.from_env()
