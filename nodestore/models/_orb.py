"""orb-models backend (first-class): architectures built offline, weights local or downloaded.

An architecture is a builder of ``orb_models.forcefield.pretrained`` plus its
keyword arguments (JSON), so a checkpoint rebuilds the exact module before
loading its state dict with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

from nodestore.errors import BackendError
from nodestore.models import _checkpoint as ckpt
from nodestore.models.forcefield import ForceField

WEIGHTS = "model.pt"

# architecture name -> builder in orb_models.forcefield.pretrained
ARCHITECTURES = {
    "orb-v3-direct": "orb_v3_direct_architecture",
    "orb-v3-conservative": "orb_v3_conservative_architecture",
    "orb-v2": "orb_v2_architecture",
}

# pretrained name -> (architecture, builder kwargs); weights come from orb's own URL table
PRETRAINED = {
    "orb-v3-direct-20-omat": ("orb-v3-direct", {"radius": 6.0, "max_num_neighbors": 20}),
    "orb-v3-direct-inf-omat": ("orb-v3-direct", {"radius": 6.0, "max_num_neighbors": 120}),
    "orb-v3-direct-20-mpa": ("orb-v3-direct", {"radius": 6.0, "max_num_neighbors": 20}),
    "orb-v3-direct-inf-mpa": ("orb-v3-direct", {"radius": 6.0, "max_num_neighbors": 120}),
    "orb-v3-conservative-20-omat": ("orb-v3-conservative", {"radius": 6.0, "max_num_neighbors": 20}),
    "orb-v3-conservative-inf-omat": ("orb-v3-conservative", {"radius": 6.0, "max_num_neighbors": 120}),
    "orb-v3-conservative-20-mpa": ("orb-v3-conservative", {"radius": 6.0, "max_num_neighbors": 20}),
    "orb-v3-conservative-inf-mpa": ("orb-v3-conservative", {"radius": 6.0, "max_num_neighbors": 120}),
}

# a tiny direct model for tests and smoke runs (~50k parameters)
TINY = {"latent_dim": 32, "base_mlp_hidden_dim": 64, "base_mlp_depth": 1, "head_mlp_hidden_dim": 32,
        "head_mlp_depth": 1, "num_message_passing_steps": 2, "radius": 5.0, "max_num_neighbors": 20}


def build_module(name: str, config: dict):
    """Build an untrained orb module from an architecture name and JSON config."""
    from orb_models.forcefield import pretrained as orb_pretrained
    from orb_models.forcefield.atomic_system import SystemConfig

    if name not in ARCHITECTURES:
        raise BackendError(f"unknown orb architecture {name!r} (known: {sorted(ARCHITECTURES)})")
    config = dict(config)
    system = SystemConfig(radius=float(config.pop("radius", 6.0)),
                          max_num_neighbors=int(config.pop("max_num_neighbors", 20)))
    builder = getattr(orb_pretrained, ARCHITECTURES[name])
    try:
        return builder(device="cpu", system_config=system, **config)
    except TypeError as exc:
        raise BackendError(f"bad config for orb architecture {name!r}: {exc}") from exc


class OrbForceField(ForceField):
    """An orb-models force field.

    ``OrbForceField(architecture="orb-v3-direct", config=TINY)``: a fresh model.
    ``OrbForceField(weights="path/to/weights.ckpt", architecture=..., config=...)``:
    a local state dict.  ``OrbForceField(pretrained="orb-v3-direct-20-omat")``:
    orb's published weights, downloaded and cached by orb (needs the network).
    """

    backend = "orb"
    supports_stress = True
    supports_batch = True
    default_batch_size = 8
    head_modules = ("heads",)

    def __init__(self, architecture: str = "orb-v3-direct", config: dict | None = None, *,
                 weights: str | None = None, pretrained: str | None = None, seed: int = 0,
                 device: str = "cpu", batch_size: int | None = None, _module=None):
        import torch

        if pretrained is not None:
            if pretrained not in PRETRAINED:
                raise BackendError(f"unknown orb pretrained model {pretrained!r} (known: {sorted(PRETRAINED)})")
            architecture, config = PRETRAINED[pretrained]
        config = dict(TINY if config is None else config)
        if _module is None:
            torch.manual_seed(seed)
            _module = build_module(architecture, config)
            if pretrained is not None:  # network path: orb downloads and caches the weights
                from orb_models.forcefield.pretrained import ORB_PRETRAINED_MODELS
                try:
                    _module = ORB_PRETRAINED_MODELS[pretrained](device=device, compile=False)
                except Exception as exc:  # no network, bad cache, ...
                    raise BackendError(f"cannot fetch orb weights {pretrained!r}: {exc}") from exc
            elif weights is not None:
                from orb_models.utils import set_torch_precision

                state = ckpt.load_weights(Path(weights))  # weights only: a pickled object is refused
                _module = _module.to(set_torch_precision("float32-highest"))
                try:
                    _module.load_state_dict(state, strict=True)
                except RuntimeError as exc:
                    raise BackendError(f"{weights}: weights do not fit orb architecture {architecture!r}: {exc}") from exc
                _module = _module.to(device).train(False)
        super().__init__({"name": architecture, "config": config}, batch_size=batch_size)
        self.device = device
        self.model = _module.to(device).eval()

    @property
    def conservative(self) -> bool:
        return hasattr(self.model, "grad_forces_name")

    def _graphs(self, atoms_list, with_targets: bool = False):
        import torch
        from orb_models.forcefield import base
        from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs

        graphs = []
        dtype = next(self.model.parameters()).dtype
        for a in atoms_list:
            a = a.copy()
            a.calc = None
            if with_targets:
                a.info["node_targets"] = {"forces": torch.tensor(a.arrays["_forces"], dtype=dtype)}
                targets = {"energy": torch.tensor([a.info["_energy"]], dtype=dtype)}
                if a.info.get("_stress") is not None:
                    targets["stress"] = torch.tensor(a.info["_stress"], dtype=dtype)
                a.info["graph_targets"] = targets
            graphs.append(ase_atoms_to_atom_graphs(a, self.model.system_config, device=torch.device(self.device),
                                                   output_dtype=dtype))
        return base.batch_graphs(graphs)

    def _predict_batch(self, atoms_list):
        import torch

        batch = self._graphs(atoms_list)
        if self.conservative:
            out = self.model.predict(batch, split=True)
            keys = (self.model.grad_forces_name, getattr(self.model, "grad_stress_name", None))
        else:
            with torch.no_grad():
                out = self.model.predict(batch, split=True)
            keys = ("forces", "stress")
        energies = out["energy"]
        forces = out[keys[0]]
        stresses = out.get(keys[1]) if keys[1] else None
        res = []
        for i in range(len(atoms_list)):
            res.append({"energy": float(energies[i].detach().reshape(-1)[0]),
                        "forces": forces[i].detach().cpu().numpy(),
                        "stress": None if stresses is None else stresses[i].detach().cpu().numpy().reshape(-1)})
        return res

    def _module(self):
        for p in self.model.parameters():
            p.requires_grad_(True)
        # the target normalisers keep the statistics the model was built or trained with: updated
        # online from a few fine-tuning frames they would shift every prediction (and a batch of
        # near-zero stresses gives orb a zero variance that it refuses to divide by)
        for m in self.model.modules():
            if type(m).__name__ == "ScalarNormalizer":
                m.online = False
        return self.model

    def _after_training(self):
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _loss(self, frames, weights):
        import torch

        batch = self._graphs(frames, with_targets=True)
        if self.conservative:
            return self.model.loss(batch).loss
        out = self.model(batch)
        dtype = batch.positions.dtype
        loss = torch.zeros((), dtype=dtype)
        for name, head in self.model.heads.items():
            w = weights.get(name, 0.0)
            if name == "confidence" or not w:
                continue
            if name == "stress" and "stress" not in batch.system_targets:
                continue
            loss = loss + w * head.loss(out[name], batch).loss
        return loss

    def _save_files(self, directory):
        import torch
        torch.save(self.model.state_dict(), Path(directory) / WEIGHTS)

    @classmethod
    def _from_files(cls, directory, meta):
        arch = meta["architecture"]
        return cls(arch["name"], arch["config"], weights=str(Path(directory) / WEIGHTS))

