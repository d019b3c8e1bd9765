"""Training runs: what a model buys, measured by training it on an algorithmic task (``bench.tasks``).

A training point (``Point.train`` set) is one model (any registered implementation, as the core)
trained on one task from one seed until it solves the task or its budget (samples, training time)
runs out. The model is the core between a task head: one-hot input symbols in (the core's input size is
the task's number of input symbols, so the head has no input parameters) and a linear read-out to the
output symbols out, trained with cross-entropy on the scored steps only (Adam, gradient-norm clipping).
The head's parameters are counted apart from the core's, and in the total.

Every ``eval_every`` training samples the model is evaluated on a fixed held-out set (``eval_samples``
sequences drawn from ``HELD_OUT_SEED``, the same for every model and seed) and a point of the learning
curve is kept: samples seen, mean training loss since the last evaluation, held-out symbol and sequence
accuracy, training wall time (evaluations and checkpoints excluded). Solved: held-out symbol accuracy
>= ``solve_at``; samples and time to solve are those of the first evaluation that reaches it.

With a checkpoint path, the run saves its whole state (weights, optimizer, data generator, curve, time)
after every evaluation and, when started again on the same point, continues from there: samples seen
keep counting up. Before training, the core passes the suite's correctness gate at the task's sizes.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import implementations

from .contract import Point, TrainSpec
from .tasks import Task, make_task

OPTIMIZERS = ("adam",)
HELD_OUT_SEED = 2**31 - 1  # the held-out set: one fixed draw, the same for every model, seed and run
CHECKPOINT_VERSION = 1


def task_of(spec: TrainSpec) -> Task:
    return make_task(spec.task, **dict(spec.sizes))


class TaskModel(nn.Module):
    """A core (any registered implementation) between a one-hot input and a linear read-out.

    Input: symbol ids [B, T] (int64). Output: logits [B, T, V_out]. ``core`` takes [B, T, R] with R the
    task's input symbols and returns (y [B, T, M], state) as every implementation does.
    """

    def __init__(self, core: nn.Module, input_symbols: int, channels: int, output_symbols: int) -> None:
        super().__init__()
        self.core = core
        self.input_symbols = input_symbols
        dtype = next(core.parameters()).dtype
        device = next(core.parameters()).device
        self.readout = nn.Linear(channels, output_symbols, device=device, dtype=dtype)

    def forward(self, symbols: torch.Tensor) -> torch.Tensor:
        x = nn.functional.one_hot(symbols, self.input_symbols).to(self.readout.weight.dtype)  # [B, T, R]
        y, _ = self.core(x)  # [B, T, M]
        return self.readout(y)  # [B, T, V_out]

    def param_counts(self) -> tuple[int, int]:
        """(core, head) parameter counts."""
        return (sum(p.numel() for p in self.core.parameters()), sum(p.numel() for p in self.readout.parameters()))


def build_task_model(point: Point) -> tuple[TaskModel, Task]:
    """The point's task and its model, initialized from ``point.seed``."""
    from .measure import build_point

    assert point.train is not None
    task = task_of(point.train)
    core, _ = build_point(point)  # the suite's one way to build a point's model (seeded from point.seed)
    if point.train.mem_self_logit is not None and hasattr(core, "start_memory_kernel"):
        core.start_memory_kernel(point.train.mem_self_logit)
    return TaskModel(core, task.input_symbols, point.channels, task.output_symbols), task


def evaluate(model: TaskModel, held_out: tuple[torch.Tensor, ...], chunk: int = 1024) -> tuple[float, float]:
    """(symbol accuracy, sequence accuracy) on the held-out set: scored symbols right, sequences all right."""
    inputs, targets, mask = held_out
    right_symbols = scored = right_sequences = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(inputs), chunk):
            sl = slice(start, start + chunk)
            predicted = model(inputs[sl]).argmax(-1)
            hit = (predicted == targets[sl]) | ~mask[sl]
            right_symbols += int((hit & mask[sl]).sum())
            scored += int(mask[sl].sum())
            right_sequences += int(hit.all(dim=1).sum())
    model.train()
    return right_symbols / scored, right_sequences / len(inputs)


