"""Shared CLI plumbing: every failure of an msf command ends in exactly one line on stderr and a
non-zero exit, never a traceback and never silence (issue #11).

Three layers, because a failure can happen at three levels:
1. `MsfError` (and a few well-understood OS errors) raised by our code -> `Error: <message>`;
2. anything else Python can still see (an exception from torch or inductor, a `SystemExit` with a
   bare code, a usage error) -> one `Error: ...` line, the traceback only with MSF_TRACEBACK=1;
3. what Python cannot see: a crash in native code (SIGSEGV in a compiled kernel or in a destructor
   at interpreter exit), the OOM killer's SIGKILL, an `os._exit` in a library. The command runs in
   a child process under a small supervisor (this same program, without torch) that reports such
   an end in one line. The child tells the supervisor through a pipe that it has already printed
   its message, so an ordinary error is reported once. `faulthandler` in the child adds the Python
   stack of a native crash above that line. MSF_NO_SUPERVISOR=1 runs in one process.

Layer 1 maps by kind (issue #13, docs/RELIABILITY.md): OSError by errno (disk full, read-only file
system, permission denied, missing files), the allocator running out ("out of memory", MemoryError),
Ctrl-C; an exit code carried by the error (training stopped by a signal: 128 + signal) is kept.
MSF_DEBUG=1 (or MSF_TRACEBACK=1) lets the exception through, and the traceback is printed.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import click

from msf_train.errors import MsfError

# click >= 8.2 signals "no arguments: show the help" with a UsageError subclass.
_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
_REPORT_FD = "MSF_REPORT_FD"  # set by the supervisor in the child: where to say "I printed my error"


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def debug() -> bool:
    """MSF_DEBUG=1 or MSF_TRACEBACK=1: show tracebacks (for bug reports)."""
    return "1" in (os.environ.get("MSF_DEBUG"), os.environ.get("MSF_TRACEBACK"))


def _os_message(e: OSError) -> str:
    where = e.filename if e.filename is not None else "an output file"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device while writing {where}: free some space or write elsewhere"
    if e.errno == errno.EROFS:
        return f"read-only file system: cannot write {where}; choose a writable output folder"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where}; choose a folder you can write (or fix its permissions)"
    return f"{e.strerror or type(e).__name__}: {where}"


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and
                                          ("out of memory" in text or "can't allocate memory" in text))


def _one_line(invoke, ctx):
    if debug():
        return invoke(ctx)  # main()'s last resort prints the traceback, then the one line
    try:
        return invoke(ctx)
    except MsfError as e:
        exc = click.ClickException(one_line(e) or type(e).__name__)
        exc.exit_code = getattr(e, "exit_code", 1)  # e.g. 130: training stopped by Ctrl-C after saving
        raise exc from None
    except OSError as e:
        if e.errno is None:
            raise
        raise click.ClickException(_os_message(e)) from None
    except (RuntimeError, MemoryError) as e:
        if not _is_oom(e):
            raise
        raise click.ClickException(f"out of memory ({first_line(e)[:200]}); use a smaller --batch or a machine "
                                   f"with more memory") from None


def _said() -> None:
    """Tell the supervisor (if any) that this process has printed its error line."""
    fd = os.environ.get(_REPORT_FD)
    if fd:
        try:
            os.write(int(fd), b"1")
        except (OSError, ValueError):
            pass


def _close_progress_bars() -> None:
    """Finish any progress bar now, so that the error line is the last thing on stderr."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass


