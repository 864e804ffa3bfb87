"""How a server process collects garbage: young objects in large steps, startup's never.

A request used to leave ~70 objects in reference cycles (graphql-core's executor and its
resolve-info helpers; our context and its DataLoader, with the request and response
hanging off it), which only the collector frees: 11-13% of a worker's CPU under a flash
sale, in young collections of ~0.1 s each. Those cycles are gone (api/internals.py item 9,
api/context.py; tests/unit/test_internals.py and test_context.py keep them gone): a
reservation now leaves ~0.2 on average (from error paths), and a sale runs with no young
collection at all. What remains here is for what does still build cycles: with thousands
of WebSockets open, CPython's thresholds (700 allocations) promoted garbage caught while
still referenced into the old generation, whose full collections walk every object of
the process (pauses of 0.4-0.6 s). Collecting the young generation every 50,000
allocations lets such garbage die young; freezing what startup built (schema, modules,
pool) keeps it out of every collection; a full collection waits for 100 middle ones.
"""

from __future__ import annotations

import gc

YOUNG = 50_000  # allocations between collections of the youngest generation (700)
MIDDLE = 20  # young collections between collections of the middle one (10)
OLD = 100  # middle collections before a full one is considered (10)


def tune() -> None:
    """Call once the process has started: everything alive now is frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, OLD)
