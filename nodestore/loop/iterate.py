"""Advancing the loop: add an iteration, ``dvc repro``, and commit what it made.

``nodestore iterate`` adds ``"k": {prev: k-1}`` to ``loop.iterations`` in
params.yaml (the first time it also pins iteration 0: the table manifest and
the current checkpoints).  ``dvc repro`` then runs only the new stages.
``nodestore commit`` (or ``iterate --run``, which does all three) absorbs every
finished iteration: the curated segment is listed in the node's table, the new
checkpoints become current, the hull of the reference method is recomputed, and
the iteration ends as one commit tagged ``iter-k``.  Until then the node's
data and models are untouched, so killing ``dvc repro`` at any moment leaves
the node at its last commit; running again finishes the iteration.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from nodestore.config import iterations, with_defaults
from nodestore.errors import NodestoreError
from nodestore.repo.results import IterateResult, IterationCommit

from .stages import iter_dir, read_table


def _tagged(node, k: int) -> bool:
    return f"refs/tags/iter-{k}" in node.git.references


def pending(node) -> list[int]:
    """Iterations listed in params.yaml and not yet committed (no iter-k tag)."""
    return [k for k in iterations(node.params) if not _tagged(node, k)]


def migrate_loop(tx) -> bool:
    """Migrate a node whose ``loop.iterations`` is a list (stages named by list index, one off from k)
    to the mapping keyed by k: params.yaml, dvc.yaml and dvc.lock's stage names, through ``tx``."""
    import yaml

    from .pipeline import dvc_yaml

    node = tx.node
    params = node.params
    its = params["loop"]["iterations"]
    if not isinstance(its, list):
        return False
    ks = [int(it["k"]) for it in its]
    params["loop"]["iterations"] = {str(it["k"]): {"prev": int(it["prev"])} for it in its}
    tx.write_params(params)
    if (node.path / "dvc.yaml").exists():
        tx.write_text("dvc.yaml", dvc_yaml())
    lock = node.path / "dvc.lock"
    if lock.exists():
        doc = yaml.safe_load(lock.read_text()) or {}
        stages = {}
        for name, body in (doc.get("stages") or {}).items():
            base, at, idx = name.partition("@")
            if at and idx.isdigit() and int(idx) < len(ks):
                name = f"{base}@{ks[int(idx)]}"
            stages[name] = body
        doc["stages"] = stages
        tx.write_text("dvc.lock", yaml.safe_dump(doc, sort_keys=False))
    return True


def _seed(tx) -> None:
    """Pin iteration 0 (through transaction ``tx``): the table as it is and the current checkpoints."""
    node = tx.node
    rel = iter_dir(node, 0).relative_to(node.path).as_posix()
    d = tx.make_dir(rel)
    tx.write_text(f"{rel}/table.json", json.dumps(node.table.manifest, indent=1, sort_keys=True) + "\n")
    models = d / "models"
    if models.exists():
        shutil.rmtree(models)
    models.mkdir()
    cur = node.current_models()
    for kind in ("forcefield", "generator"):
        if kind in cur:
            shutil.copytree(node.path / "models" / cur[kind], models / kind)
    (models / "seed.json").write_text(json.dumps({"from_current": cur}, indent=1, sort_keys=True) + "\n")
    tx.dvc_add([f"{rel}/models"])


def iterate(node, run: bool = False, message: str | None = None) -> IterateResult:
    """Add the next iteration to params.yaml (unless one is pending); with ``run``, reproduce and commit it."""
    added = None
    with node.transaction("iterate") as tx:  # the lock first: a refused iterate writes nothing
        migrated = migrate_loop(tx)
        todo = pending(node)
        if not todo:
            params = with_defaults(node.params)
            its = params["loop"]["iterations"]
            k = max(iterations(params), default=0) + 1
            if not its and not (iter_dir(node, 0) / "table.json").exists():
                _seed(tx)
            its[str(k)] = {"prev": k - 1}
            tx.write_params(params)
            tx.message = f"iterate: add iteration {k}"
            added = k
            todo = [k]
        elif migrated:
            tx.message = "iterate: key loop.iterations by k (DVC stages stage@k are iteration k)"
        else:
            tx.cancel()
    committed = []
    if run:
        reproduce(node)
        committed = absorb(node, message=message)
    return IterateResult(added=added, pending=todo, committed=committed)


def reproduce(node) -> None:
    """``dvc repro`` in process, with this interpreter's ``nodestore`` on PATH for the stage commands."""
    from nodestore.repo import dvc

    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    from dvc.repo import Repo

    import contextlib

    dvc._quiet()
    with dvc.dvc_errors("dvc repro"), contextlib.chdir(node.path):
        dvc.repair_rwlock(node.path)
        repo = Repo(str(node.path))
        try:
            repo.reproduce()
        finally:
            repo.close()


def absorb(node, message: str | None = None) -> list[dict]:
    """Commit every finished, uncommitted iteration (in order), tagging each ``iter-k``."""
    done = []
    for k in pending(node):
        curated = iter_dir(node, k) / "curated"
        if not (curated / "manifest.json").exists():
            break
        done.append(_absorb_one(node, k, message))
    return done


def _absorb_one(node, k: int, message: str | None) -> IterationCommit:
    from nodestore.chem.api import hull_for_table

    cur = read_table(iter_dir(node, k) / "curated")
    metrics = json.loads((iter_dir(node, k) / "metrics.json").read_text())
    sun = metrics.get("sun", {})
    msg = message or (f"iteration {k}: {metrics.get('candidates')} candidates, {metrics.get('screened')} screened, "
                      f"{metrics.get('labelled')} labelled, S.U.N. {sun.get('sun', sun)}")
    with node.transaction(msg, tags=(f"iter-{k}",)) as tx:
        tx.adopt(cur)
        table = tx.table
        # the hull of the reference method moves when new phases arrive: recompute it for every row
        method = node.config["reference_method"]
        try:
            _, e_hull, e_form = hull_for_table(table, method)
            rows = np.nonzero(table.column("method") == method)[0]
            keys = table.row_keys()[rows]
            tx.annotate(list(keys), {"e_hull": e_hull[rows], "e_form": e_form[rows]})
        except NodestoreError:
            pass
        lab = json.loads((iter_dir(node, k) / "labelled" / "label.json").read_text())
        if lab.get("labelled"):
            tx.record_method(lab["method_info"])
        models = iter_dir(node, k) / "models"
        for kind in ("forcefield", "generator"):
            if (models / kind / "meta.json").exists():
                tx.add_checkpoint(models / kind, kind)
        rel = (iter_dir(node, k) / "table.json").relative_to(node.path).as_posix()
        tx.write_text(rel, json.dumps(tx.table.manifest, indent=1, sort_keys=True) + "\n")
    return IterationCommit(iteration=k, commit=tx.commit_id, sun=sun)
