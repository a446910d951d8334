"""Worker process of a Labeller: one structure in, one result out.

Standalone on purpose (imports only the standard library, numpy and ASE), so it
runs under any interpreter that has the calculator, e.g. Debian's
``/usr/bin/python3`` for GPAW.  Usage::

    python _label_worker.py RESULT.json REQUEST.json     (or RESULT.json < REQUEST.json)
    mpirun -np N python _label_worker.py RESULT.json REQUEST.json   (GPAW, NODESTORE_MPI_RANKS=N)

REQUEST: ``{"calculator": NAME or "module:Class", "params": {...},
"atoms": {"numbers", "positions", "cell", "pbc"}, "properties": [...]}``.
RESULT: ``{"energy", "forces", "stress", "code", "version"}`` or
``{"error": REASON, "kind": "unconverged" | "error"}`` (exit status 2).

With ``"relax": {"steps": N, "fmax": F, "cell": true, "max_seconds": T}`` the
structure is relaxed by the calculator itself (ASE's BFGS, on a
``FrechetCellFilter`` when ``cell``) for at most N steps and T seconds; every
ionic step's geometry and labels are returned in ``"trajectory"`` (the first
entry is the geometry as given), the last one also as the result's own
``energy``/``forces``/``stress`` with its ``positions`` and ``cell``.

With ``"electronic": {"width", "npts", "window"}`` the result also carries
``"electronic"``: the band gap, direct gap, Fermi level and density of states of the
converged calculation (see ``_electronic``).
"""

import importlib
import json
import os
import sys
import traceback


def _gpaw(params, atoms=None):
    import gpaw
    from gpaw import GPAW, PW, FermiDirac

    p = dict(params)
    density = float(p.pop("kpt_density", 3.0))
    gamma = bool(p.pop("gamma", True))
    # cells with a small or no gap at the base mesh are recomputed on a denser one (see _gpaw_dense)
    p.pop("kpt_dense_kppra", None)
    p.pop("dense_below_gap", None)
    kwargs = {
        "mode": PW(float(p.pop("ecut", 300.0))),
        "xc": p.pop("xc", "PBE"),
        "kpts": {"density": density, "gamma": gamma},
        "occupations": FermiDirac(float(p.pop("smearing", 0.05))),
        "txt": p.pop("txt", None),
    }
    kwargs.update(p)
    return GPAW(**kwargs), "gpaw", gpaw.__version__


def kppra_density(atoms, density, kppra):
    """The least k-point density (points per 1/A, ASE's convention, as GPAW's ``{"density": d}``)
    not below ``density`` whose Monkhorst-Pack mesh has at least ``kppra`` k-points per reciprocal
    atom (mesh points times atoms), and that mesh."""
    from ase.calculators.calculator import kptdensity2monkhorstpack

    d = float(density)
    mesh = kptdensity2monkhorstpack(atoms, d, False)
    for _ in range(400):
        if int(mesh[0]) * int(mesh[1]) * int(mesh[2]) * len(atoms) >= kppra:
            break
        d *= 1.02
        mesh = kptdensity2monkhorstpack(atoms, d, False)
    return d, [int(m) for m in mesh]


def _band_gap(calc):
    """The band gap (eV) of a converged calculation; 0 for a metal."""
    from ase.dft.bandgap import bandgap

    try:
        gap = bandgap(calc, output=None)[0]
    except TypeError:  # ASE without the ``output`` keyword
        gap = bandgap(calc)[0]
    return float(gap)


def _electronic(atoms, calc, spec):
    """Band gaps, Fermi level and density of states of a converged calculation.

    ``spec``: ``{"width": Gaussian broadening (eV), "npts": points, "window": [emin, emax] (eV,
    relative to the Fermi level)}``.  The gaps are Kohn-Sham gaps on the calculation's own k-point
    mesh (an upper bound of the gap over the whole Brillouin zone)."""
    import numpy as np
    from ase.dft.bandgap import bandgap
    from ase.dft.dos import DOS

    atoms.get_potential_energy()

    def gap(direct):
        try:
            return bandgap(calc, direct=direct, output=None)[0]
        except TypeError:  # ASE without the ``output`` keyword
            return bandgap(calc, direct=direct)[0]

    window = spec.get("window") or [-10.0, 6.0]
    dos = DOS(calc, width=float(spec.get("width", 0.1)), window=(float(window[0]), float(window[1])),
              npts=int(spec.get("npts", 801)))
    values = np.asarray(dos.get_dos(), dtype=float)
    energies = np.asarray(dos.get_energies(), dtype=float)
    return {"band_gap": float(gap(False)), "band_gap_direct": float(gap(True)),
            "fermi_level": float(calc.get_fermi_level()),
            "dos_energies": [round(float(e), 5) for e in energies],
            "dos": [round(float(v), 6) for v in values],
            "n_kpoints": int(len(calc.get_ibz_k_points()))}


