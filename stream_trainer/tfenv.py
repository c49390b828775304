"""TensorFlow's process environment, set up before TensorFlow is imported: quiet where there is no GPU.

Importing TensorFlow 2.16 on a host without a GPU prints lines like::

    E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:10575] Unable to register cuDNN
      factory: Attempting to register factory for plugin cuDNN when one has already been registered
    W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: Could not find TensorRT

which people read as the failure when the real error follows them. TensorFlow 2.21 (the Python
3.13 stack, docs/stacks.md) logs through absl instead, in another format, and says less::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796537460.436362   26161 cudart_stub.cc:31] Could not find cuda drivers on your machine, ...
    E0000 00:00:1796537478.404674   26161 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

What does and does not help (measured with TensorFlow 2.16.2; the same holds for 2.21 except
that its lines before absl's initialisation ignore ``TF_CPP_MIN_LOG_LEVEL``, INFO included):

* ``CUDA_VISIBLE_DEVICES=""`` changes nothing: the factories register in the shared library's
  static initialisers, before any device is looked at. Not set here.
* ``TF_CPP_MIN_LOG_LEVEL``: 1 hides the INFO lines (oneDNN, cpu_feature_guard, "Could not find
  cuda drivers"), 2 also the TF-TRT warning, only 3 the ``E`` registration lines, but 3 hides
  every real error too. TensorFlow reads it once, so it cannot be raised for the import alone.
* ``TF_ENABLE_ONEDNN_OPTS=0`` only drops the oneDNN line, and with it the bfloat16 kernels
  mixed precision needs on CPUs. Not set here.

So, on a host without GPU device nodes, file descriptor 2 runs through a filter while
TensorFlow's own import runs (an import hook, so the hook costs nothing until something imports
TensorFlow, and a config typo still fails in a fraction of a second). The filter drops exactly
the known lines above (file, and message word for word) and forwards every other byte, in
order; when the import ends, fd 2 is put back and the filter drains before anything else is
printed. Lines after the import are never filtered; TensorFlow 2.21's failed ``cuInit``, which
comes when devices are first listed, is brought into the window by listing them there (what
``precision`` and the first op would do anyway). On a host with a GPU nothing is filtered:
there the same lines can matter.

``TF_CPP_MIN_LOG_LEVEL`` defaults to 1 for the trainer: tensorflow-io logs every Kafka client
setting at INFO, SASL passwords included. A value the user set is kept.

glibc's malloc gives each thread that contends for the heap its own arena, up to 8 per core,
and an arena keeps the memory its thread freed. The trainer runs dozens of threads (TensorFlow's
pools, a reader and librdkafka's threads per partition), so freed tensors and messages stayed
resident in arenas nobody reused. ``limit_malloc_arenas`` caps them at ``MALLOC_ARENAS``
(2) before any thread starts, unless ``MALLOC_ARENA_MAX`` is set (glibc read it at start then);
docs/benchmarks.md (memory) has what it and the other allocators tried gave.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType

# mallopt's parameter number for the arena cap (glibc's malloc.h) and the cap applied by default.
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2
# "2024-05-01 12:00:00.123456: E path/to/file.cc:123] message" (TensorFlow 2.16's C++ log format), and
# "E0000 00:00:1796537478.404674   26161 file.cc:52] message" (absl's, TensorFlow 2.21: file name only).
_PREFIX = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ )"
                     r"(?P<file>\S+?):\d+\] (?P<msg>.*)$")

# (source file, exact message) of every line dropped; nothing else is.
KNOWN_NOISE: tuple[tuple[str, str], ...] = tuple(
    (file, msg) for file, msg in [
        *[("external/local_xla/xla/stream_executor/cuda/" + f, f"Unable to register {p} factory: Attempting to "
           f"register factory for plugin {p} when one has already been registered")
          for f, p in (("cuda_fft.cc", "cuFFT"), ("cuda_dnn.cc", "cuDNN"), ("cuda_blas.cc", "cuBLAS"))],
        ("external/local_tsl/tsl/cuda/cudart_stub.cc",
         "Could not find cuda drivers on your machine, GPU will not be used."),
        ("tensorflow/compiler/tf2tensorrt/utils/py_utils.cc", "TF-TRT Warning: Could not find TensorRT"),
        ("tensorflow/core/util/port.cc",
         "oneDNN custom operations are on. You may see slightly different numerical results due to "
         "floating-point round-off errors from different computation orders. To turn them off, set the "
         "environment variable `TF_ENABLE_ONEDNN_OPTS=0`."),
        ("tensorflow/core/platform/cpu_feature_guard.cc",
         "This TensorFlow binary is optimized to use available CPU instructions in performance-critical "
         "operations."),
        # TensorFlow 2.21 (absl names the file alone).
        ("port.cc", "oneDNN custom operations are on. You may see slightly different numerical results due to "
         "floating-point round-off errors from different computation orders. To turn them off, set the "
         "environment variable `TF_ENABLE_ONEDNN_OPTS=0`."),
        ("cudart_stub.cc", "Could not find cuda drivers on your machine, GPU will not be used."),
        ("cpu_feature_guard.cc", "This TensorFlow binary is optimized to use available CPU instructions in "
         "performance-critical operations."),
    ])
# Known by their start: the reason after it names the host's CUDA stub, and without a GPU any reason is expected.
KNOWN_NOISE_STARTS: tuple[tuple[str, str], ...] = (("cuda_platform.cc", "failed call to cuInit: "),)
# absl's one line before its own initialisation, without a prefix (TensorFlow 2.21).
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# cpu_feature_guard's message goes on in a second line without a prefix.
_GUARD_CONTINUATION = re.compile(r"^To enable the following instructions: [A-Z0-9_ ]+, in other operations, "
                                 r"rebuild TensorFlow with the appropriate compiler flags\.$")
# /dev nodes a usable GPU shows up as: NVIDIA, WSL2's GPU paravirtualisation, AMD ROCm.
_GPU_NODES = ("nvidia[0-9]*", "dxg", "kfd")


def configure(environ: MutableMapping[str, str] | None = None, dev: Path = Path("/dev")) -> bool:
    """Set TensorFlow's environment for this process; call before anything imports TensorFlow.

    Returns True when TensorFlow's import will be filtered (no GPU device node under ``dev``).
    Does nothing more once TensorFlow is imported: its C++ side has read the environment then.
    """
    env = os.environ if environ is None else environ
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" in sys.modules or has_gpu_device(dev):
        return False
    if not any(isinstance(f, QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietImport("tensorflow", then=_list_devices))
    return True


def limit_malloc_arenas(environ: MutableMapping[str, str] | None = None, arenas: int = MALLOC_ARENAS) -> int | None:
    """Cap glibc's malloc arenas at ``arenas`` for this process; call before threads start.

    Returns the cap in force: ``MALLOC_ARENA_MAX`` when the environment sets it (glibc applied it
    at start; kept), else ``arenas``; None where the C library is not glibc (nothing changed).
    """
    env = os.environ if environ is None else environ
    if env.get("MALLOC_ARENA_MAX", "").isdigit():
        return int(env["MALLOC_ARENA_MAX"])
    try:
        mallopt = _libc().mallopt
    except (OSError, AttributeError):
        return None
    return arenas if mallopt(_M_ARENA_MAX, arenas) == 1 else None


def leave_out_plotting() -> None:
    """Keep matplotlib out of this process; for the trainer, which draws nothing with it.

    Keras 3 imports ``matplotlib.pyplot`` at its own import wherever matplotlib is installed (for
    ``keras.visualization``, unused here), and pyplot brings its fonts, extensions and state: 27
    MiB of RSS (``import tensorflow, keras``: 475 MiB, 448 without, measured on TensorFlow 2.16).
    Keras takes the failed import for matplotlib not being installed. The eval snapshot is drawn
    with TensorFlow's PNG encoder; the bench and soak reports, which draw with matplotlib, are
    other commands. Does nothing where matplotlib is imported already.
    """
    if "matplotlib" not in sys.modules and not any(isinstance(f, LeftOut) for f in sys.meta_path):
        sys.meta_path.insert(0, LeftOut("matplotlib"))


class LeftOut(importlib.abc.MetaPathFinder):
    """Import hook: importing package ``name`` (or anything in it) fails as if it were not installed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == self.name or fullname.startswith(self.name + "."):
            msg = f"No module named {fullname!r} (left out of this process by stream_trainer.tfenv)"
            raise ModuleNotFoundError(msg, name=fullname)
        return None


