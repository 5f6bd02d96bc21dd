"""The verbs as functions: compress, search, validate, profile, build, train, evaluate. Each takes what a notebook
has (a recipe object or file, a model in memory or a package, splits in memory or a dataset spec), resolves it
once, runs the work (tracked in MLflow when `mlflow` or EDGEKIT_MLFLOW_URI names a server) and returns the typed
record the CLI prints."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import tracking
from ..compress import Plan, Start
from ..compress import compress as run_compress
from ..data import BUILTIN, AVDigitsConfig, DataLike, Splits, build_avdigits, dataset_meta
from ..data.avdigits import SPLITS
from ..devices import is_main, placement, process_group
from ..errors import UsageError
from ..evaluation import EvalReport, evaluate, torch_predict
from ..fsutil import check_out_dir
from ..loading import LoadedModel, load_model
from ..profiling.fleet import load_fleet, profile_fleet
from ..profiling.local import Settings
from ..profiling.local import profile as profile_local
from ..profiling.remote import Remote, build_remote, profile_remote
from ..recipe import Recipe, dump_recipe, load_recipe, recipe_from_flags
from ..records import CompressReport, SearchRecord, Validation
from ..report import render_search, write_fleet
from ..search import Limits, recipe_point, space
from ..search import Options as SearchOptions
from ..search import search as run_search
from ..training import ProgressFn, TrainConfig
from ..validate import Options as ValidateOptions
from ..validate import attach, validate_fleet
from ..validate import validate as run_validate
from ..zoo import train as train_zoo
from .models import ModelLike, check_rebuilds

Log = Callable[[str], None]
OnTrial = Callable[[int, int | None, dict[str, Any] | None], None]
RecipeLike = Recipe | str | Path | None  # a Recipe, a recipe .yaml, or None: the default recipe


def plan(recipe: RecipeLike = None, model: ModelLike | None = None, data: DataLike | None = None) -> Plan:
    """The recipe resolved once: its data, profiles and model. `model` and `data` replace the recipe's own (a
    path, or objects in memory); an in-memory model must be rebuildable by its factory (`edgekit.api.model`)."""
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe) if recipe is not None else Recipe()
    if isinstance(model, str | Path):
        base, model = recipe_from_flags(base, model=str(model)), None
    if model is not None:
        check_rebuilds(model)
    return Plan.of(base, data, model)


def compress(
    recipe: RecipeLike = None,
    out: Path | None = None,
    *,
    model: ModelLike | None = None,
    data: DataLike | None = None,
    overwrite: bool = False,
    device: str | None = "cpu",
    amp: str | None = None,
    log: Log = lambda _: None,
    progress: ProgressFn | None = None,
    mlflow: str | None = None,
) -> CompressReport | None:
    """Run a recipe's stages into `out` (default: the recipe's `out`, else runs/compress); a rerun of the same
    recipe resumes. Training stages run on `device` (with `amp`); under torchrun every rank calls this, and the
    ranks but 0 return None."""
    where = placement(device, amp).device  # an unusable device or precision fails before any work
    p = plan(recipe, model, data)
    run_dir = Path(out or p.recipe.out or "runs/compress")
    with process_group(where):
        if not is_main():  # a torchrun rank other than 0 trains its share; rank 0 logs, writes and reports
            return run_compress(p, run_dir, overwrite, device=str(where))
        with (
            tracking.start("compress", mlflow, str(run_dir)) as run,
            tracking.Compress(run, p.recipe, run_dir) as tracked,
        ):
            report = run_compress(p, run_dir, overwrite, log, tracked.epochs(progress or (lambda *_: None)),
                                  tracked.stage, str(where))  # fmt: skip
            tracked.report(report, run_dir)
    return report


def search_space(recipe: RecipeLike = None, *, model: ModelLike | None = None, data: DataLike | None = None,
                 own_point: bool = False) -> dict[str, Any]:  # fmt: skip
    """What a search would choose from, its budgets, and (`own_point`) the recipe's own point in that space."""
    p = plan(recipe, model, data)
    start, profile = Start.load(p), p.profiles[0]
    choices = space(p.recipe, start, profile)
    return {"profile": profile.name, "space": choices, "budgets": Limits.of(p.recipe, profile, start.task).as_dict(),
            "recipe_point": recipe_point(p.recipe, choices, profile) if own_point else None}  # fmt: skip


def search(
    recipe: RecipeLike = None,
    out: Path | None = None,
    *,
    model: ModelLike | None = None,
    data: DataLike | None = None,
    options: SearchOptions = SearchOptions(),
    own_point: bool = False,
    log: Log = lambda _: None,
    on_trial: OnTrial | None = None,
    mlflow: str | None = None,
) -> SearchRecord:
    """Search per-branch pruning, distillation and the INT8 format for the Pareto front under the budgets, into
    `out` (default: the recipe's `out`, else runs/search); with `own_point`, the recipe's own configuration is
    measured first. Writes search.json and search.html; a killed search resumes."""
    placement(options.device)
    p = plan(recipe, model, data)
    start = Start.load(p)  # once: for the space and for every trial
    if own_point and (point := recipe_point(p.recipe, space(p.recipe, start, p.profiles[0]), p.profiles[0])):
        options = dataclasses.replace(options, seed_points=(point, *options.seed_points))
    run_dir = Path(out or p.recipe.out or "runs/search")
    with tracking.start("search", mlflow, str(run_dir)) as run:
        run.params({**tracking.flatten(p.recipe.model_dump(mode="json")), "trials": options.trials,
                    "time_budget_s": options.time_budget_s})  # fmt: skip
        run.text(dump_recipe(p.recipe), "recipe.yaml")
        result = run_search(p, run_dir, options, log, on_trial, start)
        result.html = str(render_search(run_dir))
        tracking.search(run, result, run_dir)
    return result


