"""The cycle collector's settings for a process meshstats owns: ``meshstats sidecar`` and
its workers. Never called on import: a service that embeds the package keeps its own.

>>> import gc
>>> before = gc.get_threshold()
>>> tune_for_serving()
>>> gc.get_threshold()[0] == YOUNG_THRESHOLD
True
>>> gc.unfreeze(); gc.set_threshold(*before)

A relay allocates a few dozen container objects per request (events, header tuples,
futures, coroutine frames), freed by reference counting as the request ends. With many
requests in flight (64 streams on one HTTP/2 connection) they are alive in bursts of
thousands, so the youngest generation's threshold (700 allocations more than frees) was
crossed several times per burst, and each pass walked the live ones and promoted them,
whose older generations' passes then walked everything the process had set up
(certificates, configuration, modules: ~30,000 objects). Measured on the HTTP/2 bench
(December 2026, after the relay's per-stream reference cycle was removed): the collector's
callbacks added up to ~14% of the pair process's CPU; with the set-up objects frozen and
the threshold at 10,000, the process's CPU per request fell 8-13% (HTTP/1.1 unchanged).
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_for_serving"]

#: Allocations (net of frees) between two passes over the youngest generation. Objects in
#: reference cycles wait at most this many allocations longer; the relay makes none per
#: request (``tests/test_proxy_h2.py`` checks it).
YOUNG_THRESHOLD = 10_000


def tune_for_serving() -> None:
    """Call once the process is set up and before it serves: collect what setting up left,
    move what is alive now out of every later pass (``gc.freeze``), and raise the youngest
    generation's threshold to :data:`YOUNG_THRESHOLD`."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
