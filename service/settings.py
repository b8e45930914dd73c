"""Configuration from environment variables; settings that make no sense are refused at start."""

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATA_DIR = Path("data")
# Shorter keys can be guessed; 16 characters is what `secrets.token_urlsafe(12)` gives.
MIN_API_KEY_LENGTH = 16
# Names earlier versions read. Set, they are refused: ignored, they would leave the service
# running on a default its operator had changed (BATCH_WAIT_MS=0 would batch again).
RENAMED = {
    "SQLITE_BUSY_TIMEOUT_MS": "SQLITE_BUSY_TIMEOUT_SECONDS",
    "BATCH_WAIT_MS": "BATCH_WAIT_SECONDS",
    "MODEL_CHECK_SECONDS": "MODEL_LOOKUP_TTL_SECONDS",
}
LOOPBACK_NAMES = ("localhost",)
# What a bearer token may hold (RFC 6750's token68).
TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

# A comma-separated list in the environment: API_KEYS=a,b or ALLOWED_HOSTS=localhost,127.0.0.1.
CommaList = Annotated[list[str], NoDecode]


class UnsafeExposureError(ValueError):
    """The API would listen beyond this machine with no key to keep strangers out."""


def is_loopback(host: str) -> bool:
    """Whether an address or host name only reaches this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Every setting the API and the workers read, each from the variable of the same name."""

    # hide_input_in_errors: an error must not print the keys it was given.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_DATA_DIR / 'convlab.db'}",
        description="SQLAlchemy URL; SQLite by default, postgresql+psycopg://... in production.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_workers: int = Field(
        default=1, ge=1, description="API processes; each loads the models it serves."
    )
    access_log: bool = Field(
        default=False, description="Log every request; off by default, it costs throughput."
    )

    api_keys: CommaList = Field(
        default=[], description="Keys that may use the API (Authorization: Bearer <key>)."
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of API keys, one a line; added to API_KEYS."
    )
    auth_reads: bool = Field(
        default=True, description="With keys set, GETs and predictions need a key too."
    )
    allow_unauthenticated: bool = Field(
        default=False, description="Serve a non-loopback HOST without API keys anyway."
    )
    allowed_hosts: CommaList = Field(
        default=["127.0.0.1", "localhost", "[::1]"],
        description="Host header values the API answers; '*' turns the check off.",
    )
    cors_origins: CommaList = Field(
        default=[], description="Origins whose pages may call the API; empty: CORS is off."
    )

    fashion_mnist_dir: Path | None = Field(
        default=None,
        description="A directory holding the four Fashion-MNIST IDX files, searched first.",
    )

    worker_device: Literal["auto", "cpu", "gpu"] = "auto"
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    worker_heartbeat_seconds: float = Field(default=1.0, gt=0)
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A running experiment with no heartbeat for this long is requeued.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Claims an experiment may spend before it is failed."
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long a worker waits for the current epoch to end.",
    )
    max_run_seconds: float = Field(
        default=6 * 3600, gt=0, description="An experiment training longer than this fails."
    )
    max_training_steps: int = Field(
        default=200_000, ge=1, description="Most epochs × steps per epoch a spec may ask for."
    )
    max_queued: int = Field(
        default=100, ge=1, description="Most queued or running experiments per API key."
    )
    trainer_max_experiments: int = Field(
        default=50, ge=1, description="Experiments a training process runs before it is renewed."
    )
    trainer_max_rss_bytes: int = Field(
        default=4 * 1024**3,
        gt=0,
        description="A training process holding more memory than this after an experiment "
        "is renewed.",
    )

    sqlite_busy_timeout_seconds: float = Field(
        default=30.0, ge=0, description="How long a SQLite writer waits for the lock."
    )
    database_wait_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long a request waits for a database connection before a 503.",
    )

    long_poll_max_seconds: float = Field(
        default=60.0,
        ge=0,
        le=60,
        description="The longest a GET /experiments/{id}?wait= is held; keep it under the "
        "read timeout of any proxy in front.",
    )
    max_event_streams: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Event streams one API process holds open; past it a stream gets a 503.",
    )
    max_event_streams_per_key: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Of those, how many one API key may hold, so that one client cannot take "
        "them all (without keys there is one client: only MAX_EVENT_STREAMS applies).",
    )
    event_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often an event stream reads the database on SQLite; PostgreSQL "
        "wakes streams at once through LISTEN/NOTIFY and polls only as a fallback.",
    )
    event_stream_max_seconds: float = Field(
        default=0,
        ge=0,
        description="Close an event stream after this long (its client resumes with "
        "Last-Event-ID), e.g. under a proxy's read timeout; 0: never.",
    )

    max_request_bytes: int = Field(
        default=64 * 1024, gt=0, description="Largest body of any route but /predict."
    )
    max_upload_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    max_image_side: int = Field(
        default=4096, ge=28, description="Longest side of an image /predict decodes."
    )
    max_image_pixels: int = Field(
        default=4096 * 4096,
        ge=28 * 28,
        description="Most pixels an image may decode to, counted on its padded square.",
    )
    max_predict_instances: int = Field(default=256, gt=0)
    model_cache_size: int = Field(default=4, ge=1, description="Most models kept loaded.")
    model_cache_bytes: int = Field(
        default=512 * 1024**2, gt=0, description="Most weight bytes kept loaded."
    )
    model_lookup_ttl_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Lifetime of the cached answer to which model serves a predict request.",
    )
    batch_wait_seconds: float = Field(
        default=0.002,
        ge=0,
        le=1,
        description="How long to gather predict requests; 0 turns batching off.",
    )
    batch_max_images: int = Field(default=64, ge=1)
    inference_threads: int = Field(
        default=1,
        ge=0,
        description="Compute threads each API process gives its models; 0: all cores. "
        "Batches are small, and the cores serve requests better than a wider model call.",
    )

    worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness of the training process, so it cannot starve an API beside it.",
    )
    worker_threads: int = Field(
        default=0, ge=0, description="Threads the training process may use; 0: all cores."
    )

    @field_validator("api_keys", "allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _not_in_memory(cls, value: str) -> str:
        if value in ("sqlite://", "sqlite:///:memory:") or value.endswith("/:memory:"):
            raise ValueError(
                "an in-memory SQLite database belongs to one connection of one process, so "
                "the API and the workers would each see an empty one: name a file"
            )
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        if not hosts:
            raise ValueError("ALLOWED_HOSTS is empty, so every request would be refused")
        for host in hosts:
            if host != "*" and ("*" in host[1:] or (host.startswith("*") and host[1:2] != ".")):
                raise ValueError(f"ALLOWED_HOSTS: {host!r}: a wildcard is '*' or '*.example.org'")
            if ":" in host and not host.startswith("["):
                raise ValueError(f"ALLOWED_HOSTS: {host!r}: name hosts without a port")
        return hosts

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
                raise ValueError(
                    f"CORS_ORIGINS: {origin!r} is not an origin like https://app.example.org "
                    "(no '*': name each site that may write here)"
                )
        return [origin.rstrip("/") for origin in origins]

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="before")
    @classmethod
    def _no_old_names(cls, data: object) -> object:
        old = [name for name in RENAMED if name in os.environ]
        if old:
            raise ValueError(
                "; ".join(f"{name} is now {RENAMED[name]}, in seconds" for name in old)
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.worker_heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"WORKER_HEARTBEAT_SECONDS ({self.worker_heartbeat_seconds:g}) must be shorter "
                f"than LEASE_SECONDS ({self.lease_seconds:g}), or every lease runs out"
            )
        keys = self.all_api_keys()
        bad = [key for key in keys if len(key) < MIN_API_KEY_LENGTH or not TOKEN.fullmatch(key)]
        if bad:
            raise ValueError(
                f"{len(bad)} API key(s) shorter than {MIN_API_KEY_LENGTH} characters or with "
                "characters a header cannot carry (letters, digits and -._~+/= only): make "
                'them with python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        if "*" in self.allowed_hosts and not (keys or self.allow_unauthenticated):
            raise ValueError(
                "ALLOWED_HOSTS=* without API keys lets any web page reach the API through DNS "
                "rebinding: name the hosts, or set API_KEYS"
            )
        return self

    def all_api_keys(self) -> list[str]:
        """API_KEYS and the lines of API_KEYS_FILE (blank lines and # comments skipped)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text().splitlines()
            except OSError as error:
                raise ValueError(f"API_KEYS_FILE cannot be read: {error}") from None
            stripped = (line.strip() for line in lines)
            keys += [line for line in stripped if line and not line.startswith("#")]
        return keys

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback with no API key, unless told that is intended."""
        if is_loopback(self.host) or self.all_api_keys() or self.allow_unauthenticated:
            return
        raise UnsafeExposureError(
            f"HOST={self.host} lets other machines reach the API, and no API key is set, so "
            "anyone could train, cancel and download models: set API_KEYS (or API_KEYS_FILE), "
            "or ALLOW_UNAUTHENTICATED=true if the network in front of it is trusted"
        )


@lru_cache
def get_settings() -> Settings:
    """Read the settings once per process."""
    return Settings()
