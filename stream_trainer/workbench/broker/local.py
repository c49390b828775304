"""Local Kafka clusters: ``LocalCluster`` (N nodes) and ``LocalBroker`` (one node, the old API).

Why N combined broker+controller nodes and not 1 controller + N brokers: three JVMs instead of
four on a 2-core machine, and a 3-voter quorum survives the loss of any one node, so a test may
kill any node, the active controller included, and the cluster still elects leaders.

A cluster of 3 or more nodes has production replication settings: ``default.replication.factor=3``
and ``min.insync.replicas=2`` (an ``acks=all`` write survives the loss of one node and is refused
rather than under-replicated after the loss of two), internal topics replicated 3 times, unclean
leader election off. A 1-node cluster keeps the settings every single-broker caller relied on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_trainer.errors import BrokerStartError
from stream_trainer.workbench import broker as package
from stream_trainer.workbench.broker.node import KafkaNode, new_cluster_id
from stream_trainer.workbench.broker.sasl import LISTENER, SaslSsl

log = logging.getLogger(__name__)


def _admin(bootstrap: str) -> Any:  # confluent_kafka is imported lazily (the CLI's broker command)
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


@dataclass
class LocalCluster:
    """``size`` KRaft nodes on 127.0.0.1 with a ``size``-voter controller quorum.

    Node ids are 1..size. ``start``/``stop`` act on all nodes; ``kill``, ``stop_node`` and
    ``start_node`` on one, which is what failover tests need. With ``sasl_ssl`` every node also
    serves a SASL_SSL listener (``secure_bootstrap``).
    """

    workdir: Path
    size: int = 3
    heap: str = "384m"
    ready_timeout_s: float = 120.0
    sasl_ssl: SaslSsl | None = None
    # Fixed at construction so restarts come back at the same addresses.
    ports: list[int] = field(default_factory=list)
    controller_ports: list[int] = field(default_factory=list)
    secure_ports: list[int] = field(default_factory=list)
    # Extra broker properties (tests tune timeouts with it); applied last.
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if self.size < 1:
            msg = f"a local cluster needs at least one node, not {self.size}"
            raise BrokerStartError(msg)
        self.ports = self.ports or [package.free_port() for _ in range(self.size)]
        self.controller_ports = self.controller_ports or [package.free_port() for _ in range(self.size)]
        if self.sasl_ssl is not None and not self.secure_ports:
            self.secure_ports = [package.free_port() for _ in range(self.size)]
        single = self.size == 1
        self.nodes = {i + 1: KafkaNode(self.workdir if single else self.workdir / f"node-{i + 1}", i + 1, self.heap)
                      for i in range(self.size)}

    # --- addresses -------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """PLAINTEXT addresses of every node (unauthenticated; super user when ACLs are on)."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def secure_bootstrap(self) -> str:
        """SASL_SSL addresses of every node; empty without ``sasl_ssl``."""
        return ",".join(f"127.0.0.1:{p}" for p in self.secure_ports)

    @property
    def running(self) -> bool:
        """True while every node runs."""
        return all(n.running for n in self.nodes.values())

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id]

    # --- configuration ---------------------------------------------------------------------------

    def _properties(self, node_id: int) -> dict[str, str]:
        i = node_id - 1
        replicas = min(3, self.size)
        listeners = [f"PLAINTEXT://127.0.0.1:{self.ports[i]}", f"CONTROLLER://127.0.0.1:{self.controller_ports[i]}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{self.ports[i]}"]
        protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
        if self.sasl_ssl is not None:
            listeners.append(f"{LISTENER}://127.0.0.1:{self.secure_ports[i]}")
            advertised.append(f"{LISTENER}://127.0.0.1:{self.secure_ports[i]}")
            protocols.append(f"{LISTENER}:SASL_SSL")
        props = {
            "process.roles": "broker,controller",
            "controller.quorum.voters": ",".join(
                f"{n}@127.0.0.1:{p}" for n, p in zip(self.nodes, self.controller_ports, strict=True)),
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocols),
            "num.partitions": "1",
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min(2, replicas)),
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": str(replicas),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min(2, replicas)),
            # Local nodes: no reason to make a new consumer group wait 3 s.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(8 * 1024 * 1024),
            "replica.fetch.max.bytes": str(8 * 1024 * 1024),
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        if self.sasl_ssl is not None:
            props.update(self.sasl_ssl.broker_properties())
        props.update(self.overrides)
        return props

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> str:
        """Start every node that is not running (formatting new ones) and wait until all serve."""
        libs = package.resolve_jars()
        cluster_id_file = self.workdir / "cluster-id"
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id())
        cluster_id = cluster_id_file.read_text().strip()
        extra = self.sasl_ssl.format_arguments() if self.sasl_ssl is not None else []
        for node_id, node in self.nodes.items():
            node.write_config(self._properties(node_id))
            node.format(libs, cluster_id, extra)
        for node in self.nodes.values():
            node.launch(libs)
        try:
            self.wait_ready(self.ready_timeout_s)
        except BrokerStartError:
            self.stop(kill=True)
            raise
        log.info("Kafka %s ready at %s (%d node(s), logs under %s)", package.KAFKA_VERSION, self.bootstrap,
                 self.size, self.workdir)
        return self.bootstrap

    def wait_ready(self, timeout_s: float, node_ids: list[int] | None = None) -> None:
        """Block until every running node (or ``node_ids``) is a registered broker in the metadata."""
        deadline = time.monotonic() + timeout_s
        admin = _admin(self.bootstrap)
        while time.monotonic() < deadline:
            dead = [n for n in self.nodes.values() if n.exit_code is not None]
            if dead:
                msg = (f"Kafka node {dead[0].node_id} exited with code {dead[0].exit_code} while starting; "
                       f"log tail:\n{dead[0].log_tail()}")
                raise BrokerStartError(msg)
            wanted = set(node_ids or [i for i, n in self.nodes.items() if n.running])
            try:
                if wanted <= set(admin.list_topics(timeout=1.0).brokers):
                    return
            except Exception:  # noqa: BLE001 - any failure here just means "not ready yet"
                pass
            time.sleep(0.2)
        tails = "\n".join(f"--- node {i}:\n{n.log_tail(15)}" for i, n in self.nodes.items())
        msg = f"Kafka at {self.bootstrap} did not become ready within {timeout_s:.0f} s; log tail:\n{tails}"
        raise BrokerStartError(msg)

    def stop(self, kill: bool = False, timeout_s: float = 30.0) -> None:
        """Stop every node: SIGTERM for a controlled shutdown (SIGKILL if ``kill``).

        All nodes get the signal at once: stopped one after another, the last ones would wait
        for a controller quorum that is already gone until ``timeout_s`` runs out.
        """
        for node in self.nodes.values():
            node.send_stop(kill)
        for node in self.nodes.values():
            node.wait_stopped(timeout_s)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: no controlled shutdown, leadership moves only after its session expires."""
        self.nodes[node_id].stop(kill=True)

    def stop_node(self, node_id: int, timeout_s: float = 60.0) -> None:
        """Stop one node gracefully: it hands its partition leadership over before exiting."""
        self.nodes[node_id].stop(timeout_s=timeout_s)

    def start_node(self, node_id: int, timeout_s: float | None = None) -> None:
        """Restart one stopped node with its data and wait until it is a registered broker again."""
        node = self.nodes[node_id]
        node.launch(package.resolve_jars())
        self.wait_ready(self.ready_timeout_s if timeout_s is None else timeout_s, [node_id])

    # --- what the cluster looks like -------------------------------------------------------------

    def _partition(self, topic: str, partition: int, timeout_s: float) -> Any:
        # Brokers learn of a new topic at slightly different moments: one that answers without it
        # has not caught up yet, so ask again until the timeout.
        admin = _admin(self.bootstrap)
        deadline = time.monotonic() + timeout_s
        while True:
            md = admin.list_topics(topic=topic, timeout=max(0.5, deadline - time.monotonic()))
            tmd = md.topics.get(topic)
            if tmd is not None and partition in tmd.partitions:
                return tmd.partitions[partition]
            if time.monotonic() >= deadline:
                msg = f"topic {topic} partition {partition} is not in the metadata of {self.bootstrap}"
                raise BrokerStartError(msg)
            time.sleep(0.2)

    def leader(self, topic: str, partition: int = 0, timeout_s: float = 10.0) -> int:
        """The node id leading ``topic[partition]`` right now (-1 while there is none)."""
        return int(self._partition(topic, partition, timeout_s).leader)

    def in_sync(self, topic: str, partition: int = 0, timeout_s: float = 10.0) -> list[int]:
        """The node ids in the partition's in-sync replica set."""
        return sorted(self._partition(topic, partition, timeout_s).isrs)

    def wait_for(self, condition: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
        """Poll ``condition()`` (metadata errors count as "not yet") until true; BrokerStartError otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except Exception:  # noqa: BLE001 - a node in transition answers with errors for a moment
                pass
            time.sleep(0.2)
        msg = f"timed out after {timeout_s:.0f} s waiting for {what}"
        raise BrokerStartError(msg)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- node {i}:\n{n.log_tail(lines)}" for i, n in self.nodes.items())

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalBroker:
    """One KRaft broker+controller process; ``start``/``stop`` may be called repeatedly.

    Ports and the data folder are fixed at construction so a restart comes back at the same
    address with the same log, which is what the broker-restart fault tests need.
    """

    workdir: Path
    port: int = 0
    controller_port: int = 0
    heap: str = "768m"
    ready_timeout_s: float = 90.0
    sasl_ssl: SaslSsl | None = None
    secure_port: int = 0

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.port = self.port or package.free_port()
        self.controller_port = self.controller_port or package.free_port()
        if self.sasl_ssl is not None:
            self.secure_port = self.secure_port or package.free_port()
        self.cluster = LocalCluster(
            self.workdir, size=1, heap=self.heap, ready_timeout_s=self.ready_timeout_s, sasl_ssl=self.sasl_ssl,
            ports=[self.port], controller_ports=[self.controller_port],
            secure_ports=[self.secure_port] if self.sasl_ssl is not None else [])

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        return self.cluster.secure_bootstrap

    @property
    def log_path(self) -> Path:
        return self.cluster.node(1).log_path

    @property
    def running(self) -> bool:
        return self.cluster.running

    def start(self) -> str:
        """Start the broker (formatting its storage the first time) and wait until it serves."""
        self.cluster.ready_timeout_s = self.ready_timeout_s
        self.cluster.start()
        return self.bootstrap

    def wait_ready(self, timeout_s: float) -> None:
        """Block until a metadata request succeeds; raise with the log's tail otherwise."""
        self.cluster.wait_ready(timeout_s, [1])

    def log_tail(self, lines: int = 30) -> str:
        return self.cluster.node(1).log_tail(lines)

    def stop(self, kill: bool = False, timeout_s: float = 30.0) -> None:
        """Stop the broker: SIGTERM for a controlled shutdown (SIGKILL if ``kill``)."""
        self.cluster.stop(kill=kill, timeout_s=timeout_s)

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
