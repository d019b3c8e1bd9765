"""The one table of axes: every dimension a point can vary along, with what the rest of the suite does with it.

Each :class:`Axis` gives a name, its kind and allowed values, the sweep's default, a short letter for
labels ("T=64") and its roles. Everything else is derived from this table and names no axis itself:

- sweep validation and expansion (``bench.sweep``): kinds, rules, defaults, which sweeps take it;
- the point (``bench.contract.Point``): one field per axis that is not sweep-only, in table order, with
  the value a record written before the axis existed means (``absent``), which also keeps older keys;
- ``runner.comparison_groups``: the axes with the ``group`` role;
- the report: its slices (``slice``), the keys speedups are matched on (``match``), the tLSTM switches
  that name a variant (``switch``), figure facets (``facet_row`` / ``facet_col``), the results columns
  (numeric kinds) and every label (``letter``).

A new axis is one entry here (plus, for a ``model`` axis, the field in ``implementations.ModelConfig``
that the models read). The variant names (tLSTM-M, 3D tLSTM+CN, ...) are encoded and decoded by one
pair of functions below. Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# roles
MODEL = "model"  # a ModelConfig field: it changes the model that is built
SWITCH = "switch"  # a tLSTM switch: set by the variant axis, meaningless for a stacked LSTM
TIMING = "timing"  # only in timing sweeps (a training sweep takes it from its task)
TRAINING = "training"  # only in training sweeps
SWEEP_ONLY = "sweep"  # a sweep axis that is not a point field (it sets point fields)
SIZE = "size"  # a sweep gives exactly one of the size axes
GROUP = "group"  # points that differ in it are in different comparison groups
SLICE = "slice"  # the report judges each of its values separately
MATCH = "match"  # speedups compare points equal in it
FACET_ROW = "facet_row"  # a timing figure has a row of panels per value
FACET_COL = "facet_col"  # ... and a column per value

ROLES = (MODEL, SWITCH, TIMING, TRAINING, SWEEP_ONLY, SIZE, GROUP, SLICE, MATCH, FACET_ROW, FACET_COL)

DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float64", "bfloat16", "float16")
MODES = ("inference", "training")
NORMS = ("none", "cn")
_ABSENT = object()  # an axis every record has had


@dataclass(frozen=True)
class Axis:
    """One axis. ``kind``: "int" (``rule`` = (min, max)), "bool" or "choice" (``rule`` = the allowed values).
    ``default``: the values a sweep takes when it does not give the axis (None: no default). ``absent``:
    the value meant by a record written before the axis existed (the point's key leaves the axis out at
    that value). ``letter``: the short name in labels; ``title``: the long one, for axis titles."""

    name: str
    kind: str
    rule: Any
    default: tuple[Any, ...] | None
    roles: frozenset[str]
    letter: str = ""
    title: str = ""
    absent: Any = _ABSENT
    doc: str = ""

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def optional(self) -> bool:
        """Absent from records written before it existed."""
        return self.absent is not _ABSENT

    def label(self, value: Any) -> str:
        """'T=64', 'float32', 'cn' -- how a value of this axis reads in a label."""
        text = fmt_value(value)
        return f"{self.letter}={text}" if self.letter else text


def _axis(name: str, kind: str, rule: Any, default: tuple | None, roles: str, letter: str = "", title: str = "",
          absent: Any = _ABSENT, doc: str = "") -> Axis:
    return Axis(name, kind, rule, default, frozenset(roles.split()), letter, title or name, absent, doc)


# Order is the expansion order (the last axes vary fastest; the implementation varies fastest of all) and the
# point's field order. The numeric maxima keep a typo from asking the machine for the impossible.
AXES: list[Axis] = [
    _axis("device", "choice", ("auto", *DEVICES), ("auto",), "group slice match facet_row",
          doc="auto: cuda where a GPU is available, else cpu"),
    _axis("dtype", "choice", DTYPES, ("float32",), "group slice match"),
    _axis("mode", "choice", MODES, ("training",), "timing group slice match facet_col",
          doc="inference: the forward; training: forward and backward"),
    _axis("kernel_size", "int", (2, 64), (3,), "model switch group", "K", "kernel size K"),
    _axis("mem_conv", "bool", None, (True,), "model switch group", doc="the memory-cell convolution"),
    _axis("norm", "choice", NORMS, ("none",), "model switch group", doc="cn: channel normalization"),
    _axis("dims", "choice", (2, 3), (2,), "model switch group", absent=2, doc="3: the 3D tLSTM (P x P locations)"),
    _axis("batch", "int", (1, 1 << 20), (16,), "timing group slice match facet_row", "B", "batch B"),
    _axis("seq_len", "int", (1, 1 << 20), (64,), "timing group slice match", "T", "sequence length T (steps)"),
    _axis("channels", "int", (1, 65536), (64,), "model slice match", "M", "channels M",
          doc="the width M; with pair = \"params\" chosen per model"),
    _axis("input_size", "int", (1, 65536), (64,), "model timing group slice match", "R", "input size R"),
    _axis("variant", "choice", None, None, "sweep", doc="the paper's names; sets the switches"),
    _axis("tensor_size", "int", (1, 4096), None, "model size", "P", "tensor size P",
          doc="P for a tLSTM (its depth derived)"),
    _axis("depth", "int", (1, 4096), None, "model size group match", "L", "depth L"),
    _axis("params", "int", (1, 10**10), None, "sweep training", doc="the parameter budget of each trained model"),
]


def get(name: str) -> Axis:
    for axis in AXES:
        if axis.name == name:
            return axis
    raise KeyError(f"unknown axis {name!r}; axes: {', '.join(names())}")


def names(role: str | None = None) -> tuple[str, ...]:
    """The axes' names in table order, or those with ``role``."""
    return tuple(a.name for a in AXES if role is None or role in a.roles)


