"""A classical force field behind the same protocol: Morse pairs per element pair, in torch.

``PairForceField()`` needs no weights and no download.  Every pair of elements starts as a Morse
well whose minimum sits at ``scale`` times the sum of the two covalent radii (ASE's table; the
default 1.2 keeps the cells of Li-P-S phases near their volume), of depth ``depth`` eV
and width ``width`` 1/A, tapered to zero over the last ``taper`` A before ``cutoff``.  The well
positions, depths and widths of every element pair are its parameters, so it fine-tunes like the
machine-learned backends (same recipe, same reference energies, same checkpoints).

It is conservative (forces and stress are exact gradients of the energy) and batched: a batch is
one torch evaluation over all its pairs, with neighbour lists from matscipy's C code (ASE's when
matscipy is missing or a structure is not periodic).  About a thousand times cheaper than a graph
network per atom, it is the stand-in that the scale bench (``bench/loop_scale.py``) and the tests
use when what they measure is nodestore's own machinery, not a model.  It is not a physical model
of any chemistry.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nodestore.errors import BackendError
from nodestore.models import _checkpoint as ckpt
from nodestore.models.forcefield import ForceField

WEIGHTS = "model.pt"
ARCH = "morse-pairs"
ZMAX = 119
_VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])


def _module(cutoff: float, taper: float, depth: float, width: float, scale: float):
    import torch
    from ase.data import covalent_radii

    class MorsePairs(torch.nn.Module):
        """Per element pair (Z_i, Z_j): ``D [(1 - exp(-a (r - r0)))^2 - 1]``, smoothly cut off."""

        def __init__(self):
            super().__init__()
            r = torch.tensor(np.asarray(covalent_radii[:ZMAX], dtype=float))
            self.r0 = torch.nn.Parameter(scale * (r[:, None] + r[None, :]))
            self.log_depth = torch.nn.Parameter(torch.full((ZMAX, ZMAX), math.log(depth), dtype=torch.float64))
            self.log_width = torch.nn.Parameter(torch.full((ZMAX, ZMAX), math.log(width), dtype=torch.float64))
            self.cutoff, self.taper = float(cutoff), float(taper)

        def pair_energy(self, zi, zj, r):
            def sym(table):  # the (i, j) and (j, i) entries are one parameter pair: symmetric use
                return 0.5 * (table[zi, zj] + table[zj, zi])

            d, a, r0 = torch.exp(sym(self.log_depth)), torch.exp(sym(self.log_width)), sym(self.r0)
            x = torch.exp(-a * (r - r0))
            e = d * ((1.0 - x) ** 2 - 1.0)
            start = self.cutoff - self.taper
            t = torch.clamp((r - start) / self.taper, 0.0, 1.0)
            return e * 0.5 * (1.0 + torch.cos(math.pi * t))

    return MorsePairs()


def _pairs(atoms, cutoff: float):
    """(i, j, D): every ordered pair closer than ``cutoff`` and its vector ``x_j - x_i`` (images included)."""
    from nodestore.frames.neighbours import neighbour_list

    return neighbour_list("ijD", atoms, cutoff)


class PairForceField(ForceField):
    """Morse pairs per element pair (a classical, trainable force field; see the module doc)."""

    backend = "pair"
    supports_stress = True
    supports_batch = True
    default_batch_size = 512
    head_modules = ()

    def __init__(self, cutoff: float = 5.0, taper: float = 1.0, depth: float = 0.2, width: float = 2.0,
                 scale: float = 1.2, *, batch_size: int | None = None, _model=None):
        if not (cutoff > taper > 0 and depth > 0 and width > 0 and scale > 0):
            raise BackendError("the pair force field needs cutoff > taper > 0, and depth, width and scale > 0")
        config = {"cutoff": float(cutoff), "taper": float(taper), "depth": float(depth), "width": float(width),
                  "scale": float(scale)}
        super().__init__({"name": ARCH, "config": config}, batch_size=batch_size)
        self.model = _model if _model is not None else _module(**config)
        self.model.eval()

    # -- the evaluation shared by prediction and training
    def _evaluate(self, atoms_list, create_graph: bool):
        import torch

        cutoff = self.model.cutoff
        lists = [_pairs(a, cutoff) for a in atoms_list]
        counts = np.array([len(a) for a in atoms_list])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        npairs = np.array([len(p[0]) for p in lists])
        i = torch.from_numpy(np.concatenate([p[0] + s for p, s in zip(lists, starts)]).astype(np.int64))
        j = torch.from_numpy(np.concatenate([p[1] + s for p, s in zip(lists, starts)]).astype(np.int64))
        vec = torch.from_numpy(np.concatenate([p[2] for p in lists]).astype(np.float64)).requires_grad_(True)
        owner = torch.from_numpy(np.repeat(np.arange(len(atoms_list)), npairs))
        z = torch.from_numpy(np.concatenate([a.numbers for a in atoms_list]).astype(np.int64))
        e_pair = 0.5 * self.model.pair_energy(z[i], z[j], vec.norm(dim=1))  # each pair is listed twice
        energy = torch.zeros(len(atoms_list), dtype=torch.float64).index_add(0, owner, e_pair)
        (g,) = torch.autograd.grad(e_pair.sum(), vec, create_graph=create_graph)
        # vec = x_j - x_i (+ image): F_i = -dE/dx_i = sum over pairs from i of g - sum over pairs into i
        forces = torch.zeros((int(counts.sum()), 3), dtype=torch.float64).index_add(0, i, g).index_add(0, j, -g)
        volume = torch.tensor([a.get_volume() if a.pbc.all() else 1.0 for a in atoms_list], dtype=torch.float64)
        virial = torch.zeros((len(atoms_list), 3, 3), dtype=torch.float64).index_add(
            0, owner, g[:, :, None] * vec[:, None, :])
        stress = (virial / volume[:, None, None])[:, _VOIGT[0], _VOIGT[1]]
        return energy, torch.split(forces, counts.tolist()), stress

    # -- protocol
    def _predict_batch(self, atoms_list):
        energy, forces, stress = self._evaluate(atoms_list, create_graph=False)
        out = []
        for k, a in enumerate(atoms_list):
            out.append({"energy": float(energy[k].detach()), "forces": forces[k].detach().numpy().copy(),
                        "stress": stress[k].detach().numpy().copy() if a.pbc.all() else None})
        return out

    def _module(self):
        return self.model

    def _loss(self, frames, weights):
        import torch

        energy, forces, stress = self._evaluate(frames, create_graph=True)
        n = torch.tensor([len(a) for a in frames], dtype=torch.float64)
        e_true = torch.tensor([a.info["_energy"] for a in frames], dtype=torch.float64)
        loss = weights["energy"] * torch.mean(((energy - e_true) / n) ** 2)
        f_true = torch.from_numpy(np.concatenate([a.arrays["_forces"] for a in frames]).astype(np.float64))
        loss = loss + weights["forces"] * torch.mean((torch.cat(forces) - f_true) ** 2)
        if weights.get("stress"):
            from nodestore.models.forcefield import stress_loss

            loss = loss + weights["stress"] * stress_loss(stress, frames)
        return loss

    def _save_files(self, directory):
        import torch

        torch.save(self.model.state_dict(), Path(directory) / WEIGHTS)

    @classmethod
    def _from_files(cls, directory, meta):
        arch = meta["architecture"]
        if arch.get("name") != ARCH:
            raise BackendError(f"{directory}: architecture {arch.get('name')!r} is not {ARCH!r}")
        ff = cls(**arch["config"])
        try:
            ff.model.load_state_dict(ckpt.load_weights(Path(directory) / WEIGHTS))
        except RuntimeError as exc:
            raise BackendError(f"{directory}: weights do not fit architecture {ARCH!r}: {exc}") from exc
        ff.model.eval()
        return ff
