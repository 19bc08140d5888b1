"""`msf-train`: presets, and (in later issues) vae, cache, scale0, scale1, dit."""
from __future__ import annotations

import click

from msf_train.cliutil import MsfGroup
from msf_train.config import PRESETS, get_preset


@click.group(cls=MsfGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Train MSF models: one DiT per scale (Algorithm 1 targets, Algorithm 2 priors, Eq. 5 loss).

    Start with `msf-train presets` to see the model sizes.
    """


def preset_rows(names=None):
    from msf_train.model import count_macs, count_params

    rows = []
    for name in names or PRESETS:
        c = get_preset(name)
        rows.append(dict(name=c.name, params=count_params(c), macs=count_macs(c), tokens=c.num_tokens,
                         latent="x".join(map(str, c.latent_shape)), prior=c.has_prior))
    return rows


@main.command()
@click.argument("names", nargs=-1)
def presets(names):
    """Table of presets: parameters, multiply-adds per forward (one image), tokens, latent shape.

    Give preset NAMES to show only those; `msf-xl/scale0` is the paper's scale 0 (435.9M),
    `dit-xl/2` the DiT baseline (675M, 118.6 "Gflops" in the DiT paper).
    """
    rows = preset_rows(names)
    click.echo(f"{'name':<16} {'params':>10} {'MACs/fwd':>11} {'tokens':>7} {'latent':>9}  prior")
    for r in rows:
        p = f"{r['params'] / 1e6:.1f}M"
        m = f"{r['macs'] / 1e9:.2f}G"
        click.echo(f"{r['name']:<16} {p:>10} {m:>11} {r['tokens']:>7} {r['latent']:>9}  {'yes' if r['prior'] else 'no'}")


if __name__ == "__main__":
    main()
