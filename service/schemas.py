"""Pydantic models at the HTTP boundary: the spec users send and the views they get back."""

import math
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.architecture import ArchitectureError, ConvBlock, ModelSummary, summarize

MAX_CONV_LAYERS = 8
MAX_DENSE_LAYERS = 8
MAX_FILTERS = 512
MAX_DENSE_UNITS = 4096
MAX_EPOCHS = 500
MAX_BATCH_SIZE = 4096
TRAIN_IMAGES = 60_000
# Ids are 32-bit integers on PostgreSQL; larger ones cannot exist, and SQLite cannot bind them.
MAX_DATABASE_ID = 2**31 - 1

# Strict: JSON `true` and "2" are not integers, and NaN or Infinity is no number to train with.
Filters = Annotated[int, Field(strict=True, ge=1, le=MAX_FILTERS)]
KernelSize = Annotated[int, Field(strict=True, ge=1, le=28)]
# 0 or null means no pooling after that conv layer.
PoolSize = Annotated[int | None, Field(strict=True, ge=0, le=28)]
DenseUnits = Annotated[int, Field(strict=True, ge=1, le=MAX_DENSE_UNITS)]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConvLayerInput(StrictModel):
    """One conv block as sent; missing fields take the top-level filters/kernel_size/pool_size."""

    filters: Filters | None = None
    kernel_size: KernelSize | None = None
    # An explicit null means "no pooling", unlike a missing key: model_fields_set tells them apart.
    pool_size: PoolSize = None


class ConvLayer(StrictModel):
    filters: Filters
    kernel_size: KernelSize
    pool_size: int = Field(ge=0, le=28, description="0 means no pooling")


class StopRule(StrictModel):
    """Stop after the first epoch whose metric reaches the threshold (<= for losses)."""

    metric: Literal["loss", "accuracy", "val_loss", "val_accuracy"]
    threshold: FiniteFloat

    def reached(self, value: float) -> bool:
        return value <= self.threshold if self.metric.endswith("loss") else value >= self.threshold


class ExperimentSpec(StrictModel):
    """The normalized, complete spec that is stored and trained."""

    conv_layers: list[ConvLayer]
    dense_units: list[int]
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int | None
    train_samples: int | None
    validation_split: float
    device: Literal["auto", "cpu", "gpu"]
    stop: StopRule | None

    def training_steps(self) -> int:
        """Epochs × steps per epoch: the batches training will run through."""
        fitted = int((self.train_samples or TRAIN_IMAGES) * (1 - self.validation_split))
        return self.epochs * math.ceil(fitted / self.batch_size)

    def summary(self) -> ModelSummary:
        blocks = [
            ConvBlock(c.filters, c.kernel_size, c.pool_size or None) for c in self.conv_layers
        ]
        return summarize(blocks, self.dense_units, batch_size=self.batch_size)


class ExperimentCreate(StrictModel):
    """What a user POSTs to /experiments."""

    name: str | None = Field(default=None, max_length=200)
    conv_layers: (
        Annotated[int, Field(strict=True, ge=0, le=MAX_CONV_LAYERS)]
        | Annotated[list[ConvLayerInput], Field(max_length=MAX_CONV_LAYERS)]
    ) = 2
    filters: Filters = 32
    kernel_size: KernelSize = 3
    pool_size: PoolSize = 2
    dense_units: Annotated[list[DenseUnits], Field(max_length=MAX_DENSE_LAYERS)] = [128]
    epochs: Annotated[int, Field(strict=True, ge=1, le=MAX_EPOCHS)] = 5
    batch_size: Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH_SIZE)] = 32
    learning_rate: Annotated[FiniteFloat, Field(gt=0, le=1)] = 0.001
    seed: Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)] | None = None
    train_samples: Annotated[int, Field(strict=True, ge=1, le=TRAIN_IMAGES)] | None = None
    validation_split: Annotated[FiniteFloat, Field(ge=0, le=0.5)] = 0.0
    device: Literal["auto", "cpu", "gpu"] = "auto"
    stop: StopRule | None = None

    @model_validator(mode="after")
    def _check_buildable(self) -> Self:
        if self.stop and self.stop.metric.startswith("val_") and self.validation_split == 0:
            raise ValueError(
                f"stop.metric {self.stop.metric!r} needs validation data: "
                "set validation_split (e.g. 0.1) or stop on 'loss' or 'accuracy'"
            )
        if self.train_samples and int(self.train_samples * (1 - self.validation_split)) < 1:
            raise ValueError("validation_split leaves no training images: raise train_samples")
        try:
            self.to_spec().summary()
        except ArchitectureError as error:
            raise ValueError(str(error)) from None
        return self

    def to_spec(self) -> ExperimentSpec:
        """The full form: every conv layer spelled out, every default filled in."""
        if isinstance(self.conv_layers, int):
            layers = [
                ConvLayer(
                    filters=self.filters,
                    kernel_size=self.kernel_size,
                    pool_size=self.pool_size or 0,
                )
                for _ in range(self.conv_layers)
            ]
        else:
            layers = [
                ConvLayer(
                    filters=layer.filters or self.filters,
                    kernel_size=layer.kernel_size or self.kernel_size,
                    pool_size=(
                        layer.pool_size if "pool_size" in layer.model_fields_set else self.pool_size
                    )
                    or 0,
                )
                for layer in self.conv_layers
            ]
        return ExperimentSpec(
            conv_layers=layers,
            **self.model_dump(
                exclude={"name", "conv_layers", "filters", "kernel_size", "pool_size", "stop"}
            ),
            stop=self.stop,
        )


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


class TestResultRead(BaseModel):
    loss: float
    accuracy: float


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


class ExperimentRead(BaseModel):
    id: int
    name: str | None
    status: str
    spec: ExperimentSpec
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    device: str | None
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
    epochs_run: int
    seconds_per_epoch: float | None
    final_accuracy: float | None
    test_accuracy: float | None
    created_at: datetime


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
