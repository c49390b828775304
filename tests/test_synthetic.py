"""The synthetic source: deterministic, Oxford-IIIT Pet shaped records, no broker needed."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from producer.sources import synthetic
from stream_trainer import config, wire
from stream_trainer.config import (
    SYNTHETIC_BACKGROUNDS,
    SYNTHETIC_PET_COLOURS,
    SYNTHETIC_SHAPES,
    ProducerSourceConfig,
    SyntheticPhaseConfig,
)
from stream_trainer.errors import ConfigError
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


# --- Drifting streams: producer.source.phases ---------------------------------------------------

A = SyntheticPhaseConfig(name="a", images=8)  # the phase-less look: warm blobs on a muted cool background
B = SyntheticPhaseConfig(name="b", images=4, shape="box", pet_colour="cool", background="warm-stripes")


def _source(phases: list[SyntheticPhaseConfig], seed: int = 0, eval_fraction: float = 0.0,
            size: int = 32) -> synthetic.SyntheticSource:
    return synthetic.SyntheticSource(ProducerSourceConfig(seed=seed, eval_fraction=eval_fraction, min_size=size,
                                                          max_size=size + 16, phases=phases))


def test_phases_switch_after_exactly_their_images_and_cycle_every_pass() -> None:
    source = _source([A, B])
    for pass_index in range(2):
        records = list(source.iterate(pass_index, shuffle=True, include_test=True))
        assert [r.source for r in records] == ["synthetic:phase=a"] * 8 + ["synthetic:phase=b"] * 4
        assert sorted(r.image_id for r in records[:8]) == [f"synthetic_a_{i:06d}" for i in range(8)]
        assert sorted(r.image_id for r in records[8:]) == [f"synthetic_b_{i:06d}" for i in range(4)]
        assert [wire.phase_of(r.source) for r in records] == ["a"] * 8 + ["b"] * 4


def test_every_phases_eval_images_come_first_then_each_phases_train_images() -> None:
    # eval_fraction 0.25: indices 3 and 7 of a and index 3 of b are the eval sets.
    records = list(_source([A, B], eval_fraction=0.25).iterate(0, shuffle=True, include_test=True))
    assert [(r.image_id, r.split) for r in records[:3]] == [
        ("synthetic_a_000003", "test"), ("synthetic_a_000007", "test"), ("synthetic_b_000003", "test")]
    assert [(wire.phase_of(r.source), r.split) for r in records[3:]] == [("a", "train")] * 6 + [("b", "train")] * 3
    later = list(_source([A, B], eval_fraction=0.25).iterate(1, shuffle=True, include_test=False))
    assert [wire.phase_of(r.source) for r in later] == ["a"] * 6 + ["b"] * 3


def test_phase_stream_is_deterministic_per_seed_and_a_phase_does_not_depend_on_the_others() -> None:
    first = list(_source([A, B], seed=4).iterate(1, shuffle=True, include_test=False))
    again = list(_source([A, B], seed=4).iterate(1, shuffle=True, include_test=False))
    other = list(_source([A, B], seed=5).iterate(1, shuffle=True, include_test=False))
    assert first == again
    assert [r.image for r in first] != [r.image for r in other]
    # Seeded by name: b's images are the same whether a comes before it or not, and a phase that
    # looks like a under another name is a different set of images.
    alone = list(_source([B], seed=4).iterate(1, shuffle=False, include_test=False))
    assert sorted(alone, key=lambda r: r.image_id) == sorted(first[8:], key=lambda r: r.image_id)
    twin = list(_source([SyntheticPhaseConfig(name="twin", images=8)], seed=4).iterate(1, False, False))
    assert not {r.image for r in twin} & {r.image for r in first[:8]}


def test_no_phases_is_the_phase_less_stream() -> None:
    source = synthetic.SyntheticSource(ProducerSourceConfig(count=12, min_size=32, max_size=48, eval_fraction=0.25))
    records = list(source.iterate(0, shuffle=False, include_test=True))
    assert records == list(synthetic.generate(12, min_size=32, max_size=48, eval_fraction=0.25))


def _pet_and_background_warmth(records: list[PetRecord]) -> tuple[list[float], list[float]]:
    pet, background = [], []
    for record in records:
        image, mask = _decode(record)
        rgb = np.asarray(image, dtype=np.float32)
        warmth = rgb[..., 0] - rgb[..., 2]
        pet.append(float(warmth[mask == 1].mean()))
        background.append(float(warmth[mask == 2].mean()))
    return pet, background


def test_phase_b_inverts_phase_as_colour_cue() -> None:
    # a's pets are warmer than red-minus-blue 40 and its backgrounds cooler; b's the other way
    # round, so what a model learnt on a is wrong on b (and training on b unlearns a).
    a_pet, a_bg = _pet_and_background_warmth(list(_source([A], size=96).iterate(0, False, True)))
    b_pet, b_bg = _pet_and_background_warmth(list(_source([B], size=96).iterate(0, False, True)))
    assert min(a_pet) > 40 and max(a_bg) < 0, (a_pet, a_bg)
    assert max(b_pet) < -40 and min(b_bg) > 40, (b_pet, b_bg)


def _components(pet: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.intp]]:
    """Pixel coordinates of each 4-connected component (label propagation; no scipy here)."""
    h, w = pet.shape
    none = h * w
    labels = np.where(pet, np.arange(h * w).reshape(h, w), none)
    while True:
        pad = np.pad(labels, 1, constant_values=none)
        spread = np.minimum.reduce([pad[1:-1, 1:-1], pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]])
        spread = np.where(pet, spread, none)
        if np.array_equal(spread, labels):
            return [np.argwhere(labels == v) for v in np.unique(labels[pet])]
        labels = spread


def _solidity(points: npt.NDArray[np.intp]) -> float:
    """Pixel count over the area of the convex hull of the pixel centres (monotone chain)."""
    pts = sorted(map(tuple, points.tolist()))

    def half(seq: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    hull = np.array(half(pts) + half(pts[::-1]), dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return len(points) / (0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))))


def _rectangularity(points: npt.NDArray[np.intp]) -> float:
    """Pixel count over the area of the tightest rotated bounding box (1 for a rectangle, pi/4 for an ellipse)."""
    best = 0.0
    for t in np.deg2rad(np.arange(0.0, 90.0)):
        u = points[:, 0] * np.cos(t) + points[:, 1] * np.sin(t)
        v = points[:, 1] * np.cos(t) - points[:, 0] * np.sin(t)
        best = max(best, len(points) / float((np.ptp(u) + 1) * (np.ptp(v) + 1)))
    return best


def test_phase_shapes_differ_in_outline_statistics() -> None:
    # Median over pets (overlapping pets merge into one component, hence medians): boxes fill their
    # rotated bounding box, blobs about pi/4 of it; stars fill much less of their convex hull.
    stats = {}
    for shape in ("blob", "box", "star"):
        phase = SyntheticPhaseConfig(name=shape, images=12, shape=shape)
        pets = [c for r in _source([phase], size=96).iterate(0, False, True)
                for c in _components(_decode(r)[1] == 1) if len(c) >= 30]
        stats[shape] = (float(np.median([_solidity(c) for c in pets])),
                        float(np.median([_rectangularity(c) for c in pets])))
    (blob_solid, blob_rect), (box_solid, box_rect), (star_solid, _) = stats["blob"], stats["box"], stats["star"]
    assert box_rect > 0.85 and blob_rect < 0.8, stats
    assert blob_solid > 0.9 and box_solid > 0.9 and star_solid < 0.8, stats


def test_every_look_draws_a_valid_trimap() -> None:
    for shape in SYNTHETIC_SHAPES:
        for colour in SYNTHETIC_PET_COLOURS:
            for background in SYNTHETIC_BACKGROUNDS:
                phase = SyntheticPhaseConfig(name="x", images=1, shape=shape, pet_colour=colour, background=background)
                _, mask = _decode(synthetic.make_record(0, min_size=64, max_size=64, phase=phase))
                pet, bg = mask == 1, mask == 2
                assert set(np.unique(mask).tolist()) == {1, 2, 3}, (shape, colour, background)
                assert not ((pet[:, 1:] & bg[:, :-1]) | (pet[:, :-1] & bg[:, 1:])).any()
                assert not ((pet[1:] & bg[:-1]) | (pet[:-1] & bg[1:])).any()


PHASES_YAML = """
producer:
  source:
    eval_fraction: 0.25
    phases:
      - {name: a, images: 2000, shape: blob, pet_colour: warm, background: cool-noise}
      - {name: b-2, images: 500, shape: box, pet_colour: cool, background: warm-stripes}
