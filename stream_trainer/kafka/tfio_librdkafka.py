"""Asking the librdkafka 1.5.0 inside tensorflow-io whether it takes each ``kafka.client`` value.

tensorflow-io's readers hand every property to ``rd_kafka_conf_set`` only when they start; a
value it refuses (``debug: conf``, an enum value 1.5.0 does not have, ``fetch.max.bytes: 1MB``)
then fails every reader with a message TensorFlow turns into "Graph execution error:". So the
start-up check asks that very function first, with the same key and value, and reports its own
words.

How, without TensorFlow: tensorflow-io links librdkafka statically and exports none of its
symbols, but keeps them in the library's ELF symbol table. A child process loads the library
with ctypes (TensorFlow's framework library first: it is the only one it needs), finds
``rd_kafka_conf_new/set/destroy`` and ``rd_kafka_version_str`` in that table and calls them:
no broker is contacted, ``rd_kafka_conf_set`` only parses. A child, because loading
tensorflow-io's library into the trainer before TensorFlow does would leave TensorFlow's own
``load_op_library`` nothing to register. About 1 s.

When the library cannot be asked (another tensorflow-io build, no symbol table), ``refusals``
returns None and ``properties.VALUES`` (1.5.0's value rules, generated from this same library)
decides instead. Secret values never reach the child: librdkafka takes any string there.
This file runs as the child too, so it imports nothing outside the standard library.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import mmap
import struct
import subprocess
import sys
from pathlib import Path

CHILD_TIMEOUT_S = 30.0
_NAMES = ("rd_kafka_conf_new", "rd_kafka_conf_set", "rd_kafka_conf_destroy", "rd_kafka_version_str")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def libraries() -> tuple[Path, Path] | None:
    """(TensorFlow's framework library, tensorflow-io's library), or None if either is missing."""
    tf, tfio = _package_dir("tensorflow"), _package_dir("tensorflow_io")
    if tf is None or tfio is None:
        return None
    framework, io = tf / "libtensorflow_framework.so.2", tfio / "python" / "ops" / "libtensorflow_io.so"
    return (framework, io) if framework.is_file() and io.is_file() else None


def refusals(settings: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """(librdkafka's version, key -> its reason for each value it refuses), or None if it cannot be asked."""
    libs = libraries()
    if libs is None or not settings:
        return None if libs is None else ("", {})
    try:
        proc = subprocess.run([sys.executable, "-I", __file__, str(libs[0]), str(libs[1])],
                              input=json.dumps(settings), capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S, check=False)
        answer = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    if not isinstance(answer, dict):
        return None
    return str(answer["version"]), {str(k): str(v) for k, v in answer["refused"].items()}


# --- the child ---------------------------------------------------------------------------------

def _symbols(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Each name's address relative to the library's load base, from its ELF .symtab (ELF64, little-endian)."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as elf:
        if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
            return {}
        shoff, = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
        symtab = next((s for s in sections if s[1] == 2), None)  # SHT_SYMTAB
        if symtab is None:
            return {}
        strtab = sections[symtab[6]]  # sh_link
        strings = elf[strtab[4]:strtab[4] + strtab[5]]
        wanted: dict[int, str] = {}
        for name in names:
            needle, at = b"\0" + name.encode() + b"\0", 0
            while (at := strings.find(needle, at)) >= 0:
                wanted[at + 1] = name
                at += 1
        found: dict[str, int] = {}
        table = elf[symtab[4]:symtab[4] + symtab[5]]
        for st_name, st_info, _, shndx, value, _ in struct.iter_unpack("<IBBHQQ", table):
            if st_name in wanted and st_info & 0xF == 2 and shndx != 0:  # STT_FUNC, defined here
                found[wanted[st_name]] = value
        return found


def _load_base(path: Path) -> int:
    """Where the library's first segment (file offset 0, address 0 in its ELF) is mapped in this process."""
    real = str(path.resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
            return int(fields[0].split("-")[0], 16)
    msg = f"{real} is not mapped"
    raise RuntimeError(msg)


def _ask(framework: Path, library: Path, settings: dict[str, str]) -> dict[str, object]:
    ctypes.CDLL(str(framework), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(library))
    addresses = _symbols(library, _NAMES)
    if set(addresses) != set(_NAMES):
        msg = f"symbols not found in {library}: {sorted(set(_NAMES) - set(addresses))}"
        raise RuntimeError(msg)
    base = _load_base(library)
    conf_new = ctypes.CFUNCTYPE(ctypes.c_void_p)(base + addresses["rd_kafka_conf_new"])
    conf_set = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_size_t)(base + addresses["rd_kafka_conf_set"])
    conf_destroy = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(base + addresses["rd_kafka_conf_destroy"])
    version = ctypes.CFUNCTYPE(ctypes.c_char_p)(base + addresses["rd_kafka_version_str"])
    refused = {}
    for key, value in settings.items():
        conf, reason = conf_new(), ctypes.create_string_buffer(512)
        try:
            if conf_set(conf, key.encode(), value.encode(), reason, len(reason)) != 0:  # RD_KAFKA_CONF_OK
                refused[key] = reason.value.decode(errors="replace")
        finally:
            conf_destroy(conf)
    return {"version": (version() or b"?").decode(), "refused": refused}


if __name__ == "__main__":
    print(json.dumps(_ask(Path(sys.argv[1]), Path(sys.argv[2]), json.load(sys.stdin))))
