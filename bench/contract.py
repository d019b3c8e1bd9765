"""The suite's data contract: what a measured point is, what a results line holds, and how raw timing
samples become the timing metrics.

Every producer (sweep expansion, worker, measurement, the pytest-benchmark benchmarks) and every
consumer (the results loader, the pytest-benchmark file loader, the report, the CLI's table) takes
these definitions from here and keeps no copy of its own. Nothing here imports torch.

A results record holds one point measured in one worker process (``RECORD_FIELDS``)::

    {"schema": 4, "key": "<16 hex>", "sweep": "quick", "index": 3, "process": 0, "config": {<Point fields>},
     "status": "ok", "message": "...", "samples_s": [...], "metrics": {<METRIC_FIELDS>},
     "env": {...}, "started_at": "2026-12-01T14:00:00+00:00"}

(``bench.results`` writes it as one JSON line, the samples as base64 float32 and the environment by
reference to a line of its own; this module sees records only as above.)

A sweep with ``budget.processes = N`` measures every point in N worker processes, one record each
(``process`` 0..N-1); the loader merges them into one row whose timing metrics use every sample and
whose ``sample_processes`` says which process each sample came from.

Records written before the schema had a version (schema 1) still load: :func:`upgrade` brings them
to the current schema. Sizes: B batch, T sequence length, R input size, M channels, P tensor size,
K kernel size, L depth, G gate channels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
from dataclasses import dataclass, field, fields, make_dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import axes
from .axes import DEVICES, DTYPES, MODES, format_seconds  # noqa: F401  (re-exported: the contract's vocabulary)
from .metrics import METRICS, TIMING_FIELDS  # noqa: F401  (re-exported: the contract's vocabulary)

if TYPE_CHECKING:
    import pandas as pd

    from implementations import ModelConfig

SCHEMA_VERSION = 4

# What became of a point. ok: passed the correctness gate and was timed (or trained to the end of its
# budget); incorrect: failed the gate (not timed); diverged: a training run whose loss became NaN or
# infinite; oom / crashed / timeout / unavailable / error: see bench.runner and bench.worker.
STATUSES = ("ok", "incorrect", "diverged", "oom", "crashed", "timeout", "unavailable", "error")
FAMILIES = ("tlstm", "lstm")

# A point's timing is flagged noisy when its interquartile range exceeds this fraction of its median.
NOISY_IQR_OVER_MEDIAN = 0.10


class ContractError(ValueError):
    """A point or a results record does not have the contract's fields; the message names them."""


def recurrent_steps(family: str, seq_len: int, depth: int) -> int:
    """Dependent steps one sequence takes: T + L - 1 for a tLSTM (the output lags the input by L - 1
    steps; ``implementations.config.tlstm_steps``), T for a stacked LSTM (whose L layer updates per step
    are counted inside the step)."""
    return _model_formulas().tlstm_steps(seq_len, depth) if family == "tlstm" else seq_len


