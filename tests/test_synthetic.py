"""The synthetic source: deterministic, Oxford-IIIT Pet shaped records, no broker needed."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from producer.sources import synthetic
from stream_trainer.wire import PetRecord


def _decode(record: PetRecord) -> tuple[Image.Image, npt.NDArray[np.uint8]]:
    image = Image.open(io.BytesIO(record.image))
    image.load()
    mask = Image.open(io.BytesIO(record.mask))
    assert mask.mode == "L", "trimap must be an 8-bit single-channel PNG"
    return image, np.asarray(mask)


def test_same_seed_gives_identical_bytes() -> None:
    first = list(synthetic.generate(6, seed=7, min_size=64, max_size=96))
    again = list(synthetic.generate(6, seed=7, min_size=64, max_size=96))
    other = list(synthetic.generate(6, seed=8, min_size=64, max_size=96))
    assert first == again
    assert [r.image for r in first] != [r.image for r in other]


def test_any_index_can_be_regenerated_alone() -> None:
    stream = list(synthetic.generate(5, seed=3, min_size=64, max_size=96))
    assert synthetic.make_record(4, seed=3, min_size=64, max_size=96) == stream[4]


def test_records_are_real_jpeg_and_png_with_matching_sizes() -> None:
    for record in synthetic.generate(8, min_size=64, max_size=128):
        assert record.image[:3] == b"\xff\xd8\xff"
        assert record.mask[:8] == b"\x89PNG\r\n\x1a\n"
        image, mask = _decode(record)
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (mask.shape[1], mask.shape[0])


def test_trimaps_hold_pet_background_and_border_values_only() -> None:
    for record in synthetic.generate(8, min_size=64, max_size=128):
        _, mask = _decode(record)
        assert set(np.unique(mask).tolist()) == {1, 2, 3}


def test_border_band_separates_pet_from_background() -> None:
    # Oxford trimaps never put a pet pixel right next to a background pixel.
    for record in synthetic.generate(8, min_size=96, max_size=128):
        _, mask = _decode(record)
        pet, bg = mask == 1, mask == 2
        horizontal = (pet[:, 1:] & bg[:, :-1]) | (pet[:, :-1] & bg[:, 1:])
        vertical = (pet[1:] & bg[:-1]) | (pet[:-1] & bg[1:])
        assert not horizontal.any() and not vertical.any()


def test_sizes_and_aspect_ratios_vary_within_bounds() -> None:
    sizes = [_decode(r)[0].size for r in synthetic.generate(20, min_size=64, max_size=128)]
    assert all(64 <= w <= 128 and 64 <= h <= 128 for w, h in sizes)
    assert len({w for w, _ in sizes}) > 5 and len({h for _, h in sizes}) > 5
    assert len({round(w / h, 2) for w, h in sizes}) > 5


def test_pets_differ_from_background_in_colour() -> None:
    # Learnability: warm pets on cool backgrounds, so a small U-Net separates them quickly.
    for record in synthetic.generate(8, min_size=96, max_size=128):
        image, mask = _decode(record)
        rgb = np.asarray(image, dtype=np.float32)
        warmth = rgb[..., 0] - rgb[..., 2]
        assert warmth[mask == 1].mean() > warmth[mask == 2].mean() + 40


def test_about_eval_fraction_of_records_are_test_split() -> None:
    records = list(synthetic.generate(40, min_size=32, max_size=48, eval_fraction=0.25))
    assert sum(r.split == "test" for r in records) == 10
    assert {r.split for r in records} == {"train", "test"}
    assert all(r.source == "synthetic" for r in records)
    assert [r.image_id for r in records[:2]] == ["synthetic_000000", "synthetic_000001"]
    assert all(r.split == "train" for r in synthetic.generate(10, min_size=32, max_size=48, eval_fraction=0.0))


def test_jpeg_quality_controls_size() -> None:
    low = synthetic.make_record(0, min_size=128, max_size=128, jpeg_quality=50)
    high = synthetic.make_record(0, min_size=128, max_size=128, jpeg_quality=95)
    assert len(low.image) < len(high.image)
