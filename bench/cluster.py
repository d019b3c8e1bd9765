"""Sweeps beyond one process: the points split into jobs through submitit, on a SLURM cluster or as
local jobs, each job writing its own results shard, merged into ``<out>/results.jsonl`` as they finish.

    tlstm-bench run gpu --executor slurm --partition gpu --gpus-per-job 1 --time-min 60 --jobs 8
    tlstm-bench collect results/gpu-...          # merge what finished, resubmit what failed, wait

Layout of ``<out>``: ``jobs.json`` (the manifest: each job's id, executor, shard and points),
``jobs/`` (submitit's folder: scripts, logs, pickles), ``shards/job-NNN/`` (each job's own run: its
``results.jsonl``, ``worker.log`` and ``done.json`` once it finished). Every comparison group (the
implementations at one configuration) goes to one job whole, so a ratio never mixes machines. Merging
appends to ``results.jsonl`` only the records whose (point, process) it does not hold yet, under the
output's lock; a point already merged is never run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import results
from .contract import Point, measurement_id
from .measure import proc_field
from .outdir import OutputLock, atomic_write
from .runner import Runner, comparison_groups
from .sweep import Sweep

EXECUTORS = ("local", "local-jobs", "slurm")
MANIFEST = "jobs.json"
JOBS_DIR = "jobs"
SHARDS_DIR = "shards"
DONE_FILE = "done.json"
MERGED_FILE = "merged.json"  # under shards/: how many bytes of each shard are merged
# SLURM states in which a job may still write its shard. submitit says UNKNOWN for a job sacct does not list
# yet (just submitted) or any more (purged): counted as running for UNKNOWN_GRACE_S after submission.
RUNNING_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "READY"}
UNKNOWN_GRACE_S = 600.0


class ClusterError(ValueError):
    """A cluster option is wrong or the cluster cannot be reached; the message says which and why."""


@dataclass
class ClusterOptions:
    executor: str = "local"
    jobs: int = 1
    partition: str | None = None
    gpus_per_job: int | None = None
    time_min: int = 60
    slurm_opts: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse what cannot work, before anything is submitted."""
        if self.executor not in EXECUTORS:
            raise ClusterError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if not 1 <= self.jobs <= 10_000:
            raise ClusterError(f"--jobs must be an integer from 1 to 10,000, got {self.jobs}")
        if not 1 <= self.time_min <= 60 * 24 * 30:
            raise ClusterError(f"--time-min must be from 1 to 43,200 minutes, got {self.time_min}")
        slurm_only = [name for name, given in (("--partition", self.partition), ("--gpus-per-job", self.gpus_per_job),
                                               ("--slurm-opt", self.slurm_opts)) if given]
        if slurm_only and self.executor != "slurm":
            raise ClusterError(f"{', '.join(slurm_only)}: only with --executor slurm (got --executor {self.executor})")
        if self.executor == "local" and self.jobs != 1:
            raise ClusterError("--jobs needs --executor local-jobs or slurm; --executor local runs in this process")
        if self.gpus_per_job is not None and not 0 <= self.gpus_per_job <= 64:
            raise ClusterError(f"--gpus-per-job must be from 0 to 64, got {self.gpus_per_job}")
        absent = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if self.executor == "slurm" and absent:
            raise ClusterError(f"--executor slurm needs a SLURM login node: no {' or '.join(absent)} on PATH")


def parse_slurm_opts(items: list[str]) -> dict[str, str]:
    """``--slurm-opt KEY=VALUE`` as {key: value} (extra #SBATCH lines, e.g. account=abc, qos=high)."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ClusterError(f"--slurm-opt must be KEY=VALUE (an sbatch option without its dashes), got {item!r}")
        opts[key.strip().replace("-", "_")] = value.strip()
    return opts


class ShardTask:
    """What one job runs (pickled by submitit): the existing runner on its points, into its own shard."""

    def __init__(self, sweep: Sweep, points: list[Point], indices: list[int], shard: str, profile: bool) -> None:
        self.sweep, self.points, self.indices, self.shard, self.profile = sweep, points, indices, shard, profile

    def __call__(self) -> dict[str, Any]:
        shard = Path(self.shard)
        summary = Runner(self.sweep, shard, profile=self.profile).run(self.points, resume=True, indices=self.indices)
        done = {"statuses": summary.statuses, "skipped": summary.skipped, "wall_s": summary.wall_s,
                "host": os.uname().nodename}
        atomic_write(shard / DONE_FILE, json.dumps(done) + "\n")
        return done


def plan(points: list[Point], jobs: int) -> list[list[int]]:
    """The points' indices per job: comparison groups kept whole, the largest first onto the lightest job."""
    groups = sorted(comparison_groups(points), key=len, reverse=True)
    shares: list[list[int]] = [[] for _ in range(min(jobs, len(groups)))]
    for group in groups:
        lightest = min(range(len(shares)), key=lambda j: len(shares[j]))
        shares[lightest].extend(index for index, _ in group)
    return [sorted(share) for share in shares]


