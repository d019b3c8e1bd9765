"""Sweeps beyond one process: the points split into jobs through submitit, on a SLURM cluster or as
local jobs, each job writing its own results shard, merged into ``<out>/results.jsonl`` as they finish.

    tlstm-bench run gpu --executor slurm --partition gpu --gpus-per-job 1 --time-min 60 --jobs 8
    tlstm-bench collect results/gpu-...          # merge what finished, resubmit what failed, wait

Layout of ``<out>``: ``jobs.json`` (the manifest: each job's id, executor, shard and points),
``jobs/`` (submitit's folder: scripts, logs, pickles), ``shards/job-NNN/`` (each job's own run: its
``results.jsonl``, ``worker.log``, ``stops.jsonl`` if it was stopped, ``done.json`` once it finished),
``checkpoints/`` (training runs' state by the run's key, whichever job trains it). Every comparison group
(the implementations at one configuration) goes to one job whole, and a job writes a timing group's
records only once it has measured the group whole, so a ratio never mixes machines. Merging appends to
``results.jsonl`` only the records whose (point, process) it does not hold yet, under the output's lock;
a point already merged is never run again.

A job that is stopped (``scancel``, preemption, ``scontrol requeue``: SIGTERM; its time limit near:
SIGUSR2) drops the point in flight rather than record it as crashed, notes the stop in ``stops.jsonl``
and exits; a requeued job goes on from its shard, and ``collect`` resubmits what a job that ended left.
Job states come from ``squeue``, which works without an accounting database.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import results
from .contract import Point, measurement_id
from .measure import proc_field
from .outdir import OutputLock, atomic_write
from .runner import CHECKPOINTS_DIR, JOB_STOP_SIGNALS, Runner, comparison_groups, retriable
from .sweep import Sweep

EXECUTORS = ("local", "local-jobs", "slurm")
MANIFEST = "jobs.json"
JOBS_DIR = "jobs"
SHARDS_DIR = "shards"
DONE_FILE = "done.json"
STOPS_FILE = "stops.jsonl"  # under a shard: one line each time the job was stopped by a signal
MERGED_FILE = "merged.json"  # under shards/: how many bytes of each shard are merged
# SLURM states (squeue's) in which a job may still write its shard; a job squeue no longer lists has ended
RUNNING_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                  "SUSPENDED", "RESIZING", "STAGE_OUT", "SIGNALING", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}


class ClusterError(ValueError):
    """A cluster option is wrong or the cluster cannot be reached; the message says which and why."""


class JobStopped(BaseException):
    """A cluster job was told to stop (its signal's name): the point in flight is dropped, not recorded."""


SIGNAL_EARLY_S = 60  # sbatch(1): "the signal may be sent up to 60 seconds earlier than specified"
SIGNAL_DELAY_MAX_S = 90


def signal_delay_s(time_min: int) -> int:
    """How long before its time limit a job is told to stop (SIGUSR2): 90 s, less for a limit under 8 minutes."""
    return min(SIGNAL_DELAY_MAX_S, max(15, time_min * 60 // 5))


@dataclass
class ClusterOptions:
    executor: str = "local"
    jobs: int = 1
    partition: str | None = None
    gpus_per_job: int | None = None
    time_min: int = 60
    slurm_opts: dict[str, str] = field(default_factory=dict)

    def check(self, submitting: bool = True) -> None:
        """Refuse what cannot work, before anything is submitted (``submitting``: also that sbatch is here)."""
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
        if self.executor == "slurm" and absent and submitting:
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
    """What one job runs (pickled by submitit): the existing runner on its points, into its own shard. Run
    again (a requeued job), it goes on from what its shard holds, and training runs from their checkpoints."""

    def __init__(self, sweep: Sweep, points: list[Point], indices: list[int], shard: str, profile: bool,
                 time_min: int = 0) -> None:
        self.sweep, self.points, self.indices, self.shard, self.profile = sweep, points, indices, shard, profile
        self.time_min = time_min

    def __call__(self) -> dict[str, Any]:
        shard = Path(self.shard)
        runner = Runner(self.sweep, shard, profile=self.profile, checkpoints=shard.parent.parent / CHECKPOINTS_DIR,
                        job=True)
        started, started_at = time.monotonic(), time.time()

        def ignore_stops() -> None:
            for name in JOB_STOP_SIGNALS:
                signal.signal(getattr(signal, name), signal.SIG_IGN)

        def stop(signum, frame):  # once: a second signal must not interrupt the cleanup this one starts
            ignore_stops()
            raise JobStopped(signal.Signals(signum).name)

        for name in JOB_STOP_SIGNALS:  # in place of submitit's handlers, which ignore SIGTERM
            signal.signal(getattr(signal, name), stop)
        try:
            summary = runner.run(self.points, resume=True, indices=self.indices)
            ignore_stops()  # done: a stop now must not cost the note that says so
        except JobStopped as exc:
            saved = [c for c in map(runner.checkpoint_path, self.points) if c is not None and c.is_file()
                     and c.stat().st_mtime >= started_at]  # training runs that moved on in this attempt
            note = {"signal": str(exc), "at": time.time(), "elapsed_s": round(time.monotonic() - started, 1),
                    "groups_done": runner.groups_done, "longest_group_s": round(runner.longest_group_s, 1),
                    "checkpoints_saved": len(saved), "progress": runner.groups_done > 0 or bool(saved),
                    "time_min": self.time_min, "host": os.uname().nodename}
            with open(shard / STOPS_FILE, "a") as f:
                f.write(json.dumps(note) + "\n")
            why = "its time limit is near" if str(exc) == "SIGUSR2" else "cancelled, preempted or requeued"
            raise RuntimeError(f"stopped by {exc} ({why}) after {runner.groups_done} comparison group(s); the point "
                               "in flight was dropped and is measured again") from None
        done = {"statuses": summary.statuses, "skipped": summary.skipped, "wall_s": summary.wall_s,
                "groups_done": runner.groups_done, "longest_group_s": round(runner.longest_group_s, 1),
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
                              "slurm_signal_delay_s": signal_delay_s(options.time_min),
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
    manifest["options"] = vars(options)  # what collect resubmits with, unless told otherwise
    executor = _executor(options, out / JOBS_DIR, f"tlstm-{sweep.name}")
    by_index = dict(zip(indices, points))
    entries = []
    for share in plan(points, options.jobs):
        number = len(manifest["jobs"]) + len(entries)
        shard = out / SHARDS_DIR / f"job-{number:03d}"
        chosen = [by_index[i] for i in (indices[k] for k in share)]
        task = ShardTask(sweep, chosen, [indices[k] for k in share], str(shard), profile, options.time_min)
        job = executor.submit(task)
        entries.append({"number": number, "job_id": str(job.job_id), "executor": options.executor,
                        "shard": str(shard.relative_to(out)), "indices": [indices[k] for k in share],
                        "points": [p.as_dict() for p in chosen], "submitted_at": time.time()})
        # after every job: interrupted mid-way, the manifest still lists every job submitted
        atomic_write(out / MANIFEST, json.dumps({**manifest, "jobs": manifest["jobs"] + entries}, indent=1) + "\n")
    return entries


def slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """Each job's state as ``squeue`` shows it (squeue needs no accounting database, unlike sacct); a job it
    does not list has ended and been purged. None, with one warning, when squeue cannot answer."""
    if not job_ids:
        return {}
    try:
        listed = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T",
                                 f"--jobs={','.join(job_ids)}"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = str(exc)
    else:
        if listed.returncode == 0:
            states = {}
            for line in listed.stdout.splitlines():
                job, _, state = line.strip().partition("|")
                states[job] = state.split()[0].upper() if state.strip() else "UNKNOWN"
            return states
        if "invalid job id" in listed.stderr.lower():  # none of them is known any more: all ended
            return {}
        why = (listed.stderr.strip().splitlines() or [f"exit code {listed.returncode}"])[-1]
    warnings.warn(f"squeue cannot say which jobs still run ({why[:200]}); counting them as running", stacklevel=2)
    return None


def running_jobs(out: Path, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs that may still write to their shards: not finished, not failed, not cancelled. A SLURM job whose
    state squeue cannot give counts as running (nothing is resubmitted twice)."""
    unfinished = [e for e in entries if not (out / e["shard"] / DONE_FILE).exists()]
    slurm = [e["job_id"] for e in unfinished if e["executor"] == "slurm"]
    states = slurm_states(slurm) if slurm else {}
    return [e for e in unfinished if job_running(out, e, states)]


def job_running(out: Path, entry: dict[str, Any], states: dict[str, str] | None = None) -> bool:
    """Whether a job may still write to its shard; ``states``: slurm_states of the run's jobs (None: unknown)."""
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
    if states is None:
        return True
    return states.get(str(entry["job_id"]), "ENDED") in RUNNING_STATES


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
        replaceable: dict[tuple[str, int], Any] | None = None  # read only if a record is already merged
        fresh = []
        for record in new:
            ident = measurement_id(record)
            if ident in have:
                if replaceable is None:
                    replaceable = _replaceable(results.read_records(out) + fresh)
                if ident not in replaceable or replaceable[ident] == record.get("started_at"):
                    continue  # merged already (itself, read again), or merged final
            fresh.append(record)
            have.add(ident)
            if replaceable is not None:  # kept as _replaceable would find it with this record appended
                if retriable(record, None):
                    replaceable[ident] = record.get("started_at")
                else:
                    replaceable.pop(ident, None)
        if fresh:
            results.append(out, *fresh)  # which cuts a torn last line of results.jsonl off first
        if moved:  # even without a record (an unreadable line): it is not read and warned about again
            atomic_write(state_file, json.dumps({k: list(v) for k, v in offsets.items()}, indent=0) + "\n")
    return len(fresh)


def _notes(shard: Path) -> list[dict[str, Any]]:
    """What a shard's job said of itself: each stop (``stops.jsonl``) and its end (``done.json``)."""
    notes = []
    for path in (shard / STOPS_FILE, shard / DONE_FILE):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                note = json.loads(line)
            except ValueError:
                continue
            if isinstance(note, dict):
                notes.append(note)
    return notes


def time_limit_problem(out: Path, manifest: dict[str, Any], time_min: int) -> tuple[str, int] | None:
    """Why jobs with a limit of ``time_min`` minutes cannot finish a timing comparison group, from what the
    run's jobs measured, and the limit to ask for instead (None when nothing says so). A training run needs
    no such check: it goes on from its checkpoint in the next job."""
    longest, stuck = 0.0, None
    for entry in manifest["jobs"]:
        for note in _notes(out / entry["shard"]):
            longest = max(longest, float(note.get("longest_group_s") or 0))
            if (note.get("signal") == "SIGUSR2" and note.get("groups_done") == 0
                    and int(note.get("time_min") or 0) >= time_min):
                stuck = stuck or (entry, note)
    usable_s = time_min * 60 - signal_delay_s(time_min) - SIGNAL_EARLY_S
    if stuck:
        entry, note = stuck
        return (f"job {entry['job_id']} reached its time limit ({note['time_min']} min) before it measured one "
                f"comparison group whole, so a job with --time-min {time_min} would end the same way",
                2 * int(note["time_min"]))
    if longest and longest > usable_s:
        needed = -(-(longest + SIGNAL_DELAY_MAX_S + SIGNAL_EARLY_S) // 60)  # whole minutes: group, signal's lead, slack
        return (f"the longest comparison group so far took {longest / 60:.1f} min, and a job with --time-min "
                f"{time_min} has about {max(usable_s, 0) / 60:.1f} min before it is told to stop", int(needed))
    return None


def progressed_stops(out: Path, manifest: dict[str, Any]) -> int:
    """How many times the run's jobs were stopped by a signal (time limit, scancel, preemption) after making
    progress: a comparison group measured whole, or a training run's checkpoint saved."""
    return sum(1 for e in manifest["jobs"] for note in _notes(out / e["shard"])
               if "signal" in note and note.get("progress"))


def _replaceable(records: list[dict[str, Any]]) -> dict[tuple[str, int], Any]:
    """The (point, process) whose last record a later one replaces (the loader keeps the last line): a training
    run that ended ``crashed`` or ``timeout``, a point that failed for want of disk space; with its start time,
    which tells it from itself read again."""
    last: dict[tuple[str, int], Any] = {}
    for record in records:
        if retriable(record, None):
            last[measurement_id(record)] = record.get("started_at")
        else:
            last.pop(measurement_id(record), None)
    return last


def _measured_again(out: Path) -> set[tuple[str, int]]:
    """The (point, process) of merged records that a job is to measure again, their new record replacing them:
    training runs that ended ``crashed`` or ``timeout`` with their checkpoint kept (bench.runner.retriable)."""
    checkpoints = out / CHECKPOINTS_DIR
    keys = {path.name.removesuffix(".pt") for path in checkpoints.glob("*.pt")}
    if not keys:
        return set()
    return {measurement_id(r) for r in results.read_records(out) if r.get("key") in keys and retriable(r, checkpoints)}


def missing(out: Path, sweep: Sweep, manifest: dict[str, Any],
            running: list[dict[str, Any]] | None = None) -> tuple[list[Point], list[int]]:
    """The manifest's points with a (point, process) measurement still absent from ``results.jsonl``, less
    those a job in ``running`` may still measure."""
    have = results.measurement_ids(out) - _measured_again(out)
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
        running = running_jobs(out, manifest["jobs"])
        if progress:
            progress(len(manifest["jobs"]) - len(running), len(manifest["jobs"]), len(results.measurement_ids(out)))
        if not running:
            break
        time.sleep(poll_s)
    merge_shards(out)
