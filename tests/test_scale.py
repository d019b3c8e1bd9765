"""The suite at scale: the compact results encoding (schema 4), the bootstrap that resamples many points at
once, incremental merging of cluster shards, and the synthetic results generator.

Nothing here times anything: ``python -m bench.scale`` measures load, report and merge on large files.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import cluster, contract, results, synthetic
from bench.contract import SCHEMA_VERSION
from reports import stats

EXAMPLES = Path(__file__).resolve().parent.parent / "reports" / "examples"


def _old_bootstrap(samples, processes, replicates, rng):
    """The resampling the suite used before schema 4, kept as the reference: every draw materialized."""
    values = np.asarray(samples, dtype=float)
    ids = np.zeros(values.size, dtype=int) if processes is None else np.asarray(processes)
    groups = [values[ids == p] for p in np.unique(ids)]
    if len(groups) == 1:
        draws = rng.integers(0, values.size, size=(replicates, values.size))
        return np.median(values[draws], axis=1)
    per_group = max(len(g) for g in groups)
    chosen = rng.integers(0, len(groups), size=(replicates, len(groups)))
    pooled = np.empty((replicates, len(groups) * per_group))
    for slot in range(len(groups)):
        for g, group in enumerate(groups):
            rows = np.flatnonzero(chosen[:, slot] == g)
            if rows.size:
                pooled[rows, slot * per_group:(slot + 1) * per_group] = rng.choice(group, size=(rows.size, per_group))
    return np.median(pooled, axis=1)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov distance."""
    grid = np.union1d(a, b)
    fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
    fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


def _example_points(limit: int = 12):
    """(samples, processes) of multi-process points of the committed variants example."""
    df = results.load(EXAMPLES / "cpu-variants")
    df = df[df["samples_s"].map(len) > 0]
    picks = df.iloc[np.linspace(0, len(df) - 1, limit).astype(int)]
    return [(row["samples_s"], row["sample_processes"]) for _, row in picks.iterrows()]


def test_the_exact_bootstrap_draws_the_same_distribution_as_the_materialized_one():
    replicates = 4000  # per method: a KS distance above 0.06 would be a real difference (p < 0.001)
    points = _example_points()
    cases = points + [(points[0][0], None),  # one process
                      (np.arange(1.0, 8.0), np.array([0, 0, 0, 1, 1, 2, 2])),  # uneven groups, few samples
                      (np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.0]), None)]  # ties, an even count
    new = stats.bootstrap_medians_many([c[0] for c in cases], [c[1] for c in cases], replicates=replicates,
                                       rng=np.random.default_rng(1))
    for (samples, processes), mine in zip(cases, new):
        old = _old_bootstrap(samples, processes, replicates, np.random.default_rng(2))
        assert _ks(mine, old) < 0.06, (len(samples), _ks(mine, old))
        lo_old, hi_old = np.percentile(old, [2.5, 97.5])
        lo_new, hi_new = np.percentile(mine, [2.5, 97.5])
        width = max(hi_old - lo_old, 1e-12)
        assert abs(lo_new - lo_old) < 0.2 * width + 1e-12 and abs(hi_new - hi_old) < 0.2 * width + 1e-12
        assert set(np.unique(mine)) <= set(np.unique((np.add.outer(samples, samples) / 2).ravel()))


def test_the_bootstrap_is_seeded_and_keeps_points_without_samples_apart():
    samples = [np.array([3.0, 1.0, 2.0]), np.array([]), np.array([5.0, 4.0])]
    a = stats.bootstrap_medians_many(samples, [None] * 3, replicates=50, rng=np.random.default_rng(7))
    b = stats.bootstrap_medians_many(samples, [None] * 3, replicates=50, rng=np.random.default_rng(7))
    assert np.array_equal(a, b, equal_nan=True) and a.shape == (3, 50)
    assert np.isnan(a[1]).all() and ((a[0] >= 1) & (a[0] <= 3)).all() and ((a[2] >= 4) & (a[2] <= 5)).all()
    one = stats.bootstrap_medians([2.0], rng=np.random.default_rng(0), replicates=10)
    assert (one == 2.0).all()


def _record(index: int, samples, env=None, process: int = 0):
    point = contract.Point.from_dict({**synthetic._base_points()[0][0].as_dict(), "seq_len": 100 + index})
    return contract.make_record(point, status="ok", message="", samples_s=samples,
                                metrics=contract.point_timing_metrics(point, samples), env=env or {"host": "a"},
                                sweep="quick", index=index, started_at=None, process=process)


