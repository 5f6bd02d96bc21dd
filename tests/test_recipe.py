"""Recipes: the shipped ones validate and round-trip, every mistake is one line naming the field (and stage) with
the closest valid name, flags override only what they name, and the schema and its generated reference agree."""

import json
import typing
from pathlib import Path

import pydantic
import pytest
import yaml

from edgekit.data.calibration import DEFAULT_SAMPLES
from edgekit.errors import UsageError
from edgekit.models import MODALITY_INPUTS, PRESETS
from edgekit.recipe import (
    Recipe,
    dump_recipe,
    load_recipe,
    recipe_from_flags,
    recipe_schema,
    reference_markdown,
)
from edgekit.stages.distill import DistillConfig
from edgekit.stages.prune import IMPORTANCES, PruneConfig, check_config
from edgekit.stages.steps import PART_ORDER, STAGES, DistillStage, PruneStage, QuantizeStage

from .conftest import ROOT, run_cli

RECIPES = ROOT / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yaml"))


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error(tmp_path: Path, data: object) -> str:
    with pytest.raises(UsageError) as e:
        load_recipe(write(tmp_path, data))
    assert "\n" not in str(e.value)
    return str(e.value)


# -- shipped recipes ----------------------------------------------------------------------------------------------


def test_every_recipe_is_shipped():
    assert {p.stem for p in SHIPPED} >= {"avdigits-x86", "avdigits-jetson-orin-nano", "avdigits-mobile", "ptq-only"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_recipe_validates_and_round_trips(tmp_path, path):
    assert path.read_text().startswith("# "), "each recipe starts with a comment saying what it does"
    recipe = load_recipe(path)
    text = dump_recipe(recipe)
    again = load_recipe(write(tmp_path, yaml.safe_load(text)))
    assert again == recipe and dump_recipe(again) == text


@pytest.mark.parametrize(
    ("name", "kinds", "backend", "target", "max_drop"),
    [
        ("avdigits-x86", ["prune", "distill", "quantize"], "openvino", "x86", 1.0),
        ("avdigits-jetson-orin-nano", ["prune", "distill", "quantize"], "tensorrt", "jetson-orin-nano-8gb", None),
        ("avdigits-mobile", ["prune", "distill", "quantize"], "executorch", "android-arm64", None),
        ("ptq-only", ["quantize"], "auto", "x86", 0.5),
    ],
)
def test_shipped_recipe_says_what_its_name_says(name, kinds, backend, target, max_drop):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert [s.kind for s in recipe.stages] == kinds
    quantize = recipe.stages[-1]
    assert isinstance(quantize, QuantizeStage) and quantize.backend == backend and quantize.accuracy_aware
    assert recipe.targets == (target,) and recipe.budgets.max_drop == max_drop
    if "distill" in kinds:
        assert next(s for s in recipe.stages if isinstance(s, DistillStage)).student == "pruned"


def test_default_recipe_round_trips_and_prunes_before_distilling():
    recipe = Recipe()
    assert [s.kind for s in recipe.stages] == ["prune", "distill", "quantize"]
    assert Recipe.model_validate(yaml.safe_load(dump_recipe(recipe))) == recipe
    # declaration order; a recipe without a search section (compress's) does not mention it
    assert list(yaml.safe_load(dump_recipe(recipe))) == [f for f in Recipe.model_fields if f != "search"]
    searched = Recipe.model_validate({"search": {"prune_ratios": [0.5]}})
    assert list(yaml.safe_load(dump_recipe(searched))) == list(Recipe.model_fields)


def test_recipes_are_frozen():
    with pytest.raises(pydantic.ValidationError):
        Recipe().seed = 3  # type: ignore[misc]


# -- the stages' defaults and settings are the library's ---------------------------------------------------------


def test_stage_defaults_are_the_library_defaults():
    assert DistillStage().to_config(recipe_seed=0) == DistillConfig()
    assert DistillStage(seed=5).to_config(recipe_seed=1).seed == 5
    assert DistillStage().to_config(recipe_seed=7).seed == 7  # null: the recipe's seed
    assert QuantizeStage().samples == DEFAULT_SAMPLES
    assert PruneStage(pruning_ratio=None).to_config() == PruneConfig()
    assert PruneStage(branch_ratios={"text": 0.5, "image": 0.25}).to_config() == PruneConfig(
        ratios={"image": 0.25, "text": 0.5}
    )


def test_literal_choices_follow_the_library():
    assert set(PART_ORDER) == set(MODALITY_INPUTS)
    assert set(typing.get_args(PruneStage.model_fields["importance"].annotation)) == set(IMPORTANCES)
    assert set(typing.get_args(DistillStage.model_fields["student"].annotation)) == {"pruned", *PRESETS}


def test_a_bare_prune_stage_prunes_the_documented_default():
    stage = PruneStage.model_validate({"kind": "prune"})
    assert stage.pruning_ratio == 0.3 and "0.3" in str(PruneStage.model_fields["pruning_ratio"].description)
    assert PruneStage.model_validate({"branch_ratios": {"audio": 0.5}}).pruning_ratio is None
    # The order of branch_ratios is fixed, so the dumped text does not depend on how it was written.
    assert list(PruneStage(branch_ratios={"fusion": 0.1, "audio": 0.2}).branch_ratios) == ["audio", "fusion"]


# -- one-line errors ------------------------------------------------------------------------------------------------


def test_typo_names_field_stage_and_closest_name(tmp_path):
    message = error(tmp_path, {"stages": [{"kind": "quantize"}, {"kind": "prune", "pruning_ratoi": 0.2}]})
    for part in ("pruning_ratoi", "stage 2 (prune)", "did you mean 'pruning_ratio'", str(tmp_path / "r.yaml")):
        assert part in message


def test_top_level_typo(tmp_path):
    assert "field 'budget' is not a known field (did you mean 'budgets'?)" in error(tmp_path, {"budget": {}})


def test_unknown_stage_kind_lists_the_valid_ones(tmp_path):
    message = error(tmp_path, {"stages": [{"kind": "prune"}, {"kind": "compress"}]})
    assert "stage 2 has unknown kind 'compress'" in message
    assert all(f"'{kind}'" in message for kind in STAGES)
    assert "did you mean 'quantize'" in error(tmp_path, {"stages": [{"kind": "quantise"}]})


def test_ratio_outside_zero_to_one_names_the_branch(tmp_path):
    message = error(tmp_path, {"stages": [{"kind": "prune", "branch_ratios": {"image": 0.2, "audio": 1.0}}]})
    assert "stage 1 (prune): field 'branch_ratios.audio'" in message and "less than 1" in message
    # Branch names are the model's (a package may name its own): compress checks them against the model.
    with pytest.raises(UsageError, match=r"no part named imgae to prune \(did you mean 'image'\? the model's parts"):
        check_config(["image", "text", "audio", "fusion"], PruneStage(branch_ratios={"imgae": 0.2}).to_config())
    assert "branch_ratios" in error(tmp_path, {"stages": [{"kind": "prune", "branch_ratios": {"no-name": 0.2}}]})
    assert "field 'head_ratio' should be greater than or equal to 0" in error(
        tmp_path, {"stages": [{"kind": "prune", "head_ratio": -0.1}]}
    )


def test_global_and_branch_ratios_exclude_each_other(tmp_path):
    stage = {"kind": "prune", "pruning_ratio": 0.2, "branch_ratios": {"image": 0.2}}
    assert "pruning_ratio and branch_ratios exclude each other" in error(tmp_path, {"stages": [stage]})


def test_wrong_type_names_field_and_expected_type(tmp_path):
    message = error(tmp_path, {"stages": [{"kind": "quantize", "samples": "many"}]})
    assert "stage 1 (quantize): field 'samples' should be an integer, got 'many'" in message
    assert "field 'data' should be a mapping" in error(tmp_path, {"data": "avdigits"})
    backend = error(tmp_path, {"stages": [{"kind": "quantize", "backend": "openvno"}]})
    assert "field 'backend' has unknown value 'openvno'" in backend and "did you mean 'openvino'" in backend


def test_quantize_comes_last(tmp_path):
    message = error(tmp_path, {"stages": [{"kind": "quantize"}, {"kind": "distill"}]})
    assert "stage 1 (quantize) must be the last stage" in message


def test_unknown_target_suggests_a_profile(tmp_path):
    assert "did you mean 'x86-avx2'" in error(tmp_path, {"targets": ["x86-avx3"]})
    assert load_recipe(write(tmp_path, {"targets": ["jetson", "my-board.yaml"]})).targets == ("jetson", "my-board.yaml")


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(UsageError, match="cannot be read"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - kind: prune\n   round_to: 8\n")
    with pytest.raises(UsageError, match=r"is not valid YAML: .* at line 3"):
        load_recipe(bad)
    assert "the recipe should be a mapping, got null" in error(tmp_path, None)


# -- flags override the recipe ----------------------------------------------------------------------------------


def test_flags_change_only_what_they_name():
    base = load_recipe(RECIPES / "ptq-only.yaml")
    changed = recipe_from_flags(base, model="x/", out="runs/x")
    assert changed.model_dump() == {**base.model_dump(), "model": "x/", "out": "runs/x"}
    assert recipe_from_flags(base) == base
    assert recipe_from_flags(None) == Recipe()


def test_every_flag_reaches_its_field():
    r = recipe_from_flags(None, data="my-data/", targets="jetson, android", max_drop=0.25, seed=3)
    assert r.data.name == "my-data/" and r.data.val == "val"
    assert r.targets == ("jetson", "android") and r.budgets.max_drop == 0.25 and r.seed == 3
    assert recipe_from_flags(None, targets=["x86"]).targets == ("x86",)


def test_stage_list_flag_orders_stages_and_keeps_their_settings():
    base = load_recipe(RECIPES / "avdigits-x86.yaml")
    r = recipe_from_flags(base, stages="distill,prune,quantize")
    assert [s.kind for s in r.stages] == ["distill", "prune", "quantize"]
    assert r.stages[2] == base.stages[2]  # the recipe's openvino quantize stage, not a default one
    r = recipe_from_flags(None, stages=["quantize"])
    assert r.stages == (QuantizeStage(),)


def test_stage_list_flag_rejects_unknown_kinds_and_bad_orders():
    with pytest.raises(UsageError, match=r"unknown stage kind 'prnue'.*did you mean 'prune'.*prune, distill, quantize"):
        recipe_from_flags(None, stages="prnue,quantize")
    with pytest.raises(UsageError, match="must be the last stage"):
        recipe_from_flags(None, stages="quantize,prune")
    with pytest.raises(UsageError, match=r"budgets\.max_drop"):
        recipe_from_flags(None, max_drop=-1)


# -- the schema and its generated reference ----------------------------------------------------------------------


def test_schema_is_json_with_a_kind_discriminator():
    schema = json.loads(json.dumps(recipe_schema()))
    items = schema["properties"]["stages"]["items"]
    assert items["discriminator"]["propertyName"] == "kind"
    assert set(items["discriminator"]["mapping"]) == set(STAGES) == {"prune", "distill", "quantize"}
    assert schema["additionalProperties"] is False
    for model in [schema, *schema["$defs"].values()]:
        assert model["additionalProperties"] is False and model["description"]
        for name, prop in model["properties"].items():
            assert prop.get("description"), f"{model['title']}.{name} has no description"


def test_committed_reference_is_the_generated_one():
    committed = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert committed == reference_markdown(), "docs/recipe-reference.md is stale: run scripts/gen_docs.py"


# -- the CLI -----------------------------------------------------------------------------------------------------------


def test_cli_check_prints_the_resolved_recipe():
    path = RECIPES / "avdigits-x86.yaml"
    r = run_cli("recipe", "check", str(path))
    assert r.code == 0, r.stderr
    assert r.stdout == dump_recipe(load_recipe(path))


def test_cli_check_fails_in_one_line_with_exit_2(tmp_path):
    r = run_cli("recipe", "check", str(write(tmp_path, {"stages": [{"kind": "prune", "pruning_ratoi": 0.2}]})))
    assert r.code == 2 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert "stage 1 (prune): field 'pruning_ratoi'" in r.stderr and "did you mean 'pruning_ratio'" in r.stderr


def test_cli_schema_writes_the_schema(tmp_path):
    path = tmp_path / "schema" / "recipe.schema.json"
    r = run_cli("recipe", "schema", "--out", str(path))
    assert r.code == 0, r.stderr
    assert json.loads(path.read_text()) == json.loads(json.dumps(recipe_schema()))
