"""Which examples share a packed row: bin packing of example lengths into rows of max_length.

A packed row wastes what its examples leave unfilled. First-fit decreasing (FFD; longest first,
each into the first row with room) is near-optimal when lengths vary widely, but SocSci210-style
prompts are alike in length (the synthetic world: 266-373 tokens, mean 304): at 2048 tokens a row
holds 6 or 7 of them, and FFD fills the early rows with the longest six, leaving about 5% of every
row empty (95.1% non-padding on the ingest bench's training split).

`plan_rows` therefore tries two more constructions and keeps whichever needs the fewest rows
(FFD on a tie, so wide-ranging lengths pack as before):

- balanced: for a row count k, each example (longest first) goes to the row with the most room
  (worst-fit decreasing); the smallest k for which everything fits, by bisection;
- the n*k shortest examples balanced on k rows (n a row), the rest balanced on rows of their own
  (for each plausible n, the largest such k by bisection): short examples are what lets a row
  take one more, so they are spent together where they make rows of n.

Everything is deterministic (ties by index). Measured in bench/ingest.py's padding table.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence

# Which examples share a row (and so the rows a packed run trains on, in what order) depends on the
# algorithm: a packed run records this in its resume fingerprint (train.trainer.run_fingerprint),
# so a checkpoint packed by another one is refused rather than resumed at the wrong rows.
PACKER = "fewest of first-fit, balanced and rows of n shortest (2026-12-04)"


def plan_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Example indices per row: each row's lengths sum to at most `capacity`; every index once."""
    lengths = [int(n) for n in lengths]
    if not lengths:
        return []
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"plan_rows: {len(too_long)} example(s) longer than the row ({max(lengths)} > {capacity} tokens, "
            f"first at index {too_long[0]}); drop or truncate them before packing"
        )
    longest_first = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    best = first_fit(longest_first, lengths, capacity)
    for construct in (fewest_balanced, shortest_in_rows_of_n):  # each returns fewer rows than `most` + 1, or None
        candidate = construct(longest_first, lengths, capacity, len(best) - 1)
        if candidate is not None and len(candidate) < len(best):
            best = candidate
    return best


def first_fit(order: Sequence[int], lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit in the given order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def balanced(order: Sequence[int], lengths: Sequence[int], capacity: int, k: int) -> list[list[int]] | None:
    """Worst-fit into exactly k rows in the given order (each example to the row with the most
    room); None where one does not fit."""
    if k <= 0:
        return None
    rows: list[list[int]] = [[] for _ in range(k)]
    heap = [(-capacity, r) for r in range(k)]
    for i in order:
        free, r = heap[0]
        if lengths[i] > -free:
            return None
        rows[r].append(i)
        heapq.heapreplace(heap, (free + lengths[i], r))
    return [row for row in rows if row]


def fewest_balanced(order: Sequence[int], lengths: Sequence[int], capacity: int, most: int) -> list[list[int]] | None:
    """`balanced` with the fewest rows in [total / capacity, most] that it finds by bisection."""
    least = math.ceil(sum(lengths[i] for i in order) / capacity)
    found = None
    while least <= most:
        k = (least + most) // 2
        rows = balanced(order, lengths, capacity, k)
        if rows is None:
            least = k + 1
        else:
            found, most = rows, k - 1
    return found


def shortest_in_rows_of_n(order: Sequence[int], lengths: Sequence[int], capacity: int, most: int) -> list[list[int]] | None:
    """For each plausible n: the most rows k that the n*k shortest examples fit (balanced), then the
    rest balanced on as few rows as possible; the plan with the fewest rows, if under `most` + 1,
    else None."""
    shortest_first = list(reversed(order))
    median, shortest = lengths[order[len(order) // 2]], lengths[shortest_first[0]]
    tokens = list(itertools.accumulate((lengths[i] for i in shortest_first), initial=0))  # of the m shortest
    best = None
    for n in range(max(2, capacity // median), min(capacity // shortest, capacity // median + 6) + 1):
        low, high, chosen, taken = 1, len(order) // n, None, 0
        while low <= high:  # the largest k whose n*k shortest examples fit k rows
            k = (low + high) // 2
            group = shortest_first[: n * k]
            rows = balanced(group[::-1], lengths, capacity, k) if tokens[n * k] <= k * capacity else None
            if rows is not None:
                chosen, taken, low = rows, n * k, k + 1
            else:
                high = k - 1
        if chosen is None:
            continue
        rest = shortest_first[taken:][::-1]
        rest_rows = fewest_balanced(rest, lengths, capacity, len(rest)) if rest else []
        if rest_rows is None:
            continue
        if len(chosen) + len(rest_rows) <= (most if best is None else len(best) - 1):
            best = chosen + rest_rows
    return best
