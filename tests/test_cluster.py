"""Sweeps as submitit jobs: split into jobs with comparison groups whole, shards merged without loss or
duplicates, a killed local job recovered by collect, the batch script's GPU request checked with a fake sbatch
(the runs on a real SLURM scheduler are in test_slurm.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cli, cluster, results
from bench.contract import Point
from bench.runner import comparison_groups
from tests.conftest import tiny_sweep_text

FAKES = Path(__file__).resolve().parent / "fake_impls.py"
CLI = Path(sys.executable).parent / "tlstm-bench"


def _sweep(tmp_path: Path, impls: list[str], sizes: list[int]) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(tiny_sweep_text(impls, plugins=[str(FAKES)], axes={"tensor_size": sizes}))
    return path


def _lines(out: Path) -> list[tuple[str, int]]:
    return [(r["key"], r.get("process", 0)) for r in results.read_records(out)]


def test_plan_keeps_every_comparison_group_in_one_job():
    points = [Point(impl=impl, family="tlstm", tensor_size=p, depth=p, seq_len=4, batch=2, channels=4, input_size=3,
                    kernel_size=3, mem_conv=True, norm=None, dtype="float32", mode="training", device="cpu",
                    repeats=2, warmup=0, seed=0) for p in range(1, 8) for impl in ("a", "b")]
    shares = cluster.plan(points, 3)
    assert len(shares) == 3 and sorted(i for share in shares for i in share) == list(range(14))
    for group in comparison_groups(points):
        assert sum(all(i in share for i, _ in group) for share in shares) == 1
    assert max(map(len, shares)) - min(map(len, shares)) <= 2  # balanced to one group


def test_local_jobs_split_merge_and_report(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([str(CLI), "run", str(_sweep(tmp_path, ["fake_ok", "lstm_cudnn"], [1, 2, 3, 4])), "--out",
                          str(out), "--executor", "local-jobs", "--jobs", "3"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "disturb each other's timings" in run.stderr
    manifest = json.loads((out / "jobs.json").read_text())
    assert len(manifest["jobs"]) == 3 and all((out / e["shard"] / "done.json").exists() for e in manifest["jobs"])
    lines = _lines(out)
    assert len(lines) == len(set(lines)) == 8  # every point once: nothing lost, nothing twice
    df = results.load(out)
    assert (df["status"] == "ok").all() and df["machine"].notna().all()
    assert (out / "report.html").exists()
    for argv, words in ((["--time-min", "0"], "--time-min must be from 1"),
                        (["--partition", "gpu"], "--partition: only with --executor slurm")):
        refused = subprocess.run([str(CLI), "collect", str(out), *argv], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and words in refused.stderr, refused.stderr
    manifest["options"]["bogus"] = 1  # a manifest from another version: `run --resume` is a collect, refused alike
    (out / "jobs.json").write_text(json.dumps(manifest))
    resumed = subprocess.run([str(CLI), "run", str(tmp_path / "jobs.toml"), "--out", str(out), "--resume"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 2 and "options are not this version's" in resumed.stderr, resumed.stderr
    assert "Traceback" not in resumed.stderr


def test_a_time_limit_too_short_for_one_group_is_refused_from_what_the_jobs_noted(tmp_path):
    manifest = {"jobs": [{"job_id": "7", "shard": "shards/job-000"}, {"job_id": "8", "shard": "shards/job-001"}]}
    for entry in manifest["jobs"]:
        (tmp_path / entry["shard"]).mkdir(parents=True)
    assert cluster.time_limit_problem(tmp_path, manifest, 1) is None  # nothing measured yet: nothing to say
    (tmp_path / "shards/job-000" / cluster.DONE_FILE).write_text(json.dumps({"longest_group_s": 400.0}))
    assert cluster.time_limit_problem(tmp_path, manifest, 9) == (
        "the longest comparison group so far took 6.7 min, and a job with --time-min 9 has about 6.5 min before it "
        "is told to stop", 10)  # 400 s, 90 s of signal lead, 60 s that SLURM may signal early: 10 minutes
    assert cluster.time_limit_problem(tmp_path, manifest, 10) is None
    stop = {"signal": "SIGUSR2", "groups_done": 0, "time_min": 20, "longest_group_s": 0}
    (tmp_path / "shards/job-001" / cluster.STOPS_FILE).write_text("not json\n" + json.dumps(stop) + "\n")
    why, minutes = cluster.time_limit_problem(tmp_path, manifest, 20)
    assert "job 8 reached its time limit (20 min)" in why and minutes == 40
    assert cluster.time_limit_problem(tmp_path, manifest, 21) is None


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _kill_job(controller: int) -> None:
    """SIGKILL a local job whole: its controller, the task, and the task's worker."""
    tree, frontier = [], [controller]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier += _children(pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_job_killed_mid_run_is_recovered_by_collect(tmp_path):
    out = tmp_path / "out"
    sweep = _sweep(tmp_path, ["fake_slow"], [1, 2, 3, 4, 5, 6])
    # output to a file, not a pipe: the local jobs inherit it, and a pipe would be read until they end
    log = tmp_path / "submit.log"
    with open(log, "w") as f:
        submitted = subprocess.run([str(CLI), "run", str(sweep), "--out", str(out), "--executor", "local-jobs",
                                    "--jobs", "2", "--no-wait", "--set", "repeats=12"], cwd=tmp_path, stdout=f,
                                   stderr=subprocess.STDOUT, timeout=120)  # 12 slow calls a point: time to kill
    assert submitted.returncode == 0, log.read_text()
    assert f"tlstm-bench collect {out}" in log.read_text()
    manifest = json.loads((out / "jobs.json").read_text())
    victim = manifest["jobs"][0]
    shard = out / victim["shard"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(results.read_records(shard)) < 1:
        time.sleep(0.02)
    assert 1 <= len(results.read_records(shard)) < len(victim["points"]), "kill it mid-run"
    _kill_job(int(victim["job_id"]))
    before = {(r["key"], r["started_at"]) for r in results.read_records(shard)}
    collected = subprocess.run([str(CLI), "collect", str(out), "--no-report"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=600)
    assert collected.returncode == 0, collected.stderr
    assert "resubmitted" in collected.stderr
    lines = _lines(out)
    assert len(lines) == len(set(lines)) == 6
    merged = {(r["key"], r["started_at"]) for r in results.read_records(out)}
    assert before <= merged  # what the killed job measured was kept, not measured again


# The one case the real scheduler of tests/test_slurm.py cannot produce here: a job that asks for GPUs (this
# machine has none, so sbatch refuses it). A fake sbatch records the batch script submitit writes, to check it.
FAKE_SBATCH = """#!/usr/bin/env bash
n=$(( $(cat "$FAKE_SLURM/counter" 2>/dev/null || echo 4241) + 1 ))
echo "$n" > "$FAKE_SLURM/counter"
cp "$1" "$FAKE_SLURM/job-$n.sh"
echo "Submitted batch job $n"
"""


def test_the_batch_script_asks_for_the_gpus_and_resources_requested(tmp_path, monkeypatch):
    bin_dir, state = tmp_path / "fake-bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    out = tmp_path / "out"
    submitted = subprocess.run([str(CLI), "run", str(_sweep(tmp_path, ["fake_ok", "lstm_cudnn"], [1, 2])), "--out",
                                str(out), "--executor", "slurm", "--partition", "gpu", "--gpus-per-job", "1",
                                "--time-min", "30", "--slurm-opt", "account=tlstm", "--slurm-opt", "qos=high",
                                "--jobs", "2", "--no-wait"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    scripts = sorted(state.glob("job-*.sh"))
    assert len(scripts) == 2
    for script in scripts:
        text = script.read_text()
        header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
        for expected in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=30",
                         "#SBATCH --account=tlstm", "#SBATCH --qos=high", "#SBATCH --job-name=tlstm-jobs",
                         f"#SBATCH --signal=USR2@{cluster.signal_delay_s(30)}"):
            assert expected in header, header
        assert "export PYTHONSAFEPATH=1" in text
    manifest = json.loads((out / "jobs.json").read_text())
    assert [e["job_id"] for e in manifest["jobs"]] == ["4242", "4243"]
    assert manifest["options"]["gpus_per_job"] == 1


@pytest.mark.parametrize("argv, words", [
    (["--executor", "cloud"], ["--executor", "invalid choice", "local-jobs", "slurm"]),
    (["--partition", "gpu"], ["--partition", "only with --executor slurm"]),
    (["--executor", "local-jobs", "--jobs", "0"], ["--jobs", "from 1"]),
    (["--jobs", "2"], ["--jobs needs --executor local-jobs or slurm"]),
    (["--no-wait"], ["--no-wait needs --executor local-jobs or slurm"]),
    (["--executor", "slurm"], ["SLURM login node", "sbatch"]),
    (["--executor", "local-jobs", "--slurm-opt", "account"], ["--slurm-opt must be KEY=VALUE"]),
])
def test_bad_cluster_options_are_refused_before_anything_is_submitted(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, wherever SLURM is installed
    out = tmp_path / "out"
    try:
        code = cli.main(["run", str(_sweep(tmp_path, ["lstm_cudnn"], [1])), "--out", str(out), *argv])
    except SystemExit as exc:  # argparse's own refusal of a choice
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err
    assert not out.exists()


def test_collect_needs_a_cluster_run(tmp_path, capsys):
    assert cli.main(["collect", str(tmp_path)]) == 2
    assert "no jobs.json here" in capsys.readouterr().err


def test_a_job_that_dies_while_the_cli_waits_does_not_hang_it(tmp_path):
    # used to: the dead job stayed a zombie child of the waiting CLI, counted as running, and the CLI waited forever
    out = tmp_path / "out"
    log = tmp_path / "run.log"
    with open(log, "w") as f:
        waiting = subprocess.Popen([str(CLI), "run", str(_sweep(tmp_path, ["fake_slow"], [1, 2, 3, 4])), "--out",
                                    str(out), "--executor", "local-jobs", "--jobs", "2", "--set", "repeats=12",
                                    "--no-report"], cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "jobs 0/2 finished" not in log.read_text():  # the CLI is waiting
        time.sleep(0.05)
    _kill_job(int(json.loads((out / "jobs.json").read_text())["jobs"][0]["job_id"]))
    assert waiting.wait(timeout=300) == 1, log.read_text()  # it ends, saying points are missing
    assert "tlstm-bench collect" in log.read_text()
    collected = subprocess.run([str(CLI), "collect", str(out), "--no-report"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=600)
    assert collected.returncode == 0, collected.stderr
    assert len(_lines(out)) == len(set(_lines(out))) == 4


def test_squeue_that_cannot_answer_counts_jobs_as_running_with_one_warning(tmp_path, monkeypatch):
    # a controller that is down takes squeue a minute or two to give up on: a fake says it at once
    (tmp_path / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller "
                                     "(connect failure)' >&2\nexit 1\n")
    (tmp_path / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.warns(UserWarning, match="squeue cannot say .*connect failure"):
        assert cluster.slurm_states(["1"]) is None
    entry = {"job_id": "1", "executor": "slurm", "shard": "shards/job-000"}
    with pytest.warns(UserWarning):
        assert cluster.running_jobs(tmp_path, [entry]) == [entry]  # not resubmitted while unknown


def test_job_progress_prints_when_a_job_finishes_and_otherwise_rarely(capsys):
    show = cli._job_progress(quiet=False, every_s=3600)
    for done, merged in ((0, 0), (0, 5), (0, 9), (1, 9), (1, 12), (2, 20)):
        show(done, 2, merged)
    assert capsys.readouterr().err.splitlines() == ["jobs 0/2 finished, 0 measurements merged",
                                                     "jobs 1/2 finished, 9 measurements merged",
                                                     "jobs 2/2 finished, 20 measurements merged"]


def test_a_training_run_that_crashed_with_its_checkpoint_kept_is_resubmitted_and_its_new_line_merged(tmp_path):
    from bench.contract import make_record
    from bench.sweep import Sweep
    from tests.test_capacity import _point

    point = _point()
    out, shard = tmp_path, tmp_path / "shards" / "job-000"
    shard.mkdir(parents=True)

    def record(status: str, started_at: str) -> dict:
        return make_record(point, status=status, message="", samples_s=[], metrics={}, env={}, sweep="s", index=0,
                           started_at=started_at, process=0)

    results.append(shard, record("crashed", "t1"))
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / f"{point.key}.pt").write_bytes(b"state")
    assert cluster.merge_shards(out) == 1
    manifest = {"jobs": [{"indices": [0], "points": [point.as_dict()]}]}
    sweep = Sweep.__new__(Sweep)
    sweep.budget = {"processes": 1}
    assert [p.key for p in cluster.missing(out, sweep, manifest)[0]] == [point.key]  # to be run again
    assert cluster.merge_shards(out) == 0  # the same crashed line is not merged twice
    results.append(shard, record("ok", "t2"))
    (out / "checkpoints" / f"{point.key}.pt").unlink()
    assert cluster.merge_shards(out) == 1  # the new line, which replaces the crashed one
    assert cluster.missing(out, sweep, manifest)[0] == []
    assert results.load(out)["status"].tolist() == ["ok"]
    results.append(shard, record("ok", "t3"))
    assert cluster.merge_shards(out) == 0  # a final line is never replaced
    (out / "shards" / cluster.MERGED_FILE).unlink()
    assert cluster.merge_shards(out) == 0  # the shard read again from its start: nothing twice
    assert len(results.read_records(out)) == 2
