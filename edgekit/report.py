"""report.html, rendered from a run directory's report.json (the canonical record) and the sensitivity tables
beside it, through templates/report.html.j2 with autoescaping: the recipe, the lineage from teacher to artifacts
with hashes, the validation tables, the per-branch sensitivity, an accuracy-vs-latency Pareto plot and
per-operator charts for the slowest artifacts, host and versions. The page is self-contained: inline CSS and SVG
(glyphs drawn as paths), no requests."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import jinja2
import yaml
from markupsafe import Markup

from .errors import UsageError
from .fsutil import write_json, write_text
from .records import CompressReport, SearchRecord, Validation, ValidationRow, load_record

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1d2330;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #d6dae3}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #d6dae3;padding:.25em .6em;text-align:right}
th{background:#f2f4f8}td:first-child,th:first-child{text-align:left}code,pre{background:#f5f6f8;font-size:12px}
pre{padding:.8em;overflow:auto}.pass{color:#14772d}.fail{color:#b3261e}.lineage li{margin:.2em 0}
.estimated,.proxy,.unverified{font-style:italic;color:#6a4c00}.error{color:#b3261e;font-weight:bold}figure{margin:1em 0}
"""
STATUS = {"pass": "pass", "fail": "fail: a budget", "unverified": "unverified: only the device decides",
          "error": "error: no artifact or run"}  # fmt: skip


def num(value: Any, spec: str) -> str:
    return "-" if value is None or isinstance(value, jinja2.Undefined) else format(value, spec)


def ci(interval: Any, spec: str) -> str:
    return "-" if not interval or isinstance(interval, jinja2.Undefined) else "[{}, {}]".format(
        *(format(x, spec) for x in interval))  # fmt: skip


def where(row: ValidationRow, profile: str) -> str:
    """Where a row's latency was measured: the profile's device, or another host (a proxy)."""
    return profile if row.latency_source == "measured" else f"{row.measured_on} (a proxy for {profile})"


def notes(row: ValidationRow) -> list[str]:
    """A validation row's unverified and open checks, and what its intervals say of the budgets."""
    out = [f"{c.budget} unverified: {c.why or ''}" for c in row.checks if c.status == "unverified"]
    out += [f"{c.budget}: {c.note}" for c in row.checks if c.note is not None]
    out += [f"not checked here: {b}" for b in row.unchecked]
    subsets = row.subsets or {}
    out += [f"{k} only {num(v.get('drop'), '+.2f')} pts {ci(v.get('drop_ci'), '+.2f')}" for k, v in subsets.items()]
    return out