def _gpaw_dense(params, atoms, calc):
    """GPAW's k-point rule for metals and small gaps.

    With ``kpt_dense_kppra`` set, the structure is first computed on the base mesh
    (``kpt_density``); a cell whose band gap there is below ``dense_below_gap`` eV (0.5) is
    recomputed on a mesh of at least ``kpt_dense_kppra`` k-points per reciprocal atom.  The
    energy of a metal (bcc Li) or a narrow-gap semiconductor (black P) converges with the mesh
    far more slowly than an insulator's, and every formation energy rests on them.
    The dense calculation starts from the base mesh's converged density (GPAW keeps the density
    when only the k-points change, and starts afresh when the domain decomposition of its ranks
    changes with them): the same fixed point to the SCF tolerance, in fewer SCF iterations
    (``scf_iterations`` records both runs').
    Returns the calculator to use and what was decided."""
    kppra = float(params.get("kpt_dense_kppra") or 0)
    density = float(params.get("kpt_density", 3.0))
    info = {"mesh": [int(k) for k in _mesh(atoms, density)], "density": density}
    if kppra <= 0 or not all(atoms.pbc):
        return calc, info
    atoms.calc = calc
    atoms.get_potential_energy()
    gap = _band_gap(calc)
    info["gap_ev"] = round(gap, 4)
    info["scf_iterations"] = [_scf_iterations(calc)]
    if gap >= float(params.get("dense_below_gap", 0.5)):
        return calc, info
    dense, mesh = kppra_density(atoms, density, kppra)
    if mesh == info["mesh"]:
        return calc, info
    info.update(mesh=mesh, density=round(dense, 4), dense=True)
    calc.set(kpts={"density": dense, "gamma": bool(params.get("gamma", True))})
    return calc, info


def _scf_iterations(calc):
    scf = getattr(calc, "scf", None)
    return int(scf.niter) if scf is not None and getattr(scf, "niter", None) is not None else None


def _mesh(atoms, density):
    from ase.calculators.calculator import kptdensity2monkhorstpack
    return kptdensity2monkhorstpack(atoms, float(density), False)


def _vasp(params):
    from ase.calculators.vasp import Vasp
    return Vasp(**params), "vasp", "unknown"


def _espresso(params):
    from ase.calculators.espresso import Espresso, EspressoProfile

    p = dict(params)
    if "profile" in p and isinstance(p["profile"], dict):
        p["profile"] = EspressoProfile(**p["profile"])
    return Espresso(**p), "quantum-espresso", "unknown"


def _lj(params):
    from ase.calculators.lj import LennardJones
    return LennardJones(**params), "ase-lj", _ase_version()


def _emt(params):
    from ase.calculators.emt import EMT
    return EMT(**params), "ase-emt", _ase_version()


def _ase_version():
    import ase
    return ase.__version__


CALCULATORS = {"gpaw": _gpaw, "vasp": _vasp, "espresso": _espresso, "lj": _lj, "emt": _emt}


def make_calculator(name, params):
    if name in CALCULATORS:
        return CALCULATORS[name](params)
    module, _, attr = name.partition(":")
    if not attr:
        raise ValueError("unknown calculator %r (builtin: %s, or 'module:Class')" % (name, sorted(CALCULATORS)))
    cls = getattr(importlib.import_module(module), attr)
    mod = sys.modules.get(module.split(".")[0])
    return cls(**params), module, getattr(mod, "__version__", "unknown")


def _labels(atoms, with_stress):
    import numpy as np

    out = {"energy": float(atoms.get_potential_energy()), "forces": np.asarray(atoms.get_forces()).tolist(),
           "stress": None}
    if with_stress and all(atoms.pbc):
        try:
            out["stress"] = np.asarray(atoms.get_stress(voigt=True)).tolist()
        except Exception as exc:  # a calculator without stress still labels energy and forces
            out["stress_error"] = str(exc)
    return out