@cache
def _model_formulas() -> Any:
    """``implementations/config.py``: the one place of the models' size formulas. The file is torch-free but
    its package imports every implementation (and torch, 1.3 s): it is read here on its own, so that loading
    results does not pay for that. Only its pure functions are used from this copy."""
    source = importlib.util.find_spec("implementations").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("bench._model_formulas", Path(source) / "config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def lstm_step_flops(impl: str, input_size: int, channels: int, depth: int) -> int:
    """Forward FLOPs per sample and step of a stacked LSTM: the implementation's registered ``step_flops``
    where it has one, else the stacked LSTM's 2*4M*(R+M) + (L-1)*2*4M*2M."""
    try:
        import implementations

        own = implementations.get(impl).step_flops
    except (ImportError, KeyError):  # torch missing, or a plugin's implementation not registered here
        own = None
    if own is not None:
        return own(input_size, channels, depth)
    m = channels
    return 2 * 4 * m * (input_size + m) + (depth - 1) * 2 * 4 * m * 2 * m


# The sizes every train dict carries (None where its task has no such size), so that the keys of the points
# trained before tasks were registered stay as they were; other tasks' sizes appear only where given.
ALWAYS_TRAIN_SIZES = ("digits", "length", "alphabet")


@dataclass(frozen=True)
class TrainSpec:
    """How a training point trains (``bench.train``): the task and its sizes, the optimizer and the budget.

    ``task`` is a registered task's name (``bench.tasks``) and ``sizes`` its sizes, as (name, value) pairs;
    in a record the sizes are fields of the train dict itself ({"task": "addition", "digits": 3, ...}).
    Samples are counted in training sequences. ``eval_every``: samples between evaluations on the
    ``eval_samples`` held-out sequences. The run stops when the held-out symbol accuracy reaches
    ``solve_at`` (solved; when ``stop_when_solved``), after ``max_samples`` or after ``max_time_s`` of
    training. ``params_budget``: the total parameter count the width was chosen for (None when the sweep
    gave the width). ``mem_self_logit``: the tLSTM memory kernel's self-tap logit bias at the start
    (``implementations.tlstm_naive.TLSTMNaive.start_memory_kernel``); None in records written before it was a
    setting (those runs started with every logit bias drawn near 0).
    """

    task: str
    sizes: tuple[tuple[str, int], ...]
    optimizer: str
    lr: float
    clip: float
    eval_every: int
    eval_samples: int
    max_samples: int
    max_time_s: float
    solve_at: float
    stop_when_solved: bool
    params_budget: int | None
    mem_self_logit: float | None = None

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """The fields of a train dict besides the task and its sizes."""
        return tuple(f.name for f in fields(cls) if f.name not in ("task", "sizes"))

    @classmethod
    def from_dict(cls, data: Any) -> TrainSpec:
        """From a train dict: the task, the settings, and the task's sizes as fields of their own."""
        from .tasks import size_names

        optional = ("mem_self_logit",)  # absent from records written before it was a setting
        required = ("task", *(k for k in cls.settings() if k not in optional))
        if not isinstance(data, dict) or not set(required) <= set(data) \
                or not set(data) - set(required) <= set(size_names()) | set(ALWAYS_TRAIN_SIZES) | set(optional):
            raise ContractError(f"a point's train settings need exactly the fields {', '.join(required)} and the "
                                f"task's sizes; got {sorted(data) if isinstance(data, dict) else type(data).__name__}")
        sizes = tuple(sorted((k, v) for k, v in data.items() if k not in (*required, *optional) and v is not None))
        return cls(task=data["task"], sizes=sizes, **{k: data.get(k) for k in cls.settings()})

    def __getattr__(self, name: str) -> Any:
        """A task size as an attribute (``spec.digits``); None for a size its task does not have."""
        sizes = self.__dict__.get("sizes")
        if sizes is None or name.startswith("__"):
            raise AttributeError(name)
        from .tasks import size_names

        if name in dict(sizes) or name in size_names() or name in ALWAYS_TRAIN_SIZES:
            return dict(sizes).get(name)
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        """The train dict of a record."""
        return {"task": self.task, **dict.fromkeys(ALWAYS_TRAIN_SIZES), **dict(self.sizes),
                **{k: getattr(self, k) for k in self.settings()}}

    def task_label(self) -> str:
        """'addition D=3' or 'memorization S=8 V=4'."""
        from .tasks import task_label

        return task_label(self.as_dict())


class _PointBase:
    """One measured configuration: an implementation at one value of every axis, with its budget.

    The fields are ``impl`` and ``family``, one per axis of ``bench.axes`` (table order; not the sweep-only
    ones), ``repeats``, ``warmup``, ``seed``, then the axes added since the first schema (at the value an
    older record means) and ``train``. ``tensor_size`` is P for a tLSTM; a stacked LSTM keeps it only
    when it was paired with a tLSTM of that P (else None). ``norm`` is None or "cn". ``key`` is the
    stable identity ``--resume`` skips on.
    """

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Point:
        """A point from a results record's ``config`` (or a request to the worker)."""
        if not isinstance(config, dict):
            raise ContractError(f"a point's config must be a JSON object, got {type(config).__name__}")
        missing = [name for name in CONFIG_FIELDS if name not in config and name not in OPTIONAL_CONFIG_FIELDS]
        unknown = sorted(set(config) - set(CONFIG_FIELDS))
        if missing or unknown:
            raise ContractError(
                f"a point's config needs exactly the fields {', '.join(CONFIG_FIELDS)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(unknown)}" if unknown else "")
            )
        train = config.get("train")
        return cls(**{**OPTIONAL_CONFIG_FIELDS, **config,
                      "train": TrainSpec.from_dict(train) if train is not None else None})

    def as_dict(self) -> dict[str, Any]:
        """The point as a results record's ``config``."""
        config = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        if self.train is not None:
            config["train"] = self.train.as_dict()
        return config

    @cached_property
    def key(self) -> str:
        """A stable hash of the whole configuration (field order does not matter; a point whose optional
        fields are at the value older records mean has the key it had before they existed)."""
        config = self.as_dict()
        for name, default in OPTIONAL_CONFIG_FIELDS.items():  # absent at their defaults: keys as before they existed
            if config[name] == default:
                del config[name]
        canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def model_config(self) -> ModelConfig:
        """The ModelConfig to build from the point's model axes: a tLSTM by its tensor size (depth derived),
        a stacked LSTM by its depth (no tensor size, and none of the tLSTM's switches beyond their defaults)."""
        from implementations import ModelConfig  # torch is imported only where a model is built

        sizes = {name: getattr(self, name) for name in axes.names(axes.MODEL)}
        if self.family == "tlstm":
            sizes["depth"] = None
        else:
            sizes["tensor_size"] = None
        return ModelConfig(**sizes)

    def derived(self) -> dict[str, Any]:
        """The quantities derived from the point's sizes (``DERIVED_FIELDS``), computed here only."""
        tlstm = self.family == "tlstm"
        return {"recurrent_steps": self.recurrent_steps,
                "locations": self.locations if tlstm else None,
                "gate_channels": self.gate_channels if tlstm else None,
                "tensor_depth": _model_formulas().tlstm_depth(self.tensor_size, self.kernel_size) if tlstm else None}

    @property
    def recurrent_steps(self) -> int:
        return recurrent_steps(self.family, self.seq_len, self.depth)

    @property
    def hidden_units(self) -> int:
        """Units of hidden state: P*M for a tLSTM (P*P*M for the 3D tLSTM), L*M (all layers) for a stacked LSTM."""
        if self.family == "tlstm":
            return self.locations * self.channels
        return self.depth * self.channels

    @property
    def locations(self) -> int:
        """A tLSTM's hidden locations: P, or P*P for the 3D tLSTM."""
        return _model_formulas().tlstm_locations(self.tensor_size, self.dims)

    @property
    def taps(self) -> int:
        """Kernel taps per location: K, or K*K for the 3D tLSTM."""
        return _model_formulas().tlstm_taps(self.kernel_size, self.dims)

    @property
    def gate_channels(self) -> int:
        """A tLSTM's G: 4M plus one memory-kernel logit per tap with the memory-cell convolution."""
        return _model_formulas().tlstm_gate_channels(self.channels, self.kernel_size, self.dims, self.mem_conv)

    def flops(self) -> int:
        """FLOPs of one call (the whole batch and sequence) from the cost formulas (matrix work only).

        tLSTM forward per sample: 2*R*M per input step (T steps) + 2*P*K*M*G per step (T+L-1 steps);
        the 3D tLSTM: 2*P*P*K*K*M*G per step. A stacked LSTM's per-step formula is its implementation's
        (registered as ``step_flops``; by default 2*4M*(R+M) + (L-1)*2*4M*2M), T steps.
        Training adds a backward of about twice the forward's matrix work: 3x in all.
        """
        r, m, seq_len = self.input_size, self.channels, self.seq_len
        if self.family == "tlstm":
            forward = 2 * r * m * seq_len + 2 * self.locations * self.taps * m * self.gate_channels \
                * self.recurrent_steps
        else:
            forward = lstm_step_flops(self.impl, r, m, self.depth) * seq_len
        forward *= self.batch
        return 3 * forward if self.mode == "training" else forward

    def memory_floor_bytes(self) -> int:
        """A lower bound on the memory one call needs (what a training step must keep for backward, or
        what inference must hold), below any implementation's real use: a point above the machine's
        memory cannot run anywhere."""
        size = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}[self.dtype]
        b, t, r, m = self.batch, self.seq_len, self.input_size, self.channels
        if self.family == "tlstm":
            per_step = b * self.locations * (self.gate_channels + 2 * m)  # pre-activations, h and c of every location
            kept = per_step * self.recurrent_steps if self.mode == "training" else per_step
        else:
            per_step = b * self.depth * 6 * m  # four gates, h and c of every layer
            kept = per_step * t if self.mode == "training" else per_step
        weights = 4 * self.train.params_budget if self.train is not None and self.train.params_budget else 0
        # plus the input and the output sequence; a training run also holds its weights, their gradients
        # and Adam's two moments
        return (kept + b * t * (r + m) + weights) * size

    def variant(self, shares_weights: bool = False) -> str:
        """The paper's name of the point's model (tLSTM, 3D tLSTM+CN, sLSTM, ...)."""
        return axes.variant_name(self, self.family, shares_weights)

    def describe(self) -> str:
        """One short line for progress output: the implementation, its variant when not the plain tLSTM,
        and every axis that is a size or a choice."""
        name = self.variant()
        parts = [self.impl + (f" [{name}]" if name not in axes.PLAIN_VARIANTS else ""), f"M={self.channels}"]
        shown = [a for a in axes.point_axes() if not a.has(axes.SWITCH) and a.name != "channels"
                 and not (self.train is not None and a.has(axes.TIMING))]
        parts += [a.label(getattr(self, a.name)) for a in shown if not axes.missing(getattr(self, a.name))]
        if self.train is not None:
            parts.append(f"{self.train.task_label()} seed {self.seed}")
        return " ".join(parts)


