"""Measurement side of tlstm-bench: sweep configs, timing, worker processes, results, the CLI."""
