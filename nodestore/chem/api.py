"""Chemistry on a structure table: hull, classification, entropy, S.U.N. counts, queries.

Every function reads a :class:`nodestore.frames.FrameTable` and returns plain
arrays or dicts; none writes.  Writers (the loop, the CLI) store results with
``table.annotate(keys, columns)``.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nodestore.errors import NoHullError, ValidationError

#: params of classify_table and their defaults
CLASSIFY_DEFAULTS = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0, "symprec": 0.1}


# -- hull ------------------------------------------------------------------
def _row_compositions(formulas, n_atoms):
    from pymatgen.core import Composition

    out = []
    cache = {}
    for f, n in zip(formulas, n_atoms):
        if f not in cache:
            cache[f] = Composition(f)
        c = cache[f]
        out.append(c * (int(n) / c.num_atoms))
    return out


def hull_for_table(table, method: str, extra_entries: Sequence | None = None, decomposition: bool = False):
    """Hull of one energy method over the table's rows of that method (plus ``extra_entries``).

    ``extra_entries`` are ``(structure|composition|formula, total_energy, method)``
    tuples of the same method, e.g. :func:`nodestore.chem.hull.mp_elemental_references`
    for ``vasp-pbe``.  Returns ``(diagram, e_hull, e_form)``: a pymatgen
    PhaseDiagram and two arrays over all rows of the table (eV/atom; NaN for
    rows of another method or without energy).  With ``decomposition`` a fourth
    item lists, per row, ``{formula: fraction}`` of the hull phases (None for
    rows not on this hull).  Raises NoHullError when an element has no
    elemental phase of ``method``.
    """
    from .hull import compute_hull

    methods = table.column("method")
    energy = table.column("energy")
    sel = np.nonzero((methods == method) & np.isfinite(energy))[0]
    if len(sel) == 0 and not extra_entries:
        have = sorted({m for m in methods if m})
        raise NoHullError(f"no hull for method {method}: no rows with energies of this method"
                          f" (methods in the table: {', '.join(have) or 'none'})")
    comps = _row_compositions(table.column("formula")[sel], table.column("n_atoms")[sel])
    items = [(c, e, method) for c, e in zip(comps, energy[sel])]
    res = compute_hull(items, method, references=list(extra_entries or ()), decomposition=decomposition)
    e_hull = np.full(len(methods), np.nan)
    e_form = np.full(len(methods), np.nan)
    e_hull[sel] = res.e_hull
    e_form[sel] = res.e_form
    if decomposition:
        dec = [None] * len(methods)
        for pos, r in enumerate(sel):
            dec[r] = res.decomposition[pos]
        return res.diagram, e_hull, e_form, dec
    return res.diagram, e_hull, e_form


# -- classification ----------------------------------------------------------
def _one_row_per_frame(table, rows=None) -> np.ndarray:
    ids = table.column("frame_id")
    cand = np.arange(len(ids)) if rows is None else np.asarray(rows, dtype=np.int64)
    seen, keep = set(), []
    for r in cand:
        if ids[r] not in seen:
            seen.add(ids[r])
            keep.append(int(r))
    return np.array(keep, dtype=np.int64)


def classify_table(table, reference_atoms: Sequence | None = None, params: dict | None = None, rows=None,
                   cache=None, keep_spacegroups: bool = False, settled=None, priority=None):
    """Curate entries: dedup, novelty class, fingerprint, space group, chemical validity.

    One structure per frame id is considered (``rows`` restricts them).  They
    are ordered by energy -- E_hull where known, else energy per atom, else
    last -- and deduplicated with :class:`~nodestore.chem.matcher.Matcher`, so
    the lower-energy structure of a group is its representative: an entry
    (``is_entry`` True, ``duplicate_of`` ""), while every other member gets
    ``is_entry`` False, ``duplicate_of`` = the representative's frame id and
    novelty "duplicate".  Representatives are classified against
    ``reference_atoms`` (default: the shipped reference phases of the table's
    elements) and the table's rows of origin "reference": "duplicate" (a known
    phase), "substitution" (a known prototype with other elements) or "novel".

    With ``cache`` (a folder), each structure's reduction for the matcher is kept there by frame
    id (:class:`~nodestore.chem.matcher.PreparedCache`) and read back next time, so a loop that
    classifies its node every iteration reduces each entry once.  ``keep_spacegroups`` keeps the
    space group of rows that have one (the loop's curation; the ``classify`` verb recomputes).
    Chemical validity depends on the composition only and is computed once per formula.
    ``settled`` (a boolean per table row): rows known to be distinct entries already (the node's
    entries before an iteration); see ``Matcher.dedup``.
    ``priority`` (a number per table row, lower first): ordered before the energy, so that, for
    example, a crystal's first-principles label represents it rather than a force field's
    prediction of the same crystal (whose E_hull, on another method's hull, may be lower).

    Returns ``(keys, columns)``: row keys (every method's row of each frame)
    and a dict of mutable column values, ready for ``table.annotate(keys, columns)``.
    """
    from .matcher import Matcher, PreparedCache
    from .novelty import chemically_valid, classify

    p = dict(CLASSIFY_DEFAULTS, **(params or {}))
    unknown = set(p) - set(CLASSIFY_DEFAULTS)
    if unknown:
        raise ValidationError(f"unknown classify parameter(s): {', '.join(sorted(unknown))}"
                              f" (known: {', '.join(CLASSIFY_DEFAULTS)})")
    picked = _one_row_per_frame(table, rows)
    if len(picked) == 0:
        return [], {}
    e_hull = table.column("e_hull")[picked]
    e_atom = table.column("energy")[picked] / np.maximum(table.column("n_atoms")[picked], 1)
    key1 = np.where(np.isfinite(e_hull), e_hull, np.inf)
    key2 = np.where(np.isfinite(e_atom), e_atom, np.inf)
    key0 = np.zeros(len(picked)) if priority is None else np.asarray(priority, dtype=float)[picked]
    order = np.lexsort((np.arange(len(picked)), key2, key1, key0))
    ordered = picked[order]
    loaded: dict[int, object] = {}

    def structures(pos) -> list:  # the structures at positions ``pos`` of ``ordered``, each read once
        need = [int(i) for i in pos if int(i) not in loaded]
        if need:
            loaded.update(zip(need, table.structures(ordered[need])))
        return [loaded[int(i)] for i in pos]

    matcher = Matcher(ltol=p["ltol"], stol=p["stol"], angle_tol=p["angle_tol"])
    all_pos = np.arange(len(ordered))
    if cache is not None:
        frame_ids = table.column("frame_id")[ordered].astype(str).tolist()
        prepared = PreparedCache(cache).prepare(matcher, frame_ids, structures)
    else:
        prepared = matcher.prepare(structures(all_pos))
    rep = matcher.dedup(prepared, settled=None if settled is None else np.asarray(settled, dtype=bool)[ordered])

    origin = table.column("origin")
    if reference_atoms is None:
        from .hull import reference_structures

        elements = {el for f in set(table.column("formula")[ordered]) for el in _elements(f)}
        reference_atoms = reference_structures(elements)
    known = list(reference_atoms)
    ref_rows = [i for i, r in enumerate(ordered) if origin[r] == "reference"]
    known_prepared = matcher.prepare(known) + [prepared[i] for i in ref_rows]
    is_rep = rep < 0
    rep_idx = np.nonzero(is_rep)[0]
    nov = classify([prepared[i] for i in rep_idx], known=known_prepared, matcher=matcher, dedup_batch=False)

    ids = table.column("frame_id")
    n = len(ordered)
    novelty = np.array(["duplicate"] * n, dtype=object)
    novelty[rep_idx] = nov.classes
    duplicate_of = np.array([""] * n, dtype=object)
    for i in np.nonzero(~is_rep)[0]:
        duplicate_of[i] = ids[ordered[rep[i]]]
    formulas = np.array([pp.reduced_formula for pp in prepared], dtype=object)
    uniq, inverse = np.unique(formulas.astype(str), return_inverse=True)
    valid = chemically_valid(list(uniq)).astype(np.int8)[inverse]
    spg = table.column("spacegroup")[ordered].astype(np.int16) if keep_spacegroups else np.zeros(len(ordered), np.int16)
    todo = np.nonzero(spg <= 0)[0]
    if len(todo):
        spg[todo] = _spacegroups(structures(todo), p["symprec"])
    fingerprint = [pp.fingerprint for pp in prepared]

    # spread the values to every row (every method) of each frame
    pos_of_frame = {ids[r]: i for i, r in enumerate(ordered)}
    all_keys = table.row_keys()
    keys, take = [], []
    for r, f in enumerate(ids):
        if f in pos_of_frame:
            keys.append(all_keys[r])
            take.append(pos_of_frame[f])
    take = np.array(take, dtype=np.int64)
    columns = {
        "is_entry": is_rep[take],
        "duplicate_of": duplicate_of[take],
        "novelty": novelty[take],
        "chemically_valid": valid[take],
        "spacegroup": np.asarray(spg, dtype=np.int16)[take],
        "fingerprint": np.asarray(fingerprint, dtype=object)[take],
    }
    return keys, columns


def _elements(formula: str) -> list[str]:
    from pymatgen.core import Composition

    return [el.symbol for el in Composition(formula).elements] if formula else []


def _spacegroups(structures, symprec: float) -> list[int]:
    import spglib

    out = []
    for s in structures:
        cell = (s.lattice.matrix, s.frac_coords, s.atomic_numbers)
        try:
            data = spglib.get_symmetry_dataset(cell, symprec=symprec)
            out.append(int(data.number) if data is not None else 0)
        except Exception:  # spglib gives up on some cells: unknown
            out.append(0)
    return out


# -- entropy and S.U.N. ----------------------------------------------------------
def entropy_report(table, rows=None, reference_rows=None, diversity: bool = True, cache=None, **kw) -> dict:
    """Local-environment entropy of the frames ``rows`` (default: all, one row per frame).

    With ``cache`` (a folder), the result is kept there under a key of the frame ids and
    the parameters, and reused when the same set of configurations comes again (a loop
    iteration's "after" is the next one's "before").

    Returns ``{"H", "n_atoms", "per_element", "atoms_per_element"}`` (nats);
    with ``reference_rows``, also ``"delta"``: dH of the ``rows`` environments
    against those of ``reference_rows`` (mean, max, fraction_new).
    """
    from .entropy import entropy_report as _report

    picked = _one_row_per_frame(table, rows)
    # canonical order (by frame id): H depends only on the set of configurations, and a
    # cached value keyed by that set is then exactly what a fresh computation would give
    ids = table.column("frame_id")[picked].astype(str)
    order = np.argsort(ids, kind="stable")
    picked, ids = picked[order], ids[order]
    path = out = None
    if cache is not None:
        import hashlib

        key = hashlib.sha256(json.dumps([ids.tolist(), bool(diversity), sorted(kw.items())],
                                        default=str).encode()).hexdigest()[:32]
        path = Path(cache) / f"entropy-{key}.json"
        if path.exists():
            out = json.loads(path.read_text())
    if out is None:
        sample = _frames_for_environments(table, picked, ids)
        images = table.to_atoms(sample) if len(sample) else []
        out = _report(images, diversity=diversity, **kw).as_dict()
        if len(sample) < len(picked):
            out["sampled_frames"] = int(len(sample))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(out))
            tmp.replace(path)
    if reference_rows is not None:
        out["delta"] = delta_report(table, rows, reference_rows, **kw)
    return out


def _frames_for_environments(table, rows: np.ndarray, ids: np.ndarray, factor: float = 1.5) -> np.ndarray:
    """``rows``, or a random subset of them whose atoms number about ``factor`` times the
    environments an entropy is estimated on (``entropy.MAX_ENVIRONMENTS``): the descriptors of a
    large node are then never computed for every atom only to be subsampled (time and memory
    would grow with the node).  The draw is seeded by the frame ids, so one set of frames always
    gives the same sample."""
    import hashlib

    from .entropy import MAX_ENVIRONMENTS

    n_atoms = table.column("n_atoms")[rows]
    limit = int(factor * MAX_ENVIRONMENTS)
    if n_atoms.sum() <= limit:
        return rows
    seed = int.from_bytes(hashlib.sha256("\n".join(ids.tolist()).encode()).digest()[:8], "little")
    order = np.random.default_rng(seed).permutation(len(rows))
    keep = order[: int(np.searchsorted(np.cumsum(n_atoms[order]), limit)) + 1]
    return rows[np.sort(keep)]


def delta_report(table, rows, reference_rows, **kw) -> dict:
    """dH of the environments of the frames ``rows`` against those of ``reference_rows`` only
    (mean, max, fraction_new), without the entropy of either set."""
    from .entropy import delta_entropy

    picked = _one_row_per_frame(table, rows)
    ref = _one_row_per_frame(table, reference_rows)
    ref = _frames_for_environments(table, ref, table.column("frame_id")[ref].astype(str))
    images = table.to_atoms(picked) if len(picked) else []
    ref_images = table.to_atoms(ref) if len(ref) else []
    return delta_entropy(images, ref_images, **kw).as_dict()


def sun_counts(table, threshold: float = 0.1, method: str | None = None) -> dict:
    """S.U.N. counts over the table's entries' E_hull (see :func:`nodestore.chem.curate.sun_counts`).

    One row per frame is counted: the row of ``method`` if given, else the
    first row with an E_hull.  Unique: ``is_entry`` and no ``duplicate_of``.
    """
    from .curate import sun_counts as _counts

    e_hull = table.column("e_hull")
    methods = table.column("method")
    ids = table.column("frame_id")
    chosen: dict[str, int] = {}
    for r in range(len(ids)):
        if method is not None and methods[r] != method:
            continue
        f = ids[r]
        if f not in chosen or (not np.isfinite(e_hull[chosen[f]]) and np.isfinite(e_hull[r])):
            chosen[f] = r
    rows = np.array(sorted(chosen.values()), dtype=np.int64)
    unique = table.column("is_entry")[rows] & (table.column("duplicate_of")[rows] == "")
    return _counts(e_hull[rows], unique, table.column("novelty")[rows], threshold)


# -- query ---------------------------------------------------------------------
#: columns a query may name (per-frame scalars) and derived names
QUERY_COLUMNS = ("frame_id", "energy", "method", "checkpoint", "origin", "iteration", "parent_id", "source",
                 "relax_step", "formula", "n_atoms", "spacegroup", "fingerprint", "is_entry", "duplicate_of", "e_form",
                 "e_hull", "novelty", "chemically_valid")
DERIVED = {
    "energy_per_atom": lambda col: col("energy") / np.maximum(col("n_atoms"), 1),
    "novel": lambda col: col("novelty") == "novel",
    "duplicate": lambda col: col("novelty") == "duplicate",
    "substitution": lambda col: col("novelty") == "substitution",
    "unique": lambda col: col("is_entry") & (col("duplicate_of") == ""),
    "valid": lambda col: col("chemically_valid") == 1,
}
_CMP = {ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
        ast.Gt: np.greater, ast.GtE: np.greater_equal}


MAX_QUERY = 4000  # characters
MAX_QUERY_DEPTH = 100  # nested operations


def _depth(tree) -> int:
    """Nesting depth of an AST, without recursion."""
    best, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        if d > MAX_QUERY_DEPTH:
            return d
        stack.extend((c, d + 1) for c in ast.iter_child_nodes(node))
    return best


def query_names(expr: str) -> set[str]:
    """The column names an (unchecked) expression names; empty when it does not parse."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def parse_query(expr: str, names: Sequence[str] = ()) -> ast.Expression:
    """Parse and check a query (``names``: extra columns it may name besides the table's);
    raise ValidationError naming what is not allowed."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValidationError("empty query")
    if len(expr) > MAX_QUERY:
        raise ValidationError(f"query of {len(expr)} characters (at most {MAX_QUERY})")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValidationError(f"bad query {expr[:60]!r}: {exc.msg}") from None
    except (MemoryError, RecursionError):
        raise ValidationError(f"bad query {expr[:60]!r}...: nested too deeply") from None
    depth = _depth(tree)
    if depth > MAX_QUERY_DEPTH:
        raise ValidationError(f"bad query {expr[:60]!r}...: nested {depth} deep (at most {MAX_QUERY_DEPTH})")
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
               ast.Compare, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple, ast.In, ast.NotIn,
               *_CMP)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            what = type(node).__name__
            raise ValidationError(
                f"bad query {expr!r}: {what} is not allowed (use comparisons of columns with "
                "constants, 'in [...]', and/or/not)")
        if isinstance(node, ast.Name) and node.id not in QUERY_COLUMNS and node.id not in DERIVED \
                and node.id not in names and node.id not in ("true", "false", "nan"):
            raise ValidationError(f"bad query {expr!r}: unknown column {node.id!r} "
                                  f"(columns: {', '.join(QUERY_COLUMNS + tuple(DERIVED) + tuple(sorted(names)))})")
        if isinstance(node, (ast.List, ast.Tuple)):
            for elt in node.elts:
                if not isinstance(elt, ast.Constant) and not (
                        isinstance(elt, ast.UnaryOp) and isinstance(elt.operand, ast.Constant)):
                    raise ValidationError(f"bad query {expr!r}: lists may hold constants only")
        if isinstance(node, ast.Compare):
            for op, right in zip(node.ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)) and not isinstance(right, (ast.List, ast.Tuple)):
                    raise ValidationError(f"bad query {expr!r}: 'in' needs a list of constants")
    return tree


def query(table, expr: str, extra: dict | None = None) -> np.ndarray:
    """Row indices where the expression holds, e.g. ``"e_hull < 0.05 and novelty == 'novel'"``.

    Allowed: per-frame column names (and ``energy_per_atom``, ``novel``,
    ``duplicate``, ``substitution``, ``unique``, ``valid``), constants,
    comparisons (chained too), ``in``/``not in`` a list of constants,
    ``and``/``or``/``not``.  Nothing is evaluated as Python code.  NaN compares
    false, as in numpy.  ``extra`` adds columns (``{name: array of len(table)}``), such as the
    node's stored analyses.
    """
    extra = dict(extra or {})
    for name, arr in extra.items():
        if len(arr) != len(table):
            raise ValueError(f"extra column {name!r} has {len(arr)} rows, the table {len(table)}")
    tree = parse_query(expr, tuple(extra))
    cache: dict[str, np.ndarray] = dict(extra)
    n = len(table)

    def col(name):
        if name not in cache:
            cache[name] = table.column(name)
        return cache[name]

    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in ("true", "false"):
                return node.id == "true"
            if node.id == "nan":
                return float("nan")
            if node.id in DERIVED:
                return DERIVED[node.id](col)
            return col(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            if isinstance(v, (str, bytes, list)) or (isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind not in "iuf"):
                raise ValidationError(f"bad query {expr!r}: a sign before {ast.unparse(node.operand)!r}, "
                                      "which is not a number")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(e) for e in node.elts]
        return truth(node)

    def truth(node):
        if isinstance(node, ast.BoolOp):
            parts = [truth(v) for v in node.values]
            out = parts[0]
            for p in parts[1:]:
                out = (out & p) if isinstance(node.op, ast.And) else (out | p)
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~truth(node.operand)
        if isinstance(node, ast.Compare):
            out = np.ones(n, dtype=bool)
            left = value(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = value(right_node)
                try:
                    if isinstance(op, (ast.In, ast.NotIn)):
                        arr = np.asarray(left, dtype=object)
                        hit = np.array([v in right for v in arr], dtype=bool) if arr.ndim else \
                            np.full(n, arr.item() in right)
                        res = hit if isinstance(op, ast.In) else ~hit
                    else:
                        res = np.asarray(_CMP[type(op)](left, right), dtype=bool)
                except TypeError as exc:
                    raise ValidationError(f"bad query {expr!r}: cannot compare: {exc}") from None
                out &= np.broadcast_to(res, (n,))
                left = right
            return out
        v = value(node)
        arr = np.asarray(v)
        if arr.dtype != bool:
            raise ValidationError(f"bad query {expr!r}: {ast.unparse(node)!r} is not a condition")
        return np.broadcast_to(arr, (n,)).copy()

    mask = truth(tree.body)
    return np.nonzero(mask)[0]