def _point_fields() -> list[tuple[str, Any, Any]]:
    always = [a for a in axes.point_axes() if not a.optional]
    added = [a for a in axes.point_axes() if a.optional]
    return ([("impl", str), ("family", str)] + [(a.name, Any) for a in always]
            + [("repeats", int), ("warmup", int), ("seed", int)]
            + [(a.name, Any, field(default=a.absent)) for a in added]
            + [("train", Any, field(default=None))])  # a training run (bench.train) rather than a timed call


Point = make_dataclass("Point", _point_fields(), bases=(_PointBase,), frozen=True)
Point.__module__ = __name__
Point.__doc__ = _PointBase.__doc__

CONFIG_FIELDS = tuple(f.name for f in fields(Point))
# Fields absent from records written before they existed, with the value such a record means.
OPTIONAL_CONFIG_FIELDS: dict[str, Any] = {**{a.name: a.absent for a in axes.point_axes() if a.optional},
                                          "train": None}
# Derived from a point's sizes once (Point.derived) and carried in every loaded row: the dependent steps of
# one sequence, a tLSTM's locations and gate channels G, and the depth ceil(P / (K // 2)) its P and K give.
DERIVED_FIELDS = ("recurrent_steps", "locations", "gate_channels", "tensor_depth")

# The environment of a run (bench.measure.environment), recorded with every point.
ENV_FIELDS = (
    "torch", "cuda", "cudnn", "triton", "cpu_model", "cpu_flags", "cpu_capability", "gpu_model", "threads",
    "git_commit", "python", "platform", "hostname", "matmul_gflops", "cudnn_allow_tf32", "matmul_allow_tf32",
    "cudnn_benchmark",
)  # fmt: skip
RECORD_FIELDS = ("schema", "key", "sweep", "index", "process", "config", "status", "message", "samples_s", "metrics",
                 "env", "started_at")
