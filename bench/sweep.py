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
import itertools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import axes, tasks
from .contract import Point, TrainSpec
from .plugins import PluginError, import_plugins
from .sweep_values import SweepError, check_axis, check_value, describe_value, parse_set_value  # noqa: F401

SWEEPS_DIR = Path(__file__).parent / "sweeps"

PAIRS = ("depth", "params")
# Axis name -> (kind, minimum or allowed values, default values), from the one table of axes (bench.axes).
AXES: dict[str, tuple[str, Any, list[Any] | None]] = {
    a.name: (a.kind, a.rule, list(a.default) if a.default is not None else None) for a in axes.AXES}
SWITCH_AXES = axes.names(axes.SWITCH)
SIZE_AXES = axes.names(axes.SIZE)
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
    "workers": ("int", (1, 64), 1),  # training runs side by side, each in its own worker (training sweeps only)
}
SEED_RANGE = (0, 2**32 - 1)
# A training sweep's [train] table: field -> (kind, rule, default); a None default is required (the task)
# or needed by the task (its sizes).
# The task's sizes are fields of the table too: each registered task's (bench.tasks), checked by the task.
TRAIN: dict[str, tuple[str, Any, Any]] = {
    "task": ("task", None, None),
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
    # the tLSTM memory kernel's self-tap logit bias at the start (0: the kernel starts as an average of each
    # cell and its neighbours'); the default is implementations.tlstm_naive.MEM_SELF_LOGIT, written out so
    # that this module stays free of torch (tests/test_capacity.py checks that the two agree)
    "mem_self_logit": ("float", (0.0, 20.0), 3.0),
}
# Fields that only mean something for one kind of sweep: a timing sweep times calls on random inputs of
# these sizes; a training sweep's sequences, batch and input come from its task.
TIMING_ONLY_AXES = axes.names(axes.TIMING)
TIMING_ONLY_BUDGET = ("repeats", "min_time_s", "warmup", "energy", "processes")
# Timings taken side by side disturb each other; training runs only slow each other (their samples to solve,
# accuracy and curves do not change), so only a training sweep may run several points at once.
TRAINING_ONLY_BUDGET = ("workers",)
TRAINING_ONLY_AXES = axes.names(axes.TRAINING)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TOP_LEVEL = ("name", "description", "implementations", "pair", "seed", "plugins", "budget", "axes", "train")
# Fields --set may override besides the axes (and, in a training sweep, train.<field>).
SETTABLE_SCALARS = ("implementations", "pair", "seed", "plugins", *BUDGET)


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
                                 f"directory results/<name>-<time>), got {describe_value(data['name'])}")
            sweep.name = data["name"]
        if "description" in data:
            if not isinstance(data["description"], str):
                raise SweepError(source, "description", f"must be a string, got {describe_value(data['description'])}")
            sweep.description = data["description"]
        for key in ("implementations", "pair", "seed", "plugins"):
            if key in data:
                sweep._set_scalar(source, key, data[key])
        budget = data.get("budget", {})
        if not isinstance(budget, dict):
            raise SweepError(source, "budget", f"must be a table ([budget]), got {describe_value(budget)}")
        axes = data.get("axes")
        if not isinstance(axes, dict):
            raise SweepError(source, "axes",
                             f"must be a table ([axes]) with {' or '.join(SIZE_AXES)}, got {describe_value(axes)}")
        if "train" in data:
            sweep.load_plugins()  # a plugin may register the task
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
            misplaced = [f"budget.{b}" for b in TRAINING_ONLY_BUDGET if b in budget]
            if misplaced:
                raise SweepError(source, misplaced[0], "only for training sweeps (with a [train] table): timings "
                                 "taken side by side disturb each other; use budget.processes to measure in "
                                 "several processes, one after another")
        sweep.budget = {k: default for k, (_, _, default) in BUDGET.items()}
        for key, value in budget.items():
            sweep._set_scalar(source, f"budget.{key}", value)
        if sweep.train is not None and "timeout_s" not in budget:  # a run may train for max_time_s, then evaluate
            sweep.budget["timeout_s"] = 2 * sweep.train["max_time_s"] + 120
        sweep.axes = {name: check_axis(source, name, values) for name, values in axes.items()}
        sweep._check_sizes(source)
        return sweep

    def _set_train(self, source: str, table: Any) -> None:
        """Validate a [train] table (defaults filled in) and its task's sizes (``bench.tasks``)."""
        if not isinstance(table, dict):
            raise SweepError(source, "train", f"must be a table ([train]), got {describe_value(table)}")
        sizes = tasks.size_names()
        unknown = sorted(set(table) - set(TRAIN) - set(sizes))
        if unknown:
            raise SweepError(source, f"train.{unknown[0]}", f"unknown field; allowed: {', '.join([*TRAIN, *sizes])}")
        if table.get("task") not in tasks.TASKS:
            raise SweepError(source, "train.task", ("required; " if "task" not in table else
                                                    f"got {describe_value(table['task'])}; ") +
                             f"one of {', '.join(tasks.TASKS)}")
        train = {k: default for k, (_, _, default) in TRAIN.items()}
        for key, value in table.items():
            if key in TRAIN and key != "task":
                kind, rule, _ = TRAIN[key]
                train[key] = check_value(source, f"train.{key}", kind, rule, value)
        task_sizes = {k: v for k, v in table.items() if k in sizes}
        try:
            task = tasks.make_task(table["task"], **task_sizes)
        except tasks.TaskError as exc:
            detail = str(exc).removeprefix(f"{exc.field} is ").removeprefix(f"{exc.field} ")
            raise SweepError(source, f"train.{exc.field}", detail) from None
        train["task"] = task.name
        train.update({size: None for size in sizes})
        train.update(task.sizes)
        self.train = train

    def _set_scalar(self, source: str, key: str, value: Any) -> None:
        bare = key.removeprefix("budget.")
        if key.startswith("budget.") or (bare in BUDGET and key == bare):
            if bare not in BUDGET:
                raise SweepError(source, key, f"unknown budget field; allowed: {', '.join(BUDGET)}")
            kind, rule, _ = BUDGET[bare]
            self.budget[bare] = check_value(source, f"budget.{bare}", kind, rule, value)
        elif key == "implementations":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise SweepError(source, key,
                                 f"must be a non-empty list of names or globs, got {describe_value(value)}")
            self.implementations = value
        elif key == "pair":
            self.pair = check_value(source, key, "choice", PAIRS, value)
        elif key == "seed":
            self.seed = check_value(source, key, "int", SEED_RANGE, value)
        elif key == "plugins":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise SweepError(source, key,
                                 f"must be a list of module names or .py paths, got {describe_value(value)}")
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
        workers = self.budget.get("workers", 1)
        if workers > 1 and self.budget.get("threads", 0) == 0 and not self.budget.get("oversubscribe"):
            raise SweepError(source, "budget.workers", f"{workers} runs side by side with budget.threads = 0 (torch's "
                             "default: every core) would each use all the cores; set budget.threads = 1 (or "
                             "budget.oversubscribe = true)")
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
            if sweep.train is None and (key in TRAINING_ONLY_AXES or key in TRAINING_ONLY_BUDGET):
                raise SweepError(source, key, "only for training sweeps (with a [train] table)")
            if key in AXES:
                if key in SIZE_AXES:  # the size axis is replaced, not added beside the other one
                    for other in SIZE_AXES:
                        sweep.axes.pop(other, None)
                if key == "variant":  # the variants replace the switches they set
                    for other in SWITCH_AXES:
                        sweep.axes.pop(other, None)
                sweep.axes[key] = check_axis(source, key, value)
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
                allowed = ", ".join([*AXES, *SETTABLE_SCALARS,
                                     *(f"train.{k}" for k in [*TRAIN, *tasks.size_names()] if sweep.train)])
                raise SweepError(source, key, f"unknown axis or setting; allowed: {allowed}")
            sweep.overrides.append(text)
        if train_sets:
            assert sweep.train is not None
            table = {k: v for k, v in sweep.train.items() if v is not None and v != TRAIN.get(k, (0, 0, None))[2]}
            table["task"] = sweep.train["task"]
            if train_sets.get("task", table["task"]) != table["task"]:  # a new task: the old one's sizes go
                for size in tasks.size_names():
                    table.pop(size, None)
            sweep._set_train(", ".join(train_texts), {**table, **train_sets})
        sweep._check_sizes("--set")
        return sweep

    # -- implementations ----------------------------------------------------------------------------

    def load_plugins(self) -> None:
        try:
            import_plugins(self.plugins, Path(self.base_dir) if self.base_dir else None)
        except PluginError as exc:
            raise SweepError(self.source, "plugins", str(exc)) from exc.__cause__

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
        axis_values = self.axis_values()
        size_axis = "tensor_size" if "tensor_size" in axis_values else "depth"
        task = self._task()
        seeds = self.train["seeds"] if self.train is not None else [self.seed]
        point_axes = [a.name for a in axes.point_axes()]
        points: list[Point] = []
        seen: set[str] = set()
        for combo in itertools.product(*axis_values.values()):
            values = {name: None if value == "none" else value for name, value in zip(axis_values, combo)}
            values.update(axes.variant_switches(values.pop("variant")) if "variant" in values else {})
            if values["device"] == "auto":
                values["device"] = "cuda" if cuda_available else "cpu"
            if size_axis == "tensor_size":
                values["depth"] = tlstm_depth(values["tensor_size"], values["kernel_size"])
            else:  # the largest P whose derived depth is L: P = L * (K // 2)
                values["tensor_size"] = values["depth"] * (values["kernel_size"] // 2)
            if task is not None:  # the task gives the sequences and the input; the sweep's [train] the batch
                values.update(input_size=task.input_symbols, seq_len=task.seq_len, batch=self.train["batch"],
                              mode="training")
            budget = values.pop("params", None) if self.pair == "params" else None
            for seed in seeds:
                for name in names:
                    family = implementations.get(name).family
                    config = dict(values)
                    if family == "lstm":  # a stacked LSTM has no dims, and none of the tLSTM's switches ...
                        config["dims"] = 2
                        if task is not None or "variant" in axis_values:  # ... where they name a tLSTM variant
                            config.update({k: v for k, v in axes.variant_switches("tLSTM").items() if k != "dims"})
                        if size_axis == "depth":  # it keeps P only when paired with a tLSTM's P
                            config["tensor_size"] = None
                    model = ModelConfig(**{k: config.get(k) for k in axes.names(axes.MODEL)} | {
                        "channels": 1, "tensor_size": config["tensor_size"] if family == "tlstm" else None,
                        "depth": None if family == "tlstm" else config["depth"]})

                    def count(width: int, name=name, model=model) -> int:
                        head = task.head_params(width) if task is not None else 0
                        return implementations.param_count(name, dataclasses.replace(model, channels=width)) + head

                    if task is not None and self.pair == "params":
                        config["channels"] = self._width_for_budget(count, budget, name)
                    elif task is None and family == "lstm" and self.pair == "params":
                        tlstm = ModelConfig(**{k: values[k] for k in axes.names(axes.MODEL)} | {"depth": None})
                        config["channels"] = width_for_budget(count, implementations.family_param_count("tlstm", tlstm))
                    point = Point(impl=name, family=family, **{k: config.get(k) for k in point_axes},
                                  repeats=0 if task is not None else self.budget["repeats"],
                                  warmup=0 if task is not None else self.budget["warmup"],
                                  seed=seed, train=self._train_spec(budget))
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
        return tasks.from_train(self.train)

    def _train_spec(self, params_budget: int | None) -> TrainSpec | None:
        if self.train is None:
            return None
        settings = {k: v for k, v in self.train.items() if k not in ("seeds", "batch")}
        return TrainSpec.from_dict({**settings, "params_budget": params_budget})

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
                       if not (k in TIMING_ONLY_BUDGET if self.train is not None else k in TRAINING_ONLY_BUDGET)},
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
