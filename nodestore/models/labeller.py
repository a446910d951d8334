"""The Labeller protocol: the first-principles step (any ASE calculator from a config).

A labeller turns structures into labels ``{"ok", "energy", "forces", "stress",
"method", "method_info", "error", "seconds"}``.  ``method`` is the short method
name stored in the table's ``method`` column (``gpaw-pbe-pw300``);
``method_info`` records code, version, functional, cutoff, k-point density and
smearing.  A failure (crash, time limit, SCF not converged) is a label with
``ok=False`` and ``error`` saying why: it fails one frame, never the loop.

Calculators run in a worker process (``_label_worker.py``) under a chosen
interpreter with a time limit: GPAW under Debian's ``/usr/bin/python3``.
"""

from __future__ import annotations

import abc
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from nodestore.errors import BackendError, ValidationError

WORKER = Path(__file__).with_name("_label_worker.py")


def _failure(error: str, method: str, info: dict, seconds: float, kind: str = "error") -> dict:
    return {"ok": False, "energy": None, "forces": None, "stress": None, "method": method,
            "method_info": info, "error": error, "failure": kind, "seconds": round(seconds, 3)}


class Labeller(abc.ABC):
    """Base class: subclasses implement ``_label_one`` and ``method_info``."""

    backend: ClassVar[str] = ""
    supports_stress: ClassVar[bool] = True
    #: each frame is computed by a worker process of its own (single-threaded), so a local
    #: executor may run one frame per core with threads
    runs_in_worker: ClassVar[bool] = False

    @property
    def cores_per_label(self) -> int:
        """Cores one label takes (its worker's MPI ranks); a local executor runs cores // this at once."""
        return 1

    @property
    @abc.abstractmethod
    def method_info(self) -> dict:
        """``{"name", "code", "version", "functional", "cutoff_ev", "kpoint_density", "smearing_ev"}``."""

    @abc.abstractmethod
    def _label_one(self, atoms) -> dict:
        """Label one structure; return a label dict (see module doc)."""

    @property
    def method(self) -> str:
        return self.method_info["name"]

    def label_one(self, atoms) -> dict:
        t0 = time.monotonic()
        try:
            return self._label_one(atoms)
        except Exception as exc:  # a backend bug fails the frame, not the loop
            return _failure(f"{type(exc).__name__}: {exc}", self.method, self.method_info, time.monotonic() - t0)

    def label(self, atoms_list: Sequence, executor=None, progress: bool = False) -> list[dict]:
        """Label structures (through ``executor.map`` when given); one label per structure, in order."""
        from ase import Atoms

        atoms_list = list(atoms_list)
        for i, a in enumerate(atoms_list):
            if not isinstance(a, Atoms):
                raise ValidationError(f"item {i} is a {type(a).__name__}, not ase.Atoms")
        if executor is None:
            from nodestore.models.executor import LocalExecutor
            executor = LocalExecutor(processes=1)
        return executor.map(self.label_one, atoms_list, progress=progress, io_bound=self.runs_in_worker,
                            on_lost=self._lost, cores_per_item=self.cores_per_label if self.runs_in_worker else 1)

    def _lost(self, atoms, exc) -> dict:
        """The label of a structure whose worker was lost: a recorded failure, never a crash."""
        return _failure(f"worker lost: {type(exc).__name__}: {exc}", self.method, self.method_info, 0.0,
                        kind="worker-lost")

    def with_electronic(self, width: float = 0.1, npts: int = 801, window=(-10.0, 6.0)) -> "Labeller":
        """A copy whose labels also carry the electronic structure (``label["electronic"]``: band
        gap, direct gap, Fermi level, density of states); only first-principles labellers have one."""
        raise ValidationError(f"the {self.backend or type(self).__name__} labeller computes no electronic "
                              "structure (use a first-principles labeller: gpaw, vasp, espresso)")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method}>"


def to_atoms(atoms, label: dict):
    """A copy of ``atoms`` carrying a successful label (SinglePointCalculator + info['method'])."""
    from ase.calculators.singlepoint import SinglePointCalculator

    if not label["ok"]:
        raise ValidationError(f"label failed: {label['error']}")
    out = atoms.copy()
    if label.get("positions") is not None:  # the labeller relaxed the structure: its last geometry
        out.cell = np.asarray(label["cell"])
        out.positions = np.asarray(label["positions"])
    results = {"energy": label["energy"], "forces": np.asarray(label["forces"])}
    if label.get("stress") is not None:
        results["stress"] = np.asarray(label["stress"])
    out.calc = SinglePointCalculator(out, **results)
    out.info["method"] = label["method"]
    return out


