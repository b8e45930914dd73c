"""What the benchmarks share: ports, waiting for a server, one run through the service."""

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def python_env() -> dict[str, str]:
    """The environment a benchmark's own Python processes run in: this checkout, quiet Keras."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}


def child_cpu_seconds(code: str) -> float:
    """CPU (user + system) of `python -c code`, start to finish."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=python_env(), check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited")
        try:
            httpx.get(f"{url}/health", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} never answered")


@contextmanager
def api_server(env: dict) -> Iterator[str]:
    """`python -m service api` on a free port with `env`, answering; its base URL. Stopped on
    the way out."""
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "service", "api"],
        cwd=ROOT,
        env={**env, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, api)
        yield base
    finally:
        api.terminate()
        api.wait(30)


def train_through_service(spec: dict, directory: Path) -> tuple[dict, bytes, dict]:
    """Migrate a fresh SQLite database, POST the spec, drain it with a real worker process.

    Returns the finished experiment, its `.keras` file and the environment that reaches it.
    """
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.settings import Settings

    url = f"sqlite:///{directory / 'bench.db'}"
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, check=True)
    with TestClient(
        create_app(Settings(database_url=url, allowed_hosts=["testserver"], _env_file=None))
    ) as client:
        created = client.post("/experiments", json=spec).json()
        subprocess.run(
            [sys.executable, "-m", "service", "worker", "--device", "cpu", "--drain"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        body = client.get(f"/experiments/{created['id']}").json()
        assert body["status"] == "succeeded", body
        model = client.get(f"/experiments/{created['id']}/model").content
    return body, model, env
