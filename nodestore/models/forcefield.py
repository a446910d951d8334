"""The ForceField protocol: a machine-learned interatomic potential.

A backend is small, like an ASE calculator: it implements ``_predict_batch``
(energies, forces, stresses of a list of structures in one call) and, to be
trainable, ``_module``/``_loss``/``_save_files``/``_from_files``.  The base class
does everything else once: input validation, batching, batched relaxation (one
ASE optimizer per structure, one model call per step for all of them),
fine-tuning with a train/validation split and early stopping, checkpoints with
``meta.json`` and an ASE calculator view.
"""

from __future__ import annotations

import abc
import copy
import math
import random
import time
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from nodestore.errors import BackendError, ValidationError
from nodestore.models import _checkpoint as ckpt
from nodestore.models._allocator import tune_allocator
from nodestore.models.references import ReferenceEnergies

KIND = "forcefield"

#: the fine-tuning recipe's defaults (``ForceField.finetune``'s keyword defaults), chosen on
#: bench/learning_curve.py; params.yaml's forcefield.finetune overrides any of them
DEFAULT_RECIPE = {"val_fraction": 0.2, "epochs": 30, "patience": 4, "lr": 1e-3, "batch_size": 1,
                  "energy_weight": 10.0, "force_weight": 1.0, "stress_weight": 0.01,
                  "freeze_backbone": "auto", "freeze_below": 8, "head_lr_factor": 1.0,
                  "warmup_fraction": 0.1, "min_lr_ratio": 0.05, "refit_references": True, "max_force": 20.0}


