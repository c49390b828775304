"""One decoder: the pipeline and the dead-letter classification run the same function, a
decompression bomb is rejected from its header, and every group says which messages it saw."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from producer.sources.synthetic import make_record
from stream_trainer import wire
from stream_trainer.ingest import pipeline
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.quality import poison
from tests.test_trainer import poison_messages
from tests.test_units import _TRIMAP, MASK_FORMATS, _example, _png

SIZE = 32


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def png_bomb(side: int = 8192) -> bytes:
    """A valid 8-bit greyscale PNG of side x side black pixels (67 M pixels at the default) in ~65 KB."""
    squeeze = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the row's pixels
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def jpeg_bomb(side: int = 60000) -> bytes:
    """A few hundred bytes of JPEG whose frame header (SOF0) declares side x side pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", side, side)  # after marker (2), length (2), precision (1)
    return bytes(data)


def _good(index: int = 0) -> bytes:
    return wire.encode(make_record(index, seed=3, min_size=40, max_size=60), 1234)


@functools.cache
def bombs() -> dict[str, bytes]:
    """Messages whose image or mask declares far more pixels than trainer.pipeline.max_pixels."""
    return {"png_image": _example(image__encoded=[png_bomb()]), "jpeg_image": _example(image__encoded=[jpeg_bomb()]),
            "png_mask": _example(png_bomb())}


def _decodes(value: bytes, max_pixels: int = pipeline.MAX_PIXELS) -> bool:
    try:
        pipeline.decode_example(tf.constant(value), SIZE, max_pixels)
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError):  # TensorFlow quotes a non-protobuf value
        return False
    return True


def test_the_classification_agrees_with_the_pipeline_on_every_message() -> None:
    corpus = {**poison_messages(), **{f"mask_{k}": _example(m) for k, (m, _) in MASK_FORMATS.items()},
              **{f"bomb_{k}": v for k, v in bombs().items()}, "good": _good(), "good_png_mask": _example(_png(_TRIMAP)),
              "truncated_jpeg": _example(image__encoded=[_good_jpeg()[:300]])}
    for name, value in corpus.items():
        verdict = poison.examine(value, SIZE)
        assert (verdict is None) == _decodes(value), (name, verdict)


def _good_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("name", list(bombs()))
def test_a_decompression_bomb_is_too_large_from_its_header(name: str) -> None:
    verdict = poison.examine(bombs()[name], SIZE)
    assert verdict is not None and verdict.reason == "too_large", verdict
    what = "mask" if name.endswith("mask") else "image"
    assert verdict.detail.startswith(f"{what} declares "), verdict.detail
    assert f"more than trainer.pipeline.max_pixels ({pipeline.MAX_PIXELS})" in verdict.detail


def test_max_pixels_is_the_exact_bound_and_0_means_no_limit() -> None:
    value = _example(_png(_TRIMAP))  # a 40 x 40 image and mask
    assert poison.examine(value, SIZE, max_pixels=1600) is None
    verdict = poison.examine(value, SIZE, max_pixels=1599)
    assert verdict is not None and verdict.reason == "too_large"
    assert verdict.detail.startswith("image declares 40x40 pixels"), verdict.detail
    unlimited = poison.examine(_example(image__encoded=[jpeg_bomb(5000)]), SIZE, max_pixels=0)
    assert unlimited is not None and unlimited.reason == "shape_mismatch"  # decoded at 5000 x 5000 (grey)
    assert _decodes(value, max_pixels=0)


def test_a_message_that_decodes_is_not_malformed() -> None:
    assert poison.examine(_good(), SIZE) is None
    assert poison.classify(_good()).reason == "unknown"


def _groups(messages: list[tuple[int, int, bytes]]) -> list[dict[str, np.ndarray]]:
    inbox = Inbox(64)
    for p, o, v in messages:
        inbox.put(tf.constant(v), tf.constant(p, tf.int32), tf.constant(o, tf.int64))
    inbox.put_end()
    return [{k: t.numpy() for k, t in g.items()} for g in pipeline.decoded_groups(inbox, SIZE, group=16)]


def test_each_group_lists_every_message_it_saw_including_the_dropped_ones() -> None:
    bad = poison_messages()["mask_values"]
    (group,) = _groups([(0, 5, _good(0)), (1, 9, bad), (0, 6, bad), (0, 7, _good(1)), (1, 10, _good(2))])
    assert group["seen_partition"].dtype == np.int32 and group["seen_offset"].dtype == np.int64
    assert list(zip(group["seen_partition"].tolist(), group["seen_offset"].tolist(), strict=True)) == [
        (0, 5), (1, 9), (0, 6), (0, 7), (1, 10)]
    assert group["offset"].tolist() == [5, 7, 10] and group["image"].shape == (3, SIZE, SIZE, 3)


def test_a_group_of_only_malformed_messages_still_says_what_it_saw() -> None:
    (group,) = _groups([(2, 41, b"")])  # e.g. the last message of a quiet partition
    assert group["offset"].shape == (0,) and group["image"].shape == (0, SIZE, SIZE, 3)
    assert group["seen_partition"].tolist() == [2] and group["seen_offset"].tolist() == [41]
