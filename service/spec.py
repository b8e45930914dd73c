"""The experiment spec: what a user sends, and the normalized form that is stored and trained."""

import math
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
