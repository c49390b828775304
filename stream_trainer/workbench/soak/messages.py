"""What the chaos soak writes into the topic itself: good records, poison, decompression bombs.

The soak produces every malformed message with its own producer, so it knows their partitions
and offsets from the delivery reports: at the end each must be in the dead-letter topic, and
nothing else may be. Good records come from the synthetic source, like ``pet-producer``'s.
"""

from __future__ import annotations

import io
import random
import struct
import time
import zlib

from producer.sources.synthetic import make_record
from stream_trainer import wire

# A bomb's header promises this many pixels; its bytes are a few hundred. 30000 x 30000 RGB is
# 2.7 GB decoded (the example); the PNG promises 20000 x 20000 (1.2 GB as RGB), under
# TensorFlow's own int32 pixel-count check, so only the trainer's own limit stops it before the
# allocation.
JPEG_BOMB_SIDE = 30000
PNG_BOMB_SIDE = 20000


def good_record(index: int, size: int = 48) -> bytes:
    """A valid message (the synthetic source's record ``index`` of a seed only the soak uses)."""
    record = make_record(index, seed=4242, min_size=size, max_size=size + 16, eval_fraction=0.0)
    return wire.encode(record, int(time.time() * 1000))


def example(features: dict[str, bytes | int]) -> bytes:
    """A tf.train.Example with exactly ``features`` (bytes -> bytes_list, int -> int64_list)."""
    from tensorflow.core.example import example_pb2  # deferred: importing TF takes seconds

    ex = example_pb2.Example()
    for key, value in features.items():
        if isinstance(value, int):
            ex.features.feature[key].int64_list.value.append(value)
        else:
            ex.features.feature[key].bytes_list.value.append(value)
    return bytes(ex.SerializeToString())


def _fields(record: wire.PetRecord, **replace: bytes | int) -> bytes:
    features: dict[str, bytes | int] = {wire.VERSION_KEY: wire.FORMAT_VERSION, wire.IMAGE_KEY: record.image,
                                        wire.MASK_KEY: record.mask, wire.ID_KEY: record.image_id.encode()}
    features.update(replace)
    return example(features)


def poison(rng: random.Random) -> list[tuple[str, bytes]]:
    """One malformed message of each kind the wire contract rules out, as (kind, value)."""
    base = make_record(rng.randrange(1 << 20), seed=4243, min_size=48, max_size=64, eval_fraction=0.0)
    return [
        ("random_bytes", rng.randbytes(2000)),
        ("truncated_jpeg", _fields(base, **{wire.IMAGE_KEY: base.image[: len(base.image) // 2]})),
        ("wrong_version", _fields(base, **{wire.VERSION_KEY: wire.FORMAT_VERSION + 1})),
        ("missing_mask", example({wire.VERSION_KEY: wire.FORMAT_VERSION, wire.IMAGE_KEY: base.image})),
        ("mask_not_png", _fields(base, **{wire.MASK_KEY: b"GIF89a but not really"})),
    ]


def _jpeg_bomb(side: int) -> bytes:
    """A real 16 x 16 JPEG whose frame header (SOF0) is rewritten to say ``side`` x ``side``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 30)).save(buf, format="JPEG", quality=80)
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    if sof < 0:
        msg = "PIL wrote a JPEG without a baseline frame header"
        raise RuntimeError(msg)
    struct.pack_into(">HH", data, sof + 5, side, side)  # marker, length (2), precision (1), height, width
    return bytes(data)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bomb(side: int) -> bytes:
    """A PNG whose header says ``side`` x ``side`` 8-bit grayscale, with the first rows' data only."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def bombs() -> list[tuple[str, bytes]]:
    """Decompression bombs with a valid mask: tiny messages whose image claims billions of bytes."""
    base = make_record(0, seed=4244, min_size=48, max_size=48, eval_fraction=0.0)
    return [("jpeg_bomb", _fields(base, **{wire.IMAGE_KEY: _jpeg_bomb(JPEG_BOMB_SIDE)})),
            ("png_bomb", _fields(base, **{wire.IMAGE_KEY: _png_bomb(PNG_BOMB_SIDE)}))]
