"""Output folders: nothing a user wrote is overwritten without --force, and one writer at a time.

The rule (the one msf-export has always used, docs/RELIABILITY.md): a command may write into
    - a folder that does not exist or is empty, or
    - an earlier output of the same command for the same inputs (to resume or replace it);
anything else (a user's files, another command's output, this command's output for other inputs)
is refused in one line unless --force is given.

Every output folder carries `.msf-output.json` (which command wrote it, a fingerprint of its inputs,
whether it finished) and, while a command writes it, an advisory `fcntl` lock on `.msf-lock`, which
holds the writer's PID: a second writer is refused in one line naming it. The kernel drops the lock
when the process dies (kill -9 included), so a stale lock file never blocks anyone.

If the command fails, a folder it created is removed again unless `keep(folder)` says it holds
work worth resuming (a training checkpoint); an existing folder keeps what it had (all writes are
atomic, see msf_train.checkpoint).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from msf_train.errors import MsfError

MARKER = ".msf-output.json"
LOCK = ".msf-lock"
# Entries of an output folder that do not make it "non-empty": our own bookkeeping and leftovers.
_OURS = (MARKER, LOCK)
# The installed package's own folders: defaults never point there and --out may not either
# (without --force): the shipped demo weights and classifier live there.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("msf_train", "msf_export", "runtime", "msf_eval")


def user_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in _OURS and not p.name.startswith(".msf-staging"))


def read_marker(folder: Path) -> dict | None:
    try:
        m = json.loads((Path(folder) / MARKER).read_text())
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


def _write_marker(folder: Path, record: dict) -> None:
    from msf_train.checkpoint import atomic_write_json

    atomic_write_json(folder / MARKER, record)


def inside_package(path: Path) -> bool:
    p = path.resolve()
    return any(p == PACKAGE_ROOT / n or (PACKAGE_ROOT / n) in p.parents for n in PACKAGES)


def check_claim(out, command: str, key=None, force: bool = False,
                recognise: Callable[[Path], bool] | None = None) -> None:
    """Refuse (MsfError) to write `out` unless the rule above allows it. Reads only."""
    out = Path(out)
    flag = "--force"
    if inside_package(out) and not force:
        raise MsfError(f"--out {out} is inside the installed msf package (its shipped files live there): "
                       f"choose a folder of your own")
    if out.exists() and not out.is_dir():
        raise MsfError(f"--out {out} exists and is not a folder")
    if not out.exists() or not user_entries(out) or force:
        return
    m = read_marker(out)
    if m is None:
        if recognise is not None and recognise(out):
            return  # an output of this command written before markers existed
        raise MsfError(f"--out {out} is not empty and holds no output of `{command}` "
                       f"({', '.join(user_entries(out)[:3])}...): choose an empty or new folder, or pass {flag}")
    if m.get("command") != command:
        raise MsfError(f"--out {out} holds the output of `{m.get('command')}`, not `{command}`: choose another "
                       f"folder, or pass {flag} to write over it")
    if key is not None and m.get("key") != _jsonable(key):
        raise MsfError(f"--out {out} holds an earlier `{command}` output made from other inputs: choose another "
                       f"folder, or pass {flag} to replace it")


def _jsonable(key):
    return json.loads(json.dumps(key, sort_keys=True, default=str))


@contextlib.contextmanager
def lock(folder: Path, command: str):
    """Hold the advisory lock of `folder` (created if needed) for the duration of the block."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown PID"
            raise MsfError(f"{folder} is being written by another msf process ({holder}); wait for it to "
                           f"finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()}: {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock


@contextlib.contextmanager
def claim(out, command: str, key=None, force: bool = False, recognise: Callable[[Path], bool] | None = None,
          keep: Callable[[Path], bool] | None = None):
    """Check the rule, lock the folder, mark it as `command`'s output for `key`, run the block; on
    failure remove the folder if this call created it (unless `keep` says it holds resumable work)."""
    out = Path(out)
    check_claim(out, command, key, force, recognise)
    created = not out.exists()
    try:
        with lock(out, command):
            check_claim(out, command, key, force, recognise)  # again, under the lock (a racing writer)
            record = {"command": command, "key": _jsonable(key)}
            old = read_marker(out) or {}
            if {k: old.get(k) for k in record} != record:  # a refused resume leaves the folder byte-identical
                _write_marker(out, {**record, "complete": False})
            yield out
            if not (read_marker(out) or {}).get("complete"):
                _write_marker(out, {**record, "complete": True})
    except BaseException:
        if created and not (keep is not None and keep(out)):
            shutil.rmtree(out, ignore_errors=True)  # partial outputs of a failed first run
        raise