def point_axes() -> tuple[Axis, ...]:
    """The axes that are fields of a point (every axis but the sweep-only ones)."""
    return tuple(a for a in AXES if SWEEP_ONLY not in a.roles)


def numeric(name: str) -> bool:
    return get(name).kind == "int" or (get(name).kind == "choice" and all(
        isinstance(v, int) and not isinstance(v, bool) for v in get(name).rule))


def letter(name: str) -> str:
    """The short name of an axis in labels ("T" for seq_len), or the name itself."""
    try:
        return get(name).letter or name
    except KeyError:
        return name


# ---------------------------------------------------------------------------------------------------
# values: missing, and numbers and names as text


def missing(value: Any) -> bool:
    """None or NaN (pandas' missing values in a frame of floats or objects)."""
    if value is None:
        return True
    try:
        return isinstance(value, float) and math.isnan(value)
    except TypeError:
        return False


def fmt_value(value: Any) -> str:
    """A value as a label shows it: integer-valued floats without '.0', missing as 'n/a'."""
    if missing(value):
        return "n/a"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fmt_int(value: Any) -> str:
    """An integer-valued number as '1,234'; missing as 'n/a'."""
    if missing(value):
        return "n/a"
    return f"{int(round(float(value))):,}"


def format_seconds(seconds: Any) -> str:
    """Seconds in the unit that keeps three significant digits readable (ns, µs, ms, s); missing as 'n/a'."""
    if missing(seconds):
        return "n/a"
    s = float(seconds)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def labels(where: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """'B=16, T=64, float32' for the axis values in ``where`` (table order; unknown keys after, by name)."""
    known = [a for a in AXES if a.name in where and a.name not in skip]
    rest = sorted(k for k in where if k not in names() and k not in skip)
    parts = [a.label(where[a.name]) for a in known] + [fmt_value(where[k]) for k in rest]
    return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------------
# the paper's variant names, both ways

_PLAIN_SWITCHES = {"kernel_size": 3, "mem_conv": True, "norm": None, "dims": 2}


def variant_switches(name: str) -> dict[str, Any]:
    """The switches a variant name sets: 'tLSTM-F-M+CN' -> K = 2, no memory-cell convolution, CN, 2D."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; variants: {', '.join(VARIANTS)}")
    return dict(VARIANTS[name])


def variant_name(switches: Any, family: str = "tlstm", shares_weights: bool = False) -> str:
    """The paper's name of a model from its switches (a mapping or an object with the switch attributes):
    tLSTM, tLSTM-M, tLSTM-F, tLSTM+CN, 3D tLSTM+CN, ...; sLSTM (or "sLSTM (shared)") for a stacked LSTM."""
    if family != "tlstm":
        return "sLSTM (shared)" if shares_weights else "sLSTM"

    def value(name: str) -> Any:
        v = switches.get(name) if isinstance(switches, dict) else getattr(switches, name, None)
        return _PLAIN_SWITCHES[name] if missing(v) else v

    name = "tLSTM-F" if value("kernel_size") == 2 else "tLSTM"
    if value("mem_conv") in (False, 0):
        name += "-M"
    if value("norm") == "cn":
        name += "+CN"
    return f"3D {name}" if value("dims") == 3 else name


def switch_id(switches: Any) -> str:
    """The switches away from the plain tLSTM as a short id suffix: "-3D-K2-M+CN" (K any kernel size); ""
    for the plain tLSTM. pytest-benchmark's test ids carry it, so it must not change."""

    def value(name: str) -> Any:
        v = switches.get(name) if isinstance(switches, dict) else getattr(switches, name, None)
        return _PLAIN_SWITCHES[name] if missing(v) else v

    return (("-3D" if value("dims") == 3 else "") + (f"-K{value('kernel_size')}" if value("kernel_size") != 3 else "")
            + ("-M" if not value("mem_conv") else "") + ("+CN" if value("norm") == "cn" else ""))


VARIANTS: dict[str, dict[str, Any]] = {}
for _dims in (2, 3):
    for _k in (3, 2):
        for _mem in (True, False):
            for _norm in (None, "cn"):
                _switches = {"kernel_size": _k, "mem_conv": _mem, "norm": _norm, "dims": _dims}
                VARIANTS[variant_name(_switches)] = _switches
AXES[[a.name for a in AXES].index("variant")] = Axis(**{**get("variant").__dict__, "rule": tuple(VARIANTS)})
PLAIN_VARIANTS = ("tLSTM", "sLSTM", "sLSTM (shared)")
