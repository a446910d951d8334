"""One registry of backends per kind: forcefield, generator, labeller, executor.

A backend is a name bound to a factory (a class, or ``"module:attr"`` imported
on first use, so heavy libraries load only when the backend is used).  A
duplicate name is an error.  Third-party backends register through the entry
point group ``nodestore.backends`` with names ``"<kind>.<name>"``::

    [project.entry-points."nodestore.backends"]
    "forcefield.mace" = "my_package.mace_backend:MaceForceField"
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from nodestore.errors import BackendError, ValidationError

KINDS = ("forcefield", "generator", "labeller", "executor")
ENTRY_POINT_GROUP = "nodestore.backends"

_BUILTIN = {
    "forcefield": {
        "chgnet": "nodestore.models._chgnet:ChgnetForceField",
        "orb": "nodestore.models._orb:OrbForceField",
        "sevenn": "nodestore.models._sevenn:SevennetForceField",
        "pair": "nodestore.models._pair:PairForceField",
    },
    "generator": {
        "pyxtal": "nodestore.models.generator:PyxtalGenerator",
        "substitution": "nodestore.models.generator:SubstitutionGenerator",
        "random": "nodestore.models.generator:RandomGenerator",
        "motif": "nodestore.models.generator:MotifGenerator",
        "framework": "nodestore.models.generator:FrameworkGenerator",
        "mixture": "nodestore.models.generator:MixtureGenerator",
    },
    "labeller": {
        "gpaw": "nodestore.models.labeller:GpawLabeller",
        "ase": "nodestore.models.labeller:AseLabeller",
        "vasp": "nodestore.models.labeller:VaspLabeller",
        "espresso": "nodestore.models.labeller:EspressoLabeller",
        "lj": "nodestore.models.labeller:LennardJonesLabeller",
        "forcefield": "nodestore.models.labeller:ForceFieldLabeller",
    },
    "executor": {
        "local": "nodestore.models.executor:LocalExecutor",
        "dask": "nodestore.models.executor:DaskExecutor",
    },
}


class Registry:
    """Backends of one kind: name -> factory."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, object] = {}

    def register(self, name: str, factory) -> None:
        if name in self._entries:
            raise BackendError(f"{self.kind} backend {name!r} is already registered")
        self._entries[name] = factory

    def names(self) -> list[str]:
        _load_plugins()
        return sorted(self._entries)

    def get(self, name: str):
        _load_plugins()
        if name not in self._entries:
            raise BackendError(f"no {self.kind} backend named {name!r} (known: {', '.join(sorted(self._entries))})")
        factory = self._entries[name]
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            try:
                factory = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise BackendError(f"{self.kind} backend {name!r} ({self._entries[name]}) cannot load: {exc}") from exc
            self._entries[name] = factory
        return factory


REGISTRIES = {kind: Registry(kind) for kind in KINDS}
for _kind, _table in _BUILTIN.items():
    for _name, _factory in _table.items():
        REGISTRIES[_kind].register(_name, _factory)

_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kind, _, name = ep.name.partition(".")
        if kind not in REGISTRIES or not name:
            raise BackendError(f"entry point {ep.name!r} of {ENTRY_POINT_GROUP}: name must be '<kind>.<name>' "
                               f"with kind one of {KINDS}")
        REGISTRIES[kind].register(name, ep.value)


def registry(kind: str) -> Registry:
    if kind not in REGISTRIES:
        raise ValidationError(f"unknown backend kind {kind!r} (one of {', '.join(KINDS)})")
    return REGISTRIES[kind]


def register(kind: str, name: str, factory) -> None:
    """Register a backend; BackendError if the name is taken."""
    registry(kind).register(name, factory)


def available(kind: str) -> list[str]:
    return registry(kind).names()


def create(kind: str, name: str, **config):
    """Build a backend from its registry name and config keywords."""
    factory = registry(kind).get(name)
    try:
        return factory(**config)
    except TypeError as exc:
        raise ValidationError(f"bad config for {kind} backend {name!r}: {exc}") from exc


def from_config(kind: str, section: dict | None):
    """Build a backend from a params.yaml section: ``{"backend": NAME, ...config}``
    (a ``checkpoint`` key loads that checkpoint instead)."""
    section = dict(section or {})
    if section.get("checkpoint"):
        return load_checkpoint(section["checkpoint"], kind=kind)
    name = section.pop("backend", None) or DEFAULTS[kind]
    for key in _NOT_CONSTRUCTOR.get(kind, ()):
        section.pop(key, None)
    section = {k: v for k, v in section.items() if v is not None}
    return create(kind, name, **section)


# keys of a params section read by the loop, not by the backend's constructor
_NOT_CONSTRUCTOR = {"forcefield": ("checkpoint", "relax", "finetune"),
                    "generator": ("checkpoint", "n"), "labeller": (), "executor": ()}


DEFAULTS = {"forcefield": "sevenn", "generator": "pyxtal", "labeller": "gpaw", "executor": "local"}


def load_checkpoint(path, kind: str | None = None):
    """Load a force-field or generator checkpoint directory, dispatching on meta.json's backend;
    with ``kind``, a checkpoint of another kind is a BackendError."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise BackendError(f"{path}: not a checkpoint directory (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
        found, backend = meta["kind"], meta["backend"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BackendError(f"{meta_path}: unreadable checkpoint metadata: {exc}") from exc
    if found not in ("forcefield", "generator"):
        raise BackendError(f"{meta_path}: checkpoints of kind {found!r} are not loadable")
    if kind is not None and found != kind:
        raise BackendError(f"{path}: a {found} checkpoint, not a {kind} checkpoint")
    cls = registry(found).get(backend)
    return cls.load(path)
