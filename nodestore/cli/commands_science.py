"""Science commands: hull, query, entropy, classify, predict, label, iterate, stage, report."""

from __future__ import annotations

import click

from . import main
from .util import JSON_OPTION, echo_json, open_node, table_print


@main.command()
@click.option("--path", default="demo/Li-P-S", show_default=True, type=click.Path())
@click.option("--keep", is_flag=True, help="Keep an existing demo node instead of rebuilding it.")
@JSON_OPTION
def demo(path, keep, as_json):
    """Build the Li-P-S demo node offline from the data shipped with nodestore."""
    from nodestore.loop.demo import run_demo

    doc = run_demo(path, fresh=not keep, echo=lambda s: click.echo(s, err=as_json))
    if as_json:
        echo_json(doc)
        return
    table_print([{"step": k, "seconds": v} for k, v in doc["timings_s"].items()])
    click.echo(f"{doc['system']}: {doc['frames']} frames, {doc['labelled']} labelled, "
               f"{doc['entries']} entries, {doc['segments']} segments, {doc['iterations']} iterations")
