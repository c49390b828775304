"""The one collective the workers share, and how to tell which peer is gone when it fails.

Every exchange between workers (the vote, positions, replay state, the config fingerprint, the
keep-alive while one worker works alone) is one sum of an int64 vector over workers. A
collective needs static shapes, so a tf.function traces once per vector length: lengths are
padded to powers of two, so a job that gathers payloads of every length up to N bytes traces at
most log2(N) times instead of once per distinct length for the life of the job.

TensorFlow's collective timeout (``CommunicationOptions.timeout_seconds``) runs from the moment
*this* worker's collective starts until it completes, waiting for peers included: a peer that is
merely busy for longer (the chief evaluating) looks exactly like a dead one. ``Workers.together``
(workers.py) keeps every collective short while a worker works alone; this module names the
lost peer when one fails anyway.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from stream_trainer.errors import ConfigError, PeerLostError, StreamTrainerError

Array = npt.NDArray[Any]

_MIN_LENGTH = 8
# HTTP/2 client preface plus an empty SETTINGS frame: a live gRPC server answers with its own
# SETTINGS frame at once; a dead worker refuses the connection, a stopped (SIGSTOP) or wedged one
# accepts it in the kernel and never answers.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS = 0x04


def padded_length(n: int) -> int:
    """The traced length that carries ``n`` values: the next power of two, at least 8."""
    return max(_MIN_LENGTH, 1 << max(0, n - 1).bit_length())


class SumOverWorkers:
    """``sum(values)`` element-wise over every worker, with a bounded number of traces."""

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        device = strategy.extended.worker_devices[0]

        def all_sum(values: tf.Tensor) -> tf.Tensor:
            def replica(v: tf.Tensor) -> tf.Tensor:
                # A collective needs its input placed; a plain tensor in a tf.function is not yet.
                with tf.device(device):
                    v = tf.identity(v)
                return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, v)

            return strategy.experimental_local_results(strategy.run(replica, args=(values,)))[0]

        self._fn = tf.function(all_sum)

    def __call__(self, values: Array, what: str, count: int) -> Array:
        """The sum; raises ``StreamTrainerError`` if a worker ran another collective (``what``) meanwhile."""
        n = int(values.size)
        padded = np.zeros(padded_length(n + 1), np.int64)
        padded[:n] = values
        # The last slot carries which collective this is: two workers that reached different
        # collectives of the same length would otherwise sum each other's data without a sign.
        tag = zlib.crc32(what.encode()) & 0xFFFFF
        padded[n] = tag
        out = np.asarray(self._fn(tf.constant(padded)).numpy())
        if out[n] != tag * count:
            msg = (f"the workers ran different collectives (this one: {what}); their settings or code differ, "
                   f"every worker stops")
            raise StreamTrainerError(msg)
        return out[:n]
    def traces(self) -> int:
        return int(self._fn.experimental_get_tracing_count())


def answers(address: str, timeout_s: float = 2.0) -> bool:
    """Whether the gRPC server at ``host:port`` answers an HTTP/2 greeting within ``timeout_s``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    return False
                head += chunk
            return head[3] == _SETTINGS
    except OSError:
        return False


def silent(addresses: dict[int, str], timeout_s: float = 2.0) -> list[int]:
    """The workers (index -> address) whose server does not answer, probed in parallel."""
    results: dict[int, bool] = {}

    def probe(i: int, address: str) -> None:
        results[i] = answers(address, timeout_s)

    # Short-lived probes (bounded by timeout_s), not daemon threads: no supervision needed.
    probes = [threading.Thread(target=probe, args=item, name=f"probe-worker-{item[0]}", daemon=True)
              for item in addresses.items()]
    for t in probes:
        t.start()
    for t in probes:
        t.join(timeout_s + 1.0)
    return sorted(i for i in addresses if not results.get(i, False))


def describe(exc: BaseException) -> str:
    """TensorFlow's error text on one line, without the Python stack it embeds; never only the first line."""
    text = str(exc.message) if isinstance(exc, tf.errors.OpError) else str(exc)
    kept: list[str] = []
    in_stack = False
    for line in text.splitlines():
        s = line.strip()
        if not s or s == "Graph execution error:":
            continue
        if s.startswith(("Detected at node", "Detected unsupported operations")):
            in_stack = True
            continue
        if in_stack and s.startswith("File "):
            continue
        in_stack = False
        kept.append(s)
    out = " ".join(kept)
    return (out[:800] + " ...") if len(out) > 800 else (out or type(exc).__name__)


def named_tasks(text: str, exclude: int) -> list[int]:
    """Every worker task the error text mentions, in order, except ``exclude``."""
    found: list[int] = []
    for m in re.finditer(r"/job:worker/(?:replica:\d+/)?task:(\d+)", text):
        i = int(m.group(1))
        if i != exclude and i not in found:
            found.append(i)
    return found


def names(indices: Iterable[int], addresses: list[str]) -> str:
    """``worker 1 (host:port)``, joined with "and" for several."""
    return " and ".join(f"worker {i} ({addresses[i]})" for i in indices)


def lost(exc: BaseException, index: int, addresses: list[str]) -> PeerLostError:
    """The error for a failed collective, naming the peers that are gone (never "a peer")."""
    text = describe(exc)
    peers = {i: a for i, a in enumerate(addresses) if i != index}
    # The peers whose server no longer answers are the ones gone; the error text alone can name a
    # neighbour that only relayed the failure (two tasks reported, the first one the wrong one).
    gone = silent(peers)
    if gone:
        who = names(gone, addresses)
    else:
        who = names(named_tasks(text, index) or list(peers), addresses) + " (still answering, but not in time)"
    msg = (f"lost {who}: a collective operation failed ({type(exc).__name__}: {text}); every worker stops, "
           f"restart the whole job (it resumes from the last checkpoint)")
    return PeerLostError(msg)


def rendezvous(addresses: list[str], index: int, timeout_s: float) -> None:
    """Wait until every other worker's port accepts connections; raise naming those that never did.

    TensorFlow's own join waits without a deadline and holds the GIL while it does, so nothing in
    this process could time it out: the workers meet here first, each listening on its own port
    (the one TensorFlow's server takes over a moment later) and connecting to the others'.
    """
    port = int(addresses[index].rpartition(":")[2])
    try:
        server = socket.create_server(("", port))
    except OSError as exc:
        msg = f"config key 'trainer.cluster.workers': this worker cannot listen on port {port} ({exc.strerror})"
        raise ConfigError(msg) from exc
    deadline = time.monotonic() + timeout_s
    waiting = {i: a for i, a in enumerate(addresses) if i != index}
    try:
        while True:
            waiting = {i: a for i, a in waiting.items() if not _accepts(a)}
            if not waiting:
                return
            if time.monotonic() >= deadline:
                msg = (f"{names(waiting, addresses)} did not join within trainer.cluster.join_timeout_s "
                       f"({timeout_s:g} s); start every worker listed in trainer.cluster.workers")
                raise PeerLostError(msg)
            time.sleep(0.5)
    finally:
        server.close()


def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def run_aside(work: Callable[[], object], name: str) -> tuple[threading.Event, dict[str, Any]]:
    """Start ``work`` in a short-lived daemon thread; the event is set when it returned or raised.

    Not a ``Threads`` thread: it ends with the call that started it, which waits for it and
    re-raises its exception in the caller (workers.together).
    """
    done = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises it
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    return done, box
