"""A pydantic ValidationError as one line a user can act on: where the problem is (pydantic's `loc`), what is wrong
in words, and for a typo the closest valid name. Shared by every YAML file EdgeKit reads (profiles, recipes, IO
specs), as is `load_yaml`, which fails only with a YAMLError."""

from __future__ import annotations

import difflib
import re
import reprlib
import typing
from dataclasses import dataclass
from typing import Any

import pydantic
import yaml

Loc = tuple[int | str, ...]

# Type-error codes -> the type that was expected, in words (pydantic's own message names Python types).
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


@dataclass(frozen=True)
class FieldError:
    loc: Loc  # where, as pydantic reports it: field names, list indices, dict keys, union tags
    problem: str  # reads after the field's name: "is missing", "should be an integer, got 'many'"
    hint: str | None  # "did you mean 'pruning_ratio'?", or None to let the caller point at the docs


def dotted(loc: Loc) -> str:
    return ".".join(one_line(x) for x in loc)  # a mapping key can be any YAML scalar


def one_line(value: object) -> str:
    """`value` as it is where that prints on one line (a name, a path), else quoted and escaped."""
    text = value if isinstance(value, str) else _SHORT.repr(value)
    return text if text.isprintable() else show(text)


def did_you_mean(word: str, options: typing.Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"did you mean '{close[0]}'?" if close else None


def first_error(e: pydantic.ValidationError, root: type[pydantic.BaseModel]) -> FieldError:
    """The first of `e`'s errors, raised validating `root`, in words."""
    err = e.errors()[0]
    loc, kind, ctx, given = tuple(err["loc"]), err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        return FieldError(loc, "is not a known field", did_you_mean(one_line(loc[-1]), _field_names(root, loc[:-1])))
    if kind == "missing":
        return FieldError(loc, "is missing", None)
    if kind == "union_tag_not_found":
        return FieldError(loc, f"is missing field {ctx['discriminator']}", None)
    if kind in ("union_tag_invalid", "literal_error"):
        valid = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", ctx.get("expected", ""))))
        if kind == "union_tag_invalid":
            bad, what = str(ctx["tag"]), str(ctx["discriminator"]).strip("'")
        elif loc and loc[-1] == "[key]":  # a mapping key outside its Literal
            loc, bad, what = loc[:-2], _text(given), "key"
        else:
            bad, what = _text(given), "value"
        options = ", ".join(f"'{v}'" for v in valid)
        hint = " ".join(filter(None, [did_you_mean(bad, valid), f"use one of {options}"]))
        return FieldError(loc, f"has unknown {what} {show(bad)}", hint)
    if kind in _EXPECTED:
        return FieldError(loc, f"should be {_EXPECTED[kind]}, got {show(given)}", None)
    if kind == "too_short":
        return FieldError(loc, f"should have at least {ctx['min_length']} item(s), got {show(given)}", None)
    if kind == "value_error":  # our own validators: their message is already a sentence
        return FieldError(loc, f"is invalid: {err['msg'].removeprefix('Value error, ')}", None)
    msg = err["msg"]
    text = msg[len("Input ") :] if msg.startswith("Input ") else f"is invalid: {msg}"
    return FieldError(loc, f"{text}, got {show(given)}", None)


def _field_names(root: type[pydantic.BaseModel], loc: Loc) -> list[str]:
    """The fields of the model that `loc` points into, following fields, list items, mapping values and the tags
    pydantic puts in `loc` for a member of a discriminated union."""
    models = [root]
    for part in loc:
        inner = [
            m for model in models if part in model.model_fields for m in _models(model.model_fields[part].annotation)
        ]
        tagged = [m for m in models if any(typing.get_args(f.annotation) == (part,) for f in m.model_fields.values())]
        models = inner or tagged or models  # neither: a list index or a mapping key, same models
    return sorted({name for m in models for name in m.model_fields})


def _models(tp: Any) -> list[type[pydantic.BaseModel]]:
    """The models an annotation can hold, through Optional, unions, Annotated, lists and mappings."""
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models(arg)]


class _Short(reprlib.Repr):
    """repr() that does bounded work: an input can be a YAML alias bomb (aliases share one object, so a small file
    holds a billion leaves) or an int too long for repr() (past 4300 digits it raises ValueError)."""

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:
            return f"<int of {x.bit_length()} bits>"


_SHORT = _Short()
_SHORT.maxlevel = 3  # messages cut values at a few dozen characters, so deeper levels would not show anyway
_SHORT.maxdict = _SHORT.maxlist = 8
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 200


def _text(value: Any) -> str:
    return value if isinstance(value, str) else show(value)


def show(value: Any, limit: int = 60) -> str:
    """`value` as a message shows it: repr() on one line, at most `limit` characters, whatever the value."""
    text = "null" if value is None else _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader whose malformed values fail as YAMLErrors at their line: its constructors raise plain
    ValueError, KeyError, IndexError or AttributeError for some (`!!int x`, `!!bool maybe`, `!!timestamp x`,
    2020-02-30, an int of over 4300 digits)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, LookupError, AttributeError) as e:
            tag = str(node.tag).removeprefix("tag:yaml.org,2002:")
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {tag} value {show(node.value)}", node.start_mark
            ) from e

    def construct_int(self, node: yaml.ScalarNode) -> int:
        # A hex, octal or base-60 int is not capped like a decimal one: refuse one that str() cannot print, as
        # pydantic's messages (and ours) would fail on it.
        value = self.construct_yaml_int(node)
        str(value)  # ValueError past 4300 digits
        return value


_SafeLoader.add_constructor("tag:yaml.org,2002:int", _SafeLoader.construct_int)


def load_yaml(text: str) -> Any:
    """yaml.safe_load that fails only with a YAMLError, whatever the text."""
    try:
        return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader: Python tags are refused, never run
    except RecursionError as e:  # the composer recurses once per nesting level
        raise yaml.YAMLError("the document nests too deeply") from e