def release_memory() -> None:
    """Free what waits in reference cycles now, and give glibc's free heap pages back.

    An export traces the model into new graphs that end up in reference cycles, which Python's
    collector frees only at a full pass that may be hours away, and glibc keeps freed pages: two
    exports held ~65 MiB that the training steps then allocated beside (docs/benchmarks.md,
    memory). Cheap next to an export; call it after one.
    """
    gc.collect()
    with suppress(OSError, AttributeError):  # not glibc: the collection alone
        _libc().malloc_trim(0)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def has_gpu_device(dev: Path = Path("/dev")) -> bool:
    """True when a GPU device node exists: then the CUDA lines may be real and are kept."""
    return any(any(dev.glob(pattern)) for pattern in _GPU_NODES)


class NoiseFilter:
    """Decides line by line what reaches stderr: everything but ``KNOWN_NOISE``."""

    def __init__(self, known: Sequence[tuple[str, str]] = KNOWN_NOISE,
                 known_starts: Sequence[tuple[str, str]] = KNOWN_NOISE_STARTS) -> None:
        self._known = set(known)
        self._starts = tuple(known_starts)
        self._after_guard = False

    def keep(self, line: str) -> bool:
        """False for a known noise line (and cpu_feature_guard's continuation right after it)."""
        after_guard, self._after_guard = self._after_guard, False
        if (after_guard and _GUARD_CONTINUATION.match(line)) or line == _ABSL_PREAMBLE:
            return False
        m = _PREFIX.match(line)
        if m is None or ((m["file"], m["msg"]) not in self._known
                         and not any(m["file"] == f and m["msg"].startswith(start) for f, start in self._starts)):
            return True
        self._after_guard = m["file"].endswith("cpu_feature_guard.cc")
        return False


