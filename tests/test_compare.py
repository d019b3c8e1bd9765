"""tlstm-bench compare: quiet on two runs of the same points, exit 1 on an injected slowdown."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bench import cli, contract
from reports.compare import FASTER, SAME, SLOWER, compare

EXAMPLE = Path(__file__).resolve().parent / "data" / "results-schema1.jsonl"


def _copy(tmp_path: Path, name: str, scale: dict[str, float] | None = None, noise: float = 0.0) -> Path:
    """The committed 8-point results file, with every sample of the named implementations scaled."""
    rng = np.random.default_rng(len(name))
    out = tmp_path / name
    out.mkdir()
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        record = json.loads(line)
        factor = (scale or {}).get(record["config"]["impl"], 1.0)
        record["samples_s"] = [v * factor * float(np.exp(rng.normal(0, noise))) for v in record["samples_s"]]
        point = contract.Point.from_dict(record["config"])
        record["metrics"].update(contract.point_timing_metrics(point, record["samples_s"]))
        lines.append(json.dumps(record))
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    return out


def test_same_points_are_same(tmp_path):
    from bench import results

    base, new = _copy(tmp_path, "a", noise=0.02), _copy(tmp_path, "b", noise=0.02)
    table = compare(results.load(base), results.load(new))
    assert len(table) == 8 and set(table["verdict"]) == {SAME}
    assert cli.main(["compare", str(base), str(new)]) == 0


def test_an_injected_slowdown_is_caught_and_fails_the_gate(tmp_path, capsys):
    from bench import results

    base = _copy(tmp_path, "a", noise=0.02)
    slower = _copy(tmp_path, "b", scale={"tlstm_fused": 1.5}, noise=0.02)
    table = compare(results.load(base), results.load(slower))
    caught = table[table["verdict"] == SLOWER]
    assert set(caught["impl"]) == {"tlstm_fused"} and (caught["ratio_lo"] > 1).all()
    assert table.iloc[0]["impl"] == "tlstm_fused"  # worst first
    assert cli.main(["compare", str(base), str(slower)]) == 1
    assert "slower" in capsys.readouterr().out
    # and the other way round, the same points are faster
    assert set(compare(results.load(slower), results.load(base)).query("impl == 'tlstm_fused'")["verdict"]) == {
        FASTER}


def test_a_small_change_within_the_threshold_is_not_a_regression(tmp_path):
    from bench import results

    base = _copy(tmp_path, "a")
    slightly = _copy(tmp_path, "b", scale={"tlstm_fused": 1.03})
    assert SLOWER not in set(compare(results.load(base), results.load(slightly), threshold=0.05)["verdict"])


def test_bad_input_is_refused(tmp_path, capsys):
    base = _copy(tmp_path, "a")
    assert cli.main(["compare", str(base), str(tmp_path / "nowhere")]) == 2
    assert cli.main(["compare", str(base), str(base), "--threshold", "-1"]) == 2
    assert "--threshold must be" in capsys.readouterr().err
    shutil.rmtree(base)


def test_points_match_across_runs_whose_columns_differ_in_type_and_a_failed_point_fails(tmp_path, capsys):
    from bench import results

    base = _copy(tmp_path, "a")
    new = _copy(tmp_path, "b")
    records = [json.loads(line) for line in (new / "results.jsonl").read_text().splitlines()]
    records[0]["status"] = "crashed"
    records[0]["samples_s"], records[0]["metrics"] = [], {}
    (new / "results.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    base_df = results.load(base)
    base_df["tensor_size"] = base_df["tensor_size"].astype(float)  # 2.0 in one run, 2 in the other
    table = compare(base_df, results.load(new))
    assert len(table) == 8 and table.iloc[0]["verdict"] == "failed (crashed)"
    assert cli.main(["compare", str(base), str(new)]) == 1
    assert "1 failed in NEW" in capsys.readouterr().out
