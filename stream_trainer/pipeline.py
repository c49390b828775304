"""The input pipeline as pure tf.data: parse -> decode -> resize -> (shuffle, flip) -> batch -> prefetch.

Nothing here talks to Kafka. A raw stream is any dataset of dicts with ``key``, ``value``
(a wire-format ``tf.train.Example``), ``partition`` and ``offset``; ``source.py`` makes one from
Kafka, the benchmarks and tests make them from memory.

Malformed messages never stop the stream: each message is decoded inside its own one-element
dataset with ``ignore_errors``, so a bad one simply disappears while errors of the Kafka source
itself (a broker outage) still surface to the loop. Those one-element datasets run one after
another within a partition (``flat_map``); partitions decode in parallel. A parallel,
order-keeping interleave would decode several messages of a partition at once, but it holds
about ``cycle_length`` messages back before emitting one: 2.3 s of produce->train latency at
3.5 messages/s per partition (docs/benchmarks.md). Every surviving element carries ``prev``,
the offset of the previous surviving message of its partition; a hole between ``prev`` and
``offset`` is exactly the set of dropped messages, which the loop re-reads, diagnoses and
dead-letters (``deadletter.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import tensorflow as tf

from stream_trainer import wire
from stream_trainer.config import PipelineConfig

AUTOTUNE = tf.data.AUTOTUNE

_FEATURES = {
    wire.VERSION_KEY: tf.io.FixedLenFeature([], tf.int64),
    wire.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    wire.MASK_KEY: tf.io.FixedLenFeature([], tf.string),
    wire.PRODUCE_TS_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def decode_example(value: tf.Tensor, image_size: int) -> dict[str, tf.Tensor]:
    """Parse and validate one serialized Example; raise InvalidArgumentError if it is malformed.

    Returns ``image`` (uint8, size x size x 3), ``mask`` (uint8 classes 0..2, size x size x 1) and
    ``produce_ts_ms``. Images stay uint8 until after batching: four times less memory in the
    shuffle buffer than float32.
    """
    ex = tf.io.parse_single_example(value, _FEATURES)
    version_ok = tf.debugging.assert_equal(
        ex[wire.VERSION_KEY], tf.constant(wire.FORMAT_VERSION, tf.int64), message="unsupported format_version")
    with tf.control_dependencies([version_ok]):
        image, stored_hw = _decode_image(ex[wire.IMAGE_KEY], image_size)
    mask = tf.io.decode_png(ex[wire.MASK_KEY], channels=1)
    same_size = tf.debugging.assert_equal(
        stored_hw, tf.shape(mask)[:2], message="mask size differs from image size")
    in_range = tf.debugging.Assert(
        tf.reduce_all((mask >= wire.PET) & (mask <= wire.BORDER)), ["mask values outside {1,2,3}"])
    with tf.control_dependencies([same_size, in_range]):
        image = _resize_image(image, image_size)
        # Nearest keeps labels labels: no averaged class ids on the pet's border.
        mask = tf.image.resize(mask, [image_size, image_size], method="nearest") - wire.PET
    return {
        "image": image,
        "mask": tf.cast(mask, tf.uint8),
        "produce_ts_ms": ex[wire.PRODUCE_TS_KEY],
    }


def decode_image(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """One encoded image (JPEG, PNG, GIF, BMP) as the model sees it: uint8, size x size x 3.

    Exactly ``decode_example``'s decode and resize, for serving: a model must be given at
    inference what it was trained on. Raises InvalidArgumentError for bytes that are no image.
    """
    image, _ = _decode_image(data, image_size)
    return _resize_image(image, image_size)


def _resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize RGB pixels to size x size, rounded back to uint8."""
    size = [image_size, image_size]
    # Shrinking: area averaging is the box filter a downscale needs, at the price of a plain
    # bilinear (an antialiased bilinear costs 0.6 ms more per 320 px image). Enlarging: bilinear.
    resized = tf.cond(tf.reduce_all(tf.shape(image)[:2] >= image_size),
                      lambda: tf.image.resize(image, size, method="area"),
                      lambda: tf.image.resize(image, size, method="bilinear", antialias=True))
    return tf.saturate_cast(tf.round(resized), tf.uint8)


