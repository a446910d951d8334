"""File formats in one table (like ``ase.io.formats``), readers and writers.

Readers return a list of ASE Atoms carrying their labels (a
SinglePointCalculator) and any metadata in ``atoms.info``.  Every problem with
a file becomes a ValidationError naming the file (and frame, where known).
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nodestore.errors import ValidationError


@dataclass(frozen=True)
class Format:
    name: str
    extensions: tuple[str, ...]
    read: Callable[[Path], list]
    description: str
    names: tuple[str, ...] = ()  # exact file names (POSCAR, CONTCAR)


def _ase_read(fmt: str):
    def read(path: Path) -> list:
        from ase.io import read as ase_read

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images = ase_read(str(path), index=":", format=fmt)
        return images if isinstance(images, list) else [images]

    return read


_CIF_LENGTH = re.compile(r"^\s*_cell_length_([abc])\s+(\S+)", re.MULTILINE)


def _read_cif(path: Path) -> list:
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="replace")
    for axis, value in _CIF_LENGTH.findall(text):
        try:
            length = float(value.split("(")[0])
        except ValueError:
            raise ValidationError(f"{path}: _cell_length_{axis} {value!r} is not a number") from None
        if not length > 0 or not np.isfinite(length):
            raise ValidationError(f"{path}: _cell_length_{axis} is {value}: a cell length must be a positive, finite number")
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark: ASE's reader wants plain text
        import io

        from ase.io import read as ase_read

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images = ase_read(io.StringIO(text), index=":", format="cif")
        images = images if isinstance(images, list) else [images]
    else:
        images = _ase_read("cif")(path)
    for i, a in enumerate(images):
        for site, occ in (a.info.get("occupancy") or {}).items():
            for sym, x in (occ or {}).items():
                try:
                    x = float(x)
                except (TypeError, ValueError):
                    x = float("nan")
                if not (0 < x <= 1 + 1e-6):
                    raise ValidationError(f"{path} frame {i}: occupancy {x} of {sym} at site {site} is not in (0, 1]")
    for a in images:
        # ASE keeps CIF occupancies in info; they are not frame metadata
        for k in [k for k in a.info if k not in ("method", "origin", "source")]:
            del a.info[k]
    return images


def _check_poscar_counts(path: Path) -> None:
    """The atom counts of a POSCAR against the hard limit and the lines that follow them."""
    from .validate import MAX_ATOMS

    with open(path, "rt", errors="replace") as fh:
        lines = fh.read().splitlines()
    for i in (5, 6):  # VASP 5 has a line of symbols before the counts
        if i >= len(lines):
            return
        words = lines[i].split()
        if words and all(w.lstrip("-").isdigit() for w in words):
            counts = [int(w) for w in words]
            if any(c < 0 for c in counts) or sum(counts) > MAX_ATOMS:
                raise ValidationError(f"{path}: atom counts {counts} (each at least 0, at most {MAX_ATOMS} in all)")
            if sum(counts) > len(lines) - i - 1:
                raise ValidationError(f"{path}: says {sum(counts)} atoms but only {len(lines) - i - 1} lines follow")
            return


def _read_vasp(path: Path) -> list:
    _check_poscar_counts(path)
    return _ase_read("vasp")(path)


def _check_xyz_counts(path: Path) -> None:
    """Every frame's atom-count line against the lines the file holds (before a parser trusts it)."""
    from .validate import MAX_ATOMS

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", errors="replace") as fh:
        total = sum(1 for _ in fh)
    with opener(path, "rt", errors="replace") as fh:
        line_no, frame = 0, 0
        for line in fh:
            line_no += 1
            if not line.strip():
                continue
            try:
                n = int(line.split()[0])
            except ValueError:
                raise ValidationError(f"{path}: line {line_no}: expected the atom count of frame {frame}, "
                                      f"got {line.strip()[:40]!r}") from None
            if n < 0 or n > MAX_ATOMS:
                raise ValidationError(f"{path} frame {frame}: {n} atoms (at most {MAX_ATOMS} per frame)")
            if n + 1 > total - line_no:
                raise ValidationError(f"{path} frame {frame}: says {n} atoms but only {total - line_no - 1} "
                                      "lines follow")
            for _ in range(n + 1):
                next(fh)
            line_no += n + 1
            frame += 1