def test_a_line_keeps_its_samples_as_float32_and_its_environment_once(tmp_path):
    samples = [1e-4 * (1 + i / 7) for i in range(300)]
    results.append(tmp_path, _record(0, samples), _record(1, samples))
    results.append(tmp_path, _record(2, samples, env={"host": "b"}))
    lines = [json.loads(line) for line in (tmp_path / results.RESULTS_FILE).read_text().splitlines()]
    assert [("env" in line, line.get("env_id") is not None) for line in lines] == [
        (True, True), (False, True), (False, True), (True, True), (False, True)]  # one env line per environment
    record_line = lines[1]
    assert record_line["schema"] == SCHEMA_VERSION and "samples_s" not in record_line
    assert record_line["config"]["seq_len"] == 100 and record_line["metrics"]["time_median_s"] > 0  # plain JSON
    assert len((tmp_path / results.RESULTS_FILE).read_text().splitlines()[1]) < 3000  # 300 samples, ~1.6 KB of them
    records = results.read_records(tmp_path)
    assert [r["env"] for r in records] == [{"host": "a"}, {"host": "a"}, {"host": "b"}]
    assert np.array_equal(records[0]["samples_s"], np.asarray(samples, dtype=np.float32).astype(float))
    df = results.load(tmp_path)
    assert len(df) == 3 and df["time_median_s"].notna().all()
    assert results.measurement_ids(tmp_path) == {(r["key"], 0) for r in records}


def test_a_record_without_its_environment_line_loads_with_a_warning(tmp_path):
    results.append(tmp_path, _record(0, [0.001, 0.002]))
    path = tmp_path / results.RESULTS_FILE
    path.write_text(path.read_text().splitlines()[1] + "\n")  # the environment line lost
    with pytest.warns(results.ResultsWarning, match="no environment line"):
        records = results.read_records(tmp_path)
    assert len(records) == 1 and records[0]["env"] == {}


def test_bad_samples_in_a_line_are_skipped_with_the_reason(tmp_path):
    results.append(tmp_path, _record(0, [0.001, 0.002]), _record(1, [0.001]))
    path = tmp_path / results.RESULTS_FILE
    lines = path.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["samples_f32"] = "not base64!"
    nan = json.loads(lines[1])
    nan["samples_f32"] = base64.b64encode(np.array([np.nan], dtype="<f4").tobytes()).decode()  # the writer refuses
    path.write_text("\n".join([lines[0], json.dumps(nan), json.dumps(bad)]) + "\n")
    with pytest.warns(results.ResultsWarning) as caught:
        assert results.read_records(tmp_path) == []
    text = " ".join(str(w.message) for w in caught)
    assert "line 2 skipped" in text and "not a time" in text and "line 3 skipped" in text and "samples" in text


def test_old_schema_lines_and_new_ones_load_together(tmp_path):
    shutil.copy(EXAMPLES / "cpu-quick" / "results.jsonl", tmp_path / "results.jsonl")  # schema 3, as committed
    old = results.load(tmp_path)
    record = _record(9999, [0.3, 0.1, 0.2])
    results.append(tmp_path, record)
    both = results.load(tmp_path)
    assert len(both) == len(old) + 1 and (both["schema"] == SCHEMA_VERSION).all()
    assert both.iloc[-1]["time_median_s"] == pytest.approx(0.2)
    assert both.attrs["env"] == old.attrs["env"] and len(both.attrs["envs"]) == 2


def test_merging_shards_reads_only_what_is_new_and_never_duplicates(tmp_path):
    out = tmp_path / "run"
    synthetic.write(out, 60, shards=4)
    (out / results.RESULTS_FILE).unlink(missing_ok=True)
    assert cluster.merge_shards(out) == 60
    offsets = json.loads((out / "shards" / cluster.MERGED_FILE).read_text())
    assert sorted(offsets) == ["job-000", "job-001", "job-002", "job-003"]
    assert cluster.merge_shards(out) == 0  # nothing new
    shard = out / "shards" / "job-001"
    extra = _record(500, [0.01, 0.02], env=synthetic.ENV)  # its environment line is in the part merged before
    results.append(shard, extra)
    assert cluster.merge_shards(out) == 1
    merged = {r["key"]: r for r in results.read_records(out)}[extra["key"]]
    assert merged["env"] == synthetic.ENV
    # a merge killed after appending but before saving its offsets reads those bytes again: nothing doubles
    (out / "shards" / cluster.MERGED_FILE).unlink()
    assert cluster.merge_shards(out) == 0
    ids = [contract.measurement_id(r) for r in results.read_records(out)]
    assert len(ids) == len(set(ids)) == 61
    # a shard cut short (a torn line removed) is read again from its start
    (shard / results.RESULTS_FILE).write_bytes((shard / results.RESULTS_FILE).read_bytes()[:10])
    assert cluster.merge_shards(out) == 0


