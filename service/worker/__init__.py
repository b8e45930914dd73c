"""The worker process: claim an experiment, have the training child run it, record it.

Never imports Keras: the training child (`service.ml.child`) does.
"""

from service.worker.claimed_run import ClaimedRun, DatabaseLostError
from service.worker.loop import TrainingWorker, resolve_device
from service.worker.trainer_process import TrainerCrashedError, TrainerProcess

# The old name, while tests/test_predict.py (owned elsewhere) still imports it.
Worker = TrainingWorker

__all__ = [
    "ClaimedRun",
    "DatabaseLostError",
    "TrainerCrashedError",
    "TrainerProcess",
    "TrainingWorker",
    "Worker",
    "resolve_device",
]
