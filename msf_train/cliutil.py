"""Shared CLI plumbing: the one boundary where every error becomes one line on stderr and a non-zero
exit instead of a traceback (docs/RELIABILITY.md).

- `MsfError` (what library code raises for bad input) -> its message;
- usage errors (unknown option, bad value, out of range) -> one line plus "see CMD --help";
- OSError by errno: disk full, read-only file system, permission denied, missing files;
- the allocator running out (RuntimeError "out of memory" / MemoryError);
- Ctrl-C -> "interrupted" (exit 130);
- anything else -> "internal error (...)", still one line, asking for a bug report.
`MSF_DEBUG=1` in the environment lets every exception through with its traceback.
"""
from __future__ import annotations

import errno
import os

import click

from msf_train.errors import MsfError

DEBUG_ENV = "MSF_DEBUG"
# click >= 8.2 signals "no arguments: show the help" with an exception; let it through.
_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _flat(text: str) -> str:
    return " ".join(str(text).split())


class OneLineError(click.ClickException):
    """`Error: <message>` on one line, with an exit code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(_flat(message))
        self.exit_code = exit_code


def _os_message(e: OSError) -> str:
    where = e.filename if e.filename is not None else "an output file"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device while writing {where}: free some space or write elsewhere"
    if e.errno == errno.EROFS:
        return f"read-only file system: cannot write {where}; choose a writable output folder"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where}; choose a folder you can write (or fix its permissions)"
    return f"{e.strerror or type(e).__name__}: {where}"


def one_line(e: BaseException) -> OneLineError | None:
    """The one-line form of an exception, or None for exceptions click handles itself."""
    if isinstance(e, (click.exceptions.Exit, click.exceptions.Abort)):
        return None
    if isinstance(e, click.UsageError):
        ctx = e.ctx
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        return OneLineError(f"{e.format_message()}{hint}", e.exit_code)
    if isinstance(e, click.ClickException):
        return OneLineError(e.format_message(), e.exit_code)
    if isinstance(e, MsfError):
        return OneLineError(str(e), getattr(e, "exit_code", 1))
    if isinstance(e, KeyboardInterrupt):
        return OneLineError("interrupted", 130)
    if isinstance(e, OSError) and e.errno is not None:
        return OneLineError(_os_message(e))
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower()) \
            or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e).lower()):
        first = (str(e).splitlines() or ["MemoryError"])[0][:200]
        return OneLineError(f"out of memory ({first}); use a smaller --batch or a machine with more memory")
    first = (str(e).splitlines() or [""])[0][:200]
    return OneLineError(f"internal error ({type(e).__name__}: {first}); rerun with {DEBUG_ENV}=1 for the "
                        f"traceback and report it")


def _guard(fn, *args):
    if debug():
        return fn(*args)
    try:
        return fn(*args)
    except _NO_ARGS_HELP:
        raise  # a bare group or command: click prints its help
    except BaseException as e:  # noqa: BLE001 - this is the boundary
        if isinstance(e, SystemExit):
            raise
        mapped = one_line(e)
        if mapped is None:
            raise
        _close_progress_bars()
        raise mapped from None


def _close_progress_bars() -> None:
    """Finish any progress bar now, so that the error line is the last thing on stderr."""
    import sys

    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


class MsfCommand(click.Command):
    """A click command whose every error (parsing included) is one line, see module docstring."""

    def make_context(self, info_name, args, parent=None, **extra):
        return _guard(super().make_context, info_name, args, parent, **extra)

    def invoke(self, ctx):
        return _guard(super().invoke, ctx)


class MsfGroup(click.Group):
    """The same for a group and all its subcommands."""

    command_class = MsfCommand

    def make_context(self, info_name, args, parent=None, **extra):
        return _guard(super().make_context, info_name, args, parent, **extra)

    def invoke(self, ctx):
        return _guard(super().invoke, ctx)


MsfGroup.group_class = MsfGroup