class ForceField(abc.ABC):
    """Base class of every force-field backend.

    Class attributes declare the backend: ``backend`` (its registry name and the
    ``backend`` of its checkpoints), ``supports_stress`` and ``supports_batch``.
    Instances carry ``architecture`` (``{"name", "config"}``), ``parent`` (hash
    of the checkpoint they came from), ``training_frames`` and ``metrics``.
    """

    backend: ClassVar[str] = ""
    supports_stress: ClassVar[bool] = True
    supports_batch: ClassVar[bool] = True
    default_batch_size: ClassVar[int] = 16
    #: names of the top-level submodules that form the model's heads (readout, per-element
    #: energies); what a frozen-backbone fine-tune trains and what ``head_lr_factor`` speeds up.
    #: Empty: the backend cannot separate heads from backbone.
    head_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, architecture: dict, *, parent: str | None = None,
                 training_frames: Sequence[str] = (), metrics: dict | None = None,
                 batch_size: int | None = None):
        self.architecture = architecture
        self.parent = parent
        self.training_frames = list(training_frames)
        self.metrics = dict(metrics or {})
        self.batch_size = int(batch_size or self.default_batch_size)
        tune_allocator()  # the model's many short-lived tensors: see models/_allocator.py
        #: fitted per-element reference energies, added to every energy the model predicts
        self.references = ReferenceEnergies()
        self.hash: str | None = None  # set when saved or loaded
        #: seconds spent in the backend's own evaluations (``_predict_batch``) since construction
        self.model_seconds = 0.0

    # ------------------------------------------------------------------ backend API
    @abc.abstractmethod
    def _predict_batch(self, atoms_list: list) -> list[dict]:
        """Energies (eV), forces (eV/A) and, if supported, Voigt stresses (eV/A^3,
        ASE sign) of a list of structures; one dict per structure."""

    def _module(self):
        """The torch module that fine-tuning trains (None: not trainable)."""
        return None

    def _loss(self, frames: list, weights: dict):
        """A scalar torch loss of a list of labelled frames (training mode)."""
        raise BackendError(f"backend {self.backend!r} cannot be fine-tuned")

    def _save_files(self, directory: Path) -> None:
        raise BackendError(f"backend {self.backend!r} cannot be saved")

    @classmethod
    def _from_files(cls, directory: Path, meta: dict) -> "ForceField":
        raise BackendError(f"backend {cls.backend!r} cannot be loaded")

    def _head_parameters(self):
        """Parameters of the ``head_modules`` (what a frozen-backbone fine-tune trains)."""
        module = getattr(self, "model", None)
        if module is None:
            return
        for name in self.head_modules:
            sub = getattr(module, name, None)
            if sub is not None and hasattr(sub, "parameters"):
                yield from sub.parameters()

    # ------------------------------------------------------------------ public API
    def predict(self, atoms_list: Sequence, batch_size: int | None = None) -> list[dict]:
        """Predict ``{"energy", "forces", "stress"}`` for each structure.

        ``stress`` is ``None`` when the backend has no stress.  Structures are
        evaluated ``batch_size`` at a time (one at a time when the backend does
        not support batching).
        """
        atoms_list = _check_atoms_list(atoms_list)
        size = (batch_size or self.batch_size) if self.supports_batch else 1
        out: list[dict] = []
        for start in range(0, len(atoms_list), size):
            chunk = atoms_list[start:start + size]
            t0 = time.perf_counter()
            results = self._predict_batch(chunk)
            self.model_seconds += time.perf_counter() - t0
            if len(results) != len(chunk):
                raise BackendError(f"{self.backend}: {len(results)} results for {len(chunk)} structures")
            for r, a in zip(results, chunk):
                r = _clean_result(r, len(a), self.supports_stress)
                r["energy"] += self.references.shift_of(a.numbers)
                out.append(r)
        return out

    def relax(self, atoms_list: Sequence, fmax: float = 0.05, steps: int = 200,
              relax_cell: bool = True, optimizer: str = "FIRE",
              batch_size: int | None = None, *,
              volume_ratio: tuple[float, float] | None = (0.5, 3.0),
              volume_per_atom: tuple[float, float] | None = (5.0, 80.0),
              min_distance_ratio: float | None = 0.6,
              max_seconds: float | None = None, cell_filter: str = "frechet") -> list[dict]:
        """Relax positions (and the cell) of every structure.

        One ASE optimizer per structure (``FIRE`` or ``BFGS``, on a cell filter when
        ``relax_cell``: ASE's ``FrechetCellFilter`` by default, or ``cell_filter="unit"``,
        its ``UnitCellFilter``: the same minima, about 5x less work per step on small cells
        (no matrix logarithm and exponentials), a linearised cell path); at every step the energies,
        forces and stresses of all structures still relaxing are computed in
        batched model calls.  Stops a structure when its largest force (and
        scaled stress) is below ``fmax`` or after ``steps`` steps.

        Guards stop a structure early, unconverged, before the model sees an
        absurd cell (whose neighbour graph can be huge): a periodic cell whose
        volume leaves ``volume_ratio`` (min, max) times its starting volume or
        whose volume per atom (A^3) leaves ``volume_per_atom``; two atoms closer
        than ``min_distance_ratio`` times the sum of their covalent radii (a
        collapse into a hole of the model's energy surface, where a force field
        can predict absurdly low energies); non-finite
        positions, energy, forces or stress; a model error on that structure
        alone.  ``max_seconds`` stops every structure still relaxing once the
        call has run that long (checked between steps).  ``None`` switches a
        guard off.

        Returns one dict per structure: ``atoms`` (a relaxed copy; for a
        structure stopped by a guard, the last geometry the model evaluated),
        ``energy``, ``forces``, ``stress``, ``converged``, ``steps`` and
        ``reason`` (``"converged"``, ``"max_steps"``, ``"time_limit"`` or what
        a guard found).
        """
        import time

        from ase.filters import FrechetCellFilter, UnitCellFilter
        from ase.optimize import BFGS, FIRE

        if relax_cell and not self.supports_stress:
            raise BackendError(f"backend {self.backend!r} has no stress: use relax_cell=False")
        opt_cls = {"FIRE": FIRE, "BFGS": BFGS}.get(optimizer)
        if opt_cls is None:
            raise ValidationError(f"unknown optimizer {optimizer!r} (FIRE or BFGS)")
        filter_cls = {"frechet": FrechetCellFilter, "unit": UnitCellFilter}.get(cell_filter)
        if filter_cls is None:
            raise ValidationError(f"unknown cell filter {cell_filter!r} (frechet or unit)")
        filter_cls = _once_per_geometry(filter_cls)
        t0 = time.monotonic()
        atoms_list = [a.copy() for a in _check_atoms_list(atoms_list)]
        n = len(atoms_list)
        opts = []
        for atoms in atoms_list:
            atoms.calc = ForceFieldCalculator(self)
            target = filter_cls(atoms) if relax_cell else atoms
            opts.append(opt_cls(target, logfile=None))
        v0 = [a.get_volume() if a.pbc.all() else None for a in atoms_list]
        nsteps = [0] * n
        converged = [False] * n
        reasons: list[str | None] = [None] * n
        active = list(range(n))
        while active:
            # geometry guard before the model sees the structure
            ok = []
            for i in active:
                why = _geometry_problem(atoms_list[i], v0[i], volume_ratio, volume_per_atom, min_distance_ratio)
                if why:
                    reasons[i] = why
                else:
                    ok.append(i)
            # one batched evaluation for every structure that still moves
            evaluated = []
            for i, res in zip(ok, self._predict_guarded([atoms_list[i] for i in ok], batch_size)):
                if isinstance(res, str):
                    reasons[i] = res
                    continue
                atoms_list[i].calc.store(atoms_list[i], res)
                if not _finite_result(res):
                    reasons[i] = "non-finite energy, forces or stress"
                    continue
                evaluated.append(i)
            out_of_time = max_seconds is not None and time.monotonic() - t0 > max_seconds
            still = []
            with _one_blas_thread():  # the cell filters' 3x3 algebra, between the model's calls
                for i in evaluated:
                    opt = opts[i]
                    opt.fmax = fmax
                    if opt.gradient_converged(opt.optimizable.get_gradient()):
                        converged[i], reasons[i] = True, "converged"
                    elif nsteps[i] >= steps:
                        reasons[i] = "max_steps"
                    elif out_of_time:
                        reasons[i] = "time_limit"
                    else:
                        opt.step()
                        opt.nsteps += 1
                        nsteps[i] += 1
                        still.append(i)
            active = still
        out = []
        for atoms, conv, n_i, why in zip(atoms_list, converged, nsteps, reasons):
            calc = atoms.calc
            res = calc.results
            # the last geometry the model evaluated (a guard may stop a structure after a step)
            relaxed = calc.atoms.copy() if calc.atoms is not None else atoms.copy()
            relaxed.info.update(atoms.info)
            relaxed.info["relax_converged"] = conv
            relaxed.info["relax_steps"] = n_i
            relaxed.info["relax_reason"] = why
            energy = float(res["energy"]) if res else math.nan
            forces = np.array(res["forces"]) if res else np.full((len(atoms), 3), np.nan)
            stress = None if not res or res.get("stress") is None else np.array(res["stress"])
            out.append({"atoms": relaxed, "energy": energy, "forces": forces, "stress": stress,
                        "converged": conv, "steps": n_i, "reason": why})
        return out

    def _predict_guarded(self, atoms_list: list, batch_size: int | None) -> list:
        """``predict`` that isolates failures: a batch that raises is retried one
        structure at a time, and a structure that still raises gets its error
        message (a str) instead of a result."""
        if not atoms_list:
            return []
        size = (batch_size or self.batch_size) if self.supports_batch else 1
        out: list = []
        for start in range(0, len(atoms_list), size):
            chunk = atoms_list[start:start + size]
            try:
                out.extend(self.predict(chunk, batch_size=size))
                continue
            except Exception as exc:  # noqa: BLE001 - find the structure that failed
                if len(chunk) == 1:
                    out.append(f"model error: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
            for a in chunk:
                try:
                    out.append(self.predict([a])[0])
                except Exception as exc:  # noqa: BLE001
                    out.append(f"model error: {type(exc).__name__}: {str(exc)[:200]}")
        return out

    def fit_references(self, frames: Sequence, *, method: str | None = None, rcond: float = 1e-3,
                       predictions: list[dict] | None = None) -> "ForceField":
        """A copy whose per-element reference energies are refit on labelled frames; no gradient step.

        The residuals ``label - prediction`` of ``frames`` (one energy method's labels) are fit
        by least squares as linear in composition (``nodestore.models.references``); elements
        whose reference the compositions do not determine keep the model's own value.  The copy
        predicts on the scale of ``method``; ``references.fit`` records the fit.
        """
        from nodestore.models.references import fit_shift

        frames = _Frames.of(frames)
        if not len(frames):
            raise ValidationError("fitting reference energies needs at least one labelled frame")
        delta, record = fit_shift(*frames.residuals(self, predictions), rcond=rcond)
        child = self._copy()
        child.references = self.references.plus(delta, method or self.references.method, record)
        child.parent = self.hash
        child.training_frames = frames.frame_ids()
        child.metrics = {"reference_fit": record}
        child.hash = None
        return child

    def finetune(self, frames: Sequence, *, val_fraction: float = 0.2, epochs: int = 30,
                 patience: int = 4, lr: float = 1e-3, batch_size: int = 1,
                 energy_weight: float = 10.0, force_weight: float = 1.0,
                 stress_weight: float = 0.01, seed: int = 0,
                 val_frames: Sequence | None = None, max_seconds: float | None = None,
                 progress: bool = False, method: str | None = None,
                 refit_references: bool = True, freeze_backbone: bool | str = "auto",
                 freeze_below: int = 8, head_lr_factor: float = 1.0, warmup_fraction: float = 0.1,
                 min_lr_ratio: float = 0.05, clip_grad: float | None = 10.0,
                 max_force: float | None = 20.0, loader_workers: int = 0) -> "ForceField":
        """Fine-tune on labelled frames of one energy method; return a new ForceField (self is unchanged).

        ``frames`` are Atoms with energy and forces (on ``atoms.calc`` as read from extxyz,
        or ``atoms.info["energy"]`` / ``atoms.arrays["forces"]``, stress optional), or a
        table's ``FrameDataset`` (``table.dataset(rows)``): then the training frames are never
        all in memory; every pass (filter, reference fit, each shuffled epoch) reads them batch
        by batch through a DataLoader with ``loader_workers`` processes.  Held-out frames are
        read once.

        The recipe:

        1. A ``val_fraction`` of the frames (or ``val_frames``) is held out.
        2. ``refit_references``: before any gradient step, the per-element reference energies
           are refit on the training frames (``fit_references``), so that the gradient steps
           learn what a per-element constant cannot and are not spent on an offset.
        3. Loss: ``energy_weight`` x MSE of energy per atom (eV/atom)^2 + ``force_weight`` x
           MSE of force components (eV/A)^2 + ``stress_weight`` x MSE of stress in GPa^2 over
           the frames that carry a stress label.
        4. Adam; the learning rate warms up linearly over ``warmup_fraction`` of the planned
           steps, then decays on a cosine to ``min_lr_ratio`` x ``lr``; head parameters (the
           backend's ``head_modules``) learn ``head_lr_factor`` times faster.
        5. ``freeze_backbone``: train only the heads (``"auto"``: when fewer than
           ``freeze_below`` training frames).
        6. Early stopping: after ``patience`` epochs without a lower validation loss (or at
           ``epochs``, or ``max_seconds``, checked between steps) training stops and the best
           epoch's weights are kept; with ``max_seconds`` the decay is planned for as many epochs
           as the first one says fit (an epoch the budget cuts short is scored as it stands).

        Frames that would teach noise are left out and counted in ``metrics["excluded"]``: a
        force component above ``max_force`` eV/A (collapsed geometry), or an energy the reference
        fit calls an outlier (off by more than max(0.5 eV/atom, 5 MAD) after the fit).

        ``metrics`` records energy RMSE/MAE per atom and force RMSE/MAE on the held-out frames
        before, after the reference fit alone (``val_*_refs``) and after training.
        """
        import time

        import torch

        frames = _Frames.of(frames, workers=loader_workers)
        if val_frames is None:
            order = list(range(len(frames)))
            random.Random(seed).shuffle(order)
            n_val = max(1, int(round(val_fraction * len(frames)))) if len(frames) > 1 and val_fraction > 0 else 0
            val = frames.subset(order[:n_val]).all()
            train = frames.subset(order[n_val:])
        else:
            train, val = frames, _Frames.of(val_frames).all()
        excluded = {"force": 0, "energy": 0}
        if max_force is not None:
            n0 = len(train) + len(val)
            train = train.where(lambda a: np.abs(a.arrays["_forces"]).max() <= max_force)
            val = [a for a in val if np.abs(a.arrays["_forces"]).max() <= max_force]
            excluded["force"] = n0 - len(train) - len(val)
        if not train:
            raise ValidationError("finetune needs at least one training frame"
                                  + (f" ({excluded['force']} left out for forces above {max_force:g} eV/A)"
                                     if excluded["force"] else ""))
        if stress_weight and not self.supports_stress:
            raise BackendError(f"backend {self.backend!r} has no stress: use stress_weight=0")
        t0 = time.monotonic()
        refs_only = None
        if refit_references:
            base = self.fit_references(train, method=method)
            fit = base.references.fit
            drop = set(fit.get("outliers", []))
            if drop and len(drop) < len(train):
                train = train.subset([i for i in range(len(train)) if i not in drop])
                excluded["energy"] += len(drop)
            if val:  # the same test on the held-out frames, with the fitted references
                pv = base.predict(val)
                thr = fit.get("outlier_threshold_per_atom", math.inf)
                keep = [abs(a.info["_energy"] - p["energy"]) / len(a) <= thr for a, p in zip(val, pv)]
                if any(keep) and not all(keep):
                    excluded["energy"] += keep.count(False)
                    val = [a for a, k in zip(val, keep) if k]
                    pv = [p for p, k in zip(pv, keep) if k]
                refs_only = _scores(pv, val)
        else:
            base = self._copy()
        n_stress = train.n_stress()
        before = self.evaluate(val) if val else {}
        refs_only = refs_only if refs_only is not None else before
        child = base._copy()
        module = child._module()
        if module is None:
            raise BackendError(f"backend {self.backend!r} cannot be fine-tuned")
        weights = {"energy": energy_weight, "forces": force_weight, "stress": stress_weight if n_stress else 0.0}
        # the module learns what the reference energies leave (shifted batch by batch below)
        val_shifted = [_shifted(a, child.references) for a in val]
        frozen = (freeze_backbone is True or (freeze_backbone == "auto" and len(train) < freeze_below))
        heads = {id(p) for p in child._head_parameters()}
        if frozen and not heads:
            frozen = False  # the backend cannot tell heads from backbone: train everything
        was = {id(p): p.requires_grad for p in module.parameters()}
        for p in module.parameters():
            p.requires_grad_(not frozen or id(p) in heads)
        groups = [{"params": [p for p in module.parameters() if p.requires_grad and id(p) not in heads], "lr": lr},
                  {"params": [p for p in module.parameters() if p.requires_grad and id(p) in heads],
                   "lr": lr * head_lr_factor}]
        groups = [g for g in groups if g["params"]]
        torch.manual_seed(seed)
        opt = torch.optim.Adam(groups)
        steps_per_epoch = max(1, math.ceil(len(train) / batch_size))
        # the planned steps: ``epochs``, or as many as ``max_seconds`` allows at the pace of the
        # first epoch, so that the decay ends where training will end
        plan = {"total": max(1, steps_per_epoch * epochs)}
        warm = max(1, int(round(warmup_fraction * plan["total"])))

        def factor(step):
            if step < warm:
                return (step + 1) / warm
            x = min(1.0, (step - warm) / max(1, plan["total"] - warm))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * x))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        rng = random.Random(seed)
        best_val = _val_loss(child, val_shifted, weights) if val else math.inf
        best = (best_val, copy.deepcopy(module.state_dict()), 0)
        history, bad = [{"epoch": 0, "val_loss": best_val}] if val else [], 0
        epoch_iter = range(1, epochs + 1)
        if progress:
            from tqdm.auto import tqdm
            epoch_iter = tqdm(epoch_iter, desc=f"finetune {self.backend}", unit="epoch")
        epoch = 0
        t_epoch0 = time.monotonic()
        try:
            for epoch in epoch_iter:
                module.train()
                order = list(range(len(train)))
                rng.shuffle(order)
                total_loss, seen, out_of_time = 0.0, 0, False
                for start, batch in zip(range(0, len(order), batch_size), train.batches(batch_size, order)):
                    if max_seconds is not None and start and time.monotonic() - t0 > max_seconds:
                        out_of_time = True  # a slow model: the budget ends inside an epoch
                        break
                    batch = [_shifted(a, child.references) for a in batch]
                    opt.zero_grad()
                    loss = child._loss(batch, weights)
                    loss.backward()
                    if clip_grad:
                        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], clip_grad)
                    opt.step()
                    sched.step()
                    total_loss += float(loss.detach()) * len(batch)
                    seen += len(batch)
                record = {"epoch": epoch, "train_loss": total_loss / max(1, seen),
                          "lr": float(opt.param_groups[0]["lr"])}
                if out_of_time:
                    record["frames"] = seen
                if val:
                    module.eval()
                    record["val_loss"] = _val_loss(child, val_shifted, weights)
                history.append(record)
                if epoch == 1 and max_seconds is not None:
                    fit = int((max_seconds - (time.monotonic() - t0)) / max(1e-6, time.monotonic() - t_epoch0)) + 1
                    plan["total"] = max(warm + 1, steps_per_epoch * max(1, min(epochs, fit)))
                    warm = min(warm, plan["total"] - 1)
                score = record.get("val_loss", record["train_loss"])
                if score < best[0]:
                    best, bad = (score, copy.deepcopy(module.state_dict()), epoch), 0
                else:
                    bad += 1
                    if bad >= patience:
                        break
                if out_of_time or (max_seconds is not None and time.monotonic() - t0 > max_seconds):
                    break
        finally:
            for p in module.parameters():
                p.requires_grad_(was.get(id(p), True))
        module.load_state_dict(best[1])
        module.eval()
        child._after_training()
        if refit_references and best[2] > 0:
            # the trained module's own energies have moved: the references are refit to it, so that
            # they stay the least-squares optimum on the training frames (a drift of the mean energy
            # is a per-element constant, not something the gradient steps should have to carry)
            from nodestore.models.references import fit_shift

            delta, rec = fit_shift(*train.residuals(child))
            child.references = child.references.plus(delta, child.references.method,
                                                     {**child.references.fit, "after_training": rec})
        after = child.evaluate(val) if val else {}
        child.parent = self.hash
        child.training_frames = train.frame_ids()
        child.metrics = {
            "n_train": len(train), "n_val": len(val), "epochs": epoch, "best_epoch": best[2],
            "lr": lr, "frozen_backbone": frozen, "stress_frames": n_stress, "excluded": excluded,
            "seconds": round(time.monotonic() - t0, 2), "method": child.references.method,
            "reference_fit": child.references.fit if refit_references else None,
            **{f"val_{k}_before": v for k, v in before.items()},
            **{f"val_{k}_refs": v for k, v in refs_only.items()},
            **{f"val_{k}": v for k, v in after.items()},
            "history": history,
        }
        child.hash = None
        return child

    def evaluate(self, frames: Sequence) -> dict:
        """Energy RMSE/MAE per atom (eV/atom) and force RMSE/MAE (eV/A) on labelled frames."""
        frames = [_labelled_copy(a) for a in _check_atoms_list(frames)]
        return _scores(self.predict(frames), frames)

    def save(self, directory) -> str:
        """Write a checkpoint directory (weights + meta.json); return its hash."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            if old.is_file():
                old.unlink()
        self._save_files(directory)
        self.references.save(directory)  # hashed with the weights: it is part of the model
        doc = ckpt.write_meta(directory, kind=KIND, backend=self.backend,
                              architecture=self.architecture, parent=self.parent,
                              training_frames=self.training_frames, metrics=self.metrics,
                              reference_energies=self.references.to_json() if self.references else None)
        self.hash = doc[ckpt.K_HASH]
        return self.hash

    @classmethod
    def load(cls, directory) -> "ForceField":
        """Load a checkpoint directory written by ``save`` of this backend.

        Called on the base class, dispatch on meta.json's backend through the
        registry.  A checkpoint of another backend or architecture raises
        BackendError.
        """
        directory = Path(directory)
        if cls is ForceField:
            from nodestore.models.registry import load_checkpoint
            return load_checkpoint(directory, kind=KIND)
        meta = ckpt.read_meta(directory, kind=KIND, backend=cls.backend)
        ckpt.verify(directory, meta)  # before anything of it is read
        ff = cls._from_files(directory, meta)
        ff.references = ReferenceEnergies.load(directory)
        ff.parent = meta[ckpt.K_PARENT]
        ff.training_frames = list(meta[ckpt.K_FRAMES])
        ff.metrics = dict(meta[ckpt.K_METRICS])
        ff.hash = meta[ckpt.K_HASH]
        return ff

    def as_calculator(self) -> "ForceFieldCalculator":
        """An ASE calculator backed by this force field."""
        return ForceFieldCalculator(self)

    @property
    def energy_method(self) -> str | None:
        """The labelling method whose energy scale this force field predicts on (None: its own)."""
        return self.references.method

    @property
    def method(self) -> str:
        """Short name of this model as an energy method, e.g. ``chgnet-0.3.0`` or ``orb@1a2b3c4d``."""
        if self.hash:
            return f"{self.backend}@{self.hash[:8]}"
        name = f"{self.backend}-{self.architecture.get('name', '')}"
        return f"{name}~{self.references.method}" if self.references.method else name

    # ------------------------------------------------------------------ helpers
    def _copy(self) -> "ForceField":
        return copy.deepcopy(self)

    def _after_training(self) -> None:
        """Hook: put the module back into inference mode after fine-tuning."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.architecture.get('name')} hash={self.hash}>"


