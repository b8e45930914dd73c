"""The experiment spec: what a user sends, and the normalized form that is stored and trained."""

import math
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from service.architecture import ArchitectureError, ConvBlock, ModelSummary, summarize

MAX_CONV_LAYERS = 8
MAX_DENSE_LAYERS = 8
MAX_FILTERS = 512
MAX_DENSE_UNITS = 4096
MAX_EPOCHS = 500
MAX_BATCH_SIZE = 4096
TRAIN_IMAGES = 60_000
MAX_SEED = 2**31 - 1
# What a spec that leaves a field out gets, both as it is sent and as it is stored.
DEFAULT_CONV_LAYERS = 2
DEFAULT_FILTERS = 32
DEFAULT_KERNEL_SIZE = 3
DEFAULT_POOL_SIZE = 2
DEFAULT_DENSE_UNITS = (128,)
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 0.001

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
    """The normalized, complete spec that is stored and trained.

    Every field has a default, the same as ExperimentCreate's, so that a row stored before a
    field existed still reads: it trained with what the default now says.
    """

    conv_layers: list[ConvLayer] = Field(
        default_factory=lambda: [
            ConvLayer(
                filters=DEFAULT_FILTERS,
                kernel_size=DEFAULT_KERNEL_SIZE,
                pool_size=DEFAULT_POOL_SIZE,
            )
            for _ in range(DEFAULT_CONV_LAYERS)
        ]
    )
    dense_units: list[int] = Field(default_factory=lambda: list(DEFAULT_DENSE_UNITS))
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = DEFAULT_LEARNING_RATE
    seed: int | None = None
    train_samples: int | None = None
    validation_split: float = 0.0
    device: Literal["auto", "cpu", "gpu"] = "auto"
    stop: StopRule | None = None

    # Frozen, so the summary computed once stays the summary of these fields.
    model_config = ConfigDict(extra="forbid", frozen=True)
    _summary: ModelSummary | None = PrivateAttr(default=None)

    def steps_per_epoch(self, train_count: int | None = None) -> int:
        """Batches in one epoch over `train_count` images (default: the spec's own count),
        less the validation share."""
        fitted = int(
            (train_count or self.train_samples or TRAIN_IMAGES) * (1 - self.validation_split)
        )
        return math.ceil(fitted / self.batch_size)

    def training_steps(self) -> int:
        """Epochs × steps per epoch: the batches training will run through."""
        return self.epochs * self.steps_per_epoch()

    def summary(self) -> ModelSummary:
        """Layer shapes and sizes; computed on the first call (it raises ArchitectureError for
        a network that cannot be built), then kept."""
        if self._summary is None:
            blocks = [
                ConvBlock(c.filters, c.kernel_size, c.pool_size or None) for c in self.conv_layers
            ]
            self._summary = summarize(blocks, self.dense_units, batch_size=self.batch_size)
        return self._summary


class ExperimentCreate(StrictModel):
    """What a user POSTs to /experiments."""

    # Frozen: the spec built while validating stays the spec of these fields.
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, max_length=200)
    conv_layers: (
        Annotated[int, Field(strict=True, ge=0, le=MAX_CONV_LAYERS)]
        | Annotated[list[ConvLayerInput], Field(max_length=MAX_CONV_LAYERS)]
    ) = DEFAULT_CONV_LAYERS
    filters: Filters = DEFAULT_FILTERS
    kernel_size: KernelSize = DEFAULT_KERNEL_SIZE
    pool_size: PoolSize = DEFAULT_POOL_SIZE
    dense_units: Annotated[list[DenseUnits], Field(max_length=MAX_DENSE_LAYERS)] = list(
        DEFAULT_DENSE_UNITS
    )
    epochs: Annotated[int, Field(strict=True, ge=1, le=MAX_EPOCHS)] = DEFAULT_EPOCHS
    batch_size: Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH_SIZE)] = DEFAULT_BATCH_SIZE
    learning_rate: Annotated[FiniteFloat, Field(gt=0, le=1)] = DEFAULT_LEARNING_RATE
    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)] | None = None
    train_samples: Annotated[int, Field(strict=True, ge=1, le=TRAIN_IMAGES)] | None = None
    validation_split: Annotated[FiniteFloat, Field(ge=0, le=0.5)] = 0.0
    device: Literal["auto", "cpu", "gpu"] = "auto"
    stop: StopRule | None = None

    _spec: ExperimentSpec | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_buildable(self) -> Self:
        if self.stop and self.stop.metric.startswith("val_") and self.validation_split == 0:
            raise ValueError(
                f"stop.metric {self.stop.metric!r} needs validation data: "
                "set validation_split (e.g. 0.1) or stop on 'loss' or 'accuracy'"
            )
        if self.train_samples and int(self.train_samples * (1 - self.validation_split)) < 1:
            raise ValueError("validation_split leaves no training images: raise train_samples")
        spec = self._normalize()
        try:
            spec.summary()
        except ArchitectureError as error:
            raise ValueError(str(error)) from None
        self._spec = spec
        return self

    def to_spec(self) -> ExperimentSpec:
        """The full form: every conv layer spelled out, every default filled in. Built and
        checked once, when the request is validated."""
        if self._spec is None:
            self._spec = self._normalize()
        return self._spec

    def _normalize(self) -> ExperimentSpec:
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
