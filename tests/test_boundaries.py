"""Module boundaries: which side imports Keras (the training child does, the worker process
never), what the API leaves for first use, no import cycle, no module too long to read."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# The Keras backend's packages: the worker and the client commands never load them.
BACKEND = {"keras", "tensorflow"}


def imports_none_of(modules: str, absent: set[str]) -> subprocess.CompletedProcess:
    """Import `modules` in a fresh interpreter (this one has imported everything for other
    tests) and fail there if any top-level package in `absent` came with them."""
    check = f"loaded = set({sorted(absent)!r}) & {{m.split('.')[0] for m in sys.modules}}"
    return subprocess.run(
        [sys.executable, "-c", f"import {modules}, sys; {check}; assert not loaded, loaded"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_worker_never_imports_keras():
    result = imports_none_of("service.worker", BACKEND)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_messages_and_the_child_entry_point_import_no_keras():
    result = imports_none_of("service.ml.messages, service.ml.child", BACKEND)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_api_loads_plotting_and_statistics_when_first_used():
    # Together half of an API process's import time (bench/api_startup.py).
    result = imports_none_of("service.api", BACKEND | {"matplotlib", "scipy"})
    assert result.returncode == 0, result.stderr[-2000:]


def module_imports(path: Path) -> set[str]:
    """The `service` modules a file imports anywhere in it, TYPE_CHECKING blocks and
    function bodies included: a cycle hidden in either is still a cycle."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service"):
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith("service"))
    return imported


def test_service_has_no_import_cycle():
    files = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / "service").rglob("*.py")
    }
    graph = {name: module_imports(path) & files.keys() - {name} for name, path in files.items()}
    # A package's __init__ naming its own modules is not a cycle through them.
    for name in graph:
        graph[name] = {other for other in graph[name] if not name.startswith(f"{other}.")}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()  # Raises CycleError, naming the modules, on a cycle.


def test_no_module_in_service_is_over_350_lines():
    long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / "service").rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 350
    }
    assert not long
