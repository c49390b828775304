"""A quiet start on hosts without a GPU: TensorFlow's registration noise goes, real errors stay."""
# ruff: noqa: E501 - NOISE holds lines captured from TensorFlow verbatim

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stream_trainer import tfenv

ROOT = Path(__file__).resolve().parents[1]
# Captured from `python -c "import tensorflow"` (TensorFlow 2.16.2) on a host without a GPU.
NOISE = """\
2026-11-25 22:15:57.078504: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
2026-11-25 22:15:57.079157: I external/local_tsl/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers on your machine, GPU will not be used.
2026-11-25 22:15:57.090673: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:479] Unable to register cuFFT factory: Attempting to register factory for plugin cuFFT when one has already been registered
2026-11-25 22:15:57.106530: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:10575] Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered
2026-11-25 22:15:57.106569: E external/local_xla/xla/stream_executor/cuda/cuda_blas.cc:1442] Unable to register cuBLAS factory: Attempting to register factory for plugin cuBLAS when one has already been registered
2026-11-25 22:15:57.117795: I tensorflow/core/platform/cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
2026-11-25 22:15:57.840106: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: Could not find TensorRT
"""
# The same from TensorFlow 2.21 (the Python 3.13 stack); the cuInit line comes when devices are first listed.
NOISE_2_21 = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796537460.431487   26161 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796537460.436362   26161 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796537293.606647   15409 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796537478.404674   26161 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
"""
REAL = [
    "2026-11-25 22:15:58.000001: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:535] Could not create "
    "cudnn handle: CUDNN_STATUS_INTERNAL_ERROR",
    "2026-11-25 22:15:58.000002: W tensorflow/core/framework/op_kernel.cc:1839] OP_REQUIRES failed at "
    "whole_file_read_ops.cc:116 : NOT_FOUND: /data/pets.jpg; No such file or directory",
    "2026-11-25 22:15:58.000003: E tensorflow/core/util/port.cc:113] oneDNN custom operations are on. But not quite.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",  # the guard's continuation, but not after the guard line
    "Traceback (most recent call last):",
    "W0000 00:00:1796537433.015436   24660 op_kernel.cc:1858] OP_REQUIRES failed at whole_file_read_ops.cc:117 : "
    "NOT_FOUND: /nonexistent/pets.jpg; No such file or directory",
    "E0000 00:00:1796537478.404674   26161 cuda_dnn.cc:535] Could not create cudnn handle: CUDNN_STATUS_INTERNAL_ERROR",
    "I0000 00:00:1796537460.436362   26161 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used. But not quite.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR, and more",
]
NOISY_WORDS = ("cuda", "cudnn", "tensorrt", "unable to register", "onednn")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(ROOT)}


def _run(args: list[str], cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


# -- the filter ---------------------------------------------------------------------------------


def test_the_filter_drops_exactly_the_known_lines_and_keeps_lookalikes() -> None:
    for known in (NOISE, NOISE_2_21):
        noise = tfenv.NoiseFilter()
        assert [line for line in known.splitlines() if noise.keep(line)] == []
    noise = tfenv.NoiseFilter()
    assert [line for line in REAL if noise.keep(line)] == REAL


def test_filtered_stderr_forwards_c_level_writes_in_order_and_drains_before_returning(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from stream_trainer import tfenv
        noise = {NOISE!r}
        with tfenv.filtered_stderr():
            os.write(2, noise.encode())  # what TensorFlow's C++ side does
            os.write(2, b"real 1\\n" + noise.encode()[:90])
            os.write(2, noise.encode()[90:] + b"real 2 ")
            print("real 3", file=sys.stderr)
            os.write(2, b"no newline at the end")
        os.write(2, b"|after\\n")
    """))
    out = _run([str(script)], cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "real 1\nreal 2 real 3\nno newline at the end|after\n"


def test_the_import_hook_filters_only_that_import_and_lets_its_errors_through(tmp_path: Path) -> None:
    pkg = tmp_path / "noisy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        import os
        os.write(2, {NOISE!r}.encode() + b"a real warning from noisy\\n")
        raise ImportError("noisy is broken")
    """))
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from stream_trainer import tfenv
        sys.meta_path.insert(0, tfenv.QuietImport("noisy"))
        try:
            import noisy
        except ImportError as exc:
            print(f"caught: {exc}", file=sys.stderr)
        os.write(2, b"2026-11-25 22:15:57.106530: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:10575]"
                    b" Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one"
                    b" has already been registered\\n")
    """))
    out = _run([str(script)], cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    # The same noise after the import is not filtered: only the import's window is.
    assert lines[:2] == ["a real warning from noisy", "caught: noisy is broken"]
    assert len(lines) == 3 and "Unable to register cuDNN" in lines[2]


def test_configure_defaults_the_log_level_to_1_but_keeps_the_users(tmp_path: Path) -> None:
    gpu_host = tmp_path / "dev"
    gpu_host.mkdir()
    (gpu_host / "nvidia0").touch()
    env: dict[str, str] = {}
    assert tfenv.configure(env, dev=gpu_host) is False  # a GPU host: nothing is filtered
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "1"}
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    tfenv.configure(env, dev=gpu_host)
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert tfenv.has_gpu_device(gpu_host) and not tfenv.has_gpu_device(tmp_path)


