"""How the suite's own data handling scales: disk, load, report, peak memory and merge on synthetic results.

For each size it writes a synthetic run (``bench.synthetic``: the shipped sweeps' shapes, 3 processes a
point), then times, each in a fresh Python process so that its peak RSS is its own:

- ``load``: ``bench.results.load`` of the file;
- ``report``: ``tlstm-bench report`` on the directory (load, claims, figures, HTML);
- ``merge``: ``bench.cluster.merge_shards`` of the same lines written as 1,000 cluster shards (one
  call merging all of them, then a second call with nothing new, which must cost next to nothing).

    python -m bench.scale 1000 10000 100000 --work /tmp/scale            # this checkout
    python -m bench.scale 1000 --code /tmp/old --legacy --work /tmp/old-scale   # another checkout's code

``import bench.cluster`` imports torch (about 2 s), so the merge timings include that, as ``collect`` does.
``--code DIR`` measures the code of another checkout (its directory goes first on ``sys.path``);
``--legacy`` writes the files in schema 3, for code from before schema 4. The table goes to stdout and,
as JSON, to ``<work>/scale.json``. Timings are wall-clock seconds of one run each: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARDS = 1000

_MERGE = "from pathlib import Path; from bench.cluster import merge_shards; merge_shards(Path({path!r}))"
_STEPS = {
    "load": "import bench.results as r; r.load({path!r})",
    "report": "from bench.cli import main; raise SystemExit(main(['report', {path!r}, '--out', {html!r}]))",
    "merge": _MERGE,
    "merge_again": _MERGE,  # the same call again, with nothing new to merge
}


def _timed(code_dir: Path, step: str, **paths: str) -> dict[str, float]:
    """Run one step in a fresh interpreter; its wall time and its own peak RSS."""
    # the peak resident set of this process since its exec (VmHWM; ru_maxrss would count the parent's at fork)
    code = ("import sys\ntry:\n    " + _STEPS[step].format(**paths) + "\nfinally:\n    sys.stderr.write('MAXRSS ' + "
            "[line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0] + '\\n')\n")
    env = {**os.environ, "PYTHONPATH": str(code_dir), "MPLBACKEND": "Agg"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=code_dir, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{step} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    peak_kb = int(done.stderr.rsplit("MAXRSS ", 1)[1].split()[0])
    return {f"{step}_s": round(wall, 2), f"{step}_rss_mb": round(peak_kb / 1024)}


def measure(lines: int, work: Path, code_dir: Path, legacy: bool) -> dict[str, float]:
    run_dir, shard_dir = work / f"run-{lines}", work / f"shards-{lines}"
    for d in (run_dir, shard_dir):
        shutil.rmtree(d, ignore_errors=True)
    # written by a child process: a parent that had held 100,000 records slowed the timed children by a third
    for out, extra in ((run_dir, []), (shard_dir, ["--shards", str(SHARDS)])):
        subprocess.run([sys.executable, "-m", "bench.synthetic", str(lines), str(out), *extra,
                        *(["--legacy"] if legacy else [])], check=True, stdout=subprocess.DEVNULL,
                       cwd=Path(__file__).resolve().parent.parent)
    files = [run_dir / "results.jsonl"]
    os.sync()  # the files written are on disk before anything is timed: no writeback during the timings
    row: dict[str, float] = {"lines": lines, "disk_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1)}
    row["bytes_per_line"] = round(row["disk_mb"] * 1e6 / lines)
    path = str(files[0])
    row.update(_timed(code_dir, "load", path=path))
    row.update(_timed(code_dir, "report", path=str(run_dir), html=str(run_dir / "report.html")))
    row["html_mb"] = round((run_dir / "report.html").stat().st_size / 1e6, 2)
    row.update(_timed(code_dir, "merge", path=str(shard_dir)))
    row.update(_timed(code_dir, "merge_again", path=str(shard_dir)))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("lines", type=int, nargs="+", help="results lines per measurement, e.g. 1000 10000 100000")
    default_work = Path(tempfile.gettempdir()) / "tlstm-bench-scale"
    parser.add_argument("--work", default=str(default_work),
                        help=f"where the synthetic runs go (default {default_work})")
    parser.add_argument("--code", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose code is measured (default: this one)")
    parser.add_argument("--legacy", action="store_true", help="write schema-3 files (for code before schema 4)")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for lines in args.lines:
        rows.append(measure(lines, work, Path(args.code).resolve(), args.legacy))
        print(json.dumps(rows[-1]), flush=True)
        (work / "scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
