"""The HTML report: sections, embedded figures, no external URLs, PNGs on disk, clear input errors."""

from __future__ import annotations

import base64
import pathlib
import re

import pandas as pd
import pytest

import reports
from reports.data import ReportInputError
from tests.report_synthetic import make_results, pytest_benchmark_like

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _small(**kwargs) -> pd.DataFrame:
    """A small frame with every axis the figures use varying (two values each), failed points included."""
    defaults = dict(depths=(1, 2, 4), batches=(1, 8), seq_lens=(20, 40), noisy_every=5)
    defaults.update(kwargs)
    return make_results(**defaults)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, str]:
    out = tmp_path_factory.mktemp("report") / "quick.html"
    path = reports.build_report(_small(), out)
    return path, path.read_text(encoding="utf-8")


def test_every_section_present(full_report):
    _, text = full_report
    for section in reports.SECTIONS:
        assert f'<section id="{section}">' in text, section
    assert text.index('id="claims"') < text.index('id="figures"'), "claims come before the figures"


def test_every_image_is_embedded_and_written_as_png(full_report):
    path, text = full_report
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    assert len(srcs) == 9, "every figure has data in this frame"
    # the one exception: the synthetic frame has no profiled points, and the section says how to get them
    assert text.count("Not in these results") == 1 and "needs profiled points" in text
    pngs = sorted((path.parent / "quick_figures").glob("*.png"))
    assert len(pngs) == len(srcs)
    on_disk = {p.read_bytes() for p in pngs}
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data.startswith(PNG_MAGIC)
        assert data in on_disk, "the PNG next to the HTML is the figure that is embedded"


def test_no_external_resources(full_report):
    _, text = full_report
    assert not re.search(r'(src|href)\s*=\s*"(?!data:|#)', text), "only data: URIs and in-page anchors"
    assert "http://" not in text and "https://" not in text
    assert "url(" not in text and "@import" not in text
    assert "<script" not in text.lower(), "no JavaScript needed"
    assert "@media print" in text


def test_failed_points_listed_with_status_and_escaped_message(full_report):
    _, text = full_report
    failures = text[text.index('<section id="failures">'):text.index('<section id="environment">')]
    for status in ("oom", "crashed", "timeout", "incorrect", "unavailable"):
        assert f"<td>{status}</td>" in failures
    assert "&lt;vs tlstm_naive&gt;" in failures and "<vs tlstm_naive>" not in text


def test_context_sections(full_report):
    _, text = full_report
    assert "tlstm-bench run synthetic --out /tmp/synthetic" in text  # the reproducing command
    assert "Synthetic Xeon" in text and "0123abc" in text  # environment: device and commit
    assert 'class="noisy"' in text  # the noise flag is shown in the summary
    summary = text[text.index('<section id="summary">'):text.index('<section id="speedups">')]
    assert "tlstm_fused" in summary and "lstm_cudnn" in summary


def test_absent_data_gives_a_line_naming_the_sweep_not_an_empty_figure(tmp_path):
    df = make_results(depths=(4,), batches=(1,), seq_lens=(20,), modes=("training",), failed=False)
    text = reports.build_report(df, tmp_path / "r.html").read_text()
    assert "run `tlstm-bench run depth`" in text  # time vs depth, memory vs depth, GFLOP/s
    figures = reports.build_figures(reports.normalize(df))
    drawn = [f for f in figures if f.png is not None]
    missing = [f for f in figures if f.png is None]
    assert {f.slug for f in missing} >= {"time_vs_depth", "time_vs_seq_len", "wider"}
    assert all(f.missing and "tlstm-bench run" in f.missing for f in missing)
    assert text.count("<img") == len(drawn)
    assert len(list((tmp_path / "r_figures").glob("*.png"))) == len(drawn)


def test_only_ok_points_are_plotted(tmp_path):
    df = _small()
    df["status"] = "timeout"
    figures = reports.build_figures(reports.normalize(df))
    assert all(f.png is None for f in figures)
    text = reports.build_report(df, tmp_path / "r.html").read_text()
    assert "<img" not in text


def test_pytest_benchmark_frame_without_sweep_or_metrics(tmp_path):
    df = pytest_benchmark_like(make_results(depths=(1, 2), batches=(1,), modes=("training",)))
    text = reports.build_report(df, tmp_path / "bench.html").read_text()
    for section in reports.SECTIONS:
        assert f'<section id="{section}">' in text
    assert "reproducing command was not recorded" in text
    assert "time per timestep" in text  # times are still plotted from time_median_s / seq_len
    assert re.search(r"Wider</b></td><td[^>]*>not measured", text)


