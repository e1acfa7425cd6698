"""The package's layers: the library never imports a stage, stages never import each other, and
there is no import cycle (not even through an import inside a function)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a stage module may import from its own package: the framework, not another stage.
STAGE_FRAMEWORK = {"curation.stages.base", "curation.stages.shard_stage"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "curation").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every curation module ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_only_the_cli_imports_the_stages():
    graph = import_graph()
    offenders = {
        name: sorted(d for d in deps if d.startswith("curation.stages"))
        for name, deps in graph.items()
        if not name.startswith("curation.stages") and name != "curation.cli"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_stages_do_not_import_each_other():
    graph = import_graph()
    offenders = {
        name: sorted(
            d for d in deps if d.startswith("curation.stages.") and d not in STAGE_FRAMEWORK
        )
        for name, deps in graph.items()
        if name.startswith("curation.stages.") and name != "curation.stages.run"
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    # run imports the framework only; it finds the stages through the registry
    assert {d for d in graph["curation.stages.run"] if d.startswith("curation.stages")} <= {
        "curation.stages.base"
    }


def test_there_is_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            assert visit(module) is None, "import cycle"


def test_importing_any_library_module_imports_no_stage():
    """Each module in a fresh interpreter: what it pulls in when a user imports it."""
    library = [m for m in _modules() if not m.startswith("curation.stages") and m != "curation.cli"]
    script = (
        "import importlib, json, sys\n"
        "bad = {}\n"
        f"for name in {library!r}:\n"
        "    importlib.import_module(name)\n"
        "    stages = sorted(m for m in sys.modules if m.startswith('curation.stages'))\n"
        "    if stages:\n"
        "        bad[name] = stages\n"
        "        break\n"
        "print(json.dumps(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}
    assert len(library) > 40  # the walk found the package


def test_every_stage_module_loads_and_the_registry_names_it():
    from curation.cli import load_stage
    from curation.pipeline import ORDER, stage_info

    for name in ORDER:
        stage = load_stage(name)
        assert stage.name == name and stage.__module__ == stage_info(name).module
