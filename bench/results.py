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

from .contract import merge_rows, record_row, results_frame

RESULTS_FILE = "results.jsonl"
SWEEP_FILE = "sweep.json"


def results_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/results.jsonl``."""
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


def _good_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The parsed complete lines, and the byte offset just after the last one."""
    records: list[dict[str, Any]] = []
    good_end = 0
    offset = 0
    with open(path, "rb") as f:
        data = f.read()
    for raw in data.splitlines(keepends=True):
        offset += len(raw)
        if not raw.endswith(b"\n"):
            break  # a line cut short by a kill: not a result
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            if offset == len(data):
                break  # a torn last line
            warnings.warn(f"{path}: skipping an unreadable line at byte {offset - len(raw)}", stacklevel=3)
            good_end = offset
            continue
        records.append(record)
        good_end = offset
    return records, good_end


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record in a results file (a torn last line is ignored)."""
    path = results_path(path)
    if not path.exists():
        return []
    return _good_lines(path)[0]


def repair(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Cut off a torn last line (left by a kill mid-write) so the next append starts on a fresh line;
    returns the complete records."""
    path = results_path(path)
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
    envs: list[dict[str, Any]] = []
    for record in records:
        env = record.get("env") or {}
        if env not in envs:
            envs.append(env)
    sweep_file = path.parent / SWEEP_FILE
    sweep = json.loads(sweep_file.read_text()) if sweep_file.exists() else {}
    # one row per point: its processes' records merged (a process measured twice: the last record wins)
    by_key: dict[Any, dict[int, dict[str, Any]]] = {}
    for record in records:
        by_key.setdefault(record.get("key"), {})[record.get("process", 0)] = record_row(record)
    rows = [merge_rows([by_process[p] for p in sorted(by_process)]) for by_process in by_key.values()]
    df = results_frame(rows, envs[0] if envs else {}, sweep)
    if len(df):
        attrs = df.attrs
        df = df.sort_values("index", kind="stable").reset_index(drop=True)
        df.attrs = attrs
    if len(envs) > 1:
        df.attrs["envs"] = envs
    return df
