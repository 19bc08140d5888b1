"""`msf-run`: sample images from a cascade (filled in by the runtime issue)."""
from __future__ import annotations

import click

from msf_train.cliutil import MsfCommand
from msf_train.errors import MsfError


@click.command(cls=MsfCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--class", "class_ids", default="330", help="Class id(s), comma separated.")
@click.option("--out", default="img.png", help="Output PNG.")
def main(class_ids, out):
    """Generate images with an MSF cascade (Algorithm 3) and decode them with the VAE."""
    raise MsfError("msf-run is not built yet: the runtime lands with the runtime issue")


if __name__ == "__main__":
    main()
