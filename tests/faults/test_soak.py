"""Scenario 6: the soak's verdict (pure), and a short real soak (slow; ``make soak`` runs 30 min)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from faultlib import ROOT, child_env

from stream_trainer.workbench.soak import (
    MAX_SLOPE_MIB_PER_HOUR,
    MIN_STEADY_S,
    Sample,
    shortest_judged_minutes,
    slope_mib_per_hour,
    verdict,
)


def _series(minutes: float, rss: Callable[[float], float]) -> list[Sample]:
    return [Sample(float(t), rss(t), 100.0, float(t)) for t in range(0, int(minutes * 60) + 1, 5)]


def _leak(minutes: float, mib_per_hour: float) -> list[Sample]:
    """A steep warm-up, then a steady leak at ``mib_per_hour`` under +-0.5 MiB of sample noise."""
    noise = np.random.default_rng(7).uniform(-0.5, 0.5, int(minutes * 60) // 5 + 1)
    return _series(minutes, lambda t: min(700.0, 200.0 + 2 * t) + mib_per_hour * t / 3600.0 + noise[int(t) // 5])


@pytest.mark.faults
def test_flat_memory_after_warm_up_passes_even_with_a_steep_warm_up() -> None:
    samples = _series(30, lambda t: min(700.0, 200.0 + 2 * t) + (1.5 if t % 10 else -1.5))
    result = verdict(samples, duration_s=30 * 60)
    assert result["flat"], result
    assert abs(result["slope_mib_per_hour"]) < 1.0


@pytest.mark.faults
def test_memory_growing_after_warm_up_fails() -> None:
    samples = _series(30, lambda t: 700.0 + t / 30.0)  # 2 MiB per minute: 120 MiB/h
    result = verdict(samples, duration_s=30 * 60)
    assert not result["flat"], result
    assert slope_mib_per_hour(samples) == pytest.approx(120.0)


@pytest.mark.faults
def test_a_leak_just_above_the_stated_limit_fails_and_one_just_below_passes() -> None:
    assert MAX_SLOPE_MIB_PER_HOUR == 5.0  # the figure docs/reliability.md states
    above = verdict(_leak(30, MAX_SLOPE_MIB_PER_HOUR * 1.1), duration_s=30 * 60)
    below = verdict(_leak(30, MAX_SLOPE_MIB_PER_HOUR * 0.9), duration_s=30 * 60)
    assert above["verdict"] == "growing" and not above["flat"], above
    assert below["verdict"] == "flat" and below["flat"], below
    assert above["slope_mib_per_hour"] == pytest.approx(5.5, abs=0.3)


@pytest.mark.faults
def test_the_limit_is_a_rate_the_same_for_a_long_run() -> None:
    # Two hours at 6 MiB/h: 11 MiB after the warm-up, small next to the RSS, still a leak.
    assert verdict(_leak(120, 6.0), duration_s=120 * 60)["verdict"] == "growing"
    assert verdict(_leak(120, 4.0), duration_s=120 * 60)["verdict"] == "flat"


@pytest.mark.faults
def test_a_run_too_short_to_judge_is_not_called_flat() -> None:
    result = verdict(_series(10, lambda t: 700.0), duration_s=10 * 60)  # perfectly flat, yet too short
    assert result["verdict"] == "too_short" and not result["flat"], result
    assert result["steady_s"] < MIN_STEADY_S
    assert shortest_judged_minutes() == 25.0
    assert verdict(_leak(25, 0.0), duration_s=25 * 60)["verdict"] == "flat"


@pytest.mark.faults
@pytest.mark.slow
def test_soak_command_writes_the_rss_plot_and_report(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "stream_trainer.cli", "soak", "--minutes", "2",
                           "--workdir", str(tmp_path)], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=600)
    # Two minutes run every part of the soak but are too short for a verdict, which exits 1.
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "slope after warm-up" in proc.stdout and "too short to judge" in proc.stdout
    assert "FAILED" not in proc.stdout, proc.stdout
    report = json.loads((tmp_path / "rss.json").read_text())
    assert report["verdict"] == "too_short" and report["problem"] == ""
    assert report["trainer_steps"] > 0 and len(report["samples"]) >= 20
    assert (tmp_path / "rss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
