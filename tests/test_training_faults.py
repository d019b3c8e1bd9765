"""Faults during training lose no run and run no code: each test is a failing reproduction of a defect a
hostile probe found (issue 23), then the behaviour that replaced it.

- a checkpoint whose pickle calls ``os.system`` ran it as root on ``--resume``;
- a corrupt or foreign checkpoint became an ``error`` with a long torch message, was deleted, never retried;
- a worker killed mid-run (kill -9, the OOM killer) turned the run into a final ``crashed`` and deleted its
  checkpoint, so ``--resume`` skipped it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from bench import results, train, worker
from tests.test_capacity import CLI, RESUME_SWEEP, _point, _write

QUIET = {"log": lambda line: None}


def _learned(reply: dict) -> list[dict]:
    """The learning curve without its wall times (which vary from run to run)."""
    return [{k: v for k, v in entry.items() if k != "wall_s"} for entry in reply["metrics"]["curve"]]


def _fresh(point) -> list[dict]:
    return _learned(train.train_point(point, None, **QUIET))


class _Boom:
    """Unpickling this calls os.system: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_runs_no_code_and_the_run_starts_from_zero(tmp_path):
    point = _point(max_samples=512, eval_every=256, stop=False)
    marker, checkpoint = tmp_path / "code-ran", tmp_path / "run.pt"
    torch.save({"version": 1, "key": point.key, "model": _Boom(marker)}, checkpoint)
    reply = train.train_point(point, checkpoint, **QUIET)
    assert not marker.exists()  # nothing in the file ran
    assert reply["status"] == "ok" and reply["metrics"]["resumed"] == 0 and reply["metrics"]["samples_seen"] == 512
    assert f"checkpoint {checkpoint} refused" in reply["message"] and "started from zero" in reply["message"]
    assert (tmp_path / "run.pt.refused-0").is_file()  # moved aside, not deleted
    assert _learned(reply) == _fresh(point)  # exactly a fresh run


def _good_checkpoint(point, path: Path) -> dict:
    """A real checkpoint of ``point`` (after its first evaluation) as a dict."""
    train.train_point(dataclasses.replace(point, train=dataclasses.replace(point.train, max_samples=256)), path,
                      **QUIET)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "random bytes", "a pickled list", "no model entry",
                                    "another model's weights", "a directory", "another point's key"])
