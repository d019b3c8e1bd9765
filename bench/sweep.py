"""Sweep definitions: TOML files of axes (lists of values), validated on load, expanded into points.

A sweep file (``bench/sweeps/*.toml`` or any path)::

    description = "what this sweep shows"
    implementations = ["*"]          # registry names or globs
    pair = "depth"                   # how a stacked LSTM is paired with a tLSTM point: "depth" | "params"
    seed = 0
    plugins = []                     # modules (or .py paths) to import first; they may register implementations

    [budget]
    repeats = 5                      # timed calls per point (one call = one whole sequence), at least
    min_time_s = 0.0                 # ... and more calls until the timed ones add up to this
    warmup = 2                       # untimed calls before them
    timeout_s = 120                  # per point, gate + warm-up + timing + memory pass
    energy = true                    # measure energy (NVML / RAPL) over a >= 1 s window when readable
    threads = 0                      # torch intra-op threads in the worker; 0 = torch's default
    processes = 1                    # worker processes each point is measured in (rounds interleaved)
    oversubscribe = false            # allow threads above the machine's cores

    [axes]                           # every combination is one point per implementation
    tensor_size = [1, 2, 4, 8]       # P for tLSTMs; or `depth = [...]` (L) instead
    seq_len = [32, 128]
    ...

Data flow: ``load_sweep`` (file -> Sweep) -> ``Sweep.with_overrides`` (``--set``) -> ``Sweep.points()``
(the cross product, one ``bench.contract.Point`` per implementation and combination of the axes).
Every error raises :class:`SweepError` naming the file, the field and the allowed values.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import importlib
import importlib.util
import itertools
import math
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import contract
from .contract import DTYPES, MODES, Point

SWEEPS_DIR = Path(__file__).parent / "sweeps"

DEVICES = ("auto", *contract.DEVICES)
NORMS = ("none", "cn")
PAIRS = ("depth", "params")

# Axis name -> (kind, minimum or allowed values, default values). Order here is the expansion order:
# the last axes vary fastest, and the implementation varies fastest of all so that implementations are
# measured interleaved, close together in time.
# Numbers carry (minimum, maximum): the maxima keep a typo from asking the machine for the impossible
# (sizes whose tensors would not fit are refused separately, from an estimate of their memory).
AXES: dict[str, tuple[str, Any, list[Any] | None]] = {
    "device": ("choice", DEVICES, ["auto"]),
    "dtype": ("choice", DTYPES, ["float32"]),
    "mode": ("choice", MODES, ["training"]),
    "input_size": ("int", (1, 65536), [64]),
    "channels": ("int", (1, 65536), [64]),
    "kernel_size": ("int", (2, 64), [3]),
    "mem_conv": ("bool", None, [True]),
    "norm": ("choice", NORMS, ["none"]),
    "batch": ("int", (1, 1 << 20), [16]),
    "seq_len": ("int", (1, 1 << 20), [64]),
    "tensor_size": ("int", (1, 4096), None),
    "depth": ("int", (1, 4096), None),
}
SIZE_AXES = ("tensor_size", "depth")
BUDGET: dict[str, tuple[str, Any, Any]] = {
    "repeats": ("int", (1, 100_000), 5),
    "min_time_s": ("float", (0.0, 3600.0), 0.0),
    "warmup": ("int", (0, 10_000), 2),
    "timeout_s": ("float", (0.1, 86_400.0), 300.0),
    "energy": ("bool", None, True),
    "threads": ("int", (0, 1024), 0),  # and at most the machine's cores, unless oversubscribe = true
    "oversubscribe": ("bool", None, False),
    "processes": ("int", (1, 16), 1),
}
SEED_RANGE = (0, 2**32 - 1)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TOP_LEVEL = ("name", "description", "implementations", "pair", "seed", "plugins", "budget", "axes")
# Fields --set may override besides the axes.
SETTABLE_SCALARS = ("implementations", "pair", "seed", "plugins", *BUDGET)


class SweepError(ValueError):
    """A sweep file or override is invalid. ``str()`` names the source, the field and what is allowed."""

    def __init__(self, source: str, field_name: str, message: str) -> None:
        self.source, self.field_name, self.detail = source, field_name, message
        super().__init__(f"{source}: {field_name}: {message}")


def shipped_sweeps() -> dict[str, Path]:
    """Name -> path of the sweeps shipped in ``bench/sweeps``."""
    return {p.stem: p for p in sorted(SWEEPS_DIR.glob("*.toml"))}


def resolve_sweep_path(name_or_path: str) -> Path:
    """A shipped sweep's name (``quick``) or a path to a ``.toml`` file."""
    shipped = shipped_sweeps()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".toml" or os.sep in name_or_path:
        if not path.is_file():
            raise SweepError(name_or_path, "SWEEP", "no such file")
        return path
    allowed = ", ".join(shipped) or "(none shipped)"
    raise SweepError(name_or_path, "SWEEP", f"not a shipped sweep or a .toml path; shipped sweeps: {allowed}")


