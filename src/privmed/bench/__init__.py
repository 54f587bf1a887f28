"""Benchmark harness (``privmed bench paper``): trains, evaluates, audits and reports through the
same commands a user runs. Sits above ``pipeline`` and ``evaluation``; nothing below imports it."""