def pyplot() -> Any:
    """matplotlib without a display, drawing text as paths so the SVG needs no font."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "path"
    import matplotlib.pyplot as plt

    return plt


def svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline SVG needs neither


def pareto_svg(validations: list[Validation], baseline: float | None, metric: str = "accuracy",
               higher_is_better: bool = True) -> str:  # fmt: skip
    """The gated metric (accuracy, MAE, ...) vs p50 latency for every validated artifact; the frontier joins the
    points not beaten on both (faster, and better in the metric's direction)."""
    fig, ax = pyplot().subplots(figsize=(7.5, 4.2))
    scale = 100 if metric == "accuracy" else 1
    points = []
    for v in validations:
        for row in v.rows:
            if row.score(metric) is None or row.p50_ms is None:
                continue
            source = row.latency_source
            est = source != "measured"  # estimated, or measured on another host (a proxy)
            xy = (row.p50_ms, scale * row.score(metric))
            ax.scatter(*xy, marker="o" if not est else "^", facecolors="none" if est else None, label=None)
            label = f"{row.format}/{row.precision} ({v.profile}{f', {source}' if est else ''})"
            ax.annotate(label, xy, fontsize=7, xytext=(4, 3), textcoords="offset points")
            points.append(xy)
    sign = 1 if higher_is_better else -1
    frontier = [p for p in points if not any(q[0] <= p[0] and sign * q[1] >= sign * p[1] and q != p for q in points)]
    if len(frontier) > 1:
        xs, ys = zip(*sorted(frontier), strict=True)
        ax.step(xs, ys, where="post", color="#888", lw=1, label="Pareto frontier")
    if baseline is not None:
        ax.axhline(scale * baseline, color="#14772d", ls="--", lw=1, label=f"FP32 baseline {metric}")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1, ms (log; ▲ = estimated or proxy, not the device)")
    better = "higher" if higher_is_better else "lower"
    ax.set_ylabel("test accuracy, %" if metric == "accuracy" else f"test {metric} ({better} is better)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    return svg(fig)


def ops_svg(name: str, ops: dict[str, Any]) -> str:
    top = ops["by_op_type"][:8][::-1]
    fig, ax = pyplot().subplots(figsize=(7.5, 0.35 * len(top) + 1))
    ax.barh([o["op"] for o in top], [o["ms"] for o in top], color="#4f6bd8")
    ax.set_xlabel(f"ms per inference ({ops['runtime']} profiler)")
    ax.set_title(name, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    return svg(fig)


def render(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    path = run_dir / "report.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} has no report.json", "pass a run directory `edgekit compress` wrote")
    report = load_record(path, CompressReport, "compress report")
    metric, baseline, higher = report.metric, report.baseline.get(report.metric), report.higher_is_better
    validations = report.validation
    measured = [(r, v.profile) for v in validations for r in v.rows if r.ops]
    slowest = sorted(measured, key=lambda x: -(x[0].p50_ms or 0))[:3]
    host = next((v.host for v in validations), None)
    tables = [*sorted(run_dir.glob("stages/*/sensitivity.json")), *run_dir.glob("sensitivity.json")]
    sensitivities = [(p.relative_to(run_dir), json.loads(p.read_text())) for p in tables]
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("edgekit", "templates"), autoescape=True, keep_trailing_newline=True
    )
    env.filters["basename"] = lambda p: Path(str(p)).name
    page = env.get_template("report.html.j2").render(
        css=CSS,
        run_name=run_dir.resolve().name,
        report=report,
        validations=validations,
        status=STATUS,
        num=num,
        ci=ci,
        notes=notes,
        sensitivities=sensitivities,
        # Charts are SVG that matplotlib drew, its text as paths: the only markup not escaped.
        pareto=Markup(pareto_svg(validations, baseline, metric, higher)) if validations else None,
        op_charts=[Markup(ops_svg(f"{Path(r.artifact).name} on {where(r, p)}", r.ops or {})) for r, p in slowest],
        recipe_yaml=yaml.safe_dump(report.recipe, sort_keys=False),
        host_yaml=yaml.safe_dump({"host": host, "versions": report.versions}, sort_keys=False),
    )
    out = run_dir / "report.html"
    write_text(out, page)
    return out


def search_svg(result: SearchRecord) -> str:
    """How much worse the gated metric is on val (accuracy: in points) vs p95 latency for every trial with a result
    (marker area: size), the Pareto front of the feasible ones in colour (not joined: with size as a third objective
    a point can be on the front though another beats it on these two), the chosen point and the recipe's own point
    marked."""
    fig, ax = pyplot().subplots(figsize=(7.5, 4.2))
    done = [(t, t.values) for t in result.trials if t.values]
    on_front = {p.number for p in result.front}
    for group, color, label in ((False, "#9aa3b5", "trial"), (True, "#4f6bd8", "Pareto front (feasible)")):
        pts = [v for t, v in done if (t.number in on_front) == group]
        if pts:
            xs, ys = [v["latency_p95_ms"] for v in pts], [v["val_drop"] for v in pts]
            ax.scatter(xs, ys, s=[20 + 30 * v["size_mb"] for v in pts], color=color, alpha=0.7, label=label)
    for t, v in done:
        if mark := "chosen" if t.number == result.chosen else t.origin:
            xy = (v["latency_p95_ms"], v["val_drop"])
            ax.annotate(f"#{t.number} {mark}", xy, fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axhline(result.budgets["max_drop"], color="#b3261e", ls="--", lw=1, label="max_drop")
    ax.set_xlabel(f"p95 latency at batch 1, ms ({result.latency_source})")
    metric, unit = result.metric, result.unit
    ax.set_ylabel(f"{metric} drop on val, {unit}" if unit == "points" else f"{metric} worse on val, {metric}'s unit")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return svg(fig)


def render_search(search_dir: Path) -> Path:
    """search.html beside search.json: the front over all trials, and every trial's row."""
    path = Path(search_dir) / "search.json"
    if not path.is_file():
        raise UsageError(f"{search_dir} has no search.json", "pass a directory `edgekit search` wrote")
    result = load_record(path, SearchRecord, "search result")
    charts = importlib.util.find_spec("matplotlib") is not None
    env = jinja2.Environment(loader=jinja2.PackageLoader("edgekit", "templates"), autoescape=True)
    page = env.get_template("search.html.j2").render(
        css=CSS, result=result, num=num, front={p.number: p for p in result.front},
        # The chart needs the report extra (matplotlib); the tables do not.
        plot=Markup(search_svg(result)) if charts and any(t.values for t in result.trials) else None,
    )  # fmt: skip
    out = Path(search_dir) / "search.html"
    write_text(out, page)
    return out


def render_fleet(out_dir: Path) -> Path:
    """report.html beside a fleet run's fleet.json: every device, and a row per device and artifact."""
    path = Path(out_dir) / "fleet.json"
    if not path.is_file():
        raise UsageError(f"{out_dir} has no fleet.json", "pass a directory `edgekit profile --fleet --out` wrote")
    try:
        run = json.loads(path.read_text())
        _ = run["rows"], run["devices"]
    except (ValueError, RecursionError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is malformed ({type(e).__name__}: {e})", "rerun the fleet") from e
    env = jinja2.Environment(loader=jinja2.PackageLoader("edgekit", "templates"), autoescape=True)
    env.filters["basename"] = lambda p: Path(str(p)).name
    page = env.get_template("fleet.html.j2").render(css=CSS, run=run, num=num)
    out = Path(out_dir) / "report.html"
    write_text(out, page)
    return out


def write_fleet(run: dict[str, Any], out_dir: Path) -> Path:
    """A fleet run's fleet.json (canonical) and the report.html rendered from it, each written atomically."""
    write_json(Path(out_dir) / "fleet.json", run)
    return render_fleet(out_dir)
