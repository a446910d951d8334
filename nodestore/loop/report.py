"""``nodestore report``: the loop's story as PNG plots and one HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from nodestore.errors import NodestoreError
from nodestore.repo.methods import is_prediction


def _iterations(node) -> list[dict]:
    out = []
    base = node.path / "loop"
    for d in sorted(base.glob("iter-*"), key=lambda p: int(p.name.split("-")[1])):
        m = d / "metrics.json"
        if m.exists():
            doc = json.loads(m.read_text())
            eh = d / "ehull.csv"
            doc["_ehull"] = []
            if eh.exists():
                for line in eh.read_text().splitlines()[1:]:
                    parts = line.split(",")
                    doc["_ehull"].append((parts[2], float(parts[3]), parts[4]))
            out.append(doc)
    return out


def write_report(node, out_dir, rev: str | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    its = _iterations(node)
    ks = [it["iteration"] for it in its]
    plots = []

    # 1. E_hull distribution per iteration (force-field screening and labelled)
    fig, ax = plt.subplots(figsize=(6, 4))
    for it in its:
        ff = [e for m, e, _ in it["_ehull"] if is_prediction(m)]
        lab = [e for m, e, _ in it["_ehull"] if not is_prediction(m)]
        k = it["iteration"]
        if ff:
            ax.scatter(np.full(len(ff), k - 0.1) + np.random.default_rng(k).uniform(-0.05, 0.05, len(ff)), ff,
                       s=12, alpha=0.6, color="tab:blue", label="force field" if k == ks[0] else None)
        if lab:
            ax.scatter(np.full(len(lab), k + 0.1), lab, s=30, marker="D", color="tab:red",
                       label=f"labelled ({it['method']})" if k == ks[0] else None)
    ax.axhline(0.1, ls="--", color="grey", lw=0.8)
    ax.set_xticks(ks)
    ax.set_xlabel("iteration")
    ax.set_ylabel("E_hull (eV/atom)")
    ax.set_title("E_hull of new structures per iteration")
    if its:
        ax.legend(fontsize=8)
    plots.append(_save(fig, out / "ehull.png"))

    # 2. entropy H and dH per iteration: the saturation diagnostic
    fig, ax = plt.subplots(figsize=(6, 4.4))
    h = [it.get("entropy", {}).get("H_after") for it in its]
    h0 = its[0].get("entropy", {}).get("H_before") if its else None
    dh = [(it.get("entropy", {}).get("delta") or {}).get("mean") for it in its]
    xs = [0] + ks if h0 is not None else ks
    ys = ([h0] if h0 is not None else []) + h
    ax2 = ax.twinx()
    ax2.bar(ks, _nan(dh), width=0.5, alpha=0.3, color="tab:orange", label="mean δH of the new frames (right)")
    ax.plot(xs, _nan(ys), "o-", color="tab:blue", label="H of the node (left)")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xticks(xs)
    ax.set_xlabel("iteration")
    ax.set_ylabel("H (nats)")
    ax2.set_ylabel("δH (nats)")
    ax.set_title("Local-environment entropy (QUESTS)")
    _legend_below(ax, ax2)
    plots.append(_save(fig, out / "entropy.png"))

    # 3. force-field learning curve against the labelled frames of the method: errors on labels
    # it had not seen (FF(k-1) had the frames that were in the node before iteration k), and the
    # held-out split of each fine-tune (trained on the frames of the method up to iteration k)
    fig, (ax, axf) = plt.subplots(1, 2, figsize=(9, 4.4))
    tr = [(it.get("train") or {}) for it in its]
    n_seen = [t.get("frames_before") for t in tr]
    n_all = [t.get("frames") for t in tr]
    held = [(it.get("forcefield") or {}).get("energy_rmse_per_atom") for it in its]
    ft = [(t.get("finetune") or {}) for t in tr]
    ax.plot(_nan(n_seen), _nan(held), "o-", color="tab:red", label="FF(k-1) on iteration k's new labels")
    ax.plot(_nan(n_all), _nan([f.get("val_energy_rmse_per_atom_before") for f in ft]), "s--", color="tab:blue",
            alpha=0.6, label="held-out split, before fine-tune")
    ax.plot(_nan(n_all), _nan([f.get("val_energy_rmse_per_atom_refs") for f in ft]), "d:", color="tab:purple",
            label="held-out split, reference fit only")
    ax.plot(_nan(n_all), _nan([f.get("val_energy_rmse_per_atom") for f in ft]), "s-", color="tab:blue",
            label="held-out split, after fine-tune")
    _frames_axes(ax, "energy RMSE (eV/atom)", "Energy")
    axf.plot(_nan(n_all), _nan([f.get("val_force_rmse_before") for f in ft]), "s--", color="tab:green", alpha=0.6,
             label="held-out split, before fine-tune")
    axf.plot(_nan(n_all), _nan([f.get("val_force_rmse") for f in ft]), "s-", color="tab:green",
             label="held-out split, after fine-tune")
    _frames_axes(axf, "force RMSE (eV/Å)", "Forces")
    fig.suptitle("Force field against first-principles labels of the node's method")
    plots.append(_save(fig, out / "learning_curve.png"))

    # 4. S.U.N. counts per iteration
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.25
    top = 0
    for j, t in enumerate(("0.0", "0.025", "0.1")):
        vals = [((it.get("sun") or {}).get("by_threshold") or {}).get(t, {}).get("sun", 0) for it in its]
        bars = ax.bar(np.array(ks) + (j - 1) * width, vals, width, label=f"E_hull ≤ {t} eV/atom")
        ax.bar_label(bars, fontsize=8)
        top = max([top, *vals])
    ax.set_ylim(0, max(1, top) * 1.25)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xticks(ks)
    ax.set_xlabel("iteration")
    ax.set_ylabel("stable, unique, novel (labelled)")
    ax.set_title("S.U.N. structures per iteration")
    ax.legend(fontsize=8, loc="upper left")
    plots.append(_save(fig, out / "sun.png"))

    # 6 (drawn here, shown last). the polyanion census per iteration
    motif_note = ""
    try:
        plots_m = _motif_plot(node, rev, out / "motifs.png", plt)
    except NodestoreError as exc:  # no curated entries yet
        plots_m, motif_note = None, f"no motif census: {exc}"

    # 5. the hull of the reference method, new stable phases marked
    hull_note = ""
    try:
        r = _hull_plot(node, rev, out / "hull.png")
        plots.append(out / "hull.png")
        hull_note = (f"stable phases on the {r['method']} hull: {', '.join(r['stable'])}; "
                     f"found by the loop: {', '.join(r['new']) or 'none'}")
    except Exception as exc:  # a node without labelled references has no hull: say so on the page
        hull_note = f"no hull: {exc}"
    if plots_m:
        plots.append(plots_m)
    hull_note = "; ".join(n for n in (hull_note, motif_note) if n)
    analyses_html, analyses_plots = _analyses_section(node, rev, out)
    doc = node.show(rev)
    page = out / "index.html"
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in _table_row(it)) + "</tr>" for it in its)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEAD)
    imgs = "".join(f'<figure><img src="{p.name}" width="480"><figcaption>{p.stem}</figcaption></figure>' for p in plots)
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(doc['system'])} node report</title>
<style>body{{font-family:sans-serif;max-width:1040px;margin:auto}} figure{{display:inline-block;margin:4px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px}}</style></head><body>
<h1>{html.escape(doc['system'])} node</h1>
<p>commit {doc['commit'][:10]} &middot; {doc['frames']} frames, {doc['labelled']} labelled, {doc['entries']} entries,
{doc['iterations']} iterations &middot; {html.escape(hull_note)}</p>
<table><tr>{head}</tr>{rows}</table>
{_strategies_table(its)}
{imgs}{analyses_html}</body></html>
""")
    return {"plots": [str(p) for p in [*plots, *analyses_plots]], "html": str(page)}