def _read_extxyz(path: Path) -> list:
    from ase.calculators.singlepoint import SinglePointCalculator

    _check_xyz_counts(path)
    images = _ase_read("extxyz")(path)
    out = []
    for a in images:
        results = dict(a.calc.results) if a.calc is not None else {}
        for key in ("energy", "free_energy"):
            if key in a.info and "energy" not in results:
                try:
                    results["energy"] = float(a.info.pop(key))
                except (TypeError, ValueError):
                    raise ValidationError(f"{path}: {key}= is not a number") from None
        if "forces" in a.arrays and "forces" not in results:
            results["forces"] = a.arrays.pop("forces")
        if "stress" in a.info and "stress" not in results:
            results["stress"] = np.asarray(a.info.pop("stress"), dtype=float)
        keep = {k: a.info[k] for k in ("method", "origin", "iteration", "parent_id", "source") if k in a.info}
        a.info.clear()
        a.info.update(keep)
        a.calc = SinglePointCalculator(a, **results) if results else None
        out.append(a)
    return out


def _read_ase_db(path: Path) -> list:
    from ase.db import connect

    out = []
    with connect(str(path)) as db:
        for row in db.select():
            atoms = row.toatoms(add_additional_information=False)
            out.append(atoms)
    return out


def _read_pymatgen_json(path: Path) -> list:
    """A pymatgen Structure, ComputedStructureEntry, or a list of them."""
    from pymatgen.io.ase import AseAtomsAdaptor

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path}: not valid JSON ({exc})") from None
    docs = doc if isinstance(doc, list) else [doc]
    out = []
    for i, d in enumerate(docs):
        out.append(_pmg_doc_to_atoms(d, path, i, AseAtomsAdaptor))
    return out


def _pmg_doc_to_atoms(d, path, i, adaptor):
    from ase.calculators.singlepoint import SinglePointCalculator

    if not isinstance(d, dict) or "@class" not in d:
        raise ValidationError(f"{path}: item {i} is not a pymatgen object (no '@class')")
    cls = d["@class"]
    # pymatgen objects are rebuilt with from_dict; nothing is unpickled or executed
    if cls in ("Structure", "IStructure"):
        from pymatgen.core import Structure

        return adaptor.get_atoms(Structure.from_dict(d))
    if cls in ("ComputedStructureEntry",):
        from pymatgen.entries.computed_entries import ComputedStructureEntry

        entry = ComputedStructureEntry.from_dict(d)
        atoms = adaptor.get_atoms(entry.structure)
        atoms.calc = SinglePointCalculator(atoms, energy=float(entry.uncorrected_energy))
        return atoms
    raise ValidationError(f"{path}: item {i} is a {cls}; expected Structure or ComputedStructureEntry")


FORMATS: tuple[Format, ...] = (
    Format("cif", (".cif",), _read_cif, "Crystallographic Information File"),
    Format("vasp", (".poscar", ".vasp", ".contcar"), _read_vasp, "VASP POSCAR/CONTCAR",
           names=("POSCAR", "CONTCAR")),
    Format("extxyz", (".xyz", ".extxyz"), _read_extxyz, "extended XYZ with energy, forces, stress"),
    Format("ase-db", (".db",), _read_ase_db, "ASE database (SQLite)"),
    Format("pymatgen-json", (".json", ".json.gz"), _read_pymatgen_json,
           "pymatgen Structure / ComputedStructureEntry JSON"),
)
BY_FORMAT = {f.name: f for f in FORMATS}


