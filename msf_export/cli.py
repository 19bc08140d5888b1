"""`msf-export`: turn checkpoints into ONNX graphs, TensorRT engines or AOTInductor packages."""
from __future__ import annotations

import click

from msf_train.cliutil import MsfGroup


@click.group(cls=MsfGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Export every stage of a cascade (and the VAE decoder) for a runtime backend."""


if __name__ == "__main__":
    main()
