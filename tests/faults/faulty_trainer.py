"""``stream-trainer`` with one fault injected from outside the product, for the exit-path tests.

    python -m tests.faults.faulty_trainer [--thread NAME --call MODULE:ATTR] [--kind raise|oom|hang|slow]
        [--after N] [--seconds S] [--set MODULE:NAME=NUMBER] -- run --config FILE

``--call`` names a function the thread called ``--thread`` runs as part of its own work (the
committer's ``Cluster.keepalive``, the watchdog's ``preflight.check``, the main thread's
``Workers.step``); it is replaced by one that, in that thread only, lets ``--after`` calls through
and then raises ``RuntimeError("injected fault in NAME")`` (``raise``), TensorFlow's out-of-memory
error (``oom``, a message of several lines), never returns (``hang``) or returns after
``--seconds`` more (``slow``: a slow disk, a long evaluation). Every other thread's
calls go through unchanged. ``--set`` changes a module constant first (a shorter interval); with
``--set`` alone nothing is injected (a fault from outside the process, such as a revoked
credential, found sooner). ``--thread any`` injects into whichever thread calls. The line
``FAULT INJECTED`` on stderr marks the moment. Then it is ``stream-trainer`` itself
(``cli.entry``), exit path included.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import threading
import time
from typing import Any


def _owner(spec: str) -> tuple[Any, str]:
    module, _, path = spec.partition(":")
    *parents, name = path.split(".")
    owner: Any = importlib.import_module(module)
    for part in parents:
        owner = getattr(owner, part)
    return owner, name


def _fault(kind: str, thread: str, seconds: float) -> None:
    os.write(2, f"FAULT INJECTED ({kind}) in {thread}\n".encode())
    if kind == "slow":
        time.sleep(seconds)
        return
    if kind == "hang":
        threading.Event().wait()
    if kind == "oom":
        import tensorflow as tf

        msg = ("OOM when allocating tensor with shape[4,16,32,32] and type float on /job:localhost/replica:0/task:0/"
               "device:CPU:0 by allocator cpu\n\t [[{{node unet/conv2d/Conv2D}}]]\nHint: If you want to see a list "
               "of allocated tensors when OOM happens, add report_tensor_allocations_upon_oom to RunOptions.")
        raise tf.errors.ResourceExhaustedError(None, None, msg)
    msg = f"injected fault in {thread}"
    raise RuntimeError(msg)


def inject(thread: str, call: str, kind: str, after: int, seconds: float = 0.0) -> None:
    owner, name = _owner(call)
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def faulty(*args: Any, **kwargs: Any) -> Any:
        if thread in ("any", threading.current_thread().name):
            calls[0] += 1
            if calls[0] > after:
                _fault(kind, thread, seconds)
        return original(*args, **kwargs)

    setattr(owner, name, faulty)


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="faulty_trainer")
    p.add_argument("--thread")
    p.add_argument("--call")
    p.add_argument("--kind", choices=["raise", "oom", "hang", "slow"], default="raise")
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--after", type=int, default=0)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv[:split])
    from stream_trainer import cli, tfenv

    tfenv.configure()  # as cli.main does, before the patches below import TensorFlow
    for assignment in args.set:
        target, _, value = assignment.partition("=")
        owner, name = _owner(target)
        setattr(owner, name, float(value))
    if args.thread and args.call:
        inject(args.thread, args.call, args.kind, args.after, args.seconds)
    cli.entry(argv[split + 1:])


if __name__ == "__main__":
    main()