def training_step(model: TaskModel, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...],
                  clip: float) -> float | None:
    """One step on one batch (inputs, targets, mask): cross-entropy on the scored steps, backward,
    gradient-norm clipping (``clip`` > 0), optimizer step. Returns the loss, or None (and no update) when
    it is NaN or infinite."""
    inputs, targets, mask = batch
    logits = model(inputs)  # [B, T, V_out]
    loss = nn.functional.cross_entropy(logits[mask].float(), targets[mask])
    value = loss.item()  # also waits for the device
    if not math.isfinite(value):
        return None
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    if inputs.is_cuda:
        torch.cuda.synchronize()
    return value


def gate(point: Point) -> tuple[bool, float, str]:
    """The suite's correctness gate for the core at this point's sizes (training mode: output, state and
    every gradient against the float64 reference)."""
    from .measure import check_correctness

    gate_point = dataclasses.replace(point, train=None, mode="training", batch=min(point.batch, 4))
    return check_correctness(gate_point)


class CheckpointRefused(ValueError):
    """A checkpoint that cannot be this run's state: unreadable, crafted, or another point's."""


def _first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message (torch's run to pages)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


def _restore(path: Path, point: Point, model: nn.Module, optimizer: torch.optim.Optimizer,
             generator: torch.Generator) -> dict[str, Any]:
    """Load a run's state from ``path`` into ``model``, ``optimizer`` and ``generator``; returns the run's
    counters. Read with ``weights_only=True``: only tensors and plain containers, never code. Anything that
    is not this point's state raises CheckpointRefused saying why (the caller starts over)."""
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  (truncated, random bytes, a directory, a pickle of anything else)
        raise CheckpointRefused(f"not a readable checkpoint: {_first_line(exc)}") from None
    if not isinstance(saved, dict) or not {"version", "key", "model", "optimizer", "generator", "state"} <= set(saved):
        raise CheckpointRefused("not a training checkpoint (it lacks the version, key, model, optimizer, "
                                "generator and state entries)")
    if saved["version"] != CHECKPOINT_VERSION:
        raise CheckpointRefused(f"checkpoint version {saved['version']!r}; this version reads {CHECKPOINT_VERSION}")
    if saved["key"] != point.key:
        raise CheckpointRefused(f"it is point {str(saved['key'])[:40]!r}'s, not this point's ({point.key})")
    state = saved["state"]
    if not isinstance(state, dict) or not isinstance(state.get("samples"), int) or \
            not isinstance(state.get("curve"), list) or not isinstance(state.get("resumed"), int):
        raise CheckpointRefused("its run counters are not a training run's")
    try:
        model_state = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer_state = optimizer.state_dict()
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
    except Exception as exc:  # noqa: BLE001  (another model's weights, a wrong optimizer or generator state)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        raise CheckpointRefused(f"its weights do not fit this model: {_first_line(exc)}") from None
    state["resumed"] += 1
    return state


def _move_aside(path: Path) -> Path:
    """Rename a refused checkpoint to ``<name>.refused-<n>`` beside it (kept for a look, never read again)."""
    n = 0
    while (aside := path.with_name(f"{path.name}.refused-{n}")).exists():
        n += 1
    os.replace(path, aside)
    return aside


def _save(path: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint beside the last one, then replace it: a kill or a full disk during the save leaves
    the previous checkpoint whole and no temporary file (a full disk raises OSError ENOSPC naming the file)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    os.replace(tmp, path)


def train_point(point: Point, checkpoint: Path | None = None,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the point's model; returns {"status", "message", "samples_s", "metrics"} (the results
    contract). Status: ok (solved, or the budget ran out: see ``metrics["stop_reason"]``), incorrect
    (the core failed the gate; not trained) or diverged (the loss became NaN or infinite)."""
    spec = point.train
    if spec is None:
        raise ValueError(f"{point.describe()} is not a training point (its train settings are None)")
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    ok, max_err, gate_message = gate(point)
    model, task = build_task_model(point)
    core_params, head_params = model.param_counts()
    metrics: dict[str, Any] = {
        "params": core_params + head_params, "core_params": core_params, "head_params": head_params,
        "hidden_units": point.hidden_units, "max_abs_err": max_err,
        "backend": implementations.backend_name(model.core, torch.zeros(1, 1, task.input_symbols,
                                                                        dtype=model.readout.weight.dtype,
                                                                        device=model.readout.weight.device)),
    }
    if not ok:
        return {"status": "incorrect", "message": gate_message, "samples_s": [], "metrics": metrics}

    device = torch.device(point.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    generator = torch.Generator().manual_seed(point.seed)
    held_out = tuple(t.to(device) for t in task.batch(spec.eval_samples, seed=HELD_OUT_SEED))
    state: dict[str, Any] = {"samples": 0, "train_time_s": 0.0, "curve": [], "step_times": [], "resumed": 0,
                             "solved_at": None}
    refused_note = ""
    if checkpoint is not None and (checkpoint.exists() or checkpoint.is_symlink()):
        try:
            state = _restore(checkpoint, point, model, optimizer, generator)
            log(f"resumed from {checkpoint} at {state['samples']:,} samples")
        except CheckpointRefused as refused:
            aside = _move_aside(checkpoint)
            # nothing of it was loaded (_restore puts back what it changed): the run starts as a fresh one
            refused_note = f"checkpoint {checkpoint} refused ({refused}); moved to {aside.name}; started from zero"
            log(refused_note)

    losses: list[float] = []
    status, stop_reason = "ok", None
    next_eval = (state["samples"] // spec.eval_every + 1) * spec.eval_every
    while True:
        if state["samples"] >= spec.max_samples:
            stop_reason = "max_samples"
            break
        if state["train_time_s"] >= spec.max_time_s:
            stop_reason = "max_time"
            break
        batch = tuple(t.to(device) for t in task.batch(point.batch, generator=generator))
        started = time.perf_counter()
        loss = training_step(model, optimizer, batch, spec.clip)
        if loss is None:
            status, stop_reason = "diverged", "diverged"
            break
        step_s = time.perf_counter() - started
        state["train_time_s"] += step_s
        state["step_times"].append(step_s)
        state["samples"] += point.batch
        losses.append(loss)
        if state["samples"] >= next_eval or state["samples"] >= spec.max_samples:
            next_eval += spec.eval_every
            symbol_acc, sequence_acc = evaluate(model, held_out)
            state["curve"].append({"samples": state["samples"], "loss": statistics.fmean(losses),
                                   "symbol_acc": symbol_acc, "sequence_acc": sequence_acc,
                                   "wall_s": state["train_time_s"]})
            losses = []
            log(f"{state['samples']:>9,} samples  loss {state['curve'][-1]['loss']:.4f}  symbol acc {symbol_acc:.3f}"
                f"  sequence acc {sequence_acc:.3f}  {state['train_time_s']:.1f} s")
            if symbol_acc >= spec.solve_at and state["solved_at"] is None:
                state["solved_at"] = {"samples": state["samples"], "wall_s": state["train_time_s"]}
            if state["solved_at"] is not None and spec.stop_when_solved:
                stop_reason = "solved"
                break
            if checkpoint is not None:
                _save(checkpoint, {"version": CHECKPOINT_VERSION, "key": point.key, "model": model.state_dict(),
                                   "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                   "state": state})

    curve = state["curve"]
    solved = state["solved_at"]
    metrics.update({
        "solved": solved is not None,
        "samples_to_solve": solved["samples"] if solved else None,
        "time_to_solve_s": solved["wall_s"] if solved else None,
        "samples_seen": state["samples"],
        "train_time_s": state["train_time_s"],
        "step_time_s": statistics.median(state["step_times"]) if state["step_times"] else None,
        "final_loss": curve[-1]["loss"] if curve else None,
        "final_symbol_acc": curve[-1]["symbol_acc"] if curve else None,
        "final_sequence_acc": curve[-1]["sequence_acc"] if curve else None,
        "best_symbol_acc": max(c["symbol_acc"] for c in curve) if curve else None,
        "stop_reason": stop_reason,
        "resumed": state["resumed"],
        "curve": curve,
    })  # fmt: skip
    if status == "diverged":
        message = f"the training loss became NaN or infinite after {state['samples']:,} samples"
    elif solved:
        message = (f"solved ({task.label()}): held-out symbol accuracy >= {spec.solve_at:g} after "
                   f"{solved['samples']:,} samples, {solved['wall_s']:.1f} s of training; {gate_message}")
    else:
        best = metrics["best_symbol_acc"]
        message = (f"not solved within budget ({stop_reason.replace('_', ' ')}): best held-out symbol accuracy "
                   f"{best if best is not None else math.nan:.3f} after {state['samples']:,} samples; {gate_message}")
    return {"status": status, "message": message + (f"; {refused_note}" if refused_note else ""), "samples_s": [],
            "metrics": metrics}
