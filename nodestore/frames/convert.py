"""``as_frames``: one way in for Atoms, Structures, files and batches."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .batch import FrameBatch


def as_frames(obj, **defaults) -> FrameBatch:
    """Turn Atoms, pymatgen Structures, paths, or lists of them into a FrameBatch.

    ``defaults`` fill per-frame metadata (``method``, ``origin``, ...) not
    already set in ``atoms.info``.
    """
    if isinstance(obj, FrameBatch):
        return obj
    items = [obj] if not isinstance(obj, (list, tuple)) and not _is_iterable_of_items(obj) else list(obj)
    images = []
    for item in items:
        images.extend(_to_atoms_list(item))
    return FrameBatch.from_atoms(images, **defaults)


def _is_iterable_of_items(obj) -> bool:
    from ase import Atoms

    if isinstance(obj, (str, Path, Atoms)):
        return False
    if type(obj).__name__ in ("Structure", "IStructure", "Molecule"):
        return False
    return isinstance(obj, Iterable)


def _to_atoms_list(item) -> list:
    from ase import Atoms

    if isinstance(item, Atoms):
        return [item]
    if isinstance(item, (str, Path)):
        from .io import read_file

        return read_file(item)
    if type(item).__name__ in ("Structure", "IStructure"):
        from pymatgen.io.ase import AseAtomsAdaptor

        return [AseAtomsAdaptor.get_atoms(item)]
    if type(item).__name__ == "ComputedStructureEntry":
        from ase.calculators.singlepoint import SinglePointCalculator
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(item.structure)
        atoms.calc = SinglePointCalculator(atoms, energy=float(item.uncorrected_energy))
        return [atoms]
    raise TypeError(f"cannot make frames from {type(item).__name__}")
