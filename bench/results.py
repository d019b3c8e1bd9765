"""The results file ``<out>/results.jsonl`` (one JSON line per point and worker process), its writer and its loader.

Schema 4, the encoding written today, keeps a line small without hiding anything from ``jq`` or
``pandas.read_json(lines=True)`` but the raw samples:

- a record's raw samples are ``"samples_f32"``: the little-endian float32 bytes of the samples, in
  base64 (about 5.3 bytes a sample; a decimal float was about 20). float32 holds a time to 7
  significant digits, far finer than any timing noise; the median and quartiles in ``metrics`` are
  computed from the full-precision samples before they are written.
- the environment, the same for every line a run writes, is written once, as its own line
  ``{"schema": 4, "env_id": "<16 hex>", "env": {...}}``, just before the first record that uses it;
  records carry its ``"env_id"``. An environment line without records is harmless; a record whose
  environment line is missing still loads, with an empty environment and a warning.

In memory (what :func:`read_records` returns and :func:`append` takes) a record is the same as in
schema 3: ``samples_s`` (a list or a float64 array) and ``env`` (a dict). Lines of schemas 1-3 (samples
as decimal lists, the environment in every line) still load.

Writing appends whole lines and flushes and fsyncs them, so a record is either fully in the file or not
at all, except for the last line of a file whose writer was killed mid-write: readers ignore a last
line without its newline (or one that does not parse), and :func:`repair` cuts it off before appending.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .contract import (
    SCHEMA_VERSION,
    machine_fingerprint,
    measurement_id,
    merge_rows,
    record_problem,
    record_row,
    results_frame,
    samples_row,
    upgrade,
)
from .outdir import OutputLock

RESULTS_FILE = "results.jsonl"
SWEEP_FILE = "sweep.json"

# What each file holds, by path: (bytes of complete lines indexed, environment ids, (key, process) ids of
# its readable records). A writer appends an environment line only for an id the file lacks, and a merge
# appends only records the file lacks; the index reads only the bytes added since it last looked (all of
# them again if the file got shorter), so neither costs a pass over a large file each time.
_INDEX: dict[Path, tuple[int, set[str], set[tuple[str, int]]]] = {}


def results_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/results.jsonl``."""
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


class ResultsWarning(UserWarning):
    """A results line was skipped; the message names the file, the line and why."""