# ---------------------------------------------------------------------------------------------------
# validation of single values


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_value(source: str, name: str, kind: str, rule: Any, value: Any) -> Any:
    if kind == "int":
        lo, hi = rule
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise SweepError(source, name, f"must be an integer >= {lo} and <= {hi:,}, got {_describe(value)}")
    elif kind == "float":
        lo, hi = rule
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not lo <= value <= hi):
            raise SweepError(source, name, f"must be a finite number >= {lo:g} and <= {hi:g}, got {_describe(value)}")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise SweepError(source, name, f"must be true or false, got {_describe(value)}")
    elif kind == "choice":
        if value not in rule:
            raise SweepError(source, name, f"must be one of {', '.join(rule)}; got {value!r}")
    return value


def _check_axis(source: str, name: str, values: Any) -> list[Any]:
    if name not in AXES:
        raise SweepError(source, f"axes.{name}", f"unknown axis; allowed axes: {', '.join(AXES)}")
    kind, rule, _ = AXES[name]
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise SweepError(source, f"axes.{name}", "must list at least one value")
    checked = [_check_value(source, f"axes.{name}", kind, rule, v) for v in values]
    if len(set(map(repr, checked))) != len(checked):
        raise SweepError(source, f"axes.{name}", f"lists a value twice: {checked}")
    return checked


# ---------------------------------------------------------------------------------------------------
# plugins: modules that register implementations, imported by the CLI and by every worker


