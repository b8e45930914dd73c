"""Pydantic views the API sends back; the spec users send is in service.spec."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.spec import ExperimentSpec

# Ids are 32-bit integers on PostgreSQL; larger ones cannot exist, and SQLite cannot bind them.
MAX_DATABASE_ID = 2**31 - 1


class LayerRead(BaseModel):
    name: str
    type: str
    output_shape: list[int | None]
    params: int


class SummaryRead(BaseModel):
    layers: list[LayerRead]
    total_params: int
    flatten_size: int
    activation_bytes_per_batch: int


class ProgressRead(BaseModel):
    epoch: int
    epochs: int
    step: int
    steps: int


class EpochRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    ms_per_step: float
    finished_at: datetime


def _in_utc(value: datetime) -> datetime:
    # SQLite's triggers write times without a zone; they are UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UTCTime = Annotated[datetime, AfterValidator(_in_utc)]


class StatusEventRead(BaseModel):
    """`event: status`: the experiment's status changed (history first, then live)."""

    experiment_id: int
    status: str
    attempt: int = Field(description="attempts started so far; a retried run counts up")
    at: UTCTime


class EpochEventRead(EpochRead):
    """`event: epoch`: an epoch was committed; the same row `epochs` lists."""

    experiment_id: int
    finished_at: UTCTime


class ProgressEventRead(ProgressRead):
    """`event: progress`: where training is, at most once per worker heartbeat; not kept, so
    it carries no id."""

    experiment_id: int
    seconds: float = Field(description="since this attempt started")


class ClassResultRead(BaseModel):
    name: str
    precision: float | None = Field(
        description="of the images predicted as this class, the share that were"
    )
    recall: float | None = Field(description="of this class's images, the share predicted as it")
    accuracy: float = Field(
        description="the share of all images rightly put in or out of this class"
    )


class TestResultRead(BaseModel):
    loss: float
    accuracy: float
    confusion_matrix: list[list[int]] | None = Field(
        default=None,
        description="test images counted by true class (row) and predicted class (column), in "
        "the order of per_class; null for runs stored before it was recorded",
    )
    per_class: list[ClassResultRead] | None = None


class ModelFileRead(BaseModel):
    size_bytes: int
    sha256: str


class AttemptRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None = Field(
        description="null while running; succeeded, failed, cancelled, "
        "requeued (worker shut down, not spent) or lost (lease expired)"
    )
    error: str | None


class WorkerRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    host: str
    pid: int
    device: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool
    experiment_id: int | None


class StudyCellRead(BaseModel):
    study_id: int
    variant: dict[str, Any] = Field(description="the study's varied fields in this cell")
    repeat: int


class ReproducibilityRead(BaseModel):
    seed: int = Field(
        description="the seed it trained with: the spec's, or one drawn at random when the "
        "spec had none; send it as `seed` to train the run again"
    )
    keras_version: str
    backend: str
    backend_version: str = Field(description="the TensorFlow, JAX or PyTorch version")
    numpy_version: str
    python_version: str
    device_name: str = Field(description="the CPU's model, or the GPU's name")
    data_sha256: dict[str, str] = Field(
        description="file name → SHA-256 of each training and test file the run read"
    )
    deterministic: bool = Field(
        description="seeded by the user and run on the CPU with the backend's determinism "
        "switch on: the same spec on the same versions gives the same losses"
    )


class ExperimentRead(BaseModel):
    id: int
    name: str | None
    status: str
    spec: ExperimentSpec
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    device: str | None
    backend: str | None = Field(
        description="the Keras backend that trained it (tensorflow, jax, torch); null until "
        "training starts"
    )
    study: StudyCellRead | None = Field(
        description="the study this experiment is a cell of; null for a single experiment"
    )
    reproducibility: ReproducibilityRead | None = Field(
        description="seed, versions, device and data digests; null until training starts"
    )
    attempts: list[AttemptRead]
    queue_position: int | None = Field(description="1 = next to be claimed; null unless queued")
    waiting_reason: str | None
    cancel_requested: bool
    summary: SummaryRead
    progress: ProgressRead | None
    epochs: list[EpochRead]
    test: TestResultRead | None
    stopped_early: bool
    stop_reason: str | None
    error: str | None
    model: ModelFileRead | None


class ExperimentListItem(BaseModel):
    id: int
    name: str | None
    status: str
    conv_layers: int
    filters: list[int]
    dense_units: list[int]
    total_params: int
    flatten_size: int
    device: str | None
    backend: str | None
    study_id: int | None
    variant: dict[str, Any] | None
    repeat: int | None
    epochs_run: int
    seconds_per_epoch: float | None
    final_accuracy: float | None
    test_accuracy: float | None
    created_at: datetime


class MisclassifiedImageRead(BaseModel):
    index: int = Field(description="the image's position in the 10,000-image test set")
    true_label: int
    true_class: str
    predicted_label: int
    predicted_class: str


class MisclassifiedRead(BaseModel):
    experiment_id: int
    total_misclassified: int = Field(description="every test image the model got wrong")
    items: list[MisclassifiedImageRead] = Field(
        description="the first of them, by test index (at most 100 are kept)"
    )


class ExperimentPage(BaseModel):
    items: list[ExperimentListItem]
    total: int
    limit: int
    offset: int


class Prediction(BaseModel):
    label: int
    class_name: str
    confidence: float
    probabilities: list[float]


class PredictResponse(BaseModel):
    experiment_id: int
    model_selection: Literal["requested", "latest_succeeded"] = Field(
        description="'latest_succeeded' when no experiment_id was given"
    )
    predictions: list[Prediction]


class HealthRead(BaseModel):
    status: Literal["ok"]
    workers_alive: int | None = Field(
        description="live workers a moment ago; null while the database cannot be reached"
    )