def env_id(env: dict[str, Any]) -> str:
    """The id of an environment: a hash of its canonical JSON."""
    return hashlib.sha1(json.dumps(env, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_samples(samples: Any) -> str:
    """Raw samples as base64 little-endian float32 (the schema-4 ``samples_f32`` field); ValueError for a
    sample no reader would take (not a finite time that float32 holds)."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size and not (np.isfinite(values).all() and values.min() >= np.finfo(np.float32).tiny
                            and values.max() <= np.finfo(np.float32).max):
        raise ValueError(f"samples_s must be finite times in float32's range, got {values[:5].tolist()}...")
    return base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")


def decode_samples(text: Any) -> np.ndarray:
    """The samples of a ``samples_f32`` field as float64; ValueError if it is not base64 float32 data."""
    if not isinstance(text, str):
        raise ValueError(f"'samples_f32' is a base64 string, got {type(text).__name__}")
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError(f"'samples_f32' holds {len(raw)} bytes, not a whole number of float32 values")
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)


def encode_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record in memory as its schema-4 line (samples in base64 float32, the environment by its id)."""
    record = upgrade(record)
    line = {name: value for name, value in record.items() if name not in ("samples_s", "env")}
    samples = record.get("samples_s")
    line["samples_f32"] = encode_samples(samples if samples is not None else [])
    line["env_id"] = env_id(record.get("env") or {})
    return line


def _decode(record: dict[str, Any]) -> None:
    """Turn a schema-4 line into a record in memory, in place (samples decoded; the environment is resolved
    by the caller, which knows the file's environment lines)."""
    if "samples_f32" in record:
        record["samples_s"] = decode_samples(record.pop("samples_f32"))
    elif isinstance(record.get("samples_s"), list):
        samples = record["samples_s"]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in samples):
            try:
                record["samples_s"] = np.asarray(samples, dtype=np.float64)
            except OverflowError:  # an integer beyond any float: not a time
                raise ValueError("'samples_s' holds a number too large for a time") from None


def _ids_in(data: bytes, name: str) -> tuple[set[str], set[tuple[str, int]]]:
    """The environment ids and the (key, process) of the readable records among the complete lines of
    ``data`` (an unreadable line is no measurement: the merge takes a good copy of it, and ``collect`` runs
    it again)."""
    envs = _envs_in(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)  # the loader names them; here only the ids count
        return set(envs), {measurement_id(r) for r in iter_records(data, name, envs=envs)}


def _index(path: Path) -> tuple[int, set[str], set[tuple[str, int]]]:
    """The file's index, brought up to date with what was appended since it was last read."""
    key = path.resolve()
    size = path.stat().st_size if path.exists() else 0
    done, envs, ids = _INDEX.get(key) or (0, set(), set())
    if done > size:  # cut short since: read it all again
        done, envs, ids = 0, set(), set()
    if size > done:
        with open(path, "rb") as f:
            f.seek(done)
            data = f.read(size - done)
        data = data[:data.rfind(b"\n") + 1]
        more_envs, more_ids = _ids_in(data, str(path))
        done = done + len(data)
        envs.update(more_envs)
        ids.update(more_ids)
    _INDEX[key] = (done, envs, ids)
    return done, envs, ids


def _envs_in(data: bytes) -> dict[str, dict[str, Any]]:
    """The environment lines in ``data``, by id, in whatever layout (``jq -c`` rewrites the writer's): only
    lines that name an ``env_id`` and no ``key`` are parsed. A later line with the same id wins."""
    envs = {}
    for raw in data.splitlines():
        if b'"env_id"' not in raw or b'"key"' in raw:
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(line.get("env"), dict) and isinstance(line.get("env_id"), str):
            envs[line["env_id"]] = line["env"]
    return envs


def iter_records(data: bytes, name: str, whole_file: Path | None = None,
                 envs: dict[str, dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    """The records of the complete lines of ``data`` (a results file's bytes, or the bytes after an
    offset), one at a time, in file order. Environment lines resolve the records that refer to them
    (wherever they stand in the file; when ``data`` starts at an offset, ``whole_file`` is the file, whose
    earlier lines count too); a line that is not a record is skipped with a ResultsWarning naming it.
    ``envs``: the environment lines of ``data``, where the caller has read them already."""
    envs = _envs_in(data) if envs is None else envs
    missing_env: set[str] = set()
    good_end = data.rfind(b"\n") + 1  # a last line without its newline is a write cut short: not a result
    for number, raw in enumerate(data[:good_end].splitlines(), start=1):
        try:
            record = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for a byte that is not UTF-8
            problem = f"not a JSON line ({type(exc).__name__}: {exc})"
        else:
            if isinstance(record, dict) and "env_id" in record and "key" not in record:
                if isinstance(record.get("env"), dict) and isinstance(record["env_id"], str):
                    continue  # an environment line: read above
                problem = "an environment line without an 'env' object"
            else:
                try:
                    if isinstance(record, dict):
                        _decode(record)
                    problem = record_problem(record)
                    if not problem and not isinstance(record.get("env_id", ""), str):
                        problem = f"'env_id' is not a string (got {type(record['env_id']).__name__})"
                except ValueError as exc:  # binascii.Error is a ValueError
                    problem = f"unreadable samples ({exc})"
        if problem:
            warnings.warn(f"{name}: line {number} skipped: {problem}", ResultsWarning, stacklevel=3)
            continue
        if "env_id" in record:
            ident = record.pop("env_id")
            if ident not in envs and whole_file is not None:  # written before the offset: read the file's
                envs = {**_envs_in(whole_file.read_bytes()), **envs}
                whole_file = None
            if ident not in envs:
                missing_env.add(ident)
            record["env"] = envs.get(ident, {})
        yield record
    if missing_env:
        warnings.warn(f"{name}: no environment line for env_id {', '.join(sorted(missing_env))}; those records "
                      "load with an empty environment", ResultsWarning, stacklevel=3)


def parse_lines(data: bytes, name: str, whole_file: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """:func:`iter_records` as a list, and the length of the complete lines of ``data``."""
    return list(iter_records(data, name, whole_file)), data.rfind(b"\n") + 1


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every readable record in a results file (a torn last line is ignored, unreadable lines skipped)."""
    path = results_path(path)
    if not path.exists():
        return []
    return parse_lines(path.read_bytes(), str(path))[0]


def measurement_ids(path: str | os.PathLike) -> set[tuple[str, int]]:
    """The (key, process) of every readable record of a results file (a copy of the file's index: cheap on a
    file of 100,000 lines when little was appended since the last call)."""
    path = results_path(path)
    return set(_index(path)[2]) if path.exists() else set()


def cut_torn_line(path: str | os.PathLike) -> None:
    """Cut off a torn last line (left by a kill mid-write) so the next append starts on a fresh line,
    reading only the file's tail. Takes the output directory's lock (re-entrant), so the bytes it cuts
    can belong to no other writer."""
    path = results_path(path)
    if not path.parent.is_dir():
        return
    with OutputLock(path.parent):
        if not path.exists():
            return
        size = path.stat().st_size
        with open(path, "r+b") as f:
            end = size
            while end > 0:  # find the last newline, reading backwards
                start = max(0, end - 65536)
                f.seek(start)
                chunk = f.read(end - start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            if end != size:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())


def repair(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Cut off a torn last line (left by a kill mid-write) so the next append starts on a fresh line;
    returns the readable records. Takes the output directory's lock (re-entrant), so the bytes it cuts
    can belong to no other writer."""
    path = results_path(path)
    if not path.parent.is_dir():
        return []
    with OutputLock(path.parent):
        cut_torn_line(path)
        return read_records(path)


def append(path: str | os.PathLike, *records: dict[str, Any]) -> None:
    """Append records (in memory form) as schema-4 lines, with the environment line of any environment
    the file lacks before them; one write, flushed and fsynced before returning."""
    path = results_path(path)
    cut_torn_line(path)  # a line torn by a kill is cut off first, or the first new line would be glued to it
    done, envs, ids = _index(path)
    known = set(envs)
    lines = []
    for record in records:
        line = encode_record(record)
        if line["env_id"] not in known:
            known.add(line["env_id"])
            env_line = {"schema": SCHEMA_VERSION, "env_id": line["env_id"], "env": record.get("env") or {}}
            lines.append(json.dumps(env_line, allow_nan=False))
        lines.append(json.dumps(line, allow_nan=False))
    data = ("\n".join(lines) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        start = f.tell()
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if start == done:  # the index was complete: it now holds these lines too
        envs.update(known)
        ids.update(measurement_id(r) for r in records)
        _INDEX[path.resolve()] = (start + len(data), envs, ids)


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


def _point_row(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One point's row from its processes' records: the first ok record flattened whole, the others only as far
    as ``merge_rows`` reads them (status, message, samples)."""
    if len(records) == 1:
        return record_row(records[0])
    base = next((i for i, r in enumerate(records) if r.get("status") == "ok"), 0)
    return merge_rows([record_row(r) if i == base else samples_row(r) for i, r in enumerate(records)])


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
    envs: list[dict[str, Any]] = []  # one per machine (host, device, versions): the start-up matmul rate varies
    seen: set[str | None] = set()
    # one row per point: its processes' records merged (a process measured twice: the last record wins). Each
    # record becomes its row as it is read, so the records of a large file are never all held at once; the
    # cyclic garbage collector, which would rescan every object made so far again and again, waits until the end
    by_key: dict[Any, dict[int, dict[str, Any]]] = {}
    collecting = gc.isenabled()
    gc.disable()
    try:
        for record in iter_records(path.read_bytes(), str(path)):
            env = record.get("env") or {}
            machine = machine_fingerprint(env)
            if machine not in seen:
                seen.add(machine)
                envs.append(env)
            key, process = measurement_id(record)
            by_key.setdefault(key, {})[process] = record
        rows = [_point_row([by_process[p] for p in sorted(by_process)]) for by_process in by_key.values()]
    finally:
        if collecting:
            gc.enable()
    if not rows and path.stat().st_size > 0:
        raise ValueError(f"{path}: no line is a results record (is it a results.jsonl?)")
    sweep = read_sweep(path.parent)
    df = results_frame(rows, envs[0] if envs else {}, sweep)
    if len(df):
        attrs = df.attrs
        df = df.sort_values("index", kind="stable").reset_index(drop=True)
        df.attrs = attrs
    if len(envs) > 1:
        df.attrs["envs"] = envs
    return df
