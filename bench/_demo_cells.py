"""Shared inputs of the force-field benches (allocator.py, relax_overhead.py): the demo's search
and reference phases as cells, and the force field asked for on the command line."""

from __future__ import annotations


def demo_cells(n: int, seed: int) -> list:
    """``n`` seeded candidates of the demo's search (up to 16 atoms) plus the reference phases
    shipped with nodestore, in their primitive cells, without calculators."""
    from nodestore.frames.io import read_file
    from nodestore.loop.actions import primitive
    from nodestore.loop.demo import reference_files, search_generator
    from nodestore.models.registry import from_config

    gen_cfg = search_generator(16, pyxtal_max_atoms=12)
    gen_cfg["elements"] = ["Li", "P", "S"]
    gen = from_config("generator", gen_cfg)
    gen.reseed(seed)
    images = gen.sample(n, conditions={"max_atoms": 16})
    for f in reference_files():
        for a in read_file(f):
            a.calc = None
            images.append(primitive(a))
    return images


def forcefield(backend: str, pretrained: str | None):
    """The force field of ``--backend`` / ``--pretrained``."""
    from nodestore.models.registry import from_config

    cfg = {"backend": backend}
    if pretrained:
        cfg["pretrained"] = pretrained
    return from_config("forcefield", cfg)
