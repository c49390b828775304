"""Why a message was rejected: a bounded reason label (for metrics) and a detail (for people).

The pipeline drops malformed messages silently and at full speed; this module re-examines the
few dropped ones in Python, one check at a time, so the dead-letter record says exactly what
was wrong. The checks mirror ``pipeline.decode_example``: the same features, the same decode
ops, the same mask rule. The detail is a sentence for the team that produced the message
(often in Java or Go), never TensorFlow's op names or stack text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2

from stream_trainer import wire

# The bounded label set of dlq.reason and of the dead-letter counter; docs/wire-format.md
# says what triggers each.
REASONS = ("empty", "parse", "missing_field", "field_type", "version", "image_decode", "mask_decode",
           "mask_format", "shape_mismatch", "mask_values", "unknown")

DETAIL_MAX_CHARS = 300

# The features pipeline.decode_example parses: (key, list kind, required). An optional one may
# be absent, but when present it must be well-formed or the whole parse fails.
FEATURES = (
    (wire.VERSION_KEY, "int64_list", True),
    (wire.IMAGE_KEY, "bytes_list", True),
    (wire.MASK_KEY, "bytes_list", True),
    (wire.PRODUCE_TS_KEY, "int64_list", False),
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR is always the first chunk: signature (8), length (4), type (4), width (4), height (4).
IHDR_BIT_DEPTH, IHDR_COLOUR_TYPE = 24, 25
MASK_BIT_DEPTH, MASK_COLOUR_TYPE = 8, 0  # 8-bit grayscale: the class value is the pixel value

_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette-indexed", 4: "grayscale with alpha", 6: "RGBA"}
_LIST_NAMES = {"bytes_list": "bytes", "int64_list": "int64", "float_list": "float"}
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (PNG_SIGNATURE, "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"))
# TensorFlow prefixes eager errors with the wrapped function's name and suffixes the op name.
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}|\[Op:[^\]]*\](\s*name:\s*\S*)?|jpeg::Uncompress failed\.")


@dataclass(frozen=True)
class Verdict:
    reason: str  # one of REASONS
    detail: str  # one sentence, at most DETAIL_MAX_CHARS characters


def _verdict(reason: str, detail: str) -> Verdict:
    if len(detail) > DETAIL_MAX_CHARS:
        detail = detail[: DETAIL_MAX_CHARS - 3].rstrip() + "..."
    return Verdict(reason, detail)


def classify(value: bytes | None) -> Verdict:
    """Explain why ``value`` is not a trainable wire-format message."""
    if not value:
        return _verdict("empty", "message value is empty or null")
    try:
        ex = example_pb2.Example.FromString(value)
    except DecodeError:
        return _verdict("parse", f"message value ({len(value)} bytes) is not a serialized tf.train.Example "
                                 f"protobuf")
    feats = ex.features.feature
    for key, kind, required in FEATURES:
        problem = _feature_problem(feats.get(key), key, kind, required)
        if problem is not None:
            return problem
    version = feats[wire.VERSION_KEY].int64_list.value[0]
    if version != wire.FORMAT_VERSION:
        return _verdict("version", f"format_version is {version}; this trainer reads format_version "
                                   f"{wire.FORMAT_VERSION} only")
    image_bytes = feats[wire.IMAGE_KEY].bytes_list.value[0]
    mask_bytes = feats[wire.MASK_KEY].bytes_list.value[0]
    image = _decode_image(image_bytes)
    if isinstance(image, Verdict):
        return image
    mask = _decode_mask(mask_bytes)
    if isinstance(mask, Verdict):
        return mask
    image_hw, mask_hw = tuple(image.shape[:2]), tuple(mask.shape[:2])
    if image_hw != mask_hw:
        return _verdict("shape_mismatch", f"mask is {mask_hw[0]}x{mask_hw[1]} pixels (height x width) but the "
                                          f"image is {image_hw[0]}x{image_hw[1]}; they must match pixel for pixel")
    bad = [int(v) for v in np.unique(mask.numpy()) if v not in (wire.PET, wire.BACKGROUND, wire.BORDER)]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return _verdict("mask_values", f"mask holds pixel values {shown}; only 1 (pet), 2 (background) and "
                                       f"3 (border) are allowed")
    return _verdict("unknown", "message decodes in isolation; it was rejected inside the pipeline")


def _feature_problem(feature: example_pb2.Feature | None, key: str, kind: str, required: bool) -> Verdict | None:
    """None if ``feature`` is what the parser expects; TensorFlow treats a feature without a list as absent."""
    want = _LIST_NAMES[kind]
    found = feature.WhichOneof("kind") if feature is not None else None
    if found is None:
        if required:
            return _verdict("missing_field", f"required feature '{key}' ({kind} with one value) is missing")
        return None
    what = f"feature '{key}' must hold exactly one {want} value" if required else \
        f"optional feature '{key}', when present, must hold exactly one {want} value"
    if found != kind:
        name = _LIST_NAMES.get(found, found)
        return _verdict("field_type", f"{what}; found {'an' if name[0] in 'aeiou' else 'a'} {name} list")
    count = len(getattr(feature, kind).value)
    if count != 1:
        return _verdict("field_type", f"{what}; found {count} {want} values")
    return None


def _decode_image(data: bytes) -> tf.Tensor | Verdict:
    """The image as the pipeline decodes it (JPEG by its magic, anything else by decode_image)."""
    kind = _format(data)
    try:
        if data.startswith(b"\xff\xd8\xff"):
            return tf.io.decode_jpeg(data, channels=3)
        return tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError) as exc:
        if kind is None:
            return _verdict("image_decode", f"image is not a JPEG, PNG, GIF or BMP file (it starts with bytes "
                                            f"{data[:4].hex(' ')})")
        return _verdict("image_decode", f"image looks like a {kind} ({len(data)} bytes) but does not decode, "
                                        f"probably truncated or corrupt ({_clean(exc)})")


def _decode_mask(data: bytes) -> tf.Tensor | Verdict:
    """The mask's class values, or why it is not an 8-bit grayscale PNG."""
    if not data.startswith(PNG_SIGNATURE):
        kind = _format(data)
        found = f"it is a {kind} file" if kind else f"it lacks the PNG signature {PNG_SIGNATURE.hex(' ')}"
        return _verdict("mask_decode", f"mask is not a PNG file ({found}); the contract needs a PNG")
    try:
        mask = tf.io.decode_png(data, channels=1)
    except (tf.errors.InvalidArgumentError, ValueError) as exc:
        return _verdict("mask_decode", f"mask is a PNG ({len(data)} bytes) that does not decode, probably "
                                       f"truncated or corrupt ({_clean(exc)})")
    # decode_png converts any PNG to one 8-bit channel: palette indices become luminance and 16-bit
    # values are rescaled, so the class values are lost. Only the header says what was sent.
    depth, colour = data[IHDR_BIT_DEPTH], data[IHDR_COLOUR_TYPE]
    if (depth, colour) != (MASK_BIT_DEPTH, MASK_COLOUR_TYPE):
        return _verdict("mask_format", describe_png_format(depth, colour))
    return mask


def describe_png_format(depth: int, colour: int) -> str:
    """A sentence saying what a mask PNG's IHDR holds and what the contract needs instead."""
    name = _COLOUR_TYPES.get(colour, "of an unknown colour type")
    found = f"palette-indexed (colour type 3, bit depth {depth})" if colour == 3 else \
        f"{depth}-bit {name} (bit depth {depth}, colour type {colour})"
    hint = " (e.g. Java ImageIO's TYPE_BYTE_INDEXED; write TYPE_BYTE_GRAY instead)" if colour == 3 else ""
    return (f"mask PNG is {found}; the contract needs 8-bit grayscale (bit depth 8, colour type 0) holding "
            f"the class values 1, 2, 3{hint}")


def _format(data: bytes) -> str | None:
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _clean(exc: Exception) -> str:
    """The first line of a TensorFlow error without its function and op names: '{{function_node ...}}'."""
    text = str(getattr(exc, "message", None) or exc)
    lines = _TF_NOISE.sub(" ", text).strip().splitlines()
    return " ".join(lines[0].split()).rstrip(" .:") if lines else "no further detail"
