"""A room's activity (what the rooms list and the dashboard show for each room) as the
room's history grows.

One SQLite store, one room grown to 1k, 10k and 100k tasks (one in a hundred pending, the
rest completed); at each size `store.room_activity` is read 20 times and timed. It must
not grow with the room's age: the last change and the waiting count come from indexes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import compare, database, dig, header, parser, previous, save, table

from dispatchd.domain.ids import new_id, utcnow
from dispatchd.domain.models import Priority, Task, TaskStatus
from dispatchd.domain.rooms import Room
from dispatchd.store.base import InsertTask
from dispatchd.store.rooms import InsertRoom
from dispatchd.store.sqlite import SQLiteStore

NAME = "room_activity"
ROOM = "big"
READS = 20


def _task(status: TaskStatus) -> Task:
    now = utcnow()
    return Task(
        id=new_id(),
        title="history",
        prompt="",
        status=status,
        priority=Priority.MEDIUM,
        capabilities=("bench",),
        requester="bench",
        created_at=now,
        updated_at=now,
        scope=ROOM,
    )


async def measure(sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with database(NAME) as db:
        store = SQLiteStore(db.data_dir / "rooms.sqlite")
        await store.open()
        await store.migrate()
        try:
            now = utcnow()
            room = Room(id=ROOM, name="#big", workspace=None, created_at=now, updated_at=now)
            await store.commit([InsertRoom(room)])
            have = 0
            for size in sizes:
                while have < size:
                    batch = min(5000, size - have)
                    tasks = [
                        _task(TaskStatus.PENDING if (have + i) % 100 == 0 else TaskStatus.COMPLETED)
                        for i in range(batch)
                    ]
                    await store.commit([InsertTask(t) for t in tasks])
                    have += batch
                await store.room_activity([ROOM])
                t0 = time.perf_counter()
                for _ in range(READS):
                    found = await store.room_activity([ROOM])
                ms = (time.perf_counter() - t0) / READS * 1000
                assert found[ROOM].pending == (size + 99) // 100
                out[str(size)] = {"ms": round(ms, 3), "pending": found[ROOM].pending}
        finally:
            await store.close()
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    sizes = [1000, 10_000] if args.quick else [1000, 10_000, 100_000]
    before = previous(NAME, args.quick)
    with database(NAME) as db:
        header(f"room activity: one room of up to {sizes[-1]:,} tasks", args.quick, db)
    results = asyncio.run(measure(sizes))
    print(table(["tasks in the room", "ms a read"], [[k, v["ms"]] for k, v in results.items()]))
    for size, r in results.items():
        was = dig(before, "results", size, "ms")
        print(compare(f"  {size} tasks ms", r["ms"], was, lower_is_better=True))
    path = save(NAME, args.quick, {"sizes": sizes, "reads": READS}, results)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
