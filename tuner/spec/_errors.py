"""The one place where pydantic's ValidationError becomes the project's ConfigError.

Validators of the spec models raise `spec_error(message, fix)`; pydantic's own errors (wrong type,
missing key, unknown key, out of bounds) get a message and a fix written here, so no pydantic text
reaches the user.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from trials import Problem, did_you_mean

__all__ = ["ENTRY_TAGS", "format_path", "problems_from_validation_error", "spec_error"]

# Tags of the search-space entry union: pydantic puts them in the error location; they are not YAML keys.
ENTRY_TAGS = ("range", "choices", "fixed")

_MESSAGES = {
    "missing": ("is required", "add it"),
    "extra_forbidden": ("unknown key", ""),
    "int_type": ("must be an integer", "write a whole number such as 8"),
    "int_parsing": ("must be an integer", "write a whole number such as 8"),
    "int_from_float": ("must be an integer", "write a whole number such as 8"),
    "float_type": ("must be a number", "write a number such as 0.5 or 1.0e-5"),
    "float_parsing": ("must be a number", "write a number such as 0.5 or 1.0e-5"),
    "finite_number": ("must be a finite number", "write a number such as 0.5"),
    "bool_type": ("must be true or false", "write true or false"),
    "bool_parsing": ("must be true or false", "write true or false"),
    "string_type": ("must be a string", "quote it if needed"),
    "string_too_short": ("must not be empty", "write a value or remove the key"),
    "list_type": ("must be a list", "write it as [a, b, c]"),
    "dict_type": ("must be a mapping", "write one 'key: value' per line under it"),
    "model_type": ("must be a mapping", "write one 'key: value' per line under it"),
    "model_attributes_type": ("must be a mapping", "write one 'key: value' per line under it"),
}


def spec_error(message: str, fix: str = "", *, subpath: str | None = None, value: Any = None) -> PydanticCustomError:
    """An error for a validator to raise; `subpath` extends the location, `value` replaces the input shown."""
    return PydanticCustomError("spec", message, {"fix": fix, "subpath": subpath, "value": value})


def format_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('search_space', 'lr', 'choices', 2) -> 'search_space.lr.choices[2]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "spec"


def problems_from_validation_error(exc: ValidationError, root: type[BaseModel],
                                   tagged: dict[str, type[BaseModel]] | None = None) -> list[Problem]:
    """One Problem per error, each with its YAML path, the value, a message and a fix. `tagged` maps the
    tags of the search-space entry union to their models (for a did-you-mean under an entry)."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False):
        raw_loc = tuple(err["loc"])
        message, fix = _message_and_fix(err, raw_loc, root, tagged or {})
        loc = _strip_tags(raw_loc)
        ctx = (err.get("ctx") or {}) if err["type"] == "spec" else {}
        subpath = ctx.get("subpath")
        path = format_path(loc + (tuple(subpath.split(".")) if subpath else ()))
        if path in seen:
            continue  # one problem per path: the first is the one to fix
        seen.add(path)
        value = None if err["type"] == "missing" else ctx["value"] if subpath else err.get("input")
        problems.append(Problem(path, value, message, fix))
    return problems


def _message_and_fix(err: dict[str, Any], loc: tuple[Any, ...], root: type[BaseModel],
                     tagged: dict[str, type[BaseModel]]) -> tuple[str, str]:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "spec":
        return err["msg"], ctx.get("fix", "")
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1], root, tagged)
        return "unknown key", did_you_mean(str(loc[-1]), known) if known else "remove it"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        choices = [c.strip(" '") for c in expected.replace(" or ", ",").split(",") if c.strip(" '")]
        hint = did_you_mean(str(err.get("input")), choices) if isinstance(err.get("input"), str) else ""
        fix = hint if hint.startswith("did you mean") else f"use one of {', '.join(choices)}"
        return f"must be one of {', '.join(choices)}", fix
    for bound, word in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if bound in ctx:
            return f"must be {word} {ctx[bound]}", f"use a value {word} {ctx[bound]}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return f"must have at least {n} item{'s' if n != 1 else ''}", "add items or remove the key"
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    return "is not valid here", "run 'tuner schema' to see the expected form"


def _strip_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(loc) > 2 and loc[0] == "search_space" and loc[2] in ENTRY_TAGS:
        return loc[:2] + loc[3:]
    return loc


def _known_keys(parent: tuple[Any, ...], root: type[BaseModel], tagged: dict[str, type[BaseModel]]) -> list[str]:
    """The keys allowed at `parent` (a raw pydantic location), for a did-you-mean hint."""
    model = _model_at(parent, root, tagged)
    return list(model.model_fields) if model is not None else []


def _model_at(
    parent: tuple[Any, ...], root: type[BaseModel], tagged: dict[str, type[BaseModel]]
) -> type[BaseModel] | None:
    if not parent:
        return root
    if len(parent) == 1 and parent[0] in root.model_fields:
        annotation = root.model_fields[parent[0]].annotation
        return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if len(parent) == 3 and parent[0] == "search_space":
        return tagged.get(parent[2])
    return None
