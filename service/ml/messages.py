"""What the worker and its training child say to each other over their pipe.

Plain dataclasses, free of Keras, so the worker imports them without loading a backend. The
spec travels as the validated `ExperimentSpec`: the pipe pickles it and nothing re-validates it.
"""

from dataclasses import dataclass

from service.results import EpochResult, Reproducibility, ResumePoint, TrainingResult
from service.spec import ExperimentSpec

# Worker → child.


@dataclass(frozen=True)
class Train:
    """Train one experiment on `device` ('cpu' or 'gpu'), from `resume` when it has one."""

    spec: ExperimentSpec
    device: str
    resume: ResumePoint | None
    # From this epoch on (the last one aside), the child waits after each whole epoch for the
    # worker's Verdict: a pruning rule judges the committed epoch before the next one starts.
    verdict_from_epoch: int | None = None


@dataclass(frozen=True)
class Verdict:
    """The answer the child waits for after an epoch: stop there, or train on."""

    stop: bool


@dataclass(frozen=True)
class Exit:
    """Stop the idle child."""


# Child → worker.


@dataclass(frozen=True)
class Ready:
    """The child has started; the GPUs its Keras backend sees."""

    gpus: list[str]


@dataclass(frozen=True)
class Started:
    """Training began: the device label, the Keras backend, the steps in each epoch, and what
    it takes to train the run again."""

    device: str
    backend: str
    steps_per_epoch: int
    reproducibility: Reproducibility


@dataclass(frozen=True)
class EpochFinished:
    """One whole epoch, and the `.keras` file saved after it, to resume from."""

    result: EpochResult
    checkpoint: bytes


@dataclass(frozen=True)
class Done:
    """Training and the test evaluation finished."""

    result: TrainingResult


@dataclass(frozen=True)
class Failed:
    """The run raised; `error` is one readable line."""

    error: str


@dataclass(frozen=True)
class Interrupted:
    """The run stopped early because the worker asked it to."""


TrainerMessage = Started | EpochFinished | Done | Failed | Interrupted
