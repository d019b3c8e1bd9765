"""Results that cannot be lost and input that cannot break the suite: the output lock, atomic files, no
code from the working directory, bounds on every value, and one-line errors instead of tracebacks.

Each test was written as the failing reproduction of a problem found by trying the suite as a hostile or
an unlucky user would; the comments say what used to happen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cli, contract, results
from bench.outdir import OutputBusy, OutputLock, atomic_write
from tests.conftest import tiny_sweep_text

REPO = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fake_impls.py"
CLI = Path(sys.executable).parent / "tlstm-bench"  # the console script, as a user runs it


def _tiny(impls: list[str], size: dict, **top) -> str:
    """The tiny sweep (tests/conftest.py) with seed 1, a 120 s timeout, T = 3, inference only."""
    axes = {**size, "seq_len": [3], "mode": ["inference"]}
    return tiny_sweep_text(impls, seed=1, budget={"timeout_s": 120}, axes=axes, **top)


TINY = _tiny(["lstm_cudnn"], {"depth": [1]})  # one point: POINT below

POINT = contract.Point(impl="lstm_cudnn", family="lstm", tensor_size=None, depth=1, seq_len=3, batch=2, channels=4,
                       input_size=3, kernel_size=3, mem_conv=True, norm=None, dtype="float32", mode="inference",
                       device="cpu", repeats=2, warmup=0, seed=1)


def _record(index: int) -> dict:
    point = contract.Point(**{**POINT.as_dict(), "seed": index})
    return contract.make_record(point, status="ok", message="", samples_s=[0.001, 0.002], metrics={}, env={},
                                sweep="s", index=index, started_at=None)


def _raw(out: Path, *records: dict) -> None:
    """Append records as they are, one JSON line each (a hand-made or damaged line, which the writer would not
    write)."""
    with open(out / "results.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _sweep(tmp_path: Path, text: str = TINY, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _refused(capsys, argv: list[str], *words: str) -> str:
    """The command exits 2 with one error line naming ``words``; no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tlstm-bench: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# --- one writer per output directory -----------------------------------------------------------


HOLDER = """
import json, sys, time
from bench import contract, results
from bench.outdir import OutputLock
out, appends, config = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
with OutputLock(out):
    print("locked", flush=True)
    for i in range(appends):
        point = contract.Point(**{**config, "seed": i})
        results.append(out, contract.make_record(point, status="ok", message="", samples_s=[0.001], metrics={},
                                                 env={}, sweep="s", index=i, started_at=None))
        time.sleep(0.002)
"""