METRIC_FIELDS = tuple(METRICS)
# One row per point in the loaded results frame (bench.results.load, bench.pytest_benchmark_file.load).
COLUMNS = (*CONFIG_FIELDS, *DERIVED_FIELDS, "status", "message", *METRIC_FIELDS, "samples_s", "sample_processes",
           "key", "sweep", "index", "started_at", "schema", "machine")
NUMERIC_COLUMNS = (*(name for name in CONFIG_FIELDS if name in axes.names() and axes.numeric(name)), *DERIVED_FIELDS,
                   *(name for name, kind in METRICS.items() if kind == "number"))


# ---------------------------------------------------------------------------------------------------
# timing metrics


def quantile(ordered: Any, q: float) -> float:
    """The q-quantile of sorted values, interpolated linearly (numpy's default method), without numpy's
    per-call overhead (the loader computes it for every point of a large file)."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def timing_metrics(
    samples: list[float],
    *,
    seq_len: int,
    recurrent_steps: int,
    batch: int,
    flops: float | None,
    quartiles: tuple[float, float, float] | None = None,
    processes: list[int] | None = None,
    process_medians: list[float] | None = None,
) -> dict[str, Any]:
    """The timing metrics (``TIMING_FIELDS``) of one point from its raw seconds per call.

    ``quartiles`` = (median, q1, q3) stands in for the samples only where none were kept (a
    pytest-benchmark file saved without its data, a results frame built by hand). Returns {} when
    there is neither. Time per step: per output step (call time / T) and per recurrent step (call time
    / the dependent steps the model runs, ``recurrent_steps``). ``processes`` (one id per sample) gives
    the spread between worker processes: the range of their medians over the pooled median; they
    disagree when it exceeds the noise threshold. ``process_medians`` gives those medians directly, where
    the caller has them (the loader: each process record's median, checked against its samples).
    """
    values = np.asarray(samples if samples is not None else [], dtype=np.float64)
    if values.size:
        ordered = np.sort(values)
        median, q1, q3 = quantile(ordered, 0.5), quantile(ordered, 0.25), quantile(ordered, 0.75)
    elif quartiles is not None and all(v is not None and math.isfinite(v) for v in quartiles):
        median, q1, q3 = (float(v) for v in quartiles)
    else:
        return {}
    positive = median > 0
    ids = np.asarray(processes) if processes is not None and len(processes) == values.size else None
    if process_medians is not None:
        medians = [float(m) for m in process_medians]
    elif ids is None or not ids.size or (ids == ids[0]).all():
        medians = [median]
    else:
        medians = [quantile(np.sort(values[ids == pid]), 0.5) for pid in np.unique(ids)]
    spread = (max(medians) - min(medians)) / median if len(medians) > 1 and positive else None
    return {
        "time_median_s": median,
        "time_q1_s": q1,
        "time_q3_s": q3,
        "time_iqr_s": q3 - q1,
        "noisy": (q3 - q1) / median > NOISY_IQR_OVER_MEDIAN if positive else True,
        "time_per_step_s": median / seq_len,
        "time_per_step_q1_s": q1 / seq_len,
        "time_per_step_q3_s": q3 / seq_len,
        "time_per_recurrent_step_s": median / recurrent_steps,
        "throughput_tokens_s": batch * seq_len / median if positive else None,
        "gflops": flops / median / 1e9 if positive and flops else None,
        "processes": max(len(medians), 1),
        "process_spread": spread,
        "processes_disagree": spread is not None and spread > NOISY_IQR_OVER_MEDIAN,
    }


def point_timing_metrics(point: Point, samples: list[float], quartiles: tuple[float, float, float] | None = None,
                         processes: list[int] | None = None) -> dict[str, Any]:
    """:func:`timing_metrics` for a point."""
    return timing_metrics(samples, seq_len=point.seq_len, recurrent_steps=point.recurrent_steps, batch=point.batch,
                          flops=point.flops(), quartiles=quartiles, processes=processes)


# ---------------------------------------------------------------------------------------------------
# records and rows


def make_record(point: Point, *, status: str, message: str, samples_s: list[float], metrics: dict[str, Any],
                env: dict[str, Any], sweep: str, index: int, started_at: str | None,
                process: int = 0) -> dict[str, Any]:
    """One results line, in the current schema."""
    if status not in STATUSES:
        raise ContractError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
    return {"schema": SCHEMA_VERSION, "key": point.key, "sweep": sweep, "index": index, "process": process,
            "config": point.as_dict(),
            "status": status, "message": message, "samples_s": list(samples_s), "metrics": metrics, "env": env,
            "started_at": started_at}


def measurement_id(record: dict[str, Any]) -> tuple[Any, int]:
    """What a results line is a measurement of: its point's key and the worker process (0 by default)."""
    return record.get("key"), record.get("process", 0)


def record_problem(record: Any) -> str | None:
    """None if ``record`` has the shape of a results record (any schema), else what is wrong with it."""
    if not isinstance(record, dict):
        return f"a record is a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("key"), str):
        return "no 'key' string"
    if not isinstance(record.get("config"), dict):
        return "'config' is not an object"
    if record.get("status") not in STATUSES:
        return f"'status' must be one of {', '.join(STATUSES)}, got {record.get('status')!r}"
    if not isinstance(record.get("metrics") or {}, dict):
        return f"'metrics' is not an object (got {type(record.get('metrics')).__name__})"
    samples = record.get("samples_s")
    if samples is None:
        samples = []
    if isinstance(samples, list):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in samples):
            return "'samples_s' is not a list of numbers"
    elif not (isinstance(samples, np.ndarray) and samples.ndim == 1 and samples.dtype.kind == "f"):
        return "'samples_s' is not a list of numbers"
    problem = timing_problem(samples, record.get("metrics") or {})
    if problem:
        return problem
    process = record.get("process", 0)
    if not isinstance(process, int) or isinstance(process, bool) or not 0 <= process < 2**31:
        return f"'process' is not a worker process number (an integer from 0 to {2**31 - 1}), got {process!r:.40}"
    if not isinstance(record.get("env") or {}, dict):
        return f"'env' is not an object (got {type(record.get('env')).__name__})"
    schema = record.get("schema", 1)
    if isinstance(schema, bool) or schema not in range(1, SCHEMA_VERSION + 1):
        return f"results schema {schema!r} is unknown; this version reads schemas 1 to {SCHEMA_VERSION}"
    return None


