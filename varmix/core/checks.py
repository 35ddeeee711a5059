"""params.yaml's checks: pydantic validates each field by its annotated type; these build the annotations
and turn pydantic's first error into one ``ConfigError`` line, "params: <key path> = <value> is invalid:
expected <what is allowed>". Written here because pydantic's own messages name neither the key path nor
what is allowed in a reader's words."""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, BeforeValidator, Field, Strict, TypeAdapter, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from varmix.core.errors import ConfigError
from varmix.core.names import ARM_NAME, METHODS


# Validation is pydantic's (TypeAdapter over these stdlib dataclasses, so building one in code and
# dataclasses.replace stay unchecked, as before): each field's annotation below is its check. Every error
# becomes one ConfigError "params: <key path> = <value> is invalid: expected <what is allowed>".
def bad_value(value: Any, allowed: str, *sub: str | int) -> PydanticCustomError:
    """The value at the field being validated (or at ``sub`` below it) is bad; ``{key}`` in ``allowed``
    becomes that field's key path."""
    return PydanticCustomError("varmix", "{allowed}", {"value": value, "allowed": allowed, "sub": sub})


def worded(text: str, *sub: str | int) -> PydanticCustomError:
    """An error worded by ``text`` (``{key}``: the key path)."""
    return PydanticCustomError("varmix_text", "{text}", {"text": text, "sub": sub})


def config_error(e: Mapping[str, Any], prefix: str) -> ConfigError:
    """pydantic's first error as ConfigError; a mapping key's own error ([key]) is named by its mapping."""
    ctx = e.get("ctx") or {}
    loc = [k for i, k in enumerate(e["loc"]) if "[key]" not in e["loc"][i:i + 2]]
    where, path = key_path([prefix, *loc]), key_path([prefix, *loc, *ctx.get("sub", ())])
    if e["type"] == "varmix":
        return ConfigError(f"params: {path} = {ctx['value']!r} is invalid: expected "
                           f"{ctx['allowed'].replace('{key}', where)}")
    if e["type"] == "varmix_text":
        return ConfigError("params: " + ctx["text"].replace("{key}", path))
    if e["type"] == "missing":
        return ConfigError(f"params: missing key {path}")
    return ConfigError(f"params: {path} = {e['input']!r} is invalid: {e['msg']}")  # not reached by the types here


def key_path(keys: list[str | int]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys if k != "").lstrip(".")


@functools.cache
def adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def validate_as(kind: Any, d: Any, key: str) -> Any:
    """``d`` validated as ``kind``, its errors named under the key path ``key``."""
    try:
        return adapter(kind).validate_python(d)
    except ValidationError as exc:
        raise config_error(exc.errors()[0], key) from None


def explained(allowed: str) -> WrapValidator:
    """Any failure of the annotated type is reported as the given value and ``allowed``."""
    def wrap(v: Any, handler: Any) -> Any:
        try:
            return handler(v)
        except ValidationError:
            raise bad_value(v, allowed) from None
    return WrapValidator(wrap)


def range_text(lo, hi, lo_open=False, hi_open=False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return (" " + " and ".join(parts)) if parts else ""


def int_in(lo: int | None = None, hi: int | None = None) -> Any:
    """An int (not a bool, not 2.0) in [lo, hi]."""
    return Annotated[int, Strict(), Field(ge=lo, le=hi), explained("an integer" + range_text(lo, hi))]


def number_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A finite number (YAML 1.1 reads "1e-3" as a string: numeric strings count; bools do not) in the range,
    as a float; a bad one is shown as a float where it reads as one (0 -> 0.0, as the check sees it)."""
    def wrap(v: Any, handler: Any) -> float:
        if not isinstance(v, bool):
            try:
                return handler(v)
            except ValidationError:
                pass
            try:
                v = float(v)
            except (TypeError, ValueError):
                pass
        finite = not isinstance(v, float) or math.isfinite(v)
        raise bad_value(v, ("a number" if finite else "a finite number") + range_text(lo, hi, lo_open, hi_open))
    bounds = {"gt" if lo_open else "ge": lo, "lt" if hi_open else "le": hi}
    return Annotated[float, Field(allow_inf_nan=False, **bounds), WrapValidator(wrap)]


def one_of(allowed: tuple[str, ...]) -> Any:
    return Annotated[Literal[allowed], explained("one of " + ", ".join(allowed))]


BOOL = Annotated[bool, Strict(), explained("true or false")]
ARM = Annotated[str, Strict(), Field(pattern=f"^{ARM_NAME}$"),
                      explained("an arm name of lower-case letters, digits and underscores, starting with a letter")]


def list_of(item: Any, each: str = "", empty_ok: bool = False) -> Any:
    """A YAML list (non-empty unless ``empty_ok``; each value once if ``each`` names them) as a tuple."""
    def is_list(v: Any) -> Any:
        if not isinstance(v, (list, tuple)) or not (v or empty_ok):  # tuple: the defaults
            raise bad_value(v, "a list" if empty_ok else "a non-empty list")
        return v

    def once(v: tuple) -> tuple:
        if each and len(set(v)) != len(v):
            raise bad_value(list(v), f"each {each} at most once")
        return v
    return Annotated[tuple[item, ...], BeforeValidator(is_list), AfterValidator(once)]


def mapping_of(allowed: str, empty_ok: bool = True) -> BeforeValidator:
    def is_mapping(v: Any) -> Any:
        if not isinstance(v, Mapping) or not (v or empty_ok):
            raise bad_value(v, allowed)
        return v
    return BeforeValidator(is_mapping)


def per_method(item: Any) -> Any:
    """A value given per method: either one value for all, or a mapping method -> value (in METHODS' order)."""
    def expand(v: Any) -> dict[str, Any]:
        if not isinstance(v, Mapping):
            try:  # checked once, so that the error names the key itself
                adapter(item).validate_python(v)
            except ValidationError as exc:
                ctx = exc.errors()[0]["ctx"]
                raise bad_value(ctx["value"], ctx["allowed"]) from None
            return {m: v for m in METHODS}
        unknown = sorted(set(v) - set(METHODS))
        if unknown:
            raise bad_value(v[unknown[0]], "a key among methods " + ", ".join(METHODS), unknown[0])
        missing = [m for m in METHODS if m not in v]
        if missing:
            raise worded(f"missing key {{key}}.{missing[0]} (give a value for every method)")
        return {m: v[m] for m in METHODS}
    return Annotated[dict[str, item], BeforeValidator(expand)]