"""


def test_phases_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PHASES_YAML)
    phases = config.load(path).producer.source.phases
    assert phases == [SyntheticPhaseConfig(name="a", images=2000),
                      SyntheticPhaseConfig(name="b-2", images=500, shape="box", pet_colour="cool",
                                           background="warm-stripes")]
    assert config.load(Path(__file__).parent.parent / "configs" / "producer.yaml").producer.source.phases == []


@pytest.mark.parametrize(("phases", "kind", "message"), [
    ([{"name": "a", "images": 5, "colour": "warm"}], "synthetic",
     "unknown config key 'producer.source.phases[0].colour'"),
    ([{"name": "a", "images": "many"}], "synthetic", "config key 'producer.source.phases[0].images' must be int"),
    ({"a": {"images": 5}}, "synthetic", "config key 'producer.source.phases' must be a list"),
    ([{"name": "a", "images": 5}, {"name": "b", "images": 0}], "synthetic",
     "config key 'producer.source.phases[1].images' must be >= 1"),
    ([{"images": 5}], "synthetic", "config key 'producer.source.phases[0].name' must be 1-32"),
    ([{"name": "b:x", "images": 5}], "synthetic", "config key 'producer.source.phases[0].name' must be 1-32"),
    ([{"name": "a", "images": 5}, {"name": "a", "images": 5}], "synthetic",
     "config key 'producer.source.phases[1].name' repeats 'a'"),
    ([{"name": "a", "images": 5, "shape": "circle"}], "synthetic",
     "config key 'producer.source.phases[0].shape' must be one of blob, box, star"),
    ([{"name": "a", "images": 5, "pet_colour": "red"}], "synthetic",
     "config key 'producer.source.phases[0].pet_colour' must be one of warm, cool, green"),
    ([{"name": "a", "images": 5, "background": "noise"}], "synthetic",
     "config key 'producer.source.phases[0].background' must be one of cool-noise"),
    ([{"name": "a", "images": 5}], "dir",
     "config key 'producer.source.phases' is only for producer.source.kind synthetic"),
])
def test_bad_phase_config_names_the_key(phases: object, kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(None, {"producer.source.kind": kind, "producer.source.phases": phases})
