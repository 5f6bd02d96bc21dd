"""The README's measured figures are the benchmark's: every decimal figure in each "### On <host>" subsection of
its "## Measured" section, and every ratio (a number before the times sign), appears in docs/benchmarks.json's
block for the host the heading names, as recorded or as a ratio of two recorded numbers. Sentences that name
another CPU are about that CPU and are left out."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPUS = ("Zen 3", "Zen 2", "Zen 5", "AMD EPYC", "Sapphire Rapids", "Xeon", "emulated")
TIMES, DASH = "\u00d7", "\u2013"  # how the README writes 10.8x and 8.84-10.14x


def measured_sections() -> list[tuple[str, str]]:
    """(the host a subsection's heading names, its text), for each subsection of the measured section."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Measured[^\n]*\n(.*?)(?=^## )", text, re.M | re.S)
    assert m, "README.md has no '## Measured' section"
    found = re.findall(r"^### On ([^\n]+)\n(.*?)(?=^### |\Z)", m.group(1), re.M | re.S)
    assert found, "the measured section has no '### On <host>' subsection"
    return found


def numbers(value: object) -> Iterator[float]:
    """Every number in a JSON value, strings included ("10.14x, drop +0.89")."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, str):
        yield from (float(x) for x in re.findall(r"\d+(?:\.\d+)?", value))
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)


def recorded(block: dict) -> set[float]:
    """What the block records, in millions too (parameters), and the ratios of its rows' times and sizes to the
    torch-eager teacher's (speed-ups at batch 1 and 16, how much smaller)."""
    values = set(numbers(block))
    values |= {v / 1e6 for v in list(values) if v >= 1e5}
    eager = next(r for r in block["rows"] if r["group"] == "baseline")
    for r in block["rows"]:
        for key in ("p50_ms_b1", "p50_ms_b16"):
            if r.get(key):
                values.add(eager[key] / r[key])
        values.add(eager["size_mb"] / r["size_mb"])
    return values


def claims(section: str, heading: str) -> Iterator[tuple[str, str]]:
    """(figure, sentence): decimals, and integers written as a ratio, of sentences about the heading's host."""
    others = [cpu for cpu in CPUS if cpu not in heading]
    for sentence in re.split(r"(?<=[.;])\s+(?=[A-Z(])", section):
        if any(cpu in sentence for cpu in others):
            continue
        for m in re.finditer(rf"(?<![\w.])(\d+\.\d+|\d+(?=(?:{DASH}[\d.]+)?{TIMES}))", sentence):
            yield m.group(1), sentence


def test_every_measured_figure_in_the_readme_is_in_the_benchmark_record():
    hosts = json.loads((ROOT / "docs" / "benchmarks.json").read_text())["hosts"]
    for heading, section in measured_sections():
        named = [k for k, b in hosts.items() if b["host"]["cpu"] in heading]
        assert len(named) == 1, f"the heading '{heading}' names none or several of {list(hosts)}"
        values = recorded(hosts[named[0]])
        found = list(claims(section, heading))
        assert len(found) >= 4, heading  # the subsection does quote the benchmark
        for figure, sentence in found:
            decimals = len(figure.partition(".")[2])
            assert any(round(v, decimals) == float(figure) for v in values), f"{figure} is not recorded: {sentence}"