def detect_format(path: Path) -> Format:
    path = Path(path)
    name = path.name
    for fmt in FORMATS:
        if name.upper() in fmt.names or any(name.upper().startswith(n + "_") for n in fmt.names):
            return fmt
    lower = name.lower()
    for fmt in FORMATS:
        if any(lower.endswith(ext) for ext in fmt.extensions):
            return fmt
    known = ", ".join(e for f in FORMATS for e in f.extensions)
    raise ValidationError(f"{path}: unknown structure format (known: {known}, POSCAR, CONTCAR)")


def read_file(path, format: str | None = None) -> list:
    """Read every frame of one file as ASE Atoms, or raise ValidationError."""
    path = Path(path)
    if not path.exists():
        raise ValidationError(f"{path}: no such file")
    fmt = BY_FORMAT[format] if format else detect_format(path)
    try:
        images = fmt.read(path)
    except ValidationError:
        raise
    except (MemoryError, RecursionError):
        raise ValidationError(f"{path}: cannot read as {fmt.name}: the file asks for more than can be built") from None
    except Exception as exc:  # parsers raise anything; the user gets one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValidationError(f"{path}: cannot read as {fmt.name}: {msg}") from None
    if not images:
        raise ValidationError(f"{path}: no structures found")
    from .validate import check_geometry

    for i, a in enumerate(images):
        check_geometry(a.numbers, a.positions, np.asarray(a.cell), a.pbc, f"{path} frame {i}")
        _check_labels(a, f"{path} frame {i}")
        a.info.setdefault("source", path.name)
    return images


def _check_labels(atoms, where: str) -> None:
    """A label the file gives must be a finite number: the table reads NaN as "not labelled",
    so a NaN energy (or forces, or stress) would otherwise enter as a frame without labels."""
    results = getattr(atoms.calc, "results", None) or {}
    for key in ("energy", "free_energy", "forces", "stress"):
        if key in results and results[key] is not None:
            name = "energy" if key == "free_energy" else key
            try:
                value = np.asarray(results[key], dtype=float)
            except (TypeError, ValueError):
                raise ValidationError(f"{where}: {name} is not a number ({str(results[key])[:40]!r})") from None
            if not np.isfinite(value).all():
                raise ValidationError(f"{where}: {name} is not a finite number")


# -- export ----------------------------------------------------------------

EXPORTS = ("extxyz", "cif", "csv", "json")

TABLE_COLUMNS = ("frame_id", "formula", "n_atoms", "method", "energy", "origin", "iteration", "spacegroup",
                 "is_entry", "duplicate_of", "e_form", "e_hull", "novelty", "chemically_valid", "source")


def table_records(batch, columns=TABLE_COLUMNS) -> list[dict]:
    recs = []
    for i in range(len(batch)):
        rec = {}
        for name in columns:
            if name not in batch:
                continue
            v = batch[name][i]
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and not np.isfinite(v):
                v = None
            rec[name] = v
        recs.append(rec)
    return recs


def write_frames(batch, path, format: str) -> None:
    """Write a FrameBatch to ``path`` as extxyz, cif, csv or json."""
    from ase.io import write as ase_write

    path = Path(path)
    if format == "extxyz":
        images = batch.to_atoms()
        for a in images:
            for k in list(a.info):
                v = a.info[k]
                if isinstance(v, float) and not np.isfinite(v):
                    del a.info[k]
        ase_write(str(path), images, format="extxyz")
    elif format == "cif":
        ase_write(str(path), batch.to_atoms(), format="cif")
    elif format == "csv":
        import csv

        recs = table_records(batch)
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[c for c in TABLE_COLUMNS if c in batch])
            w.writeheader()
            w.writerows(recs)
    elif format == "json":
        path.write_text(json.dumps(table_records(batch), indent=1) + "\n")
    else:
        raise ValidationError(f"unknown export format {format!r} (known: {', '.join(EXPORTS)})")
