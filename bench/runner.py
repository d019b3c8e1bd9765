"""Runs a sweep's points in a persistent worker process and appends one result line per point.

The worker (``bench.worker``) imports torch once and measures points one after another. The runner
waits for each reply with the point's timeout and turns what the worker cannot report into a row:

- no reply in time: the worker is killed and replaced -> ``timeout``;
- the worker died (segfault, abort, killed by the OOM killer) -> ``crashed`` with the signal;
- out of memory, unavailable, wrong results, exceptions come back from the worker as statuses.

Every finished point is appended to ``results.jsonl`` before the next starts, so a run killed at any
moment loses at most the point in flight; ``resume=True`` skips the points already in the file.

With ``budget.processes = N`` every point is measured in N worker processes: for each comparison
group (the implementations at one configuration), round 0 runs every implementation in worker 0,
round 1 in worker 1, and so on, so the processes and the implementations are interleaved in time and
the spread between processes is measured, not confounded with drift over the run.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import axes, results
from .contract import Point, make_record, measurement_id
from .outdir import OutputLock
from .sweep import Sweep
from .worker import DISK_FULL

WORKER_STARTUP_TIMEOUT_S = 180.0
# The worker's entry point. Not `python -m bench.worker`, which puts the current directory first on
# sys.path, so that a `reports.py` or `pynvml.py` lying where the user runs would be imported: the
# first path entry (the current directory, for -c) is removed before anything else is imported.
WORKER_BOOT = (
    "import os, signal, sys\n"
    # a cluster job's worker ignores the signals that stop the job (scancel, preemption, the time limit): the
    # job's runner stops it, so that a stopped job is never mistaken for a crash of the point in flight
    "for name in os.environ.pop('TLSTM_BENCH_WORKER_IGNORES', '').split():\n"
    "    signal.signal(getattr(signal, name), signal.SIG_IGN)\n"
    "if sys.path and sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    "import runpy\n"
    "runpy.run_module('bench.worker', run_name='__main__', alter_sys=True)\n"
)
ENV_TIMEOUT_S = 300.0
TRACES_DIR = "traces"  # <out>/traces/<point key>.json.gz, written by `tlstm-bench profile`
CHECKPOINTS_DIR = "checkpoints"  # <out>/checkpoints/<point key>.pt: a training run's state until its line is written
LOG_TAIL_LINES = 4
# A training run that ends so (its worker killed, out of memory, past its timeout) keeps its checkpoint, and
# --resume runs it again from there; a second such end after resuming is final.
RETRIED = ("crashed", "timeout")
# What stops a cluster job: scancel and preemption send SIGTERM; SIGUSR2 comes before the time limit (bench.cluster)
JOB_STOP_SIGNALS = ("SIGTERM", "SIGUSR2")


def comparison_groups(points: list[Point], indices: list[int] | None = None) -> list[list[tuple[int, Point]]]:
    """Consecutive points equal in every axis with the ``group`` role (``bench.axes``): the implementations
    measured at one configuration (their widths may differ, as a params pairing chose), which are timed
    interleaved and never split."""

    def group(item: tuple[int, Point]) -> tuple:
        return tuple(getattr(item[1], name) for name in axes.names(axes.GROUP))

    numbered = zip(indices if indices is not None else range(len(points)), points)
    return [list(members) for _, members in itertools.groupby(numbered, key=group)]


def retriable(record: dict[str, Any], checkpoints: Path | None) -> bool:
    """Whether a record is to be measured again (and its new line replace it): a point that failed for want of
    disk space, or a training run that ended ``crashed`` or ``timeout`` while its checkpoint is kept (in the
    folder ``checkpoints``; None: whether or not it is)."""
    if str(record.get("message", "")).startswith(DISK_FULL):
        return True
    return (record.get("status") in RETRIED and isinstance(record.get("config"), dict)
            and bool(record["config"].get("train"))
            and (checkpoints is None or (checkpoints / f"{record.get('key')}.pt").is_file()))


class WorkerGone(RuntimeError):
    """The worker exited; ``returncode`` says how."""

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode
        super().__init__(f"worker exited ({describe_exit(returncode)})")


class WorkerTimeout(RuntimeError):
    """No reply from the worker in time."""


def describe_exit(returncode: int | None) -> str:
    """"signal SIGABRT (exit code -6)" for a worker killed by a signal, "exit code 1" otherwise."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"signal {name} (exit code {returncode})"
    return f"exit code {returncode}"


