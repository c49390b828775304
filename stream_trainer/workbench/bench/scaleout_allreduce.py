"""The gradient all-reduce of one multi-worker step, timed on its own.

Inside ``stream-trainer run`` the all-reduce of the gradients happens in Keras's
``apply_gradients`` (one ``all_reduce(SUM, grads)`` over the replica context), in the middle of
the step's graph: the trainer's step duration includes it, but nothing times it alone, and the
bench measures the trainer unmodified. So the bench runs the same collective on its own: N
processes, pinned to the workers' cores with the workers' thread settings, join a
``MultiWorkerMirroredStrategy`` exactly as the trainer does (``learn.workers.make_workers``),
build the trainer's U-Net to get its trainable variables, and time an all-reduce of float32
tensors of those shapes (what Keras reduces: the gradients of float32 variables, also under
mixed bfloat16) round after round, the previous round being the barrier of the next.

What it leaves out, on purpose: the time a worker waits in the step's all-reduce for a slower
peer to finish its forward and backward pass. That wait is in the step time the workers report;
the report shows it as the step time a multi-worker step adds over one worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from stream_trainer.workbench.bench import scaleout_cores
from stream_trainer.workbench.bench.scaleout_cores import Placement
from stream_trainer.workbench.bench.timing import BenchError
from stream_trainer.workbench.broker import free_port

WARMUP_ROUNDS = 5
ROUNDS = 50


def measure(n: int, placement: Placement, image_size: int, base_filters: int, depth: int, env: dict[str, str],
            workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Start ``n`` pinned processes, let them time the all-reduce, stop them; their rounds summarised."""
    workdir.mkdir(parents=True)
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(n)]
    outs = [workdir / f"allreduce-{i}.json" for i in range(n)]
    procs = []
    try:
        for i in range(n):
            argv = [sys.executable, "-m", "stream_trainer.workbench.bench.scaleout_allreduce",
                    "--addresses", ",".join(addresses), "--index", str(i), "--image-size", str(image_size),
                    "--base-filters", str(base_filters), "--depth", str(depth), "--out", str(outs[i])]
            procs.append(scaleout_cores.launch(argv, env, workdir / f"allreduce-{i}.log", placement.worker_cores(i)))
        deadline = time.monotonic() + timeout_s
        # Each process stays up once it has written its rounds: a peer may still be pulling its
        # last buffer (collectives over gRPC receive by request), so they all stop together below.
        while not all(p.exists() for p in outs):
            for i, proc in enumerate(procs):
                if proc.poll() is not None and not outs[i].exists():
                    tail = (workdir / f"allreduce-{i}.log").read_text(errors="replace").strip().splitlines()[-8:]
                    msg = f"all-reduce timer {i} exited with {proc.returncode}; its last lines:\n" + "\n".join(tail)
                    raise BenchError(msg)
            if time.monotonic() > deadline:
                msg = f"the all-reduce timers did not finish within {timeout_s:.0f} s (bench.scaleout.start_timeout_s)"
                raise BenchError(msg)
            time.sleep(0.5)
    finally:
        scaleout_cores.stop_all(procs)
    return summarise([json.loads(p.read_text()) for p in outs])


def summarise(per_worker: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of every worker -> the job's figures: a round's time is its slowest worker's."""
    rounds = [max(times) for times in zip(*(w["times_s"] for w in per_worker), strict=True)]
    first = per_worker[0]
    return {"payload_bytes": first["payload_bytes"], "tensors": first["tensors"], "rounds": len(rounds),
            "median_s": statistics.median(rounds), "p90_s": sorted(rounds)[int(0.9 * (len(rounds) - 1))],
            "mean_s": statistics.fmean(rounds), "per_worker_median_s": [statistics.median(w["times_s"])
                                                                         for w in per_worker]}


def _time_rounds(args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow as tf

    from stream_trainer.config import ClusterConfig, ModelConfig
    from stream_trainer.learn.model import build_unet
    from stream_trainer.learn.workers import make_workers

    workers = make_workers(ClusterConfig(workers=args.addresses.split(","), index=args.index))
    strategy = workers.strategy
    with workers.scope():
        model = build_unet(args.image_size, ModelConfig(base_filters=args.base_filters, depth=args.depth))
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    grads = [tf.random.uniform(s, dtype=tf.float32) for s in shapes]
    device = strategy.extended.worker_devices[0]

    def replica(values: list[tf.Tensor]) -> list[tf.Tensor]:
        with tf.device(device):  # a collective needs placed inputs (as in learn/collectives.py)
            placed = [tf.identity(v) for v in values]
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, placed)

    def all_reduce(values: list[tf.Tensor]) -> list[tf.Tensor]:
        out = strategy.run(replica, args=(values,))
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], out)

    fn = tf.function(all_reduce)
    times = []
    for r in range(WARMUP_ROUNDS + ROUNDS):
        t0 = time.perf_counter()
        fn(grads)[0].numpy()
        if r >= WARMUP_ROUNDS:
            times.append(time.perf_counter() - t0)
    return {"index": args.index, "tensors": len(shapes), "payload_bytes": 4 * sum(int(g.shape.num_elements())
                                                                                  for g in grads),
            "times_s": times}


def main(argv: list[str] | None = None) -> None:
    """One timer process: join, time the rounds, write them, then wait to be stopped."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addresses", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--base-filters", type=int, required=True)
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from stream_trainer import tfenv

    tfenv.configure()
    result = _time_rounds(args)
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(args.out)  # the bench sees the whole file or none
    time.sleep(3600)  # until the bench's SIGTERM (or its death: PR_SET_PDEATHSIG)
    os._exit(0)


if __name__ == "__main__":
    main()
