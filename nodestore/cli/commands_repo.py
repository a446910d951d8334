"""Repository verbs: init, import, commit, log, status, show, diff, checkout, branch, tag, ..."""

from __future__ import annotations

import click

from . import main
from .util import JSON_OPTION, echo_json, open_node, table_print

MESSAGE = click.option("-m", "--message", default=None, help="Commit message.")


@main.command()
@click.argument("system")
@click.argument("path", required=False)
@click.option("--reference-method", default=None, help="Method of the node's hull (default: the labeller's).")
@click.pass_context
def init(ctx, system, path, reference_method):
    """Create a node for SYSTEM (e.g. Li-P-S) at PATH (default ./SYSTEM)."""
    from nodestore.loop import create_node

    node = create_node(system, path, reference_method=reference_method)
    click.echo(f"initialised {node.name} node at {node.path}")


@main.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--method", default=None, help="Method that produced the energies in the files (e.g. vasp-pbe).")
@click.option("--origin", default="imported", type=click.Choice(["imported", "reference", "labelled"]))
@click.option("--format", "fmt", default=None, help="Force a format (cif, vasp, extxyz, ase-db, pymatgen-json).")
@click.option("--min-distance", type=float, default=None, help="Reject frames with atoms closer than this (Å).")
@click.option("--filter", "flt", default=None, help="optimade:URL only: an OPTIMADE filter, e.g. 'elements HAS ALL \"Li\",\"S\"'.")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True, help="optimade:URL only: at most this many structures.")
@MESSAGE
@click.pass_context
def import_(ctx, files, method, origin, fmt, min_distance, flt, limit, message):
    """Import structure FILES as one commit (all or nothing).

    FILES may instead be one optimade:URL (a provider's base URL, e.g.
    optimade:https://optimade.materialsproject.org/v1): the structures its filter selects are
    fetched with optimade's client; energies it serves are stored under a method of their own.
    """
    node = open_node(ctx)
    if any(str(f).startswith("optimade:") for f in files):
        from nodestore.serve.client import import_optimade

        if len(files) != 1 or method or fmt:
            raise click.UsageError("optimade:URL is imported alone, without --method or --format")
        r = import_optimade(node, files[0], flt or "", origin=origin, limit=limit, message=message,
                            min_distance=min_distance, progress=True)
    elif flt:
        raise click.UsageError("--filter is for optimade:URL; for files use `nodestore query`")
    else:
        r = node.import_files(files, method=method, message=message, origin=origin, format=fmt,
                              min_distance=min_distance)
    if r.new == 0:
        click.echo(f"read {r.read} frames: all already in the node, nothing committed")
    else:
        click.echo(f"read {r.read} frames, {r.new} new, segment {r.segment[:12]}, commit {r.commit[:10]}")


@main.command()
@MESSAGE
@click.pass_context
def commit(ctx, message):
    """Record the work tree (table, models, params) as a commit.

    Finished loop iterations (after `dvc repro`) are committed first, one commit each, tagged iter-K.
    """
    from nodestore.loop.iterate import absorb

    node = open_node(ctx)
    for c in absorb(node):
        click.echo(f"iteration {c['iteration']} committed as {c['commit'][:10]} (tag iter-{c['iteration']})")
    if message or node.status()["changed_files"]:
        click.echo(node.commit(message or ""))


@main.command()
@click.argument("rev", required=False)
@click.option("-n", "limit", type=int, default=None, help="Show at most N commits.")
@JSON_OPTION
@click.pass_context
def log(ctx, rev, limit, as_json):
    """Commits reachable from REV (HEAD)."""
    entries = open_node(ctx).log(rev, limit=limit)
    if as_json:
        echo_json(entries)
        return
    for e in entries:
        tags = f" ({', '.join(e['tags'])})" if e["tags"] else ""
        merge = " [merge]" if len(e["parents"]) > 1 else ""
        click.echo(f"{e['commit'][:10]}{tags}{merge} {e['date'][:19]} {e['message'].splitlines()[0]}")


@main.command()
@JSON_OPTION
@click.pass_context
def status(ctx, as_json):
    """What changed since the last commit."""
    st = open_node(ctx).status()
    if as_json:
        echo_json(st)
        return
    click.echo(f"on branch {st['branch'] or '(detached)'} at {str(st['commit'])[:10]}")
    if st["clean"]:
        click.echo("clean")
    else:
        click.echo(f"frames added {st['frames_added']}, removed {st['frames_removed']}")
        for p in st["changed_files"]:
            click.echo(f"  changed: {p}")


