"""The input pipeline as pure tf.data: what has arrived in the inbox, decoded on every core.

Nothing here talks to Kafka. The readers (``reader.py``, via ``intake.py``) put raw messages into the inbox
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
dead-letters (``deadletter.py``) before its position moves past them (``progress.py``). Each
group also lists every message it saw (``seen_partition``, ``seen_offset``), so a dropped message
is known the moment its group is decoded.

``ignore_errors`` drops a row on *any* error, not only a malformed message's. So a dropped
message is not taken as malformed on the pipeline's word: the dead-letter classification
(``quality/poison.py``) runs this very ``decode_example`` on it again, and a message that decodes
there stops the trainer instead of being dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import tensorflow as tf

from stream_trainer import wire
from stream_trainer.config import PipelineConfig
from stream_trainer.ingest.inbox import END_PARTITION, Inbox

AUTOTUNE = tf.data.AUTOTUNE
# A decompression bomb (a few KB declaring gigapixels) must be a dead letter, not an out-of-memory:
# the header's declared size is checked before anything is decoded (config.PipelineConfig.max_pixels).
MAX_PIXELS = PipelineConfig.max_pixels
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADER = 32  # bytes of a file read for its declared size: PNG IHDR, GIF screen, BMP info header
GROUPS_IN_FLIGHT = 2  # decoded_groups: groups decoding at once

_FEATURES = {
    wire.VERSION_KEY: tf.io.FixedLenFeature([], tf.int64),
    wire.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    wire.MASK_KEY: tf.io.FixedLenFeature([], tf.string),
    wire.PRODUCE_TS_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
}

# The checks of decode_example, in the order they run. Each runs under a name scope called after
# the dead-letter reason it stands for, so the failing op's name is the reason: the dead-letter
# classification (quality/poison.py) runs this very function and reads it from the error, never
# a copy of the rules.
STAGES = ("empty", "parse", "version", "image_decode", "too_large", "mask_decode", "mask_format",
          "shape_mismatch", "mask_values")


def decode_example(value: tf.Tensor, image_size: int, max_pixels: int = MAX_PIXELS) -> dict[str, tf.Tensor]:
    """Parse and validate one serialized Example; raise InvalidArgumentError if it is malformed.

    Returns ``image`` (uint8, size x size x 3), ``mask`` (uint8 classes 0..2, size x size x 1) and
    ``produce_ts_ms``. Images stay uint8 until the training step: a quarter of float32's memory in
    the queues and the replay store. ``max_pixels`` (0 = no limit) bounds the height x width an
    image or mask may declare in its header. The checks run one after the other (control
    dependencies), so the first failing one names the error, whatever the thread timing.
    """
    with tf.name_scope("empty"):
        not_empty = tf.debugging.Assert(tf.strings.length(value) > 0, ["message value is empty"])
    with tf.control_dependencies([not_empty]), tf.name_scope("parse"):
        ex = tf.io.parse_single_example(value, _FEATURES)
    with tf.name_scope("version"):
        version_ok = tf.debugging.Assert(tf.equal(ex[wire.VERSION_KEY], wire.FORMAT_VERSION),
                                         ["unsupported format_version", ex[wire.VERSION_KEY]])
    with tf.control_dependencies([version_ok]):
        image, stored_hw = _decode_image(ex[wire.IMAGE_KEY], image_size, max_pixels)
    with tf.control_dependencies([image]), tf.name_scope("mask"):
        mask = _decode_mask(ex[wire.MASK_KEY], max_pixels)
    with tf.name_scope("shape_mismatch"):
        same_size = tf.debugging.Assert(tf.reduce_all(tf.equal(stored_hw, tf.shape(mask)[:2])),
                                        ["mask height, width differ from the image's:", tf.shape(mask)[:2],
                                         stored_hw])
    with tf.control_dependencies([same_size]), tf.name_scope("mask_values"):
        in_range = tf.debugging.Assert(
            tf.reduce_all((mask >= wire.PET) & (mask <= wire.BORDER)), ["mask values outside {1,2,3}"])
    with tf.control_dependencies([in_range]):
        image = _resize_image(image, image_size)
        # Nearest keeps labels labels: no averaged class ids on the pet's border.
        mask = tf.image.resize(mask, [image_size, image_size], method="nearest") - wire.PET
    return {
        "image": image,
        "mask": tf.cast(mask, tf.uint8),
        "produce_ts_ms": ex[wire.PRODUCE_TS_KEY],
    }


def decode_image(data: tf.Tensor, image_size: int, max_pixels: int = 0) -> tf.Tensor:
    """One encoded image (JPEG, PNG, GIF, BMP) as the model sees it: uint8, size x size x 3.

    Exactly ``decode_example``'s decode and resize, for serving: a model must be given at
    inference what it was trained on. Raises InvalidArgumentError for bytes that are no image.
    No pixel limit by default: the header checks would be traced into every export's serving
    graph, which the final export of a stopping trainer has to save within its time budget.
    """
    image, _ = _decode_image(data, image_size, max_pixels)
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


def _header(data: tf.Tensor) -> tf.Tensor:
    """The first ``_HEADER`` bytes, zero-padded: a truncated file never fails a header read."""
    return tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, _HEADER), b"\0" * _HEADER]), 0, _HEADER)


def _numbers(head: tf.Tensor, first: int, dtype: tf.DType, little_endian: bool) -> tf.Tensor:
    """Two numbers of ``dtype`` stored from byte ``first`` of ``head``, as int64."""
    size = dtype.size * 2
    return tf.cast(tf.io.decode_raw(tf.strings.substr(head, first, size), dtype, little_endian=little_endian),
                   tf.int64)


def _png_hw(head: tf.Tensor) -> tf.Tensor:
    wh = _numbers(head, 16, tf.int32, little_endian=False)  # IHDR width, height: unsigned 32-bit
    return tf.reverse(tf.where(wh < 0, wh + 2**32, wh), [0])


def _declared_hw(data: tf.Tensor) -> tf.Tensor:
    """Height and width a PNG (IHDR), GIF (logical screen) or BMP header declares; 0 x 0 otherwise."""
    head = _header(data)
    gif = tf.reverse(_numbers(head, 6, tf.uint16, little_endian=True), [0])
    bmp = tf.reverse(tf.abs(_numbers(head, 18, tf.int32, little_endian=True)), [0])  # top-down BMPs: height < 0

    def starts(magic: bytes) -> tf.Tensor:
        return tf.strings.substr(head, 0, len(magic)) == magic

    return tf.where(starts(_PNG_SIGNATURE), _png_hw(head),
                    tf.where(starts(b"GIF8"), gif, tf.where(starts(b"BM"), bmp, tf.zeros([2], tf.int64))))


def _not_too_large(hw: tf.Tensor, max_pixels: int) -> tf.Operation:
    """Fail under the ``too_large`` scope when ``hw`` declares more than ``max_pixels`` pixels."""
    with tf.name_scope("too_large"):
        if max_pixels <= 0:
            return tf.no_op()
        hw = tf.cast(hw, tf.int64)
        return tf.debugging.Assert(hw[0] * hw[1] <= max_pixels,
                                   ["declared height, width:", hw, "limit:", tf.constant(max_pixels, tf.int64)])


def _decode_image(data: tf.Tensor, image_size: int, max_pixels: int) -> tuple[tf.Tensor, tf.Tensor]:
    """RGB pixels (uint8, h x w x 3) and the stored height and width of an encoded image.

    A JPEG decodes at the smallest libjpeg scale (1/2, 1/4, 1/8) that keeps both sides at least
    ``image_size``: the scaling happens inside the inverse DCT, which also low-passes, and leaves
    the resize less to do. Other formats (PNG, GIF, BMP) decode at full size. A GIF's frames are
    not counted: only its logical screen size is checked against ``max_pixels``.
    """

    def checked(hw: Callable[[], tf.Tensor]) -> list[tf.Operation]:
        return [_not_too_large(hw(), max_pixels)] if max_pixels > 0 else []

    def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
        stored_hw = tf.io.extract_jpeg_shape(data)[:2]
        with tf.control_dependencies(checked(lambda: stored_hw)):
            scale = tf.add_n([tf.cast(tf.reduce_min(stored_hw) >= r * image_size, tf.int32) for r in (2, 4, 8)])
        image = tf.switch_case(scale, [partial(tf.io.decode_jpeg, data, channels=3, ratio=r) for r in (1, 2, 4, 8)])
        return image, stored_hw

    def other() -> tuple[tf.Tensor, tf.Tensor]:
        with tf.control_dependencies(checked(lambda: _declared_hw(data))):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return image, tf.shape(image)[:2]

    with tf.name_scope("image_decode"):
        return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _decode_mask(data: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """The mask's class values (uint8, h x w x 1) from an 8-bit grayscale PNG."""
    with tf.name_scope("mask_decode"):
        is_png = tf.debugging.Assert(tf.strings.substr(data, 0, 8) == _PNG_SIGNATURE, ["mask is not a PNG file"])
    with tf.control_dependencies([is_png]):
        head = _header(data)
        small = _not_too_large(_png_hw(head), max_pixels)
    # The contract is an 8-bit grayscale PNG (IHDR bit depth 8, colour type 0): decode_png would
    # turn a palette mask into luminance, scale a 16-bit one and decode a JPEG, all silently
    # wrong labels.
    with tf.control_dependencies([small]), tf.name_scope("mask_format"):
        gray8 = tf.debugging.Assert(tf.strings.substr(head, 24, 2) == b"\x08\x00",
                                    ["mask is not an 8-bit grayscale PNG"])
    with tf.control_dependencies([gray8]), tf.name_scope("mask_decode"):
        return tf.io.decode_png(data, channels=1)


