"""Turns results files into tables, plots and a self-contained HTML report."""