def test_rebuild_removes_stale_pngs(tmp_path):
    out = tmp_path / "r.html"
    reports.build_report(make_results(depths=(1, 2), batches=(1,), modes=("training",), failed=False), out)
    before = len(list((tmp_path / "r_figures").glob("*.png")))
    reports.build_report(make_results(depths=(2,), batches=(1,), seq_lens=(20,), failed=False), out)
    after = len(list((tmp_path / "r_figures").glob("*.png")))
    assert after < before


def test_out_may_be_a_directory(tmp_path):
    path = reports.build_report(make_results(depths=(1,), batches=(1,), failed=False), tmp_path)
    assert path == tmp_path / "report.html" and path.exists()


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda df: df.drop(columns=["status"]), "status"),
        (lambda df: df.drop(columns=["impl"]), "impl"),
        (lambda df: df.assign(status="done"), "status"),
        (lambda df: df.assign(mode="eval"), "mode"),
        (lambda df: df.assign(family="gru"), "family"),
        (lambda df: df.assign(device="tpu"), "device"),
    ],
)
def test_bad_frame_is_refused_naming_the_field(tmp_path, mutate, field):
    df = mutate(make_results(depths=(1,), batches=(1,), failed=False))
    with pytest.raises(ReportInputError, match=f"'?{field}'?") as info:
        reports.build_report(df, tmp_path / "r.html")
    assert field in str(info.value)
    if field == "status" and "done" in str(info.value):
        assert "allowed: ok, incorrect, diverged, oom" in str(info.value)


def test_bad_out_and_bad_df_are_refused(tmp_path):
    with pytest.raises(ReportInputError, match="out must end in .html"):
        reports.build_report(make_results(depths=(1,), batches=(1,)), tmp_path / "report.txt")
    with pytest.raises(ReportInputError, match="df must be a pandas.DataFrame"):
        reports.build_report([{"impl": "x"}], tmp_path / "r.html")  # type: ignore[arg-type]


def test_matmul_reference_rate_from_a_number_or_a_per_device_dict():
    from reports.figures import matmul_rate

    assert matmul_rate(250.0, "cpu", "float32") == 250.0
    recorded = {"cpu:float32": 66.9, "cpu:bfloat16": 900.0}
    assert matmul_rate(recorded, "cpu", "bfloat16") == 900.0
    assert matmul_rate(recorded, "cuda", "float32") is None
    assert matmul_rate(recorded, "cpu", None) is None  # ambiguous without a dtype
    assert matmul_rate({"cpu:float32": 66.9}, "cpu", None) == 66.9
    assert matmul_rate(None, "cpu", "float32") is None


def test_gflops_figure_draws_the_recorded_rate(tmp_path):
    df = make_results(depths=(1, 2), batches=(1,), modes=("training",), failed=False)
    df.attrs["env"] = dict(df.attrs["env"], matmul_gflops={"cpu:float32": 66.9})
    text = reports.build_report(df, tmp_path / "r.html").read_text()
    figure = text[text.index('id="fig-gflops"'):]
    assert "<img" in figure.split("<h3")[0] and "recorded no matmul_gflops" not in figure
    df.attrs["env"] = dict(df.attrs["env"], matmul_gflops=None)
    text = reports.build_report(df, tmp_path / "r2.html").read_text()
    assert "recorded no matmul_gflops" in text


def test_empty_results_build_a_report_that_says_so(tmp_path):
    df = pd.DataFrame(columns=["impl", "status"])
    text = reports.build_report(df, tmp_path / "r.html").read_text()
    for section in reports.SECTIONS:
        assert f'<section id="{section}">' in text
    assert "<img" not in text and text.count("Not in these results") == 10  # 8 figures, headline, time split
    assert all(c.verdict == "not measured" for c in reports.judge_claims(reports.normalize(df)))


def test_points_whose_processes_disagree_are_flagged_in_the_summary(tmp_path):
    df = make_results(depths=(1, 2), batches=(1,), modes=("training",), failed=False)
    df["process_spread"] = 0.02
    df["processes_disagree"] = False
    df.loc[0, ["process_spread", "processes_disagree"]] = [0.4, True]
    text = reports.build_report(df, tmp_path / "r.html").read_text()
    summary = text[text.index('<section id="summary">'):text.index('<section id="speedups">')]
    assert summary.count("processes disagree (40%)") == 1