def _executor(options: ClusterOptions, folder: Path, name: str):
    import submitit

    # -P: the job's Python does not put its working directory on sys.path (no code from where the user runs)
    if options.executor == "local-jobs":
        executor = submitit.LocalExecutor(folder=folder, python=f"{shlex.quote(sys.executable)} -P")
        executor.update_parameters(timeout_min=options.time_min)
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params: dict[str, Any] = {"timeout_min": options.time_min, "name": name,
                              "slurm_setup": ["export PYTHONSAFEPATH=1"]}
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.gpus_per_job is not None:
        params["gpus_per_node"] = options.gpus_per_job
    if options.slurm_opts:
        params["slurm_additional_parameters"] = dict(options.slurm_opts)
    executor.update_parameters(**params)
    return executor


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.exists():
        raise ClusterError(f"{out}: no {MANIFEST} here; this output was not run with --executor local-jobs or slurm")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ClusterError(f"{path}: not readable ({exc})") from None
    fields = ("number", "job_id", "executor", "shard", "indices", "points")
    if (not isinstance(manifest, dict) or not isinstance(manifest.get("options"), dict)
            or not isinstance(manifest.get("jobs"), list)
            or not all(isinstance(e, dict) and all(f in e for f in fields) for e in manifest["jobs"])):
        raise ClusterError(f"{path}: not a jobs manifest (an object with 'options' and 'jobs', each job with "
                           f"{', '.join(fields)})")
    return manifest


def submit(out: Path, sweep: Sweep, points: list[Point], indices: list[int], options: ClusterOptions,
           profile: bool) -> list[dict[str, Any]]:
    """Submit jobs for these points; add them to the manifest (written atomically) and return them."""
    manifest = (read_manifest(out) if (out / MANIFEST).exists()
                else {"options": vars(options), "profile": profile, "jobs": []})
    executor = _executor(options, out / JOBS_DIR, f"tlstm-{sweep.name}")
    by_index = dict(zip(indices, points))
    entries = []
    for share in plan(points, options.jobs):
        number = len(manifest["jobs"]) + len(entries)
        shard = out / SHARDS_DIR / f"job-{number:03d}"
        chosen = [by_index[i] for i in (indices[k] for k in share)]
        task = ShardTask(sweep, chosen, [indices[k] for k in share], str(shard), profile)
        job = executor.submit(task)
        entries.append({"number": number, "job_id": str(job.job_id), "executor": options.executor,
                        "shard": str(shard.relative_to(out)), "indices": [indices[k] for k in share],
                        "points": [p.as_dict() for p in chosen], "submitted_at": time.time()})
    manifest["jobs"].extend(entries)
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return entries


def job_running(out: Path, entry: dict[str, Any]) -> bool:
    """Whether a job may still write to its shard (not finished, not failed, not cancelled)."""
    if (out / entry["shard"] / DONE_FILE).exists():
        return False
    if entry["executor"] == "local-jobs":
        # a local job's id is its controller's process id; a killed one may linger as a zombie of this process
        try:
            pid = int(entry["job_id"])
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has ended
        except (ValueError, ChildProcessError):
            pass
        state = proc_field(f"/proc/{entry['job_id']}/status", "State")
        return state is not None and not state.startswith(("Z", "X"))
    import submitit

    state = submitit.SlurmJob(folder=out / JOBS_DIR, job_id=entry["job_id"]).state.split()[0].upper()
    if state == "UNKNOWN":
        return time.time() - entry.get("submitted_at", 0) < UNKNOWN_GRACE_S
    return state in RUNNING_STATES


