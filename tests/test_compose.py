"""docker-compose.yml stays in step with the code: commands exist, variables are settings."""

from pathlib import Path

import yaml

from service.__main__ import build_parser
from service.settings import Settings
from tests.conftest import ROOT

# Variables that configure images rather than the service.
IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGPORT"}
# Variables only docker-compose.yml reads.
COMPOSE_VARIABLES = {"API_PORT", "API_BIND", "CONVLAB_API_KEY"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def service_commands() -> set[str]:
    return set(build_parser()._subparsers._group_actions[0].choices)


def compose_files() -> list[Path]:
    return [ROOT / "docker-compose.yml", ROOT / "tests" / "docker" / "compose.host.yml"]


def test_every_service_command_is_a_service_entry_point():
    commands = service_commands()
    for path in compose_files():
        for name, service in load(path)["services"].items():
            command = service.get("command")
            if command is None:
                continue
            assert command[:3] == ["python", "-m", "service"], (path.name, name)
            assert command[3] in commands, (path.name, name, command)
            build_parser().parse_args(command[3:])  # Flags parse too.


def test_every_environment_variable_is_a_known_setting():
    known = {field.upper() for field in Settings.model_fields} | IMAGE_VARIABLES
    for path in compose_files():
        document = load(path)
        for name, service in document["services"].items():
            variables = set(service.get("environment", {}))
            assert variables <= known, (path.name, name, variables - known)
    example = ROOT / ".env.example"
    for line in example.read_text().splitlines():
        line = line.lstrip("# ").strip()
        if "=" in line and line.split("=")[0].isupper():
            assert line.split("=")[0] in known | COMPOSE_VARIABLES, line


def test_stack_has_database_migrations_api_and_both_workers():
    services = load(ROOT / "docker-compose.yml")["services"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_compose_has_no_default_secret_and_publishes_on_loopback():
    text = (ROOT / "docker-compose.yml").read_text()
    assert text.count("${POSTGRES_PASSWORD:?") == 2 and ":-convlab}" not in text
    api = load(ROOT / "docker-compose.yml")["services"]["api"]
    assert api["environment"]["API_KEYS"].startswith("${CONVLAB_API_KEY:?")
    assert api["ports"] == ["${API_BIND:-127.0.0.1}:${API_PORT:-8000}:8000"]
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith(("POSTGRES_PASSWORD=", "CONVLAB_API_KEY=")):
            assert line.endswith("="), "the example must not ship a secret"
