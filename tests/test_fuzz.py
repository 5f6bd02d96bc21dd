"""Fuzzing the three user-facing parsers (recipes, hardware profiles, IO specs and their feed check): whatever a
file or mapping holds, it either parses into the right type or fails with one line of EdgeKitError, never a
stray KeyError, TypeError, RecursionError, yaml or pydantic error. Near-valid documents (a shipped one with a key
dropped, added or retyped) reach much deeper than noise; raw text covers broken YAML and unsafe tags."""

import copy
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgekit.errors import EdgeKitError
from edgekit.hardware import HardwareProfile, alias_names, parse_profile, profile_names, resolve_profile
from edgekit.io import DTYPES, IOSpec, TensorSpec
from edgekit.recipe import Recipe, dump_recipe, load_recipe

from .conftest import ROOT

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILES = sorted((ROOT / "edgekit" / "hardware" / "profiles").glob("*.yaml"))
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
# Every field of every stage: the shipped recipes as written, and with every default filled in.
RECIPE_DOCS = [yaml.safe_load(p.read_text()) for p in RECIPES] + [
    yaml.safe_load(dump_recipe(load_recipe(p))) for p in RECIPES
]
PROFILE_DOCS = [yaml.safe_load(p.read_text()) for p in PROFILES]
IO_DOC: dict[str, Any] = {
    "dims": {"batch": {"min": 1, "opt": 4, "max": 32}, "seq": {"min": 1, "opt": 8, "max": 16}},
    "inputs": [
        {"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8], "modality": "image"},
        {"name": "ids", "dtype": "int64", "shape": ["batch", "seq"], "modality": "text", "value_range": [0, 50]},
        {"name": "mask", "dtype": "bool", "shape": ["batch", "seq"], "modality": "text"},
        {"name": "modality_mask", "dtype": "float32", "shape": ["batch", 2]},
    ],
    "outputs": [{"name": "logits", "dtype": "float16", "shape": ["batch", 10]}],
}

# -- strategies ---------------------------------------------------------------------------------------------------

# Over Python's 4300-digit limit for int <-> str conversion (built in a map: hypothesis cannot repr it).
HUGE = st.sampled_from([1, -1]).map(lambda sign: sign << 20_000)
NUMBERS = [0, -1, 1, -(2**63) - 1, 2**64, 10**400, 0.0, -0.0, 1e308, -1e-308, math.nan, math.inf, -math.inf]
WORDS = ["", " ", "0", "null", "é\u200b☃", "a\nb", "x" * 300, "../../etc/passwd", "prune", "int8", "batch", "x.yaml"]
SPECIAL = HUGE | st.sampled_from([*NUMBERS, *WORDS])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | SPECIAL
KEYS = st.text(max_size=10) | st.integers() | st.booleans() | st.none() | st.sampled_from(["kind", "name", "dims"])
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in `doc`, outermost first."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    return [s for key, value in items for s in [(doc, key), *_slots(value)]]


def _retyped(value: Any, draw: Callable[[Any], Any]) -> Any:
    """A value near `value`: negated, zeroed, blown up, wrapped in a list or mapping, or of another type."""
    try:
        text = str(value)[:20]
    except ValueError:  # an int past 4300 digits (an earlier edit may have put one in)
        text = "9" * 20
    options: list[Any] = [[value], {"x": value}, None, text]
    if isinstance(value, int | float) and not isinstance(value, bool):
        options += [-value, 0, value * 10**6, math.nan, -math.inf]
    return draw(st.sampled_from(options) | VALUES)


@st.composite
def mutated(draw: Callable[[Any], Any], bases: list[Any]) -> Any:
    """A valid document with one to three near-miss edits: the edits a user makes by mistake."""
    doc = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(doc)
        if not slots:
            break
        parent, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["drop", "retype", "add", "swap"]))
        if op == "drop":
            del parent[key]
        elif op == "retype":
            parent[key] = _retyped(parent[key], draw)
        elif op == "add":
            target = parent[key] if isinstance(parent[key], dict) else doc if isinstance(doc, dict) else parent
            if isinstance(target, dict):
                target[draw(KEYS)] = draw(VALUES)
            else:
                target.append(draw(VALUES))
        else:  # another field's value, e.g. a stage where a target belongs
            _, other = draw(st.sampled_from(slots))
            parent[key] = copy.deepcopy(other) if other is not parent[key] else draw(VALUES)
    return doc


