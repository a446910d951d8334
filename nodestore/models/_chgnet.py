"""CHGNet backend: the offline default (pretrained weights ship inside the wheel)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from nodestore.errors import BackendError
from nodestore.models import _checkpoint as ckpt
from nodestore.models.forcefield import ForceField

WEIGHTS = "model.pt"
_GPA = 1.0 / 160.21766208  # GPa -> eV/A^3


def _pretrained_file(version: str) -> Path:
    import chgnet

    folder = Path(chgnet.__file__).parent / "pretrained" / version
    files = sorted(folder.glob("*.pth.tar")) if folder.is_dir() else []
    if not files:
        known = sorted(p.name for p in (Path(chgnet.__file__).parent / "pretrained").iterdir() if p.is_dir())
        raise BackendError(f"no CHGNet pretrained weights {version!r} in the chgnet wheel (have {known})")
    return files[0]


class ChgnetForceField(ForceField):
    """CHGNet (Deng et al. 2023) behind the ForceField protocol.

    ``ChgnetForceField()`` loads the pretrained ``0.3.0`` weights from the
    installed chgnet package, no network needed.  Energies are total (eV),
    stresses Voigt eV/A^3 with ASE's sign.
    """

    backend = "chgnet"
    supports_stress = True
    supports_batch = True
    default_batch_size = 16
    head_modules = ("mlp", "readout_norm", "composition_model")

    def __init__(self, pretrained: str = "0.3.0", *, device: str = "cpu", batch_size: int | None = None,
                 _model=None, _architecture: dict | None = None):
        import torch

        if _model is None:
            from chgnet.model import CHGNet

            state = torch.load(_pretrained_file(pretrained), map_location="cpu", weights_only=True)
            with _quiet():
                _model = CHGNet.from_dict(state["model"])
            _architecture = {"name": f"chgnet-{pretrained}",
                             "config": {"model_args": state["model"]["model_args"],
                                        "pretrained": pretrained}}
        super().__init__(_architecture, batch_size=batch_size)
        self.device = device
        self.model = _model.to(device).eval()

    # -- protocol
    def _predict_batch(self, atoms_list):
        from pymatgen.io.ase import AseAtomsAdaptor

        structures = [AseAtomsAdaptor.get_structure(a) for a in atoms_list]
        with warnings.catch_warnings():  # chgnet's own float() of a graph tensor, harmless at inference
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            preds = self.model.predict_structure(structures, task="efs", batch_size=len(structures))
        if isinstance(preds, dict):
            preds = [preds]
        out = []
        for p, s in zip(preds, structures):
            n = len(s) if self.model.is_intensive else 1
            out.append({"energy": float(p["e"]) * n, "forces": p["f"], "stress": np.asarray(p["s"]) * _GPA})
        return out

    def _module(self):
        return self.model

    def _loss(self, frames, weights):
        import torch
        from pymatgen.io.ase import AseAtomsAdaptor

        graphs = [self.model.graph_converter(AseAtomsAdaptor.get_structure(a)) for a in frames]
        task = "efs" if weights.get("stress") else "ef"
        pred = self.model(graphs, task=task)
        n = torch.tensor([len(a) for a in frames], dtype=pred["e"].dtype)
        e_true = torch.tensor([a.info["_energy"] for a in frames], dtype=pred["e"].dtype)
        e_pred = pred["e"] if self.model.is_intensive else pred["e"] / n
        loss = weights["energy"] * torch.mean((e_pred - e_true / n) ** 2)
        f_pred = torch.cat(pred["f"])
        f_true = torch.tensor(np.concatenate([a.arrays["_forces"] for a in frames]), dtype=f_pred.dtype)
        loss = loss + weights["forces"] * torch.mean((f_pred - f_true) ** 2)
        if weights.get("stress"):
            from nodestore.models.forcefield import stress_loss

            s_pred = torch.stack([s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] if s.dim() == 2 else s
                                  for s in pred["s"]]) * _GPA
            loss = loss + weights["stress"] * stress_loss(s_pred, frames)
        return loss

    def _save_files(self, directory):
        import torch
        torch.save(self.model.state_dict(), Path(directory) / WEIGHTS)

    @classmethod
    def _from_files(cls, directory, meta):
        from chgnet.model import CHGNet

        arch = meta["architecture"]
        if not arch["name"].startswith("chgnet") or "model_args" not in arch["config"]:
            raise BackendError(f"{directory}: architecture {arch['name']!r} is not a CHGNet architecture")
        with _quiet():
            model = CHGNet(**arch["config"]["model_args"])
        state = ckpt.load_weights(Path(directory) / WEIGHTS)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise BackendError(f"{directory}: weights do not fit architecture {arch['name']!r}: {exc}") from exc
        return cls(_model=model, _architecture=arch)


def _quiet():
    """CHGNet prints its parameter count on every construction; keep the CLI's output clean."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())
