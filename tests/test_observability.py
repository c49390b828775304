"""The observability stack: docker-compose.yml, Prometheus, its alerts and the Grafana dashboard.

No Docker engine is needed. The compose file is validated against the Compose Specification's
JSON schema (taken from a registry package, cached), the Prometheus files by the real promtool
and prometheus, and every dashboard and alert query is run by a real Prometheus, first on an
empty server (valid PromQL) and then against a running producer and trainer (names exist,
queries return data). `make test` installs every program these tests run (prometheus, promtool,
npm); where one is missing the test fails, saying how to install it, and never skips.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import pytest
import yaml

from stream_trainer import config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKER_CONFIG = ROOT / "configs" / "docker.yaml"
SCALE_OUT_CONFIG = ROOT / "configs" / "docker-scale-out.yaml"
SCALE_OUT_PROFILE = "scale-out"
PROMETHEUS_DIR = ROOT / "configs" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
GRAFANA_DIR = ROOT / "configs" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
METRICS_DOC = ROOT / "docs" / "metrics.md"

# The Compose Specification schema ships in the npm package of dclint, a compose linter that
# tracks the specification (a pinned version never changes). Committing the schema would let it
# rot; the code host that publishes it is unreachable from CI.
SCHEMA_PACKAGE = "dclint@3.1.0"
SCHEMA_MEMBER = "package/schemas/compose.schema.json"

TRAINER_JOB = "stream-trainer"
PRODUCER_JOB = "pet-producer"
# Series Prometheus writes itself for every target; not on any /metrics page.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                        "scrape_samples_post_metric_relabeling", "scrape_series_added"}
# Labels a metric may carry: bounded sets only, never offsets, ids or keys.
ALLOWED_LABELS = {"topic", "partition", "reason", "part", "outcome", "worker"}
# Grafana's interval variables, as Grafana would expand them for a short time range.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "__range_s": "300"}


# Debian package of each external program these tests run; `make system-deps` (part of `make
# test`) installs the missing ones.
TOOL_PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus", "npm": "npm"}


def _unavailable(reason: str) -> NoReturn:
    """A missing tool fails the test, for every user: a skipped check is a check nobody ran."""
    pytest.fail(reason, pytrace=False)


def _tool(name: str, why: str = "") -> str:
    path = shutil.which(name)
    if path is None:
        _unavailable(f"{name} is not installed{why}; `make system-deps` (part of `make test`) installs it, "
                     f"or as root: apt-get install {TOOL_PACKAGES[name]}")
    return str(path)


def _cache_root() -> Path:
    return Path(os.environ.get("STREAM_TRAINER_CACHE") or Path.home() / ".cache" / "stream-trainer")


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE_FILE)  # type: ignore[no-any-return]


# --- PromQL helpers --------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[a-zA-Z_:][\w:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords or numbers)."""
    text = re.sub(r"#[^\n]*", "", _STRING.sub('""', expr))
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subquery steps
    text = _LABEL_LIST.sub("", text)
    text = re.sub(r"\boffset\s+-?\w+", "", text)
    names = set()
    for m in _IDENTIFIER.finditer(text):
        name = m.group(0)
        if name.lower() in _KEYWORDS or text[m.end():].lstrip().startswith("("):
            continue  # a keyword, or a function / aggregation call
        names.add(name)
    return names


def grafana_to_promql(expr: str) -> str:
    """Expand Grafana's built-in interval variables the way Grafana does before querying."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(f"${{{name}}}", value)
    return re.sub(r"\$(__\w+)", lambda m: GRAFANA_VARIABLES.get(m.group(1), m.group(0)), expr)


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows hold their panels when collapsed


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every target of every provisioned dashboard, variables expanded."""
    queries = []
    for path in DASHBOARDS:
        for panel in _panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    where = f"{path.name}: panel {panel['title']!r} target {target.get('refId')}"
                    queries.append((where, grafana_to_promql(target["expr"])))
    return queries


# Counters of events this scenario does not cause, with the test that makes each one count.
NOT_CAUSED_HERE = {
    "stream_trainer_messages_lost_total",  # retention deleting unread messages: tests/faults/test_topic_changes.py
    "stream_trainer_source_restarts_total",  # a failing reader: tests/faults/test_broker_restart.py
    "stream_trainer_replay_restored_total",  # a restart with a replay store: tests/faults/test_replay.py
    "pet_producer_skipped_total",  # unreadable source files: tests/test_producer.py
}


def fallback_left_side(expr: str) -> str | None:
    """The query before a trailing `or vector(0)`, which by itself always returns a sample."""
    head, sep, tail = expr.rpartition(" or vector(0)")
    return head.strip() if sep and not tail.strip() else None


