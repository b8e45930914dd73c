"""A study as CSV: one row per experiment, for a spreadsheet or pandas."""

import csv
import io
import json
from typing import Any

from service.studies import stats
from service.studies.runs import StudyRun

# Per-run measures, named as the variants' statistics name them in GET /studies/{id}.
MEASURES = {
    "seconds_per_epoch": stats.steady_seconds_per_epoch,
    "first_epoch_seconds": stats.first_epoch_seconds,
    "epochs_run": stats.epochs_run,
    "seconds_to_threshold": stats.seconds_to_threshold,
    "train_test_gap": stats.train_test_gap,
    "training_seconds": stats.training_seconds,
}
RUN_COLUMNS = (
    "experiment_id",
    "study_id",
    "variant",
    "device",
    "repeat",
    "seed",
    "status",
    "total_params",
    "flatten_size",
    "activation_bytes_per_batch",
    "test_accuracy",
    "test_loss",
)


def runs_csv(study_id: int, varied: list[str], runs: list[StudyRun]) -> str:
    """Every experiment with its varied fields as columns of their own; lists as JSON."""
    out = io.StringIO()
    writer = csv.DictWriter(out, [*RUN_COLUMNS, *varied, *MEASURES], lineterminator="\n")
    writer.writeheader()
    for run in runs:
        row: dict[str, Any] = {
            "study_id": study_id,
            **{column: getattr(run, column) for column in RUN_COLUMNS if column != "study_id"},
            **{field: _cell(run.params.get(field)) for field in varied},
            **{name: measure(run) for name, measure in MEASURES.items()},
        }
        writer.writerow(row)
    return out.getvalue()


def _cell(value: Any) -> Any:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list | dict) else value
