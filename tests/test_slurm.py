"""Cluster runs against a real SLURM scheduler (the ``slurm`` fixture: Debian's slurm-wlm and munge, one node,
no accounting database): a sweep split into jobs and merged quietly; a job cancelled mid-run and a job
stopped by its time limit, both recovered by ``collect`` with nothing lost or duplicated and no point turned
into a final ``crashed``; a training job requeued (as preemption does) or cancelled and resubmitted goes on
from its last checkpoint. Skipped, with the install command, where the scheduler cannot be started."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import cluster, results
from bench.contract import Point
from bench.runner import comparison_groups
from tests.conftest import tiny_sweep_text
from tests.test_capacity import RESUME_SWEEP

FAKES = Path(__file__).resolve().parent / "fake_impls.py"
CLI = Path(sys.executable).parent / "tlstm-bench"
NOISE = ("sacct", "Bypassing", "Traceback", "accounting storage")


def _sweep(tmp_path: Path, sizes: list[int], batches: list[int] = (2,), repeats: int = 2) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(tiny_sweep_text(["fake_slow", "fake_ok"], plugins=[str(FAKES)],
                                    axes={"tensor_size": sizes, "batch": list(batches)}, budget={"repeats": repeats}))
    return path


def _cli(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *argv], capture_output=True, text=True, timeout=timeout)


def _wait_for(condition, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _ids(out: Path) -> list[tuple[str, int]]:
    return [(r["key"], r.get("process", 0)) for r in results.read_records(out)]


def _assert_groups_whole_per_shard(out: Path) -> None:
    """Every comparison group's records all lie in one shard: a ratio never mixes jobs."""
    manifest = json.loads((out / cluster.MANIFEST).read_text())
    points = [Point.from_dict(c) for e in manifest["jobs"] for c in e["points"]]
    group_of = {p.key: n for n, members in enumerate(comparison_groups(points)) for _, p in members}
    shard_of: dict[int, set[str]] = {}
    for shard in (out / cluster.SHARDS_DIR).glob("job-*"):
        for record in results.read_records(shard):
            shard_of.setdefault(group_of[record["key"]], set()).add(shard.name)
    assert all(len(shards) == 1 for shards in shard_of.values()), shard_of


def test_a_sweep_split_into_jobs_is_merged_and_quiet_without_accounting(slurm, tmp_path):
    assert "disabled" in slurm.run("sacct", check=False).stderr  # this cluster has no accounting database
    out = tmp_path / "out"
    run = _cli("run", str(_sweep(tmp_path, [1, 2, 3])), "--out", str(out), "--executor", "slurm", "--jobs", "2",
               "--no-report")
    assert run.returncode == 0, run.stderr
    assert not any(word in run.stderr + run.stdout for word in NOISE), run.stderr
    lines = run.stderr.splitlines()
    print(f"the user sees {len(lines)} lines on stderr: {lines}")
    assert len(lines) <= 8  # the sweep line, the submission, a few progress lines
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 6
    assert (results.load(out)["status"] == "ok").all()
    _assert_groups_whole_per_shard(out)


