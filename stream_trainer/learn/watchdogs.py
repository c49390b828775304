"""The threads TensorFlow starts for our collectives' timeout, counted so that a thread count can be judged.

With ``CommunicationOptions.timeout_seconds`` set (``trainer.cluster.peer_timeout_s``), TensorFlow
2.16 starts two detached threads for every collective op it runs, one in
``BaseCollectiveExecutor::CompleteParamsAsync`` and one in ``ExecuteAsync``; each sleeps the whole
timeout (``Env::SchedClosureAfter``) and then checks whether the op finished, done or not
(upstream's own TODO: "Share the timeout watchdog thread among collectives"). Measured: 40 sums
of a vector in a two-worker job add 81 threads, gone a timeout later. So a worker of a job holds
about *2 x collective ops per second x peer_timeout_s* sleeping threads on top of its own: ~850
in the chaos soak's two-worker job (a vote every round, a dozen rounds a second while input
trickles in, a 30 s timeout), against ~60 for a trainer alone. That is a rate, not a leak: the
count follows the round rate up and down and never exceeds 2 x ``peer_timeout_s`` x the fastest
round rate's ops. ``Watchdogs`` counts them from our side (the ops each call runs, read from its
traced graph) so the soak can judge the threads that remain.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

# Ops that run through the collective executor, each with its own watchdog threads.
TIMED_OPS = frozenset({
    "CollectiveReduce", "CollectiveReduceV2", "CollectiveGather", "CollectiveGatherV2", "CollectiveBcastSend",
    "CollectiveBcastRecv", "CollectiveBcastSendV2", "CollectiveBcastRecvV2", "CollectiveReduceScatterV2",
    "CollectiveAllToAllV2",
})


def collective_ops(fn: Any, *args: Any) -> int:
    """Collective ops one call of the tf.function ``fn`` runs (its graph and every function it calls)."""
    graph_def = fn.get_concrete_function(*args).graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return sum(1 for n in nodes if n.op in TIMED_OPS)


THREADS_PER_OP = 2


class Watchdogs:
    """How many of TensorFlow's collective watchdog threads are asleep right now; thread-safe.

    Holds one entry per call within the last ``timeout_s``: as many as the threads it counts, so
    bounded the same way.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._ends: deque[tuple[float, int]] = deque()  # (when its threads wake and end, how many)
        self._lock = threading.Lock()

    def started(self, ops: int) -> None:
        """A call that runs ``ops`` collective ops starts now."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            if ops:
                self._ends.append((now + self._timeout_s, THREADS_PER_OP * ops))

    def alive(self) -> int:
        with self._lock:
            self._prune(time.monotonic())
            return sum(n for _, n in self._ends)

    def _prune(self, now: float) -> None:
        while self._ends and self._ends[0][0] <= now:
            self._ends.popleft()