def decode_message(value: tf.Tensor, partition: tf.Tensor, offset: tf.Tensor, image_size: int,
                   max_pixels: int = MAX_PIXELS) -> dict[str, tf.Tensor]:
    """One raw message as a training row (raises InvalidArgumentError if it is malformed)."""
    row = decode_example(value, image_size, max_pixels)
    row.update(partition=partition, offset=offset, nbytes=tf.strings.length(value))
    return row


# What decoded_groups maps over each message; a test may pass its own (a decode that fails for one
# offset) to prove that a message the pipeline drops but that decodes alone is never dead-lettered.
DecodeFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, int, int], dict[str, tf.Tensor]]


def _no_rows(image_size: int) -> dict[str, tf.Tensor]:
    """A group's rows when the decoder dropped every message of it."""
    return {"image": tf.zeros([0, image_size, image_size, 3], tf.uint8),
            "mask": tf.zeros([0, image_size, image_size, 1], tf.uint8),
            "produce_ts_ms": tf.zeros([0], tf.int64), "partition": tf.zeros([0], tf.int32),
            "offset": tf.zeros([0], tf.int64), "nbytes": tf.zeros([0], tf.int32)}


def _decode_group(values: tf.Tensor, partitions: tf.Tensor, offsets: tf.Tensor, image_size: int,
                  threads: int, max_pixels: int, decode: DecodeFn) -> tf.data.Dataset:
    """One group as exactly one batch: its decoded rows (malformed messages left out), and
    ``seen_partition``/``seen_offset``, every message that entered the group, in order."""
    size = tf.shape(values, out_type=tf.int64)[0]
    rows = (tf.data.Dataset.from_tensor_slices((values, partitions, offsets))
            .map(lambda v, p, o: decode(v, p, o, image_size, max_pixels), num_parallel_calls=threads or AUTOTUNE,
                 deterministic=True)
            .ignore_errors()
            .batch(tf.maximum(size, 1)))
    # A group whose every message was dropped still says what it saw: its holes are known at once,
    # even for the last message of a partition (no later survivor needed to reveal the gap).
    rows = rows.concatenate(tf.data.Dataset.from_tensors(_no_rows(image_size))).take(tf.minimum(size, 1))
    return rows.map(lambda r: {**r, "seen_partition": partitions, "seen_offset": offsets})


