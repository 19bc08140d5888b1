"""Generic helpers of the training side (devices, autocast, progress bars, JSON-lines logs, seeds,
DataLoader workers, stopping on a signal), in one leaf module so that train.py, cache.py and the VAE
trainer need not import each other for them. Nothing here knows about models, caches or VAEs."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from msf_train.errors import MsfError


def resolve_device(name: str | None = "auto", local_rank: int = 0) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MsfError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise MsfError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
        return torch.device("cuda", local_rank) if dev.index is None else dev
    if name != "cpu":
        raise MsfError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def progress(total: int, initial: int = 0, enabled: bool = True, **kw):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, mininterval=1.0,
                file=sys.stderr, **kw)


class JsonlLog:
    """Append-only JSON lines. `truncate_after=S` first drops records with step > S (a resumed run
    rewrites what the killed run logged after its checkpoint); -1 starts a new log."""

    def __init__(self, path, truncate_after: int | None = None):
        from msf_train.checkpoint import atomic_write_bytes

        self.path = Path(path)
        self.last: dict = {}
        if truncate_after is not None and self.path.exists():
            keep = []
            if truncate_after >= 0:
                for line in self.path.read_text().splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill
                    if isinstance(rec, dict) and isinstance(rec.get("step", 0), int) and rec.get("step", 0) <= truncate_after:
                        keep.append(line)
            atomic_write_bytes(self.path, "".join(l + "\n" for l in keep).encode())

    def write(self, record: dict) -> None:
        self.last = record
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def step_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (numpy SeedSequence), e.g. (seed, rank, step)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def default_workers() -> int:
    """DataLoader workers for rendering/decoding images: leave a core for the main process."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(12, n - 1))


class Interrupted(MsfError):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint; exit code 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """SIGINT and SIGTERM set a flag instead of killing the run: the loop finishes its step, saves a
    checkpoint and raises `Interrupted`. A second signal more than DUPLICATE_S after the first acts as
    usual (the old handler is restored and the signal sent again). One closer to the first is the same
    stop arriving twice: `kill -TERM -PGID` (timeout, Slurm) reaches this process directly and through
    the supervisor that forwards its own SIGTERM (cliutil.supervise), in either order; taking the
    second as "stop now" made such a kill die without its checkpoint, now and then."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    DUPLICATE_S = 2.0

    def __init__(self):
        self.signum: int | None = None
        self._at = 0.0
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum, self._at = signum, time.monotonic()
            return
        if time.monotonic() - self._at < self.DUPLICATE_S:
            return
        self._restore()
        os.kill(os.getpid(), signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        self._restore()

    def _restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def requested(self, dist, at_log: bool, device) -> bool:
        """One process: at once. Several: at log intervals, all together (any rank's signal stops all)."""
        if dist.world == 1:
            return self.signum is not None
        if not at_log:
            return False
        flag = torch.tensor([float(self.signum is not None)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