def _merged_offsets(state_file: Path) -> dict[str, tuple[int, str]]:
    """``shards/merged.json``: per shard, the bytes merged and a hash of the last line merged. A value that is
    not such a pair (a hand-edited or damaged file) reads as nothing merged: the shard is read again, and
    the (point, process) check keeps its records from being appended twice."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return {}
    offsets = {}
    for name, value in (state.items() if isinstance(state, dict) else ()):
        if (isinstance(value, list) and len(value) == 2 and type(value[0]) is int and value[0] >= 0
                and isinstance(value[1], str)):
            offsets[str(name)] = (value[0], value[1])
    return offsets


def _tail_hash(path: Path, end: int) -> str:
    """A hash of the line that ends at byte ``end`` of ``path`` (at most its last 4 KB): tells a shard that
    grew from one that was replaced by another file as long."""
    with open(path, "rb") as f:
        f.seek(max(0, end - 4096))
        tail = f.read(end - max(0, end - 4096))
    return hashlib.sha1(tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:]).hexdigest()


def merge_shards(out: Path) -> int:
    """Append to ``results.jsonl`` every shard record whose (point, process) it lacks; returns how many.

    Linear in what is new: ``shards/merged.json`` keeps, per shard, how many bytes of it have been merged
    (with a hash of the last line merged), and only the bytes after that are read; a shard that got shorter,
    or whose line at that offset is another, is read from its start. The offsets are written after the
    records are appended and fsynced, so a merge killed in between reads those bytes again, and the
    (point, process) check keeps them from being appended twice.
    """
    with OutputLock(out):
        state_file = out / SHARDS_DIR / MERGED_FILE
        offsets = _merged_offsets(state_file)
        new: list[dict[str, Any]] = []
        moved = False
        for shard in sorted((out / SHARDS_DIR).glob("job-*")):
            path = shard / results.RESULTS_FILE
            size = path.stat().st_size if path.is_file() else 0
            start, tail = offsets.get(shard.name, (0, ""))
            if start > size or (start and _tail_hash(path, start) != tail):  # cut short, or another file now
                start = 0
            if size == start:
                continue
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(size - start)
            records, used = results.parse_lines(data, str(path), whole_file=path if start else None)
            new += records
            if used:
                offsets[shard.name] = (start + used, _tail_hash(path, start + used))
                moved = True
        have = results.measurement_ids(out) if new else set()
        fresh = []
        for record in new:
            ident = measurement_id(record)
            if ident not in have:
                fresh.append(record)
                have.add(ident)
        if fresh:
            results.append(out, *fresh)  # which cuts a torn last line of results.jsonl off first
        if moved:  # even without a record (an unreadable line): it is not read and warned about again
            atomic_write(state_file, json.dumps({k: list(v) for k, v in offsets.items()}, indent=0) + "\n")
    return len(fresh)


def missing(out: Path, sweep: Sweep, manifest: dict[str, Any],
            running: list[dict[str, Any]] | None = None) -> tuple[list[Point], list[int]]:
    """The manifest's points with a (point, process) measurement still absent from ``results.jsonl``, less
    those a job in ``running`` may still measure."""
    have = results.measurement_ids(out)
    pending = {index for entry in (running or []) for index in entry["indices"]}
    points, indices, seen = [], [], set()
    for entry in manifest["jobs"]:
        for index, config in zip(entry["indices"], entry["points"]):
            point = Point.from_dict(config)
            complete = all((point.key, p) in have for p in range(sweep.budget["processes"]))
            if not complete and index not in seen and index not in pending:
                points.append(point)
                indices.append(index)
                seen.add(index)
    return points, indices


def wait(out: Path, manifest: dict[str, Any], progress=None, poll_s: float = 2.0) -> None:
    """Merge shards as jobs finish, until no job runs; ``progress(done_jobs, jobs, merged_points)``."""
    while True:
        merge_shards(out)
        running = [entry for entry in manifest["jobs"] if job_running(out, entry)]
        if progress:
            progress(len(manifest["jobs"]) - len(running), len(manifest["jobs"]), len(results.measurement_ids(out)))
        if not running:
            break
        time.sleep(poll_s)
    merge_shards(out)
