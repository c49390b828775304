"""The package reads as the pipeline: imports point one way, from later stages to earlier ones.

The stage order is the README's diagram (docs/architecture.md draws it): readers and decode,
then learning, then the state that saves it, then quality checks and exports, then the loop that
drives them, then the wiring, the workbench and the command line. A module may import from its
own stage or an earlier one, never a later one, and no two modules import each other, directly
or through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "stream_trainer"

# Earliest first. The shared vocabulary (config, errors, metrics, wire, kafka) comes before every stage.
STAGES = [
    {"errors", "config", "metrics", "wire", "tfenv", "threads", "kafka"},
    {"ingest"},
    {"learn"},
    {"state"},
    {"quality"},
    {"serve"},
    {"loop"},
    {"app", "inspect"},
    {"workbench"},  # tools around the daemon (broker, bench, soak, demo): the daemon never imports them
    {"cli"},  # the one entry point: every subcommand, the daemon's and the workbench's
]


def _stage(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    for i, names in enumerate(STAGES):
        if top in names:
            return i
    raise AssertionError(f"{module} belongs to no stage: add its folder to STAGES (and to docs/architecture.md)")


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every stream_trainer module ``path`` imports, at the top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in modules and name.startswith("stream_trainer."):
                out.add(name)
    return out


GRAPH = {m: _imports(p, _modules()) - {m} for m, p in _modules().items() if m != "stream_trainer"}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_from_later_stages_to_earlier_ones(module: str) -> None:
    later = sorted(d for d in GRAPH[module] if d != "stream_trainer" and _stage(d) > _stage(module))
    assert not later, f"{module} (stage {_stage(module)}) imports later stages: {later}"


def test_no_module_imports_itself_through_others() -> None:
    done: set[str] = set()
    path: list[str] = []

    def visit(m: str) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(m):], m]))
        if m in done:
            return
        path.append(m)
        for d in sorted(GRAPH.get(m, ())):
            # a package's __init__ importing its own submodules is how a package is made, not a cycle
            if not d.startswith(m + "."):
                visit(d)
        path.pop()
        done.add(m)

    for m in sorted(GRAPH):
        visit(m)


def test_the_architecture_drawing_names_only_modules_that_exist_and_every_stage() -> None:
    """docs/architecture.dot is the drawing's source: kept true, or this fails."""
    import re

    text = (ROOT.parent / "docs" / "architecture.dot").read_text()
    dot = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    clusters = set(re.findall(r"label=\"(\w+)/", dot))
    assert clusters == {"ingest", "learn", "loop", "state", "quality", "serve"}, clusters
    named = set(re.findall(r"(\w+)\.py", dot))
    files = {p.stem for p in ROOT.rglob("*.py")}
    assert named and named <= files, f"the drawing names modules that do not exist: {sorted(named - files)}"
    for stage in clusters:
        drawn = set(re.findall(r"(\w+)\.py", dot.split(f"cluster_{stage}", 1)[1].split("subgraph", 1)[0]))
        assert drawn <= {p.stem for p in (ROOT / stage).glob("*.py")}, f"{stage}/ is drawn with {sorted(drawn)}"
