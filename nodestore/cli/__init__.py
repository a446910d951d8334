"""The command line: thin.  Each command parses, calls one function, prints.

Only click is imported at start-up; every layer is imported inside the
command that needs it, so that ``nodestore --help`` is instant.
"""

from __future__ import annotations

import click

from .util import run

__all__ = ["main"]


class NodestoreGroup(click.Group):
    """Turns every NodestoreError into one line and its exit code, in one place."""

    def invoke(self, ctx):
        return run(lambda: super(NodestoreGroup, self).invoke(ctx))


@click.group(cls=NodestoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nodestore")
@click.option("-C", "node_dir", default=".", metavar="PATH", help="Run as if started in PATH (like git -C).")
@click.pass_context
def main(ctx, node_dir):
    """nodestore: a materials database as a living repository.

    A node is one chemical system whose state is data and models together:
    structures with their energies and forces, and the checkpoints of the
    models trained on them.  Every change is a commit.
    """
    ctx.obj = {"node_dir": node_dir}


from . import commands_repo  # noqa: E402,F401  (registers commands)
from . import commands_science  # noqa: E402,F401