class _Dumper(yaml.SafeDumper):
    """safe_dump, but ints past the 4300-digit limit go out as hex (which YAML 1.1 reads back as an int)."""


_Dumper.add_representer(
    int, lambda d, v: d.represent_scalar("tag:yaml.org,2002:int", hex(v) if v.bit_length() > 10_000 else str(v))
)


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


# YAML fragments that exercise the loader's corners: tags (including unsafe ones), anchors, merges, huge or
# malformed scalars, deep nesting.
TOKEN_ROWS = [
    ["\n", "  ", "- ", ": ", "{", "}", "[", "]", ",", "? ", "---\n", "...\n", "%YAML 1.1\n", "#", "'", '"', "|\n"],
    ["&a ", "*a", "<<: ", "!!python/object/apply:os.system ", "!!python/name:os.system ", "!!str ", "!!int "],
    ["!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!null ", "!foo ", "!<tag:x> "],
    ["0x", "1" * 5000, "2020-02-30", "1:20:30", ".nan", ".inf", "~", "yes", "\t", "\x00", "\ufeff", "é"],
    ["kind: prune", "stages:", "targets:", "name: x", "inputs:", "outputs:", "shape:", "dims:", "budgets:"],
]
TOKENS = st.sampled_from([token for row in TOKEN_ROWS for token in row])
YAML_TEXT = st.lists(TOKENS | st.text(max_size=6), max_size=30).map("".join)
RAW = YAML_TEXT.map(str.encode) | st.binary(max_size=64) | st.text(max_size=64).map(str.encode)
# Inputs that broke a loader once: a 5000-digit int, an impossible date, malformed explicit tags, deep nesting,
# an unsafe tag, and a billion-laughs alias bomb (safe_load shares the aliases; an error message must not expand
# them).
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
NASTY = [
    "seed: " + "1" * 5000,
    "a: 2020-02-30",
    "a: !!int x",
    "a: !!int ''",
    "a: !!float ''",
    "a: !!bool maybe",
    "a: !!timestamp x",
    "[" * 3000,
    "{a: " * 3000,
    "!!python/object/apply:os.system ['echo pwned']",
    BOMB + "model: *i\nname: *i\ninputs: *i\noutputs: *i\n",
]


def _examples(f: Callable[..., None]) -> Callable[..., None]:
    for text in NASTY:
        f = example(raw=text.encode())(f)
    return f


def check(parse: Callable[[], Any], expected: type) -> Any:
    """`parse()`'s result, which must be an `expected`, or None where it failed as it should: an EdgeKitError of
    one line. Any other exception propagates and fails the test."""
    try:
        result = parse()
    except EdgeKitError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
        return None
    assert isinstance(result, expected), type(result)
    return result


def _file(tmp: str, content: str | bytes) -> Path:
    path = Path(tmp) / "f.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


# -- recipes ------------------------------------------------------------------------------------------------------


@FUZZ
@given(doc=VALUES | mutated(RECIPE_DOCS))
def test_recipe_documents_parse_or_fail_in_one_line(doc):
    with tempfile.TemporaryDirectory() as tmp:
        recipe = check(lambda: load_recipe(_file(tmp, _dump(doc))), Recipe)
        if recipe is not None:  # what `recipe check` prints is the same recipe
            assert load_recipe(_file(tmp, dump_recipe(recipe))) == recipe


@FUZZ
@_examples
@given(raw=RAW)
def test_recipe_text_parses_or_fails_in_one_line(raw):
    with tempfile.TemporaryDirectory() as tmp:
        check(lambda: load_recipe(_file(tmp, raw)), Recipe)


# -- hardware profiles --------------------------------------------------------------------------------------------


@FUZZ
@given(doc=VALUES | mutated(PROFILE_DOCS))
def test_profile_documents_parse_or_fail_in_one_line(doc):
    with tempfile.TemporaryDirectory() as tmp:
        profile = check(lambda: parse_profile(_file(tmp, _dump(doc))), HardwareProfile)
    if profile is not None:
        assert set(profile.precisions) <= set(profile.peak_tops)