def _decode_image(data: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """RGB pixels (uint8, h x w x 3) and the stored height and width of an encoded image.

    A JPEG decodes at the smallest libjpeg scale (1/2, 1/4, 1/8) that keeps both sides at least
    ``image_size``: the scaling happens inside the inverse DCT, which also low-passes, and leaves
    the resize less to do. Other formats (PNG, GIF, BMP) decode at full size.
    """

    def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
        stored_hw = tf.io.extract_jpeg_shape(data)[:2]
        scale = tf.add_n([tf.cast(tf.reduce_min(stored_hw) >= r * image_size, tf.int32) for r in (2, 4, 8)])
        image = tf.switch_case(scale, [partial(tf.io.decode_jpeg, data, channels=3, ratio=r) for r in (1, 2, 4, 8)])
        return image, stored_hw

    def other() -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return image, tf.shape(image)[:2]

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def decode_stream(raw: tf.data.Dataset, start: tf.Tensor, image_size: int, parallel: int = 1) -> tf.data.Dataset:
    """Decode one partition's raw stream in offset order, dropping malformed messages.

    Offset order is what the ``prev`` chain relies on. ``start`` is the partition's first offset
    to read. ``parallel`` > 1 decodes that many messages of the partition at once with an
    order-keeping parallel interleave, which holds back about ``parallel`` messages (latency of
    ``parallel / rate`` on a slow partition); 1 decodes them one by one, adding no latency.
    """

    def safe_decode(msg: dict[str, tf.Tensor]) -> tf.data.Dataset:
        def decode(m: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            out = decode_example(m["value"], image_size)
            out.update(partition=m["partition"], offset=m["offset"],
                       nbytes=tf.strings.length(m["value"]))
            return out

        return tf.data.Dataset.from_tensors(msg).map(decode).ignore_errors()

    if parallel > 1:
        decoded = raw.interleave(safe_decode, cycle_length=parallel, block_length=1,
                                 num_parallel_calls=parallel, deterministic=True)
    else:
        decoded = raw.flat_map(safe_decode)

    def link(prev: tf.Tensor, elem: dict[str, tf.Tensor]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        return elem["offset"], {**elem, "prev": prev}

    return decoded.scan(tf.cast(start, tf.int64) - 1, link)


def train_batches(decoded: tf.data.Dataset, cfg: PipelineConfig) -> tf.data.Dataset:
    """Shuffle window -> joint random flip -> batch -> normalise -> prefetch, for training."""
    ds = decoded.shuffle(cfg.shuffle_buffer, seed=cfg.seed or None)
    if cfg.flip:
        ds = ds.map(_random_flip, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(cfg.batch_size, drop_remainder=True)
    # Normalising after batching is one vectorised op per batch instead of one per image.
    ds = ds.map(_normalise, num_parallel_calls=AUTOTUNE)
    # Overlap: the next batches are prepared while the model trains on this one.
    return ds.prefetch(AUTOTUNE)


def eval_batches(decoded: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    return decoded.batch(batch_size).map(_normalise).prefetch(AUTOTUNE)


def _random_flip(elem: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    # One coin for image and mask together: a flipped image with an unflipped mask is a wrong label.
    flip = tf.random.uniform([]) < 0.5
    return {**elem,
            "image": tf.cond(flip, lambda: tf.reverse(elem["image"], [1]), lambda: elem["image"]),
            "mask": tf.cond(flip, lambda: tf.reverse(elem["mask"], [1]), lambda: elem["mask"])}


def _normalise(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {**batch, "image": tf.cast(batch["image"], tf.float32) / 255.0}


RawReader = Callable[[tf.Tensor, tf.Tensor], tf.data.Dataset]


def decoded_partitions(read: RawReader, starts: dict[int, int], image_size: int,
                       decode_parallel: int = 1) -> tf.data.Dataset:
    """Every partition read by ``read(partition, start)``, decoded, merged as they come.

    A parallel, non-deterministic interleave with one slot per partition: an idle partition
    (its reader blocks until a message arrives) never holds the busy ones back, and partitions
    decode in parallel with each other. ``decode_parallel``: see ``decode_stream``.
    """
    partitions = sorted(starts)
    index = tf.data.Dataset.from_tensor_slices((
        tf.constant(partitions, tf.int32), tf.constant([starts[p] for p in partitions], tf.int64)))

    def one(partition: tf.Tensor, start: tf.Tensor) -> tf.data.Dataset:
        return decode_stream(read(partition, start), start, image_size, decode_parallel)

    return index.interleave(one, cycle_length=len(partitions), block_length=1,
                            num_parallel_calls=len(partitions), deterministic=False)