@main.command()
@click.argument("rev", required=False)
@JSON_OPTION
@click.pass_context
def show(ctx, rev, as_json):
    """Summary of the node at REV (default: HEAD with the work tree)."""
    doc = open_node(ctx).show(rev)
    if as_json:
        echo_json(doc)
        return
    click.echo(f"{doc['system']} node {doc['node_id'][:8]}  commit {doc['commit'][:10]}  "
               f"branch {doc['branch'] or '-'}")
    click.echo(f"frames {doc['frames']}  labelled {doc['labelled']}  entries {doc['entries']}  "
               f"segments {doc['segments']}  iterations {doc['iterations']}")
    for m, n in doc["methods"].items():
        click.echo(f"  energies by {m}: {n}")
    for m in doc["models"]:
        cur = f" (current {', '.join(m['current'])})" if m["current"] else ""
        click.echo(f"  model {m['id']} {m['backend']}{cur}")


@main.command()
@click.argument("rev_a")
@click.argument("rev_b", required=False)
@JSON_OPTION
@click.pass_context
def diff(ctx, rev_a, rev_b, as_json):
    """Frames and models changed from REV_A to REV_B (default: the work tree)."""
    d = open_node(ctx).diff(rev_a, rev_b)
    if as_json:
        echo_json(d)
        return
    click.echo(f"{d['a']} -> {d['b']}: +{d['frames_added']} -{d['frames_removed']} frames, "
               f"+{len(d['segments_added'])} -{len(d['segments_removed'])} segments")
    for m in d["models_added"]:
        click.echo(f"  + model {m}")
    for m in d["models_removed"]:
        click.echo(f"  - model {m}")
    for k, (a, b) in d["current_models_changed"].items():
        click.echo(f"  current {k}: {a} -> {b}")


@main.command()
@click.argument("rev")
@click.option("--force", is_flag=True, help="Discard uncommitted changes.")
@click.pass_context
def checkout(ctx, rev, force):
    """Move the node (data and checkpoints) to branch, tag or commit REV."""
    r = open_node(ctx).checkout(rev, force=force)
    click.echo(f"at {r.commit[:10]}" + (f" on branch {r.branch}" if r.branch else " (detached)"))


@main.command()
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List branches.")
@click.option("-d", "--delete", is_flag=True, help="Delete branch NAME.")
@click.option("--rev", default=None, help="Start the branch at REV (default HEAD).")
@click.pass_context
def branch(ctx, name, list_, delete, rev):
    """Create (or list, or delete) a branch."""
    node = open_node(ctx)
    if list_ or not name:
        for b in node.branches():
            click.echo(f"{'*' if b['current'] else ' '} {b['name']}  {b['commit'][:10]}")
        return
    node.branch(name, rev=rev, delete=delete)
    click.echo(f"{'deleted' if delete else 'created'} branch {name}")


@main.command()
@click.argument("name", required=False)
@click.argument("rev", required=False)
@MESSAGE
@click.option("--force", is_flag=True, help="Move an existing tag.")
@click.pass_context
def tag(ctx, name, rev, message, force):
    """Tag REV (HEAD) as NAME, or list tags."""
    node = open_node(ctx)
    if not name:
        for t, c in sorted(node.tags().items()):
            click.echo(f"{t}  {c[:10]}")
        return
    click.echo(f"{name} -> {node.tag(name, rev, message=message, force=force)[:10]}")


@main.command()
@click.argument("output", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["extxyz", "cif", "csv", "json"]), default=None,
              help="Default: from OUTPUT's extension.")
@click.option("--rev", default=None, help="Revision (default: work tree).")
@click.option("--where", default=None, help="Only rows matching a query expression.")
@click.pass_context
def export(ctx, output, fmt, rev, where):
    """Write frames to OUTPUT (extxyz, CIF, CSV or JSON table); a .nsbundle OUTPUT makes a bundle."""
    node = open_node(ctx)
    if output.endswith(".nsbundle"):
        r = node.export_bundle(output, rev=rev)
        click.echo(f"bundle {output}: {r['commits']} commits, {r['objects']} objects, {r['bytes']} bytes")
        return
    from nodestore.loop.query import export_frames

    n = export_frames(node, output, fmt=fmt, rev=rev, where=where)
    click.echo(f"wrote {n} frames to {output}")