@FUZZ
@_examples
@given(raw=RAW)
def test_profile_text_parses_or_fails_in_one_line(raw):
    with tempfile.TemporaryDirectory() as tmp:
        check(lambda: parse_profile(_file(tmp, raw)), HardwareProfile)


NAMES = st.sampled_from([*profile_names(), *alias_names()])
TARGETS = (
    st.text(max_size=20)
    | NAMES
    | st.builds("{}{}".format, NAMES | st.text(max_size=300), st.sampled_from([".yaml", ".yml", "/", "\x00.yaml"]))
)


@FUZZ
@example(target="a" * 300 + ".yaml")
@given(target=TARGETS)
def test_any_target_resolves_or_fails_in_one_line(target):
    resolved = check(lambda: resolve_profile(target), tuple)
    if resolved is not None:
        assert isinstance(resolved[0], HardwareProfile)


# -- IO specs and feeds -------------------------------------------------------------------------------------------

FEED_DTYPES = st.sampled_from([*DTYPES, "float64", "uint8", "int8"])
SIZES = st.sampled_from([0, 1, 2, 3, 16, 17, 33])


@st.composite
def feeds(draw: Callable[[Any], Any], spec: IOSpec) -> dict[str, Any]:
    """Feeds for `spec`'s inputs, mostly close to right (so that the checks past dtype and rank run), some
    missing, extra, mis-shaped, mis-typed or not arrays at all."""
    out: dict[str, Any] = {}
    for t in spec.inputs:
        kind = draw(st.sampled_from(["near", "near", "near", "missing", "other"]))
        if kind == "near":
            dtype = draw(st.just(t.dtype) | FEED_DTYPES)
            shape = [d if isinstance(d, int) and 0 <= d <= 64 and draw(st.booleans()) else draw(SIZES) for d in t.shape]
            shape = draw(st.just(shape) | st.lists(SIZES, max_size=4))
            out[t.name] = np.zeros(shape, dtype)
        elif kind == "other":
            out[t.name] = draw(SCALARS | st.lists(SCALARS, max_size=3) | st.just(np.float32(1)))
    extra = draw(st.dictionaries(st.text(max_size=5), st.just(np.zeros(1)), max_size=1))
    return {**out, **extra}


@FUZZ
@given(doc=VALUES | mutated([IO_DOC]), data=st.data())
def test_io_spec_mappings_parse_or_fail_and_their_feed_check_too(doc, data):
    spec = check(lambda: IOSpec.from_dict(doc), IOSpec)
    if spec is None:
        return
    assert all(isinstance(d, int | str) for t in (*spec.inputs, *spec.outputs) for d in t.shape)
    assert IOSpec.from_dict(spec.to_dict()) == spec
    fed = data.draw(feeds(spec))
    check(lambda: spec.validate_feeds(fed), type(None))


@FUZZ
@given(doc=VALUES | mutated(IO_DOC["inputs"]))
def test_tensor_spec_mappings_parse_or_fail_in_one_line(doc):
    tensor = check(lambda: TensorSpec.from_dict(doc), TensorSpec)
    if tensor is not None:
        assert TensorSpec.from_dict(tensor.to_dict()) == tensor


@FUZZ
@_examples
@given(raw=RAW | mutated([IO_DOC]).map(_dump).map(str.encode))
def test_io_spec_files_parse_or_fail_in_one_line(raw):
    with tempfile.TemporaryDirectory() as tmp:
        check(lambda: IOSpec.load(_file(tmp, raw)), IOSpec)


@FUZZ
@given(data=st.data())
def test_feeds_for_a_valid_spec_pass_or_fail_in_one_line(data):
    spec = IOSpec.from_dict(IO_DOC)
    fed = data.draw(feeds(spec))
    check(lambda: spec.validate_feeds(fed), type(None))


# -- unsafe YAML is refused, not run ------------------------------------------------------------------------------


@pytest.mark.parametrize("load", [load_recipe, parse_profile, IOSpec.load])
def test_python_tags_are_refused_not_executed(tmp_path, load):
    marker = tmp_path / "pwned"
    path = tmp_path / "f.yaml"
    path.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(EdgeKitError, match="python/object/apply"):
        load(path)
    assert not marker.exists()