def validate(
    artifacts: Sequence[Path],
    target: str,
    baseline: Path | LoadedModel | None = None,
    *,
    measurements: Sequence[Path | dict[str, Any]] = (),
    budgets: dict[str, Any] | None = None,
    options: ValidateOptions = ValidateOptions(),
    report: Path | None = None,
    log: Log = lambda _: None,
    mlflow: str | None = None,
) -> Validation:
    """Prove artifacts against a profile's budgets (`budgets` override them): accuracy in each artifact's runtime
    on `options.data`, latency measured or estimated, size, RAM, energy. `report`: a compress run directory whose
    report.json records this validation."""
    budgets, data = budgets or {}, Splits.of(options.data)
    options = dataclasses.replace(options, data=data)  # resolved once, here
    with tracking.start("validate", mlflow, f"validate {target}") as tracked:
        tracked.params({"artifacts": ",".join(map(str, artifacts)), "data": data.name,
                        "estimate": options.estimate_only})  # fmt: skip
        result = run_validate(artifacts, target, baseline, measurements, budgets, options, log)
        if report is not None:
            attach(result, report)
        tracking.validation(tracked, result, budgets)
    return result


def validate_on_fleet(
    fleet: Path,
    artifacts: Sequence[Path],
    baseline: Path | None = None,
    *,
    budgets: dict[str, Any] | None = None,
    options: ValidateOptions = ValidateOptions(),
    out: Path | None = None,
    log: Log = lambda _: None,
    mlflow: str | None = None,
) -> dict[str, Any]:
    """Each device of the fleet file measures the artifacts built for its profile; each is validated against its
    device's profile, accuracy measured here. `out`: write fleet.json and its report.html there."""
    budgets = budgets or {}
    options = dataclasses.replace(options, data=Splits.of(options.data))  # resolved once, for every device
    with tracking.start("validate", mlflow, f"validate {fleet}") as tracked:
        tracked.params({"artifacts": ",".join(map(str, artifacts)), "fleet": str(fleet)})
        run = validate_fleet(load_fleet(fleet), artifacts, baseline, budgets, options, log)
        if out:
            run["report"] = str(write_fleet(run, out))
        tracking.validation(tracked, run, budgets)
    return run


def profile(artifact: Path, settings: Settings = Settings(), remote: Remote | None = None) -> dict[str, Any]:
    """Latency percentiles, throughput, peak RSS and slowest ops of one artifact in its runtime: here, or on
    `remote` over ssh."""
    return profile_remote(artifact, remote, settings) if remote else profile_local(artifact, settings)


def profile_on_fleet(fleet: Path, artifacts: Sequence[Path], settings: Settings = Settings(), *,
                     edgekit: str = "edgekit", ssh_config: Path | None = None, timeout: float = 600.0,
                     out: Path | None = None, log: Log = lambda _: None) -> dict[str, Any]:  # fmt: skip
    """Each device of the fleet file profiles the artifacts built for its profile, all at once."""
    run = profile_fleet(load_fleet(fleet, edgekit, ssh_config, timeout), artifacts, settings, log)
    if out:
        run["report"] = str(write_fleet(run, out))
    return run


def build_engine(bundle: Path, dla_core: int | None = None, remote: Remote | None = None) -> dict[str, Any]:
    """A TensorRT bundle's engine, built on the device that runs it: here, or on `remote` (brought back)."""
    if remote:
        return build_remote(bundle, remote, dla_core)
    from ..targets.tensorrt import build_engine as build_here  # needs TensorRT and a GPU

    return {"bundle": str(bundle), "engine": str(build_here(bundle, dla_core=dla_core))}


def train(arch: str, preset: str, data: str, out: Path, cfg: TrainConfig = TrainConfig(), *,
          overwrite: bool = False, device: str | None = "cpu", progress: ProgressFn | None = None,
          mlflow: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Train a zoo model on a built-in dataset into a model package (safetensors weights, IO spec, test scores)."""
    check_out_dir(out, overwrite)
    where = placement(device, cfg.amp)  # an unusable device or precision fails before any work
    settings = {"arch": arch, "preset": preset, "data": data, **dataclasses.asdict(cfg)}
    with tracking.start("train", mlflow, str(out)) as run:
        run.params({**settings, "device": str(where.device)})
        result = train_zoo(arch, preset, data, out, cfg, run.epochs(progress or (lambda *_: None)), str(where.device))
        tracking.train(run, settings, result, out)
    return result


def build_data(
    name: str, config: AVDigitsConfig | None = None, out: Path | None = None, overwrite: bool = False
) -> dict[str, Any]:
    if name not in BUILTIN:
        raise UsageError(f"unknown dataset '{name}'", f"built-in datasets: {', '.join(BUILTIN)}")
    cfg = config or BUILTIN[name]
    if out is not None and dataset_meta(out).get("key") != cfg.key():
        check_out_dir(out, overwrite)
    start = time.perf_counter()
    path = build_avdigits(cfg, out)
    meta = dataset_meta(path)
    splits = {s: meta["splits"][s] for s in SPLITS}
    return {
        "name": name,
        "path": str(path),
        "key": meta["key"],
        "seconds": round(time.perf_counter() - start, 2),
        "splits": splits,
        "config": meta["config"],
    }


def evaluate_model(
    model: ModelLike,
    data: DataLike,
    split: str = "test",
    weights: Path | None = None,
    io: Path | None = None,
    trust_checkpoint: bool = False,
) -> EvalReport:
    """A model's scores on a split, per modality subset."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights, io, trust_checkpoint)
    return evaluate(torch_predict(loaded.model), loaded.io, Splits.of(data)(split), task=loaded.task)
