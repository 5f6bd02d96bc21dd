"""Recipes: one YAML file says everything a compression run does (the model, the data splits, the stages in
order, the targets and the budgets). The CLI only generates recipes; a run is a function of its recipe.

Every model is frozen and rejects unknown fields, so a typo fails before any work starts, in one line naming the
field, the stage and the closest valid name. Field docstrings are the JSON Schema's descriptions, and
docs/recipe-reference.md is generated from that schema (scripts/gen_docs.py), so the two cannot drift."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

import pydantic
import yaml

from .data import is_adapter_spec
from .errors import UsageError
from .formats import Int8Format
from .hardware import alias_names, profile_names
from .schema_errors import Loc, did_you_mean, dotted, first_error, load_yaml, show
from .stages.steps import STAGES, Frozen, Part, Ratio, Stage

# The stages' union comes from their registry (stages/steps.py): a new stage class is a new recipe kind.
AnyStage = Stage
T = TypeVar("T")
RecipeStage = Annotated[Union[tuple(STAGES.values())], pydantic.Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007


def _known_target(name: str) -> str:
    shipped = profile_names()
    if Path(name).suffix in (".yaml", ".yml") or name in shipped or name in alias_names():
        return name
    hint = did_you_mean(name, [*shipped, *alias_names()])
    raise ValueError(f"unknown target {show(name)}{f', {hint}' if hint else ''} (`edgekit profiles list` shows them)")


Target = Annotated[str, pydantic.AfterValidator(_known_target)]


class DataSpec(Frozen):
    """The data adapter, and the split each step uses."""

    name: str = "avdigits"
    """A built-in dataset (`avdigits`) or a dataset directory."""
    train: str = "train"
    """Split that distillation trains on."""
    calibration: str = "train"
    """Split that quantization calibrates on."""
    val: str = "val"
    """Split that drives accuracy-aware decisions and early stopping."""
    test: str = "test"
    """Split that reports and the budget verdict measure; no decision is made on it."""


class Budgets(Frozen):
    """What the result must meet on every target; null: the target profile's own budget."""

    max_drop: pydantic.NonNegativeFloat | None = None
    """Largest accuracy drop from the teacher, in points, measured on `data.test` with the deployed artifact (a
    multilabel model's mAP points)."""
    max_metric_drop: dict[str, pydantic.NonNegativeFloat] | None = None
    """Instead of `max_drop`: one metric of the model's task and how much worse than the teacher it may get, in
    that metric's own unit (`{mae: 0.05}`, `{ccc: 0.02}`, or a package's own `metric:`); the verdict, the INT8
    search and validation all gate it. A regression model needs it to be gated at all."""
    latency_p95_ms: pydantic.PositiveFloat | None = None
    """95th-percentile latency at batch 1, in milliseconds."""
    size_mb: pydantic.PositiveFloat | None = None
    """Largest artifact size, in MB."""
    max_subset_drop: pydantic.NonNegativeFloat | dict[str, pydantic.NonNegativeFloat] | None = None
    """Largest accuracy drop from the teacher's own score on each modality subset (`image` only, `image+text`,
    ...), in points (in the metric's unit under `max_metric_drop`), measured on `data.test` with the deployed
    artifact: one limit for every subset, or per subset (`{audio: 5, image+audio: 2}`). null: the first target's,
    else 10 points for a metric in points (accuracy, mAP), so that a student that lost a modality fails by
    default; a metric in its own unit (MAE) has no default."""


Choices = Annotated[tuple[T, ...], pydantic.Field(min_length=1)]


class SearchSpace(Frozen):
    """What `edgekit search` chooses from, per trial; narrow it to search less. Every choice becomes a stage of
    the trial's recipe, so a point of the front is a recipe that `edgekit compress` reproduces."""

    prune_ratios: Choices[Ratio] = (0.0, 0.25, 0.5, 0.75)
    """Share of channels removed, chosen per branch (0: the branch keeps its width)."""
    branches: tuple[Part, ...] | None = None
    """Branches whose ratio is searched; the others keep their width. Null: every branch the model has, and
    `fusion`."""
    head_ratios: Choices[Ratio] = (0.0, 0.5)
    """Share of attention heads removed, chosen once for every attention layer (searched only where the model has
    attention)."""
    distill_epochs: Choices[pydantic.PositiveInt] = (5, 20)
    """Distillation epochs after pruning (early stopping may end sooner); a trial that prunes nothing is not
    distilled."""
    formats: tuple[Int8Format, ...] | None = None  # type: ignore[valid-type]
    """INT8 formats to choose from; null: the first target's INT8 formats. What stays float is searched per layer
    by the quantize stage's accuracy-aware loop within `budgets.max_drop`."""
    probe_epochs: pydantic.PositiveInt = 3
    """A trial whose drop on `data.val` after this many distillation epochs is further over `budgets.max_drop`
    than the most any finished trial recovered after that epoch is stopped there (pruned)."""