EV_A3_TO_GPA = 160.21766208


def stress_loss(pred, frames):
    """MSE in GPa^2 of predicted Voigt stresses (torch, eV/A^3, ASE sign; one row per frame)
    over the frames that carry a stress label (0 when none does)."""
    import torch

    rows = [i for i, a in enumerate(frames) if a.info.get("_stress") is not None]
    if not rows:
        return torch.zeros((), dtype=pred.dtype)
    true = torch.tensor(np.stack([np.asarray(frames[i].info["_stress"], dtype=float) for i in rows]),
                        dtype=pred.dtype)
    return torch.mean(((pred[rows] - true) * EV_A3_TO_GPA) ** 2)


def _scores(preds: list, frames: list) -> dict:
    """Energy RMSE/MAE per atom and force RMSE/MAE of predictions against labelled copies."""
    de = np.array([(p["energy"] - a.info["_energy"]) / len(a) for p, a in zip(preds, frames)])
    df = np.concatenate([(p["forces"] - a.arrays["_forces"]).ravel() for p, a in zip(preds, frames)])
    return {"energy_rmse_per_atom": float(np.sqrt(np.mean(de ** 2))),
            "energy_mae_per_atom": float(np.mean(np.abs(de))),
            "force_rmse": float(np.sqrt(np.mean(df ** 2))),
            "force_mae": float(np.mean(np.abs(df))), "n_frames": len(frames)}