# -- the command line ---------------------------------------------------------------------------


def test_a_config_error_prints_exactly_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  loop:\n    max_stepz: 3\n")
    out = _run(["-m", "stream_trainer.cli", "run", "--config", str(bad)])
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "stream-trainer: error: unknown config key 'trainer.loop.max_stepz' (known here: eval_every_steps, "
        "eval_max_images, eval_wait_s, log_every_s, max_seconds, max_steps, snapshot_dir, tensorboard_dir, "
        "tensorboard_images_every_s, trained_log)"]


@pytest.mark.skipif(tfenv.has_gpu_device(), reason="on a GPU host the CUDA lines are kept on purpose")
def test_an_unreachable_broker_error_comes_without_cuda_noise(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  connect_timeout_s: 1\ntrainer:\n  metrics:\n    port: 0\n")
    out = _run(["-m", "stream_trainer.cli", "run", "--config", str(cfg), "--bootstrap", "127.0.0.1:9"])
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1].startswith("stream-trainer: error: Kafka broker unreachable at 127.0.0.1:9")
    assert [line for line in out.stderr.splitlines() if any(w in line.lower() for w in NOISY_WORDS)] == []


@pytest.mark.skipif(tfenv.has_gpu_device(), reason="on a GPU host the CUDA lines are kept on purpose")
def test_a_real_tensorflow_error_is_still_printed(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent("""
        from stream_trainer import tfenv
        assert tfenv.configure()
        import tensorflow as tf
        tf.io.read_file("/nonexistent/pets.jpg")
    """))
    out = _run([str(script)], cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert any("OP_REQUIRES failed at whole_file_read_ops.cc" in line and "NOT_FOUND" in line for line in lines)
    assert "tensorflow.python.framework.errors_impl.NotFoundError" in out.stderr
    assert [line for line in lines if any(w in line.lower() for w in NOISY_WORDS)] == []


_ARENAS = textwrap.dedent("""
    import ctypes, sys, threading
    from stream_trainer import tfenv
    if sys.argv[1] == "capped":
        assert tfenv.limit_malloc_arenas({}) == tfenv.MALLOC_ARENAS
    ready, done = threading.Barrier(9), threading.Event()
    def work():
        keep = [bytearray(4000) for _ in range(200)]  # malloc from this thread, under mmap's threshold
        ready.wait()
        done.wait()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    ready.wait()
    ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per arena, on stderr
    done.set()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_malloc_arenas_are_capped_so_threads_share_two_instead_of_one_each() -> None:
    def arenas(mode: str) -> int:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        out = subprocess.run([sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True, cwd=ROOT,
                             env={**env, "PYTHONPATH": str(ROOT)}, timeout=60, check=True)
        return out.stderr.count("Arena ")

    assert arenas("default") > tfenv.MALLOC_ARENAS  # glibc's own: up to 8 per core, one per thread here
    assert arenas("capped") == tfenv.MALLOC_ARENAS
    assert tfenv.limit_malloc_arenas({"MALLOC_ARENA_MAX": "4"}) == 4  # set at start: glibc applied it, kept


_PLOTTING = textwrap.dedent("""
    import sys
    from stream_trainer import tfenv
    if sys.argv[1] == "left-out":
        tfenv.leave_out_plotting()
    import tensorflow, keras
    from stream_trainer.quality.evaluate import snapshot_png
    print(sorted({m.split(".")[0] for m in sys.modules} & {"matplotlib", "keras", "tensorflow"}))
""")


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed here")
def test_the_trainer_leaves_matplotlib_out_which_keras_would_import() -> None:
    def imported(mode: str) -> str:
        out = subprocess.run([sys.executable, "-c", _PLOTTING, mode], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=True)
        return out.stdout.strip()

    assert imported("default") == "['keras', 'matplotlib', 'tensorflow']"  # what the hook is for
    assert imported("left-out") == "['keras', 'tensorflow']"