class Recipe(Frozen):
    """A compression run: the model, the data, the stages in order, the targets and the budgets."""

    model: str = "reference-teacher"
    """`reference-teacher` (the built-in AV-digits teacher, trained and cached on first use) or a model package
    directory."""
    data: DataSpec = DataSpec()
    """The dataset and its splits."""
    stages: tuple[RecipeStage, ...] = (STAGES["prune"](), STAGES["distill"](), STAGES["quantize"]())
    """Stages in the order they run. Prune then distill is the usual order (distillation recovers what pruning
    cost); a quantize stage comes last."""
    targets: tuple[Target, ...] = pydantic.Field(("x86",), min_length=1)
    """Hardware profiles to export for and check against: shipped names, aliases or profile .yaml paths. The first
    sizes the INT8 weights; `x86` is the x86 profile this host satisfies."""
    budgets: Budgets = Budgets()
    """Gates on the result."""
    seed: int = 0
    """Seed of every random choice: calibration sampling, and distillation unless its stage sets one."""
    out: str | None = None
    """Run directory; null: the command's default."""
    search: SearchSpace | None = None
    """What `edgekit search` may choose from (ignored by `compress`); null: the defaults of `search`."""

    @pydantic.field_validator("stages")
    @classmethod
    def _quantize_last(cls, stages: tuple[AnyStage, ...]) -> tuple[AnyStage, ...]:
        for i, stage in enumerate(stages[:-1]):
            if stage.last:
                raise ValueError(
                    f"stage {i + 1} ({stage.kind}) must be the last stage: the stages before it need a float model"
                )
        return stages


def _where(loc: Loc) -> str:
    """`stage 2 (prune): field 'x'` rather than `stages.1.prune.x`: stages counted from 1, as people count."""
    if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int):
        stage = f"stage {loc[1] + 1}" + (f" ({loc[2]})" if len(loc) > 2 else "")
        return f"{stage}: field '{dotted(loc[3:])}'" if len(loc) > 3 else stage
    return f"field '{dotted(loc)}'" if loc else "the recipe"


def _validate(data: Any, source: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except pydantic.ValidationError as e:
        err = first_error(e, Recipe)
        raise UsageError(f"{source}: {_where(err.loc)} {err.problem}", err.hint) from e


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        return f"{e.problem} at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
    return str(e).splitlines()[0]


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; any problem is one UsageError naming the field."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"recipe {path} cannot be read: {e}") from e
    except yaml.YAMLError as e:
        raise UsageError(f"recipe {path} is not valid YAML: {_yaml_problem(e)}") from e
    return _names_no_code(_validate(data, f"recipe {path}"), path)


def _names_no_code(recipe: Recipe, path: Path) -> Recipe:
    """A recipe file is data. A 'module:function' dataset would import and call whatever function it names (any
    installed one, with the recipe's split names as arguments), so only the command line (--data) may name one."""
    if is_adapter_spec(recipe.data.name):
        raise UsageError(
            f"recipe {path}: field 'data.name' {show(recipe.data.name)} names code (module:function), not data",
            "name a dataset or a directory in the recipe; pass a data adapter with --data module:function",
        )
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """YAML with every default filled in, fields in declaration order: exactly what a run will do."""
    exclude = {"search"} if recipe.search is None else set()  # a compress recipe need not mention the search
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude=exclude), sort_keys=False)


def _names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    return [s.strip() for s in items if s.strip()]


def _stages_from_kinds(current: Sequence[AnyStage], kinds: list[str]) -> list[AnyStage]:
    """Stages of `kinds` in that order. The n-th stage of a kind keeps the n-th such stage's settings in
    `current`, so choosing or reordering stages by flag does not lose the recipe's settings; others get
    defaults."""
    unknown = [k for k in kinds if k not in STAGES]
    if unknown:
        hint = did_you_mean(unknown[0], STAGES)
        raise UsageError(
            f"unknown stage kind '{unknown[0]}' in the stage list",
            f"{hint + ' ' if hint else ''}use a comma list of {', '.join(STAGES)}",
        )
    pool = {k: [s for s in current if s.kind == k] for k in STAGES}
    return [pool[k].pop(0) if pool[k] else STAGES[k]() for k in kinds]


