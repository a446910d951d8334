"""Labellers: GPAW in a worker under /usr/bin/python3, failures recorded per frame."""

import os
import textwrap

import numpy as np
import pytest
from ase.build import bulk

from nodestore.models.labeller import AseLabeller, GpawLabeller, LennardJonesLabeller, to_atoms


def _has_gpaw():
    return GpawLabeller.available()


@pytest.mark.gpaw
@pytest.mark.skipif(not _has_gpaw(), reason="/usr/bin/python3 cannot import gpaw")
def test_gpaw_label_li2s():
    lab = GpawLabeller(ecut=200, kpt_density=1.5, smearing=0.1)
    atoms = bulk("SLi2", "fluorite", a=5.70)
    atoms.rattle(0.02, seed=0)
    (res,) = lab.label([atoms])
    assert res["ok"], res["error"]
    assert res["method"] == "gpaw-pbe-pw200"
    info = res["method_info"]
    assert info["code"] == "gpaw" and info["version"].startswith("22.")
    assert info["functional"] == "PBE" and info["cutoff_ev"] == 200 and info["kpoint_density"] == 1.5
    assert info["smearing_ev"] == 0.1
    assert res["forces"].shape == (3, 3) and res["stress"].shape == (6,)
    assert abs(res["forces"].sum(axis=0)).max() < 0.05
    labelled = to_atoms(atoms, res)
    assert labelled.get_potential_energy() == res["energy"] and labelled.info["method"] == "gpaw-pbe-pw200"


@pytest.mark.gpaw
@pytest.mark.skipif(not _has_gpaw(), reason="/usr/bin/python3 cannot import gpaw")
def test_gpaw_dense_mesh_for_a_metal_only():
    """bcc Li (a metal) is recomputed on the kppra mesh; insulating Li2S keeps the base mesh."""
    lab = GpawLabeller(ecut=200, kpt_density=1.5, smearing=0.1, kpt_dense_kppra=1000)
    assert lab.method_info["params"]["kpt_dense_kppra"] == 1000
    li, li2s = bulk("Li", "bcc", a=3.44), bulk("SLi2", "fluorite", a=5.70)
    res_li, res_s = lab.label([li, li2s])
    assert res_li["ok"] and res_s["ok"], (res_li["error"], res_s["error"])
    k_li, k_s = res_li["kpoints"], res_s["kpoints"]
    assert k_li["gap_ev"] == 0 and k_li["dense"] and np.prod(k_li["mesh"]) * 1 >= 1000
    assert k_s["gap_ev"] > 2 and not k_s.get("dense") and np.prod(k_s["mesh"]) * 3 < 1000
    # the dense run starts from the base mesh's density: the label of a fresh run on that mesh,
    # in fewer SCF iterations than that run took
    fresh = GpawLabeller(ecut=200, kpt_density=k_li["density"], smearing=0.1)
    (res_fresh,) = fresh.label([li])
    assert res_fresh["kpoints"]["mesh"] == k_li["mesh"]
    assert res_li["energy"] == pytest.approx(res_fresh["energy"], abs=2e-4)
    assert np.allclose(res_li["stress"], res_fresh["stress"], atol=2e-5)
    coarse_iters, dense_iters = k_li["scf_iterations"]
    assert 0 < dense_iters < res_fresh["kpoints"]["scf_iterations"][0], k_li
    base = GpawLabeller(ecut=200, kpt_density=1.5, smearing=0.1)
    assert "kpt_dense_kppra" not in base.method_info["params"]  # off: the method of older nodes
    (res_base,) = base.label([li])
    assert "dense" not in res_base["kpoints"] and res_base["energy"] != res_li["energy"]


def test_gpaw_labeller_refuses_bad_kpoint_settings():
    from nodestore.errors import ValidationError
    for kw in ({"kpt_density": 0}, {"kpt_dense_kppra": -1}, {"kpt_dense_kppra": float("nan")}):
        with pytest.raises(ValidationError):
            GpawLabeller(**kw)


def test_lj_label():
    (res,) = LennardJonesLabeller().label([bulk("SLi2", "fluorite", a=5.70)])
    assert res["ok"] and res["method"] == "lj-s2-e0.05" and np.isfinite(res["energy"])


@pytest.fixture
def bad_calculators(tmp_path):
    (tmp_path / "badcalc.py").write_text(textwrap.dedent("""
        import os, time
        from ase.calculators.calculator import Calculator

        class Crash(Calculator):
            implemented_properties = ["energy", "forces"]
            def calculate(self, atoms=None, properties=None, system_changes=None):
                os._exit(11)  # like a segfault: no result, no Python exception

        class Hang(Calculator):
            implemented_properties = ["energy", "forces"]
            def calculate(self, atoms=None, properties=None, system_changes=None):
                with open(os.environ["HANG_PID_FILE"], "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(60)

        class NoSCF(Calculator):
            implemented_properties = ["energy", "forces"]
            def calculate(self, atoms=None, properties=None, system_changes=None):
                raise RuntimeError("SCF did not converge in 40 iterations")
    """))
    return {"PYTHONPATH": str(tmp_path), "HANG_PID_FILE": str(tmp_path / "hang.pid")}


def test_crash_timeout_unconverged_are_failures(bad_calculators):
    atoms = [bulk("Cu")]
    crash = AseLabeller("badcalc:Crash", env=bad_calculators, timeout=30).label(atoms)[0]
    assert not crash["ok"] and crash["failure"] == "crash" and "exit status 11" in crash["error"]
    hang = AseLabeller("badcalc:Hang", env=bad_calculators, timeout=2).label(atoms)[0]
    assert not hang["ok"] and hang["failure"] == "timeout"
    noscf = AseLabeller("badcalc:NoSCF", env=bad_calculators, timeout=30).label(atoms)[0]
    assert not noscf["ok"] and noscf["failure"] == "unconverged"
    # the hung worker is gone
    pid = int(open(bad_calculators["HANG_PID_FILE"]).read())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
