"""The message contract between any producer and the trainer (docs/wire-format.md).

One Kafka message is one labelled image. Key: the image id (UTF-8). Value: a serialized
``tf.train.Example`` with the features below. Other teams produce into the topic from Java or
Go, so this module is the single definition the producer, the trainer and the tests share;
change it only together with ``FORMAT_VERSION`` and the document.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMAT_VERSION = 1

# Feature keys. Required: the trainer dead-letters a message that lacks one.
VERSION_KEY = "format_version"  # int64, must equal FORMAT_VERSION
IMAGE_KEY = "image/encoded"  # bytes: JPEG or PNG, RGB or grayscale, any size
MASK_KEY = "mask/encoded"  # bytes: PNG, one 8-bit channel, same height/width as the image
# Optional: absent ones take these defaults.
ID_KEY = "image/id"  # bytes (UTF-8), default ""
SPLIT_KEY = "split"  # bytes: "train" or "test", default "train"
SOURCE_KEY = "source"  # bytes: where the image came from, default ""
PRODUCE_TS_KEY = "produce_ts_ms"  # int64 Unix milliseconds at send time; 0 = unknown

# Trimap pixel values, as in Oxford-IIIT Pet; the trainer learns class = value - 1.
PET, BACKGROUND, BORDER = 1, 2, 3
NUM_CLASSES = 3


@dataclass(frozen=True)
class PetRecord:
    """One labelled image before serialization."""

    image_id: str
    image: bytes
    mask: bytes
    split: str = "train"
    source: str = ""


def encode(record: PetRecord, produce_ts_ms: int) -> bytes:
    """Serialize ``record`` as a version-1 ``tf.train.Example``."""
    from tensorflow.core.example import example_pb2  # deferred: importing TF takes seconds

    ex = example_pb2.Example()
    f = ex.features.feature
    f[VERSION_KEY].int64_list.value.append(FORMAT_VERSION)
    f[IMAGE_KEY].bytes_list.value.append(record.image)
    f[MASK_KEY].bytes_list.value.append(record.mask)
    f[ID_KEY].bytes_list.value.append(record.image_id.encode())
    f[SPLIT_KEY].bytes_list.value.append(record.split.encode())
    f[SOURCE_KEY].bytes_list.value.append(record.source.encode())
    f[PRODUCE_TS_KEY].int64_list.value.append(int(produce_ts_ms))
    return bytes(ex.SerializeToString())


def decode(value: bytes) -> tuple[PetRecord, int]:
    """Parse a value back into a record and its produce timestamp (for tests and tools)."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example.FromString(value)
    f = ex.features.feature

    def text(key: str, default: str = "") -> str:
        vals = f[key].bytes_list.value if key in f else []
        return vals[0].decode() if vals else default

    record = PetRecord(
        image_id=text(ID_KEY),
        image=bytes(f[IMAGE_KEY].bytes_list.value[0]),
        mask=bytes(f[MASK_KEY].bytes_list.value[0]),
        split=text(SPLIT_KEY, "train"),
        source=text(SOURCE_KEY),
    )
    ts = f[PRODUCE_TS_KEY].int64_list.value[0] if PRODUCE_TS_KEY in f else 0
    return record, int(ts)


# A record that belongs to one phase of a drifting stream says so in its source value:
# "ORIGIN:phase=NAME" (e.g. "synthetic:phase=b"). Consumers select one phase's eval images by it.
PHASE_TAG = ":phase="


def phase_of(source: str) -> str:
    """The phase named in a ``source`` value (``synthetic:phase=b`` -> ``b``); "" when it names none."""
    _, tagged, phase = source.partition(PHASE_TAG)
    return phase if tagged else ""