def test_a_job_cancelled_mid_run_is_recovered_by_collect(slurm, tmp_path):
    out = tmp_path / "out"
    submitted = _cli("run", str(_sweep(tmp_path, [1, 2, 3, 4, 5, 6], repeats=12)), "--out", str(out),
                     "--executor", "slurm", "--jobs", "2", "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    victim = json.loads((out / cluster.MANIFEST).read_text())["jobs"][0]
    shard = out / victim["shard"]
    _wait_for(lambda: len(results.read_records(shard)) >= 2, 120, "the job's first group")
    before = {(r["key"], r["started_at"]) for r in results.read_records(shard)}
    assert len(before) < len(victim["points"]), "cancel it mid-run"
    slurm.run("scancel", victim["job_id"])
    polls = 0
    while cluster.running_jobs(out, [victim]):  # squeue, as collect sees it
        polls += 1
        assert polls < 60, "the cancelled job is still counted as running"
        time.sleep(1)
    print(f"the cancelled job was seen as ended after {polls} poll(s) of 1 s")
    stops = (shard / cluster.STOPS_FILE).read_text()
    assert '"SIGTERM"' in stops
    collected = _cli("collect", str(out), "--no-report")
    assert collected.returncode == 0, collected.stderr
    assert "resubmitted" in collected.stderr
    assert not any(word in collected.stderr for word in NOISE), collected.stderr
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 12  # nothing lost, nothing twice
    df = results.load(out)
    assert (df["status"] == "ok").all(), df[["status", "message"]]  # the point in flight was not made `crashed`
    assert before <= {(r["key"], r["started_at"]) for r in results.read_records(out)}  # kept, not measured again
    _assert_groups_whole_per_shard(out)


def test_a_job_stopped_by_its_time_limit_is_recovered_by_collect(slurm, tmp_path):
    # about 2 s a group, 25 groups: longer than the job runs before SLURM tells it to stop (15 to 45 s in)
    out = tmp_path / "out"
    submitted = _cli("run", str(_sweep(tmp_path, [1, 2, 3, 4, 5], batches=[1, 2, 3, 4, 5], repeats=40)),
                     "--out", str(out), "--executor", "slurm", "--time-min", "1", "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    (job,) = json.loads((out / cluster.MANIFEST).read_text())["jobs"]
    script = next((out / cluster.JOBS_DIR).glob("*_submission.sh")).read_text()
    assert "#SBATCH --time=1" in script and f"#SBATCH --signal=USR2@{cluster.signal_delay_s(1)}" in script
    _wait_for(lambda: not cluster.running_jobs(out, [job]), 150, "the job to reach its time limit", poll=1)
    (stop,) = [json.loads(line) for line in (out / job["shard"] / cluster.STOPS_FILE).read_text().splitlines()]
    assert stop["signal"] == "SIGUSR2" and stop["time_min"] == 1
    print(f"stopped by its time limit after {stop['elapsed_s']} s and {stop['groups_done']} group(s)")
    if stop["groups_done"] == 0:  # resubmitting with the same limit would end the same way
        refused = _cli("collect", str(out), "--no-wait")
        assert refused.returncode == 2 and "--time-min 2" in refused.stderr, refused.stderr
    collected = _cli("collect", str(out), "--no-report", "--time-min", "5", "--jobs", "2")
    assert collected.returncode == 0, collected.stderr
    assert not any(word in collected.stderr for word in NOISE), collected.stderr
    ids = _ids(out)
    assert len(ids) == len(set(ids)) == 50
    assert (results.load(out)["status"] == "ok").all()
    manifest = json.loads((out / cluster.MANIFEST).read_text())
    assert manifest["options"]["time_min"] == 5 and len(manifest["jobs"]) == 3
    _assert_groups_whole_per_shard(out)


def _checkpoint_samples(out: Path) -> int:
    found = list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").exists() else []
    try:
        return torch.load(found[0], weights_only=True)["state"]["samples"] if found else 0
    except Exception:  # caught mid-replace: look again
        return 0


@pytest.mark.parametrize("how", ["requeue", "cancel-and-collect"])
def test_a_training_job_stopped_mid_run_goes_on_from_its_checkpoint(slurm, tmp_path, how):
    sweep, out = tmp_path / "train.toml", tmp_path / "out"
    sweep.write_text(RESUME_SWEEP)  # 6,144 samples, evaluated every 256
    submitted = _cli("run", str(sweep), "--out", str(out), "--executor", "slurm", "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    (job,) = json.loads((out / cluster.MANIFEST).read_text())["jobs"]
    at = _wait_for(lambda: _checkpoint_samples(out) >= 1024 and _checkpoint_samples(out), 180, "a checkpoint")
    # one `collect`, waiting from before the stop to the end: a requeued job is the same job again; a cancelled
    # one that made progress has what it left resubmitted, and the new job finds the run's checkpoint by its key
    collecting = subprocess.Popen([str(CLI), "collect", str(out), "--no-report"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    if how == "requeue":  # what preemption does: the same job, started again from its batch script
        slurm.run("scontrol", "requeue", job["job_id"])
        _wait_for(lambda: slurm.state(job["job_id"]) == "PENDING", 60, "the requeued job to be pending")
        slurm.run("scontrol", "update", f"JobId={job['job_id']}", "StartTime=now")  # not the 2-minute hold
    else:
        slurm.run("scancel", job["job_id"])
    stdout, stderr = collecting.communicate(timeout=300)
    assert collecting.returncode == 0, stderr
    assert ("resubmitted 1 point(s)" in stderr) == (how != "requeue"), stderr
    assert not any(word in stderr for word in NOISE), stderr
    (row,) = results.load(out).to_dict("records")
    samples = [c["samples"] for c in row["curve"]]
    print(f"{how}: stopped with a checkpoint at {at:,} samples; went on to {row['samples_seen']:,}, "
          f"resumed {row['resumed']} time(s), {len(samples)} evaluations")
    assert row["status"] == "ok" and row["resumed"] == 1 and row["samples_seen"] == 6144
    assert samples == list(range(256, 6144 + 1, 256))  # every evaluation once: none lost, none repeated
    assert '"SIGTERM"' in (out / job["shard"] / cluster.STOPS_FILE).read_text()
    assert not list((out / "checkpoints").glob("*.pt"))


def test_a_request_the_cluster_cannot_meet_is_refused_in_one_line(slurm, tmp_path):
    out = tmp_path / "out"
    run = _cli("run", str(_sweep(tmp_path, [1])), "--out", str(out), "--executor", "slurm", "--gpus-per-job", "1")
    assert run.returncode == 1
    assert "submitting the jobs failed" in run.stderr and "gres" in run.stderr.lower(), run.stderr
    assert "Traceback" not in run.stderr
