"""``stream-trainer inspect``: what a checkpoint would resume from, and how far behind that is.

Reads the newest checkpoint of a directory without building a model (``checkpoint.read_state``)
and, when the cluster is reachable, the partitions' log start and end and the consumer group's
committed offsets, so an operator sees per partition: saved position, committed, log start, log
end and lag (messages after the saved position).
"""

from __future__ import annotations

from stream_trainer import config
from stream_trainer.errors import CheckpointError, StreamTrainerError
from stream_trainer.state.checkpoint import read_state


def main(checkpoint_dir: str, config_path: str | None, bootstrap: str | None) -> int:
    state = read_state(checkpoint_dir)
    if state is None:
        msg = f"no checkpoint in {checkpoint_dir}"
        raise CheckpointError(msg)
    print(f"checkpoint {state.path}")
    print(f"  step {state.step}, topic '{state.topic}', written by {state.workers} worker(s)")
    replay = state.replay or {}
    if replay:
        print(f"  replay store: {len(replay.get('members', []))} members ({replay.get('policy')}), "
              f"{replay.get('seen')} examples offered so far")
    settings = config.load(config_path, {"kafka.bootstrap_servers": bootstrap})
    live: dict[int, tuple[str, int, int]] = {}
    try:
        live = _live(settings, state.topic, sorted(state.offsets))
    except StreamTrainerError as exc:
        print(f"  (cluster not consulted: {exc})")
    print(f"  {'partition':>9} {'position':>10} {'committed':>10} {'log start':>10} {'log end':>10} {'lag':>8}")
    for p, offset in sorted(state.offsets.items()):
        if p in live:
            committed, low, high = live[p]
            lag = high - max(offset, low)
            beyond = "  <- beyond the log end" if offset > high else ""
            print(f"  {p:>9} {offset:>10} {committed:>10} {low:>10} {high:>10} {max(lag, 0):>8}{beyond}")
        else:
            print(f"  {p:>9} {offset:>10}")
    return 0


def _live(settings: config.Settings, topic: str, partitions: list[int]) -> dict[int, tuple[str, int, int]]:
    from stream_trainer.kafka import Cluster

    cluster = Cluster(settings.kafka, group_id=settings.trainer.source.group_id)
    try:
        cluster.wait_until_reachable(timeout_s=min(5.0, settings.kafka.connect_timeout_s))
        marks = cluster.watermarks(topic, partitions)
        committed = cluster.committed(topic, partitions)
    finally:
        cluster.close()
    return {p: (str(committed.get(p, "-")), m.low, m.high) for p, m in marks.items()}
