"""Which side imports Keras: the training child does, the worker process never."""

import subprocess
import sys

from tests.conftest import ROOT

NO_BACKEND = (
    "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, sorted(sys.modules)"
)


def imports_no_backend(module: str) -> subprocess.CompletedProcess:
    # In a fresh interpreter: this one has imported Keras for other tests.
    return subprocess.run(
        [sys.executable, "-c", f"import {module}, sys; {NO_BACKEND}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_worker_never_imports_keras():
    result = imports_no_backend("service.worker")
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_messages_and_the_child_entry_point_import_no_keras():
    result = imports_no_backend("service.ml.messages, service.ml.child")
    assert result.returncode == 0, result.stderr[-2000:]
