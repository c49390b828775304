"""The scorer: the eval topic as the loop sees it, and the score of the weights it holds now.

The eval set is read once (``quality/evaluate.py``) and kept. Until it is, the scorer knows one
of three things about the topic, and acts on each:

* it has data: every ``score`` evaluates the current weights (or returns the evaluation already
  made at this step);
* it is empty (or does not exist): evaluation is skipped, and an export may go out unscored
  since there is nothing to score it with. The first read waits up to ``loop.eval_wait_s`` for
  a producer to fill the topic; later checks never wait: one watermark query, made at most once
  per back-off interval (15 s, doubling to 10 min), so an empty topic costs a daemon no stall
  and at most one query per 10 minutes once it has been empty for a while;
* it could not be read (broker away, no authorisation): unknown. The read is retried with the
  same back-off and evaluation resumes once it succeeds; an export meanwhile waits, because the
  topic may have data and an export must carry the score of its weights.

Scores are kept as the first (the baseline of the untrained or restored model), the best and the
last evaluation, never one per evaluation: a daemon evaluates for weeks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import keras
from confluent_kafka import KafkaException

from stream_trainer import metrics
from stream_trainer.config import LoopConfig
from stream_trainer.errors import ConfigError, StreamTrainerError
from stream_trainer.ingest.pipeline import MAX_PIXELS
from stream_trainer.kafka import Cluster
from stream_trainer.quality.deadletter import DeadLetterWorker
from stream_trainer.quality.evaluate import EvalResult, Evaluator, read_eval_messages

log = logging.getLogger(__name__)

RECHECK_FIRST_S = 15.0
RECHECK_MAX_S = 600.0


class Scorer:
    """Evaluates the model on the eval topic's messages; knows whether the topic has any."""

    def __init__(self, cluster: Cluster, topic: str, cfg: LoopConfig, model: keras.Model, image_size: int,
                 batch_size: int, dead_letters: DeadLetterWorker, clock: Callable[[], float] = time.monotonic,
                 max_pixels: int = MAX_PIXELS) -> None:
        self.cluster = cluster
        self.topic = topic
        self.cfg = cfg
        self.model = model
        self.image_size = image_size
        self.batch_size = batch_size
        self.max_pixels = max_pixels  # the training pipeline's limit: eval and dead letters must agree
        self.dead_letters = dead_letters
        self._clock = clock
        self._evaluator: Evaluator | None = None
        self._has_data: bool | None = None  # None: not read yet, or the last read failed
        self._reads = 0
        self._next_read = float("-inf")
        self._backoff = RECHECK_FIRST_S
        self.first: EvalResult | None = None
        self.best: EvalResult | None = None
        self.last: EvalResult | None = None

    @property
    def has_data(self) -> bool | None:
        """True: the eval set is loaded. False: the topic was empty or absent at the last check.
        None: unknown (not read yet, or the last read failed)."""
        return self._has_data

    def score(self, step: int) -> EvalResult | None:
        """The evaluation of the weights at ``step``: the one already made at this step, or a new
        one; None when there is no eval set (see ``has_data``)."""
        if self.last is not None and self.last.step == step:
            return self.last
        evaluator = self._load()
        if evaluator is None:
            return None
        result = evaluator.evaluate(step)
        self.first = self.first or result
        if self.best is None or result.mean_iou > self.best.mean_iou:
            self.best = result
        self.last = result
        metrics.EVAL_MEAN_IOU.set(result.mean_iou)
        metrics.EVAL_PIXEL_ACCURACY.set(result.pixel_accuracy)
        log.info("eval step %d: mean IoU %.3f, pixel accuracy %.3f on %d images%s", result.step, result.mean_iou,
                 result.pixel_accuracy, result.images, f" (snapshot {result.snapshot})" if result.snapshot else "")
        return result

    def _load(self) -> Evaluator | None:
        if self._evaluator is not None or self._clock() < self._next_read:
            return self._evaluator
        # Only the first read waits for a producer to fill the topic; rechecks are one query.
        wait = self.cfg.eval_wait_s if self._reads == 0 else 0.0
        self._reads += 1
        try:
            messages = read_eval_messages(self.cluster, self.topic, self.cfg.eval_max_images, wait)
        except ConfigError as exc:  # the topic does not exist: as good as empty
            self._not_now(False, f"{exc}")
            return None
        except (StreamTrainerError, KafkaException) as exc:
            self._not_now(None, f"reading eval topic '{self.topic}' failed ({exc})")
            return None
        if not messages:
            self._not_now(False, f"eval topic '{self.topic}' is empty")
            return None
        evaluator = Evaluator(self.model, messages, self.image_size, self.cfg.snapshot_dir, self.batch_size,
                              max_pixels=self.max_pixels)
        for m in evaluator.malformed:
            self.dead_letters.submit(self.topic, m.partition, m.offset, m.offset + 1)
        if self._has_data is not None or self._reads > 1:
            log.info("eval topic '%s' readable now: evaluating on %d images", self.topic, evaluator.size)
        self._evaluator, self._has_data = evaluator, True
        return evaluator

    def _not_now(self, has_data: bool | None, why: str) -> None:
        self._has_data = has_data
        self._next_read = self._clock() + self._backoff
        log.warning("%s; evaluation skipped, checked again in %.0f s at the earliest", why, self._backoff)
        self._backoff = min(self._backoff * 2, RECHECK_MAX_S)