def _relax(atoms, relax, with_stress):
    """Relax with the calculator; every ionic step's geometry and labels, the last as the result.

    Written for the ASE of any interpreter (Debian's python3 has ASE 3.22, without ase.filters):
    a plain loop of BFGS steps, the force criterion checked on the filter's generalised forces.
    """
    import time

    import numpy as np
    from ase.optimize import BFGS

    cell = bool(relax.get("cell", True)) and all(atoms.pbc) and with_stress
    target = atoms
    if cell:
        try:
            from ase.filters import FrechetCellFilter as CellFilter
        except ImportError:  # ASE < 3.23
            from ase.constraints import ExpCellFilter as CellFilter
        target = CellFilter(atoms)
    opt = BFGS(target, logfile=None)
    fmax = float(relax.get("fmax", 0.05))
    steps = int(relax["steps"])
    deadline = time.monotonic() + float(relax.get("max_seconds") or 1e12)

    def record():
        step = _labels(atoms, with_stress)
        step["positions"] = atoms.positions.tolist()
        step["cell"] = atoms.cell.array.tolist()
        return step

    trajectory = [record()]
    converged = False
    for _ in range(steps):
        f = np.asarray(target.get_forces())
        converged = bool(np.sqrt((f ** 2).sum(axis=1).max()) < fmax)
        if converged or time.monotonic() > deadline:
            break
        opt.step()
        trajectory.append(record())
    else:
        f = np.asarray(target.get_forces())
        converged = bool(np.sqrt((f ** 2).sum(axis=1).max()) < fmax)
    out = dict(trajectory[-1])
    out["trajectory"] = trajectory
    out["relax"] = {"steps": len(trajectory) - 1, "converged": converged, "cell": cell, "fmax": fmax}
    return out


def _mpi_rank(request):
    """This process's rank when the labeller launched the worker under MPI (NODESTORE_MPI_RANKS
    ranks, GPAW only), else 0; a GPAW that sees another number of ranks is an error."""
    want = int(os.environ.get("NODESTORE_MPI_RANKS", "1") or 1)
    if want <= 1:
        return 0
    if request.get("calculator") != "gpaw":
        raise RuntimeError("only the gpaw labeller runs under MPI")
    from gpaw.mpi import world

    if world.size != want:
        raise RuntimeError("GPAW sees %d MPI ranks, not %d (built without MPI?)" % (world.size, want))
    return world.rank


def main(argv):
    out_path = argv[1]
    if len(argv) > 2:
        with open(argv[2]) as fh:
            request = json.load(fh)
    else:
        request = json.load(sys.stdin)
    rank = 0
    try:
        rank = _mpi_rank(request)
        import numpy as np
        from ase import Atoms

        a = request["atoms"]
        atoms = Atoms(numbers=a["numbers"], positions=a["positions"], cell=a["cell"], pbc=a["pbc"])
        calc, code, version = make_calculator(request["calculator"], request.get("params", {}))
        result = {"code": code, "version": version}
        if request["calculator"] == "gpaw":
            calc, result["kpoints"] = _gpaw_dense(request.get("params", {}), atoms, calc)
        atoms.calc = calc
        props = request.get("properties", ["energy", "forces", "stress"])
        relax = request.get("relax") or {}
        if int(relax.get("steps", 0)) > 0:
            result.update(_relax(atoms, relax, "stress" in props))
        else:
            result.update(_labels(atoms, "stress" in props))
        kpoints = result.get("kpoints")
        if kpoints is not None:  # GPAW: the SCF iterations of the base mesh, then of the dense one
            if "scf_iterations" not in kpoints:
                kpoints["scf_iterations"] = [_scf_iterations(calc)]
            elif kpoints.get("dense"):
                kpoints["scf_iterations"].append(_scf_iterations(calc))
        if request.get("electronic"):
            result["electronic"] = _electronic(atoms, calc, request["electronic"])
        status = 0
    except Exception as exc:
        kind = "unconverged" if "converg" in type(exc).__name__.lower() or "converg" in str(exc).lower() else "error"
        result = {"error": "%s: %s" % (type(exc).__name__, exc), "kind": kind,
                  "traceback": traceback.format_exc()[-2000:]}
        status = 2
    if rank == 0:  # under MPI every rank holds the result; the first writes it, whole or not at all
        tmp = "%s.%d.part" % (out_path, os.getpid())
        with open(tmp, "w") as fh:
            json.dump(result, fh)
        os.replace(tmp, out_path)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
