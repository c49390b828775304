"""Why a message was rejected: a bounded reason label (for metrics) and a detail (for people).

The pipeline drops malformed messages silently and at full speed; this module decodes each
dropped one again, alone, with the very function the pipeline maps (``pipeline.decode_example``).
That decoder runs its checks in a fixed order, each under a name scope called after its reason
(``pipeline.STAGES``), so the reason is the scope of the op that failed: there is one set of rules,
never a hand-kept copy. A message that decodes here is not malformed (``examine`` returns None):
the pipeline dropped it for another reason, and it must not be dead-lettered.

Only the detail is written here, a sentence for the team that produced the message (often in
Java or Go), read from the protobuf and the file headers, never TensorFlow's op names or stack text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2

from stream_trainer import wire
from stream_trainer.ingest import pipeline

# The bounded label set of dlq.reason and of the dead-letter counter; docs/wire-format.md
# says what triggers each.
REASONS = ("empty", "parse", "missing_field", "field_type", "version", "image_decode", "mask_decode",
           "mask_format", "shape_mismatch", "mask_values", "too_large", "unknown")

DETAIL_MAX_CHARS = 300
# The image size the classification decodes at when none is given; the reason never depends on it.
DEFAULT_IMAGE_SIZE = 128

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
_NODE = re.compile(r"\{\{node ([^}]+)\}\}")


@dataclass(frozen=True)
class Verdict:
    reason: str  # one of REASONS
    detail: str  # one sentence, at most DETAIL_MAX_CHARS characters


def _verdict(reason: str, detail: str) -> Verdict:
    if len(detail) > DETAIL_MAX_CHARS:
        detail = detail[: DETAIL_MAX_CHARS - 3].rstrip() + "..."
    return Verdict(reason, detail)


@functools.lru_cache(maxsize=4)
def _decoder(image_size: int, max_pixels: int) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """``pipeline.decode_example`` as one graph (traced once): its errors name the failing op."""
    return tf.function(lambda value: pipeline.decode_example(value, image_size, max_pixels),
                       input_signature=[tf.TensorSpec([], tf.string)])


def examine(value: bytes | None, image_size: int = DEFAULT_IMAGE_SIZE,
            max_pixels: int = pipeline.MAX_PIXELS) -> Verdict | None:
    """Decode ``value`` alone exactly as the pipeline does: why it is malformed, or None if it decodes.

    Errors other than a malformed message's (out of memory, a cancelled op) propagate.
    """
    if not value:
        return _verdict("empty", "message value is empty or null")
    try:
        _decoder(image_size, max_pixels)(tf.constant(value))
    except tf.errors.InvalidArgumentError as exc:
        return _explain(_stage(exc), value, exc)
    except UnicodeDecodeError:
        # The Example parser quotes the value in its error when it is no protobuf at all, and
        # TensorFlow then fails to turn that binary message into a Python string.
        return _explain("parse", value, None)
    return None


def classify(value: bytes | None, image_size: int = DEFAULT_IMAGE_SIZE,
             max_pixels: int = pipeline.MAX_PIXELS) -> Verdict:
    """Explain why ``value`` is not a trainable wire-format message (``unknown`` if it decodes alone)."""
    verdict = examine(value, image_size, max_pixels)
    return verdict or _verdict("unknown", "message decodes in isolation; it was rejected inside the pipeline")


def _stage(exc: tf.errors.OpError) -> str:
    """The innermost decoder stage (``pipeline.STAGES``) in the failing op's name, else ``unknown``."""
    for node in reversed(_NODE.findall(exc.message)):
        # TensorFlow numbers a scope entered twice (mask_decode_1): the name is the stage.
        scopes = [name for name in (re.sub(r"_\d+$", "", part) for part in node.split("/")) if name in pipeline.STAGES]
        if scopes:
            return scopes[-1]
    return "unknown"


