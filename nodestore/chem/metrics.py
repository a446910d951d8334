"""Force-field quality: stability classification (matbench-discovery) and label errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nodestore.errors import ValidationError


def stability_metrics(e_hull_true: Sequence[float], e_hull_pred: Sequence[float],
                      threshold: float = 0.0) -> dict[str, float | None]:
    """matbench-discovery's ``stable_metrics`` of predicted vs true E_hull (eV/atom).

    Keys include F1, DAF, Precision, Recall, Accuracy, TP, FP, TN, FN, MAE, RMSE, R2.  A NaN
    prediction counts as "unstable" (matbench-discovery's convention).  When the labels hold
    only one class (say no stable structure, usual for a small batch), matbench-discovery cannot
    score them; the counts, accuracy and errors are still given, each ratio that divides by zero
    is None, and ``note`` says why.
    """
    import warnings

    t = np.asarray(e_hull_true, dtype=float)
    p = np.asarray(e_hull_pred, dtype=float)
    if t.shape != p.shape:
        raise ValidationError(f"{len(t)} true and {len(p)} predicted E_hull values")
    if len(t) == 0:
        raise ValidationError("no E_hull values to compare")
    ok = np.isfinite(t)
    t, p = t[ok], p[ok]
    if len(t) == 0:
        raise ValidationError("no finite true E_hull values to compare")
    true_pos = t <= threshold
    pred_pos = np.isfinite(p) & (p <= threshold)
    if true_pos.all() or not true_pos.any():
        return _one_class_metrics(t, p, true_pos, pred_pos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from matbench_discovery.metrics import stable_metrics

        with np.errstate(divide="ignore", invalid="ignore"):
            out = stable_metrics(t, p, stability_threshold=threshold)
    return {k: float(v) for k, v in out.items()}


def _one_class_metrics(t, p, true_pos, pred_pos) -> dict:
    tp, fp = int((true_pos & pred_pos).sum()), int((~true_pos & pred_pos).sum())
    fn, tn = int((true_pos & ~pred_pos).sum()), int((~true_pos & ~pred_pos).sum())

    def ratio(a, b):
        return a / b if b else None

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = None
    if precision is not None and recall is not None:
        f1 = ratio(2 * precision * recall, precision + recall) or 0.0
    prevalence = ratio(tp + fn, len(t))
    fin = np.isfinite(p)
    err = p[fin] - t[fin]
    return {"F1": f1, "Precision": precision, "Recall": recall, "Accuracy": (tp + tn) / len(t),
            "DAF": ratio(precision, prevalence) if precision is not None and prevalence else None,
            "TP": tp, "FP": fp, "TN": tn, "FN": fn,
            "MAE": float(np.abs(err).mean()) if len(err) else None,
            "RMSE": float(np.sqrt((err ** 2).mean())) if len(err) else None, "R2": None,
            "note": f"the labels hold only {'stable' if true_pos.all() else 'unstable'} structures: "
                    "ratios that divide by zero are None"}


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
