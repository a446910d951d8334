"""Shared options and helpers of the CLI (defined once, like aiida's)."""

from __future__ import annotations

import json
import os
import sys

import click

NODE_OPTION = None  # the group's -C option stands for it


def JSON_OPTION(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def REV_OPTION(f):
    return click.option("--rev", default=None, metavar="REV", help="Revision (branch, tag, commit); default: work tree.")(f)


def _use_scheduler(ctx, param, value):
    # the stages read it from the environment: `dvc repro` runs them as child processes
    if value:
        os.environ["NODESTORE_SCHEDULER"] = value
    return value


def SCHEDULER_OPTION(f):
    return click.option("--scheduler", default=None, metavar="tcp://HOST:PORT", expose_value=False,
                        callback=_use_scheduler,
                        help="Dask scheduler for screening and labelling (default: params.yaml's executor).")(f)


def open_node(ctx):
    from nodestore.repo import Node

    return Node.open(ctx.obj["node_dir"])


def echo_json(doc) -> None:
    click.echo(json.dumps(doc, indent=1, sort_keys=False, default=_default))


def _default(o):
    import dataclasses

    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def run(fn):
    """Call ``fn``; a NodestoreError becomes one line on stderr and its exit code."""
    from nodestore.errors import NodestoreError

    try:
        return fn()
    except NodestoreError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: the node is left at its last commit", err=True)
        sys.exit(130)
    except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
        raise
    except Exception as exc:  # a bug: still one line, with a way to get the traceback
        if os.environ.get("NODESTORE_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (set NODESTORE_DEBUG=1 for a traceback)", err=True)
        sys.exit(70)


def table_print(rows: list[dict], columns: list[str] | None = None) -> None:
    if not rows:
        click.echo("(none)")
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
