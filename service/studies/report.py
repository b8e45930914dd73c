"""What GET /studies answers: progress first, then the comparison of the finished runs."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.models import Study
from service.studies.comparison import Effect, Speedup, VariantSummary, compare
from service.studies.runs import StudyRun
from service.studies.store import study_status


class StudyListItem(BaseModel):
    id: int
    name: str
    status: str = Field(description="queued, running, finished or cancelled")
    counts: dict[str, int] = Field(description="the study's experiments per status")
    experiments: int
    varied: list[str]
    created_at: datetime


class StudyRead(StudyListItem):
    request: dict[str, Any] = Field(description="the study as it was POSTed, defaults filled in")
    prune: dict[str, Any] | None
    cancel_requested: bool
    variants: list[VariantSummary] = Field(
        description="per variant and device: sizes, and mean, std and 95% t-interval over the "
        "succeeded repeats of each measure"
    )
    pareto: dict[str, list[dict[str, Any]]] = Field(
        description="the variants no other beats on both test accuracy and cost (parameters, "
        "training seconds), cheapest first"
    )
    effects: list[Effect] = Field(
        description="per varied field, each pair of neighbouring values compared within "
        "otherwise equal cells: accuracy in points and seconds per epoch, with 95% CIs"
    )
    speedup: list[Speedup] = Field(description="GPU over CPU per variant, when both ran")


class StudyPage(BaseModel):
    items: list[StudyListItem]
    total: int
    limit: int
    offset: int


def study_list_item(study: Study, counts: dict[str, int]) -> StudyListItem:
    return StudyListItem(
        id=study.id,
        name=study.name,
        status=study_status(study, counts),
        counts=counts,
        experiments=sum(counts.values()),
        varied=study.varied,
        created_at=study.created_at,
    )


def study_read(study: Study, counts: dict[str, int], runs: list[StudyRun]) -> StudyRead:
    comparison = compare(runs, study.varied)
    return StudyRead(
        **study_list_item(study, counts).model_dump(),
        request=study.request,
        prune=study.prune,
        cancel_requested=study.cancel_requested_at is not None,
        variants=comparison.variants,
        pareto=comparison.pareto,
        effects=comparison.effects,
        speedup=comparison.speedup,
    )