def test_the_synthetic_generator_writes_loadable_lines_of_the_shipped_shapes(tmp_path):
    paths = synthetic.write(tmp_path / "new", 30)
    legacy = synthetic.write(tmp_path / "old", 30, legacy=True)
    new, old = results.load(paths[0].parent), results.load(legacy[0].parent)
    assert len(new) == len(old) == 10 and (new["processes"] == 3).all()
    assert json.loads(legacy[0].read_text().splitlines()[0])["schema"] == 3
    assert np.allclose(new["time_median_s"], old["time_median_s"], rtol=1e-6)
    assert paths[0].stat().st_size < legacy[0].stat().st_size / 2
    assert synthetic.main([str(7), str(tmp_path / "cli"), "--processes", "2"]) == 0
    assert len(results.read_records(tmp_path / "cli")) == 7


def test_an_unreadable_merged_line_is_not_a_measurement_and_a_good_copy_replaces_it(tmp_path):
    out = tmp_path / "run"
    synthetic.write(out, 30, shards=5)
    assert cluster.merge_shards(out) == 30
    path = out / results.RESULTS_FILE
    lines = path.read_text().splitlines()
    damaged = json.loads(lines[1])
    damaged["samples_f32"] = "!!!"
    lines[1] = json.dumps(damaged)
    path.write_text("\n".join(lines) + "\n")
    results._INDEX.clear()
    assert (damaged["key"], damaged["process"]) not in results.measurement_ids(out)
    (out / "shards" / cluster.MERGED_FILE).unlink()
    assert cluster.merge_shards(out) == 1
    with pytest.warns(results.ResultsWarning, match="line 2 skipped"):
        assert len(results.read_records(out)) == 30


def test_environment_lines_load_in_any_layout(tmp_path):
    results.append(tmp_path, _record(0, [0.001, 0.002], env={"hostname": "h", "cpu_model": "c"}))
    path = tmp_path / results.RESULTS_FILE
    # what `jq -c .` makes of the file: no spaces, and keys in another order
    compact = [json.dumps(dict(reversed(json.loads(line).items())), separators=(",", ":"))
               for line in path.read_text().splitlines()]
    path.write_text("\n".join(compact) + "\n")
    assert results.read_records(tmp_path)[0]["env"] == {"hostname": "h", "cpu_model": "c"}
    assert results.load(tmp_path).attrs["env"]["hostname"] == "h"


def test_a_shard_replaced_by_another_file_is_read_from_its_start(tmp_path):
    out = tmp_path / "run"
    synthetic.write(out, 30, shards=5)
    assert cluster.merge_shards(out) == 30
    shard = out / "shards" / "job-001" / results.RESULTS_FILE
    shard.unlink()
    assert cluster.merge_shards(out) == 0
    others = list(synthetic.synthetic_records(60, seed=7))[30:]  # other points, as long a file or longer
    results.append(shard, *others)
    assert cluster.merge_shards(out) == 30


@pytest.mark.parametrize("state", ['{"job-000": -5}', '{"job-000": [1e999, "x"]}', '{"job-000": [3, 7]}',
                                   '{"job-000": [true, "x"]}', "[1]", "not json"])
def test_a_damaged_merge_state_reads_the_shards_again_without_doubling(tmp_path, state):
    out = tmp_path / "run"
    synthetic.write(out, 12, shards=2)
    assert cluster.merge_shards(out) == 12
    (out / "shards" / cluster.MERGED_FILE).write_text(state)
    assert cluster.merge_shards(out) == 0
    assert len(results.read_records(out)) == 12


def test_appending_after_a_torn_line_cuts_it_first(tmp_path):
    results.append(tmp_path, _record(0, [0.001]))
    with open(tmp_path / results.RESULTS_FILE, "a") as f:
        f.write('{"schema": 4, "key": "half')
    results.append(tmp_path, _record(1, [0.002], env={"hostname": "b"}))
    records = results.read_records(tmp_path)
    assert [r["index"] for r in records] == [0, 1] and records[1]["env"] == {"hostname": "b"}


def test_the_writer_refuses_samples_no_reader_would_take(tmp_path):
    for bad in ([float("nan")], [1e-50], [0.001, float("inf")]):
        with pytest.raises(ValueError, match="finite times"):
            results.append(tmp_path, {**_record(0, [0.001]), "samples_s": bad})
    assert not (tmp_path / results.RESULTS_FILE).exists() or results.read_records(tmp_path) == []


def test_huge_numbers_are_named_not_a_traceback(tmp_path):
    record = _record(0, [0.001, 0.002])
    lines = [json.dumps({**record, "schema": 3, "process": 10**400}),
             json.dumps({**record, "schema": 3, "samples_s": [10**400]}),
             json.dumps({**record, "schema": 3, "metrics": {"time_median_s": 10**400}})]
    (tmp_path / results.RESULTS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.warns(results.ResultsWarning) as caught:
        assert results.read_records(tmp_path) == []
    text = " ".join(str(w.message) for w in caught)
    assert "line 1 skipped: 'process'" in text and "line 2 skipped" in text and "line 3 skipped" in text