def alert_rules() -> list[tuple[str, str]]:
    """(alert name, PromQL) for every rule in alerts.yml."""
    return [(rule.get("alert") or rule["record"], rule["expr"])
            for group in _load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_metric_names_are_extracted_from_promql_without_functions_or_labels() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{job=~"x|y"}[$__rate_interval]))) '
            '/ on (job) group_left (instance) b_total offset 5m > 1e3 and time() - c or vector(0)')
    assert metric_names(grafana_to_promql(expr)) == {"a_seconds_bucket", "b_total", "c"}
    assert metric_names('sum without (topic) (rate(d_total{reason="bad(x)"}[1m:10s]))') == {"d_total"}


# --- the compose file ---------------------------------------------------------------------------------

def _compose_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema from ``SCHEMA_PACKAGE``, downloaded once and cached."""
    cached = _cache_root() / "compose-spec" / SCHEMA_PACKAGE.replace("@", "-") / "compose.schema.json"
    if not cached.exists():
        npm = _tool("npm", f" (it downloads the Compose schema once: npm pack {SCHEMA_PACKAGE})")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                proc = subprocess.run([npm, "pack", SCHEMA_PACKAGE, "--pack-destination", tmp, "--silent"],
                                      capture_output=True, text=True, timeout=180, cwd=tmp)
            except subprocess.TimeoutExpired:
                proc = None
            tarballs = list(Path(tmp).glob("*.tgz"))
            if proc is None or proc.returncode != 0 or not tarballs:
                detail = "timed out" if proc is None else (proc.stderr.strip()[-500:] or f"exit {proc.returncode}")
                _unavailable(f"cannot download the Compose schema with `npm pack {SCHEMA_PACKAGE}` (the npm "
                             f"registry is needed once; the schema is then cached in {cached.parent}): {detail}")
            with tarfile.open(tarballs[0]) as tar:
                member = tar.extractfile(SCHEMA_MEMBER)
                assert member is not None, f"{SCHEMA_PACKAGE} no longer ships {SCHEMA_MEMBER}"
                data = member.read()
        json.loads(data)  # refuse to cache anything but JSON
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        os.replace(partial, cached)
    return json.loads(cached.read_text())  # type: ignore[no-any-return]


def test_compose_file_follows_the_compose_specification() -> None:
    schema = _compose_schema()
    assert schema.get("title") == "Compose Specification"
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(
        f"  {'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors)


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, container path) of a service's volumes, short or long syntax."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, _, rest = entry.partition(":")
            target = rest.split(":")[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            kind, source, target = entry["type"], entry.get("source", ""), entry["target"]
        mounts.append((kind, source, target))
    return mounts


def _dockerfile_copies() -> list[tuple[str, str]]:
    """(repository path, image path) of every COPY/ADD from the build context."""
    workdir, copies = "/", []
    for raw in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        op = raw.split(maxsplit=1)[0].upper() if raw.strip() else ""
        if op not in {"WORKDIR", "COPY", "ADD"}:
            continue  # RUN lines hold shell code that shlex need not understand
        words = shlex.split(raw, comments=True)
        if op == "WORKDIR":
            workdir = os.path.join(workdir, words[1])
        elif op in {"COPY", "ADD"} and not any(w.startswith("--from") for w in words):
            args = [w for w in words[1:] if not w.startswith("--")]
            *sources, dest = args
            dest = os.path.join(workdir, dest)
            for source in sources:
                inside = dest if len(sources) == 1 and not dest.endswith("/") else os.path.join(dest, source)
                copies.append((source, os.path.normpath(inside)))
    return copies


def _host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file that ``container_path`` shows in ``service``, or None if it comes from elsewhere."""
    candidates = [(target, ROOT / source) for kind, source, target in _volume_mounts(service) if kind == "bind"]
    if "build" in service:
        candidates += [(image_path, ROOT / source) for source, image_path in _dockerfile_copies()]
    for target, source in sorted(candidates, key=lambda c: -len(c[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / os.path.relpath(container_path, target)
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_compose_references_only_files_and_volumes_that_exist() -> None:
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    problems = []
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"{name}: build file {dockerfile} is missing")
        for kind, source, target in _volume_mounts(service):
            if kind == "bind" and not (ROOT / source).exists():
                problems.append(f"{name}: bind mount source {source} (for {target}) is missing")
            if kind == "volume" and source not in declared:
                problems.append(f"{name}: named volume {source!r} is not declared under volumes:")
        for env_file in _strings(service.get("env_file", [])):
            if not (ROOT / env_file).is_file():
                problems.append(f"{name}: env_file {env_file} is missing")
        for dependency in service.get("depends_on", []):
            if dependency not in compose["services"]:
                problems.append(f"{name}: depends on unknown service {dependency}")
        # Container paths that the command, entrypoint or environment name and that come from the
        # repository (a bind mount or the image's COPY) must exist here.
        for text in _strings([service.get("command"), service.get("entrypoint"), service.get("environment")]):
            for path in re.findall(r"(?<![\w$])/[\w./-]+", text):
                host = _host_path(service, path.split("=")[-1])
                if host is not None and not host.exists():
                    problems.append(f"{name}: {path} maps to {host.relative_to(ROOT)}, which is missing")
    assert not problems, "\n".join(problems)


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copies = _dockerfile_copies()
    assert copies, "the Dockerfile copies nothing from the build context"
    for source, _ in copies:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
        assert source not in ignored, f"Dockerfile copies {source}, but .dockerignore leaves it out"
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r'^CMD \["stream-trainer", "run"', dockerfile, re.M)


def _services_running(compose: dict[str, Any], program: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, service) for name, service in compose["services"].items()
            if (service.get("command") or [None])[0] == program]


