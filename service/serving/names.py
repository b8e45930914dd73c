"""Model names, as the serving protocols (OIP v2, TensorFlow Serving) address models.

`experiment-{id}` is one experiment's model; `latest` is the most recently succeeded one;
`study-{id}-best` is the best run of a study's best variant. What a name resolves to is looked
up in the database by the resolver (service/serving/resolver.py).
"""

import re
from dataclasses import dataclass

from service.schemas import MAX_DATABASE_ID
from service.serving.resolver import StudyBest, Target

# A trained model is written once, when its run succeeds, and never replaced: every model has
# this one version. A version that grows would come with a way to replace a model.
MODEL_VERSION = "1"
LATEST = "latest"

_EXPERIMENT = re.compile(r"experiment-([1-9][0-9]{0,9})")
_STUDY_BEST = re.compile(r"study-([1-9][0-9]{0,9})-best")
NAMING = f"`experiment-<id>`, `{LATEST}` or `study-<id>-best`"


class UnknownModelError(LookupError):
    """A name, or a version, that no model has; the message says which ones exist."""


@dataclass(frozen=True)
class ModelName:
    """A parsed model name: an experiment, a study's best run, or (neither) the latest."""

    text: str
    experiment_id: int | None = None
    study_id: int | None = None

    @property
    def target(self) -> Target:
        """What the model server is asked to serve for this name."""
        if self.study_id is not None:
            return StudyBest(self.study_id)
        return self.experiment_id


def _database_id(text: str) -> int | None:
    number = int(text)
    return number if number <= MAX_DATABASE_ID else None


def parse_model_name(text: str) -> ModelName:
    """The model `text` names; UnknownModelError when it follows none of the three forms."""
    if text == LATEST:
        return ModelName(text)
    if (match := _EXPERIMENT.fullmatch(text)) and (number := _database_id(match[1])):
        return ModelName(text, experiment_id=number)
    if (match := _STUDY_BEST.fullmatch(text)) and (number := _database_id(match[1])):
        return ModelName(text, study_id=number)
    shown = text if len(text) <= 100 else text[:100] + "…"
    raise UnknownModelError(f"there is no model {shown!r}: models are named {NAMING}")


def check_version(name: ModelName, version: str | None) -> None:
    """Refuse a version the model does not have (None: the request names no version)."""
    if version is None:
        return
    # Read as a number, as TensorFlow Serving does: "01" is version 1.
    number = version.isascii() and version.isdigit() and len(version) < 20
    if not (number and int(version) == int(MODEL_VERSION)):
        shown = version if len(version) <= 20 else version[:20] + "…"
        raise UnknownModelError(
            f"model {name.text!r} has no version {shown!r}: its only version is {MODEL_VERSION}"
        )
