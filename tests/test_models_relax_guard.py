"""ForceField.relax guards: a structure whose cell runs away, whose model output is
not finite, or whose model call raises is stopped alone; the rest keep relaxing."""

import math

import numpy as np
from ase.build import bulk

from nodestore.models.forcefield import ForceField


class ToyForceField(ForceField):
    """No forces; Li cells feel a tensile stress (they grow without end), Na cells
    get NaN energies once they have moved, K cells make the model raise, Cu cells
    are at rest."""

    backend = "toy"

    def __init__(self):
        super().__init__({"name": "toy", "config": {}})
        self.calls = []

    def _predict_batch(self, atoms_list):
        self.calls.append(len(atoms_list))
        out = []
        for a in atoms_list:
            sym = a.get_chemical_symbols()[0]
            if sym == "K":
                raise RuntimeError("graph too large")
            stress = np.zeros(6)
            energy = -1.0
            if sym == "Li":
                stress[:3] = -0.05
            if sym == "Na":
                stress[:3] = -0.05
                if a.info.get("moved") or a.get_volume() > a.info.get("v0", math.inf):
                    energy = math.nan
            out.append({"energy": energy, "forces": np.zeros((len(a), 3)), "stress": stress})
        return out


def test_relax_guards_stop_only_the_bad_structures():
    li, na, k, cu = (bulk(s, "bcc", a=3.5) for s in ("Li", "Na", "K", "Cu"))
    na.info["v0"] = na.get_volume() * 1.0001
    ff = ToyForceField()
    out = ff.relax([li, na, k, cu], fmax=0.01, steps=500)
    r_li, r_na, r_k, r_cu = out
    assert r_cu["converged"] and r_cu["reason"] == "converged" and r_cu["steps"] == 0
    assert not r_li["converged"] and "volume" in r_li["reason"] and r_li["steps"] < 500
    # the returned geometry is the last one the model evaluated: inside the window
    assert r_li["atoms"].get_volume() <= 3.0 * li.get_volume()
    assert r_li["atoms"].info["relax_reason"] == r_li["reason"]
    assert not r_na["converged"] and r_na["reason"].startswith("non-finite") and math.isnan(r_na["energy"])
    assert not r_k["converged"] and r_k["reason"].startswith("model error") and r_k["steps"] == 0
    # batched: the first step evaluated all four structures in one model call
    assert ff.calls[0] == 4


def test_relax_volume_per_atom_window_and_time_limit():
    li = bulk("Li", "bcc", a=3.5)  # 21.4 A^3/atom
    ff = ToyForceField()
    r = ff.relax([li], fmax=0.01, steps=500, volume_ratio=None, volume_per_atom=(5.0, 30.0))[0]
    assert "volume per atom" in r["reason"] and r["atoms"].get_volume() / len(li) <= 30.0
    r = ff.relax([li], fmax=0.01, steps=500, volume_ratio=None, volume_per_atom=None, max_seconds=0.0)[0]
    assert r["reason"] == "time_limit" and r["steps"] == 0 and not r["converged"]
    crushed = bulk("Li", "bcc", a=1.5)
    r = ff.relax([crushed], fmax=0.01, steps=5)[0]
    assert "volume per atom" in r["reason"] and r["steps"] == 0 and math.isnan(r["energy"])


class PullingForceField(ToyForceField):
    """Pulls the second atom onto the first (a hole in the energy surface) with ever lower energy."""

    def _predict_batch(self, atoms_list):
        out = []
        for a in atoms_list:
            f = np.zeros((len(a), 3))
            d = a.positions[0] - a.positions[1]
            f[1] = 2.0 * d
            out.append({"energy": -10.0 / max(np.linalg.norm(d), 0.1), "forces": f, "stress": np.zeros(6)})
        return out


def test_relax_stops_a_collapse_before_the_model_sees_it():
    from nodestore.models.forcefield import GUARD_PREFIXES, collapsed_pair

    a = bulk("SLi2", "fluorite", a=5.70)  # Li-S 2.47 A: far from the 0.6 x (1.28 + 1.05) A cut
    assert collapsed_pair(a, 0.6) is None
    r = PullingForceField().relax([a], fmax=0.01, steps=200, relax_cell=False)[0]
    assert r["reason"].startswith("atoms collapsed") and r["reason"].startswith(GUARD_PREFIXES)
    d = np.linalg.norm(r["atoms"].get_distance(0, 1, mic=True))
    assert d >= 0.6 * (1.05 + 1.28) - 1e-9  # the last geometry the model evaluated was still physical
    r = PullingForceField().relax([a], fmax=0.01, steps=200, relax_cell=False, min_distance_ratio=None)[0]
    assert not r["reason"].startswith("atoms collapsed")
