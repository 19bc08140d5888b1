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
