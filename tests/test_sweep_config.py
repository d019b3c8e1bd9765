"""Sweep files and --set overrides: expansion into points, pairing rules, and bad input refused before
anything runs (the message names the file, the field and the allowed values; exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import implementations
from bench import cli
from bench.sweep import (
    AXES,
    Sweep,
    SweepError,
    load_sweep,
    parse_set_value,
    shipped_sweeps,
)
from implementations import ModelConfig, lstm_param_count, tlstm_param_count

REPO = Path(__file__).resolve().parent.parent

GOOD = """
implementations = ["tlstm_naive", "lstm_cudnn"]
[axes]
tensor_size = [1, 2, 4]
seq_len = [8]
batch = [2]
channels = [4]
input_size = [3]
mode = ["inference", "training"]
device = ["cpu"]
"""


def _file(tmp_path: Path, text: str, name: str = "s.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- expansion -----------------------------------------------------------------------------------


def test_cross_product_and_interleaved_order(tmp_path):
    sweep = load_sweep(_file(tmp_path, GOOD))
    points = sweep.points(cuda_available=False)
    assert len(points) == 3 * 2 * 2  # sizes x modes x implementations
    assert [p.impl for p in points[:4]] == ["tlstm_naive", "lstm_cudnn"] * 2  # implementations interleaved
    assert {p.mode for p in points} == {"inference", "training"}
    keys = [p.key for p in points]
    assert len(set(keys)) == len(keys)
    first = points[0]
    assert set(first.as_dict()) == {"impl", "family", "tensor_size", "depth", "seq_len", "batch", "channels",
                          "input_size", "kernel_size", "mem_conv", "norm", "dtype", "mode", "device", "repeats",
                          "warmup", "seed", "dims", "train"}
    assert first.norm is None and first.device == "cpu" and first.dtype == "float32"


def test_pair_by_depth_gives_the_lstm_the_tlstm_depth(tmp_path):
    text = GOOD.replace("tensor_size = [1, 2, 4]", "tensor_size = [3, 4]\nkernel_size = [4]")
    points = load_sweep(_file(tmp_path, text)).points(cuda_available=False)
    for p in points:
        assert p.depth == -(-p.tensor_size // 2)  # L = ceil(P / (K // 2)) with K = 4
        if p.family == "lstm":
            assert p.channels == 4 and p.tensor_size is not None


def test_pair_by_params_picks_the_closest_width(tmp_path):
    text = GOOD.replace('[axes]', 'pair = "params"\n[axes]').replace("channels = [4]", "channels = [32]")
    points = load_sweep(_file(tmp_path, text)).points(cuda_available=False)
    target = tlstm_param_count(ModelConfig(3, 32, 1))
    for p in [p for p in points if p.family == "lstm"]:
        width, depth = p.channels, p.depth
        gap = abs(lstm_param_count(ModelConfig(3, width, depth=depth)) - target)
        for other in (width - 1, width + 1):
            assert gap <= abs(lstm_param_count(ModelConfig(3, other, depth=depth)) - target)
    widths = {p.depth: p.channels for p in points if p.family == "lstm"}
    assert widths[1] > widths[2] > widths[4]  # deeper stacks get narrower at a fixed budget


def test_depth_axis_sizes_tlstm_by_depth_and_lstm_has_no_tensor_size(tmp_path):
    text = GOOD.replace("tensor_size = [1, 2, 4]", "depth = [1, 5]")
    points = load_sweep(_file(tmp_path, text)).points(cuda_available=False)
    for p in points:
        if p.family == "tlstm":
            assert p.tensor_size == p.depth  # K = 3: P = L
        else:
            assert p.tensor_size is None


def test_auto_device_and_set_overrides(tmp_path):
    text = GOOD.replace('device = ["cpu"]', 'device = ["auto"]')
    sweep = load_sweep(_file(tmp_path, text), ["batch=[1,16]", "dtype=bfloat16", "repeats=3", "depth=2",
                                                 "implementations=tlstm_*"])
    assert {p.device for p in sweep.points(cuda_available=True)} == {"cuda"}
    points = sweep.points(cuda_available=False)
    assert {p.device for p in points} == {"cpu"}
    assert {p.batch for p in points} == {1, 16} and {p.dtype for p in points} == {"bfloat16"}
    assert {p.repeats for p in points} == {3} and {p.depth for p in points} == {2}
    assert {p.impl for p in points} == set(implementations.names("tlstm_*"))
    assert sweep.overrides == ["batch=[1,16]", "dtype=bfloat16", "repeats=3", "depth=2", "implementations=tlstm_*"]


def test_parse_set_value_forms():
    assert parse_set_value("s", "batch", "[1,16]") == [1, 16]
    assert parse_set_value("s", "batch", "1,16") == [1, 16]
    assert parse_set_value("s", "batch", "16") == 16
    assert parse_set_value("s", "dtype", "bfloat16") == "bfloat16"
    assert parse_set_value("s", "mode", "inference,training") == ["inference", "training"]
    assert parse_set_value("s", "mem_conv", "[true, false]") == [True, False]


def test_shipped_sweeps_are_valid_and_quick_covers_every_implementation():
    shipped = shipped_sweeps()
    assert {"quick", "depth", "gpu", "gpu-target", "fused-cpu", "tiny", "paper"} <= set(shipped)
    quick = load_sweep("quick")
    points = quick.points(cuda_available=False)
    assert {p.impl for p in points} == set(implementations.names())  # new registrations included
    assert {p.device for p in points} == {"cpu"}
    assert {p.tensor_size for p in points} <= set(range(1, 9)) and {p.depth for p in points} <= set(range(1, 9))
    depth = load_sweep("depth").points(cuda_available=False)
    assert {p.mode for p in depth} == {"training"} and min(p.batch for p in depth) == 1
    assert {p.depth for p in depth} >= {1, 16}
    gpu = load_sweep("gpu").points(cuda_available=False)
    assert {p.device for p in gpu} == {"cuda"} and {p.seq_len for p in gpu} == {1024}
    assert {p.batch for p in gpu} == {1, 16, 256} and {p.dtype for p in gpu} == {"float32", "bfloat16"}
    assert {p.mode for p in gpu} == {"inference", "training"}
    target = load_sweep("gpu-target").points(cuda_available=False)
    assert {(p.batch, p.depth, p.channels, p.seq_len) for p in target} == {(1, 8, 64, 1024), (16, 8, 64, 1024)}
    fused = load_sweep("fused-cpu").points(cuda_available=False)
    assert ({p.impl for p in fused} == {"tlstm_naive", "tlstm_fused", "lstm_cudnn"}
            and {p.depth for p in fused} == {1, 8, 16})


# --- bad input: refused before anything runs ------------------------------------------------------


BAD_FILES = [
    # (what is wrong, file text, substrings the message must contain)
    ("not TOML", "axes = [1,", ["TOML", "not valid TOML"]),
    ("unknown top-level field", "colour = 'red'\n" + GOOD, ["colour", "unknown field", "allowed fields", "axes"]),
    ("unknown axis", GOOD.replace("seq_len", "sequence_length"),
     ["axes.sequence_length", "unknown axis", "seq_len", "tensor_size"]),
    ("zero batch", GOOD.replace("batch = [2]", "batch = [0]"), ["axes.batch", "integer >= 1", "0"]),
    ("string where an int belongs", GOOD.replace("batch = [2]", 'batch = ["big"]'),
     ["axes.batch", "integer >= 1", "'big'"]),
    ("kernel size below 2", GOOD.replace("[axes]", "[axes]\nkernel_size = [1]"),
     ["axes.kernel_size", "integer >= 2"]),
    ("unknown dtype", GOOD.replace("[axes]", '[axes]\ndtype = ["float8"]'),
     ["axes.dtype", "float32, float64, bfloat16, float16", "'float8'"]),
    ("unknown mode", GOOD.replace('mode = ["inference", "training"]', 'mode = ["train"]'),
     ["axes.mode", "inference, training", "'train'"]),
    ("unknown device", GOOD.replace('device = ["cpu"]', 'device = ["tpu"]'),
     ["axes.device", "auto, cpu, cuda", "'tpu'"]),
    ("empty axis", GOOD.replace("seq_len = [8]", "seq_len = []"), ["axes.seq_len", "at least one value"]),
    ("repeated value", GOOD.replace("seq_len = [8]", "seq_len = [8, 8]"), ["axes.seq_len", "twice"]),
    ("both size axes", GOOD.replace("[axes]", "[axes]\ndepth = [2]"), ["axes", "exactly one of tensor_size", "both"]),
    ("no size axis", GOOD.replace("tensor_size = [1, 2, 4]", ""), ["axes", "exactly one of tensor_size", "neither"]),
    ("unknown implementation", GOOD.replace('"lstm_cudnn"', '"lstm_turbo"'),
     ["implementations", "'lstm_turbo'", "registered:", "tlstm_naive"]),
    ("glob matching nothing", GOOD.replace('"lstm_cudnn"', '"gru_*"'), ["implementations", "'gru_*'", "registered:"]),
    ("bad pair rule", 'pair = "width"\n' + GOOD, ["pair", "depth, params", "'width'"]),
    ("zero repeats", GOOD + "\n[budget]\nrepeats = 0\n", ["budget.repeats", "integer >= 1"]),
    ("unknown budget field", GOOD + "\n[budget]\nrounds = 3\n",
     ["budget.rounds", "allowed", "repeats, min_time_s, warmup"]),
    ("negative timeout", GOOD + "\n[budget]\ntimeout_s = -1\n", ["budget.timeout_s", "number >= 0.1"]),
    ("plugin that does not import", 'plugins = ["no_such_module_xyz"]\n' + GOOD,
     ["plugins", "no_such_module_xyz", "cannot import"]),
    ("mem_conv not a bool", GOOD.replace("[axes]", '[axes]\nmem_conv = ["yes"]'), ["axes.mem_conv", "true or false"]),
    ("unknown norm", GOOD.replace("[axes]", '[axes]\nnorm = ["layer"]'), ["axes.norm", "none, cn", "'layer'"]),
]


@pytest.mark.parametrize("what, text, expected", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_sweep_file_is_refused_with_exit_2(tmp_path, capsys, what, text, expected):
    path = _file(tmp_path, text)
    out = tmp_path / "out"
    assert cli.main(["run", path, "--out", str(out), "--no-report", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert path in err, err  # the file is named
    for part in expected:
        assert part in err, f"{what}: {part!r} not in {err!r}"
    assert not (out / "results.jsonl").exists()  # nothing ran


BAD_COMMANDS = [
    (["--set", "batch"], ["--set", "AXIS=VALUES"]),
    (["--set", "colour=red"], ["colour", "unknown axis or setting", "batch", "repeats"]),
    (["--set", "batch=[1,-2]"], ["--set batch=[1,-2]", "axes.batch", "integer >= 1", "-2"]),
    (["--set", "dtype=float12"], ["axes.dtype", "float32, float64, bfloat16, float16"]),
    (["--set", "implementations=nope"], ["implementations", "'nope'", "registered:"]),
    (["--set", "seq_len="], ["seq_len", "no value"]),
]


@pytest.mark.parametrize("extra, expected", BAD_COMMANDS, ids=[" ".join(b[0]) for b in BAD_COMMANDS])
def test_bad_override_is_refused_with_exit_2(tmp_path, capsys, extra, expected):
    path = _file(tmp_path, GOOD)
    assert cli.main(["run", path, "--out", str(tmp_path / "o"), "--no-report", *extra]) == 2
    err = capsys.readouterr().err
    for part in expected:
        assert part in err, f"{part!r} not in {err!r}"


def test_unknown_sweep_name_lists_the_shipped_ones(capsys):
    assert cli.main(["run", "quik"]) == 2
    err = capsys.readouterr().err
    assert "quik" in err and "SWEEP" in err and "quick" in err and "depth" in err


def test_missing_sweep_file(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_out_dir_with_results_needs_resume_and_resume_needs_results(tmp_path, capsys):
    path = _file(tmp_path, GOOD)
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main(["run", path, "--out", str(out), "--resume"]) == 2
    assert "--resume needs an earlier run there (its sweep.json), found none" in capsys.readouterr().err
    (out / "results.jsonl").write_text("")
    assert cli.main(["run", path, "--out", str(out)]) == 2
    assert "add --resume" in capsys.readouterr().err


def test_bad_value_for_sweep_class_directly():
    with pytest.raises(SweepError) as info:
        Sweep.from_dict({"axes": {"tensor_size": [1], "batch": [True]}}, name="x", source="inline")
    assert str(info.value) == "inline: axes.batch: must be an integer >= 1 and <= 1,048,576, got True (bool)"
    assert set(AXES) >= {"tensor_size", "depth", "seq_len", "batch", "channels", "input_size", "kernel_size",
                         "dtype", "mode", "device"}


def test_console_script_exit_code_is_2(tmp_path):
    """The installed entry point, not just main(): a shell sees exit status 2."""
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--set", "warmup=-1"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "budget.warmup" in done.stderr and "integer >= 0" in done.stderr
