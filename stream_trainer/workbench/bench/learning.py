"""``--scenario learning`` (issue 14): does replay keep what phase A taught while phase B trains?

The stream: pet-producer's own code (``producer.app.run``) sends a drifting synthetic stream,
phase A's train images then phase B's, into a fresh one-partition topic, and both phases' eval
images to its eval topic (each record's ``source`` names its phase: ``wire.phase_of``). One
partition keeps the stream's order as the producer sent it; decoding still uses every core.

Two runs, from the same initial weights and seed, through the trainer's own parts
(``KafkaSource`` -> ``decoded_groups`` -> ``Feeder`` -> ``Batcher`` -> compiled step, then
``replay.add`` as ``Accountant.trained`` does): without replay, and with the store as
configured (``trainer.replay``). The run without replay trains A until A's eval IoU plateaus
(``learning_parts.plateaued``), which fixes the number of A images; both runs then train exactly that many
fresh A images and the same number of fresh B images. Both phases are evaluated every
``eval_every_images`` fresh images: the curves of the chart.

Cost: the step rate with replay against without at the same batch size, in interleaved rounds
on rows held in memory; the store's allocated bytes; this process's RSS at every evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

from stream_trainer.config import Settings
from stream_trainer.workbench.bench import config as bench_config
from stream_trainer.workbench.bench import machine
from stream_trainer.workbench.bench.config import BenchConfig, LearningConfig

log = logging.getLogger(__name__)

FORGET_LIMIT = 0.05  # IoU on A after B may be at most this far below its peak (with replay)
TARGET_RATIO = 0.95


def learning_settings(settings: Settings, lc: LearningConfig, topic: str) -> Settings:
    """The bench settings with the scenario's topics, tiny model and phased producer."""
    t = settings.trainer
    trainer = dataclasses.replace(
        t, pipeline=dataclasses.replace(t.pipeline, image_size=lc.image_size, batch_size=lc.batch_size),
        model=dataclasses.replace(t.model, base_filters=lc.base_filters, depth=lc.depth))
    source = dataclasses.replace(settings.producer.source, kind="synthetic", phases=list(lc.phases),
                                 eval_fraction=lc.eval_fraction, min_size=lc.min_px, max_size=lc.max_px)
    producer = dataclasses.replace(settings.producer, source=source, rate=0.0, passes=1, shuffle=True,
                                   create_topics=True, send_eval=True,
                                   metrics=dataclasses.replace(settings.producer.metrics, port=0))
    topics = dataclasses.replace(settings.topics, train=topic, eval=f"{topic}-eval", dead_letter=f"{topic}-dlq",
                                 partitions=1)
    return dataclasses.replace(settings, trainer=trainer, producer=producer, topics=topics).validate()


def run(settings: Settings, bench: BenchConfig, command: str) -> dict[str, Any]:
    """Produce the phased stream, train without and with replay, measure replay's cost."""
    import keras

    from producer.app import run as produce
    from stream_trainer.kafka import Cluster
    from stream_trainer.workbench.bench import learning_parts as parts
    from stream_trainer.workbench.bench.contenders import Context
    from stream_trainer.workbench.bench.training import Trainer

    session = machine.Session()
    lc = bench.learning
    s = learning_settings(settings, lc, f"bench-learn-{uuid.uuid4().hex[:8]}")
    a, b = (ph.name for ph in lc.phases)
    cluster = Cluster(s.kafka, group_id="stream-trainer-bench")
    try:
        cluster.wait_until_reachable()
        sent = produce(s)
        log.info("produced the phased stream: %s", sent.line())
        stream = parts.Stream.read(cluster, s, a, b)
        log.info("train topic: %d images of %s then %d of %s; eval: %s", stream.b_start, a,
                 stream.end - stream.b_start, b, {k: len(v) for k, v in stream.eval_values.items()})
        initial: list[Any] = []

        def trainer() -> Trainer:
            keras.utils.set_random_seed(bench.seed)  # the same initial weights and flips in both runs
            tr = Trainer(s)
            if initial:
                tr.model.set_weights(initial)  # exactly, whatever else drew random numbers since
            else:
                initial.extend(tr.model.get_weights())
            return tr

        ctx = Context(s, bench)
        plain = parts.train_run(ctx, stream, trainer(), replay=False, a_images=None)
        replaying = trainer()
        with_replay = parts.train_run(ctx, stream, replaying, replay=True, a_images=plain["a_images"])
        cost = parts.replay_cost(ctx, stream, replaying)  # its step is traced already
        cluster.admin.delete_topics([s.topics.train, s.topics.eval, s.topics.dead_letter])
    finally:
        cluster.close()
    runs = {"without_replay": plain, "with_replay": with_replay}
    return {
        **session.header("learning", command),
        "workload": {"phases": [bench_config.as_dict(ph) for ph in lc.phases], "train_images": {
            a: stream.b_start, b: stream.end - stream.b_start},
            "eval_images": {k: len(v) for k, v in stream.eval_values.items()}, "producer": sent.line(),
            "image_size": lc.image_size, "batch_size": lc.batch_size, "precision": plain["precision"]},
        "config": {"learning": bench_config.as_dict(lc), "replay": bench_config.as_dict(s.trainer.replay),
                   "pipeline": bench_config.as_dict(s.trainer.pipeline),
                   "model": bench_config.as_dict(s.trainer.model)},
        "phases": [a, b],
        "runs": runs,
        "cost": cost,
        "targets": targets(runs, cost),
    }


def targets(runs: dict[str, Any], cost: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's targets from the two runs and the cost measurement (op "report": no requirement)."""
    r, p = runs["with_replay"], runs["without_replay"]
    rows: list[tuple[str, float, str, float]] = [
        ("with replay: IoU on A after B - peak IoU on A", r["a_after_b"] - r["a_peak"], ">=", -FORGET_LIMIT),
        ("IoU on B after B: with replay / without", r["b_after_b"] / p["b_after_b"] if p["b_after_b"] else 0.0,
         ">=", TARGET_RATIO),
        ("step rate with replay / without, same batch size", cost["ratio"]["median"], ">=", TARGET_RATIO),
        ("without replay: IoU on A after B - peak IoU on A", p["a_after_b"] - p["a_peak"], "report", 0.0),
        ("replay store bytes allocated (MiB)", cost["store_bytes"] / 2**20, "report", 0.0),
        ("RSS change over the replay run after its first evaluation (MiB)", r["rss_growth_mib"], "report", 0.0),
    ]
    return [{"name": name, "measured": value, "op": op, "required": None if op == "report" else required,
             "met": None if op == "report" else value >= required} for name, value, op, required in rows]