def test_a_bad_checkpoint_is_refused_in_one_line_and_the_run_starts_over(tmp_path, damage):
    point = _point(max_samples=512, eval_every=256, stop=False)
    checkpoint = tmp_path / "run.pt"
    good = _good_checkpoint(point, checkpoint)
    data = checkpoint.read_bytes()
    if damage == "truncated":
        checkpoint.write_bytes(data[: len(data) // 2])
    elif damage == "zero bytes":
        checkpoint.write_bytes(b"")
    elif damage == "random bytes":
        checkpoint.write_bytes(os.urandom(4096))
    elif damage == "a pickled list":
        torch.save([1, 2, 3], checkpoint)
    elif damage == "no model entry":
        torch.save({k: v for k, v in good.items() if k != "model"}, checkpoint)
    elif damage == "another model's weights":  # same key, the weights of a wider model
        wider = _point(max_samples=256, eval_every=256, stop=False, channels=24)
        other = _good_checkpoint(wider, tmp_path / "wider.pt")
        torch.save({**good, "model": other["model"]}, checkpoint)
    elif damage == "a directory":
        checkpoint.unlink()
        checkpoint.mkdir()
    elif damage == "another point's key":
        torch.save({**good, "key": "0123456789abcdef"}, checkpoint)
    reply = train.train_point(point, checkpoint, **QUIET)
    assert reply["status"] == "ok" and reply["metrics"]["resumed"] == 0 and reply["metrics"]["samples_seen"] == 512
    message = reply["message"]
    note = message[message.index(f"checkpoint {checkpoint} refused ("):]
    assert note.endswith("started from zero") and len(note) < 400 and "\n" not in note
    assert (tmp_path / "run.pt.refused-0").exists() and checkpoint.is_file()  # aside; a new, good one written
    assert _learned(reply) == _fresh(point)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_worker_killed_mid_run_keeps_its_checkpoint_and_resume_continues_it(tmp_path):
    sweep, out = _write(tmp_path, RESUME_SWEEP), tmp_path / "out"
    runner = subprocess.Popen([str(CLI), "run", str(sweep), "--out", str(out), "--quiet", "--no-report"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    checkpoints = out / "checkpoints"
    deadline, seen = time.monotonic() + 120, 0
    while time.monotonic() < deadline and runner.poll() is None and seen < 1024:
        found = list(checkpoints.glob("*.pt")) if checkpoints.exists() else []
        try:
            seen = torch.load(found[0], weights_only=True)["state"]["samples"] if found else 0
        except Exception:  # caught mid-replace: look again
            seen = 0
        time.sleep(0.1)
    workers = _children(runner.pid)
    assert runner.poll() is None and seen >= 1024 and workers, runner.stderr.read().decode()[-2000:]
    for pid in workers:  # kill -9 of the worker, as the out-of-memory killer does
        os.kill(pid, signal.SIGKILL)
    assert runner.wait(timeout=120) == 0
    runner.stderr.close()
    (record,) = results.read_records(out / "results.jsonl")
    assert record["status"] == "crashed" and "checkpoint is kept" in record["message"]
    assert list(checkpoints.glob("*.pt"))  # the run's progress survives
    resumed = subprocess.run([str(CLI), "run", str(sweep), "--out", str(out), "--resume", "--quiet", "--no-report"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (row,) = results.load(out).to_dict("records")  # one row: the resumed run's line replaces the crashed one
    assert row["status"] == "ok" and row["resumed"] == 1 and row["samples_seen"] == 6144
    assert [c["samples"] for c in row["curve"]] == list(range(256, 6144 + 1, 256))  # none lost or repeated
    assert not list(checkpoints.glob("*.pt"))
    again = subprocess.run([str(CLI), "run", str(sweep), "--out", str(out), "--resume", "--quiet", "--no-report"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "1 already done" in again.stderr + again.stdout


def test_a_full_disk_during_a_checkpoint_save_leaves_the_last_one_whole_and_no_temp_file(tmp_path, monkeypatch):
    point = _point(max_samples=256, eval_every=256, stop=False)
    checkpoint = tmp_path / "run.pt"
    good = _good_checkpoint(point, checkpoint)
    before = checkpoint.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=f"cannot write checkpoint {checkpoint}: No space left on device") as info:
        train._save(checkpoint, {**good, "state": {**good["state"], "samples": 999}})
    assert info.value.errno == errno.ENOSPC and worker.is_disk_full(info.value)
    assert checkpoint.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only), unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (and a system that allows it)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_filling_mid_training_loses_nothing_once_space_is_freed(tmp_path, small_disk):
    sweep, out = _write(tmp_path, RESUME_SWEEP), small_disk / "out"
    filler = small_disk / "filler"
    run = subprocess.Popen([str(CLI), "run", str(sweep), "--out", str(out), "--quiet", "--no-report"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and list(out.glob("checkpoints/*.pt"))):
        time.sleep(0.05)
    with open(filler, "wb", buffering=0) as f:  # fill the disk: the next checkpoint (or line) cannot be written
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    _, err = run.communicate(timeout=300)
    assert "Traceback" not in err and "disk full" in err
    records = results.read_records(out / "results.jsonl")
    assert all(r["message"].startswith("disk full") for r in records), records  # recorded as such, if at all
    assert not list(out.rglob("*.tmp"))
    filler.unlink()  # space again: --resume completes the run
    resumed = subprocess.run([str(CLI), "run", str(sweep), "--out", str(out), "--resume", "--quiet", "--no-report"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (row,) = results.load(out).to_dict("records")
    assert row["status"] == "ok" and row["samples_seen"] == 6144
    assert [c["samples"] for c in row["curve"]] == list(range(256, 6144 + 1, 256))
