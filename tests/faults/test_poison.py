"""Scenario 3: poison input among good messages, built by hand from the wire contract.

Twelve kinds of malformed message (two of them decompression bombs) go to the dead-letter topic,
each with the reason the trainer gives; two unusual but valid messages (one within 1 KiB of the
topic's ``max.message.bytes``, one with a null key) are trained like any other. The good messages
around the poison are all trained, the trainer keeps training, and its positions move past the
poison (holes never block progress).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from faultlib import (
    Rig,
    committed_offsets,
    free_port,
    metric,
    read_dead_letters,
    read_trained,
    scrape,
)
from PIL import Image

from producer.sources.synthetic import make_record
from stream_trainer import wire
from stream_trainer.workbench.soak.messages import example
from tests.readers import READERS_SLOW_OTHER
from tests.test_decoder import jpeg_bomb, png_bomb

# The topic's own limit, set explicitly so the test means the same on any broker.
TOPIC_MAX_MESSAGE_BYTES = 1024 * 1024
NEAR_MAX_VALUE_BYTES = TOPIC_MAX_MESSAGE_BYTES - 1024


@dataclass(frozen=True)
class Message:
    kind: str
    key: bytes | None
    value: bytes | None
    reason: str | None  # the dead-letter reason expected; None = valid, must be trained


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def _good(index: int) -> wire.PetRecord:
    return make_record(index, seed=7, min_size=48, max_size=64, eval_fraction=0.0)


def _fields(record: wire.PetRecord, **replace: bytes | int) -> bytes:
    features: dict[str, bytes | int] = {wire.VERSION_KEY: wire.FORMAT_VERSION, wire.IMAGE_KEY: record.image,
                                        wire.MASK_KEY: record.mask, wire.ID_KEY: record.image_id.encode()}
    features.update(replace)
    return example(features)


def _near_max(record: wire.PetRecord, size: int) -> bytes:
    """A valid message of exactly ``size`` bytes: a big noisy JPEG plus padding in the optional ``source``."""
    rng = np.random.default_rng(3)
    side = 560
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=92)
    mask = np.full((side, side), wire.BACKGROUND, np.uint8)
    mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = wire.PET
    features: dict[str, bytes | int] = {wire.VERSION_KEY: wire.FORMAT_VERSION, wire.IMAGE_KEY: buf.getvalue(),
                                        wire.MASK_KEY: _png(mask), wire.ID_KEY: b"near-max"}
    pad = size - len(example(features))
    assert pad > 0, "the near-max image alone is over the size"
    for _ in range(5):  # varint length prefixes grow with the padding: converge on the exact size
        value = example({**features, wire.SOURCE_KEY: b"p" * pad})
        if len(value) == size:
            return value
        pad += size - len(value)
    msg = f"could not build a message of exactly {size} bytes"
    raise AssertionError(msg)


def poison_and_edge_cases() -> list[Message]:
    base = _good(1000)
    h, w = np.asarray(Image.open(io.BytesIO(base.mask))).shape
    trimap = np.asarray(Image.open(io.BytesIO(base.mask)))
    out_of_range = trimap.copy()
    out_of_range[0, 0] = 7
    return [
        Message("random_bytes", b"poison-random", np.random.default_rng(1).bytes(3000), "parse"),
        Message("truncated_jpeg", b"poison-truncated",
                _fields(base, **{wire.IMAGE_KEY: base.image[: len(base.image) // 2]}), "image_decode"),
        Message("jpeg_wrong_magic", b"poison-magic", _fields(base, **{wire.IMAGE_KEY: b"\x00\x00" + base.image[2:]}),
                "image_decode"),
        Message("trimap_wrong_size", b"poison-size",
                _fields(base, **{wire.MASK_KEY: _png(np.full((h + 8, w), wire.PET, np.uint8))}), "shape_mismatch"),
        Message("trimap_out_of_range", b"poison-range", _fields(base, **{wire.MASK_KEY: _png(out_of_range)}),
                "mask_values"),
        Message("missing_fields", b"poison-missing",
                example({wire.VERSION_KEY: wire.FORMAT_VERSION, wire.IMAGE_KEY: base.image}), "missing_field"),
        Message("empty_value", b"poison-empty", b"", "empty"),
        Message("null_value", b"poison-null", None, "empty"),
        Message("wrong_version", b"poison-version", _fields(base, **{wire.VERSION_KEY: wire.FORMAT_VERSION + 1}),
                "version"),
        Message("mask_not_png", b"poison-mask", _fields(base, **{wire.MASK_KEY: b"GIF89a but not really"}),
                "mask_decode"),
        # Decompression bombs: a few KB declaring 67 M (PNG) and 3.6 G (JPEG) pixels, refused from the header.
        Message("png_bomb", b"poison-png-bomb", _fields(base, **{wire.IMAGE_KEY: png_bomb()}), "too_large"),
        Message("jpeg_bomb", b"poison-jpeg-bomb", _fields(base, **{wire.IMAGE_KEY: jpeg_bomb()}), "too_large"),
        Message("near_max_size_valid", b"valid-near-max", _near_max(base, NEAR_MAX_VALUE_BYTES), None),
        Message("null_key_valid", None, wire.encode(_good(1001), int(time.time() * 1000)), None),
    ]


def _limit_message_size(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(TOPIC_MAX_MESSAGE_BYTES), incremental_operation=AlterConfigOpType.SET)])
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result(30)


@pytest.mark.faults
@pytest.mark.parametrize("reader", READERS_SLOW_OTHER)
def test_poison_messages_are_dead_lettered_with_reasons_and_training_goes_on(rig: Rig) -> None:
    _limit_message_size(rig.bootstrap, rig.topic)
    special = poison_and_edge_cases()
    producer = Producer({"bootstrap.servers": rig.bootstrap, "message.max.bytes": 2 * TOPIC_MAX_MESSAGE_BYTES,
                         "enable.idempotence": True})
    placed: dict[tuple[int, int], Message] = {}
    good: set[tuple[int, int]] = set()

    def delivered(err: object, msg: object, what: Message | None = None) -> None:
        assert err is None, f"producing {what.kind if what else 'a good message'} failed: {err}"
        where = (msg.partition(), msg.offset())  # type: ignore[attr-defined]
        if what is None:
            good.add(where)
        else:
            placed[where] = what

    # Each special message between two good ones, alternating partitions.
    index = 0
    for i, message in enumerate(special):
        partition = i % rig.partitions
        for item in (None, message, None):
            if item is None:
                index += 1
                producer.produce(rig.topic, key=f"good-{index}".encode(), partition=partition,
                                 value=wire.encode(_good(index), int(time.time() * 1000)),
                                 on_delivery=lambda err, msg: delivered(err, msg))
            else:
                producer.produce(rig.topic, key=item.key, value=item.value, partition=partition,
                                 on_delivery=lambda err, msg, item=item: delivered(err, msg, item))
        producer.flush(30)
    assert producer.flush(30) == 0
    assert len(placed) == len(special)

    port = free_port()
    settings = rig.settings(trainer__metrics__port=port, trainer__loop__trained_log=str(rig.tmp / "trained.log"))
    config = rig.write_config("settings.yaml", settings)
    # The real producer keeps good messages coming after ours: the shuffle window drains only then.
    filler = rig.producer(config, "producer", "--rate", "20")
    trainer = rig.trainer(config, "trainer")

    must_train = good | {where for where, m in placed.items() if m.reason is None}
    must_dead_letter = {where: m for where, m in placed.items() if m.reason is not None}

    def trained() -> set[tuple[int, int]]:
        return {(p, o) for p, o, _ in read_trained(rig.tmp / "trained.log")}

    rig.wait_until(lambda: must_train <= trained(), 180, "every good message to be trained",
                   alive=(trainer, filler))
    rig.wait_until(lambda: set(must_dead_letter) <= {(d.partition, d.offset) for d in
                                                     read_dead_letters(rig.bootstrap, rig.dead_letter_topic)},
                   60, "every poison message in the dead-letter topic", alive=(trainer, filler))
    # Positions (and so the group) move past the last poison of each partition: holes do not block.
    last_poison = {p: max(o for (q, o) in must_dead_letter if q == p) for p in range(rig.partitions)}
    rig.wait_until(lambda: all(committed_offsets(rig.bootstrap, rig.group, rig.topic, rig.partitions).get(p, -1) > o
                               for p, o in last_poison.items()),
                   60, f"committed offsets past the last poison messages {last_poison}", alive=(trainer, filler))
    text = scrape(port)
    trained_now = trained()
    assert trainer.stop() == 0, f"the trainer did not stop cleanly{rig.logs()}"
    filler.stop()

    letters = read_dead_letters(rig.bootstrap, rig.dead_letter_topic)
    by_place = {(d.partition, d.offset): d for d in letters}
    assert len(by_place) == len(letters), f"a message was dead-lettered twice: {letters}"
    assert set(by_place) == set(must_dead_letter), (
        "dead-lettered: " + ", ".join(placed[w].kind if w in placed else f"{w} (a good message!)" for w in by_place))
    for where, message in must_dead_letter.items():
        letter = by_place[where]
        assert letter.reason == message.reason, f"{message.kind}: reason {letter.reason!r} ({letter.detail})"
        assert letter.detail, f"{message.kind}: no dlq.detail"
        assert (letter.key, letter.value or b"") == (message.key, message.value or b""), (
            f"{message.kind}: the dead letter is not the original message")
    assert not set(must_dead_letter) & trained_now, "a poison message went through a training step"
    assert must_train <= trained_now
    # Training went on after the poison: messages beyond the hand-made block were trained too.
    beyond = {(p, o) for p, o in trained_now if o > max(o for (q, o) in placed if q == p)}
    assert beyond, "nothing after the poison block was trained"
    for reason in {m.reason for m in must_dead_letter.values()}:
        expected = sum(1 for m in must_dead_letter.values() if m.reason == reason)
        got = metric(text, "stream_trainer_dead_letter_messages_total", reason=reason)
        assert got == expected, f"dead_letter_messages_total{{reason={reason!r}}} is {got}, not {expected}"
