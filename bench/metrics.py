"""The one table of metrics: every value a results line's ``metrics`` may hold, with its kind.

A new metric is one entry in ``METRICS`` and the code that measures it (``bench.measure`` for a timed
point, ``bench.train`` for a training run); the results loader, the loaded frame's columns (numeric kinds
as floats) and the pytest-benchmark file all take it from here. Nothing here imports torch.
"""

from __future__ import annotations

# Timing metrics: computed by timing_metrics() from the raw samples, nowhere else.
TIMING_FIELDS = (
    "time_median_s", "time_q1_s", "time_q3_s", "time_iqr_s", "noisy",
    "time_per_step_s", "time_per_step_q1_s", "time_per_step_q3_s", "time_per_recurrent_step_s",
    "throughput_tokens_s", "gflops", "processes", "process_spread", "processes_disagree",
)  # fmt: skip
# Every metric a results line may hold, with its kind: "number" (a numeric column of the loaded frame),
# "flag", "text" or "data" (a list or an object). A new metric is one entry here and the code that
# measures it (bench.measure or bench.train); the loader, the frame and pytest-benchmark's file take it
# from here. A training point's ``curve``: one entry per evaluation, {"samples", "loss", "symbol_acc",
# "sequence_acc", "wall_s"}; wall_s counts training time only, not the evaluations.
METRICS: dict[str, str] = {
    "params": "number", "hidden_units": "number", "backend": "text",
    **{name: "flag" if name == "noisy" else "number" for name in TIMING_FIELDS},
    "flops": "number", "peak_mem_bytes": "number", "saved_bytes": "number", "rss_peak_bytes": "number",
    "rss_delta_bytes": "number", "energy_j": "number", "energy_note": "text", "max_abs_err": "number",
    "profile": "data",
    # a training point's (bench.train)
    "core_params": "number", "head_params": "number", "solved": "flag", "samples_to_solve": "number",
    "time_to_solve_s": "number", "samples_seen": "number", "train_time_s": "number", "step_time_s": "number",
    "final_loss": "number", "final_symbol_acc": "number", "final_sequence_acc": "number",
    "best_symbol_acc": "number", "stop_reason": "text", "resumed": "number", "curve": "data",
    "side_by_side": "number",  # training runs at once in this sweep (budget.workers), this one included
}  # fmt: skip
