"""The results contract (bench.contract): points, their keys, the schema version, old files, and the one
function that turns raw samples into timing metrics."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench import contract, results
from bench.contract import COLUMNS, CONFIG_FIELDS, SCHEMA_VERSION, ContractError, Point, timing_metrics

DATA = Path(__file__).parent / "data"
POINT = Point(impl="tlstm_naive", family="tlstm", tensor_size=4, depth=4, seq_len=10, batch=2, channels=8,
              input_size=5, kernel_size=3, mem_conv=True, norm=None, dtype="float32", mode="training", device="cpu",
              repeats=5, warmup=1, seed=0)


def _old_results(tmp_path: Path) -> Path:
    """A results file written by the suite before the schema had a version (8 points of the quick sweep)."""
    shutil.copy(DATA / "results-schema1.jsonl", tmp_path / "results.jsonl")
    shutil.copy(DATA / "sweep-schema1.json", tmp_path / "sweep.json")
    return tmp_path


def test_a_results_file_of_the_first_schema_still_loads(tmp_path):
    records = [json.loads(line) for line in (DATA / "results-schema1.jsonl").read_text().splitlines()]
    assert all("schema" not in r and "hidden_size" in r["metrics"] for r in records)  # really the old schema
    df = results.load(_old_results(tmp_path))
    assert list(df.columns) == list(COLUMNS) and len(df) == len(records)
    assert (df["schema"] == SCHEMA_VERSION).all() and df.attrs["sweep"]["name"] == "quick"
    for record, (_, row) in zip(records, df.iterrows()):
        point = Point.from_dict(record["config"])
        assert row["key"] == record["key"] == point.key  # keys unchanged: --resume of an old run still skips
        old = record["metrics"]
        assert row["hidden_units"] == old["hidden_size"] == point.hidden_units
        assert row["time_median_s"] == old["time_median_s"] and row["time_per_step_s"] == old["time_per_step_s"]
        steps = point.seq_len + point.depth - 1 if point.family == "tlstm" else point.seq_len
        assert row["time_per_recurrent_step_s"] == pytest.approx(old["time_median_s"] / steps)
        assert row["time_per_step_q1_s"] == pytest.approx(old["time_q1_s"] / point.seq_len)


def test_a_resumed_old_run_appends_current_records_and_loads_both(tmp_path):
    out = _old_results(tmp_path)
    record = contract.make_record(POINT, status="ok", message="", samples_s=[0.3, 0.1, 0.2], metrics={"params": 1},
                                  env={}, sweep="quick", index=99, started_at=None)
    results.append(out, record)
    df = results.load(out)
    assert len(df) == 9 and (df["schema"] == SCHEMA_VERSION).all()
    assert list(df.iloc[-1]["samples_s"]) == pytest.approx([0.3, 0.1, 0.2])  # kept as float32


def test_every_record_field_is_written():
    record = contract.make_record(POINT, status="timeout", message="m", samples_s=[], metrics={}, env={"a": 1},
                                  sweep="s", index=0, started_at="t")
    assert tuple(record) == contract.RECORD_FIELDS and record["schema"] == SCHEMA_VERSION
    with pytest.raises(ContractError, match="status must be one of ok, incorrect, diverged, oom, crashed, timeout"):
        contract.make_record(POINT, status="slow", message="", samples_s=[], metrics={}, env={}, sweep="s", index=0,
                             started_at=None)


def test_a_newer_schema_is_refused_by_name():
    with pytest.raises(ContractError, match=f"results schema 99 is unknown; this version reads schemas 1 to "
                                            f"{SCHEMA_VERSION}"):
        contract.upgrade({"schema": 99})


def test_point_round_trip_and_key():
    assert Point.from_dict(POINT.as_dict()) == POINT
    assert tuple(POINT.as_dict()) == CONFIG_FIELDS
    assert Point.from_dict(dict(reversed(list(POINT.as_dict().items())))).key == POINT.key
    assert replace(POINT, batch=3).key != POINT.key
    with pytest.raises(ContractError, match="missing seed"):
        Point.from_dict({k: v for k, v in POINT.as_dict().items() if k != "seed"})
    with pytest.raises(ContractError, match="unknown colour"):
        Point.from_dict({**POINT.as_dict(), "colour": "red"})
    assert POINT.model_config().layers == 4 and POINT.recurrent_steps == 13 and POINT.hidden_units == 32
    lstm = replace(POINT, impl="lstm_cudnn", family="lstm", tensor_size=None)
    assert lstm.model_config().depth == 4 and lstm.recurrent_steps == 10 and lstm.hidden_units == 32


def test_timing_metrics_from_samples():
    samples = [0.4, 0.1, 0.2, 0.3, 0.25]
    m = timing_metrics(samples, seq_len=10, recurrent_steps=13, batch=2, flops=1e9)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])  # numpy's linear method: the contract's
    assert (m["time_q1_s"], m["time_median_s"], m["time_q3_s"]) == pytest.approx((q1, median, q3))
    assert m["time_iqr_s"] == pytest.approx(q3 - q1) and m["noisy"] is True
    assert m["time_per_step_s"] == pytest.approx(median / 10) and m["time_per_recurrent_step_s"] == pytest.approx(
        median / 13)
    assert (m["time_per_step_q1_s"], m["time_per_step_q3_s"]) == pytest.approx((q1 / 10, q3 / 10))
    assert m["throughput_tokens_s"] == pytest.approx(20 / median) and m["gflops"] == pytest.approx(1 / median)
    assert set(m) == set(contract.TIMING_FIELDS)
    quiet = timing_metrics([1.0, 1.01, 0.99], seq_len=1, recurrent_steps=1, batch=1, flops=None)
    assert quiet["noisy"] is False and quiet["gflops"] is None
    # no samples: the quartiles stand in; neither: nothing
    stand_in = timing_metrics([], seq_len=10, recurrent_steps=10, batch=1, flops=None, quartiles=(0.2, 0.1, 0.3))
    assert stand_in["time_median_s"] == 0.2 and stand_in["time_iqr_s"] == pytest.approx(0.2)
    assert timing_metrics([], seq_len=10, recurrent_steps=10, batch=1, flops=None) == {}


def test_format_seconds():
    assert [contract.format_seconds(v) for v in (2.5, 0.0123, 4.56e-5, 7e-9, None, float("nan"))] == [
        "2.5 s", "12.3 ms", "45.6 µs", "7 ns", "n/a", "n/a"]


def _row(process: int, status: str = "ok", samples=(0.1, 0.2, 0.3)) -> dict:
    record = contract.make_record(POINT, status=status, message="m" if status != "ok" else "", samples_s=list(samples),
                                  metrics={"params": 7}, env={}, sweep="s", index=0, started_at=None, process=process)
    return contract.record_row(record)


def test_merge_rows_pools_the_samples_of_every_process():
    merged = contract.merge_rows([_row(0), _row(1, samples=(0.2, 0.3, 0.4)), _row(2, samples=(0.3, 0.4, 0.5))])
    assert merged["status"] == "ok" and list(merged["sample_processes"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert merged["time_median_s"] == pytest.approx(0.3) and merged["processes"] == 3
    assert merged["process_spread"] == pytest.approx((0.4 - 0.2) / 0.3) and merged["processes_disagree"] is True
    assert merged["params"] == 7


def test_merge_rows_reports_a_failed_process():
    merged = contract.merge_rows([_row(0), _row(1, status="timeout", samples=())])
    assert merged["status"] == "timeout" and merged["message"] == "process 1: m"
    assert list(merged["samples_s"]) == [0.1, 0.2, 0.3]
