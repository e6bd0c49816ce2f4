"""A Prometheus histogram that takes a whole batch of observations in one numpy call.

prometheus-client's `Histogram.observe` takes one value under a lock; at tens of thousands of
images a second that is a measurable share of the worker's time. This collector keeps the
same exposition (`_bucket{le}`, `_sum`, `_count`), fed by `observe_many`.
"""

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class BulkHistogram(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # last: above all
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: ArrayLike) -> None:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        if not array.size:
            return
        # Bucket `le` holds values <= le: the first bound that is >= the value.
        counts = np.bincount(
            np.searchsorted(self._bounds, array, side="left"), minlength=len(self._counts)
        )
        total = float(array.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts = self._counts.copy()
            total = self._sum
        cumulative = np.cumsum(counts).tolist()
        # repr of a float is the `le` label prometheus-client writes for the same bound.
        buckets = [(repr(bound), cumulative[i]) for i, bound in enumerate(self._bounds.tolist())]
        buckets.append(("+Inf", cumulative[-1]))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)