def _explain(stage: str, value: bytes, exc: tf.errors.OpError | None) -> Verdict:
    """The verdict for a message the decoder rejected in ``stage``."""
    try:
        ex = example_pb2.Example.FromString(value)
    except DecodeError:
        return _verdict("parse", f"message value ({len(value)} bytes) is not a serialized tf.train.Example "
                                 f"protobuf")
    feats = ex.features.feature
    if stage == "parse":
        for key, kind, required in FEATURES:
            problem = _feature_problem(feats.get(key), key, kind, required)
            if problem is not None:
                return problem
        return _verdict("parse", f"TensorFlow's tf.train.Example parser rejects the value although protobuf reads "
                                 f"it ({_op_error(exc)}); a feature set twice or with two list kinds does this")
    if stage == "version":
        version = feats[wire.VERSION_KEY].int64_list.value[0]
        return _verdict("version", f"format_version is {version}; this trainer reads format_version "
                                   f"{wire.FORMAT_VERSION} only")
    image = feats[wire.IMAGE_KEY].bytes_list.value[-1]
    mask = feats[wire.MASK_KEY].bytes_list.value[-1]
    if stage == "image_decode":
        return _image_problem(image, exc)
    if stage == "too_large":
        numbers = _asserted(exc)
        nodes = _NODE.findall(exc.message) if exc is not None else []
        what = "mask" if any(n.startswith("mask/") for n in nodes) else "image"
        h, w, limit = [*numbers, 0, 0, 0][:3]
        return _verdict("too_large", f"{what} declares {h}x{w} pixels (height x width) in its header, more than "
                                     f"trainer.pipeline.max_pixels ({limit}); it is not decoded")
    if stage == "mask_decode":
        return _mask_problem(mask, exc)
    if stage == "mask_format":
        head = mask[:32].ljust(32, b"\0")  # as the decoder reads it: a short file is zero-padded
        return _verdict("mask_format", describe_png_format(head[IHDR_BIT_DEPTH], head[IHDR_COLOUR_TYPE]))
    if stage == "shape_mismatch":
        mh, mw, ih, iw = [*_asserted(exc), 0, 0, 0, 0][:4]
        return _verdict("shape_mismatch", f"mask is {mh}x{mw} pixels (height x width) but the image is {ih}x{iw}; "
                                          f"they must match pixel for pixel")
    if stage == "mask_values":
        values = np.unique(tf.io.decode_png(mask, channels=1).numpy())
        bad = [int(v) for v in values if v not in (wire.PET, wire.BACKGROUND, wire.BORDER)]
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return _verdict("mask_values", f"mask holds pixel values {shown}; only 1 (pet), 2 (background) and "
                                       f"3 (border) are allowed")
    return _verdict("unknown", f"the decoder rejected the message at an unexpected step ({_op_error(exc)})")


def _asserted(exc: tf.errors.OpError | None) -> list[int]:
    """The integers a failed ``tf.debugging.Assert`` of the decoder printed, in order."""
    text = "" if exc is None else exc.message.split("assertion failed:", 1)[-1].split("\n", 1)[0]
    return [int(n) for n in re.findall(r"-?\d+", re.sub(r"\[[^\]\d-]*[A-Za-z][^\]]*\]", " ", text))]


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


def _image_problem(data: bytes, exc: tf.errors.OpError | None) -> Verdict:
    kind = _format(data)
    if kind is None:
        return _verdict("image_decode", f"image is not a JPEG, PNG, GIF or BMP file (it starts with bytes "
                                        f"{data[:4].hex(' ')})")
    return _verdict("image_decode", f"image looks like a {kind} ({len(data)} bytes) but does not decode, "
                                    f"probably truncated or corrupt ({_op_error(exc)})")


def _mask_problem(data: bytes, exc: tf.errors.OpError | None) -> Verdict:
    if not data.startswith(PNG_SIGNATURE):
        kind = _format(data)
        found = f"it is a {kind} file" if kind else f"it lacks the PNG signature {PNG_SIGNATURE.hex(' ')}"
        return _verdict("mask_decode", f"mask is not a PNG file ({found}); the contract needs a PNG")
    return _verdict("mask_decode", f"mask is a PNG ({len(data)} bytes) that does not decode, probably "
                                   f"truncated or corrupt ({_op_error(exc)})")


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


def _op_error(exc: tf.errors.OpError | None) -> str:
    """The failing op's own message, without TensorFlow's traceback, function and op names."""
    if exc is None:
        return "no further detail"
    text = exc.message.split("\n\t [[", 1)[0].split("\n\n")[-1]
    lines = _TF_NOISE.sub(" ", text).strip().splitlines()
    return " ".join(lines[0].split()).rstrip(" .:") if lines else "no further detail"