def import_plugins(plugins: list[str], base_dir: Path | None = None, source: str = "sweep") -> None:
    """Import each plugin: an importable module name (``my_package.tlstm``) or a ``.py`` path (relative to
    ``base_dir``, the sweep file's folder). Nothing else is imported: the current directory is not put on
    ``sys.path``, so a stray ``reports.py`` where the user runs is never executed."""
    for plugin in plugins:
        try:
            if plugin.endswith(".py"):
                path = Path(plugin)
                if not path.is_absolute() and base_dir is not None:
                    path = base_dir / path
                path = path.resolve()
                module_name = "tlstm_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
                if module_name in sys.modules:  # importing twice would register twice
                    continue
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise FileNotFoundError(f"no such file {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(plugin)
        except SystemExit as exc:
            raise SweepError(source, "plugins", f"importing {plugin!r} called sys.exit({exc.code!r})") from None
        except Exception as exc:
            raise SweepError(source, "plugins", f"cannot import {plugin!r}: {exc!r}") from exc


# ---------------------------------------------------------------------------------------------------
# the sweep


@dataclass
class Sweep:
    """A validated sweep: scalar settings, a budget and axes (name -> list of values)."""

    name: str
    source: str
    description: str = ""
    implementations: list[str] = field(default_factory=lambda: ["*"])
    pair: str = "depth"
    seed: int = 0
    plugins: list[str] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    base_dir: str | None = None
    overrides: list[str] = field(default_factory=list)

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, name: str, source: str, base_dir: Path | None = None) -> Sweep:
        """Validate a parsed sweep file (everything except implementation names, see ``check_implementations``)."""
        unknown = sorted(set(data) - set(TOP_LEVEL))
        if unknown:
            raise SweepError(source, unknown[0], f"unknown field; allowed fields: {', '.join(TOP_LEVEL)}")
        sweep = cls(name=name, source=source, base_dir=str(base_dir) if base_dir else None)
        if "name" in data:
            if not isinstance(data["name"], str) or not NAME_PATTERN.fullmatch(data["name"]):
                raise SweepError(source, "name", "must be 1-100 letters, digits, '.', '_' or '-' (it names the output "
                                 f"directory results/<name>-<time>), got {_describe(data['name'])}")
            sweep.name = data["name"]
        if "description" in data:
            if not isinstance(data["description"], str):
                raise SweepError(source, "description", f"must be a string, got {_describe(data['description'])}")
            sweep.description = data["description"]
        for key in ("implementations", "pair", "seed", "plugins"):
            if key in data:
                sweep._set_scalar(source, key, data[key])
        budget = data.get("budget", {})
        if not isinstance(budget, dict):
            raise SweepError(source, "budget", f"must be a table ([budget]), got {_describe(budget)}")
        sweep.budget = {k: default for k, (_, _, default) in BUDGET.items()}
        for key, value in budget.items():
            sweep._set_scalar(source, f"budget.{key}", value)
        axes = data.get("axes")
        if not isinstance(axes, dict):
            raise SweepError(source, "axes",
                             f"must be a table ([axes]) with {' or '.join(SIZE_AXES)}, got {_describe(axes)}")
        sweep.axes = {name: _check_axis(source, name, values) for name, values in axes.items()}
        sweep._check_sizes(source)
        return sweep

    def _set_scalar(self, source: str, key: str, value: Any) -> None:
        bare = key.removeprefix("budget.")
        if key.startswith("budget.") or (bare in BUDGET and key == bare):
            if bare not in BUDGET:
                raise SweepError(source, key, f"unknown budget field; allowed: {', '.join(BUDGET)}")
            kind, rule, _ = BUDGET[bare]
            self.budget[bare] = _check_value(source, f"budget.{bare}", kind, rule, value)
        elif key == "implementations":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise SweepError(source, key, f"must be a non-empty list of names or globs, got {_describe(value)}")
            self.implementations = value
        elif key == "pair":
            self.pair = _check_value(source, key, "choice", PAIRS, value)
        elif key == "seed":
            self.seed = _check_value(source, key, "int", SEED_RANGE, value)
        elif key == "plugins":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise SweepError(source, key, f"must be a list of module names or .py paths, got {_describe(value)}")
            self.plugins = value
        else:  # pragma: no cover - callers pass known keys only
            raise SweepError(source, key, "unknown field")

    def _check_sizes(self, source: str) -> None:
        given = [a for a in SIZE_AXES if a in self.axes]
        if len(given) != 1:
            which = "both" if given else "neither"
            raise SweepError(
                source, "axes", f"give exactly one of tensor_size (P, tLSTM points) or depth (L); {which} given"
            )
        cores = os.cpu_count() or 1
        if self.budget.get("threads", 0) > cores and not self.budget.get("oversubscribe"):
            raise SweepError(source, "budget.threads", f"this machine has {cores} cores; threads must be from 0 "
                             f"(torch's default) to {cores}, got {self.budget['threads']} (set budget.oversubscribe "
                             "= true to allow more)")

    def with_overrides(self, overrides: list[str]) -> Sweep:
        """A copy with ``--set AXIS=VALUES`` applied (VALUES: a TOML value, a list, or comma-separated)."""
        sweep = copy.deepcopy(self)
        for text in overrides:
            source = f"--set {text}"
            if "=" not in text:
                raise SweepError(source, "--set",
                                 "expected AXIS=VALUES, e.g. --set batch=[1,16] or --set dtype=bfloat16")
            key, raw = (part.strip() for part in text.split("=", 1))
            value = parse_set_value(source, key, raw)
            if key in AXES:
                if key in SIZE_AXES:  # the size axis is replaced, not added beside the other one
                    for other in SIZE_AXES:
                        sweep.axes.pop(other, None)
                sweep.axes[key] = _check_axis(source, key, value)
            elif key in SETTABLE_SCALARS:
                if key in ("implementations", "plugins") and isinstance(value, str):
                    value = [value]
                sweep._set_scalar(source, key, value)
            else:
                allowed = ", ".join([*AXES, *SETTABLE_SCALARS])
                raise SweepError(source, key, f"unknown axis or setting; allowed: {allowed}")
            sweep.overrides.append(text)
        sweep._check_sizes("--set")
        return sweep

    # -- implementations ----------------------------------------------------------------------------

    def load_plugins(self) -> None:
        import_plugins(self.plugins, Path(self.base_dir) if self.base_dir else None, self.source)

    def implementation_names(self) -> list[str]:
        """The registered names the sweep selects (plugins imported first); unknown names are refused."""
        import implementations

        self.load_plugins()
        registered = implementations.names()
        selected: list[str] = []
        for pattern in self.implementations:
            matched = [n for n in registered if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise SweepError(
                    self.source,
                    "implementations",
                    f"{pattern!r} matches no registered implementation; registered: {', '.join(registered)}",
                )
            selected += [n for n in matched if n not in selected]
        return selected

    # -- expansion ----------------------------------------------------------------------------------

    def axis_values(self) -> dict[str, list[Any]]:
        """Every axis with its values (defaults filled in), in expansion order."""
        values = {}
        for name, (_, _, default) in AXES.items():
            if name in self.axes:
                values[name] = self.axes[name]
            elif default is not None:
                values[name] = default
        return values

    def points(self, cuda_available: bool | None = None) -> list[Point]:
        """The cross product of the axes and the implementations, implementations varying fastest."""
        import implementations
        from implementations import ModelConfig, lstm_param_count, tlstm_depth, tlstm_param_count

        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        names = self.implementation_names()
        axes = self.axis_values()
        size_axis = "tensor_size" if "tensor_size" in axes else "depth"
        order = list(axes)
        points: list[Point] = []
        for combo in itertools.product(*(axes[a] for a in order)):
            values = dict(zip(order, combo))
            device = values["device"]
            if device == "auto":
                device = "cuda" if cuda_available else "cpu"
            kernel_size, channels = values["kernel_size"], values["channels"]
            norm = None if values["norm"] == "none" else values["norm"]
            if size_axis == "tensor_size":
                tensor_size = values["tensor_size"]
                depth = tlstm_depth(tensor_size, kernel_size)
            else:
                depth = values["depth"]
                # the largest P whose derived depth is L: P = L * (K // 2)
                tensor_size = depth * (kernel_size // 2)
            for name in names:
                family = implementations.get(name).family
                width = channels
                if family == "lstm" and self.pair == "params":
                    target = tlstm_param_count(
                        ModelConfig(values["input_size"], channels, tensor_size, kernel_size, values["mem_conv"], norm)
                    )
                    width = width_for_params(values["input_size"], depth, target, lstm_param_count)
                point = Point(
                    impl=name,
                    family=family,
                    # a stacked LSTM has no tensor size: it keeps P only when paired with a tLSTM's P
                    tensor_size=tensor_size if family == "tlstm" or size_axis == "tensor_size" else None,
                    depth=depth,
                    seq_len=values["seq_len"],
                    batch=values["batch"],
                    channels=width,
                    input_size=values["input_size"],
                    kernel_size=kernel_size,
                    mem_conv=values["mem_conv"],
                    norm=norm,
                    dtype=values["dtype"],
                    mode=values["mode"],
                    device=device,
                    repeats=self.budget["repeats"],
                    warmup=self.budget["warmup"],
                    seed=self.seed,
                )  # fmt: skip
                _check_fits(self.source, point)
                points.append(point)
        return points

    def as_dict(self) -> dict[str, Any]:
        """The sweep as written to ``<out>/sweep.json`` (the report reads it back from ``df.attrs``)."""
        return {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "implementations": self.implementations,
            "pair": self.pair,
            "seed": self.seed,
            "plugins": self.plugins,
            "budget": self.budget,
            "axes": self.axis_values(),
            "overrides": self.overrides,
            "base_dir": self.base_dir,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sweep:
        """The sweep back from its ``as_dict()`` (in ``sweep.json``), without re-reading its file."""
        sweep = cls.from_dict({"implementations": data["implementations"], "pair": data["pair"], "seed": data["seed"],
                               "plugins": data["plugins"], "budget": data["budget"], "axes": data["axes"],
                               "description": data.get("description", "")},
                              name=data["name"], source=data["source"],
                              base_dir=Path(data["base_dir"]) if data.get("base_dir") else None)
        sweep.overrides = list(data.get("overrides", []))
        return sweep


def _memory_bytes(device: str) -> int | None:
    """The memory of the device a point runs on: RAM (MemTotal) or the GPU's; None where unknown."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    from .measure import proc_field

    total = proc_field("/proc/meminfo", "MemTotal")  # "24588492 kB"
    return int(total.split()[0]) * 1024 if total else None


def _check_fits(source: str, point: Point) -> None:
    """Refuse a point whose tensors cannot fit in the device's memory, before anything runs."""
    need = point.memory_floor_bytes()
    have = _memory_bytes(point.device)
    if have is not None and need > have:
        raise SweepError(source, "axes", f"{point.describe()} needs at least {need / 2**30:.1f} GiB (the "
                         f"activations it must hold, estimated from its sizes) but the {point.device} has "
                         f"{have / 2**30:.1f} GiB; make batch, seq_len, channels or the size axis smaller")


def width_for_params(input_size: int, depth: int, target: int, count) -> int:
    """The stacked-LSTM width M whose parameter count (``count(ModelConfig)``) is closest to ``target``."""
    from implementations import ModelConfig

    def params(width: int) -> int:
        return count(ModelConfig(input_size, width, depth=depth))

    # the count grows with the width: bisect for the first width at or above the target
    lo, hi = 1, 1
    while params(hi) < target:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if params(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    below = max(lo - 1, 1)
    return below if abs(params(below) - target) <= abs(params(lo) - target) else lo


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


def load_sweep(name_or_path: str, overrides: list[str] | None = None) -> Sweep:
    """Load, validate and (with ``overrides``) adjust a sweep; implementation names checked too."""
    path = resolve_sweep_path(name_or_path)
    source = str(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SweepError(source, "TOML", f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
                         ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(source, "TOML", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise SweepError(source, "TOML", "nested too deeply to read") from None
    except OSError as exc:
        raise SweepError(source, "SWEEP", f"cannot read it: {exc.strerror or exc}") from None
    sweep = Sweep.from_dict(data, name=path.stem, source=source, base_dir=path.parent)
    if overrides:
        sweep = sweep.with_overrides(overrides)
    sweep.implementation_names()  # refuse unknown names now, before anything runs
    return sweep
