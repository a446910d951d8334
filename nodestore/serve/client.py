"""``nodestore import optimade:URL --filter F``: the structures of an OPTIMADE provider into a node.

optimade's own client does the querying (pagination, retries, progress); optimade's adapter turns
each entry into ASE Atoms.  Energies a provider serves (``_<prefix>_energy``, total eV, with
``_<prefix>_method`` where given) are stored under a method of their own,
``optimade-<prefix>`` or ``optimade-<prefix>-<method>``, never under the node's reference method;
the provider and entry id go in ``source``.  Everything is fetched and checked before anything is
written; the import is one transaction.
"""

from __future__ import annotations

import re

from nodestore.errors import NodestoreError, ValidationError

SCHEME = "optimade:"


def is_optimade(arg: str) -> bool:
    return str(arg).startswith(SCHEME)


def fetch(url: str, filter: str = "", *, limit: int = 1000, retries: int = 3, timeout: float = 30.0,
          progress: bool = True) -> tuple[list[dict], str | None, str]:
    """Entries of ``url``'s structures endpoint that match ``filter`` (at most ``limit``), the
    provider's prefix and the base URL queried (``url`` without a trailing ``/vMAJOR``)."""
    import warnings

    from optimade.client import OptimadeClient

    # the client adds the version itself: give it the unversioned base URL
    base = re.sub(r"/v\d+(\.\d+){0,2}$", "", url.rstrip("/"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = OptimadeClient(base_urls=[base], max_results_per_provider=limit, max_attempts=retries,
                                http_timeout=timeout, use_async=False, silent=not progress)
        try:
            results = client.get(filter=filter or "", endpoint="structures")
        except Exception as exc:  # noqa: BLE001 - the client's failures, told as one message
            raise NodestoreError(f"cannot query {base}: {type(exc).__name__}: {exc}") from None
    got = results.get("structures", {}).get(filter or "", {}).get(base)
    if got is None:
        raise NodestoreError(f"cannot query {base}: no answer")
    if got.get("errors") and not got.get("data"):
        raise NodestoreError(f"cannot query {base}: {'; '.join(map(str, got['errors']))[:500]}")
    meta = got.get("meta") or {}
    prefix = (meta.get("provider") or {}).get("prefix")
    return list(got.get("data") or []), prefix, base


def check_filter(filter: str) -> None:
    """Refuse a filter that OPTIMADE's grammar cannot parse, before any request is made."""
    from optimade.filterparser import LarkParser

    try:
        LarkParser().parse(filter)
    except Exception as exc:  # noqa: BLE001 - optimade's BadRequest, or the grammar's own error
        detail = getattr(exc, "detail", None) or str(exc)
        raise ValidationError(f"not an OPTIMADE filter: {filter!r} ({detail.splitlines()[0][:160]})") from None


def method_name(prefix: str | None, method: str | None) -> str:
    """The node's method name for energies served by provider ``prefix`` (with their own ``method``)."""
    slug = lambda s: re.sub(r"[^A-Za-z0-9._-]+", "-", str(s)).strip("-")  # noqa: E731
    name = f"optimade-{slug(prefix or 'provider')}"
    return f"{name}-{slug(method)}" if method else name


def to_atoms(entries: list[dict], base: str, prefix: str | None) -> tuple[list, list[str], list[str | None]]:
    """ASE Atoms of ``entries`` (energy attached where the provider gives one), their names and methods."""
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from optimade.adapters import Structure

    images, names, methods = [], [], []
    for e in entries:
        eid = e.get("id")
        name = f"{base} structures/{eid}"
        try:
            atoms = Structure(e).convert("ase")
        except Exception as exc:  # noqa: BLE001 - a provider's malformed entry
            raise ValidationError(f"{name}: cannot be read as a structure ({type(exc).__name__}: {exc})") from None
        attrs = e.get("attributes") or {}
        energy = attrs.get(f"_{prefix}_energy") if prefix else None
        method = None
        if energy is not None:
            try:
                energy = float(energy)
            except (TypeError, ValueError):
                raise ValidationError(f"{name}: _{prefix}_energy is not a number ({energy!r})") from None
            if not np.isfinite(energy):
                raise ValidationError(f"{name}: _{prefix}_energy is not finite")
            atoms.calc = SinglePointCalculator(atoms, energy=energy)
            method = method_name(prefix, attrs.get(f"_{prefix}_method"))
        atoms.info = {"source": f"optimade:{base} structures/{eid}"}
        images.append(atoms)
        names.append(name)
        methods.append(method)
    return images, names, methods


def import_optimade(node, url: str, filter: str = "", *, origin: str = "imported", limit: int = 1000,
                    message: str | None = None, min_distance: float | None = None, progress: bool = True):
    """Fetch, convert and import; returns the ImportResult (``new`` = 0 and no commit when all are there)."""
    from nodestore.repo.importing import import_images

    base = url[len(SCHEME):] if is_optimade(url) else url
    if not re.match(r"^https?://", base):
        raise ValidationError(f"an OPTIMADE URL is http(s)://HOST/PATH (the provider's base URL), not {base!r}")
    if filter:
        check_filter(filter)
    entries, prefix, base = fetch(base, filter, limit=limit, progress=progress)
    if not entries:
        raise ValidationError(f"{base}: no structure matches {filter!r}" if filter else f"{base}: no structures")
    images, names, methods = to_atoms(entries, base, prefix)
    msg = message or f"import {len(images)} structures from {base}" + (f" ({filter})" if filter else "")
    return import_images(node, images, names, method=methods, message=msg, origin=origin,
                         min_distance=min_distance)