def _shifted(atoms, references) -> "object":
    """A labelled frame whose energy target is what the reference energies leave to the module."""
    out = atoms.copy()
    out.info["_energy"] = atoms.info["_energy"] - references.shift_of(atoms.numbers)
    return out


def _val_loss(ff: ForceField, val: list, weights: dict) -> float:
    """Loss on held-out frames (gradients are needed by conservative models)."""
    total = 0.0
    for start in range(0, len(val), 8):
        batch = val[start:start + 8]
        total += float(ff._loss(batch, weights).detach()) * len(batch)
    return total / len(val)


# ---------------------------------------------------------------------- ASE view
def _ase_calculator_base():
    from ase.calculators.calculator import Calculator
    return Calculator


class ForceFieldCalculator(_ase_calculator_base()):
    """ASE calculator over a ForceField; also the result cache of batched relaxation."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, forcefield: ForceField, **kwargs):
        super().__init__(**kwargs)
        self.forcefield = forcefield
        if not forcefield.supports_stress:
            self.implemented_properties = ["energy", "free_energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        from ase.calculators.calculator import all_changes
        super().calculate(atoms, properties, system_changes or all_changes)
        self._set(self.forcefield.predict([self.atoms])[0])

    def store(self, atoms, result: dict) -> None:
        """Cache a result computed elsewhere (in a batch) for this exact structure."""
        self.atoms = atoms.copy()
        self._set(result)

    def check_state(self, atoms, tol=1e-15):
        """ASE's full comparison (every array of the Atoms, with ``allclose``) unless the
        positions and cell are exactly those of the cached result: the optimizer asks for
        forces and stress several times per step of an unchanged structure, and ASE's
        comparison then cost a relaxation more than the batched model call did."""
        if (self.atoms is not None and len(atoms) == len(self.atoms)
                and np.array_equal(atoms.positions, self.atoms.positions)
                and np.array_equal(atoms.cell.array, self.atoms.cell.array)
                and np.array_equal(atoms.numbers, self.atoms.numbers)
                and np.array_equal(atoms.pbc, self.atoms.pbc)):
            return []
        return super().check_state(atoms, tol)

    def _set(self, result: dict) -> None:
        self.results = {"energy": result["energy"], "free_energy": result["energy"],
                        "forces": result["forces"]}
        if result.get("stress") is not None:
            self.results["stress"] = result["stress"]


# ---------------------------------------------------------------------- utilities
def _check_atoms_list(atoms_list) -> list:
    from ase import Atoms

    if isinstance(atoms_list, Atoms):
        raise ValidationError("expected a list of Atoms, got one Atoms (wrap it in a list)")
    out = list(atoms_list)
    for i, a in enumerate(out):
        if not isinstance(a, Atoms):
            raise ValidationError(f"item {i} is a {type(a).__name__}, not ase.Atoms")
        if len(a) == 0:
            raise ValidationError(f"item {i} has no atoms")
        if a.pbc.any() and abs(a.cell.volume) < 1e-6:
            raise ValidationError(f"item {i} is periodic with a zero-volume cell")
    return out


#: reasons of ``relax`` that say the structure left physical geometry (its energy means nothing)
GUARD_PREFIXES = ("non-finite", "volume", "atoms collapsed", "model error")


def collapsed_pair(atoms, ratio: float) -> str | None:
    """The closest pair of atoms nearer than ``ratio`` times the sum of their covalent radii, as text."""
    from ase.data import covalent_radii

    from nodestore.frames.neighbours import neighbour_list

    if len(atoms) < 2 and not atoms.pbc.any():
        return None
    radii = covalent_radii[atoms.numbers] * ratio
    i, j, d = neighbour_list("ijd", atoms, radii)  # pairs closer than ratio * (r_i + r_j)
    if not len(d):
        return None
    k = int(np.argmin(d / (radii[i] + radii[j])))
    sym = atoms.get_chemical_symbols()
    return f"atoms collapsed: {sym[i[k]]}-{sym[j[k]]} at {d[k]:.2f} A"


def _geometry_problem(atoms, v0, volume_ratio, volume_per_atom, min_distance_ratio=None) -> str | None:
    """Why relaxation must stop at this geometry (None: it may go on)."""
    if not np.all(np.isfinite(atoms.positions)) or not np.all(np.isfinite(atoms.cell.array)):
        return "non-finite positions or cell"
    if v0 is None or not atoms.pbc.all():
        return None
    v = abs(atoms.get_volume())
    if volume_per_atom is not None:
        lo, hi = volume_per_atom
        if not lo <= v / len(atoms) <= hi:
            return f"volume per atom {v / len(atoms):.3g} A^3 outside [{lo:g}, {hi:g}]"
    if volume_ratio is not None and v0 > 0:
        lo, hi = volume_ratio
        if not lo <= v / v0 <= hi:
            return f"volume {v / v0:.3g}x its start, outside [{lo:g}, {hi:g}]"
    if min_distance_ratio:
        return collapsed_pair(atoms, min_distance_ratio)
    return None


def _finite_result(res: dict) -> bool:
    if not math.isfinite(res["energy"]) or not np.all(np.isfinite(res["forces"])):
        return False
    return res.get("stress") is None or bool(np.all(np.isfinite(res["stress"])))


def _clean_result(res: dict, n_atoms: int, with_stress: bool) -> dict:
    forces = np.asarray(res["forces"], dtype=float).reshape(n_atoms, 3)
    stress = res.get("stress") if with_stress else None
    if stress is not None:
        stress = np.asarray(stress, dtype=float)
        if stress.shape == (3, 3):
            stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        stress = stress.reshape(6)
    return {"energy": float(res["energy"]), "forces": forces, "stress": stress}


def labels_of(atoms) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy, forces and (Voigt, eV/A^3) stress of a labelled frame; ValidationError if unlabelled."""
    if "_energy" in atoms.info and "_forces" in atoms.arrays:
        return atoms.info["_energy"], atoms.arrays["_forces"], atoms.info.get("_stress")
    energy = forces = stress = None
    calc = atoms.calc
    if calc is not None and getattr(calc, "results", None):
        energy = calc.results.get("energy")
        forces = calc.results.get("forces")
        stress = calc.results.get("stress")
    energy = atoms.info.get("energy", energy) if energy is None else energy
    if forces is None and "forces" in atoms.arrays:
        forces = atoms.arrays["forces"]
    if stress is None and "stress" in atoms.info:
        stress = atoms.info["stress"]
    if energy is None or forces is None:
        raise ValidationError(f"frame {atoms.get_chemical_formula()} has no energy and forces")
    if stress is not None:
        stress = np.asarray(stress, dtype=float)
        if stress.shape == (3, 3):
            stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return float(energy), np.asarray(forces, dtype=float), stress


