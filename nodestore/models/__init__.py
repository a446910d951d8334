"""Models layer: force fields, labellers, generators, executors and their registry.

Imports only ``nodestore.frames``, ``nodestore.errors``, ``nodestore.schemas_util``
and third-party libraries; torch, orb, chgnet, pyxtal and pymatgen load lazily.
"""

from __future__ import annotations

_LAZY = {
    "ForceField": "nodestore.models.forcefield",
    "ForceFieldCalculator": "nodestore.models.forcefield",
    "ChgnetForceField": "nodestore.models._chgnet",
    "OrbForceField": "nodestore.models._orb",
    "SevennetForceField": "nodestore.models._sevenn",
    "Labeller": "nodestore.models.labeller",
    "AseLabeller": "nodestore.models.labeller",
    "GpawLabeller": "nodestore.models.labeller",
    "VaspLabeller": "nodestore.models.labeller",
    "EspressoLabeller": "nodestore.models.labeller",
    "LennardJonesLabeller": "nodestore.models.labeller",
    "ForceFieldLabeller": "nodestore.models.labeller",
    "Generator": "nodestore.models.generator",
    "PyxtalGenerator": "nodestore.models.generator",
    "SubstitutionGenerator": "nodestore.models.generator",
    "Executor": "nodestore.models.executor",
    "LocalExecutor": "nodestore.models.executor",
    "DaskExecutor": "nodestore.models.executor",
    "make_executor": "nodestore.models.executor",
    "create": "nodestore.models.registry",
    "register": "nodestore.models.registry",
    "available": "nodestore.models.registry",
    "from_config": "nodestore.models.registry",
    "load_checkpoint": "nodestore.models.registry",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nodestore.models' has no attribute {name!r}")


__all__ = sorted(_LAZY)
