"""A pydantic ValidationError as one line a user can act on: where the problem is (pydantic's `loc`), what is wrong
in words, and for a typo the closest valid name. Shared by every YAML file EdgeKit reads (profiles, recipes)."""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass
from typing import Any

import pydantic

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
    return ".".join(str(x) for x in loc)


def did_you_mean(word: str, options: typing.Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"did you mean '{close[0]}'?" if close else None


def first_error(e: pydantic.ValidationError, root: type[pydantic.BaseModel]) -> FieldError:
    """The first of `e`'s errors, raised validating `root`, in words."""
    err = e.errors()[0]
    loc, kind, ctx, given = tuple(err["loc"]), err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        return FieldError(loc, "is not a known field", did_you_mean(str(loc[-1]), _field_names(root, loc[:-1])))
    if kind == "missing":
        return FieldError(loc, "is missing", None)
    if kind == "union_tag_not_found":
        return FieldError(loc, f"is missing field {ctx['discriminator']}", None)
    if kind in ("union_tag_invalid", "literal_error"):
        valid = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", ctx.get("expected", ""))))
        if kind == "union_tag_invalid":
            bad, what = str(ctx["tag"]), str(ctx["discriminator"]).strip("'")
        elif loc and loc[-1] == "[key]":  # a mapping key outside its Literal
            loc, bad, what = loc[:-2], str(given), "key"
        else:
            bad, what = str(given), "value"
        options = ", ".join(f"'{v}'" for v in valid)
        hint = " ".join(filter(None, [did_you_mean(bad, valid), f"use one of {options}"]))
        return FieldError(loc, f"has unknown {what} '{bad}'", hint)
    if kind in _EXPECTED:
        return FieldError(loc, f"should be {_EXPECTED[kind]}, got {_show(given)}", None)
    if kind == "too_short":
        return FieldError(loc, f"should have at least {ctx['min_length']} item(s), got {_show(given)}", None)
    if kind == "value_error":  # our own validators: their message is already a sentence
        return FieldError(loc, f"is invalid: {err['msg'].removeprefix('Value error, ')}", None)
    msg = err["msg"]
    text = msg[len("Input ") :] if msg.startswith("Input ") else f"is invalid: {msg}"
    return FieldError(loc, f"{text}, got {_show(given)}", None)


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


def _show(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
