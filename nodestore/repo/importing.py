"""``nodestore import``: structure files in, validated, as one segment and one commit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nodestore.errors import ValidationError

from .results import ImportResult


def import_files(node, files, method: str | None = None, message: str | None = None, origin: str = "imported",
                 iteration: int = 0, min_distance: float | None = None, format: str | None = None,
                 commit: bool = True) -> ImportResult:
    """Read, validate and add the frames of ``files`` as one transaction; all or nothing.

    Frames carrying energies need ``method`` (the method that produced them,
    e.g. ``vasp-pbe``) so that hulls and merges never mix methods.
    """
    from nodestore.frames.io import read_file

    files = [Path(f) for f in files]
    if not files:
        raise ValidationError("no files to import")
    images, names = [], []
    for f in files:
        imgs = read_file(f, format=format)
        images.extend(imgs)
        names.extend(f"{f} frame {i}" for i in range(len(imgs)))
    msg = message or f"import {len(images)} frames from {', '.join(f.name for f in files[:3])}{' ...' if len(files) > 3 else ''}"
    return import_images(node, images, names, method=method, message=msg, origin=origin, iteration=iteration,
                         min_distance=min_distance, commit=commit)


def import_images(node, images: list, names: list[str], method=None, message: str = "import",
                  origin: str = "imported", iteration: int = 0, min_distance: float | None = None,
                  commit: bool = True) -> ImportResult:
    """Validate and add Atoms ``images`` (``names`` say where each came from, for messages) as one
    transaction.  ``method`` is one method for every labelled frame, or one per image."""
    from nodestore.frames import FrameBatch
    from nodestore.frames.validate import Rules, validate_batch

    if not images:
        raise ValidationError("no frames to import")
    batch = FrameBatch.from_atoms(images, origin=origin, iteration=iteration)
    labelled = np.isfinite(batch["energy"]) | np.isfinite(batch["stress"]).any(axis=1)
    per_atom_f = np.isfinite(batch["forces"]).all(axis=1)
    labelled |= np.add.reduceat(per_atom_f, batch.offsets[:-1]) > 0 if batch.n_atoms else False
    per_image = list(method) if isinstance(method, (list, tuple)) else [method] * len(images)
    missing = [i for i in np.nonzero(labelled)[0] if not per_image[i]]
    if missing:
        raise ValidationError(f"{names[int(missing[0])]} carries energies/forces: say which method produced them "
                              "with --method (e.g. vasp-pbe)")
    batch = batch.with_columns(method=[m if lab else "" for m, lab in zip(per_image, labelled)])
    min_d = min_distance if min_distance is not None else node.params.get("import", {}).get("min_distance", 0.5)
    validate_batch(batch, Rules(elements=frozenset(node.system), min_distance=min_d), names)
    if not commit:  # a work-tree write, for a caller that commits later
        table = node.table
        n_before = len(table)
        seg = table.append(batch)
        return ImportResult(read=len(batch), new=len(table) - n_before, segment=seg, commit=None)
    with node.transaction(message) as tx:
        n_before = len(tx.table)
        seg = tx.append(batch)
        new = len(tx.table) - n_before
        if seg is None:
            tx.cancel()
    return ImportResult(read=len(batch), new=new, segment=seg, commit=tx.commit_id if seg is not None else None)
