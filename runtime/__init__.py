"""runtime: the Algorithm 3 cascade over per-stage engines, CUDA graphs, and `msf-run`."""