def _service_running(compose: dict[str, Any], program: str) -> tuple[str, dict[str, Any]]:
    """The service of the default stack (no profile) that runs ``program``."""
    for name, service in _services_running(compose, program):
        if not service.get("profiles"):
            return name, service
    pytest.fail(f"no compose service outside a profile runs {program}")


def _config_of(service: dict[str, Any]) -> Path:
    """The repository config file that a service's ``--config`` names (via its mounts or the image)."""
    command = service["command"]
    host = _host_path(service, command[command.index("--config") + 1])
    assert host is not None, f"{command} names a config that comes from neither the image nor a bind mount"
    return host


def _assert_state_on_named_volumes(name: str, service: dict[str, Any], settings: config.Settings) -> None:
    named = {target for kind, _, target in _volume_mounts(service) if kind == "volume"}
    for key, path in [("trainer.checkpoint.dir", settings.trainer.checkpoint.dir),
                      ("trainer.checkpoint.export_dir", settings.trainer.checkpoint.export_dir),
                      ("trainer.loop.snapshot_dir", settings.trainer.loop.snapshot_dir),
                      ("trainer.loop.tensorboard_dir", settings.trainer.loop.tensorboard_dir)]:
        assert path in named, f"{name}: {key}={path} is not on a named volume, so `docker compose down` would lose it"


def test_compose_programs_use_the_docker_config_which_loads() -> None:
    compose = _compose()
    settings = config.load(DOCKER_CONFIG)
    for program in ("pet-producer", "stream-trainer"):
        name, service = _service_running(compose, program)
        command = service["command"]
        assert command[command.index("--config") + 1] == "/app/configs/docker.yaml", name
        assert _host_path(service, "/app/configs/docker.yaml") == DOCKER_CONFIG, name

    host, _, port = settings.kafka.bootstrap_servers.partition(":")
    kafka = compose["services"][host]
    assert kafka["image"] == "apache/kafka:3.9.1"
    assert f"PLAINTEXT://{host}:{port}" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert settings.producer.passes == 0 and settings.producer.rate > 0, "the producer should stream forever, paced"
    # Prometheus scrapes from another container: the endpoints must listen on every interface.
    assert settings.trainer.metrics.host == settings.producer.metrics.host == "0.0.0.0"

    name, trainer = _service_running(compose, "stream-trainer")
    _assert_state_on_named_volumes(name, trainer, settings)
    assert not settings.trainer.cluster.workers, "the default stack's trainer trains alone"


