"""The worker process: claim an experiment, have the training child run it, record it.

Never imports Keras: the training child (`service.ml.child`) does.
"""

from service.worker.claimed_run import ClaimedRun, DatabaseLostError
from service.worker.loop import TrainingWorker, resolve_device
from service.worker.trainer_process import TrainerCrashedError, TrainerProcess

__all__ = [
    "ClaimedRun",
    "DatabaseLostError",
    "TrainerCrashedError",
    "TrainerProcess",
    "TrainingWorker",
    "resolve_device",
]