def decoded_groups(inbox: Inbox, image_size: int, group: int = 64, threads: int = 0,
                   max_pixels: int = MAX_PIXELS, decode: DecodeFn | None = None) -> tf.data.Dataset:
    """One batch per group of arrived messages: the decoded rows of its well-formed ones, plus
    ``seen_partition`` (int32[k]) and ``seen_offset`` (int64[k]), every message of the group in
    arrival order, those the decoder dropped included (a group of only malformed ones yields 0 rows).

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
    decode = decode or decode_message  # looked up now: a test may replace the module's decode_message

    def one_group(v: tf.Tensor, p: tf.Tensor, o: tf.Tensor) -> dict[str, tf.Tensor]:
        return _decode_group(v, p, o, image_size, threads, max_pixels, decode).get_single_element()

    # GROUPS_IN_FLIGHT groups decode at once and leave in order: the next group's images start
    # while a group's last ones finish, so no core idles between groups (decoded one after the
    # other, groups reached 0.94-0.97 of a plain parallel map from memory; docs/benchmarks.md).
    # A map, not a parallel interleave: the interleave fetched its next input (blocking on an
    # empty inbox) before handing out what it had; the map fetches in its runner thread and hands
    # a decoded group out while that fetch waits (tests/test_input_path.py: a lone message).
    # A group of the end marker alone has nothing to decode.
    decoded = (groups.filter(lambda v, p, o: tf.size(o) > 0)
               .map(one_group, num_parallel_calls=GROUPS_IN_FLIGHT, deterministic=True))
    return decoded.prefetch(2).with_options(options)


def decode_values(values: list[bytes], image_size: int, batch_size: int,
                  max_pixels: int = MAX_PIXELS) -> tf.data.Dataset:
    """In-memory messages (offsets = list positions) decoded like the stream: for evaluation."""
    n = len(values)
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(values, tf.string), tf.zeros([n], tf.int32),
                                             tf.range(n, dtype=tf.int64)))
    return (ds.map(lambda v, p, o: decode_message(v, p, o, image_size, max_pixels), num_parallel_calls=AUTOTUNE,
                   deterministic=True)
            .ignore_errors()
            .batch(batch_size))
