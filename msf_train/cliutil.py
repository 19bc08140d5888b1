"""Shared CLI plumbing: every `MsfError` (and a few well-understood OS errors) becomes one line on
stderr and a non-zero exit instead of a traceback."""
from __future__ import annotations

import click

from msf_train.errors import MsfError


def _one_line(invoke, ctx):
    try:
        return invoke(ctx)
    except MsfError as e:
        raise click.ClickException(str(e)) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        raise click.ClickException(f"{e.strerror}: {e.filename}") from None


class MsfGroup(click.Group):
    """A click group whose commands report `MsfError` as `Error: <message>` with exit code 1."""

    def invoke(self, ctx):
        return _one_line(super().invoke, ctx)


class MsfCommand(click.Command):
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
