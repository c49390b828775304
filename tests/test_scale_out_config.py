"""Scale-out settings that need no second process: the learning rate for N workers, and where the
worker list comes from (``trainer.cluster`` or TF_CONFIG)."""

from __future__ import annotations

import json
import math

import pytest

from stream_trainer.config import ClusterConfig, ModelConfig
from stream_trainer.errors import ConfigError
from stream_trainer.learn.workers import cluster_from_env, scaled_learning_rate

BASE = ModelConfig(learning_rate=0.002)


@pytest.mark.parametrize(("scaling", "workers", "factor"), [
    ("sqrt", 1, 1.0), ("sqrt", 2, math.sqrt(2)), ("sqrt", 4, 2.0),
    ("linear", 1, 1.0), ("linear", 2, 2.0), ("linear", 4, 4.0),
    ("none", 1, 1.0), ("none", 4, 1.0),
])
def test_the_learning_rate_is_scaled_for_the_global_batch_as_configured(scaling: str, workers: int,
                                                                         factor: float) -> None:
    scaled = scaled_learning_rate(BASE, ClusterConfig(learning_rate_scaling=scaling), workers)
    assert scaled.learning_rate == pytest.approx(0.002 * factor)
    assert BASE.learning_rate == 0.002  # the configured value itself is untouched


def test_the_worker_list_comes_from_the_config_before_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["x:1", "y:2", "z:3"]},
                                                "task": {"type": "worker", "index": 2}}))
    assert cluster_from_env(ClusterConfig(workers=["a:1", "b:2"], index=1)) == (["a:1", "b:2"], 1)
    assert cluster_from_env(ClusterConfig()) == (["x:1", "y:2", "z:3"], 2)
    monkeypatch.delenv("TF_CONFIG")
    assert cluster_from_env(ClusterConfig()) == ([], 0)  # alone


@pytest.mark.parametrize(("tf_config", "says"), [
    ("{not json", "TF_CONFIG is not a valid worker cluster description"),
    (json.dumps({"cluster": {"worker": ["x:1"]}, "task": {"type": "ps", "index": 0}}), "of type 'worker'"),
    (json.dumps({"cluster": {"worker": ["x:1", "y:2"]}, "task": {"type": "worker", "index": 2}}), "index into"),
])
def test_a_tf_config_that_names_no_worker_of_its_cluster_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                      tf_config: str, says: str) -> None:
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=says) as err:
        cluster_from_env(ClusterConfig())
    assert "\n" not in str(err.value)