class Worker:
    """One worker process (``bench.worker``, started by ``WORKER_BOOT``) and its JSON-lines pipes."""

    def __init__(self, plugins: list[str], base_dir: str | None, log_path: Path, threads: int = 0,
                 ignores: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER_BOOT, json.dumps(plugins), base_dir or "", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            # its own session: Ctrl-C reaches the runner, which stops the worker itself, so an interrupt
            # is not mistaken for a crash of the point in flight
            start_new_session=True,
            env={**os.environ, "TLSTM_BENCH_WORKER_IGNORES": " ".join(ignores)},
        )
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            ready = self.receive(WORKER_STARTUP_TIMEOUT_S)
        except (WorkerGone, WorkerTimeout) as exc:
            tail = self.log_tail()
            self.close()
            raise RuntimeError(f"the worker did not start: {exc}" + (f"; its last output: {tail}" if tail else "")
                               + f" (all of it in {log_path})") from None
        if ready.get("op") != "ready":
            raise RuntimeError(f"worker sent {ready!r} instead of ready")

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerGone(self.proc.wait()) from None

    def receive(self, timeout_s: float) -> dict[str, Any]:
        """The next reply line; WorkerTimeout after ``timeout_s``, WorkerGone if the worker exits."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimeout(f"no reply within {timeout_s:g} s")
            if not self._selector.select(remaining):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:  # EOF: the worker is gone, maybe mid-line
                try:
                    code = self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.kill()
                    code = self.proc.returncode
                raise WorkerGone(code)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def request(self, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self.send(message)
        return self.receive(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send({"op": "exit"})
                self.proc.wait(timeout=2)  # an idle worker exits at once; a busy one (Ctrl-C) is killed
        except (WorkerGone, subprocess.TimeoutExpired):
            pass
        self.kill()
        self._selector.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._log.close()

    def log_tail(self) -> str:
        """The last lines the worker wrote to stderr (a crash's 'Fatal Python error' and the like)."""
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        tail = [ln for ln in lines[-LOG_TAIL_LINES:] if not ln.startswith("--- point")]
        return " | ".join(tail)


@dataclass
class RunSummary:
    """What happened in a run: counts per status and where the results are."""

    out_dir: Path
    total: int
    skipped: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


ProgressFn = Callable[[int, int, Point, str | None, float], None]


class Runner:
    """Runs points of a sweep through a (replaceable) worker, writing results as it goes."""

    def __init__(self, sweep: Sweep, out_dir: Path, profile: bool = False, checkpoints: Path | None = None,
                 job: bool = False) -> None:
        self.sweep = sweep
        self.out_dir = out_dir
        self.profile = profile  # one profiled call per point after the timed ones (process 0 only)
        # where training runs keep their state, by the run's key (a cluster run shares one for all its jobs)
        self.checkpoints = checkpoints or out_dir / CHECKPOINTS_DIR
        # a cluster job (bench.cluster): its workers ignore JOB_STOP_SIGNALS, and a timing comparison group's
        # records are appended together once the group is measured whole, so that a job stopped mid-group
        # leaves none of it and the group is measured again whole, in one job
        self.job = job
        self.groups_done = 0  # comparison groups measured whole in this run
        self.longest_group_s = 0.0
        self.workers: dict[int, Worker] = {}  # process index -> its worker
        self.env: dict[str, Any] | None = None

    def _worker(self, slot: int = 0) -> Worker:
        """Worker ``slot`` (a point's process, or one of the training runs side by side), started if need be;
        worker 0 logs to ``worker.log``, worker N > 0 to ``worker-N.log``."""
        worker = self.workers.get(slot)
        if worker is None or worker.proc.poll() is not None:
            log = self.out_dir / ("worker.log" if slot == 0 else f"worker-{slot}.log")
            worker = Worker(self.sweep.plugins, self.sweep.base_dir, log, self.sweep.budget["threads"],
                            JOB_STOP_SIGNALS if self.job else ())
            self.workers[slot] = worker
        return worker

    def _drop_worker(self, slot: int) -> None:
        worker = self.workers.pop(slot, None)
        if worker is not None:
            worker.kill()
            worker.close()

    def _close_workers(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()

    def environment(self, points: list[Point]) -> dict[str, Any]:
        """Measured once per run, in a worker, on the devices and dtypes the points use."""
        if self.env is None:
            devices = sorted({p.device for p in points})
            dtypes = sorted({p.dtype for p in points})
            self.env = self._worker().request({"op": "env", "devices": devices, "dtypes": dtypes}, ENV_TIMEOUT_S)["env"]
        return self.env

    def request_point(self, point: Point, process: int = 0, slot: int | None = None) -> dict[str, Any]:
        """Worker ``process``'s reply for one point (worker ``slot``'s, for runs side by side), or a ``timeout`` /
        ``crashed`` reply when it has none."""
        timeout_s = self.sweep.budget["timeout_s"]
        slot = process if slot is None else slot
        worker = self._worker(slot)
        try:
            trace = self.out_dir / TRACES_DIR / f"{point.key}.json.gz" if self.profile and process == 0 else None
            checkpoint = self.checkpoint_path(point)
            if checkpoint is not None:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
            request = {"op": "point", "config": point.as_dict(), "energy": self.sweep.budget["energy"],
                       "min_time_s": self.sweep.budget["min_time_s"], "trace": str(trace) if trace else None,
                       "checkpoint": str(checkpoint) if checkpoint else None}
            return worker.request(request, timeout_s)
        except WorkerTimeout:
            self._drop_worker(slot)
            return {"status": "timeout", "message": f"no result within timeout_s = {timeout_s:g} s; "
                    "the worker was killed and replaced", "samples_s": [], "metrics": {}}
        except WorkerGone as gone:
            tail = worker.log_tail()
            self._drop_worker(slot)
            message = f"the worker died with {describe_exit(gone.returncode)} during this point"
            if gone.returncode == -signal.SIGKILL:
                message += " (SIGKILL from outside: often the kernel's out-of-memory killer)"
            return {"status": "crashed", "message": message + (f"; its last output: {tail}" if tail else ""),
                    "samples_s": [], "metrics": {}}

    def _final(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records ``--resume`` takes as done: all but a training run's that ended ``crashed`` or ``timeout``
        while its checkpoint is kept (it is run again from there), and, when profiling, a timed point's that has
        no profile (it is measured again with one); the new line replaces the old one."""
        def unprofiled(r: dict[str, Any]) -> bool:  # `profile --resume` over a timing run: profile what lacks one
            return (self.profile and r.get("status") == "ok" and r.get("process", 0) == 0
                    and isinstance(r.get("config"), dict) and not r["config"].get("train")
                    and not (r.get("metrics") or {}).get("profile"))

        return [r for r in records if not (retriable(r, self.checkpoints) or unprofiled(r))]

    def checkpoint_path(self, point: Point) -> Path | None:
        """Where a training point keeps its state between evaluations (None for a timing point)."""
        return self.checkpoints / f"{point.key}.pt" if point.train is not None else None

    def schedule(self, points: list[Point], indices: list[int] | None = None) -> Iterator[tuple[int, Point, int, int]]:
        """(index, point, process, group) in measuring order: per comparison group, one round per process."""
        processes = self.sweep.budget["processes"]
        for group, members in enumerate(comparison_groups(points, indices)):
            for process in range(processes):
                for index, point in members:
                    yield index, point, process, group

    def run(self, points: list[Point], *, resume: bool, progress: ProgressFn | None = None,
            indices: list[int] | None = None) -> RunSummary:
        """Measure every point not yet in the results file; append each result as it comes. Holds the
        output directory's lock throughout (OutputBusy if another run holds it). ``indices``: the points'
        positions in the whole sweep (default 0, 1, ...), recorded with their results."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with OutputLock(self.out_dir):
            return self._run(points, resume=resume, progress=progress, indices=indices)

    def _run(self, points: list[Point], *, resume: bool, progress: ProgressFn | None,
             indices: list[int] | None) -> RunSummary:
        path = self.out_dir / results.RESULTS_FILE
        done = {measurement_id(r) for r in self._final(results.repair(path))} if resume else set()
        schedule = list(self.schedule(points, indices))
        todo = [(i, p, process, g) for i, p, process, g in schedule if (p.key, process) not in done]
        summary = RunSummary(self.out_dir, total=len(schedule), skipped=len(schedule) - len(todo))
        started = time.monotonic()
        try:
            env = self.environment([p for _, p, _, _ in todo]) if todo else {}
            workers = self.side_by_side()
            if workers > 1 and len(todo) > 1:
                self._run_side_by_side(path, todo, env, min(workers, len(todo)), summary, progress, started)
            else:
                self._run_in_turn(path, todo, env, summary, progress, started)
        except BaseException:  # interrupted (Ctrl-C, a stopped cluster job): the point in flight is dropped at once
            for worker in list(self.workers.values()):
                worker.kill()
            raise
        finally:
            self._close_workers()
            summary.wall_s = time.monotonic() - started
        return summary

    def _write(self, path: Path, records: list[dict[str, Any]], checkpoint: Path | None, keep: bool,
               summary: RunSummary) -> None:
        """Append records (whole, in a cluster job), then drop the checkpoint of a run they record as ended."""
        with _stops_held(self.job):
            results.append(path, *records)
            if checkpoint is not None and not keep:  # the run is recorded: its state is no longer needed
                checkpoint.unlink(missing_ok=True)
        for record in records:
            summary.statuses[record["status"]] = summary.statuses.get(record["status"], 0) + 1

    def _run_in_turn(self, path: Path, todo: list[tuple[int, Point, int, int]], env: dict[str, Any],
                     summary: RunSummary, progress: ProgressFn | None, started: float) -> None:
        """The points one after another; in a cluster job a timing group's records are written once it is whole."""
        held: list[dict[str, Any]] = []  # a cluster job's records of the timing group in progress
        group_started = time.monotonic()
        for n, (index, point, process, group) in enumerate(todo):
            if progress:
                progress(n, len(todo), point, None, time.monotonic() - started)
            record, checkpoint, keep = self._measure(index, point, process, env)
            held.append(record)
            last_of_group = n + 1 == len(todo) or todo[n + 1][3] != group
            if last_of_group or not self.job or checkpoint is not None:
                self._write(path, held, checkpoint, keep, summary)
                held = []
            if last_of_group:
                self.groups_done += 1
                self.longest_group_s = max(self.longest_group_s, time.monotonic() - group_started)
                group_started = time.monotonic()
            if progress:
                progress(n + 1, len(todo), point, record["status"], time.monotonic() - started)

    def side_by_side(self) -> int:
        """How many training runs go side by side: ``budget.workers``, at most the cores this process may use
        over ``budget.threads`` each (unless ``budget.oversubscribe``); 1 for a timing sweep."""
        budget = self.sweep.budget
        workers = budget.get("workers", 1) if self.sweep.train is not None else 1
        if budget.get("oversubscribe"):
            return workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(workers, cores // max(1, budget.get("threads", 0))))

    def _measure(self, index: int, point: Point, process: int, env: dict[str, Any],
                 slot: int | None = None) -> tuple[dict[str, Any], Path | None, bool]:
        """One point measured (in worker ``slot``, default: the process's): its record, its checkpoint path and
        whether the checkpoint is kept (the run is to go on from it)."""
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        checkpoint = self.checkpoint_path(point)
        from_checkpoint = checkpoint is not None and checkpoint.is_file()
        reply = self.request_point(point, process, slot)
        message = reply.get("message", "")
        disk_full = message.startswith(DISK_FULL)
        keep = checkpoint is not None and checkpoint.is_file() and (
            disk_full or (reply["status"] in RETRIED and not from_checkpoint))
        if disk_full:
            message += "; free some space, then --resume measures it again" + (
                " from its last checkpoint" if keep else "")
        elif keep:  # the worker died mid-run: its last checkpoint stays, and --resume continues from it
            message += "; its last checkpoint is kept: --resume continues the run from there"
        elif checkpoint is not None and reply["status"] in RETRIED and from_checkpoint:
            message += "; it failed again after resuming from its checkpoint, so this is final"
        metrics = reply.get("metrics", {})
        if slot is not None and reply["status"] == "ok":
            metrics = {**metrics, "side_by_side": self.side_by_side()}
        record = make_record(point, status=reply["status"], message=message, samples_s=reply.get("samples_s", []),
                             metrics=metrics, env=env, sweep=self.sweep.name, index=index, started_at=started_at,
                             process=process)
        return record, checkpoint, keep

    def _run_side_by_side(self, path: Path, todo: list[tuple[int, Point, int, int]], env: dict[str, Any],
                          workers: int, summary: RunSummary, progress: ProgressFn | None, started: float) -> None:
        """Training runs, ``workers`` at a time, each in its own worker process (``budget.workers``): each run's
        line is written as it ends. Interrupted, the runs in flight are dropped (their checkpoints stay)."""
        lock = threading.Lock()
        queue = iter(todo)
        stopping = threading.Event()
        failures: list[BaseException] = []
        count = {"done": 0}

        def work(slot: int) -> None:
            try:
                while not stopping.is_set():
                    with lock:
                        item = next(queue, None)
                        if item is None:
                            return
                        index, point, process, _ = item
                        if progress:
                            progress(count["done"], len(todo), point, None, time.monotonic() - started)
                    record, checkpoint, keep = self._measure(index, point, process, env, slot)
                    if stopping.is_set():  # its worker was killed by the interrupt: not a result
                        return
                    with lock:
                        self._write(path, [record], checkpoint, keep, summary)
                        count["done"] += 1
                        self.groups_done += 1
                        if progress:
                            progress(count["done"], len(todo), point, record["status"], time.monotonic() - started)
            except BaseException as exc:  # a worker that cannot start, a full disk: the run stops, saying why
                failures.append(exc)
                stopping.set()

        threads = [threading.Thread(target=work, args=(slot,), name=f"tlstm-worker-{slot}", daemon=True)
                   for slot in range(workers)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # in short waits: Ctrl-C and a job's stop signal reach this thread
        except BaseException:
            stopping.set()
            for worker in list(self.workers.values()):
                worker.kill()
            for thread in threads:
                thread.join(10)
            raise
        if failures:
            for worker in list(self.workers.values()):
                worker.kill()
            raise failures[0]


@contextmanager
def _stops_held(job: bool):
    """In a cluster job, the stop signals wait until a write is whole (they are delivered right after)."""
    if not job:
        yield
        return
    stops = {getattr(signal, name) for name in JOB_STOP_SIGNALS}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)


def progress_printer(stream=None) -> ProgressFn:
    """A plain-text progress line on stderr: count, percentage, the point, elapsed time and ETA."""
    stream = stream or sys.stderr
    tty = stream.isatty()

    def fmt(seconds: float) -> str:
        seconds = int(seconds)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def show(done: int, total: int, point: Point, status: str | None, elapsed: float) -> None:
        eta = fmt(elapsed / done * (total - done)) if done else "?"
        width = len(str(total))
        if status is None:
            line = f"[{done + 1:>{width}}/{total}] {100 * done // total:3d}%  {point.describe()}  " \
                   f"elapsed {fmt(elapsed)}  ETA {eta}"
        else:
            line = f"[{done:>{width}}/{total}] {100 * done // total:3d}%  {point.describe()}  -> {status}  " \
                   f"elapsed {fmt(elapsed)}  ETA {eta}"
        if tty:
            stream.write("\r\033[K" + line + ("\n" if status is not None and status != "ok" else ""))
        elif status is not None:
            stream.write(line + "\n")
        stream.flush()

    return show
