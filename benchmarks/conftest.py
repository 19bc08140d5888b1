"""Benchmarks print the MSF/DiT ratios they measured once, at the end of the run."""
import os

import torch

torch.set_num_threads(int(os.environ.get("MSF_BENCH_THREADS", os.cpu_count() or 1)))


def pytest_terminal_summary(terminalreporter):
    from benchmarks.ratios import RESULTS

    lines = []
    try:
        from benchmarks.test_bench_paper import paper_ratios

        lines += paper_ratios()
    except ImportError:
        pass
    try:
        from benchmarks.test_bench_export import demo_ratios

        lines += demo_ratios()
    except ImportError:
        pass
    if lines:
        terminalreporter.section("MSF vs DiT (measured side by side in this run)")
        for line in lines:
            terminalreporter.write_line(line)
    elif RESULTS:
        terminalreporter.write_line(f"benchmarks recorded {sum(len(v) for v in RESULTS.values())} results, no complete MSF/DiT pair")
