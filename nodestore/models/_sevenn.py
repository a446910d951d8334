"""SevenNet backend: equivariant force fields whose pretrained weights ship inside the wheel.

``SevennetForceField("7net-0")`` builds the module from the checkpoint in the
installed ``sevenn`` package (``7net-0``, ``7net-l3i5``; ``7net-mf-0`` needs a
``modal``), no network needed.  A nodestore checkpoint stores the state dict
(``model.pt``) and names the pretrained model whose configuration rebuilds the
module, so it loads offline wherever sevenn is installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from nodestore.errors import BackendError
from nodestore.models import _checkpoint as ckpt
from nodestore.models.forcefield import ForceField

WEIGHTS = "model.pt"
PRETRAINED = ("7net-0", "7net-l3i5", "7net-mf-0")
_VOIGT_FROM_SEVENN = [0, 1, 2, 4, 5, 3]  # sevenn (xx yy zz xy yz zx) -> ASE Voigt (xx yy zz yz xz xy)


def _build(pretrained: str):
    import sevenn.util as util

    if pretrained not in PRETRAINED:
        raise BackendError(f"unknown SevenNet pretrained model {pretrained!r} (known: {', '.join(PRETRAINED)})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cp = util.load_checkpoint(pretrained)
        except (FileNotFoundError, ValueError) as exc:
            raise BackendError(f"no SevenNet weights {pretrained!r} in the sevenn wheel: {exc}") from exc
        model = cp.build_model()
    return model, cp.config


class SevennetForceField(ForceField):
    """SevenNet (Park et al. 2024) behind the ForceField protocol.

    Energies are total (eV), forces eV/A, stresses Voigt eV/A^3 with ASE's sign.
    Conservative: forces and stress are gradients of the energy.
    """

    backend = "sevenn"
    supports_stress = True
    supports_batch = True
    default_batch_size = 32  # small cells: 1.7x faster per relaxation step than 8 on 2 cores
    #: modules that fine-tuning with a frozen backbone trains: the readout and the per-element scale/shift
    head_modules = ("reduce_input_to_hidden", "reduce_hidden_to_energy", "rescale_atomic_energy")

    def __init__(self, pretrained: str = "7net-0", *, modal: str | None = None, device: str = "cpu",
                 batch_size: int | None = None, _model=None, _config=None):
        model, config = (_model, _config) if _model is not None else _build(pretrained)
        if model.modal_map and not modal:
            raise BackendError(f"SevenNet {pretrained!r} is multi-fidelity: give modal= one of {sorted(model.modal_map)}")
        super().__init__({"name": pretrained,
                          "config": {"pretrained": pretrained, "modal": modal,
                                     "cutoff": float(config["cutoff"])}},
                         batch_size=batch_size)
        self.pretrained = pretrained
        self.modal = modal
        self.cutoff = float(config["cutoff"])
        self.device = device
        self.model = model.to(device).eval()
        self.model.set_is_batch_data(True)
        self._known = set(int(z) for z in self.model.type_map)

    # -- graphs
    def _batch(self, atoms_list, cache: dict | None = None):
        """One torch_geometric batch of the frames' graphs; ``cache`` (content key -> graph) keeps the
        graphs of frames seen before (training visits the same frames every epoch: ~7% of a step)."""
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.data import Batch

        import sevenn._keys as KEY

        data = []
        for a in atoms_list:
            unknown = set(int(z) for z in a.numbers) - self._known
            if unknown:
                raise BackendError(f"SevenNet {self.pretrained} has no parameters for atomic numbers {sorted(unknown)}")
            key = _content_key(a) if cache is not None else None
            d = cache.get(key) if key is not None else None
            if d is None:
                d = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(a, self.cutoff))
                if self.modal:
                    d[KEY.DATA_MODALITY] = self.modal
                if key is not None and len(cache) < _GRAPH_CACHE_SIZE:
                    cache[key] = d
            data.append(d)
        dtype = next(self.model.parameters()).dtype
        batch = Batch.from_data_list(data).to(self.device)
        for key in (KEY.POS, KEY.EDGE_VEC, KEY.CELL_VOLUME):
            if key in batch:
                batch[key] = batch[key].to(dtype)
        return batch

    def _forward(self, atoms_list, cache: dict | None = None):
        import sevenn._keys as KEY

        out = self.model(self._batch(atoms_list, cache))
        return out[KEY.PRED_TOTAL_ENERGY], out[KEY.PRED_FORCE], out[KEY.PRED_STRESS], out[KEY.BATCH]

    def _predict_batch(self, atoms_list):
        energy, forces, stress, batch = self._forward(atoms_list)
        energy = energy.detach().cpu().numpy().reshape(-1)
        forces = forces.detach().cpu().numpy()
        stress = -stress.detach().cpu().numpy()[:, _VOIGT_FROM_SEVENN]
        owner = batch.detach().cpu().numpy()
        return [{"energy": float(energy[i]), "forces": forces[owner == i], "stress": stress[i]}
                for i in range(len(atoms_list))]

    # -- training
    def _module(self):
        return self.model

    def _loss(self, frames, weights):
        import torch

        energy, forces, stress, _ = self._forward(frames, self.__dict__.setdefault("_graphs", {}))
        dtype = energy.dtype
        n = torch.tensor([len(a) for a in frames], dtype=dtype)
        e_true = torch.tensor([a.info["_energy"] for a in frames], dtype=dtype)
        loss = weights["energy"] * torch.mean(((energy.reshape(-1) - e_true) / n) ** 2)
        f_true = torch.tensor(np.concatenate([a.arrays["_forces"] for a in frames]), dtype=dtype)
        loss = loss + weights["forces"] * torch.mean((forces - f_true) ** 2)
        if weights.get("stress"):
            from nodestore.models.forcefield import stress_loss

            loss = loss + weights["stress"] * stress_loss(-stress[:, _VOIGT_FROM_SEVENN], frames)
        return loss

    def _after_training(self):
        self.__dict__.pop("_graphs", None)

    def _save_files(self, directory):
        import torch
        torch.save(_weights(self.model.state_dict()), Path(directory) / WEIGHTS)

    @classmethod
    def _from_files(cls, directory, meta):
        arch = meta["architecture"]
        cfg = arch.get("config", {})
        if cfg.get("pretrained") not in PRETRAINED:
            raise BackendError(f"{directory}: architecture {arch['name']!r} is not a SevenNet architecture")
        model, config = _build(cfg["pretrained"])
        state = ckpt.load_weights(Path(directory) / WEIGHTS)
        try:
            missing, _ = model.load_state_dict(_weights(state), strict=False)
            missing = [k for k in missing if not _is_codegen_constant(k)]
            unexpected = sorted(set(_weights(state)) - set(model.state_dict()))
            if missing or unexpected:
                raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        except RuntimeError as exc:
            raise BackendError(f"{directory}: weights do not fit architecture {arch['name']!r}: {exc}") from exc
        return cls(cfg["pretrained"], modal=cfg.get("modal"), _model=model, _config=config)


_GRAPH_CACHE_SIZE = 4096


def _content_key(atoms) -> bytes:
    """What a graph depends on: numbers, positions, cell, pbc (bytes, exact)."""
    return b"|".join((np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes(),
                      np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes(),
                      np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes(),
                      np.asarray(atoms.pbc, dtype=bool).tobytes()))


def _is_codegen_constant(key: str) -> bool:
    """e3nn's generated code registers constant buffers on its first call: not weights."""
    return "._compiled_main" in key and "_tensor_constant" in key


def _weights(state: dict) -> dict:
    return {k: v for k, v in state.items() if not _is_codegen_constant(k)}