def _strategies_table(its: list[dict]) -> str:
    """Per iteration and generator strategy: candidates, screened, predicted stable, labelled,
    confirmed by the label, and the yield (predicted stable per candidate)."""
    rows = []
    for it in its:
        for name, v in (it.get("strategies") or {}).items():
            cells = [it["iteration"], name, v.get("candidates"), v.get("screened"), v.get("predicted_stable"),
                     v.get("labelled"), v.get("confirmed"), v.get("yield")]
            rows.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("iteration", "strategy", "candidates", "screened", "predicted stable",
                                            "labelled", "confirmed", "yield"))
    return f"<h2>Generator strategies</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def _analyses_section(node, rev, out: Path) -> tuple[str, list]:
    """The stored analyses (stability, transport, electronic) at ``rev``: the page's section (one
    table of their per-frame columns, then their plots) and the plots."""
    from . import analyses, electronic, stability, transport

    figs = []
    p = stability.plot_stored(node, out / "stability.png", rev)
    if p:
        figs.append(Path(p))
    store = analyses.read(node, transport.NAME, rev)
    if store:
        figs.append(Path(transport.plot_arrhenius(store, list(store), out / "transport.png")))
    store = analyses.read(node, electronic.NAME, rev)
    if store:
        figs.append(Path(electronic.plot_dos(store, list(store), out / "electronic.png")))
    if not figs:
        return "<h2>Analyses</h2><p>none stored (nodestore analyze stability | transport | electronic)</p>", []
    table = node.table if rev is None else node.table_at(rev)
    cols = analyses.columns(node, table, rev)
    names = [c for c in ("min_frequency_thz", "dynamically_stable", "li_ea", "li_ea_err", "li_conductivity_300K",
                         "band_gap", "band_gap_direct") if c in cols]
    names += sorted(c for c in cols if c.startswith("g_hull_"))[:4]
    have = np.zeros(len(table), dtype=bool)
    for c in names:
        have |= np.isfinite(cols[c])
    ids = table.column("frame_id").astype(str)
    formulas = table.column("formula").astype(str)
    seen, body = set(), []
    for r in np.nonzero(have)[0]:
        if ids[r] in seen:
            continue
        seen.add(ids[r])
        cells = [ids[r][:10], formulas[r], *(_fmt(float(cols[c][r])) for c in names)]
        body.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("frame", "formula", *names))
    imgs = "".join(f'<figure><img src="{p.name}" width="480"><figcaption>{p.stem}</figcaption></figure>' for p in figs)
    return (f"<h2>Analyses</h2><p>stored per frame; query them by name (nodestore query \"band_gap > 1\")</p>"
            f"<table><tr>{head}</tr>{''.join(body)}</table>{imgs}"), figs


