"""``stream-trainer`` that also reports the weights each worker holds once the checkpoint is restored.

    python -m tests.faults.observed_trainer --restored FILE -- run --config FILE

A test hook, outside the product: ``CheckpointStore.restore`` (the chief restores, then broadcasts
to every worker) is wrapped so that, when it returns, this process writes ``FILE``: a JSON object
with the step, the learning rate, and a checksum of the state the broadcast covers (the model's
and the optimizer's variables but the learning rate, which is the job's setting), computed as
``checkpoint_checksum`` computes it from the checkpoint files. The tests compare those files,
never log lines.

The checksum is a digest of the sorted per-tensor digests: the same tensors give the same value
whether they come from a live model or from ``tf.train.load_checkpoint``, which names them by
object path rather than in the model's order.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
# What the restore and the broadcast cover (``state/checkpoint.py``): the model's variables (its
# trainable ones are saved under the optimizer's) and the optimizer's; ``save_counter`` is
# tf.train.Checkpoint's own bookkeeping, not the job's state.
_COVERED = ("model/", "optimizer/")
_LEARNING_RATE = f"optimizer/_learning_rate{_VALUE}"
_ITERATIONS = f"optimizer/_iterations{_VALUE}"


def tensors_checksum(tensors: Iterable[Any]) -> str:
    """Order-independent digest of ``tensors`` (dtype, shape and bytes of each)."""
    digests = []
    for tensor in tensors:
        array = np.ascontiguousarray(np.asarray(tensor))
        digests.append(hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


def checkpoint_checksum(path: str) -> tuple[int, str, int]:
    """(step, checksum, tensor count) of the model and optimizer variables saved at ``path``."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(path)
    keys = sorted(k for k in reader.get_variable_to_shape_map()
                  if k.startswith(_COVERED) and k.endswith(_VALUE) and k != _LEARNING_RATE)
    return int(reader.get_tensor(f"step{_VALUE}")), tensors_checksum(reader.get_tensor(k) for k in keys), len(keys)


def optimizer_iterations(path: str) -> int:
    """The optimizer's update count saved at ``path`` (Keras counts one per ``apply_gradients``)."""
    import tensorflow as tf

    return int(tf.train.load_checkpoint(path).get_tensor(_ITERATIONS))


def _observe(out: Path) -> None:
    from stream_trainer.state import checkpoint

    original = checkpoint.CheckpointStore.restore

    def restore(self: Any) -> Any:
        found = original(self)
        rate = self._optimizer.learning_rate
        variables = [*self.model.variables, *(v for v in self._optimizer.variables if v is not rate)]
        out.write_text(json.dumps({"step": int(self.step.numpy()), "checksum": tensors_checksum(variables),
                                   "tensors": len(variables), "learning_rate": float(rate.numpy())}))
        return found

    checkpoint.CheckpointStore.restore = restore  # type: ignore[method-assign]


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    if argv[:split][:1] != ["--restored"] or len(argv[:split]) != 2:
        sys.exit("usage: python -m tests.faults.observed_trainer --restored FILE -- run --config FILE")
    from stream_trainer import cli, tfenv

    tfenv.configure()  # as cli.main does, before the hook imports TensorFlow
    _observe(Path(argv[1]))
    cli.entry(argv[split + 1:])


if __name__ == "__main__":
    main()
