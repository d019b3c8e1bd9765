"""Synthetic results files of any size, shaped like the shipped sweeps' results, for scale tests.

A line here is what a real run would have written for a point of a shipped timing sweep (``quick``,
``depth``, ``fused-cpu``, ``variants``): the same configurations, repeated with new sequence lengths
until there are enough points, each measured in ``processes`` worker processes. A process's samples
are as many as the runner's rule gives (calls until there are ``repeats`` and they add up to
``min_time_s``, so a fast call leaves hundreds of samples and a slow one ``repeats``), drawn around a
time that grows with the point's FLOPs and its per-step overhead, with the spread and occasional
outliers of a shared machine.
Nothing here is a measurement: the files exist to time the suite's own loading, merging and reporting.

    python -m bench.synthetic 100000 /tmp/big            # /tmp/big/results.jsonl + sweep.json
    python -m bench.synthetic 100000 /tmp/big --shards 1000   # 1,000 cluster shards instead
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import results
from .contract import Point, make_record, point_timing_metrics
from .sweep import load_sweep

SWEEPS = ("quick", "depth", "fused-cpu", "variants")
MAX_SAMPLES = 2400  # about the most samples a line of the shipped sweeps holds

ENV = {"torch": "2.13.0+cpu", "cuda": None, "cudnn": None, "triton": "3.9.0", "cpu_model": "synthetic CPU",
       "cpu_flags": ["avx2", "fma", "avx512f"], "cpu_capability": "AVX512", "gpu_model": None, "threads": 1,
       "git_commit": "0" * 40, "python": "3.11.7", "platform": "Linux-synthetic-x86_64", "hostname": "synthetic",
       "matmul_gflops": {"cpu:float32": 95.5}, "cudnn_allow_tf32": True, "matmul_allow_tf32": False,
       "cudnn_benchmark": False}


def _base_points() -> list[tuple[Point, dict[str, Any]]]:
    """The shipped timing sweeps' points with their budgets (sweep name, repeats, min_time_s, processes)."""
    base = []
    for name in SWEEPS:
        sweep = load_sweep(name)
        budget = {"sweep": name, "min_time_s": sweep.budget["min_time_s"], "repeats": sweep.budget["repeats"]}
        base += [(point, budget) for point in sweep.points(cuda_available=False)]
    return base


def _samples(rng: np.random.Generator, point: Point, budget: dict[str, Any], process: int) -> list[float]:
    """One process's samples of a shipped ``point``: at least ``repeats`` calls adding up to ``min_time_s``,
    around a modelled time."""
    per_call = (1e-6 * point.recurrent_steps + point.flops() / 40e9) * (3 if point.mode == "training" else 1)
    per_call *= 1.0 + 0.05 * process + rng.normal(0, 0.02)  # processes differ a little
    count = min(MAX_SAMPLES, max(budget["repeats"], math.ceil(budget["min_time_s"] / per_call)))
    values = per_call * rng.lognormal(0.0, 0.04, count)
    outliers = rng.random(count) < 0.02  # a shared machine's interruptions
    values[outliers] *= rng.uniform(1.5, 3.0, int(outliers.sum()))
    return values.tolist()


def synthetic_records(lines: int, *, processes: int = 3, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``lines`` results records (current schema): ``lines // processes`` points, each in ``processes``
    processes (the last point may have fewer when ``lines`` is not a multiple)."""
    rng = np.random.default_rng(seed)
    base = _base_points()
    written = 0
    index = 0
    used: set[str] = set()
    while written < lines:
        copy, slot = divmod(index, len(base))
        shape, budget = base[slot]  # the shipped point sets the samples' shape; a new T makes it a new point
        seq_len = shape.seq_len + copy
        point = Point.from_dict({**shape.as_dict(), "seq_len": seq_len})
        while point.key in used:  # another shipped point reached this T already (or the sweeps share a point)
            seq_len += 1
            point = Point.from_dict({**shape.as_dict(), "seq_len": seq_len})
        used.add(point.key)
        samples_by_process = []
        for process in range(processes):
            if written == lines:
                break
            samples = _samples(rng, shape, budget, process)
            samples_by_process.append(samples)
            metrics = {"params": 10_000 + 97 * point.channels * point.depth, "hidden_units": point.channels,
                       "flops": point.flops(), "max_abs_err": 1e-7, "rss_peak_bytes": 420_000_000,
                       **point_timing_metrics(point, samples)}
            yield make_record(point, status="ok", message="gate vs tlstm_naive float64: synthetic",
                              samples_s=samples, metrics=metrics, env=ENV, sweep=budget["sweep"], index=index,
                              started_at="2026-12-01T00:00:00+00:00", process=process)
            written += 1
        index += 1


def write(out: str | Path, lines: int, *, shards: int = 0, processes: int = 3, seed: int = 0,
          legacy: bool = False) -> list[Path]:
    """Write ``lines`` synthetic records under ``out``: ``out/results.jsonl``, or with ``shards`` > 0 the
    shards of a cluster run (``out/shards/job-NNN/results.jsonl``, records spread evenly, a point's
    processes in one shard). ``legacy`` writes schema-3 lines (samples as decimal text, the environment in
    every line), as the suite wrote before schema 4. Returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / results.SWEEP_FILE).write_text(json.dumps({"name": "synthetic"}) + "\n")
    records = list(synthetic_records(lines, processes=processes, seed=seed))
    if shards:
        per_shard = math.ceil(len(records) / shards / processes) * processes
        groups = [records[i:i + per_shard] for i in range(0, len(records), per_shard)]
        paths = [out / "shards" / f"job-{n:03d}" / results.RESULTS_FILE for n in range(len(groups))]
    else:
        groups, paths = [records], [out / results.RESULTS_FILE]
    for path, group in zip(paths, groups):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        if legacy:
            path.write_text("".join(json.dumps({**r, "schema": 3}, allow_nan=False) + "\n" for r in group))
        else:
            results.append(path, *group)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("lines", type=int, help="how many results lines")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--shards", type=int, default=0, help="write a cluster run's shards instead of one file")
    parser.add_argument("--processes", type=int, default=3, help="worker processes per point (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--legacy", action="store_true", help="write schema-3 lines (before the compact encoding)")
    args = parser.parse_args(argv)
    if args.lines < 1 or args.processes < 1 or args.shards < 0:
        parser.error("lines and --processes must be >= 1, --shards >= 0")
    paths = write(args.out, args.lines, shards=args.shards, processes=args.processes, seed=args.seed,
                  legacy=args.legacy)
    size = sum(p.stat().st_size for p in paths)
    print(f"{args.lines} records in {len(paths)} file(s) under {args.out} (and an environment line per file): "
          f"{size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