def _holder(out: Path, appends: int) -> subprocess.Popen:
    """Another process that holds the output's lock while it appends ``appends`` records (seeds 0..n-1)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(appends), json.dumps(POINT.as_dict())],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_the_same_output_is_refused_with_the_holders_pid(tmp_path, capsys):
    # used to: both runs exited 0 and wrote every point twice
    out = tmp_path / "out"
    out.mkdir()
    holder = _holder(out, 200)
    try:
        line = _refused(capsys, ["run", str(_sweep(tmp_path)), "--out", str(out)], "in use", f"pid {holder.pid}")
        assert str(out) in line
        (out / "sweep.json").write_text(json.dumps({"name": "tiny"}))
        _refused(capsys, ["run", str(_sweep(tmp_path)), "--out", str(out), "--resume"], f"pid {holder.pid}")
    finally:
        holder.wait(timeout=60)


def test_many_appends_against_a_concurrent_resume_lose_and_duplicate_nothing(tmp_path):
    # used to: repair() truncated the file to what it had parsed, deleting a concurrent writer's lines
    out = tmp_path / "out"
    out.mkdir()
    appends = 300
    holder = _holder(out, appends)
    refused, seen = 0, []
    while True:
        try:
            results.repair(out)  # what --resume does first; it takes the lock, so it cannot cut anything
        except OutputBusy:
            refused += 1
            seen.append(len(results.read_records(out)))  # readers take no lock and keep working
            continue
        break  # the writer let go of the lock: every append is done
    assert holder.wait(timeout=60) == 0
    seeds = [r["config"]["seed"] for r in results.read_records(out)]
    assert refused > 10 and seen == sorted(seen) and seen[-1] > 0  # the readers saw the file grow
    assert sorted(seeds) == list(range(appends))  # 0 lost, 0 duplicated


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with OutputLock(tmp_path), OutputLock(tmp_path):
        pass
    with OutputLock(tmp_path):
        pass


# --- atomic files and resuming at any moment ---------------------------------------------------


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    # used to: a full disk during --resume left sweep.json truncated, and resume and report failed for good
    target = tmp_path / "sweep.json"
    target.write_text('{"name": "old"}')

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        atomic_write(target, '{"name": "new"}')
    assert target.read_text() == '{"name": "old"}' and [p.name for p in tmp_path.iterdir()] == ["sweep.json"]


def test_a_run_interrupted_before_its_first_point_resumes_with_the_printed_command(tmp_path):
    # used to: the run could not be resumed ("needs an earlier run's results.jsonl") and the printed command failed
    sweep = _sweep(tmp_path, _tiny(["fake_slow"], {"tensor_size": [1, 2]}, plugins=[str(FAKES)]))
    out = tmp_path / "out"
    proc = subprocess.Popen([str(CLI), "run", str(sweep), "--out", str(out), "--no-report", "--quiet"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (out / "sweep.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and results.read_records(out) == []
    command = err.split("continue with ", 1)[1].strip().split()
    assert command[0] == "tlstm-bench" and "--resume" in command
    resumed = subprocess.run([str(CLI), *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(results.read_records(out)) == 2


# --- no code from the working directory ----------------------------------------------------------


def test_modules_lying_in_the_working_directory_are_never_imported(tmp_path):
    # used to: a reports.py or pynvml.py where the user ran was executed by the CLI and by the worker
    marker = tmp_path / "imported"
    for name in ("reports", "pynvml", "implementations", "torch"):
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")
    sweep = _sweep(tmp_path)
    run = subprocess.run([str(CLI), "run", str(sweep), "--out", str(tmp_path / "out")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert not marker.exists(), marker.read_text()
    assert (tmp_path / "out" / "report.html").exists()


# --- bad values: refused before anything runs, one line, exit 2 ---------------------------------


def _with(text: str, **budget_or_axes: str) -> str:
    for key, value in budget_or_axes.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
        table = "[budget]" if key in ("timeout_s", "min_time_s", "threads", "repeats", "warmup") else "[axes]"
        index = lines.index(table)
        lines.insert(index + 1, f"{key} = {value}")
        text = "\n".join(lines) + "\n"
    return text


BAD_SWEEPS = [
    ("timeout_s infinite", _with(TINY, timeout_s="inf"), ["budget.timeout_s", "finite"]),
    ("timeout_s nan", _with(TINY, timeout_s="nan"), ["budget.timeout_s", "finite"]),
    ("min_time_s nan", _with(TINY, min_time_s="nan"), ["budget.min_time_s", "finite"]),
    ("threads beyond the cores", _with(TINY, threads="100000000"), ["budget.threads"]),
    ("batch as a huge float", _with(TINY, batch="[1e23]"), ["axes.batch", "integer"]),
    ("repeats 10**12", _with(TINY, repeats="1000000000000"), ["budget.repeats", "100,000"]),
    ("channels 10**9 with pair = params", "pair = \"params\"\n" + _with(TINY, channels="[1000000000]"),
     ["axes.channels", "65,536"]),
    ("a point too large for memory", _with(TINY, batch="[1000000]", seq_len="[1000000]"), ["GiB", "axes"]),
    ("a name that is an absolute path", 'name = "/tmp/elsewhere"\n' + TINY, ["name", "letters"]),
    ("an array nested 5,000 deep", TINY.replace("batch = [2]", "batch = " + "[" * 5000 + "2" + "]" * 5000),
     ["TOML"]),
]


@pytest.mark.parametrize("text, words", [(t, w) for _, t, w in BAD_SWEEPS], ids=[n for n, _, _ in BAD_SWEEPS])
def test_bad_sweep_values_are_refused_in_one_line(tmp_path, capsys, text, words):
    out = tmp_path / "out"
    _refused(capsys, ["run", str(_sweep(tmp_path, text)), "--out", str(out)], *words)
    assert not out.exists()  # nothing ran, nothing was created


def test_a_sweep_file_that_is_not_utf8_is_refused(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(TINY.encode() + b'description = "caf\xe9"\n')
    _refused(capsys, ["run", str(path)], str(path), "not UTF-8", "0xe9")


@pytest.mark.parametrize("where", ["/proc/tlstm-out", "a-file"])
def test_an_output_that_cannot_be_written_is_refused(tmp_path, capsys, where):
    out = Path(where) if where.startswith("/") else tmp_path / where
    if not where.startswith("/"):
        out.write_text("not a directory")
    _refused(capsys, ["run", str(_sweep(tmp_path)), "--out", str(out)], "--out", str(out))


def test_set_values_that_break_are_refused(tmp_path, capsys):
    _refused(capsys, ["run", str(_sweep(tmp_path)), "--set", "timeout_s=inf"], "budget.timeout_s")
    _refused(capsys, ["run", str(_sweep(tmp_path)), "--set", "batch=" + "[" * 5000 + "1" + "]" * 5000], "batch")


def test_a_plugin_that_exits_is_refused_with_a_message(tmp_path, capsys):
    # used to: exit 3, no message
    plugin = tmp_path / "exits.py"
    plugin.write_text("import sys\nsys.exit(3)\n")
    _refused(capsys, ["run", str(_sweep(tmp_path, 'plugins = ["exits.py"]\n' + TINY))], "plugins", "sys.exit(3)")


def test_a_plugin_failing_only_in_the_worker_shows_the_workers_error(tmp_path, capsys):
    # used to: the reason was only in worker.log
    plugin = tmp_path / "worker_only.py"
    plugin.write_text("import sys\nif sys.argv[0].endswith('worker.py'):\n"
                      "    raise RuntimeError('this plugin refuses to load in the worker')\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(_sweep(tmp_path, 'plugins = ["worker_only.py"]\n' + TINY)), "--out", str(out),
                     "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "refuses to load in the worker" in err and "Traceback" not in err.split("its last output:")[0]


# --- unreadable results: the line is named and skipped, the rest loads ---------------------------


def test_unreadable_results_lines_are_skipped_with_their_line_number(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    good = json.dumps(_record(0))
    bad_utf8 = json.dumps(_record(1)).replace('"message": ""', '"message": "X"').encode().replace(b"X", b"\xff")
    text = (good + "\n[1, 2]\n" + json.dumps({**_record(2), "metrics": "fast"}) + "\n").encode() + bad_utf8 + b"\n"
    (out / "results.jsonl").write_bytes(text + json.dumps(_record(3)).encode() + b"\n")
    with pytest.warns(results.ResultsWarning) as caught:
        df = results.load(out)
    assert sorted(df["seed"]) == [0, 3]
    messages = [str(w.message) for w in caught]
    assert any("line 2 skipped" in m and "list" in m for m in messages)
    assert any("line 3 skipped" in m and "'metrics'" in m for m in messages)
    assert any("line 4 skipped" in m and "UnicodeDecodeError" in m for m in messages)
    assert cli.main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err
    assert err.count("tlstm-bench: warning:") == 3 and "Traceback" not in err


def test_a_zero_time_names_the_row_instead_of_a_math_error(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    record = _record(0)
    record["metrics"] = {"time_median_s": 0.0, "time_per_step_s": 0.0}
    record["samples_s"] = []
    _raw(out, record)
    # the loader skips such a line, naming it (issue 23); with nothing else in the file the report refuses
    assert cli.main(["report", str(out)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "no line is a results record" in err and "line 1 skipped: metric 'time_median_s' is 0.0, not a time" in err


def test_a_truncated_sweep_json_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    results.append(out, _record(0))
    (out / "sweep.json").write_text('{"name": "tin')
    _refused(capsys, ["report", str(out)], str(out / "sweep.json"), "not a readable sweep definition")
    _refused(capsys, ["run", str(_sweep(tmp_path)), "--out", str(out), "--resume"], str(out / "sweep.json"))


# --- found by a review as a new user ---------------------------------------------------------------


def test_resume_must_run_the_same_points(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["run", str(sweep), "--out", str(out), "--no-report", "--quiet"]) == 0
    _refused(capsys, ["run", str(sweep), "--out", str(out), "--resume", "--set", "batch=3"], "--resume must run the "
             "same points")
    assert cli.main(["run", str(sweep), "--out", str(out), "--resume", "--no-report", "--quiet"]) == 0


def test_resume_without_out_takes_the_latest_run_of_exactly_this_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "RESULTS_ROOT", tmp_path)
    for name in ("tiny-20250101-000000", "tiny-profile-20260101-000000", "tiny-x-20270101-000000"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sweep.json").write_text("{}")
    assert cli._latest_results("tiny").name == "tiny-20250101-000000"


@pytest.mark.parametrize("out", ["", " ", "a" * 300])
def test_an_empty_or_impossible_out_is_refused(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ["run", str(_sweep(tmp_path)), "--out", out], "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]  # nothing written where we stand


@pytest.mark.parametrize("line, why", [
    ({"schema": contract.SCHEMA_VERSION + 1}, f"results schema {contract.SCHEMA_VERSION + 1} is unknown"),
    ({"schema": "2"}, "results schema '2' is unknown"),
    ({"env": "notadict"}, "'env' is not an object"),
])
def test_lines_of_an_unknown_schema_or_a_bad_env_are_skipped_not_fatal(tmp_path, line, why):
    out = tmp_path / "out"
    out.mkdir()
    _raw(out, _record(0), {**_record(1), **line})
    with pytest.warns(results.ResultsWarning, match=f"line 2 skipped: {why}"):
        assert list(results.load(out)["seed"]) == [0]


def test_a_file_without_any_record_is_refused(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text("[1]\n")
    _refused(capsys, ["report", str(path)], "no line is a results record")


def test_a_resumed_run_on_the_same_machine_is_one_environment(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {"hostname": "h", "cpu_model": "c", "torch": "2.13.0", "matmul_gflops": {"cpu:float32": 90.0}}
    results.append(out, {**_record(0), "env": env})
    results.append(out, {**_record(1), "env": {**env, "matmul_gflops": {"cpu:float32": 95.0}}})
    assert "envs" not in results.load(out).attrs
    results.append(out, {**_record(2), "env": {**env, "hostname": "other"}})
    assert len(results.load(out).attrs["envs"]) == 2


def test_files_written_whole_are_readable_by_others(tmp_path):
    # used to: mkstemp's 0600, so a report on a shared machine was readable by its writer only
    atomic_write(tmp_path / "report.html", "<html></html>")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("where", ["nowhere", "a-file"])
def test_collect_of_a_path_that_is_no_run_is_refused(tmp_path, capsys, where):
    path = tmp_path / where
    if where == "a-file":
        path.write_text("x")
    _refused(capsys, ["collect", str(path)], "not a directory")