def _labelled_copy(atoms):
    """A calculator-free copy with labels in info['_energy'], arrays['_forces'], info['_stress']."""
    energy, forces, stress = labels_of(atoms)
    out = atoms.copy()
    out.calc = None
    out.info["_energy"] = energy
    out.arrays["_forces"] = forces
    out.info["_stress"] = stress
    if "frame_id" in atoms.info:
        out.info["frame_id"] = atoms.info["frame_id"]
    return out


class _Frames:
    """Labelled training frames: in memory (a list of labelled copies), or rows of a table's
    ``FrameDataset`` read batch by batch (through a DataLoader with ``workers`` processes)."""

    def __init__(self, items: list | None = None, dataset=None, workers: int = 0):
        self.items, self.dataset, self.workers = items, dataset, int(workers)

    @classmethod
    def of(cls, frames, workers: int = 0) -> "_Frames":
        if isinstance(frames, _Frames):
            return frames
        if hasattr(frames, "__getitems__") and hasattr(frames, "rows") and hasattr(frames, "table"):
            if getattr(frames, "transform", None) is not None:
                raise ValidationError("a dataset with a transform cannot be fine-tuned on (its items must be Atoms)")
            return cls(dataset=frames, workers=workers)
        return cls([_labelled_copy(a) for a in _check_atoms_list(frames)])

    def __len__(self) -> int:
        return len(self.items) if self.items is not None else len(self.dataset)

    def subset(self, positions) -> "_Frames":
        positions = [int(i) for i in positions]
        if self.items is not None:
            return _Frames([self.items[i] for i in positions])
        return _Frames(dataset=self.dataset.subset(positions), workers=self.workers)

    def batches(self, size: int, order=None):
        """Lists of labelled copies, ``size`` at a time, in ``order`` (positions; default: as stored)."""
        order = list(range(len(self))) if order is None else list(order)
        if self.items is not None:
            for start in range(0, len(order), size):
                yield [self.items[i] for i in order[start:start + size]]
            return
        for batch in self.dataset.loader(batch_size=size, order=order, num_workers=self.workers):
            yield [_labelled_copy(a) for a in batch]

    def all(self) -> list:
        return [a for b in self.batches(256) for a in b]

    def where(self, keep) -> "_Frames":
        pos = [i for i, a in enumerate(a for b in self.batches(256) for a in b) if keep(a)]
        return self if len(pos) == len(self) else self.subset(pos)

    def residuals(self, ff, predictions: list[dict] | None = None, size: int = 64) -> tuple[list, list]:
        """The atomic numbers and the energy residuals (label - prediction of ``ff``, or of
        ``predictions`` given in frame order) of every frame, predicted ``size`` at a time."""
        numbers, residuals = [], []
        for k, batch in enumerate(self.batches(size)):
            preds = predictions[size * k:size * k + len(batch)] if predictions is not None else ff.predict(batch)
            numbers += [a.numbers for a in batch]
            residuals += [a.info["_energy"] - p["energy"] for a, p in zip(batch, preds)]
        return numbers, residuals

    def n_stress(self) -> int:
        """Frames with a stress label (a dataset: counted from its stress column, no atoms read)."""
        if self.items is not None:
            return sum(a.info.get("_stress") is not None for a in self.items)
        return int(np.isfinite(self.dataset.column("stress")).all(axis=1).sum()) if len(self) else 0

    def frame_ids(self) -> list[str]:
        if self.items is not None:
            return [_frame_id(a) for a in self.items]
        return [str(x) for x in self.dataset.frame_ids()]


