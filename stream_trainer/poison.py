"""Why a message was rejected: a bounded reason label (for metrics) and a detail (for people).

The pipeline drops malformed messages silently and at full speed; this module re-examines the
few dropped ones in Python, one check at a time, so the dead-letter record says exactly what
was wrong. The checks mirror ``pipeline.decode_example``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2

from stream_trainer import wire

REASONS = ("empty", "parse", "missing_field", "version", "image_decode", "mask_decode", "shape_mismatch",
           "mask_values", "unknown")


@dataclass(frozen=True)
class Verdict:
    reason: str  # one of REASONS
    detail: str


def _first(feature: example_pb2.Feature, kind: str) -> object | None:
    values = getattr(feature, kind).value
    return values[0] if len(values) == 1 else None


def classify(value: bytes | None) -> Verdict:
    """Explain why ``value`` is not a trainable wire-format message."""
    if not value:
        return Verdict("empty", "message value is empty or null")
    try:
        ex = example_pb2.Example.FromString(value)
    except DecodeError as exc:
        return Verdict("parse", f"value is not a tf.train.Example protobuf: {exc}")
    feats = ex.features.feature
    for key, kind in ((wire.VERSION_KEY, "int64_list"), (wire.IMAGE_KEY, "bytes_list"), (wire.MASK_KEY, "bytes_list")):
        if key not in feats or _first(feats[key], kind) is None:
            return Verdict("missing_field", f"required feature '{key}' ({kind}, one value) is missing")
    version = _first(feats[wire.VERSION_KEY], "int64_list")
    if version != wire.FORMAT_VERSION:
        return Verdict("version", f"format_version {version} is not supported (expected {wire.FORMAT_VERSION})")
    try:
        image = tf.io.decode_image(_first(feats[wire.IMAGE_KEY], "bytes_list"), channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError) as exc:
        return Verdict("image_decode", f"image does not decode: {_short(exc)}")
    try:
        mask = tf.io.decode_png(_first(feats[wire.MASK_KEY], "bytes_list"), channels=1)
    except (tf.errors.InvalidArgumentError, ValueError) as exc:
        return Verdict("mask_decode", f"mask is not a decodable PNG: {_short(exc)}")
    if tuple(image.shape[:2]) != tuple(mask.shape[:2]):
        return Verdict("shape_mismatch", f"mask is {tuple(mask.shape[:2])} but image is {tuple(image.shape[:2])}")
    values = np.unique(mask.numpy())
    bad = [int(v) for v in values if v not in (wire.PET, wire.BACKGROUND, wire.BORDER)]
    if bad:
        return Verdict("mask_values", f"mask holds values {bad[:5]} outside {{1,2,3}}")
    return Verdict("unknown", "message decodes in isolation; it was rejected inside the pipeline")


def _short(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0][:300]
