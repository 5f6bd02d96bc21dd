"""report.html, rendered from a run directory's report.json (the canonical record) and the sensitivity tables
beside it: the recipe, the lineage from teacher to artifacts with hashes, the validation tables, the
per-branch sensitivity, an accuracy-vs-latency Pareto plot and per-operator charts for the slowest artifacts,
host and versions. The page is self-contained: inline CSS and SVG (glyphs drawn as paths), no requests."""

from __future__ import annotations

import html
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError
from .fsutil import write_text

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1d2330;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #d6dae3}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #d6dae3;padding:.25em .6em;text-align:right}
th{background:#f2f4f8}td:first-child,th:first-child{text-align:left}code,pre{background:#f5f6f8;font-size:12px}
pre{padding:.8em;overflow:auto}.pass{color:#14772d}.fail{color:#b3261e}.lineage li{margin:.2em 0}
.estimated{font-style:italic;color:#6a4c00}.error{color:#b3261e;font-weight:bold}figure{margin:1em 0}
"""
STATUS = {"pass": "pass", "fail": "fail: a budget", "error": "error: no artifact or run"}


def esc(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


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


def pareto_svg(validations: list[dict[str, Any]], baseline: float | None) -> str:
    """Accuracy vs p50 latency for every validated artifact; the frontier joins the points not beaten on both."""
    fig, ax = pyplot().subplots(figsize=(7.5, 4.2))
    points = []
    for v in validations:
        for row in v["rows"]:
            if row.get("accuracy") is None or row.get("p50_ms") is None:
                continue
            est = row.get("latency_source") == "estimated"
            ax.scatter(row["p50_ms"], 100 * row["accuracy"], marker="o" if not est else "^",
                       facecolors="none" if est else None, label=None)  # fmt: skip
            label = f"{row['format']}/{row['precision']} ({v['profile']}{', est.' if est else ''})"
            xy = (row["p50_ms"], 100 * row["accuracy"])
            ax.annotate(label, xy, fontsize=7, xytext=(4, 3), textcoords="offset points")
            points.append((row["p50_ms"], 100 * row["accuracy"]))
    frontier = [p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)]
    if len(frontier) > 1:
        xs, ys = zip(*sorted(frontier), strict=True)
        ax.step(xs, ys, where="post", color="#888", lw=1, label="Pareto frontier")
    if baseline is not None:
        ax.axhline(100 * baseline, color="#14772d", ls="--", lw=1, label="FP32 baseline accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1, ms (log; ▲ = estimated)")
    ax.set_ylabel("test accuracy, %")
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


def lineage(report: dict[str, Any]) -> str:
    base = report["baseline"]
    items = [f"<li><b>teacher</b> <code>{esc(report['model'])}</code>: {base['params']:,} params, "
             f"{num(base.get('macs'), ',')} MACs, accuracy {base['accuracy']:.4f}</li>"]  # fmt: skip
    for s in report["stages"]:
        items.append(f"<li>→ <b>{esc(s['name'])}</b>: {s['params']:,} params, {num(s.get('macs'), ',')} MACs, "
                     f"accuracy {s['accuracy']:.4f} ({s['accuracy_drop']:+.2f} pts), {s['seconds']} s"
                     f"{' (cached)' if s.get('cached') else ''} <code>{esc(Path(s['path']).name)}</code>"
                     "</li>")  # fmt: skip
    for a in report["artifacts"]:
        items.append(f"<li>→ <b>artifact</b> {esc(a['format'])}/{esc(a['precision'])}: {a['size_mb']:.2f} MB, "
                     f"accuracy {a['accuracy']:.4f}, sha256 <code>{esc(a['sha256'][:16])}…</code></li>")  # fmt: skip
    return f'<ul class="lineage">{"".join(items)}</ul>'


def validation_html(v: dict[str, Any]) -> str:
    rows = []
    for r in v["rows"]:
        source = r.get("latency_source") or "-"
        rows.append([
            esc(Path(r["artifact"]).name), esc(r.get("format")), esc(r.get("precision")),
            f'<span class="{r["status"]}">{STATUS[r["status"]]}</span>', num(r.get("size_mb"), ".2f"),
            num(r.get("accuracy"), ".4f"), num(r.get("accuracy_drop"), "+.2f"), num(r.get("p50_ms"), ".3f"),
            num(r.get("p95_ms"), ".3f"), f'<span class="{esc(source)}">{esc(source)}</span>',
            num(r.get("peak_ram_mb"), ".0f"), esc(r.get("error") or ", ".join(r.get("unchecked", [])) or ""),
        ])  # fmt: skip
    header = ["artifact", "format", "precision", "status", "size MB", "accuracy", "drop", "p50 ms", "p95 ms",
              "latency", "RAM MB", "notes / unchecked"]  # fmt: skip
    budgets = ", ".join(f"{k} {v}" for k, v in v["budgets"].items() if v is not None) or "none: nothing gated"
    return (f"<h3>{esc(v['profile'])}: verdict <span class=\"{esc(v['verdict'])}\">{esc(v['verdict'])}</span></h3>"
            f"<p>budgets: {esc(budgets)}</p>{table(header, rows)}")  # fmt: skip


def sensitivity_html(run_dir: Path) -> str:
    parts = []
    for path in sorted(run_dir.glob("stages/*/sensitivity.json")) + sorted(run_dir.glob("sensitivity.json")):
        s = json.loads(path.read_text())
        parts.append(f"<p><code>{esc(path.relative_to(run_dir))}</code>: {esc(s['backend'])}, budget "
                     f"{s['max_drop']} pts, {'fits' if s['fits'] else 'does not fit'}</p>")  # fmt: skip
        branches = sorted(s["branch_drop"].items(), key=lambda kv: -kv[1])
        if branches:
            parts.append(
                table(
                    ["branch quantized alone", "drop (pts)"],
                    [[esc(s.get("branch_labels", {}).get(b, b)), num(d, "+.2f")] for b, d in branches],
                )
            )
        layers = [[esc(x["node"]), esc(x["scope"]), num(x["sqnr_db"], ".1f")] for x in s["top_layers"]]
        if layers:
            parts.append(table(["most sensitive layer", "scope", "SQNR dB"], layers))
        trials = [[esc(", ".join(t["float_parts"]) or "(nothing)"), num(t["drop"], "+.2f")] for t in s["trials"]]
        parts.append(table(["kept in float", "drop (pts)"], trials))
    return "".join(parts) or "<p>No quantize stage ran accuracy-aware in this run.</p>"


def render(run_dir: Path) -> Path:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise UsageError(f"{run_dir} has no report.json", "pass a run directory `edgekit compress` wrote")
    try:
        report = json.loads(path.read_text())
        baseline = report["baseline"]["accuracy"]
    except (ValueError, RecursionError, KeyError, TypeError) as e:  # ValueError: JSON syntax, ints past 4300 digits
        raise UsageError(f"{path} is malformed ({type(e).__name__}: {e})", "rerun edgekit compress") from e
    validations = report.get("validation", [])
    measured = [(r, v["profile"]) for v in validations for r in v["rows"] if r.get("ops")]
    slowest = sorted(measured, key=lambda x: -(x[0].get("p50_ms") or 0))[:3]
    host = next((v["host"] for v in validations), None)
    body = [
        f"<h1>EdgeKit run: {esc(Path(run_dir).resolve().name)}</h1>",
        f"<p>verdict: <b class=\"{esc(report['verdict']['status'])}\">{esc(report['verdict']['status'])}</b> "
        f"(accuracy drop {num(report['verdict'].get('accuracy_drop'), '+.2f')} pts)</p>",
        "<h2>Validation</h2>",
        "".join(validation_html(v) for v in validations) or "<p>Not validated yet: run <code>edgekit validate "
        "ARTIFACT... --profile P --report RUN_DIR</code>.</p>",
        "<h2>Accuracy vs latency</h2>",
        f"<figure>{pareto_svg(validations, baseline)}</figure>" if validations else "<p>No validation yet.</p>",
        "<h2>Lineage</h2>", lineage(report),
        "<h2>Per-branch sensitivity</h2>", sensitivity_html(Path(run_dir)),
        "<h2>Where the time goes (slowest measured artifacts)</h2>",
        "".join(f"<figure>{ops_svg(Path(r['artifact']).name + ' on ' + p, r['ops'])}</figure>" for r, p in slowest)
        or "<p>No per-operator breakdown was measured.</p>",
        "<h2>Recipe</h2>", f"<pre>{esc(yaml.safe_dump(report['recipe'], sort_keys=False))}</pre>",
        "<h2>Host and versions</h2>",
        f"<pre>{esc(yaml.safe_dump({'host': host, 'versions': report.get('versions')}, sort_keys=False))}</pre>",
    ]  # fmt: skip
    page = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>EdgeKit report</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")  # fmt: skip
    out = Path(run_dir) / "report.html"
    write_text(out, page)
    return out