def _fail(message: str, code: int = 1) -> int:
    _close_progress_bars()
    click.echo(f"Error: {one_line(message)}", err=True)
    _said()
    return code


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _die_with_parent() -> None:
    """In the child (Linux): get SIGKILL when the supervisor dies, so that `kill -9` of the command
    stops the work too (an orphaned child would keep training and hold the output folder's lock)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def supervise(prog: str) -> int | None:
    """Run this very command line again in a child and report an end Python could not report.

    Returns the exit code to use, or None when this process is the one that should do the work
    (already supervised, disabled, or no way to re-run the command line)."""
    if os.environ.get(_REPORT_FD) or os.environ.get("MSF_NO_SUPERVISOR") == "1":
        return None
    argv = list(getattr(sys, "orig_argv", []))
    if not argv:
        return None
    argv[0] = sys.executable
    r, w = os.pipe()
    env = {**os.environ, _REPORT_FD: str(w)}
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child, which reports it
    try:
        try:
            child = subprocess.Popen(argv, env=env, pass_fds=(w,), preexec_fn=_die_with_parent)
        except OSError:  # cannot start a child (e.g. not allowed to exec the interpreter): run here
            os.close(r)
            os.close(w)
            return None
        os.close(w)
        # A launcher (torchrun, a job scheduler) that stops us must stop the work too.
        old_term = signal.signal(signal.SIGTERM, lambda num, frame: child.send_signal(num))
        try:
            code = child.wait()
        finally:
            signal.signal(signal.SIGTERM, old_term)
    finally:
        signal.signal(signal.SIGINT, old_int)
    os.set_blocking(r, False)
    try:
        reported = bool(os.read(r, 16))
    except (BlockingIOError, OSError):
        reported = False
    os.close(r)
    if code == 0 or reported:
        return code if code >= 0 else 1
    if code < 0:
        name = _signal_name(-code)
        why = {"SIGKILL": "killed from outside, often by the kernel's out-of-memory killer: free memory or "
                          "use a smaller --batch",
               "SIGINT": "interrupted"}.get(name, "a crash in native code (torch, a compiled kernel or a driver); "
                                                  "the Python stack above shows where")
        click.echo(f"Error: {prog} died from {name}: {why}", err=True)
        return 128 + (-code)
    click.echo(f"Error: {prog} exited with status {code} without a message (a library called exit); "
               f"rerun with MSF_NO_SUPERVISOR=1 MSF_TRACEBACK=1 to see more", err=True)
    return code


class _OneLineMain:
    """`main()` for click commands: supervisor, then the command with every failure as one line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller that handles exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        prog = prog_name or self.name or "msf"
        if args is None:  # a real command line (not click's test runner, which passes args)
            code = supervise(prog)
            if code is not None:
                sys.exit(code)
        import faulthandler

        try:
            faulthandler.enable()  # a native crash prints the Python stack before dying
            sys.stdout.reconfigure(line_buffering=True)  # lines printed before a crash are not lost
        except (AttributeError, ValueError, OSError):
            pass
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_HELP as e:  # a bare group: click shows its help
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:  # click prints usage + hint + error: keep the error, say where help is
            hint = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
            sys.exit(_fail(f"{e.format_message()}{hint}", e.exit_code))
        except click.ClickException as e:
            sys.exit(_fail(e.format_message() or type(e).__name__, e.exit_code))
        except (click.exceptions.Abort, KeyboardInterrupt):
            sys.exit(_fail("interrupted", 130))
        except SystemExit as e:  # sys.exit() somewhere below: make sure a failure says something
            if e.code is None or e.code == 0:
                raise
            if isinstance(e.code, str):
                sys.exit(_fail(e.code))
            sys.exit(_fail(f"{prog} stopped with status {e.code}", int(e.code)))
        except Exception as e:  # noqa: BLE001 - the last resort: one line, the traceback on request
            if debug():
                import traceback

                traceback.print_exc()
            sys.exit(_fail(f"{type(e).__name__}: {first_line(e)} (unexpected; MSF_TRACEBACK=1 prints the traceback)"))
        if isinstance(rv, int) and rv != 0:  # ctx.exit(code) in non-standalone mode returns the code
            sys.exit(_fail(f"{prog} stopped with status {rv}", rv))
        sys.exit(0)


class MsfGroup(_OneLineMain, click.Group):
    """A click group whose commands report `MsfError` as `Error: <message>` with exit code 1."""

    def invoke(self, ctx):
        return _one_line(super().invoke, ctx)


class MsfCommand(_OneLineMain, click.Command):
    """The same for a single command (msf-run)."""

    def invoke(self, ctx):
        return _one_line(super().invoke, ctx)



def msf_version() -> str:
    """The installed package's version (msf_train.__version__ when running from an uninstalled tree)."""
    try:
        from importlib.metadata import version

        return version("msf")
    except Exception:  # not installed
        from msf_train import __version__

        return __version__


def version_option(prog: str):
    """`--version` for every msf CLI, looked up only when asked for (no cost at start-up)."""
    def show(ctx, _param, value):
        if value and not ctx.resilient_parsing:
            click.echo(f"{prog} {msf_version()}")
            ctx.exit()

    return click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=show,
                        help="Show the version and exit.")


def parse_list(text: str | None, kind, option: str) -> list | None:
    """'100,50' -> [100, 50]; None stays None (use the defaults)."""
    if text is None:
        return None
    items = [s.strip() for s in str(text).split(",")]
    try:
        if any(not s for s in items):
            raise ValueError
        return [kind(s) for s in items]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise MsfError(f"{option} takes comma-separated {what}, got {text!r}") from None


def _probe_folder(folder, what: str, path) -> None:
    """Create `folder` if needed and a probe file in it; one line naming `what` if either fails."""
    import tempfile

    from msf_train.errors import MsfError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise MsfError(f"cannot write {what} {path}: {e.strerror or e}; choose a writable path") from None


def check_writable(path, what: str) -> None:
    """Fail before any work if the output file `path` cannot be written (it is written atomically
    later): not a folder, its nearest existing ancestor a folder, and a probe file can be created there."""
    from pathlib import Path

    from msf_train.errors import MsfError

    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise MsfError(f"{what} {path} is a folder; give a file name")
    for folder in path.parents:  # the nearest existing ancestor must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise MsfError(f"cannot write {what} {path}: {folder} is a file, not a folder")
            break
    _probe_folder(path.parent, what, path)


def check_writable_dir(folder, what: str) -> None:
    """Fail before any work if files cannot be written into `folder` (created if missing)."""
    from pathlib import Path

    from msf_train.errors import MsfError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MsfError(f"{what} {folder} is a file; give a folder")
    _probe_folder(folder, what, folder)
