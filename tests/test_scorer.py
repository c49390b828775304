"""The scorer against a real broker: an empty eval topic costs one wait, then a cheap recheck at
most once per back-off interval; a read error skips evaluation without ending it; once the topic
has data, evaluation runs, and only the first, best and last scores are kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import keras
import numpy as np
import pytest

from stream_trainer.config import KafkaConfig, LoopConfig, ModelConfig
from stream_trainer.kafka import Cluster
from stream_trainer.learn.model import build_unet
from stream_trainer.loop.scorer import RECHECK_FIRST_S, Scorer
from stream_trainer.quality.deadletter import DeadLetterWorker
from stream_trainer.threads import Threads
from tests.pets import produce_pets

SIZE = 32
WAIT_S = 4.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_unet(SIZE, ModelConfig(base_filters=4, depth=2))


@pytest.fixture()
def make_scorer(cluster: Cluster, new_topic: Callable[..., str], model: keras.Model
                ) -> Iterator[Callable[[str, Clock], Scorer]]:
    stop = threading.Event()
    dead = DeadLetterWorker(cluster, new_topic(1, "scorer-dlq"), stop, Threads())  # not started: holes only queue

    def make(topic: str, clock: Clock) -> Scorer:
        cfg = LoopConfig(eval_wait_s=WAIT_S, eval_max_images=8, snapshot_dir="")
        return Scorer(cluster, topic, cfg, model, SIZE, 4, dead, clock=clock)

    yield make
    stop.set()


def _timed(scorer: Scorer, step: int) -> tuple[object, float]:
    t0 = time.monotonic()
    result = scorer.score(step)
    return result, time.monotonic() - t0


def test_an_empty_eval_topic_is_waited_for_once_then_rechecked_rarely_and_cheaply(
        kafka_bootstrap: str, new_topic: Callable[..., str], make_scorer: Callable[[str, Clock], Scorer]) -> None:
    topic, clock = new_topic(1, "scorer-eval"), Clock()
    scorer = make_scorer(topic, clock)
    result, took = _timed(scorer, 0)
    assert result is None and scorer.has_data is False
    assert took >= WAIT_S, f"the first read did not wait for a producer ({took:.1f} s)"

    clock.now += RECHECK_FIRST_S  # due for a recheck: one query, no wait
    result, took = _timed(scorer, 1)
    assert result is None and scorer.has_data is False and took < WAIT_S / 2, took

    produce_pets(kafka_bootstrap, topic, 6)
    clock.now += 2 * RECHECK_FIRST_S - 1  # the interval doubled: not yet
    result, took = _timed(scorer, 2)
    assert result is None and took < 0.2, f"the empty topic was queried again before its back-off ({took:.2f} s)"

    clock.now += 1
    result, _ = _timed(scorer, 3)
    assert result is not None and result.images == 6 and scorer.has_data is True


def test_a_read_error_skips_evaluation_and_a_later_read_recovers(
        kafka_bootstrap: str, cluster: Cluster, new_topic: Callable[..., str],
        make_scorer: Callable[[str, Clock], Scorer]) -> None:
    topic, clock = new_topic(1, "scorer-eval"), Clock()
    produce_pets(kafka_bootstrap, topic, 6)
    scorer = make_scorer(topic, clock)
    away = Cluster(KafkaConfig(bootstrap_servers="127.0.0.1:1"))
    scorer.cluster = away  # the broker is away for the first read
    try:
        assert scorer.score(0) is None
    finally:
        away.close()
    assert scorer.has_data is None, "unknown, not empty: an export must wait for a score"
    scorer.cluster = cluster  # back
    assert scorer.score(1) is None, "retried before its back-off"
    clock.now += RECHECK_FIRST_S
    result = scorer.score(2)
    assert result is not None and result.images == 6 and scorer.has_data is True


def test_scores_are_the_first_best_and_last_not_one_per_evaluation(
        kafka_bootstrap: str, new_topic: Callable[..., str], make_scorer: Callable[[str, Clock], Scorer],
        model: keras.Model) -> None:
    topic = new_topic(1, "scorer-eval")
    produce_pets(kafka_bootstrap, topic, 6)
    saved, rng = model.get_weights(), np.random.default_rng(0)
    variants = [saved] + [[w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in saved] for _ in range(8)]
    try:
        # First pass: the score of each set of weights. Second pass, with a new scorer: the best
        # set in the middle, so that neither the first nor the last evaluation is the best one.
        probe = make_scorer(topic, Clock())
        ious = []
        for step, weights in enumerate(variants):
            model.set_weights(weights)
            result = probe.score(step)
            assert result is not None
            ious.append(result.mean_iou)
        assert len(set(ious)) > 3, "the weights did not change the score: nothing tested"
        best = int(np.argmax(ious))
        others = [i for i in range(len(variants)) if i != best]
        order = [*others[:4], best, *others[4:]]
        scorer, seen = make_scorer(topic, Clock()), []
        for step, i in enumerate(order):
            model.set_weights(variants[i])
            result = scorer.score(step)
            assert result is not None and (step > 0 or scorer.score(step) is result), "a step is evaluated once"
            seen.append(result)
    finally:
        model.set_weights(saved)
    assert (scorer.first, scorer.best, scorer.last) == (seen[0], seen[4], seen[-1])
    assert seen[4].mean_iou == max(ious)
    assert not [k for k, v in vars(scorer).items() if isinstance(v, list | dict | set | tuple)], vars(scorer)