# A timed call longer than this is not a measurement this suite makes (a typo'd or corrupted value is).
MAX_SAMPLE_S = 7 * 86_400.0


def timing_problem(samples: list[float], metrics: dict[str, Any]) -> str | None:
    """None if a record's raw samples are times (finite, > 0, at most ``MAX_SAMPLE_S``) and its stored median,
    quartiles and per-step times are times that agree with them; else what is wrong."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size and not (0 < values.min() and values.max() <= MAX_SAMPLE_S):  # NaN fails both
        wrong = ~(np.isfinite(values) & (values > 0) & (values <= MAX_SAMPLE_S))
        bad = samples[int(np.argmax(wrong))]
        bad = bad.item() if isinstance(bad, np.generic) else bad
        return (f"'samples_s' holds {bad!r}, not a time (each sample is a finite number of seconds > 0 and "
                f"<= {MAX_SAMPLE_S:g})")
    for name in ("time_median_s", "time_q1_s", "time_q3_s", "time_per_step_s"):
        value = metrics.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value <= MAX_SAMPLE_S):  # NaN fails the comparison; a huge integer too, without overflowing
            return f"metric {name!r} is {value!r:.40}, not a time (a finite number of seconds > 0)"
    median = metrics.get("time_median_s")
    if values.size and median is not None:
        own = quantile(np.sort(values), 0.5)
        if not math.isclose(own, median, rel_tol=1e-6):
            return f"metric 'time_median_s' = {median!r} is not the median of its samples ({own!r})"
    return None


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A record of any earlier schema in the current one (a copy; the current schema is returned as is).

    Schema 2 had no training points and no 3D tLSTM: its config has no "train" (None) and no "dims"
    (2), and its metrics none of the training fields. Schema 1 (no "schema" field), besides: the metric
    "hidden_size" is now "hidden_units"; the per-step quartiles and the time per recurrent step did not exist and are
    computed (from the kept samples, by the same function as today's records); the metrics it did
    record are kept as written.
    """
    version = record.get("schema", 1)
    if version == SCHEMA_VERSION:
        return record
    if isinstance(version, bool) or version not in range(1, SCHEMA_VERSION):
        raise ContractError(f"results schema {version!r} is unknown; this version reads schemas 1 to {SCHEMA_VERSION}")
    record = {**record, "schema": SCHEMA_VERSION}
    if version == 3:  # schema 4 changed only how a line encodes the samples and the environment
        return record
    if isinstance(record.get("config"), dict):
        record["config"] = {**OPTIONAL_CONFIG_FIELDS, **record["config"]}
    if version == 2:
        return record
    metrics = dict(record.get("metrics") or {})
    if "hidden_size" in metrics:
        metrics["hidden_units"] = metrics.pop("hidden_size")
    try:
        point = Point.from_dict(record.get("config"))
    except (ContractError, TypeError):
        point = None
    if point is not None and metrics.get("time_median_s") is not None:
        quartiles = (metrics.get("time_median_s"), metrics.get("time_q1_s"), metrics.get("time_q3_s"))
        computed = timing_metrics(_samples(record), seq_len=point.seq_len,
                                  recurrent_steps=point.recurrent_steps, batch=point.batch,
                                  flops=metrics.get("flops"), quartiles=quartiles)
        for name, value in computed.items():  # what schema 1 did not record
            metrics.setdefault(name, value)
    record["metrics"] = metrics
    return record