def _frame_id(atoms) -> str:
    if "frame_id" in atoms.info:
        return str(atoms.info["frame_id"])
    from nodestore.frames import frame_id
    return frame_id(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)


# ---------------------------------------------------------------------- relaxation overheads
_ONCE: dict = {}


def _once_per_geometry(filter_cls):
    """``filter_cls`` whose ``get_forces`` is computed once per geometry.

    The relaxation asks each structure's gradient twice per step (the convergence test, then the
    optimizer's step), and a cell filter's gradient is not free: ``FrechetCellFilter`` takes a
    matrix logarithm and nine exponential Frechet derivatives of the cell each time.  The cache
    is keyed by the positions, the cell and the calculator's stored result, so any change of
    geometry or of the model's answer computes it anew."""
    if filter_cls is None:
        return None
    if filter_cls not in _ONCE:
        class Once(filter_cls):
            _once_key = None
            _once_forces = None

            def get_forces(self, **kwargs):
                a = self.atoms
                res = getattr(a.calc, "results", None) or {}
                key = (a.positions.tobytes(), a.cell.array.tobytes(), id(res), res.get("energy"),
                       tuple(sorted(kwargs.items())))
                if key != self._once_key:
                    self._once_forces = super().get_forces(**kwargs)
                    self._once_key = key
                return self._once_forces.copy()

        Once.__name__ = Once.__qualname__ = filter_cls.__name__
        _ONCE[filter_cls] = Once
    return _ONCE[filter_cls]


def _one_blas_thread():
    """A context in which scipy's BLAS/LAPACK runs on one thread (threadpoolctl).

    The cell filters solve 3x3 systems thousands of times per relaxation; with the BLAS
    threads of scipy's OpenBLAS meeting torch's spinning OpenMP threads, each of those tiny
    calls cost about 4x what it costs on one thread (measured: 390 against 99 us per
    ``expm_frechet``)."""
    global _BLAS
    if _BLAS is None:
        import scipy.linalg  # noqa: F401 - loaded before the controller looks for BLAS libraries
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


_BLAS = None
