"""Versioned exports for serving: TF Serving's numbered SavedModel directories, plus model.keras.

Layout of ``trainer.checkpoint.export_dir`` (TF Serving's ``--model_base_path``)::

    export_dir/
      1200/                  one version per export; the number is the training step
        saved_model.pb       signatures below; needs only TensorFlow to run
        variables/
        model.keras          the same weights for Keras (keras.saving.load_model)
        model.json           step, scores, topic, offsets, precision, signatures, exported_at
      1400/
      latest -> 1400         a relative symlink to the newest version, for people and scripts

TF Serving serves the highest number itself and skips names that are not numbers (``latest``,
and the hidden ``.export-*`` directory an export is written into before its rename), so a
half-written export is never loaded. Only the newest ``export_keep`` versions are kept.

Signatures (both return ``classes``, int64 ``(n, S, S)``: 0 pet, 1 background, 2 border, and
``trimap``, uint8 ``(n, S, S)`` = classes + 1, the Oxford-IIIT Pet trimap values):

* ``serving_default``: ``image_bytes``, string ``(n,)``, encoded JPEG/PNG/GIF/BMP images of any
  size, decoded and resized exactly as the trainer does (``pipeline.decode_image``);
* ``serve_pixels``: ``images``, float32 ``(n, S, S, 3)`` RGB in [0, 1].

The inputs and outputs have these dtypes whatever precision the model computes in.

``export_policy: improved`` exports a model only when its eval mean IoU is at least the last
exported version's minus ``export_tolerance``. The first export always happens. Without scores
(no eval data) there is nothing to compare, so the model is exported as with ``always`` and the
log says so: declining would freeze serving on whatever came first. The trainer never offers
an unscored export while the eval topic has data (``Publisher``; the loop evaluates the weights
first). The comparison is with the *last exported* version, so a series of exports each just
within the tolerance can drift down by more than the tolerance in total.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from stream_trainer import metrics, tfenv
from stream_trainer.config import CheckpointConfig
from stream_trainer.errors import CheckpointError, one_line
from stream_trainer.ingest import pipeline
from stream_trainer.learn.batch_norm import plain_copy
from stream_trainer.quality.evaluate import EvalResult

log = logging.getLogger(__name__)

SIGNATURE_BYTES = "serving_default"
SIGNATURE_PIXELS = "serve_pixels"
LATEST = "latest"
_TMP_PREFIX = ".export-"


class Exporter:
    """Owns ``export_dir``: decides whether a model is exported, writes versions, prunes old ones."""

    def __init__(self, cfg: CheckpointConfig, image_size: int) -> None:
        self.cfg = cfg
        self.image_size = image_size
        self.dir = Path(cfg.export_dir)
        self._last_step: int | None = None  # exported by this process: same step, same weights

    def versions(self) -> list[int]:
        """The version numbers present in ``export_dir``, oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.dir.iterdir() if p.name.isdigit() and p.is_dir())

    def metadata(self, version: int) -> dict[str, Any]:
        """The ``model.json`` of one version; {} when it is missing or unreadable (logged)."""
        path = self.dir / str(version) / "model.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("export version %d has no readable model.json (%s): its scores are unknown", version, exc)
            return {}
        return meta if isinstance(meta, dict) else {}

    def export(self, model: keras.Model, step: int, scores: Mapping[str, float] | None,
               extra_meta: Mapping[str, Any]) -> Path | None:
        """Write ``model`` as a new version directory; None when the policy declines (logged).

        ``scores``: the evaluation of exactly these weights (``mean_iou`` is required, other
        entries are recorded as they are), or None when there is none. ``extra_meta``: merged
        into ``model.json`` (the trainer passes ``topic`` and ``next_offsets``; ``precision`` is
        read from the model).
        The version is ``step``, or one more than the newest version when that is not lower
        (a restart from an older checkpoint), so TF Serving always sees the new export as the
        newest. Raises CheckpointError when the export cannot be written; the versions already
        there and ``latest`` are then left as they were.
        """
        if scores is not None and "mean_iou" not in scores:
            msg = f"scores must hold 'mean_iou', got {sorted(scores)}"
            raise ValueError(msg)
        if step == self._last_step:
            log.info("export: step %d is already exported; skipped", step)
            return None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            versions = self.versions()
        except OSError as exc:
            msg = f"cannot use export directory {self.dir}: {exc}"
            raise CheckpointError(msg) from exc
        last = self.metadata(versions[-1]) if versions else {}
        if not self._wanted(step, scores, last):
            return None
        version = max(step, versions[-1] + 1) if versions else step
        if version != step:
            log.warning("export: step %d is not above the newest version %d; exporting as version %d",
                        step, versions[-1], version)
        s = self.image_size
        meta = {"version": version, "step": step, "scores": dict(scores) if scores else None,
                "exported_at": time.time(), "image_size": s,
                "signatures": {SIGNATURE_BYTES: "image_bytes: string (n,) encoded images",
                               SIGNATURE_PIXELS: f"images: float32 (n, {s}, {s}, 3) in [0, 1]",
                               "outputs": f"classes: int64 (n, {s}, {s}) 0 pet 1 background 2 border; "
                                          "trimap: uint8 = classes + 1"},
                **extra_meta,
                # What the model computes in, from the model itself; the signatures' dtypes do not change.
                "precision": model.dtype_policy.name}
        final = self._write(model, version, meta)
        self._last_step = step
        self._point_latest(version)
        self._prune()
        return final

    def _wanted(self, step: int, scores: Mapping[str, float] | None, last: Mapping[str, Any]) -> bool:
        """The ``export_policy`` decision, logged with both scores."""
        new = None if scores is None else float(scores["mean_iou"])
        old_scores = last.get("scores") or {}
        old = old_scores.get("mean_iou") if isinstance(old_scores, dict) else None
        shown = f"mean IoU {_fmt(new)} vs last exported {_fmt(old)} (version {last.get('version', '-')})"
        if self.cfg.export_policy == "always":
            log.info("export step %d: policy always; %s", step, shown)
            return True
        if not last:
            log.info("export step %d: first export; %s", step, shown)
            return True
        if new is None or old is None:
            log.warning("export step %d: policy improved cannot compare (%s); exporting anyway", step, shown)
            return True
        if new >= old - self.cfg.export_tolerance:
            log.info("export step %d: %s, within tolerance %.3f; exporting", step, shown, self.cfg.export_tolerance)
            return True
        log.info("export step %d: %s is worse by more than %.3f; not exported", step, shown,
                 self.cfg.export_tolerance)
        return False

    def _write(self, model: keras.Model, version: int, meta: Mapping[str, Any]) -> Path:
        """Everything into a hidden directory beside the versions, then one rename."""
        tmp = self.dir / f"{_TMP_PREFIX}{version}-{os.getpid()}"
        final = self.dir / str(version)
        try:
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover from a crash of this very pid
            serving_archive(model, self.image_size).write_out(str(tmp), verbose=False)
            plain_copy(model).save(tmp / "model.keras")  # loads without this package
            (tmp / "model.json").write_text(json.dumps(meta, indent=1))
            tmp.rename(final)
        except (OSError, tf.errors.OpError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            msg = f"exporting step {meta['step']} as {final} failed: {one_line(exc)}"
            raise CheckpointError(msg) from exc
        finally:
            tfenv.release_memory()
        log.info("exported %s (step %d)", final, meta["step"])
        return final

    def _point_latest(self, version: int) -> None:
        """Swing ``latest`` to the new version atomically (symlink beside it, then rename over)."""
        link = self.dir / LATEST
        tmp = self.dir / f".{LATEST}-{os.getpid()}"
        try:
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(str(version), target_is_directory=True)
            tmp.replace(link)
        except OSError as exc:
            # The version itself is complete and TF Serving never reads the link: say so, go on.
            log.error("export version %d written, but %s could not point to it: %s", version, link, exc)

    def _prune(self) -> None:
        """Delete all but the newest ``export_keep`` versions, and dead processes' temp dirs."""
        for old in self.versions()[:-self.cfg.export_keep]:
            path = self.dir / str(old)
            try:
                shutil.rmtree(path)
            except OSError as exc:
                log.error("could not delete old export %s: %s", path, exc)
            else:
                log.info("deleted old export %s (export_keep %d)", path, self.cfg.export_keep)
        for tmp in self.dir.glob(f"{_TMP_PREFIX}*"):
            if not _pid_alive(tmp.name.rsplit("-", 1)[-1]):
                shutil.rmtree(tmp, ignore_errors=True)


class Publisher:
    """The trainer's exports: its model at a checkpoint, with the score of exactly those weights.

    Written or declined, each offer is counted (``stream_trainer_exports_total``); a failed
    write is logged and training goes on (the checkpoint is what matters for recovery)."""

    def __init__(self, cfg: CheckpointConfig, model: keras.Model, topic: str, precision: str) -> None:
        self.model = model
        self.topic = topic
        self.precision = precision
        self.exporter = Exporter(cfg, model.input_shape[1])

    def publish(self, step: int, positions: Mapping[int, int], evaluation: EvalResult | None) -> Path | None:
        """Offer the weights at ``step`` (``positions``: the checkpoint's next offsets); the new
        version, or None when declined or not written."""
        # Scores only from an evaluation of these very weights; older ones would compare the wrong model.
        scores = None
        if evaluation is not None and evaluation.step == step:
            scores = {"mean_iou": evaluation.mean_iou, "pixel_accuracy": evaluation.pixel_accuracy}
        meta = {"topic": self.topic, "precision": self.precision,
                "next_offsets": {str(p): o for p, o in positions.items()}}
        try:
            path = self.exporter.export(self.model, step, scores, meta)
        except CheckpointError as exc:
            log.error("%s", exc)
            return None
        metrics.EXPORTS.labels("written" if path is not None else "declined").inc()
        return path


def serving_archive(model: keras.Model, image_size: int) -> keras.export.ExportArchive:
    """A Keras ExportArchive of ``model`` with the two serving signatures (module docstring)."""
    size = image_size

    def segment(images: tf.Tensor) -> dict[str, tf.Tensor]:
        classes = tf.argmax(model(images, training=False), axis=-1, output_type=tf.int64)
        return {"classes": classes, "trimap": tf.cast(classes + 1, tf.uint8)}

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(lambda data: pipeline.decode_image(data, size), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return segment(tf.cast(pixels, tf.float32) / 255.0)

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The TensorSpec names become the signatures' input names (what a REST request sends).
    archive.add_endpoint(SIGNATURE_BYTES, tf.function(
        from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]))
    archive.add_endpoint(SIGNATURE_PIXELS, tf.function(
        segment, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")]))
    return archive


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except ValueError:
        return True  # not our naming: leave it alone
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