def _samples(record: dict[str, Any]) -> np.ndarray:
    """A record's raw samples as a float64 array (empty when it has none)."""
    samples = record.get("samples_s")
    return np.empty(0) if samples is None else np.asarray(samples, dtype=np.float64)


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """A results record (any schema) flattened into one row with the ``COLUMNS``."""
    record = upgrade(record)
    config, metrics = record.get("config") or {}, record.get("metrics") or {}
    row = {name: config.get(name, OPTIONAL_CONFIG_FIELDS.get(name)) for name in CONFIG_FIELDS}
    try:
        row.update(Point.from_dict(config).derived())
    except (ContractError, TypeError):  # a hand-written config without every field: nothing derived
        row.update(dict.fromkeys(DERIVED_FIELDS))
    row.update({name: metrics.get(name) for name in METRIC_FIELDS})
    row.update(samples_row(record))  # status, message, samples
    for name in ("key", "sweep", "index", "started_at", "schema"):
        row[name] = record.get(name)
    row["machine"] = machine_fingerprint(record.get("env") or {})
    return row


def samples_row(record: dict[str, Any]) -> dict[str, Any]:
    """What :func:`merge_rows` reads of a row that is not the merged row's base: status, message and samples."""
    samples = _samples(record)
    return {"status": record.get("status"), "message": record.get("message", ""), "samples_s": samples,
            "sample_processes": np.full(samples.size, record.get("process", 0), dtype=np.int64),
            "time_median_s": (record.get("metrics") or {}).get("time_median_s")}


