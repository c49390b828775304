"""The input pipeline as pure tf.data: what has arrived in the inbox, decoded on every core.

Nothing here talks to Kafka. The readers (``source.py``) put raw messages into the inbox
(``inbox.py``); this pipeline takes out *everything that has arrived* (up to ``decode_group``
messages), decodes the group with a parallel, order-keeping map, drops the malformed messages
of the group with ``ignore_errors``, and hands the group on as one batch of decoded rows.

Why groups of "what has arrived":
* decode parallelism no longer follows the partition count: a group from one partition decodes
  on every core;
* nothing waits for traffic that may never come: a group is whatever is there, one message on a
  quiet topic, ``decode_group`` on a busy one;
* ``ignore_errors`` sees only the decoding of one group, never a reader failure (the readers run
  in their own threads), so a broken message is dropped while a broken Kafka connection is not
  hidden.

Rows leave in the order they entered, so within a partition offsets increase: a gap between two
consecutive rows of a partition is exactly the set of dropped messages, which the loop
dead-letters (``deadletter.py``) before its position moves past them (``progress.py``).
"""

from __future__ import annotations

from functools import partial

import tensorflow as tf

from stream_trainer import wire
from stream_trainer.ingest.inbox import END_PARTITION, Inbox

AUTOTUNE = tf.data.AUTOTUNE
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY8 = b"\x08\x00"  # IHDR bytes 24-25: bit depth 8, colour type 0

_FEATURES = {
    wire.VERSION_KEY: tf.io.FixedLenFeature([], tf.int64),
    wire.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    wire.MASK_KEY: tf.io.FixedLenFeature([], tf.string),
    wire.PRODUCE_TS_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def decode_example(value: tf.Tensor, image_size: int) -> dict[str, tf.Tensor]:
    """Parse and validate one serialized Example; raise InvalidArgumentError if it is malformed.

    Returns ``image`` (uint8, size x size x 3), ``mask`` (uint8 classes 0..2, size x size x 1) and
    ``produce_ts_ms``. Images stay uint8 until the training step: a quarter of float32's memory in
    the queues and the replay store.
    """
    ex = tf.io.parse_single_example(value, _FEATURES)
    version_ok = tf.debugging.assert_equal(
        ex[wire.VERSION_KEY], tf.constant(wire.FORMAT_VERSION, tf.int64), message="unsupported format_version")
    with tf.control_dependencies([version_ok]):
        image, stored_hw = _decode_image(ex[wire.IMAGE_KEY], image_size)
    mask_bytes = ex[wire.MASK_KEY]
    # The contract is an 8-bit grayscale PNG (IHDR bit depth 8, colour type 0): decode_png would
    # turn a palette mask into luminance, scale a 16-bit one and decode a JPEG, all silently
    # wrong labels.
    is_png = tf.strings.substr(mask_bytes, 0, 8) == _PNG_SIGNATURE
    gray8 = tf.strings.substr(mask_bytes, 24, 2) == _GRAY8
    format_ok = tf.debugging.Assert(tf.logical_and(is_png, gray8), ["mask is not an 8-bit grayscale PNG"])
    with tf.control_dependencies([format_ok]):
        mask = tf.io.decode_png(mask_bytes, channels=1)
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


def decode_message(value: tf.Tensor, partition: tf.Tensor, offset: tf.Tensor, image_size: int) -> dict[str, tf.Tensor]:
    """One raw message as a training row (raises InvalidArgumentError if it is malformed)."""
    row = decode_example(value, image_size)
    row.update(partition=partition, offset=offset, nbytes=tf.strings.length(value))
    return row


def _decode_group(values: tf.Tensor, partitions: tf.Tensor, offsets: tf.Tensor, image_size: int,
                  threads: int) -> tf.data.Dataset:
    """One group as (at most) one batch of decoded rows, its malformed messages left out."""
    size = tf.shape(values, out_type=tf.int64)[0]
    return (tf.data.Dataset.from_tensor_slices((values, partitions, offsets))
            .map(lambda v, p, o: decode_message(v, p, o, image_size), num_parallel_calls=threads or AUTOTUNE,
                 deterministic=True)
            .ignore_errors()
            .batch(tf.maximum(size, 1)))


def decoded_groups(inbox: Inbox, image_size: int, group: int = 64, threads: int = 0) -> tf.data.Dataset:
    """Batches of decoded rows, each the well-formed part of one group of arrived messages.

    Unbounded; it ends only after an end marker (``Inbox.put_end``), for bounded reads.
    """
    ended = tf.Variable(False, trainable=False, name="inbox_ended")
    empty = (tf.zeros([0], tf.string), tf.zeros([0], tf.int32), tf.zeros([0], tf.int64))

    def arrived(_: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        def take() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            values, partitions, offsets = inbox.take_arrived(group)
            live = partitions != END_PARTITION
            mark = tf.cond(tf.reduce_all(live), lambda: tf.constant(False), lambda: ended.assign(True))
            with tf.control_dependencies([mark]):
                return (tf.boolean_mask(values, live), tf.boolean_mask(partitions, live),
                        tf.boolean_mask(offsets, live))

        # After the end marker nothing more comes: dequeuing again would block forever.
        return tf.cond(ended.read_value(), lambda: empty, take)

    options = tf.data.Options()
    options.experimental_optimization.map_parallelization = False  # dequeuing has side effects
    groups = (tf.data.Dataset.from_tensors(tf.constant(0)).repeat()
              .map(arrived)
              .take_while(lambda v, p, o: tf.logical_or(tf.size(o) > 0, tf.logical_not(ended.read_value()))))
    # flat_map, not a parallel interleave: an interleave fetches its next input (blocking on an
    # empty inbox) before it hands out what it has, holding decoded messages back.
    decoded = groups.flat_map(lambda v, p, o: _decode_group(v, p, o, image_size, threads))
    return decoded.prefetch(2).with_options(options)


def decode_values(values: list[bytes], image_size: int, batch_size: int) -> tf.data.Dataset:
    """In-memory messages (offsets = list positions) decoded like the stream: for evaluation."""
    n = len(values)
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(values, tf.string), tf.zeros([n], tf.int32),
                                             tf.range(n, dtype=tf.int64)))
    return (ds.map(lambda v, p, o: decode_message(v, p, o, image_size), num_parallel_calls=AUTOTUNE,
                   deterministic=True)
            .ignore_errors()
            .batch(batch_size))
