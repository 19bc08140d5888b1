"""Compare two pytest-benchmark JSON files (`--benchmark-json`) so that a regression shows.

    pytest benchmarks/ --benchmark-only --benchmark-json .benchmarks/new.json
    python benchmarks/compare.py .benchmarks/old.json .benchmarks/new.json [--threshold 0.10]

Prints one line per benchmark present in both (median old -> new, ratio) and exits 1 when any
median grew by more than the threshold (default 10%); benchmarks in only one file are listed.
"""
from __future__ import annotations

import argparse
import json
import sys


def medians(path: str) -> tuple[dict[str, float], dict]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: cannot read {path}: {e}")
    if "benchmarks" not in data:
        sys.exit(f"error: {path} is not a pytest-benchmark JSON file (no 'benchmarks' key)")
    return {b["fullname"]: b["stats"]["median"] for b in data["benchmarks"]}, data.get("machine_info", {})


def compare(old: dict[str, float], new: dict[str, float], threshold: float) -> tuple[list[str], bool]:
    lines, regressed = [], False
    for name in sorted(old.keys() & new.keys()):
        r = new[name] / old[name] if old[name] > 0 else float("inf")
        flag = ""
        if r > 1 + threshold:
            flag, regressed = "  REGRESSION", True
        elif r < 1 - threshold:
            flag = "  faster"
        lines.append(f"{r:6.2f}x  {old[name]:10.4f} s -> {new[name]:10.4f} s  {name}{flag}")
    for name in sorted(old.keys() - new.keys()):
        lines.append(f"  only in old: {name}")
    for name in sorted(new.keys() - old.keys()):
        lines.append(f"  only in new: {name}")
    return lines, regressed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--threshold", type=float, default=0.10, help="relative growth of a median that fails")
    a = ap.parse_args(argv)
    (old, m_old), (new, m_new) = medians(a.old), medians(a.new)
    if m_old.get("cpu", {}).get("brand_raw") != m_new.get("cpu", {}).get("brand_raw"):
        print("note: the two files come from different CPUs; ratios compare machines, not code")
    lines, regressed = compare(old, new, a.threshold)
    print("\n".join(lines))
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
