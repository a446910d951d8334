"""Force-field quality: stability classification (matbench-discovery) and label errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nodestore.errors import ValidationError


def stability_metrics(e_hull_true: Sequence[float], e_hull_pred: Sequence[float],
                      threshold: float = 0.0) -> dict[str, float]:
    """matbench-discovery's ``stable_metrics`` of predicted vs true E_hull (eV/atom).

    Keys include F1, DAF, Precision, Recall, Accuracy, MAE, RMSE, R2.  A NaN
    prediction counts as "unstable" (matbench-discovery's convention).
    """
    import warnings

    t = np.asarray(e_hull_true, dtype=float)
    p = np.asarray(e_hull_pred, dtype=float)
    if t.shape != p.shape:
        raise ValidationError(f"{len(t)} true and {len(p)} predicted E_hull values")
    if len(t) == 0:
        raise ValidationError("no E_hull values to compare")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from matbench_discovery.metrics import stable_metrics

        with np.errstate(divide="ignore", invalid="ignore"):
            out = stable_metrics(t, p, stability_threshold=threshold)
    return {k: float(v) for k, v in out.items()}


def energy_force_errors(energy_pred: Sequence[float], energy_true: Sequence[float], n_atoms: Sequence[int],
                        forces_pred: np.ndarray | None = None, forces_true: np.ndarray | None = None) -> dict:
    """Energy per atom RMSE/MAE (eV/atom) and force component RMSE/MAE (eV/Å).

    Frames or atoms with a NaN label on either side are left out.
    """
    ep = np.asarray(energy_pred, dtype=float)
    et = np.asarray(energy_true, dtype=float)
    n = np.asarray(n_atoms, dtype=float)
    if not (ep.shape == et.shape == n.shape):
        raise ValidationError("energy_pred, energy_true and n_atoms differ in length")
    ok = np.isfinite(ep) & np.isfinite(et) & (n > 0)
    d = (ep[ok] - et[ok]) / n[ok]
    out = {
        "n_frames": int(ok.sum()),
        "energy_rmse": float(np.sqrt(np.mean(d**2))) if len(d) else float("nan"),
        "energy_mae": float(np.mean(np.abs(d))) if len(d) else float("nan"),
    }
    if forces_pred is not None and forces_true is not None:
        fp = np.asarray(forces_pred, dtype=float).reshape(-1, 3)
        ft = np.asarray(forces_true, dtype=float).reshape(-1, 3)
        if fp.shape != ft.shape:
            raise ValidationError(f"forces of shapes {fp.shape} and {ft.shape}")
        okf = np.all(np.isfinite(fp), axis=1) & np.all(np.isfinite(ft), axis=1)
        df = (fp[okf] - ft[okf]).ravel()
        out["n_force_atoms"] = int(okf.sum())
        out["force_rmse"] = float(np.sqrt(np.mean(df**2))) if len(df) else float("nan")
        out["force_mae"] = float(np.mean(np.abs(df))) if len(df) else float("nan")
    return out
