"""Counters the tests (and users) read: how often each pass fired, how many graphs were compiled."""

from __future__ import annotations

import collections

#: ``counters["pass"][name]`` rewrites done by a pass; ``counters["backend"]["graphs"]`` graphs compiled;
#: ``counters["backend"]["fallbacks"]`` graphs that fell back to eager.
counters: "collections.defaultdict[str, collections.Counter]" = collections.defaultdict(collections.Counter)


def reset() -> None:
    counters.clear()
