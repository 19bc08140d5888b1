"""A registry the benchmark files fill with medians, so the MSF/DiT ratios print once at the end of
`pytest benchmarks/ --benchmark-only` (see benchmarks/conftest.py)."""
from __future__ import annotations

RESULTS: dict[tuple[str, str], dict[str, dict]] = {}


def record(suite: str, backend: str, name: str, sec: float, **extra) -> None:
    RESULTS.setdefault((suite, backend), {})[name] = {"sec": sec, **extra}
