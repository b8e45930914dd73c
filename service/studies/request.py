"""What a user POSTs to /studies, and its expansion into one validated spec per cell."""

import itertools
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import Field, ValidationError, model_validator

from service.spec import MAX_EPOCHS, ExperimentCreate, ExperimentSpec, StrictModel

# Grid × variants × repeats × devices: one study's experiments, all queued in one transaction.
MAX_STUDY_EXPERIMENTS = 500
MAX_REPEATS = 10
MAX_VALUES_PER_FIELD = 50
MAX_VARIANTS = 100
MAX_SEED = 2**31 - 1
# The fields a cell may vary; `seed` comes from the repeat and `device` from `devices`.
VARIABLE_FIELDS = tuple(
    name for name in ExperimentCreate.model_fields if name not in {"name", "seed", "device"}
)

StudyDevice = Literal["auto", "cpu", "gpu"]
PartialSpec = Annotated[dict[str, Any], Field(max_length=len(VARIABLE_FIELDS))]


class PruneRule(StrictModel):
    """Optuna's and Ray Tune's median stopping rule: an experiment whose metric at an epoch
    falls below the median of the study's finished experiments of other variants, at that
    same epoch, stops as `pruned`."""

    rule: Literal["median"] = "median"
    metric: Literal["accuracy", "val_accuracy"] = "accuracy"
    after_epoch: Annotated[int, Field(strict=True, ge=1, le=MAX_EPOCHS)] = 1
    # Succeeded experiments of other variants the median needs before it prunes anything (Ray
    # Tune's min_samples_required).
    min_finished: Annotated[int, Field(strict=True, ge=1, le=MAX_STUDY_EXPERIMENTS)] = 3


class StudyCreate(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    base: Annotated[dict[str, Any], Field(max_length=len(VARIABLE_FIELDS) + 1)] = Field(
        default_factory=dict, description="an experiment spec, as POST /experiments takes"
    )
    grid: Annotated[
        dict[str, Annotated[list[Any], Field(min_length=1, max_length=MAX_VALUES_PER_FIELD)]],
        Field(max_length=len(VARIABLE_FIELDS)),
    ] = Field(default_factory=dict, description="field → values; every combination is a cell")
    variants: Annotated[list[PartialSpec], Field(max_length=MAX_VARIANTS)] = Field(
        default_factory=list, description="partial specs merged over base, crossed with grid"
    )
    repeats: Annotated[int, Field(strict=True, ge=1, le=MAX_REPEATS)] = 1
    seed_base: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED - MAX_REPEATS)] = 0
    devices: Annotated[list[StudyDevice], Field(min_length=1, max_length=3)] | None = None
    prune: PruneRule | None = None

    @model_validator(mode="after")
    def _check_fields(self) -> Self:
        for where, fields in (
            ("base", self.base),
            ("grid", self.grid),
            *((f"variants[{i}]", v) for i, v in enumerate(self.variants)),
        ):
            _check_variable(where, fields, allow_device=where == "base")
        if self.devices is not None and len(set(self.devices)) != len(self.devices):
            raise ValueError("devices lists a device twice")
        for index, variant in enumerate(self.variants):
            crossed = sorted(set(variant) & set(self.grid))
            if crossed:
                raise ValueError(
                    f"variants[{index}] sets {', '.join(crossed)}, which the grid varies: the "
                    "grid's values would replace the variant's; vary a field in one place"
                )
        return self

    def varied(self) -> list[str]:
        """The fields that differ between cells: the variants' keys, then the grid's."""
        names = [key for variant in self.variants for key in variant]
        return list(dict.fromkeys([*names, *self.grid]))

    def cell_count(self) -> int:
        grid = 1
        for values in self.grid.values():
            grid *= len(values)
        return grid * max(len(self.variants), 1) * self.repeats * len(self.device_list())

    def device_list(self) -> list[str]:
        return self.devices or [self.base.get("device", "auto")]


def _check_variable(where: str, fields: dict[str, Any], *, allow_device: bool) -> None:
    allowed = (*VARIABLE_FIELDS, "device") if allow_device else VARIABLE_FIELDS
    for name in fields:
        if name not in allowed:
            hint = {
                "seed": "seeds come from seed_base and repeats",
                "device": "devices go in `devices`",
                "name": "the study's name names its experiments",
            }.get(name, f"the fields are {', '.join(allowed)}")
            raise ValueError(f"{where}: {name!r} cannot be set here: {hint}")


@dataclass(frozen=True)
class Cell:
    """One experiment of a study: a variant on a device, with its repeat's seed."""

    variant: str
    params: dict[str, Any]
    device: str
    repeat: int
    spec: ExperimentSpec


class CellError(ValueError):
    """A cell whose merged spec is invalid; says which cell and why."""

    def __init__(self, params: dict[str, Any], device: str, reason: str) -> None:
        label = variant_key(params) if params else "the base spec"
        super().__init__(f"cell {label} on {device}: {reason}")


def variant_key(params: dict[str, Any]) -> str:
    """The canonical JSON of a cell's varied fields: equal cells, equal keys."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def expand(study: StudyCreate) -> list[Cell]:
    """Every cell, repeat by repeat (so each variant's first run comes early, which the
    pruning median needs), each spec validated; raises CellError on the first bad one."""
    if study.cell_count() > MAX_STUDY_EXPERIMENTS:
        raise CellError(
            {},
            "every device",
            f"the study has {study.cell_count():,} experiments (grid × variants × repeats × "
            f"devices), over the limit of {MAX_STUDY_EXPERIMENTS}",
        )
    varied = study.varied()
    merged = [_merge(study, variant, combination) for variant, combination in _combinations(study)]
    defaults = {name: field.get_default() for name, field in ExperimentCreate.model_fields.items()}
    bodies = [(body, {name: body.get(name, defaults[name]) for name in varied}) for body in merged]
    specs = {}
    for (body, params), device in itertools.product(bodies, study.device_list()):
        if (variant_key(params), device) in specs:
            raise CellError(
                params, device, "this cell appears twice: a variant or grid value is repeated"
            )
        specs[variant_key(params), device] = (params, _validate(study, body, params, device))
    return [
        Cell(
            key, params, device, repeat, spec.model_copy(update={"seed": study.seed_base + repeat})
        )
        for repeat in range(study.repeats)
        for (key, device), (params, spec) in specs.items()
    ]


def _combinations(study: StudyCreate) -> itertools.product:
    grid = [[(name, value) for value in values] for name, values in study.grid.items()]
    return itertools.product(study.variants or [{}], itertools.product(*grid))


def _merge(study: StudyCreate, variant: dict[str, Any], combination: tuple) -> dict[str, Any]:
    return {**study.base, **variant, **dict(combination)}


def _validate(
    study: StudyCreate, body: dict[str, Any], params: dict[str, Any], device: str
) -> ExperimentSpec:
    try:
        create = ExperimentCreate.model_validate({**body, "device": device, "seed": 0})
    except ValidationError as error:
        raise CellError(params, device, _first_reason(error)) from None
    spec = create.to_spec()
    if study.prune and study.prune.metric.startswith("val_") and spec.validation_split == 0:
        raise CellError(
            params,
            device,
            f"prune.metric {study.prune.metric!r} needs validation data: set "
            "validation_split (e.g. 0.1) or prune on 'accuracy'",
        )
    return spec


def _first_reason(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]
