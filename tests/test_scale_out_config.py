"""Scale-out settings that need no second process: the learning rate for N workers, where the worker
list comes from (``trainer.cluster`` or TF_CONFIG), and how a topic's partitions split between workers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_trainer.config import ClusterConfig, ModelConfig, load
from stream_trainer.errors import ConfigError
from stream_trainer.kafka import Cluster
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


def test_a_topic_with_fewer_partitions_than_workers_is_one_line_naming_both_numbers(
        cluster: Cluster, new_topic: Callable[..., str]) -> None:
    from stream_trainer.app import _my_partitions
    from stream_trainer.learn.workers import Workers

    topic = new_topic(1, "few")
    settings = load(None, {"topics.train": topic, "kafka.bootstrap_servers": cluster.kafka.bootstrap_servers})
    job = Workers()
    job.count, job.index = 2, 1  # the second of two workers; no strategy is needed to split partitions
    with pytest.raises(ConfigError) as err:
        _my_partitions(cluster, settings, job)
    assert str(err.value) == (f"config key 'trainer.cluster.workers': 2 workers but topic '{topic}' has only 1 "
                              "partitions; every worker needs at least one (add partitions or remove workers)")
    wider = new_topic(4, "few")
    settings = load(None, {"topics.train": wider, "kafka.bootstrap_servers": cluster.kafka.bootstrap_servers})
    assert _my_partitions(cluster, settings, job) == ([1, 3], 4)  # p % workers == index


def test_a_restore_keeps_the_learning_rate_of_this_jobs_size(tmp_path: Path) -> None:
    # Keras saves the learning rate as an optimizer variable: a checkpoint of a 2-worker job
    # (rate x sqrt 2) restored by one worker must not bring that rate back.
    from stream_trainer.config import CheckpointConfig
    from stream_trainer.learn.model import build_optimizer, build_unet
    from stream_trainer.learn.workers import Workers
    from stream_trainer.state.checkpoint import CheckpointStore

    shape = ModelConfig(base_filters=4, depth=2)
    cluster = ClusterConfig(learning_rate_scaling="sqrt")
    saved_by = CheckpointStore(CheckpointConfig(dir=str(tmp_path)), build_unet(32, shape),
                               build_optimizer(scaled_learning_rate(BASE, cluster, 2)), "t", Workers())
    saved_by.save(3, {0: 5})
    optimizer = build_optimizer(scaled_learning_rate(BASE, cluster, 1))
    restored = CheckpointStore(CheckpointConfig(dir=str(tmp_path)), build_unet(32, shape), optimizer, "t", Workers())
    found = restored.restore()
    assert found is not None and found.step == 3 and found.offsets == {0: 5}
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.002)  # not 0.002 x sqrt 2