def _motif_plot(node, rev, path: Path, plt) -> Path:
    """Stacked bars: the named motifs of the entries and reference phases per iteration (units
    without a canonical name, counted together as "other"); motifs new in an iteration starred."""
    from .actions import motifs_report

    r = motifs_report(node, rev=rev)
    its = r["iterations"]
    named = sorted({k for it in its for k in it["counts"] if "#" not in k})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = [it["iteration"] for it in its]
    bottom = np.zeros(len(its))
    colours = plt.cm.tab20(np.linspace(0, 1, 20))
    for c, name in enumerate(named + ["other"]):
        vals = np.array([sum(v for k, v in it["counts"].items() if ("#" in k) == (name == "other")
                             and (name == "other" or k == name)) for it in its], dtype=float)
        if not vals.any():
            continue
        new = [name in it["new"] for it in its]
        ax.bar(ks, vals, bottom=bottom, label=name + (" *" if any(new) else ""),
               color="0.7" if name == "other" else colours[c % 20])
        bottom += vals
    ax.set_xticks(ks)
    ax.set_xlabel("iteration (0: reference phases)")
    ax.set_ylabel("units in the cells")
    ax.set_title("polyanion census (* new to the node in some iteration)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return _save(fig, path)


def _hull_plot(node, rev, path: Path) -> dict:
    """The hull of the reference method; stable phases the loop found are red stars, known ones green dots."""
    import matplotlib.pyplot as plt

    from nodestore.chem.api import hull_for_table

    table = node.table_at(rev)
    method = node.config["reference_method"]
    diagram, e_hull, _ = hull_for_table(table, method)
    origin, iteration, formula = table.column("origin"), table.column("iteration"), table.column("formula")
    found = {formula[r] for r in range(len(table)) if iteration[r] > 0 and np.isfinite(e_hull[r]) and e_hull[r] <= 1e-6}
    known = {formula[r] for r in range(len(table)) if origin[r] == "reference"}
    stable = sorted({e.composition.reduced_formula for e in diagram.stable_entries})
    new = sorted(f for f in stable if f in found and f not in known)
    els = [el.symbol for el in diagram.elements]
    fig, ax = plt.subplots(figsize=(6, 5.4))
    if len(els) == 3:
        def xy(comp):
            f = [comp.get_atomic_fraction(el) for el in diagram.elements]
            return f[1] + 0.5 * f[2], np.sqrt(3) / 2 * f[2]

        entries = diagram.qhull_entries
        for facet in diagram.facets:
            pts = [xy(entries[i].composition) for i in facet] + [xy(entries[facet[0]].composition)]
            ax.plot(*zip(*pts), color="k", lw=1)
        for e in diagram.stable_entries:
            x, y = xy(e.composition)
            f = e.composition.reduced_formula
            is_new = f in new
            ax.plot(x, y, marker="*" if is_new else "o", ms=16 if is_new else 8,
                    color="tab:red" if is_new else "tab:green", zorder=3)
            ax.annotate(f, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9,
                        color="tab:red" if is_new else "k")
        ax.set_aspect("equal")
        ax.axis("off")
    else:  # quaternary and beyond: a bar chart of formation energies of the stable phases
        form = [diagram.get_form_energy_per_atom(e) for e in diagram.stable_entries]
        names = [e.composition.reduced_formula for e in diagram.stable_entries]
        ax.barh(names, form, color=["tab:red" if n in new else "tab:green" for n in names])
        ax.set_xlabel("formation energy (eV/atom)")
    ax.set_title(f"{'-'.join(els)} hull ({method}); red: found by the loop")
    _save(fig, path)
    return {"method": method, "stable": stable, "new": new}


def _nan(xs):
    return [np.nan if x is None else x for x in xs]


TABLE_HEAD = ("iteration", "candidates", "screened", "labelled", "S.U.N. (≤0.1 eV/atom)",
              "FF(k-1) energy RMSE on new labels (eV/atom)", "H after (nats)", "mean δH (nats)")


def _table_row(it: dict) -> list:
    ent = it.get("entropy") or {}
    return [it["iteration"], it.get("candidates"), it.get("screened"), it.get("labelled"),
            ((it.get("sun") or {}).get("by_threshold") or {}).get("0.1", {}).get("sun"),
            (it.get("forcefield") or {}).get("energy_rmse_per_atom"), ent.get("H_after"),
            (ent.get("delta") or {}).get("mean")]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "–" if v is None else str(v)


def _frames_axes(ax, ylabel: str, title: str) -> None:
    def positive(get):
        return any(np.any(np.isfinite(np.asarray(get(ln), dtype=float)) & (np.asarray(get(ln), dtype=float) > 0))
                   for ln in ax.get_lines())

    # log axes only with something to draw on them (a node without iterations has nothing yet)
    if positive(lambda ln: ln.get_xdata()) and positive(lambda ln: ln.get_ydata()):
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("labelled frames of the method")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")


def _legend_below(*axes) -> None:
    handles, labels = [], []
    for a in axes:
        h, lab = a.get_legend_handles_labels()
        handles += h
        labels += lab
    axes[0].legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
                   frameon=False)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