def machine_fingerprint(env: dict[str, Any]) -> str | None:
    """Which machine a record was measured on: host, the device's model, torch and CUDA versions."""
    if not env:
        return None
    device = env.get("gpu_model") or env.get("cpu_model") or "unknown device"
    cuda = f", CUDA {env['cuda']}" if env.get("cuda") else ""
    return f"{env.get('hostname') or 'unknown host'}: {device}, torch {env.get('torch')}{cuda}"


def merge_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rows of one point measured in several worker processes (in process order).

    The status is "ok" only when every process's is; otherwise the first other status, its message
    prefixed with the process. The samples of the ok processes are pooled and every timing metric is
    computed from all of them; the other metrics are the first ok process's.
    """
    if len(rows) == 1:
        return rows[0]
    ok = [row for row in rows if row["status"] == "ok"]
    failed = [(i, row) for i, row in enumerate(rows) if row["status"] != "ok"]
    merged = dict((ok or rows)[0])
    if failed:
        process, first = failed[0]
        merged["status"] = first["status"]
        merged["message"] = f"process {process}: {first['message']}"
    merged["samples_s"] = np.concatenate([row["samples_s"] for row in ok]) if ok else np.empty(0)
    merged["sample_processes"] = np.concatenate([row["sample_processes"] for row in ok]) if ok else np.empty(0, int)
    if any(axes.missing(merged[name]) for name in ("seq_len", "recurrent_steps", "batch")):
        return merged  # a hand-written config without every field: keep the first metrics
    own = [row.get("time_median_s") for row in ok]  # each process's median, checked against its samples on loading
    merged.update(timing_metrics(merged["samples_s"], seq_len=merged["seq_len"],
                                 recurrent_steps=merged["recurrent_steps"], batch=merged["batch"],
                                 flops=merged["flops"], processes=merged["sample_processes"],
                                 process_medians=own if own and not any(map(axes.missing, own)) else None))
    return merged


def results_frame(rows: list[dict[str, Any]], env: dict[str, Any], sweep: dict[str, Any]) -> pd.DataFrame:
    """The results frame: one row per point with the ``COLUMNS`` in order; ``attrs["env"]`` and
    ``attrs["sweep"]`` hold the environment and the sweep definition."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.attrs["env"] = env
    df.attrs["sweep"] = sweep
    return df


