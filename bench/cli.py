"""The ``tlstm-bench`` command line: ``run`` a sweep, ``list`` what can run, build a ``report``.

    tlstm-bench run [SWEEP] [--out DIR] [--resume] [--set AXIS=VALUES]... [--no-report]
    tlstm-bench profile [SWEEP] [same options as run]
    tlstm-bench run SWEEP --executor slurm [--partition P] [--gpus-per-job N] [--time-min N] [--jobs N] [--no-wait]
    tlstm-bench collect OUT [--no-wait] [--time-min N] [--jobs N] [--partition P] [--gpus-per-job N] [--slurm-opt K=V]
    tlstm-bench list
    tlstm-bench report RESULTS [--out FILE] [--pytest-benchmark FILE.json]
    tlstm-bench compare BASE NEW [--threshold 0.05]

Input errors (bad sweep files, unknown axes or implementations, impossible values) are reported
before anything runs, naming the file, the field and the allowed values, with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import implementations

from . import axes, cluster, results
from .cluster import EXECUTORS, ClusterError, ClusterOptions, parse_slurm_opts
from .contract import format_seconds
from .outdir import OutputBusy, OutputLock, atomic_write
from .sweep import Sweep, SweepError, load_sweep, shipped_sweeps

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
DEFAULT_SWEEP = "quick"
RESULTS_ROOT = Path("results")


class UsageError(Exception):
    """A command-line mistake: printed with exit code 2."""


def _error(message: str) -> None:
    print(f"tlstm-bench: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# list


def _availability(impl: implementations.Implementation, device: str) -> str:
    try:
        reason = impl.unavailable_reason(device)
    except Exception as exc:  # a broken availability check must not break the listing
        reason = f"availability check failed: {exc!r}"
    return "yes" if reason is None else f"no ({reason})"


def _cmd_list(args: argparse.Namespace) -> int:
    print("implementations:")
    for impl in implementations.list_implementations():
        dtypes = ",".join(str(d).removeprefix("torch.") for d in impl.dtypes)
        where = "; ".join(f"{d}: {_availability(impl, d)}" for d in impl.devices)
        print(f"  {impl.name:<16} {impl.family:<6} {where}  [{dtypes}]  {impl.description}")
    print("sweeps:")
    for name, path in shipped_sweeps().items():
        try:
            sweep = load_sweep(str(path))
            line = f"{len(sweep.points())} points  {sweep.description}"
        except SweepError as exc:
            line = f"INVALID: {exc}"
        print(f"  {name:<16} {line}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------
# run


def _latest_results(sweep_name: str) -> Path:
    # exactly <name>-<date>-<time>: `tiny` must not pick a `tiny-profile-...` run, nor `gpu` a `gpu-target-...`
    stamp = re.compile(re.escape(sweep_name) + r"-\d{8}-\d{6}")
    candidates = sorted(p.parent for p in RESULTS_ROOT.glob(f"{sweep_name}-*/sweep.json")
                        if stamp.fullmatch(p.parent.name))
    if not candidates:
        raise UsageError(f"--resume: no earlier run of sweep {sweep_name!r} under {RESULTS_ROOT}/; "
                         "give its directory with --out DIR")
    return candidates[-1]


def _out_dir(args: argparse.Namespace, sweep_name: str) -> Path:
    if args.out is not None:
        if not args.out.strip():
            raise UsageError("--out: give a directory (an empty path would write into the current one)")
        out = Path(args.out)
        try:
            if out.exists() and not out.is_dir():
                raise UsageError(f"--out {out}: exists and is not a directory")
        except OSError as exc:  # a name too long for the file system, say
            raise UsageError(f"--out {args.out[:80]}: not a usable path ({exc.strerror or exc})") from None
        return out
    if args.resume:
        return _latest_results(sweep_name)
    return RESULTS_ROOT / f"{sweep_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_started(args: argparse.Namespace, out: Path, points) -> None:
    """--resume needs an earlier run of the same points in ``out``, a new run an empty one (under the lock)."""
    started = (out / results.SWEEP_FILE).exists() or (out / results.RESULTS_FILE).exists()
    if args.resume and not started:
        raise UsageError(f"--out {out}: --resume needs an earlier run there (its sweep.json), found none")
    if not args.resume and started:
        raise UsageError(f"--out {out}: already holds a run; add --resume to continue it, or choose another "
                         "directory")
    if args.resume and (out / results.SWEEP_FILE).exists():
        try:
            earlier = Sweep.from_json(results.read_sweep(out)).points()
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{out / results.SWEEP_FILE}: cannot read the earlier run's sweep ({exc})") from None
        if {p.key for p in earlier} != {p.key for p in points}:
            raise UsageError(f"--out {out}: --resume must run the same points as the earlier run there "
                             f"({len(earlier)} points, see its sweep.json); give the same sweep and --set values, "
                             "or another --out")


def _write_sweep_json(out: Path, sweep, argv: list[str], resume: bool) -> None:
    command = "tlstm-bench " + shlex.join(argv)
    if resume and (out / results.SWEEP_FILE).exists():
        try:
            data = results.read_sweep(out)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        data.setdefault("resumed_with", []).append(command)
    else:
        data = {**sweep.as_dict(), "command": command}
    atomic_write(out / results.SWEEP_FILE, json.dumps(data, indent=2) + "\n")


def summary_table(df) -> str:
    """Median time per step by implementation and mode, one column per size, and one row for each value of
    any other axis the run varies (dtype, device, batch, ...), so that no figure mixes two configurations;
    for training points, samples to solve (or the best held-out accuracy) per model, seed and depth."""
    trained = df[df["train"].map(lambda t: isinstance(t, dict))]
    if not trained.empty:
        return training_table(trained)
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return "(no ok points to tabulate)"
    axis = "tensor_size" if ok["tensor_size"].notna().all() else "depth"
    label = "P" if axis == "tensor_size" else "L"
    # the implementation alone, or with its switches where the sweep ran several variants of it
    labels = ok.apply(model_label, axis=1)
    several = labels.groupby(ok["impl"]).nunique()
    ok = ok.assign(model=[lab if several[impl] > 1 else impl for lab, impl in zip(labels, ok["impl"])])
    # The axes that still vary within one cell (model, mode, size) name the row; one that varies only along
    # the columns (a stacked LSTM's width paired with each P) does not.
    cell = ["model", "mode", axis]
    split = [name for name in axes.names() if name not in cell and name in ok.columns
             and ok.groupby(cell, dropna=False)[name].nunique(dropna=False).gt(1).any()]
    ok = ok.assign(config=[", ".join(_axis_value_label(name, row[name]) for name in split)
                           for _, row in ok.iterrows()])
    if split:  # rows in the order of the values (B=2 before B=16; choices as the axis lists them), not of their labels
        import pandas as pd

        def order_of(column):
            axis = axes.get(column.name)
            if axis.kind == "choice" and axis.rule:
                return column.map({value: i for i, value in enumerate(axis.rule)}.get)
            return column

        order = ok.sort_values(split, key=order_of, na_position="last")["config"].unique()
        ok["config"] = pd.Categorical(ok["config"], categories=order, ordered=True)
    table = ok.pivot_table(index=["model", "mode", "config"], columns=axis, values="time_per_step_s",
                           aggfunc="median")
    names = [f"{model} {mode}" + (f", {config}" if config else "") for model, mode, config in table.index]
    width = max(30, max(len(name) for name in names) + 2)
    header = f"{'median time per step':<{width}}" + "".join(f"{label}={int(c):<9}" for c in table.columns)
    lines = [header]
    for name, (_, row) in zip(names, table.iterrows()):
        cells = "".join(f"{format_seconds(v):<11}" for v in row)
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


def _axis_value_label(name: str, value) -> str:
    """An axis value in a row name: "B=16", "float32", "cuda", or NAME=VALUE for an axis without a letter."""
    axis = axes.get(name)
    if axis.letter:
        return axis.label(value)
    if isinstance(value, str) and axis.kind == "choice":
        return value
    return f"{name}={axes.fmt_value(value)}"


def model_label(row) -> str:
    """An implementation with its variant, named as the report names it: "tlstm_fused [3D tLSTM+CN]"."""
    from reports.data import variant_name

    if row["family"] != "tlstm":
        return row["impl"]
    return f"{row['impl']} [{variant_name(row)}]"


def training_table(df) -> str:
    """Per model (implementation and switches) and depth: each seed's samples to solve, or its best accuracy."""

    def cell(row) -> str:
        if row["status"] != "ok":
            return row["status"]
        if row["solved"]:
            return f"{row['samples_to_solve'] / 1000:.0f}k"
        best = row["best_symbol_acc"]
        return f"({100 * best:.0f}%)" if best is not None and best == best else "-"

    df = df.assign(model=df.apply(model_label, axis=1), cell=df.apply(cell, axis=1))
    budgets = df["train"].map(lambda t: t.get("params_budget"))
    from .tasks import task_label

    tasks = df["train"].map(task_label)
    if budgets.nunique(dropna=False) > 1:  # one row per model and budget
        df["model"] = df["model"] + budgets.map(lambda b: f" @{b:,}" if b == b and b is not None else " @width")
    if tasks.nunique() > 1:
        df["model"] = df["model"] + " " + tasks
    depths = sorted(df["depth"].unique())
    lines = ["samples to solve per seed, or (best held-out symbol accuracy) when not solved",
             f"{'model':<34}" + "".join(f"L={int(d):<14}" for d in depths)]
    for name, rows in df.groupby("model", sort=False):
        cells = [" ".join(rows[rows["depth"] == d].sort_values("seed")["cell"]) for d in depths]
        lines.append(f"{name:<34}" + "".join(f"{c:<16}" for c in cells))
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        options = ClusterOptions(args.executor, args.jobs, args.partition, args.gpus_per_job, args.time_min,
                                 parse_slurm_opts(args.slurm_opt))
        options.check()
        if args.no_wait and options.executor == "local":
            raise ClusterError("--no-wait needs --executor local-jobs or slurm")
    except ClusterError as exc:
        _error(str(exc))
        return EXIT_USAGE
    args.cluster = options
    try:
        sweep = load_sweep(args.sweep, args.set)
        if args.profile and sweep.train is not None:
            raise UsageError(f"{sweep.source}: a training sweep ([train]) trains models; profile takes a timing sweep "
                             "(its points are calls to profile)")
        points = sweep.points()
        out = _out_dir(args, sweep.name + ("-profile" if args.profile else ""))
    except (SweepError, UsageError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        with _usage_errors(f"--out {out}: cannot create or write there"):
            out.mkdir(parents=True, exist_ok=True)
            lock = OutputLock(out).__enter__()  # held until this function returns (released by exit at worst)
        try:
            return _run_locked(args, sweep, points, out)
        finally:
            lock.__exit__(None, None, None)
    except (UsageError, ClusterError) as exc:  # ClusterError: --resume of a cluster run is a collect
        _error(str(exc))
        return EXIT_USAGE


@contextmanager
def _usage_errors(cannot: str):
    """An unwritable output directory or a busy one as a UsageError: "<cannot> (<why>)" or the lock's message."""
    try:
        yield
    except OutputBusy as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{cannot} ({exc.strerror or exc})") from None


def _continue_command(args: argparse.Namespace, out: Path) -> str:
    """The command that continues this run where it stopped: the same arguments, with --out and --resume."""
    again = list(args.argv) + ([] if args.out else ["--out", str(out)]) + ([] if args.resume else ["--resume"])
    return f"tlstm-bench {shlex.join(again)}"


def _run_locked(args: argparse.Namespace, sweep, points, out: Path) -> int:
    """The run itself, with the output directory's lock held; a UsageError before the first point."""
    from .runner import Runner, progress_printer

    with _usage_errors(f"--out {out}: cannot write there"):
        _check_started(args, out, points)
        _write_sweep_json(out, sweep, args.argv, args.resume)
        (out / results.RESULTS_FILE).touch()  # from here on the run can be resumed, even before its first point
    print(f"sweep {sweep.name}: {len(points)} points -> {out}", file=sys.stderr)
    if args.cluster.executor != "local" or (args.resume and (out / cluster.MANIFEST).exists()):
        return _run_jobs(args, sweep, points, out)  # a cluster run resumes as one: what collect does
    runner = Runner(sweep, out, profile=args.profile)
    try:
        summary = runner.run(points, resume=args.resume, progress=None if args.quiet else progress_printer())
    except KeyboardInterrupt:
        _error(f"interrupted; finished points are in {out / results.RESULTS_FILE}; continue with "
               f"{_continue_command(args, out)}")
        return EXIT_INTERRUPTED
    except Exception as exc:  # the worker cannot start, say: results so far are kept
        from .worker import is_disk_full

        if is_disk_full(exc):
            _error(f"the run stopped: disk full ({exc}); finished points are in {out / results.RESULTS_FILE}; free "
                   f"some space, then continue with {_continue_command(args, out)}")
        else:
            _error(f"the run stopped: {exc}; finished points are in {out / results.RESULTS_FILE}")
        return EXIT_FAILED
    df = results.load(out)
    print(f"\n{len(df)} points ({_status_counts(df)}); {summary.skipped} already done, "
          f"{summary.total - summary.skipped} run in {summary.wall_s:.1f} s")
    return _finish(args, df, out)


def _status_counts(df) -> str:
    """'ok 60, timeout 4': how many points ended in each status."""
    return ", ".join(f"{s} {n}" for s, n in df["status"].value_counts().items())


def _finish(args: argparse.Namespace, df, out: Path) -> int:
    """The closing table, and the report unless --no-report."""
    print(summary_table(df))
    print(f"results: {out / results.RESULTS_FILE}")
    if args.no_report:
        return EXIT_OK
    return _build_report(df, out / "report.html")


def _job_progress(quiet: bool, every_s: float = 30.0):
    """A progress line when a job finishes, else at most every ``every_s`` while measurements come in."""
    state = {"line": None, "done": None, "at": 0.0}

    def show(done: int, total: int, merged: int) -> None:
        line = f"jobs {done}/{total} finished, {merged} measurements merged"
        if quiet or line == state["line"] or (done == state["done"] and time.monotonic() - state["at"] < every_s):
            return
        print(line, file=sys.stderr, flush=True)
        state.update(line=line, done=done, at=time.monotonic())

    return show


def _run_jobs(args: argparse.Namespace, sweep, points, out: Path) -> int:
    """The sweep as submitit jobs (--executor local-jobs or slurm): submit, wait, merge, report."""
    if (out / cluster.MANIFEST).exists():  # --resume of a cluster run: what collect does
        return _collect(args, out, wait=not args.no_wait)
    if args.cluster.executor == "local-jobs" and args.cluster.jobs > 1:
        print("tlstm-bench: warning: local jobs run side by side on this machine and disturb each other's "
              "timings; fine for a check of the job path or for accuracy, not for numbers to publish",
              file=sys.stderr)
    try:
        entries = cluster.submit(out, sweep, points, list(range(len(points))), args.cluster, args.profile)
    except Exception as exc:  # submitit's own errors: sbatch refused the job, say
        _error(f"submitting the jobs failed: {exc}")
        return EXIT_FAILED
    print(f"submitted {len(entries)} job(s) ({args.cluster.executor}): "
          + ", ".join(f"{e['job_id']} ({len(e['points'])} points)" for e in entries), file=sys.stderr)
    if args.no_wait:
        print(f"collect with: tlstm-bench collect {out}")
        return EXIT_OK
    return _collect(args, out, wait=True)


def _interrupted_jobs(out: Path) -> int:
    _error(f"interrupted; the jobs go on; merge them and resubmit what failed with: tlstm-bench collect {out}")
    return EXIT_INTERRUPTED


def _resubmit_options(args: argparse.Namespace, manifest: dict) -> ClusterOptions:
    """The run's cluster options, with what ``collect`` was told to change for the jobs it resubmits."""
    try:
        options = ClusterOptions(**manifest["options"])
    except TypeError as exc:
        raise ClusterError(f"{cluster.MANIFEST}: its options are not this version's ({exc})") from None
    if args.command == "collect":
        for name in ("jobs", "time_min", "partition", "gpus_per_job"):
            if getattr(args, name) is not None:
                setattr(options, name, getattr(args, name))
        options.slurm_opts = {**options.slurm_opts, **parse_slurm_opts(args.slurm_opt)}
    options.check(submitting=False)  # merging needs no sbatch; resubmitting checks it
    return options


def _resubmit(out: Path, sweep, manifest: dict, options: ClusterOptions, running: list) -> list:
    """Submit again the points that ended jobs left unmeasured (none of ``running``'s); the new jobs."""
    todo, indices = cluster.missing(out, sweep, manifest, running)
    if not todo:
        return []
    options.check()
    problem = cluster.time_limit_problem(out, manifest, options.time_min) if sweep.train is None else None
    if problem:
        why, minutes = problem
        raise ClusterError(f"not resubmitting {len(todo)} point(s): {why}; give the jobs a longer limit: "
                           f"tlstm-bench collect {out} --time-min {max(minutes, options.time_min + 1)}")
    try:
        entries = cluster.submit(out, sweep, todo, indices, options, bool(manifest.get("profile")))
    except ClusterError:
        raise
    except Exception as exc:  # submitit's own errors: sbatch refused the job, say
        raise ClusterError(f"resubmitting {len(todo)} point(s) failed: {exc}") from None
    print(f"resubmitted {len(todo)} point(s) of stopped or failed jobs as {len(entries)} job(s) "
          f"(--time-min {options.time_min})", file=sys.stderr)
    return entries


def _collect(args: argparse.Namespace, out: Path, *, wait: bool) -> int:
    """Merge, resubmit what ended jobs left, and (``wait``) wait for the jobs; while jobs that were stopped
    (time limit, preemption) made progress, resubmit what they left and wait again."""
    manifest = cluster.read_manifest(out)
    try:
        sweep = Sweep.from_json(results.read_sweep(out))
    except (KeyError, TypeError) as exc:
        raise ClusterError(f"{out / results.SWEEP_FILE}: not the sweep definition of a run ({exc!r})") from None
    options = _resubmit_options(args, manifest)
    running = cluster.running_jobs(out, manifest["jobs"])  # before merging: a job ending meanwhile is merged whole
    cluster.merge_shards(out)
    entries = _resubmit(out, sweep, manifest, options, running)
    if not wait:
        print(f"{len(running) + len(entries)} job(s) running; collect again with: tlstm-bench collect {out} "
              f"(or without --no-wait to wait)")
        return EXIT_OK
    stuck = None
    while True:
        manifest = cluster.read_manifest(out)
        stops = cluster.progressed_stops(out, manifest)
        try:
            cluster.wait(out, manifest, _job_progress(getattr(args, "quiet", False)))
        except KeyboardInterrupt:
            return _interrupted_jobs(out)
        todo, _ = cluster.missing(out, sweep, manifest)
        if not todo or cluster.progressed_stops(out, manifest) == stops:
            break  # done, or no job was stopped after making progress (they failed, or moved nothing): look first
        try:
            _resubmit(out, sweep, manifest, options, [])
        except ClusterError as exc:
            stuck = str(exc)
            break
    df = results.load(out)
    why = stuck or (f"their jobs ended without finishing (logs in {out / cluster.JOBS_DIR}); `tlstm-bench collect "
                    f"{out}` resubmits them")
    print(f"\n{len(df)} points ({_status_counts(df)}) from {len(manifest['jobs'])} job(s)"
          + (f"; {len(todo)} point(s) missing: {why}" if todo else ""))
    return _finish(args, df, out) if not todo else max(_finish(args, df, out), EXIT_FAILED)


def _cmd_collect(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        if not out.is_dir():
            raise ClusterError(f"{out}: not a directory (give the output directory of a run with --executor "
                               "local-jobs or slurm)")
        with OutputLock(out):
            return _collect(args, out, wait=not args.no_wait)
    except (ClusterError, OutputBusy, ValueError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        _error(f"{args.out[:80]}: {exc.strerror or exc}")
        return EXIT_USAGE


# ---------------------------------------------------------------------------------------------------
# report


def _build_report(df, out_file: Path) -> int:
    try:
        import reports

        path = reports.build_report(df, out_file)
    except Exception as exc:
        _error(f"the report was not built ({type(exc).__name__}: {exc}); the results are kept")
        return EXIT_FAILED
    print(f"report: {path}")
    return EXIT_OK


def _load_results(path: str):
    """``results.load`` for a path the user named: a results directory or file holding at least one results
    record, else a ValueError in one line (a device, a sweep.json, an empty file), its skipped lines' warnings
    shown only when it has records."""
    found = results.results_path(path)
    if found.exists() and not found.is_file():
        raise ValueError(f"{path}: not a results file (give a results directory or its {results.RESULTS_FILE})")
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always", results.ResultsWarning)
        try:
            df = results.load(path)
        except ValueError:
            if not skipped:
                raise
            df = None
    if df is None or df.empty:
        why = f"(is it a results.jsonl?); {skipped[0].message}" if skipped else "(the file is empty)"
        raise ValueError(f"{found}: no line is a results record {why}")
    for warning in skipped:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return df


def _cmd_report(args: argparse.Namespace) -> int:
    frames = []
    try:
        if args.results is not None:
            frames.append(_load_results(args.results))
        if args.pytest_benchmark is not None:
            from . import pytest_benchmark_file

            frames.append(pytest_benchmark_file.load(args.pytest_benchmark))
    except (OSError, ValueError) as exc:  # no such file, not readable, a path too long, bad content
        _error(str(exc))
        return EXIT_USAGE
    if not frames:
        _error("report: give RESULTS (a results directory or .jsonl file) and/or --pytest-benchmark FILE.json")
        return EXIT_USAGE
    if len(frames) == 1:
        df = frames[0]
    else:
        import pandas as pd

        attrs = {**frames[1].attrs, **frames[0].attrs}
        df = pd.concat(frames, ignore_index=True)
        df.attrs.update(attrs)
    if args.out is not None:
        out_file = Path(args.out)
    elif args.results is not None:
        base = Path(args.results)
        out_file = (base if base.is_dir() else base.parent) / "report.html"
    else:
        out_file = Path(args.pytest_benchmark).with_suffix(".html")
    return _build_report(df, out_file)


# ---------------------------------------------------------------------------------------------------
# compare


def _cmd_compare(args: argparse.Namespace) -> int:
    from reports.compare import FAILED, FASTER, SLOWER, compare, format_table

    if not 0 <= args.threshold < 10:
        _error(f"--threshold must be a fraction between 0 and 10 (0.05 = 5%), got {args.threshold}")
        return EXIT_USAGE
    try:
        base, new = _load_results(args.base), _load_results(args.new)
    except (OSError, ValueError) as exc:  # no such file, not readable, a path too long, bad content
        _error(str(exc))
        return EXIT_USAGE
    trained = [name for name, df in (("BASE", base), ("NEW", new))
               if df["train"].map(lambda t: isinstance(t, dict)).all()]
    if trained:
        _error(f"compare compares timing runs (time per call, point by point); {' and '.join(trained)} hold(s) "
               "training runs only: their samples and time to solve are in each run's report")
        return EXIT_USAGE
    table = compare(base, new, threshold=args.threshold)
    print(format_table(table))
    counts = table["verdict"].value_counts()
    failed = int(table["verdict"].str.startswith(FAILED).sum())
    print(f"\n{len(table)} matched point(s): {counts.get(SLOWER, 0)} slower, {failed} failed in NEW, "
          f"{counts.get(FASTER, 0)} faster, the rest the same within {args.threshold:.0%} or their interval; "
          f"unmatched: {table.attrs['unmatched_base']} only in BASE, {table.attrs['unmatched_new']} only in NEW")
    if table.empty:
        _error("no point to compare: the two runs share no ok point")
        return EXIT_USAGE
    return EXIT_FAILED if counts.get(SLOWER, 0) or failed else EXIT_OK


# ---------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: same prefix, exit code 2
        self.print_usage(sys.stderr)
        _error(message)
        raise SystemExit(EXIT_USAGE)


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("running beyond this process (submitit)")
    group.add_argument("--executor", default="local", choices=EXECUTORS,
                       help="local: this process and its worker (default); local-jobs: submitit jobs on this machine "
                            "(parallel jobs disturb each other's timings); slurm: jobs on a SLURM cluster")
    group.add_argument("--jobs", type=int, default=1, help="how many jobs to split the sweep into (default 1)")
    group.add_argument("--partition", help="SLURM partition")
    group.add_argument("--gpus-per-job", type=int, help="GPUs per SLURM job")
    group.add_argument("--time-min", type=int, default=60, help="time limit per job, minutes (default 60)")
    group.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="an extra sbatch option, e.g. --slurm-opt account=abc (repeatable)")
    group.add_argument("--no-wait", action="store_true",
                       help="return after submitting; `tlstm-bench collect OUT` merges and resubmits later")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tlstm-bench", description="Benchmark Tensorized LSTMs against stacked LSTMs.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    for name, help_text, profile in (
        ("run", "run a sweep and write results (and the report)", False),
        ("profile", "run a sweep with one profiled call per point after the timed ones: where the time goes, "
                    "a trace per point in DIR/traces/", True),
    ):
        p_run = sub.add_parser(name, help=help_text)
        p_run.add_argument("sweep", nargs="?", default=DEFAULT_SWEEP,
                           help=f"a shipped sweep ({', '.join(shipped_sweeps())}) or a path to a .toml file "
                                f"(default {DEFAULT_SWEEP})")
        p_run.add_argument("--out", help=f"output directory (default results/<sweep>{'-profile' if profile else ''}"
                                         "-<timestamp>/)")
        p_run.add_argument("--resume", action="store_true",
                           help="skip points already in DIR/results.jsonl (DIR: --out, else the latest run of the "
                                "sweep)")
        p_run.add_argument("--set", action="append", default=[], metavar="AXIS=VALUES",
                           help="override an axis or setting, e.g. --set batch=[1,16] --set dtype=bfloat16 "
                                "(repeatable)")
        p_run.add_argument("--no-report", action="store_true", help="do not build the HTML report at the end")
        p_run.add_argument("--quiet", action="store_true", help="no progress line")
        _add_cluster_args(p_run)
        p_run.set_defaults(func=_cmd_run, profile=profile)

    p_collect = sub.add_parser("collect", help="merge the finished jobs of a cluster run, resubmit what failed, "
                                               "wait and build the report")
    p_collect.add_argument("out", help="the run's output directory (it holds jobs.json)")
    p_collect.add_argument("--no-wait", action="store_true", help="merge and resubmit, then return at once")
    p_collect.add_argument("--no-report", action="store_true", help="do not build the HTML report at the end")
    group = p_collect.add_argument_group("for the jobs collect resubmits (default: as the run was submitted)")
    group.add_argument("--time-min", type=int, help="time limit per job, minutes")
    group.add_argument("--jobs", type=int, help="how many jobs to split the resubmitted points into")
    group.add_argument("--partition", help="SLURM partition")
    group.add_argument("--gpus-per-job", type=int, help="GPUs per SLURM job")
    group.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="an extra sbatch option, added to the run's (repeatable)")
    p_collect.set_defaults(func=_cmd_collect)

    p_list = sub.add_parser("list", help="list the registered implementations and the shipped sweeps")
    p_list.set_defaults(func=_cmd_list)

    p_report = sub.add_parser("report", help="build the HTML report from a results file")
    p_report.add_argument("results", nargs="?", help="a results directory or results.jsonl")
    p_report.add_argument("--out", help="the HTML file to write (default: report.html beside the results)")
    p_report.add_argument("--pytest-benchmark", metavar="FILE.json",
                          help="also include a pytest-benchmark JSON file (bench.pytest_benchmark_file.load)")
    p_report.set_defaults(func=_cmd_report)

    p_compare = sub.add_parser("compare", help="compare two runs of a sweep point by point (exit 1 if slower)")
    p_compare.add_argument("base", help="the baseline results directory or results.jsonl")
    p_compare.add_argument("new", help="the results to check against it")
    p_compare.add_argument("--threshold", type=float, default=0.05,
                           help="a point is slower when new/base exceeds 1 + THRESHOLD and its whole 95%% interval "
                                "lies above 1 (default 0.05)")
    p_compare.set_defaults(func=_cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if not hasattr(args, "func"):
        return _cmd_list(args)
    terminated = []

    def on_sigterm(signum, frame):  # SIGTERM (kill, a cluster's scancel) ends a run as Ctrl-C does
        terminated.append(signum)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    with warnings.catch_warnings():
        # a skipped results line (or any other warning) as one line, not Python's two with a source line
        warnings.showwarning = lambda message, *_: print(f"tlstm-bench: warning: {message}", file=sys.stderr)
        try:
            code = args.func(args)
        except KeyboardInterrupt:  # before a run started (loading plugins, say): nothing to resume
            _error("interrupted")
            code = EXIT_INTERRUPTED
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
    return EXIT_TERMINATED if terminated and code == EXIT_INTERRUPTED else code


if __name__ == "__main__":
    sys.exit(main())