def recipe_from_flags(
    base: Recipe | None = None,
    *,
    model: str | None = None,
    data: str | None = None,
    stages: str | Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    max_drop: float | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    amp: str | None = None,
    max_metric_drop: dict[str, float] | None = None,
) -> Recipe:
    """`base` (the default recipe if None) with the flags that were given (not None) overriding its fields:
    `data` sets data.name, `stages` is a list of kinds (or one comma list, e.g. "prune,distill,quantize"),
    `targets` a list of profiles (or a comma list), `max_drop` sets budgets.max_drop (and
    `max_metric_drop` budgets.max_metric_drop), `amp` every distill stage's amp."""
    recipe = base if base is not None else Recipe()
    fields = recipe.model_dump()
    if model is not None:
        fields["model"] = model
    if data is not None:
        fields["data"]["name"] = data
    if stages is not None:
        fields["stages"] = _stages_from_kinds(recipe.stages, _names(stages))
    if targets is not None:
        fields["targets"] = _names(targets)
    if max_drop is not None:
        fields["budgets"]["max_drop"] = max_drop
    if max_metric_drop is not None:
        fields["budgets"]["max_metric_drop"] = max_metric_drop
    if out is not None:
        fields["out"] = str(out)
    if seed is not None:
        fields["seed"] = seed
    if amp is not None:
        distills = [stage for stage in fields["stages"] if stage["kind"] == "distill"]
        if not distills:
            raise UsageError(f"--amp {amp}: the recipe has no distill stage to train in mixed precision",
                             "add a distill stage, or leave out --amp")  # fmt: skip
        for stage in distills:
            stage["amp"] = amp
    return _validate(fields, "recipe with flags")


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file, for editors (yaml-language-server) and other tools."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Recipe.model_json_schema()}


# -- docs/recipe-reference.md, generated from the schema --------------------------------------------------------

_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def _ref(p: dict[str, Any]) -> str:
    return str(p["$ref"]).rsplit("/", 1)[-1]


def _tags(items: dict[str, Any]) -> list[tuple[str, str]]:
    """(tag, model name) of a discriminated union, in declaration order."""
    by_ref = {ref: tag for tag, ref in items["discriminator"]["mapping"].items()}
    return [(by_ref[m["$ref"]], _ref(m)) for m in items["oneOf"]]


def _type(p: dict[str, Any]) -> str:
    if "$ref" in p:
        return "mapping"
    if "const" in p:
        return f"`{p['const']}`"
    if "enum" in p:
        return " or ".join(f"`{v}`" for v in p["enum"])
    if "anyOf" in p:
        return " or ".join(_type(x) for x in p["anyOf"])
    if p["type"] == "array" and "discriminator" in p["items"]:
        kinds = " or ".join(f"`{tag}`" for tag, _ in _tags(p["items"]))
        return f"list of stages ({p['items']['discriminator']['propertyName']}: {kinds})"
    if p["type"] == "array":
        return f"list of {_type(p['items'])}" + (f", at least {p['minItems']}" if "minItems" in p else "")
    if p["type"] == "object" and "patternProperties" in p:  # keys: names (a branch), pattern-checked
        return f"mapping of name to {_type(next(iter(p['patternProperties'].values())))}"
    if p["type"] == "object":
        keys = _type(p["propertyNames"]) if "propertyNames" in p else "string"
        return f"mapping of {keys} to {_type(p['additionalProperties'])}"
    bounds = ", ".join(f"{sign} {p[key]:g}" for key, sign in _BOUNDS if key in p)
    return p["type"] + (f" ({bounds})" if bounds else "")


def _default(p: dict[str, Any]) -> str:
    if "$ref" in p:
        return "see below"
    if "discriminator" in p.get("items", {}):
        return " → ".join(f"`{v['kind']}`" for v in p["default"])
    return f"`{json.dumps(p['default'])}`"


def _section(title: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"## {title}", "", " ".join(schema["description"].split()), "", "| field | type | default | meaning |"]
    lines.append("|---|---|---|---|")
    for name, p in schema["properties"].items():
        cells = [
            f"`{name}`",
            _type(p),
            _default(p) if "default" in p else "required",
            " ".join(p["description"].split()),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return [*lines, ""]


def reference_markdown() -> str:
    """docs/recipe-reference.md: every field of a recipe, its type, default and meaning, from the schema."""
    schema = recipe_schema()
    defs = schema["$defs"]
    lines = [
        "<!-- Generated by scripts/gen_docs.py from the field docstrings in edgekit/recipe.py and "
        "edgekit/stages/steps.py; edit those. -->",
        "# Recipe reference",
        "",
        "A recipe is a YAML file that says everything a compression run does; command-line flags only override "
        "its fields. `edgekit recipe check FILE` validates one and prints it with every default filled in; "
        "`edgekit recipe schema` prints its JSON Schema (for an editor's YAML support). Unknown fields are "
        "errors, named with the closest valid name. The shipped recipes are in `recipes/`.",
        "",
        *_section("The recipe (top level)", schema),
    ]
    for name, p in schema["properties"].items():
        optional = next((x for x in p.get("anyOf", []) if "$ref" in x), None)  # a section that may be null
        if "$ref" in p or optional:
            lines += _section(f"`{name}`", defs[_ref(optional or p)])
        elif "discriminator" in p.get("items", {}):
            key = p["items"]["discriminator"]["propertyName"]
            lines += [
                line for tag, model in _tags(p["items"]) for line in _section(f"`{name}`: `{key}: {tag}`", defs[model])
            ]
    lines += ["## Every default", "", "```yaml", dump_recipe(Recipe()).rstrip(), "```", ""]
    return "\n".join(lines)