def test_compose_scale_out_profile_runs_every_worker_of_its_config() -> None:
    compose = _compose()
    workers = [(name, service) for name, service in _services_running(compose, "stream-trainer")
               if SCALE_OUT_PROFILE in service.get("profiles", [])]
    assert workers, f"no compose service of profile {SCALE_OUT_PROFILE!r} runs stream-trainer"
    scaled = config.load(SCALE_OUT_CONFIG)
    listed = scaled.trainer.cluster.workers
    hosts = [address.rpartition(":")[0] for address in listed]
    assert sorted(hosts) == sorted(name for name, _ in workers), (
        f"trainer.cluster.workers {listed} must name exactly the profile's services {[n for n, _ in workers]}")
    for name, service in workers:
        assert _config_of(service) == SCALE_OUT_CONFIG, name
        raw_index = service.get("environment", {}).get("STREAM_TRAINER_WORKER_INDEX")
        assert raw_index is not None, f"{name} does not set STREAM_TRAINER_WORKER_INDEX"
        index = int(raw_index)
        assert hosts[index] == name, (
            f"{name} has index {index}, but trainer.cluster.workers[{index}] is {listed[index]}")
        # The CLI turns STREAM_TRAINER_WORKER_INDEX into this override (cli.py); it must validate.
        settings = config.load(SCALE_OUT_CONFIG, {"trainer.cluster.index": index})
        assert settings.trainer.cluster.index == index
        assert service.get("restart") == "on-failure", (
            f"{name}: a lost worker makes every worker exit non-zero; restart: on-failure brings the job back")
        assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully", name
        if index == 0:
            _assert_state_on_named_volumes(name, service, settings)
    assert scaled.topics.partitions >= len(listed), "every worker needs at least one partition"
    host_ports = [p.split(":")[0] for _, service in compose["services"].items() for p in service.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"host ports repeat: {host_ports}"

    # The same job as the single trainer, in two processes: same topics, group, checkpoint and
    # metrics port, so a job moves between one worker and two on the same checkpoint.
    single = config.load(DOCKER_CONFIG)
    assert dataclasses.replace(scaled, trainer=dataclasses.replace(
        scaled.trainer, cluster=single.trainer.cluster)) == single, (
        "configs/docker-scale-out.yaml must equal configs/docker.yaml except trainer.cluster")


def test_compose_creates_the_topics_the_docker_config_names() -> None:
    settings = config.load(DOCKER_CONFIG)
    init = _compose()["services"]["kafka-init"]
    assert init["image"] == "apache/kafka:3.9.1"
    script = " ".join(_strings(init["command"]))
    created = dict(re.findall(r"--create --if-not-exists --topic (\S+) --partitions (\d+)", script))
    t = settings.topics
    assert created == {t.train: str(t.partitions), t.eval: "1", t.dead_letter: "1"}
    for program in ("pet-producer", "stream-trainer"):
        for name, service in _services_running(_compose(), program):
            assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully", name
            assert config.load(_config_of(service)).topics == t, f"{name} uses other topics than kafka-init creates"


# --- Prometheus and Grafana files ---------------------------------------------------------------------------

def test_prometheus_config_and_rules_pass_promtool() -> None:
    promtool = _tool("promtool")
    for args in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", str(ALERTS)]):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    assert _load_yaml(PROMETHEUS_CONFIG)["rule_files"] == [ALERTS.name]


# Alerts whose expressions hold a judgement (a margin, a first-sample trap, a job shape): each has
# unit tests in alerts.test.yml, at least one case where it fires and one where it must not.
UNIT_TESTED_ALERTS = {"StreamTrainerForgetting", "StreamTrainerDeadLetterBacklog", "StreamTrainerMessagesLost",
                      "StreamTrainerWorkerIdle"}


def test_alert_rules_pass_their_unit_tests() -> None:
    promtool = _tool("promtool")
    cases = _load_yaml(ALERT_TESTS)
    assert cases["rule_files"] == [ALERTS.name]
    fires, silent = set(), set()
    for group in cases["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert {name for name, _ in alert_rules()} >= UNIT_TESTED_ALERTS
    assert fires >= UNIT_TESTED_ALERTS, f"no case where {sorted(UNIT_TESTED_ALERTS - fires)} fires"
    assert silent >= UNIT_TESTED_ALERTS, f"no case where {sorted(UNIT_TESTED_ALERTS - silent)} stays silent"
    proc = subprocess.run([promtool, "test", "rules", ALERT_TESTS.name], capture_output=True, text=True,
                          timeout=120, cwd=PROMETHEUS_DIR)
    assert proc.returncode == 0, f"promtool test rules {ALERT_TESTS.name}:\n{proc.stdout}{proc.stderr}"


def _scrape_job(name: str) -> dict[str, Any]:
    (job,) = [job for job in _load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if job["job_name"] == name]
    return job  # type: ignore[no-any-return]


def _static_targets(job: dict[str, Any]) -> list[str]:
    return [t for sc in job.get("static_configs", []) for t in sc["targets"]]


def _dns_targets(job: dict[str, Any]) -> list[str]:
    """host:port of every name the job discovers by DNS (A records: the port is the config's)."""
    return [f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]]


def test_prometheus_scrapes_the_ports_the_docker_configs_set() -> None:
    compose = _compose()
    # Every compose service that runs the trainer, in the default stack or a profile, is found
    # by DNS at its config's metrics port; nothing else is.
    trainers = sorted(f"{name}:{config.load(_config_of(service)).trainer.metrics.port}"
                      for name, service in _services_running(compose, "stream-trainer"))
    trainer_job = _scrape_job(TRAINER_JOB)
    assert sorted(_dns_targets(trainer_job)) == trainers
    assert not _static_targets(trainer_job), "a static trainer target of the variant not running is always down"
    assert all(sd["type"] == "A" for sd in trainer_job["dns_sd_configs"])
    producers = [f"{name}:{config.load(_config_of(service)).producer.metrics.port}"
                 for name, service in _services_running(compose, "pet-producer")]
    assert _static_targets(_scrape_job(PRODUCER_JOB)) == producers
    prometheus = compose["services"]["prometheus"]
    assert _host_path(prometheus, "/etc/prometheus/prometheus.yml") == PROMETHEUS_CONFIG
    assert _host_path(prometheus, "/etc/prometheus/alerts.yml") == ALERTS


def test_grafana_provisions_the_datasource_and_dashboards_that_compose_mounts() -> None:
    grafana = _compose()["services"]["grafana"]
    provisioning = GRAFANA_DIR / "provisioning"
    assert _host_path(grafana, "/etc/grafana/provisioning") == provisioning

    (datasource,) = _load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    url = urllib.parse.urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.port == 9090
    assert datasource["jsonData"]["timeInterval"] == _load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]

    (provider,) = _load_yaml(provisioning / "dashboards" / "stream-trainer.yml")["providers"]
    assert _host_path(grafana, provider["options"]["path"]) == GRAFANA_DIR / "dashboards"
    assert DASHBOARDS, "no dashboard JSON in configs/grafana/dashboards"
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = list(_panels(dashboard["panels"]))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in panels:
            for ref in [panel.get("datasource"), *(t.get("datasource") for t in panel.get("targets", []))]:
                if ref and ref.get("type") == "prometheus":
                    assert ref["uid"] == datasource["uid"], f"{path.name}: {panel['title']} uses another datasource"
            assert panel["type"] == "row" or panel.get("targets"), f"{path.name}: {panel['title']} has no query"
        cells: dict[tuple[int, int], str] = {}
        for panel in panels:
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{path.name}: {panel['title']} is wider than the grid"
            for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])):
                assert cell not in cells, f"{path.name}: {panel['title']} overlaps {cells[cell]}"
                cells[cell] = panel["title"]


