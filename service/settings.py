"""Configuration from environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("data")


class Settings(BaseSettings):
    """Every setting the API and the workers read, each from the variable of the same name."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

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

    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)

    max_upload_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=25_000_000, gt=0)
    max_predict_instances: int = Field(default=256, gt=0)
    model_cache_size: int = Field(default=4, ge=1, description="Most models kept loaded.")
    model_cache_bytes: int = Field(
        default=512 * 1024**2, gt=0, description="Most weight bytes kept loaded."
    )
    model_check_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How long a request may reuse the last look-up of which model serves it.",
    )
    batch_wait_ms: float = Field(
        default=2.0, ge=0, description="How long to gather predict requests; 0 turns it off."
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
    worker_threads: int | None = Field(
        default=None, ge=1, description="Threads the training process may use; unset: all."
    )


@lru_cache
def get_settings() -> Settings:
    """Read the settings once per process."""
    return Settings()
