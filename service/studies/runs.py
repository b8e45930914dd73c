"""One study experiment as the comparison reads it: plain data, no ORM, no HTTP."""

from dataclasses import dataclass
from typing import Any

from service.results import EpochResult


@dataclass(frozen=True)
class StudyRun:
    """An experiment of a study, with what its row and its epoch rows hold."""

    experiment_id: int
    # The cell's varied fields as canonical JSON (sorted keys): the variant's identity.
    variant: str
    # The varied fields and their values in this cell, e.g. {"filters": 32, "conv_layers": 2}.
    params: dict[str, Any]
    # The device the cell asked for: "auto", "cpu" or "gpu".
    device: str
    repeat: int
    seed: int
    status: str
    total_params: int
    flatten_size: int
    activation_bytes_per_batch: int
    test_accuracy: float | None
    test_loss: float | None
    epochs: tuple[EpochResult, ...]
    # The spec's stop rule, if any: the metric's name and the threshold that ends training.
    stop_metric: str | None = None
    stop_threshold: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"
