"""Scenario 6: the soak's verdict (pure), and a short real soak (slow; ``make soak`` runs 30 min)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from faultlib import ROOT, child_env

from stream_trainer.workbench.soak import Sample, slope_mib_per_hour, verdict


def _series(minutes: float, rss: Callable[[float], float]) -> list[Sample]:
    return [Sample(float(t), rss(t), 100.0, float(t)) for t in range(0, int(minutes * 60) + 1, 5)]


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
@pytest.mark.slow
def test_soak_command_writes_the_rss_plot_and_report(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "stream_trainer.cli", "soak", "--minutes", "2",
                           "--workdir", str(tmp_path)], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "slope after warm-up" in proc.stdout
    report = json.loads((tmp_path / "rss.json").read_text())
    assert report["flat"] and report["trainer_steps"] > 0 and len(report["samples"]) >= 20
    assert (tmp_path / "rss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