def _metrics_modules() -> list[Any]:
    import producer.metrics
    import stream_trainer.metrics

    return [stream_trainer.metrics, producer.metrics]


def _defined_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, label names) of every metric the two programs define."""
    from prometheus_client.metrics import MetricWrapperBase

    found = {}
    for module in _metrics_modules():
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                name = value._name + ("_total" if value._type == "counter" else "")
                found[name] = (value._type, tuple(value._labelnames))
    return found


def test_metric_labels_are_bounded() -> None:
    for name, (_, labels) in _defined_metrics().items():
        assert set(labels) <= ALLOWED_LABELS, f"{name} has labels {labels}; only {sorted(ALLOWED_LABELS)} are bounded"


@dataclasses.dataclass(frozen=True)
class CatalogueRow:
    section: str  # the "## " heading of docs/metrics.md it is listed under
    kind: str
    labels: frozenset[str]
    meaning: str


METRIC_TABLE_HEADER = ["metric", "type", "unit", "labels", "meaning"]
# Where docs/metrics.md lists each program's metrics: (name prefixes, the section heading's start).
CATALOGUE_SECTIONS = [(("stream_trainer_",), "Trainer"), (("pet_producer_",), "Producer"),
                      (("process_", "python_"), "Process metrics")]


def _doc_tables() -> Iterator[tuple[str, list[str], list[str]]]:
    """(section heading, table header, cells) of every table row in docs/metrics.md."""
    section, header = "", None
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif set("".join(cells)) - set("-: "):  # not the |---| line
            yield section, header, cells


def metric_catalogue() -> dict[str, CatalogueRow]:
    """Every row of the metric tables (header ``METRIC_TABLE_HEADER``) in docs/metrics.md."""
    rows: dict[str, CatalogueRow] = {}
    for section, header, cells in _doc_tables():
        if header != METRIC_TABLE_HEADER:
            continue
        m = re.fullmatch(r"`([a-zA-Z_:][\w:]*)`", cells[0])
        assert m, f"docs/metrics.md, {section}: {cells[0]!r} is not a metric name in backticks"
        assert m.group(1) not in rows, f"docs/metrics.md lists {m.group(1)} twice"
        rows[m.group(1)] = CatalogueRow(section, cells[1], frozenset(re.findall(r"`(\w+)`", cells[3])), cells[4])
    return rows


def test_metric_catalogue_describes_every_dashboard_panel_in_order() -> None:
    documented = [cells[0] for section, header, cells in _doc_tables() if section == "Dashboard"]
    for path in DASHBOARDS:
        panels = [p["title"] for p in _panels(json.loads(path.read_text())["panels"]) if p["type"] != "row"]
        assert documented == panels, (f"docs/metrics.md's Dashboard table lists {documented}, "
                                      f"{path.name} has {panels}")


def _catalogue_section(name: str) -> str | None:
    return next((heading for prefixes, heading in CATALOGUE_SECTIONS if name.startswith(prefixes)), None)


def test_metric_catalogue_documents_every_metric_and_every_query_name() -> None:
    rows = metric_catalogue()
    for name, (kind, labels) in _defined_metrics().items():
        assert name in rows, f"docs/metrics.md does not list {name}"
        section = _catalogue_section(name)
        assert section is not None and rows[name].section.startswith(section), (
            f"docs/metrics.md lists {name} under {rows[name].section!r}, not {section!r}")
        # metrics.exposition() adds `worker` to every trainer sample; the live test checks the pages.
        exposed = set(labels) | ({"worker"} if name.startswith("stream_trainer_") else set())
        assert (rows[name].kind, set(rows[name].labels)) == (kind, exposed), (
            f"docs/metrics.md: {name} is {kind} with labels {sorted(exposed)}")
    catalogued = set(rows) | PROMETHEUS_SYNTHETIC
    suffixes = ("_bucket", "_sum", "_count")
    for where, expr in dashboard_queries() + alert_rules():
        for name in metric_names(expr):
            base = next((name[: -len(s)] for s in suffixes if name.endswith(s) and name[: -len(s)] in rows), name)
            assert base in catalogued, f"{where} uses {name}, which docs/metrics.md does not list"


def test_metric_catalogue_lists_every_value_of_the_enumerated_labels() -> None:
    from producer.metrics import SKIP_REASONS
    from stream_trainer.quality.poison import REASONS

    rows = metric_catalogue()
    for name, values in {"stream_trainer_dead_letter_messages_total": REASONS,
                         "pet_producer_skipped_total": SKIP_REASONS}.items():
        missing = set(values) - set(re.findall(r"`(\w+)`", rows[name].meaning))
        assert not missing, f"docs/metrics.md: the row of {name} does not list its reasons {sorted(missing)}"


# --- queries run by a real Prometheus ----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:  # Prometheus answers bad queries with 400 and a JSON body
        return exc.code, exc.read()


def _stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: never leave a process behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _local_job(job: dict[str, Any], target: str) -> dict[str, Any]:
    """``job`` scraping ``target`` instead of what it discovers.

    A DNS-discovered job gets a static target that carries the discovery's meta label for its
    first name, so that the job's relabelling runs on what a DNS answer would give it.
    """
    local = {k: v for k, v in job.items() if k not in {"static_configs", "dns_sd_configs"}}
    names = [name for sd in job.get("dns_sd_configs", []) for name in sd["names"]]
    meta = {"__meta_dns_name": names[0]} if names else {}
    return {**local, "static_configs": [{"targets": [target], "labels": meta}]}


class Prometheus:
    """A real prometheus server on 127.0.0.1 with a temporary config and storage."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # The real prometheus.yml (its job names, its relabelling, its rule file), with local targets
        # and fast intervals.
        cfg = _load_yaml(PROMETHEUS_CONFIG)
        cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        cfg["rule_files"] = [str(PROMETHEUS_DIR / f) for f in cfg["rule_files"]]
        cfg["scrape_configs"] = [_local_job(job, targets[job["job_name"]])
                                 for job in cfg["scrape_configs"] if job["job_name"] in targets]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))

    def start(self) -> None:
        binary = _tool("prometheus")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                if _http_get(f"{self.url}/-/ready", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"prometheus not ready after 30 s:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        _, body = _http_get(url)
        return json.loads(body)  # type: ignore[no-any-return]

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def evaluated_rules(self, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """Every loaded rule, once each has been evaluated at least once."""
        deadline = time.monotonic() + timeout_s
        while True:
            rules = [r for g in self.api("rules")["data"]["groups"] for r in g["rules"]]
            if rules and all(not r["lastEvaluation"].startswith("0001-") for r in rules):
                return rules
            if time.monotonic() > deadline:
                pytest.fail(f"rules not evaluated within {timeout_s} s: {rules}")
            time.sleep(0.5)


@pytest.fixture()
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: dict[str, str]) -> Prometheus:
        workdir = tmp_path / f"prometheus-{len(started)}"
        workdir.mkdir()
        server = Prometheus(workdir, targets)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def _assert_rules_healthy(prometheus: Prometheus) -> None:
    rules = prometheus.evaluated_rules()
    assert {r["name"] for r in rules} == {name for name, _ in alert_rules()}
    broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not broken, "alert rules fail to evaluate:\n" + "\n".join(broken)


def test_every_dashboard_and_alert_query_is_valid_promql(
        prometheus_factory: Callable[[dict[str, str]], Prometheus]) -> None:
    prometheus = prometheus_factory({})
    queries = dashboard_queries() + alert_rules()
    assert len(queries) > 20
    invalid = []
    for where, expr in queries:
        answer = prometheus.query(expr)
        if answer["status"] != "success":
            invalid.append(f"{where}: {answer.get('error')}\n    {expr}")
    assert not invalid, "invalid PromQL:\n" + "\n".join(invalid)
    _assert_rules_healthy(prometheus)


def _exposed_names(text: str) -> set[str]:
    """Every series name a /metrics page declares, including families without samples yet."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": ("",), "untyped": ("",), "info": ("_info",)}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@dataclasses.dataclass
class ExposedFamily:
    kind: str
    values: dict[str, set[str]]  # label name -> the values its samples carry (``le`` left out)
    pages: set[str]
    samples: int = 0


def exposed_families(pages: dict[str, str]) -> dict[str, ExposedFamily]:
    """Every metric family the /metrics ``pages`` (name -> text) declare, named as catalogued.

    Counters are named with ``_total``. prometheus_client writes the ``X_created`` series of a
    counter or histogram as a gauge family of its own; that is folded into ``X`` (docs/metrics.md,
    Conventions). A family without samples yet (a labelled counter before its first event) is
    declared all the same, with no label values.
    """
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, ExposedFamily] = {}
    for page, text in pages.items():
        for family in text_string_to_metric_families(text):
            name = family.name + ("_total" if family.type == "counter" else "")
            found = families.setdefault(name, ExposedFamily(family.type, {}, set()))
            assert found.kind == family.type, f"{name} is a {found.kind} on one page and a {family.type} on {page}"
            found.pages.add(page)
            found.samples += len(family.samples)
            for sample in family.samples:
                for label, value in sample.labels.items():
                    if label != "le":
                        found.values.setdefault(label, set()).add(value)
    for name in [n for n in families if n.endswith("_created") and families[n].kind == "gauge"]:
        base = name[: -len("_created")]
        if (base + "_total" in families and families[base + "_total"].kind == "counter") or \
                (base in families and families[base].kind == "histogram"):
            del families[name]
    return families


# Labels whose values are a fixed list in the metric's row of docs/metrics.md (its meaning).
ENUMERATED_LABELS = ("reason", "part", "outcome")


def assert_pages_match_the_catalogue(pages: dict[str, str]) -> None:
    """Issue 15: whatever the programs expose is catalogued, as it is exposed, and nothing else is."""
    rows = metric_catalogue()
    families = exposed_families(pages)
    problems = []
    for name, family in sorted(families.items()):
        section = _catalogue_section(name)
        if section is None:
            continue  # not ours: no other collector is registered, but a library could add one
        row = rows.get(name)
        where = f"{name} ({', '.join(sorted(family.pages))} /metrics)"
        if row is None:
            problems.append(f"{where} is not in docs/metrics.md")
            continue
        if not row.section.startswith(section):
            problems.append(f"{where} is listed under {row.section!r}, not {section!r}")
        if row.kind != family.kind:
            problems.append(f"{where} is a {family.kind}, docs/metrics.md says {row.kind}")
        if family.samples and set(family.values) != row.labels:
            problems.append(f"{where} has labels {sorted(family.values)}, docs/metrics.md says {sorted(row.labels)}")
        if not name.startswith(("process_", "python_")) and not set(family.values) <= ALLOWED_LABELS:
            problems.append(f"{where} has labels {sorted(set(family.values) - ALLOWED_LABELS)} outside the bounded "
                            f"set {sorted(ALLOWED_LABELS)}")
        documented_values = set(re.findall(r"`(\w+)`", row.meaning))
        for label in ENUMERATED_LABELS:
            unlisted = family.values.get(label, set()) - documented_values
            if unlisted:
                problems.append(f"{where}: {label} values {sorted(unlisted)} are not listed in its row")
    for name, row in rows.items():
        if _catalogue_section(name) is not None and name not in families:
            problems.append(f"docs/metrics.md lists {name} ({row.section}), which no /metrics page declares")
    assert not problems, "the /metrics pages and docs/metrics.md disagree:\n  " + "\n  ".join(problems)


def _samples(text: str, name: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture()
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts; all stopped afterwards, whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            _stop_process(proc, grace_s=15)


def _wait_for_group_coordinator(settings: config.Settings, timeout_s: float = 30.0) -> None:
    """On a broker that just started, the offsets topic loads for a few seconds (NOT_COORDINATOR).

    That start-up race is not what this test is about; wait it out for the trainer's group.
    """
    from confluent_kafka import KafkaException

    from stream_trainer.kafka import Cluster

    group = Cluster(settings.kafka, group_id=settings.trainer.source.group_id)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                group.committed(settings.topics.train, [0])
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        group.close()


def test_dashboard_and_alert_queries_return_data_from_running_programs(
        tmp_path: Path, kafka_bootstrap: str, cluster: Any, new_topic: Callable[..., str],
        processes: list[subprocess.Popen[bytes]],
        prometheus_factory: Callable[[dict[str, str]], Prometheus]) -> None:
    train, evaluation, dead = new_topic(2, "obs"), new_topic(1, "obs-eval"), new_topic(1, "obs-dlq")
    trainer_port, producer_port = _free_port(), _free_port()
    settings = {
        "kafka": {"bootstrap_servers": kafka_bootstrap, "connect_timeout_s": 20},
        "topics": {"train": train, "eval": evaluation, "dead_letter": dead, "partitions": 2},
        "producer": {
            "source": {"kind": "synthetic", "count": 40, "min_size": 48, "max_size": 64, "eval_fraction": 0.2},
            "rate": 20, "passes": 0, "metrics": {"host": "127.0.0.1", "port": producer_port}},
        "trainer": {
            "source": {"group_id": f"obs-{uuid.uuid4().hex[:8]}"},
            "pipeline": {"image_size": 32, "batch_size": 4, "shuffle_buffer": 8},
            "model": {"base_filters": 4, "depth": 2},
            "loop": {"eval_every_steps": 5, "eval_max_images": 8, "eval_wait_s": 5, "log_every_s": 1,
                     "snapshot_dir": str(tmp_path / "snapshots"),
                     "tensorboard_dir": str(tmp_path / "tensorboard")},
            "checkpoint": {"dir": str(tmp_path / "checkpoints"), "export_dir": str(tmp_path / "export"),
                           "every_steps": 5, "every_seconds": 5},
            "metrics": {"host": "127.0.0.1", "port": trainer_port}},
    }
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump(settings))
    loaded = config.load(settings_file)  # fail here, readably, if the schema moved on
    _wait_for_group_coordinator(loaded)

    # A malformed message, so that the dead-letter counter has a reason label to show.
    cluster.producer.produce(train, key=b"obs-garbage", value=b"not a tf.train.Example", partition=0)
    cluster.producer.flush(10)

    processes.append(_start(["-m", "producer.cli", "--config", str(settings_file), "-q"], tmp_path / "producer.log"))
    processes.append(_start(["-m", "stream_trainer.cli", "run", "--config", str(settings_file), "--max-seconds", "120"],
                            tmp_path / "trainer.log"))
    trainer_url = f"http://127.0.0.1:{trainer_port}/metrics"
    producer_url = f"http://127.0.0.1:{producer_port}/metrics"
    prometheus = prometheus_factory({TRAINER_JOB: f"127.0.0.1:{trainer_port}",
                                     PRODUCER_JOB: f"127.0.0.1:{producer_port}"})

    def logs() -> str:
        return "".join(f"\n--- {p.name} ---\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))

    # Real work first: steps, an evaluation, a checkpoint and a dead letter, so that every
    # labelled metric has series.
    deadline = time.monotonic() + 75
    trainer_text = ""
    while True:
        for proc in processes:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args} exited with {proc.returncode}{logs()}")
        try:
            trainer_text = _http_get(trainer_url, timeout=2)[1].decode()
        except OSError:
            trainer_text = ""
        if (sum(_samples(trainer_text, "stream_trainer_checkpoints_total")) >= 1
                and sum(_samples(trainer_text, "stream_trainer_dead_letter_messages_total")) >= 1
                and _samples(trainer_text, "stream_trainer_consumer_lag_messages")
                # Test-then-train scores of both parts: a status interval with replayed rows.
                and all(re.search(rf'^stream_trainer_prequential_loss{{[^}}]*part="{part}"', trainer_text, re.M)
                        for part in ("fresh", "replay"))):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the trainer did not checkpoint, dead-letter and score replayed rows within 75 s:\n"
                        f"{trainer_text[-3000:]}{logs()}")
        time.sleep(1)

    producer_text = _http_get(producer_url)[1].decode()
    assert_pages_match_the_catalogue({"trainer": trainer_text, "producer": producer_text})
    exposed = _exposed_names(trainer_text) | _exposed_names(producer_text) | PROMETHEUS_SYNTHETIC
    for where, expr in dashboard_queries() + alert_rules():
        unknown = metric_names(expr) - exposed
        assert not unknown, f"{where} uses {sorted(unknown)}, which neither program exports"

    # Rates need two scrapes after the work; allow a few seconds of scraping. A query ending in
    # `or vector(0)` returns data by construction: its left-hand side must return data on its own,
    # unless this scenario cannot cause the event it counts (NOT_CAUSED_HERE says where it is).
    pending = dashboard_queries() + [(f"{where} (left of 'or vector(0)')", left)
                                     for where, expr in dashboard_queries()
                                     if (left := fallback_left_side(expr)) and not metric_names(left) & NOT_CAUSED_HERE]
    deadline = time.monotonic() + 15
    while pending:
        answers = [(where, expr, prometheus.query(expr)) for where, expr in pending]
        for where, expr, answer in answers:
            assert answer["status"] == "success", f"{where}: {answer.get('error')}\n{expr}"
        pending = [(where, expr) for where, expr, answer in answers if not answer["data"]["result"]]
        if pending and time.monotonic() > deadline:
            pytest.fail("dashboard queries without data:\n" + "\n".join(f"{w}: {e}" for w, e in pending))
        time.sleep(1)
    _assert_rules_healthy(prometheus)

    # Panels drawn per worker keep the `worker` label the trainer adds (an `or vector(0)` fallback
    # has no labels at all).
    for where, expr in dashboard_queries():
        if "per worker" in where:
            series = [r["metric"] for r in prometheus.query(expr)["data"]["result"]]
            assert all(m.get("worker") == "0" for m in series if m), f"{where} loses the worker label: {series}"
    # The trainer job's relabelling names the target service:port, whatever its address.
    dns_name = _scrape_job(TRAINER_JOB)["dns_sd_configs"][0]["names"][0]
    (up,) = prometheus.query(f'up{{job="{TRAINER_JOB}"}}')["data"]["result"]
    assert up["metric"]["instance"] == f"{dns_name}:{trainer_port}", up


def test_the_left_side_of_a_vector_0_fallback_is_checked_on_its_own() -> None:
    assert fallback_left_side("sum by (topic) (rate(a_total[5m])) or vector(0)") == "sum by (topic) (rate(a_total[5m]))"
    assert fallback_left_side("sum(a_total)") is None
    assert fallback_left_side("a_total or vector(0) > 1") is None  # not a trailing fallback
    # Every fallback on the dashboards is checked, unless its counter is in NOT_CAUSED_HERE.
    lefts = [left for _, expr in dashboard_queries() if (left := fallback_left_side(expr))]
    assert len(lefts) == sum(expr.endswith("or vector(0)") for _, expr in dashboard_queries()) > 0