class AseLabeller(Labeller):
    """Any ASE calculator run by the worker: ``calculator`` is a builtin name
    (gpaw, vasp, espresso, lj, emt) or ``"module:Class"``; ``params`` its
    keyword arguments; ``python`` the interpreter; ``timeout`` seconds per frame.
    """

    backend = "ase"
    runs_in_worker = True

    def __init__(self, calculator: str, params: dict | None = None, *, method: str | None = None,
                 python: str | None = None, timeout: float = 600.0, env: dict | None = None,
                 functional: str | None = None, cutoff_ev: float | None = None,
                 kpoint_density: float | None = None, smearing_ev: float | None = None):
        self.calculator = calculator
        self.params = dict(params or {})
        self.python = python or sys.executable
        self.timeout = float(timeout)
        self.env = dict(env or {})
        #: relax each structure with the calculator itself (``with_relaxation``); not part of the
        #: method: the labels of every ionic step are labels of the same method
        self.relaxation: dict | None = None
        #: also compute the electronic structure (``with_electronic``)
        self.electronic: dict | None = None
        self._info = {"name": method or calculator.replace(":", "-").replace(".", "-").lower(),
                      "code": calculator, "version": None, "functional": functional,
                      "cutoff_ev": cutoff_ev, "kpoint_density": kpoint_density,
                      "smearing_ev": smearing_ev, "params": self.params}

    @property
    def method_info(self) -> dict:
        return dict(self._info)

    def with_relaxation(self, steps: int, fmax: float = 0.05, cell: bool = True,
                        max_seconds: float | None = None) -> "AseLabeller":
        """Relax each structure with the calculator (BFGS, cell too) for at most ``steps`` ionic
        steps and ``max_seconds`` per structure; the label then carries every step in
        ``trajectory`` and the last geometry in ``positions``/``cell``.  ``steps=0``: single points."""
        if steps < 0 or fmax <= 0 or (max_seconds is not None and not max_seconds > 0):
            raise ValidationError("relaxation needs steps >= 0, fmax > 0 and max_seconds > 0")
        self.relaxation = ({"steps": int(steps), "fmax": float(fmax), "cell": bool(cell),
                            "max_seconds": None if max_seconds is None else float(max_seconds)} if steps else None)
        return self

    def with_electronic(self, width: float = 0.1, npts: int = 801, window=(-10.0, 6.0)) -> "AseLabeller":
        if not (np.isfinite(width) and width > 0 and int(npts) >= 10 and len(window) == 2
                and np.isfinite(window).all() and window[0] < window[1]):
            raise ValidationError("electronic structure needs width > 0, npts >= 10 and a window (emin < emax)")
        other = copy.copy(self)
        other.relaxation = None
        other.electronic = {"width": float(width), "npts": int(npts), "window": [float(window[0]), float(window[1])]}
        return other

    def _worker_env(self) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **self.env}
        if Path(self.python).resolve() != Path(sys.executable).resolve():
            # a foreign interpreter must not see this venv's packages (numpy clash)
            env.pop("PYTHONPATH", None)
            env.pop("VIRTUAL_ENV", None)
        return env

    def _launcher(self) -> tuple[list[str], dict]:
        """What runs the worker (an MPI launcher and its arguments; nothing: the interpreter
        itself) and the environment it needs."""
        return [], {}

    def _label_one(self, atoms) -> dict:
        request = {"calculator": self.calculator, "params": self.params,
                   "atoms": {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                             "cell": atoms.cell.array.tolist(), "pbc": [bool(x) for x in atoms.pbc]}}
        if self.relaxation:
            request["relax"] = self.relaxation
        if self.electronic:
            request["electronic"] = self.electronic
        env = self._worker_env()
        launcher, launch_env = self._launcher()
        env.update(launch_env)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="nodestore-label-") as tmp:
            out_path, request_path = Path(tmp) / "result.json", Path(tmp) / "request.json"
            request_path.write_text(json.dumps(request))
            proc = subprocess.Popen([*launcher, self.python, str(WORKER), str(out_path), str(request_path)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=tmp, env=env, start_new_session=True, text=True)
            try:
                _, stderr = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return _failure(f"timeout: no result within {self.timeout:g} s", self.method,
                                self.method_info, time.monotonic() - t0, kind="timeout")
            seconds = time.monotonic() - t0
            result = None
            if out_path.exists():
                try:
                    result = json.loads(out_path.read_text())
                except json.JSONDecodeError:
                    result = None
            if result is None:
                tail = (stderr or "").strip().splitlines()[-3:]
                return _failure(f"worker crashed (exit status {proc.returncode}): {' | '.join(tail)}",
                                self.method, self.method_info, seconds, kind="crash")
            if "error" in result:
                return _failure(result["error"], self.method, self.method_info, seconds,
                                kind=result.get("kind", "error"))
        info = self.method_info
        info["version"] = result.get("version")
        info["code"] = result.get("code", info["code"])
        steps = result.get("trajectory") or [result]
        trajectory = []
        for st in steps:
            forces = np.asarray(st["forces"], dtype=float)
            pos = np.asarray(st.get("positions", atoms.positions), dtype=float)
            cell = np.asarray(st.get("cell", atoms.cell.array), dtype=float)
            stress = None if st.get("stress") is None else np.asarray(st["stress"], dtype=float)
            if (forces.shape != (len(atoms), 3) or pos.shape != (len(atoms), 3) or cell.shape != (3, 3)
                    or not np.isfinite(forces).all() or not np.isfinite(st["energy"]) or not np.isfinite(pos).all()
                    or (stress is not None and not np.isfinite(stress).all())):
                return _failure("calculator returned non-finite or misshapen results", self.method, info, seconds)
            trajectory.append({"energy": float(st["energy"]), "forces": forces, "stress": stress,
                               "positions": pos, "cell": cell})
        last = trajectory[-1]
        out = {"ok": True, "energy": last["energy"], "forces": last["forces"], "stress": last["stress"],
               "method": self.method, "method_info": info, "error": None, "failure": None,
               "seconds": round(seconds, 3)}
        if result.get("kpoints"):
            out["kpoints"] = result["kpoints"]  # the mesh used, and the gap that chose it
        if self.electronic:
            el = result.get("electronic")
            if not el or not all(np.isfinite([el["band_gap"], el["band_gap_direct"], el["fermi_level"]])):
                return _failure("the calculator returned no electronic structure", self.method, info, seconds)
            out["electronic"] = el
        if result.get("trajectory"):
            out.update(positions=last["positions"], cell=last["cell"], trajectory=trajectory,
                       relax=result.get("relax"))
        return out


def _mpi_env(ranks: int) -> dict:
    """What the worker's MPI launch needs: Open MPI run by root (containers, CI), more ranks than
    it counts slots for, no cross-memory attach (refused in many containers); ignored by other
    MPIs.  NODESTORE_MPI_RANKS tells the worker how many ranks to expect."""
    return {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
            "NODESTORE_MPI_RANKS": str(int(ranks))}


_MPI_PROBES: dict[tuple, str | None] = {}
_MPI_LOCK = threading.Lock()


def _mpi_probe(mpirun: str, python: str, ranks: int, env: dict) -> str | None:
    """None when ``mpirun -np ranks python`` starts a GPAW that sees ``ranks`` processes, else why
    not; once per (launcher, interpreter, ranks) and process."""
    key = (mpirun, python, ranks)
    with _MPI_LOCK:
        if key not in _MPI_PROBES:
            code = f"from gpaw.mpi import world; import sys; sys.exit(0 if world.size == {ranks} else 3)"
            try:
                proc = subprocess.run([mpirun, "-np", str(ranks), python, "-c", code], env=env,
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
                why = None if proc.returncode == 0 else (
                    f"GPAW under {mpirun} -np {ranks} saw one process (a GPAW built without MPI)"
                    if proc.returncode == 3 else
                    f"{mpirun} -np {ranks} failed (exit {proc.returncode}): "
                    + " | ".join((proc.stderr or "").strip().splitlines()[-2:]))
            except (OSError, subprocess.TimeoutExpired) as exc:
                why = f"{mpirun} -np {ranks}: {type(exc).__name__}: {exc}"
            _MPI_PROBES[key] = why
        return _MPI_PROBES[key]


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


class GpawLabeller(AseLabeller):
    """GPAW, plane waves: ``PW(ecut)``, k-points by density (points per 1/A, Gamma
    centred), Fermi-Dirac smearing; run by Debian's ``/usr/bin/python3``.

    ``kpt_dense_kppra``: a cell whose band gap on the ``kpt_density`` mesh is below
    ``dense_below_gap`` eV (a metal, or a narrow-gap semiconductor) is recomputed on a mesh of
    at least that many k-points per reciprocal atom (mesh points times atoms; the Materials
    Project's relaxations use 1000).  Part of the method's settings when set.

    ``mpi_ranks``: each structure is computed by that many MPI processes (``mpirun -np``), one
    structure at a time on a local executor (cores // ranks at once).  GPAW spreads the k-points
    over them: a 10-atom Li2P2S6 cell on its dense mesh took 131 s on one core and 66 s on two,
    the same energy to 1e-12 eV, and a label that takes five times the others no longer holds
    up a stage whose other worker sits idle.  ``"auto"`` (the default) takes every core of the
    machine that runs the label, when ``mpirun`` is found and the labeller's GPAW reports as many
    ranks (checked once per process, 60 s at most); otherwise one process per structure, as with
    ``mpi_ranks=1``.  A number is a demand: a GPAW without MPI is then an error.  Not part of the
    method: the labels do not depend on it.
    """

    backend = "gpaw"

    def __init__(self, ecut: float = 300.0, kpt_density: float = 3.0, smearing: float = 0.05,
                 xc: str = "PBE", *, kpt_dense_kppra: float = 0.0, dense_below_gap: float = 0.5,
                 python: str = "/usr/bin/python3", timeout: float = 1800.0, extra: dict | None = None,
                 mpi_ranks: int | str = "auto", mpirun: str | None = None):
        if not (np.isfinite(kpt_density) and kpt_density > 0 and np.isfinite(kpt_dense_kppra)
                and kpt_dense_kppra >= 0 and np.isfinite(dense_below_gap) and dense_below_gap >= 0):
            raise ValidationError("gpaw labeller: kpt_density must be > 0, kpt_dense_kppra and "
                                  "dense_below_gap >= 0 (finite numbers)")
        if mpi_ranks != "auto" and not (isinstance(mpi_ranks, int) and not isinstance(mpi_ranks, bool)
                                        and mpi_ranks >= 1):
            raise ValidationError(f"gpaw labeller: mpi_ranks must be a whole number >= 1 or 'auto', not {mpi_ranks!r}")
        self.mpi_ranks, self.mpirun = mpi_ranks, mpirun
        params = {"ecut": float(ecut), "kpt_density": float(kpt_density), "smearing": float(smearing),
                  "xc": xc, **(extra or {})}
        if kpt_dense_kppra > 0:  # absent when off, so that nodes labelled before it keep their method
            params.update(kpt_dense_kppra=float(kpt_dense_kppra), dense_below_gap=float(dense_below_gap))
        super().__init__("gpaw", params, method=f"gpaw-{xc.lower()}-pw{ecut:g}", python=python,
                         timeout=timeout, functional=xc, cutoff_ev=float(ecut),
                         kpoint_density=float(kpt_density), smearing_ev=float(smearing))
        self._info["code"] = "gpaw"

    @property
    def cores_per_label(self) -> int:
        return self._ranks()

    def _ranks(self) -> int:
        """MPI ranks per structure on this machine (1: no launcher)."""
        if self.mpi_ranks == 1:
            return 1
        from nodestore.models.executor import cpu_count

        want = cpu_count() if self.mpi_ranks == "auto" else int(self.mpi_ranks)
        if want <= 1:
            return 1
        mpirun = self._mpirun()
        why = None if mpirun else "no mpirun or mpiexec on PATH"
        if why is None:
            why = _mpi_probe(mpirun, self.python, want, {**self._worker_env(), **_mpi_env(want)})
        if why is None:
            return want
        if self.mpi_ranks != "auto":
            raise BackendError(f"gpaw labeller: mpi_ranks={want} needs MPI: {why}")
        return 1

    def _mpirun(self) -> str | None:
        return self.mpirun or shutil.which("mpirun") or shutil.which("mpiexec")

    def _launcher(self) -> tuple[list[str], dict]:
        n = self._ranks()
        if n == 1:
            return [], {}
        return [self._mpirun(), "-np", str(n)], _mpi_env(n)

    @staticmethod
    def available(python: str = "/usr/bin/python3") -> bool:
        """Whether ``python`` can import gpaw."""
        if not Path(python).exists():
            return False
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        try:
            return subprocess.run([python, "-c", "import gpaw"], env=env, capture_output=True,
                                  timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


class VaspLabeller(AseLabeller):
    """VASP through ``ase.calculators.vasp.Vasp`` (needs ASE_VASP_COMMAND and
    VASP_PP_PATH in the environment); ``params`` are Vasp keywords, e.g.
    ``{"xc": "PBE", "encut": 520, "kspacing": 0.25, "ismear": 0, "sigma": 0.05}``."""

    backend = "vasp"

    def __init__(self, params: dict | None = None, *, timeout: float = 7200.0, python: str | None = None):
        p = {"xc": "PBE", "encut": 520, "kspacing": 0.25, "ismear": 0, "sigma": 0.05, **(params or {})}
        super().__init__("vasp", p, method=f"vasp-{str(p['xc']).lower()}-pw{p['encut']:g}", python=python,
                         timeout=timeout, functional=p["xc"], cutoff_ev=float(p["encut"]),
                         kpoint_density=None, smearing_ev=float(p["sigma"]))
        self._info["kspacing"] = p.get("kspacing")


class EspressoLabeller(AseLabeller):
    """Quantum ESPRESSO through ``ase.calculators.espresso.Espresso``; ``params``
    are its keywords (``pseudopotentials``, ``profile``: ``{"command", "pseudo_dir"}``,
    ``input_data``, ``kspacing``), ``ecutwfc`` in Ry inside ``input_data.system``."""

    backend = "espresso"

    def __init__(self, params: dict | None = None, *, timeout: float = 7200.0, python: str | None = None):
        p = dict(params or {})
        system = p.get("input_data", {}).get("system", {})
        ecut_ry = float(system.get("ecutwfc", 40.0))
        xc = str(system.get("input_dft", "pbe"))
        super().__init__("espresso", p, method=f"qe-{xc.lower()}-pw{ecut_ry * 13.605693:.0f}", python=python,
                         timeout=timeout, functional=xc, cutoff_ev=ecut_ry * 13.605693,
                         kpoint_density=None, smearing_ev=None)


class LennardJonesLabeller(AseLabeller):
    """ASE's Lennard-Jones: physics-free but real code; cheap labels for tests."""

    backend = "lj"

    def __init__(self, sigma: float = 2.0, epsilon: float = 0.05, rc: float = 5.0, *, timeout: float = 60.0):
        super().__init__("lj", {"sigma": sigma, "epsilon": epsilon, "rc": rc},
                         method=f"lj-s{sigma:g}-e{epsilon:g}", timeout=timeout, functional="lennard-jones")

    def with_electronic(self, width: float = 0.1, npts: int = 801, window=(-10.0, 6.0)):
        return Labeller.with_electronic(self, width, npts, window)


class ForceFieldLabeller(Labeller):
    """Labels from a ForceField (a checkpoint path, a backend name or an instance), in process."""

    backend = "forcefield"

    def __init__(self, forcefield="chgnet", **config):
        from nodestore.models.forcefield import ForceField

        if isinstance(forcefield, ForceField):
            self.forcefield = forcefield
        elif Path(str(forcefield)).is_dir():
            self.forcefield = ForceField.load(forcefield)
        else:
            from nodestore.models.registry import create
            self.forcefield = create("forcefield", str(forcefield), **config)
        if not isinstance(self.forcefield, ForceField):
            raise BackendError(f"{forcefield!r} is not a force field")

    @property
    def method_info(self) -> dict:
        ff = self.forcefield
        return {"name": ff.method, "code": ff.backend, "version": ff.hash or ff.architecture.get("name"),
                "functional": None, "cutoff_ev": None, "kpoint_density": None, "smearing_ev": None}

    def _label_one(self, atoms) -> dict:
        t0 = time.monotonic()
        res = self.forcefield.predict([atoms])[0]
        return {"ok": True, **res, "method": self.method, "method_info": self.method_info,
                "error": None, "failure": None, "seconds": round(time.monotonic() - t0, 3)}

    def label(self, atoms_list, executor=None, progress=False):
        if executor is not None:
            return super().label(atoms_list, executor=executor, progress=progress)
        t0 = time.monotonic()
        preds = self.forcefield.predict(list(atoms_list))
        dt = (time.monotonic() - t0) / max(1, len(preds))
        return [{"ok": True, **p, "method": self.method, "method_info": self.method_info, "error": None,
                 "failure": None, "seconds": round(dt, 3)} for p in preds]
