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
    variant = ["tLSTM", "tLSTM-M"]   # the paper's names, instead of kernel_size / mem_conv / norm / dims
    dims = [2, 3]                    # 3: the 3D tLSTM (P x P locations)
    ...

A training sweep (``bench.train``: what a model buys) has a ``[train]`` table instead of the timing
axes and budget (see ``TRAIN``): each point is one model trained on one task from one seed::

    pair = "params"                  # each model's width M chosen so its total parameters are closest to `params`
    [train]
    task = "memorization"            # or "addition" (digits = D)
    length = 8                       # S symbols ...
    alphabet = 4                     # ... from an alphabet of V
    seeds = [0, 1]
    [axes]
    depth = [1, 2, 4, 8]
    params = [20000]                 # the parameter budget (core + task head)

Data flow: ``load_sweep`` (file -> Sweep) -> ``Sweep.with_overrides`` (``--set``) -> ``Sweep.points()``
(the cross product, one ``bench.contract.Point`` per implementation and combination of the axes).
Every error raises :class:`SweepError` naming the file, the field and the allowed values.
"""

from __future__ import annotations

import copy
import dataclasses
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
from .contract import DTYPES, MODES, Point, TrainSpec

SWEEPS_DIR = Path(__file__).parent / "sweeps"

DEVICES = ("auto", *contract.DEVICES)
NORMS = ("none", "cn")
PAIRS = ("depth", "params")
# The paper's variants by name: (kernel_size, mem_conv, norm, dims). -F: K = 2 (no feedback); -M: no
# memory-cell convolution; +CN: channel normalization; 3D: P x P locations.
VARIANTS: dict[str, tuple[int, bool, str, int]] = {
    f"{'3D ' if dims == 3 else ''}tLSTM{'-F' if k == 2 else ''}{'' if mem else '-M'}{'+CN' if norm == 'cn' else ''}":
        (k, mem, norm, dims)
    for dims in (2, 3) for k in (3, 2) for mem in (True, False) for norm in ("none", "cn")
}  # fmt: skip
SWITCH_AXES = ("kernel_size", "mem_conv", "norm", "dims")

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
    "dims": ("choice", (2, 3), [2]),
    "batch": ("int", (1, 1 << 20), [16]),
    "seq_len": ("int", (1, 1 << 20), [64]),
    "variant": ("choice", tuple(VARIANTS), None),
    "tensor_size": ("int", (1, 4096), None),
    "depth": ("int", (1, 4096), None),
    "params": ("int", (1, 10**10), None),
}
SIZE_AXES = ("tensor_size", "depth")
MAX_WIDTH = AXES["channels"][1][1]
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
# A training sweep's [train] table: field -> (kind, rule, default); a None default is required (the task)
# or needed by the task (its sizes).
TRAIN: dict[str, tuple[str, Any, Any]] = {
    "task": ("choice", ("addition", "memorization"), None),
    "digits": ("int", (1, 18), None),  # addition: D
    "length": ("int", (1, 10_000), None),  # memorization: S ...
    "alphabet": ("int", (2, 10_000), None),  # ... from V symbols
    "seeds": ("ints", SEED_RANGE, [0]),  # one training run per seed (initialization and training data)
    "optimizer": ("choice", ("adam",), "adam"),
    "lr": ("float", (1e-7, 10.0), 1e-3),
    "batch": ("int", (1, 65536), 32),
    "clip": ("float", (0.0, 1e6), 1.0),  # gradient-norm clipping; 0 = none
    "eval_every": ("int", (1, 10**9), 2048),  # training samples between evaluations
    "eval_samples": ("int", (1, 1 << 20), 1024),  # held-out sequences
    "max_samples": ("int", (1, 10**12), 1_000_000),
    "max_time_s": ("float", (0.1, 7 * 86_400.0), 600.0),  # training time, evaluations excluded
    "solve_at": ("float", (0.01, 1.0), 0.99),  # held-out symbol accuracy that counts as solved
    "stop_when_solved": ("bool", None, True),
}
# Fields that only mean something for one kind of sweep: a timing sweep times calls on random inputs of
# these sizes; a training sweep's sequences, batch and input come from its task.
TIMING_ONLY_AXES = ("seq_len", "batch", "input_size", "mode")
TIMING_ONLY_BUDGET = ("repeats", "min_time_s", "warmup", "energy", "processes")
TRAINING_ONLY_AXES = ("params",)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TOP_LEVEL = ("name", "description", "implementations", "pair", "seed", "plugins", "budget", "axes", "train")
# Fields --set may override besides the axes (and, in a training sweep, train.<field>).
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
            raise SweepError(source, name, f"must be one of {', '.join(map(str, rule))}; got {value!r}")
    elif kind == "ints":
        if not isinstance(value, list) or not value:
            raise SweepError(source, name, f"must be a non-empty list of integers, got {_describe(value)}")
        value = [_check_value(source, name, "int", rule, v) for v in value]
        if len(set(value)) != len(value):
            raise SweepError(source, name, f"lists a value twice: {value}")
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
    train: dict[str, Any] | None = None  # a training sweep's [train] table, defaults filled in

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
        axes = data.get("axes")
        if not isinstance(axes, dict):
            raise SweepError(source, "axes",
                             f"must be a table ([axes]) with {' or '.join(SIZE_AXES)}, got {_describe(axes)}")
        if "train" in data:
            sweep._set_train(source, data["train"])
            misplaced = [f"axes.{a}" for a in TIMING_ONLY_AXES if a in axes]
            misplaced += [f"budget.{b}" for b in TIMING_ONLY_BUDGET if b in budget]
            if misplaced:
                budget_fields = ", ".join(f"budget.{b}" for b in TIMING_ONLY_BUDGET)
                raise SweepError(source, misplaced[0], "only for timing sweeps; a training sweep ([train]) takes its "
                                 "sequences, batch and input from its task and times nothing, so it allows no "
                                 f"{', '.join(TIMING_ONLY_AXES)} axis and no {budget_fields} (the batch is "
                                 "train.batch)")
            if "pair" not in data:
                sweep.pair = "params"
        else:
            misplaced = [f"axes.{a}" for a in TRAINING_ONLY_AXES if a in axes]
            if misplaced:
                raise SweepError(source, misplaced[0], "only for training sweeps (with a [train] table): the parameter "
                                 "budget each trained model's width is chosen for; a timing sweep with pair = "
                                 '"params" gives each stacked LSTM the parameter count of its tLSTM')
        sweep.budget = {k: default for k, (_, _, default) in BUDGET.items()}
        for key, value in budget.items():
            sweep._set_scalar(source, f"budget.{key}", value)
        if sweep.train is not None and "timeout_s" not in budget:  # a run may train for max_time_s, then evaluate
            sweep.budget["timeout_s"] = 2 * sweep.train["max_time_s"] + 120
        sweep.axes = {name: _check_axis(source, name, values) for name, values in axes.items()}
        sweep._check_sizes(source)
        return sweep

    def _set_train(self, source: str, table: Any) -> None:
        """Validate a [train] table (defaults filled in) and its task's sizes."""
        from .tasks import TaskError, make_task

        if not isinstance(table, dict):
            raise SweepError(source, "train", f"must be a table ([train]), got {_describe(table)}")
        unknown = sorted(set(table) - set(TRAIN))
        if unknown:
            raise SweepError(source, f"train.{unknown[0]}", f"unknown field; allowed: {', '.join(TRAIN)}")
        if "task" not in table:
            raise SweepError(source, "train.task", f"required; one of {', '.join(TRAIN['task'][1])}")
        train = {k: default for k, (_, _, default) in TRAIN.items()}
        for key, value in table.items():
            kind, rule, _ = TRAIN[key]
            train[key] = _check_value(source, f"train.{key}", kind, rule, value)
        sizes = {"addition": ("digits",), "memorization": ("length", "alphabet")}
        for name in sizes[train["task"]]:
            if train[name] is None:
                raise SweepError(source, f"train.{name}", f"required by task {train['task']!r} "
                                 f"(an integer from {TRAIN[name][1][0]} to {TRAIN[name][1][1]:,})")
        for name in {"digits", "length", "alphabet"} - set(sizes[train["task"]]):
            if train[name] is not None:
                raise SweepError(source, f"train.{name}", f"not a size of task {train['task']!r}; it takes "
                                 f"{' and '.join(sizes[train['task']])}")
        try:
            make_task(train["task"], digits=train["digits"], length=train["length"], alphabet=train["alphabet"])
        except TaskError as exc:
            raise SweepError(source, "train", str(exc)) from None
        self.train = train

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
        if "variant" in self.axes:
            both = [a for a in SWITCH_AXES if a in self.axes]
            if both:
                raise SweepError(source, f"axes.{both[0]}", "give the variant axis or the switches it sets "
                                 f"({', '.join(SWITCH_AXES)}), not both")
        if self.train is not None:
            if self.pair == "params" and "params" not in self.axes:
                raise SweepError(source, "axes.params", 'pair = "params" needs the parameter budget: axes.params = '
                                 '[N, ...] (or pair = "depth" with axes.channels)')
            if self.pair == "params" and "channels" in self.axes:
                raise SweepError(source, "axes.channels", 'with pair = "params" each model\'s width is chosen from '
                                 'axes.params; remove axes.channels (or set pair = "depth")')
            if self.pair == "depth" and "params" in self.axes:
                raise SweepError(source, "axes.params", 'a parameter budget needs pair = "params"; with pair = "depth" '
                                 "every model has the width in axes.channels")
        cores = os.cpu_count() or 1
        if self.budget.get("threads", 0) > cores and not self.budget.get("oversubscribe"):
            raise SweepError(source, "budget.threads", f"this machine has {cores} cores; threads must be from 0 "
                             f"(torch's default) to {cores}, got {self.budget['threads']} (set budget.oversubscribe "
                             "= true to allow more)")

    def with_overrides(self, overrides: list[str]) -> Sweep:
        """A copy with ``--set AXIS=VALUES`` applied (VALUES: a TOML value, a list, or comma-separated).
        ``train.FIELD`` overrides are applied together and checked as a whole, so that ``--set train.task=addition
        --set train.digits=3`` switches the task (the old task's sizes are dropped)."""
        sweep = copy.deepcopy(self)
        train_sets: dict[str, Any] = {}
        train_texts: list[str] = []
        for text in overrides:
            source = f"--set {text}"
            if "=" not in text:
                raise SweepError(source, "--set",
                                 "expected AXIS=VALUES, e.g. --set batch=[1,16] or --set dtype=bfloat16")
            key, raw = (part.strip() for part in text.split("=", 1))
            value = parse_set_value(source, key, raw)
            if sweep.train is not None and (key in TIMING_ONLY_AXES or key in TIMING_ONLY_BUDGET):
                raise SweepError(source, key, "only for timing sweeps; this is a training sweep ([train]): its "
                                 "sequences, batch and input come from its task (set train.batch for the batch)")
            if sweep.train is None and key in TRAINING_ONLY_AXES:
                raise SweepError(source, key, "only for training sweeps (with a [train] table)")
            if key in AXES:
                if key in SIZE_AXES:  # the size axis is replaced, not added beside the other one
                    for other in SIZE_AXES:
                        sweep.axes.pop(other, None)
                if key == "variant":  # the variants replace the switches they set
                    for other in SWITCH_AXES:
                        sweep.axes.pop(other, None)
                sweep.axes[key] = _check_axis(source, key, value)
            elif key in SETTABLE_SCALARS:
                if key in ("implementations", "plugins") and isinstance(value, str):
                    value = [value]
                sweep._set_scalar(source, key, value)
            elif key.startswith("train.") and sweep.train is not None:
                if key.removeprefix("train.") == "seeds" and not isinstance(value, list):
                    value = [value]
                train_sets[key.removeprefix("train.")] = value
                train_texts.append(source)
            else:
                allowed = ", ".join([*AXES, *SETTABLE_SCALARS, *(f"train.{k}" for k in TRAIN if sweep.train)])
                raise SweepError(source, key, f"unknown axis or setting; allowed: {allowed}")
            sweep.overrides.append(text)
        if train_sets:
            assert sweep.train is not None
            table = {k: v for k, v in sweep.train.items() if v is not None and v != TRAIN[k][2]}
            table["task"] = sweep.train["task"]
            if train_sets.get("task", table["task"]) != table["task"]:  # a new task: the old one's sizes go
                for size in ("digits", "length", "alphabet"):
                    table.pop(size, None)
            sweep._set_train(", ".join(train_texts), {**table, **train_sets})
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
            elif default is not None and not (self.train is not None and name in TIMING_ONLY_AXES) \
                    and not ("variant" in self.axes and name in SWITCH_AXES) \
                    and not (self.train is not None and self.pair == "params" and name == "channels"):
                values[name] = default
        return values

    def points(self, cuda_available: bool | None = None) -> list[Point]:
        """The cross product of the axes and the implementations (and, in a training sweep, the seeds),
        implementations varying fastest. A point that would repeat one already listed (a stacked LSTM
        across tLSTM variants, which it does not have) is listed once."""
        import implementations
        from implementations import ModelConfig, tlstm_depth

        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        names = self.implementation_names()
        axes = self.axis_values()
        size_axis = "tensor_size" if "tensor_size" in axes else "depth"
        order = list(axes)
        task = self._task()
        seeds = self.train["seeds"] if self.train is not None else [self.seed]
        points: list[Point] = []
        seen: set[str] = set()
        for combo in itertools.product(*(axes[a] for a in order)):
            values = dict(zip(order, combo))
            if "variant" in values:
                values["kernel_size"], values["mem_conv"], values["norm"], values["dims"] = VARIANTS[values["variant"]]
            device = values["device"]
            if device == "auto":
                device = "cuda" if cuda_available else "cpu"
            kernel_size, channels = values["kernel_size"], values.get("channels")
            norm = None if values["norm"] == "none" else values["norm"]
            if size_axis == "tensor_size":
                tensor_size = values["tensor_size"]
                depth = tlstm_depth(tensor_size, kernel_size)
            else:
                depth = values["depth"]
                # the largest P whose derived depth is L: P = L * (K // 2)
                tensor_size = depth * (kernel_size // 2)
            input_size = task.input_symbols if task is not None else values["input_size"]
            for seed in seeds:
                for name in names:
                    family = implementations.get(name).family
                    switches = (kernel_size, values["mem_conv"], norm)
                    dims = values["dims"] if family == "tlstm" else 2  # a stacked LSTM has no dims
                    if family == "lstm" and (task is not None or "variant" in values):
                        switches = (3, True, None)  # nor any of the tLSTM's switches
                    config = ModelConfig(input_size, 1, tensor_size if family == "tlstm" else None, *switches,
                                         depth=None if family == "tlstm" else depth, dims=dims)

                    def count(width: int, name=name, config=config) -> int:
                        head = task.output_symbols * (width + 1) if task is not None else 0  # bench.train's read-out
                        return implementations.param_count(name, dataclasses.replace(config, channels=width)) + head

                    width = channels
                    if task is not None and self.pair == "params":
                        width = self._width_for_budget(count, values["params"], name)
                    elif task is None and family == "lstm" and self.pair == "params":
                        target = implementations.param_count(
                            "tlstm_naive", ModelConfig(input_size, channels, tensor_size, *switches,
                                                       dims=values["dims"]))
                        width = width_for_budget(count, target)
                    point = Point(
                        impl=name,
                        family=family,
                        # a stacked LSTM has no tensor size: it keeps P only when paired with a tLSTM's P
                        tensor_size=tensor_size if family == "tlstm" or size_axis == "tensor_size" else None,
                        depth=depth,
                        seq_len=task.seq_len if task is not None else values["seq_len"],
                        batch=self.train["batch"] if task is not None else values["batch"],
                        channels=width,
                        input_size=input_size,
                        kernel_size=switches[0],
                        mem_conv=switches[1],
                        norm=switches[2],
                        dtype=values["dtype"],
                        mode="training" if task is not None else values["mode"],
                        device=device,
                        repeats=0 if task is not None else self.budget["repeats"],
                        warmup=0 if task is not None else self.budget["warmup"],
                        seed=seed,
                        dims=dims,
                        train=self._train_spec(values.get("params") if self.pair == "params" else None),
                    )  # fmt: skip
                    if point.key in seen:
                        continue
                    seen.add(point.key)
                    _check_fits(self.source, point)
                    points.append(point)
        return points

    def _task(self):
        """The training sweep's task (``bench.tasks.Task``); None for a timing sweep."""
        if self.train is None:
            return None
        from .tasks import make_task

        t = self.train
        return make_task(t["task"], digits=t["digits"], length=t["length"], alphabet=t["alphabet"])

    def _train_spec(self, params_budget: int | None) -> TrainSpec | None:
        if self.train is None:
            return None
        settings = {k: v for k, v in self.train.items() if k not in ("seeds", "batch")}
        return TrainSpec(**settings, params_budget=params_budget)

    def _width_for_budget(self, count, budget: int, name: str) -> int:
        smallest, largest = count(1), count(MAX_WIDTH)
        if budget < smallest:
            raise SweepError(self.source, "axes.params", f"the budget {budget:,} is below the smallest {name} model "
                             f"(width M = 1 has {smallest:,} parameters with the task head); the budget must be at "
                             f"least {smallest:,}")
        if budget > largest:
            raise SweepError(self.source, "axes.params", f"the budget {budget:,} is above the largest {name} model "
                             f"(width M = {MAX_WIDTH:,} has {largest:,} parameters with the task head)")
        return width_for_budget(count, budget)

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
            "budget": {k: v for k, v in self.budget.items()
                       if not (self.train is not None and k in TIMING_ONLY_BUDGET)},
            "axes": self.axis_values(),
            "overrides": self.overrides,
            "base_dir": self.base_dir,
            "train": {k: v for k, v in self.train.items() if v is not None} if self.train is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sweep:
        """The sweep back from its ``as_dict()`` (in ``sweep.json``), without re-reading its file."""
        sweep = cls.from_dict({"implementations": data["implementations"], "pair": data["pair"], "seed": data["seed"],
                               "plugins": data["plugins"], "budget": data["budget"], "axes": data["axes"],
                               "description": data.get("description", ""),
                               **({"train": data["train"]} if data.get("train") else {})},
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
    smaller = "params or train.batch" if point.train is not None else "batch, seq_len, channels or the size axis"
    if have is not None and need > have:
        raise SweepError(source, "axes", f"{point.describe()} needs at least {need / 2**30:.1f} GiB (the "
                         f"activations it must hold, estimated from its sizes) but the {point.device} has "
                         f"{have / 2**30:.1f} GiB; make {smaller} smaller")


def width_for_budget(params, target: int) -> int:
    """The width M (1 .. MAX_WIDTH) whose parameter count ``params(M)`` (growing with M) is closest to ``target``."""
    # bisect for the first width at or above the target
    lo, hi = 1, 1
    while params(hi) < target and hi < MAX_WIDTH:
        lo, hi = hi, min(hi * 2, MAX_WIDTH)
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
