"""The energy methods of a node: what each ``method`` name in the table stands for.

The table stores one short method name per row (``gpaw-pbe-pw300``); node.yaml's ``methods``
maps each name to the settings that produced it (code, functional, cutoff, k-point density,
smearing, the calculator's parameters) and the code versions seen.  A name stands for one set
of settings: energies of one name share a hull, so a labeller whose settings differ from those
recorded under its name is refused before it computes anything, and two nodes that recorded
different settings under one name do not merge.
"""

from __future__ import annotations

from nodestore.errors import ValidationError

#: the method of a force field's prediction stored as a row: ``ff:`` + the force field's method
#: (``ff:sevenn/7net-0@gpaw-pbe-pw300``); rows of such a method are never labels
FF_PREFIX = "ff:"


def is_prediction(method) -> bool:
    """A row's method is a force field's prediction, not a label."""
    return str(method).startswith(FF_PREFIX)


#: what makes two labels comparable; the code version is recorded, not compared
SETTINGS = ("code", "functional", "cutoff_ev", "kpoint_density", "smearing_ev", "params")


def settings_of(info: dict) -> dict:
    """The comparable part of a labeller's ``method_info``."""
    return {k: info.get(k) for k in SETTINGS}


def differences(recorded: dict, info: dict) -> list[str]:
    """``key: recorded vs new`` for each setting that differs."""
    return [f"{k} {recorded.get(k)!r} vs {info.get(k)!r}" for k in SETTINGS if recorded.get(k) != info.get(k)]


def check_method(node, info: dict) -> None:
    """Refuse a labeller whose settings differ from those recorded under its method name."""
    _check(node.config, info)


def _check(cfg: dict, info: dict) -> None:
    name = info["name"]
    recorded = (cfg.get("methods") or {}).get(name)
    if recorded is None:
        return
    diff = differences(recorded, info)
    if diff:
        raise ValidationError(
            f"method {name!r} is recorded in node.yaml with other settings ({'; '.join(diff)}): "
            "its energies would share a hull with these; give this labeller its own method name"
        )


def updated_methods(cfg: dict, info: dict) -> dict | None:
    """node.yaml's ``methods`` with ``info`` recorded under its name (a new code version added),
    or None when it is recorded already.  Refuses other settings under a recorded name."""
    _check(cfg, info)
    methods = dict(cfg.get("methods") or {})
    entry = dict(methods.get(info["name"]) or settings_of(info))
    versions = set(entry.get("versions") or [])
    if info.get("version"):
        versions.add(str(info["version"]))
    entry["versions"] = sorted(versions)
    if methods.get(info["name"]) == entry:
        return None
    methods[info["name"]] = entry
    return methods


def record_method(tx, info: dict) -> bool:
    """Write ``info`` under its name into node.yaml's ``methods`` through transaction ``tx``;
    return whether node.yaml changed."""
    return tx.record_method(info)


def merge_methods(ours: dict | None, theirs: dict | None) -> tuple[dict, list[dict]]:
    """The union of two ``methods`` maps, and the names whose settings differ between them."""
    out = {k: dict(v) for k, v in (ours or {}).items()}
    clashes = []
    for name, entry in (theirs or {}).items():
        if name not in out:
            out[name] = dict(entry)
            continue
        diff = differences(out[name], entry)
        if diff:
            clashes.append({"kind": "method", "method": name, "differences": diff})
            continue
        out[name]["versions"] = sorted(set(out[name].get("versions") or []) | set(entry.get("versions") or []))
    return out, clashes
