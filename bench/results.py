"""The results file: one JSON line per finished point in ``<out>/results.jsonl``, and its loader.

Writing appends one line and flushes and fsyncs it, so a point is either fully in the file or not at
all, except for the last line of a file whose writer was killed mid-write: readers ignore a last line
without its newline (or one that does not parse), and :func:`repair` cuts it off before appending.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from .contract import machine_fingerprint, measurement_id, merge_rows, record_problem, record_row, results_frame
from .outdir import OutputLock

RESULTS_FILE = "results.jsonl"
SWEEP_FILE = "sweep.json"


def results_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/results.jsonl``."""
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


class ResultsWarning(UserWarning):
    """A results line was skipped; the message names the file, the line and why."""


def _good_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of the complete, readable lines, and the byte offset just after the last complete line.

    A line that is not JSON (or not UTF-8), or not a record of the contract, is skipped with a
    ResultsWarning naming its line number; a last line without its newline is a write cut short.
    """
    records: list[dict[str, Any]] = []
    good_end = 0
    with open(path, "rb") as f:
        data = f.read()
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        if not raw.endswith(b"\n"):
            break  # a line cut short by a kill: not a result
        good_end += len(raw)
        try:
            record = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for a byte that is not UTF-8
            problem = f"not a JSON line ({type(exc).__name__}: {exc})"
        else:
            problem = record_problem(record)
        if problem:
            warnings.warn(f"{path}: line {number} skipped: {problem}", ResultsWarning, stacklevel=3)
            continue
        records.append(record)
    return records, good_end


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every readable record in a results file (a torn last line is ignored, unreadable lines skipped)."""
    path = results_path(path)
    if not path.exists():
        return []
    return _good_lines(path)[0]


def repair(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Cut off a torn last line (left by a kill mid-write) so the next append starts on a fresh line;
    returns the readable records. Takes the output directory's lock (re-entrant), so the bytes it cuts
    can belong to no other writer."""
    path = results_path(path)
    if not path.parent.is_dir():
        return []
    with OutputLock(path.parent):
        if not path.exists():
            return []
        records, good_end = _good_lines(path)
        if good_end != path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
    return records


def append(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as one line, flushed and fsynced before returning."""
    line = json.dumps(record, allow_nan=False) + "\n"
    with open(results_path(path), "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_sweep(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``<out>/sweep.json`` ({} if absent); a file that is not a JSON object raises ValueError naming it."""
    sweep_file = Path(out_dir) / SWEEP_FILE
    if not sweep_file.exists():
        return {}
    try:
        sweep = json.loads(sweep_file.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{sweep_file}: not a readable sweep definition ({type(exc).__name__}: {exc})") from None
    if not isinstance(sweep, dict):
        raise ValueError(f"{sweep_file}: not a sweep definition (a JSON object), got {type(sweep).__name__}")
    return sweep


def load(path: str | os.PathLike) -> pd.DataFrame:
    """The results as a tidy DataFrame: one row per point, columns ``bench.contract.COLUMNS``.

    Records of an earlier schema are upgraded (``bench.contract.upgrade``); the records of one point
    measured in several worker processes are merged (``bench.contract.merge_rows``). ``df.attrs["env"]`` is the
    environment of the first point (``df.attrs["envs"]`` lists them all when a resumed run changed
    machine or versions); ``df.attrs["sweep"]`` is ``sweep.json`` from the same directory ({} if absent).
    Missing metrics are None/NaN. If a point appears twice, the last line wins.
    """
    path = results_path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}")
    records = read_records(path)
    if not records and path.stat().st_size > 0:
        raise ValueError(f"{path}: no line is a results record (is it a results.jsonl?)")
    envs: list[dict[str, Any]] = []  # one per machine (host, device, versions): the start-up matmul rate varies
    seen: set[str | None] = set()
    for record in records:
        env = record.get("env") or {}
        machine = machine_fingerprint(env)
        if machine not in seen:
            seen.add(machine)
            envs.append(env)
    sweep = read_sweep(path.parent)
    # one row per point: its processes' records merged (a process measured twice: the last record wins)
    by_key: dict[Any, dict[int, dict[str, Any]]] = {}
    for record in records:
        key, process = measurement_id(record)
        by_key.setdefault(key, {})[process] = record_row(record)
    rows = [merge_rows([by_process[p] for p in sorted(by_process)]) for by_process in by_key.values()]
    df = results_frame(rows, envs[0] if envs else {}, sweep)
    if len(df):
        attrs = df.attrs
        df = df.sort_values("index", kind="stable").reset_index(drop=True)
        df.attrs = attrs
    if len(envs) > 1:
        df.attrs["envs"] = envs
    return df