@main.command("model")
@click.argument("action", type=click.Choice(["list"]))
@click.option("--rev", default=None)
@JSON_OPTION
@click.pass_context
def model(ctx, action, rev, as_json):
    """Checkpoints in the node: backend, parent, training frames, metrics, and whether each one's
    files still hash to its id (exit 7 when one does not)."""
    from nodestore.errors import IntegrityError

    rows = open_node(ctx).list_checkpoints(rev, verify=True)
    if as_json:
        echo_json(rows)
    else:
        table_print([_model_row(r) for r in rows])
    damaged = [r for r in rows if r["integrity"] != "ok"]
    if damaged:
        raise IntegrityError("; ".join(f"checkpoint models/{r['id']} is damaged: {r['integrity']}" for r in damaged)
                             + ": restore it with `nodestore checkout --force HEAD` or `nodestore fsck --repair "
                             "--remote NAME`")


def _model_row(r: dict) -> dict:
    """One line per checkpoint; the held-out errors of its fine-tune as before -> references fit -> after."""
    m = r["metrics"] or {}

    def num(x, scale, fmt):
        return format(x * scale, fmt) if isinstance(x, (int, float)) else None

    def change(key, scale, fmt):
        steps = [num(m.get(f"{key}_before"), scale, fmt), num(m.get(f"{key}_refs"), scale, fmt),
                 num(m.get(key), scale, fmt)]
        if steps[1] == steps[0]:
            steps[1] = None  # no reference fit in between
        steps = [x for x in steps if x is not None]
        return " -> ".join(steps) if len(steps) > 1 else "-"

    return {"id": r["id"], "kind": r["kind"], "backend": r["backend"], "parent": r["parent_id"] or (r["parent"] or "-")[:16],
            "frames": r["training_frames"], "current": ",".join(r["current"]) or "-",
            "energy scale": r.get("energy_method") or "-",
            "val E RMSE (meV/atom)": change("val_energy_rmse_per_atom", 1000.0, ".1f"),
            "val F RMSE (eV/A)": change("val_force_rmse", 1.0, ".3f"),
            "files": "ok" if r.get("integrity", "ok") == "ok" else "DAMAGED"}


@main.command()
@click.argument("rev")
@click.option("--prefer", type=click.Choice(["ours", "theirs"]), default=None,
              help="Resolve label and checkpoint conflicts this way.")
@click.option("--allow-extend", is_flag=True, help="Allow merging a node of another system (makes the union system).")
@MESSAGE
@JSON_OPTION
@click.pass_context
def merge(ctx, rev, prefer, allow_extend, message, as_json):
    """Merge branch or commit REV: frames by content, entries by structural equivalence."""
    r = open_node(ctx).merge(rev, prefer=prefer, allow_extend=allow_extend, message=message)
    if as_json:
        echo_json(r)
        return
    if r.result != "merged":
        click.echo(f"{r.result}: {r.commit[:10]}")
        return
    click.echo(f"merged {rev} as {r.commit[:10]}: {r.rows_from_theirs} rows from theirs, "
               f"{r.rows_on_both_sides} on both sides kept once, {r.entries_linked} entries linked, "
               f"{r.conflicts_resolved} conflicts resolved")


@main.command()
@click.argument("elements", nargs=-1, required=True)
@click.option("--to", "to", required=True, type=click.Path(), help="Path of the new node.")
@MESSAGE
@click.pass_context
def extend(ctx, elements, to, message):
    """Make a node for this system plus ELEMENTS at --to, carrying data and checkpoints."""
    new = open_node(ctx).extend("-".join(elements), to, message=message)
    click.echo(f"{new.name} node at {new.path}: {len(new.table)} frames carried")


@main.command()
@click.option("--repair", is_flag=True, help="Repair what is safe: finish or roll back an interrupted transaction, "
              "drop temporary files, fetch corrupted or missing objects again (with --remote).")
@click.option("--remote", "remote_name", default=None, metavar="NAME",
              help="Also check what remote NAME holds for each branch; fetch repairs from it.")
