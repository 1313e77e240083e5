"""The kinds of point a metrics batch carries (the batch's wire format: bus/metrics.py).

Here, in the wire vocabulary, because both sides use them: every process records points of
these kinds (bus/metrics.py) and the metrics actor aggregates them per kind
(domain/metrics_store.py), which imports nothing of bus/.
"""

from __future__ import annotations

from typing import Final

COUNTER: Final = "counter"
TIMER: Final = "timer"
GAUGE: Final = "gauge"
DISTRIBUTION: Final = "distribution"
# Many timings of one series folded where they were measured, sent as one point: its value
# is [count, sum, min, max, then the count in each timer bucket] (domain/metrics_store.py's
# TIMER_BUCKETS and +Inf, not cumulative). The store folds it into the series' timer.
TIMER_SUMMARY: Final = "timer_summary"
KINDS: Final = frozenset({COUNTER, TIMER, GAUGE, DISTRIBUTION, TIMER_SUMMARY})