@contextmanager
def filtered_stderr(noise: NoiseFilter | None = None) -> Iterator[None]:
    """Run the body with file descriptor 2 passing through ``noise`` (C/C++ writes included).

    Every byte not dropped is forwarded in order; on exit the pipe is drained before fd 2 is
    restored, so nothing is lost or reordered with what follows.
    """
    noise = noise or NoiseFilter()
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_pump, args=(read_end, saved, noise), name="stderr-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump reads to the end and stops
        pump.join(timeout=10.0)
        if not pump.is_alive():  # a child process still holding the pipe keeps it open: leave it
            os.close(saved)


def _pump(read_end: int, out: int, noise: NoiseFilter) -> None:
    pending = b""
    try:
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            _write_all(out, b"".join(line + b"\n" for line in lines if noise.keep(line.decode(errors="replace"))))
        if pending and noise.keep(pending.decode(errors="replace")):
            _write_all(out, pending)
    finally:
        os.close(read_end)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


class QuietImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """One-shot import hook: runs the import of one top-level module inside ``filtered_stderr``."""

    def __init__(self, name: str, then: Callable[[ModuleType], object] | None = None) -> None:
        self.name = name
        self.then = then  # run on the imported module, still inside the window
        self._loader: importlib.abc.Loader | None = None

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one import only; the normal finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None  # the normal machinery raises its usual ModuleNotFoundError
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        assert self._loader is not None
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        assert self._loader is not None and module.__spec__ is not None
        # The module keeps its real loader (importlib.resources and reloads use it).
        module.__loader__ = module.__spec__.loader = self._loader
        with filtered_stderr():
            self._loader.exec_module(module)
            if self.then is not None:
                self.then(module)


def _list_devices(tf: ModuleType) -> None:
    tf.config.list_physical_devices()


# --- which Kafka reader this stack can run --------------------------------------------------------

TENSORFLOW_IO = "tensorflow-io"
CONFLUENT_KAFKA = "confluent-kafka"
READERS = (TENSORFLOW_IO, CONFLUENT_KAFKA)


def tensorflow_io_installed() -> bool:
    """True when the ``tensorflow_io`` package is installed (found, not imported: importing it
    loads TensorFlow, seconds that a config typo should not cost)."""
    return importlib.util.find_spec("tensorflow_io") is not None


def default_reader() -> str:
    """``trainer.source.reader`` when the config leaves it empty: the one rule.

    tensorflow-io where it is installed (Python 3.11/3.12 with TensorFlow 2.16), else
    confluent-kafka (Python 3.13 with current TensorFlow, for which tensorflow-io has no build).
    """
    return TENSORFLOW_IO if tensorflow_io_installed() else CONFLUENT_KAFKA