@JSON_OPTION
@click.pass_context
def fsck(ctx, repair, remote_name, as_json):
    """Check the node: git objects and refs, the manifest, every object and checkpoint against its hash.

    Exit 0 when clean (or every problem was repaired), 7 otherwise.
    """
    from nodestore.errors import IntegrityError

    r = open_node(ctx).fsck(repair=repair, remote=remote_name)
    if as_json:
        echo_json({"checked": r.checked, "clean": r.clean, "repaired": r.repaired, "problems": r.problems,
                   "warnings": r.warnings})
    else:
        for p in r.warnings:
            click.echo(f"warning: [{p.kind}] {p.what}: {p.message}\n  fix: {p.fix}")
        for p in r.problems:
            state = "repaired" if p.repaired else "problem"
            click.echo(f"{state}: [{p.kind}] {p.what}: {p.message}" + ("" if p.repaired else f"\n  fix: {p.fix}"))
        click.echo(f"checked {r.checked} items: " + ("clean" if r.clean else
                   f"{sum(1 for p in r.problems if not p.repaired)} problem(s)"))
    if not r.clean:
        raise IntegrityError(f"fsck found {sum(1 for p in r.problems if not p.repaired)} problem(s)")


# -- remotes: remote add/list, push, fetch, pull, clone ------------------------

@main.group("remote")
def remote():
    """Remotes: where push, fetch and pull go (git history + DVC objects under one URL)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--git-url", default=None, help="Git URL of the history (default: URL/node.git; needed for s3://).")
@click.option("--dvc-url", default=None, help="DVC remote URL of the objects (default: URL/objects).")
@click.pass_context
def remote_add(ctx, name, url, git_url, dvc_url):
    """Add remote NAME at URL (a path, file://, ssh:// or s3:// with --git-url)."""
    r = open_node(ctx).remote_add(name, url, git_url=git_url, dvc_url=dvc_url)
    click.echo(f"remote {r['name']}: history {r['git_url']}, objects {r['dvc_url']}")


@remote.command("list")
@JSON_OPTION
@click.pass_context
def remote_list(ctx, as_json):
    """The node's remotes."""
    rows = open_node(ctx).remotes()
    if as_json:
        echo_json(rows)
        return
    table_print(rows, ["name", "url", "git_url", "dvc_url"])


REMOTE_ARG = click.argument("remote_name", metavar="[REMOTE]", default="origin", required=False)
BRANCH_OPTION = click.option("--branch", default=None, help="Branch (default: the current one).")


@main.command()
@REMOTE_ARG
@BRANCH_OPTION
@click.pass_context
def push(ctx, remote_name, branch):
    """Upload the objects REMOTE lacks, then move its branch and tags (objects first, refs last)."""
    r = open_node(ctx).push(remote_name, branch=branch)
    size = f", {r['bytes']} bytes" if r["bytes"] is not None else ""
    click.echo(f"pushed {r['branch']} to {r['remote']} at {r['commit'][:10]}: {r['commits']} new commits, "
               f"{r['objects']} objects{size}" + ("" if r["refs"] else " (refs already up to date)"))


@main.command()
@REMOTE_ARG
@BRANCH_OPTION
@click.pass_context
def fetch(ctx, remote_name, branch):
    """Fetch REMOTE's branch into REMOTE/BRANCH with the objects of its tip, verified."""
    r = open_node(ctx).fetch(remote_name, branch=branch)
    click.echo(f"fetched {r['ref']} at {r['commit'][:10]}: {r['objects']} objects")


@main.command()
@REMOTE_ARG
@BRANCH_OPTION
@click.option("--prefer", type=click.Choice(["ours", "theirs"]), default=None,
              help="If a merge is needed, resolve label and checkpoint conflicts this way.")
@click.pass_context
def pull(ctx, remote_name, branch, prefer):
    """fetch, then fast-forward the current branch or merge REMOTE/BRANCH into it."""
    r = open_node(ctx).pull(remote_name, branch=branch, prefer=prefer)
    click.echo(f"{r['result']}: {r['ref']} at {r['commit'][:10]} into {r['branch']}")


@main.command()
@click.argument("url")
@click.argument("path", type=click.Path())
@click.option("--branch", default=None, help="Branch to check out (default: the remote's HEAD).")
def clone(url, path, branch):
    """A new node at PATH from a remote URL or a .nsbundle file."""
    from nodestore.repo import Node

    node = Node.clone(url, path, branch=branch)
    click.echo(f"cloned {node.name} node into {node.path}")
