"""Ray tasks or actor calls kept in flight a window at a time, answered as each finishes.

    for item, result in in_window(files, [None] * 4, lambda f, _: task.remote(f)):   # 4 tasks at once
    for item, result in in_window(batches, [a for a in actors for _ in range(2)], lambda b, a: a.predict.remote(b)):

Each slot holds one call; when a call finishes, its slot takes the next item. Slots that name an
actor keep that actor's queue full (an actor listed twice holds two calls: one runs, one waits), so a
replica never idles waiting on the driver. Results come back in completion order, each with its item.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
S = TypeVar("S")


def in_window(items: Iterable[T], slots: list[S], submit: Callable[[T, S], Any]) -> Iterator[tuple[T, Any]]:
    """Submit `items` through `submit(item, slot)`, at most one call per slot in flight; yield
    (item, ray.get(result)) in the order the calls finish."""
    import ray

    todo = iter(items)
    pending: dict[Any, tuple[T, S]] = {}

    def fill(slot: S) -> None:
        for item in todo:
            pending[submit(item, slot)] = (item, slot)
            return

    for slot in slots:
        fill(slot)
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        item, slot = pending.pop(ready)
        fill(slot)
        yield item, ray.get(ready)
