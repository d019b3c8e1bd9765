"""One value of a sweep file or a ``--set`` override checked against its rule, and the error that names
the source, the field and what is allowed."""

from __future__ import annotations

import math
import tomllib
from typing import Any

from . import axes


class SweepError(ValueError):
    """A sweep file or override is invalid. ``str()`` names the source, the field and what is allowed."""

    def __init__(self, source: str, field_name: str, message: str) -> None:
        self.source, self.field_name, self.detail = source, field_name, message
        super().__init__(f"{source}: {field_name}: {message}")




def describe_value(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_value(source: str, name: str, kind: str, rule: Any, value: Any) -> Any:
    if kind == "int":
        lo, hi = rule
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise SweepError(source, name, f"must be an integer >= {lo} and <= {hi:,}, got {describe_value(value)}")
    elif kind == "float":
        lo, hi = rule
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not lo <= value <= hi):
            raise SweepError(source, name,
                             f"must be a finite number >= {lo:g} and <= {hi:g}, got {describe_value(value)}")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise SweepError(source, name, f"must be true or false, got {describe_value(value)}")
    elif kind == "choice":
        if value not in rule:
            raise SweepError(source, name, f"must be one of {', '.join(map(str, rule))}; got {value!r}")
    elif kind == "ints":
        if not isinstance(value, list) or not value:
            raise SweepError(source, name, f"must be a non-empty list of integers, got {describe_value(value)}")
        value = [check_value(source, name, "int", rule, v) for v in value]
        if len(set(value)) != len(value):
            raise SweepError(source, name, f"lists a value twice: {value}")
    return value


def check_axis(source: str, name: str, values: Any) -> list[Any]:
    if name not in axes.names():
        raise SweepError(source, f"axes.{name}", f"unknown axis; allowed axes: {', '.join(axes.names())}")
    kind, rule = axes.get(name).kind, axes.get(name).rule
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise SweepError(source, f"axes.{name}", "must list at least one value")
    checked = [check_value(source, f"axes.{name}", kind, rule, v) for v in values]
    if len(set(map(repr, checked))) != len(checked):
        raise SweepError(source, f"axes.{name}", f"lists a value twice: {checked}")
    return checked


def parse_set_value(source: str, key: str, raw: str) -> Any:
    """``[1,16]`` / ``16`` / ``true`` / ``"x"`` as TOML; else bare words, comma-separated (``bfloat16``, ``1,2,4``)."""
    if not raw:
        raise SweepError(source, key, "no value given after '='")
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    except RecursionError:
        raise SweepError(source, key, "value nested too deeply to read") from None
    items = [item.strip() for item in raw.strip("[]").split(",")]
    parsed: list[Any] = []
    for item in items:
        if not item:
            raise SweepError(source, key, f"empty item in {raw!r}")
        try:
            parsed.append(tomllib.loads(f"v = {item}")["v"])
        except tomllib.TOMLDecodeError:
            parsed.append(item)  # a bare word: a dtype, a mode, a device, an implementation glob
    return parsed if len(parsed) > 1 or "," in raw or raw.startswith("[") else parsed[0]
