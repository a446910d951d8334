"""Science commands: hull, query, entropy, classify, predict, label, iterate, stage, report, serve, motifs."""

from __future__ import annotations

import click

from . import main
from .util import JSON_OPTION, REV_OPTION, SCHEDULER_OPTION, echo_json, open_node, table_print


@main.command()
@click.option("--path", default="demo/Li-P-S", show_default=True, type=click.Path())
@click.option("--iterations", default=2, show_default=True, type=int)
@click.option("--labeller", default=None, help="Labeller backend instead of GPAW (e.g. lj for a quick look).")
@click.option("--keep", is_flag=True, help="Keep an existing demo node instead of rebuilding it.")
@JSON_OPTION
def demo(path, iterations, labeller, keep, as_json):
    """Build the Li-P-S demo node offline: references, labels, two loop iterations, report."""
    from nodestore.loop.demo import run_demo

    doc = run_demo(path, iterations=iterations, fresh=not keep, labeller=labeller,
                   echo=lambda s: click.echo(s, err=as_json))
    if as_json:
        echo_json(doc)
        return
    table_print([{"step": k, "seconds": v} for k, v in doc["timings_s"].items()])
    click.echo("")
    rows = doc["per_iteration"]
    if rows:
        cols = ["iteration", "candidates", "screened", "labelled", "sun_0.1", "predicted_stable_0.1",
                "labelled_predicted_stable_confirmed", "labelled_predicted_stable_refuted",
                "ff_prev_on_new_labels_rmse", "ff_energy_rmse_before", "ff_energy_rmse_after",
                "H_before", "H_after", "dH_mean"]
        table_print(rows, cols)
        click.echo("")
        table_print(rows, ["iteration"] + [c for c in rows[0] if c.startswith("t_")])
    click.echo(f"\n{doc['system']}: {doc['frames']} frames, {doc['labelled']} labelled, {doc['entries']} entries, "
               f"{doc['segments']} segments, {doc['iterations']} iterations; report: {doc['report']}")


@main.command()
@click.option("--method", default=None, help="Energy method of the hull (default: the node's reference method).")
@click.option("--plot", type=click.Path(), default=None, help="Write a picture of the hull.")
@click.option("--decomposition", is_flag=True, help="Also the hull phases each formula decomposes into.")
@REV_OPTION
@JSON_OPTION
@click.pass_context
def hull(ctx, method, plot, decomposition, rev, as_json):
    """Convex hull of one energy method: stable phases and E_hull per formula."""
    from nodestore.loop.actions import hull_report

    r = hull_report(open_node(ctx), method=method, rev=rev, plot=plot, decomposition=decomposition)
    if as_json:
        echo_json(r)
        return
    click.echo(f"hull of {r['method']}: stable {', '.join(r['stable'])}")
    cols = ["formula", "e_hull", "e_form", "frame_id"]
    if decomposition:
        for p in r["phases"]:
            p["decomposition"] = " + ".join(f"{x:.3g} {f}" for f, x in p["decomposition"].items())
        cols.append("decomposition")
    table_print(r["phases"], cols)


@main.command()
@click.argument("expr")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "extxyz", "cif"]), default="table")
@click.option("-o", "--output", type=click.Path(), default=None, help="File for extxyz/cif (default stdout for table/csv/json).")
@REV_OPTION
@click.pass_context
def query(ctx, expr, fmt, output, rev):
    """Rows matching EXPR, e.g. "e_hull < 0.025 and novelty == 'novel'"."""
    import numpy as np

    from nodestore.chem.api import DERIVED, QUERY_COLUMNS, query_names
    from nodestore.frames.io import TABLE_COLUMNS, table_records, write_frames
    from nodestore.loop.query import analysis_columns, select_rows

    node = open_node(ctx)
    table = node.table_at(rev)
    rows = select_rows(table, expr, node, rev)
    named = sorted(query_names(expr) - set(QUERY_COLUMNS) - set(DERIVED) - {"true", "false", "nan"})
    shown = {k: v[rows] for k, v in analysis_columns(node, table, named, rev).items()} if named else {}
    if fmt in ("extxyz", "cif"):
        if not output:
            raise click.UsageError(f"--format {fmt} needs -o FILE")
        write_frames(table.read(rows), output, fmt)
        click.echo(f"wrote {len(rows)} frames to {output}")
        return
    recs = table_records(table.read(rows, columns=[c for c in TABLE_COLUMNS]))
    for i, rec in enumerate(recs):  # the analysis columns the expression names, next to the table's
        rec.update({k: (str(v[i]) if v.dtype.kind in "UO" else None if not np.isfinite(v[i]) else float(v[i]))
                    for k, v in shown.items()})
    if output and fmt in ("csv", "json"):
        write_frames(table.read(rows), output, fmt)
        click.echo(f"wrote {len(rows)} rows to {output}")
    elif fmt == "json":
        echo_json(recs)
    elif fmt == "csv":
        import csv
        import sys

        w = csv.DictWriter(sys.stdout, fieldnames=list(TABLE_COLUMNS) + list(shown))
        w.writeheader()
        w.writerows(recs)
    else:
        table_print(recs, ["frame_id", "formula", "n_atoms", "method", "origin", "iteration", "e_hull", "novelty",
                           "is_entry", *shown])
        click.echo(f"{len(rows)} rows")


@main.command()
@REV_OPTION
@JSON_OPTION
@click.pass_context
def entropy(ctx, rev, as_json):
    """Local-environment entropy H of the node (QUESTS), per element and overall."""
    from nodestore.loop.actions import entropy_node

    r = entropy_node(open_node(ctx), rev=rev)
    if as_json:
        echo_json(r)
        return
    click.echo(f"H = {r['H']:.4f} nats over {r['n_atoms']} atomic environments")
    for el, h in (r.get("per_element") or {}).items():
        click.echo(f"  {el}: {h:.4f}")


@main.command()
@click.option("--all", "all_rows", is_flag=True, help="Reclassify every row, not only the unclassified ones.")
@click.option("-m", "--message", default=None)
@JSON_OPTION
@click.pass_context
def classify(ctx, all_rows, message, as_json):
    """Fill E_hull, novelty class, entries and chemical validity; one commit."""
    from nodestore.loop.actions import classify_node

    r = classify_node(open_node(ctx), message=message, all_rows=all_rows)
    if as_json:
        echo_json(r)
        return
    rl = r.relaxed_labels
    click.echo(f"classified {r.classified} rows {r.novelty or ''}; hull: {r.hull}; "
               f"{rl.get('relaxed', 0)} of {rl.get('labels', 0)} labels relaxed by the labeller (query: relax_step > 0)")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--model", default=None, help="Checkpoint id in models/ or a path (default: the node's current force field).")
@click.option("--relax", is_flag=True, help="Relax cell and positions first.")
@click.option("--fmax", type=float, default=0.05, show_default=True)
@click.option("--steps", type=int, default=200, show_default=True)
@JSON_OPTION
@click.pass_context
def predict(ctx, files, model, relax, fmax, steps, as_json):
    """Energy per atom and E_hull (on the force field's own hull) of the structures in FILES."""
    from nodestore.loop.actions import predict_files

    rows = predict_files(open_node(ctx), files, model=model, relax=relax, fmax=fmax, steps=steps)
    if as_json:
        echo_json(rows)
        return
    table_print(rows, ["source", "formula", "n_atoms", "energy_per_atom", "e_hull", "method"])


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--labeller", default=None, help="Labeller backend (default: params.yaml's labeller section).")
@click.option("--no-primitive", is_flag=True, help="Label the cells as given, not their primitive cells.")
@click.option("--origin", type=click.Choice(["labelled", "reference"]), default="labelled")
@click.option("-m", "--message", default=None)
@SCHEDULER_OPTION
@JSON_OPTION
@click.pass_context
def label(ctx, files, labeller, no_primitive, origin, message, as_json):
    """Label FILES with the first-principles labeller and commit them as frames with their method."""
    from nodestore.loop.actions import label_files

    r = label_files(open_node(ctx), files, labeller=labeller, message=message, reduce=not no_primitive, origin=origin)
    if as_json:
        echo_json(r)
        return
    click.echo(f"labelled {r.labelled} with {r.method}" + (f", commit {r.commit[:10]}" if r.commit else ""))
    for f in r.failures:
        click.echo(f"  failed: {f['formula']} ({f['source']}): {f['error']}", err=True)


@main.command()
@click.option("--method", default=None, help="Energy method of the frames (default: the node's reference method).")
@click.option("--backend", default=None, help="Start from a fresh pretrained model of this backend "
              "(sevenn, chgnet, orb, ...) instead of the current force field.")
@click.option("--val-fraction", type=float, default=None, help="Fraction of the frames held out (default 0.2).")
@click.option("--epochs", type=int, default=None, help="Epoch cap (default: params.yaml, else the recipe's).")
@click.option("--max-seconds", type=float, default=None, help="Stop training after this many seconds.")
@click.option("--loader-workers", type=click.IntRange(0, 64), default=None,
              help="Processes that read the frames from the table while the model trains (default 0: in process).")
@click.option("-m", "--message", default=None)
@JSON_OPTION
@click.pass_context
def train(ctx, method, backend, val_fraction, epochs, max_seconds, loader_workers, message, as_json):
    """Fine-tune the force field on the node's labelled frames of one method and commit it as current.

    Refits the per-element reference energies first, then trains on energy, forces and (where
    labelled) stress with early stopping on the held-out frames.  The training frames are
    streamed from the table batch by batch (a node's frames are never all in memory)."""
    import dataclasses

    from nodestore.loop.actions import train_forcefield

    if val_fraction is not None and not 0 < val_fraction < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--val-fraction")
    r = train_forcefield(open_node(ctx), method=method, backend=backend, val_fraction=val_fraction,
                         message=message, progress=not as_json, epochs=epochs, max_seconds=max_seconds,
                         loader_workers=loader_workers)
    if as_json:
        echo_json(dataclasses.asdict(r))
        return

    def mev(x):
        return "-" if x is None else f"{1000 * x:.1f}"

    click.echo(f"trained {r.backend} on {r.n_train} frames of {r.method} ({r.n_val} held out, {r.epochs} epochs, "
               f"best {r.best_epoch}{', frozen backbone' if r.frozen_backbone else ''}, {r.seconds:.0f} s)")
    click.echo(f"  held-out energy RMSE {mev(r.energy_rmse_before)} -> {mev(r.energy_rmse_refs)} (references) -> "
               f"{mev(r.energy_rmse_after)} meV/atom; force RMSE "
               + (f"{r.force_rmse_before:.3f} -> {r.force_rmse_after:.3f} eV/A" if r.n_val else "-"))
    click.echo(f"  checkpoint {r.checkpoint} is current" + (f", commit {r.commit[:10]}" if r.commit else ""))


@main.command()
@click.argument("name", type=click.Choice(["generate", "screen", "select", "label", "train", "curate"]))
@click.argument("k", type=int)
@click.pass_context
def stage(ctx, name, k):
    """Run loop stage NAME of iteration K (what dvc.yaml's commands call)."""
    from nodestore.loop.stages import run_stage

    r = run_stage(open_node(ctx), name, k)
    click.echo(f"{name}@{k}: " + ", ".join(f"{a}={b}" for a, b in r.items() if not isinstance(b, dict)))


@main.command()
@click.option("--run", "run_", is_flag=True, help="Also run `dvc repro` and commit the iteration.")
@SCHEDULER_OPTION
@click.option("-m", "--message", default=None)
@JSON_OPTION
@click.pass_context
def iterate(ctx, run_, message, as_json):
    """Add the next loop iteration to params.yaml (and with --run, reproduce and commit it)."""
    from nodestore.loop.iterate import iterate as do

    r = do(open_node(ctx), run=run_, message=message)
    if as_json:
        echo_json(r)
        return
    if r.added:
        click.echo(f"added iteration {r.added}" + ("" if run_ else "; run `dvc repro`, then `nodestore commit`"))
    for c in r.committed:
        click.echo(f"iteration {c['iteration']} committed as {c['commit'][:10]} (tag iter-{c['iteration']})")


@main.command()
@click.option("--out", "out_dir", default="report", show_default=True, type=click.Path())
@REV_OPTION
@click.pass_context
def report(ctx, out_dir, rev):
    """PNG plots and a one-page HTML: E_hull, entropy, learning curve, S.U.N., hull."""
    from nodestore.loop.report import write_report

    r = write_report(open_node(ctx), out_dir, rev=rev)
    click.echo(f"wrote {len(r['plots'])} plots and {r['html']}")


@main.command()
@REV_OPTION
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.pass_context
def serve(ctx, rev, host, port):
    """Serve the node at REV (default HEAD) as a read-only OPTIMADE API (info, links, structures,
    references), with a page at /nodestore/: the structures table with filters, a 3D view, the hull, the loop."""
    from nodestore.serve.optimade import serve as run

    node = open_node(ctx)
    click.echo(f"OPTIMADE API of {node.path} at {rev or 'HEAD'}: http://{host}:{port}/v1/structures, "
               f"its page: http://{host}:{port}/nodestore/ (Ctrl-C stops)")
    run(node, rev=rev or "HEAD", host=host, port=port)


@main.command()
@click.option("--all", "all_rows", is_flag=True, help="Every frame, not only the curated entries.")
@click.option("--factor", type=click.FloatRange(min=0.5, max=2.0), default=1.2, show_default=True,
              help="A bond: closer than FACTOR x the sum of covalent radii.")
@REV_OPTION
@JSON_OPTION
@click.pass_context
def motifs(ctx, all_rows, factor, rev, as_json):
    """The polyanion census: PS4, P2S7, P2S6, rings, chains ... per entry and per iteration."""
    from nodestore.loop.actions import motifs_report

    r = motifs_report(open_node(ctx), rev=rev, all_rows=all_rows, factor=factor)
    if as_json:
        echo_json(r)
        return
    table_print(r["entries"], ["frame_id", "formula", "iteration", "origin", "motifs"])
    click.echo("")
    for it in r["iterations"]:
        counts = ", ".join(f"{k} {v}" for k, v in it["counts"].items()) or "none"
        new = f"  new: {', '.join(it['new'])}" if it["new"] else ""
        click.echo(f"iteration {it['iteration']}: {counts}{new}")


@main.group()
def analyze():
    """Ask the node: analyses of its entries with its current force field, stored in the node."""


@analyze.command("stability")
@click.option("-T", "--temperature", "temperatures", type=click.FloatRange(min=0), multiple=True,
              default=(0.0, 300.0, 600.0, 900.0), show_default=True, help="Temperature (K); repeat for several.")
@click.option("-P", "--pressure", "pressures", type=float, multiple=True, default=(0.0,), show_default=True,
              help="Pressure (GPa); repeat for several.")
@click.option("--max-e-hull", type=click.FloatRange(min=0), default=0.1, show_default=True,
              help="Entries this close to the hull (eV/atom), with the reference phases.")
@click.option("--supercell", "supercell_min_length", type=click.FloatRange(min=3), default=8.0, show_default=True,
              help="Each phonon supercell vector at least this long (Å).")
@click.option("--keep-stale", is_flag=True, help="Use results of an earlier force field as they are (reported stale).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the E_hull(T, P) map (PNG).")
@SCHEDULER_OPTION
@JSON_OPTION
@click.pass_context
def analyze_stability_cmd(ctx, temperatures, pressures, max_e_hull, supercell_min_length, keep_stale, plot, as_json):
    """Finite-T, P stability: enthalpy under pressure and harmonic phonon free energies (phonopy)
    from the force field, one G(T, P) hull per temperature and pressure; imaginary modes flagged."""
    from nodestore.loop.stability import StabilitySettings, analyze_stability

    settings = StabilitySettings(temperatures=temperatures, pressures=pressures,
                                 supercell_min_length=supercell_min_length)
    r = analyze_stability(open_node(ctx), settings, max_e_hull=max_e_hull, keep_stale=keep_stale, plot=plot,
                          progress=not as_json)
    if as_json:
        echo_json(r)
        return
    cols = ["frame_id", "formula", "dynamically_stable", "min_frequency_thz", "stale"]
    cols += [k for k in (r.entries[0] if r.entries else {}) if k.startswith("g_hull_")]
    table_print([{**e, "frame_id": e["frame_id"][:10]} for e in r.entries], cols)
    click.echo(f"computed {r.computed}, cached {r.cached}, stale {len(r.stale)}, failed {len(r.failed)} "
               f"(force field {r.checkpoint}, settings {r.settings})")
    for fid, err in r.failed:
        click.echo(f"  failed: {fid[:10]}: {err}")
    if r.plot:
        click.echo(f"wrote {r.plot}")


@analyze.command("transport")
@click.option("-T", "--temperature", "temperatures", type=float, multiple=True,
              default=(600.0, 800.0, 1000.0), show_default=True, help="MD temperature (K); repeat for several.")
@click.option("--frame", "frames", multiple=True, help="A frame id (or unique prefix); repeat for several. "
              "Default: the Li compounds among the references and entries within --max-e-hull.")
@click.option("--max-e-hull", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Entries this close to the hull (eV/atom), with the reference phases.")
@click.option("--production-ps", type=float, default=10.0, show_default=True, help="Production run per temperature (ps).")
@click.option("--equilibration-ps", type=float, default=1.0, show_default=True, help="Equilibration before it (ps).")
@click.option("--timestep-fs", type=float, default=2.0, show_default=True, help="MD time step (fs).")
@click.option("--supercell", "supercell_min_length", type=float, default=8.0, show_default=True,
              help="Each supercell width at least this long (Å).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the velocities and the thermostat.")
@click.option("--keep-stale", is_flag=True, help="Use results of an earlier force field as they are (reported stale).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the Arrhenius plot and the MSDs (PNG).")
@SCHEDULER_OPTION
@JSON_OPTION
@click.pass_context
def analyze_transport_cmd(ctx, temperatures, frames, max_e_hull, production_ps, equilibration_ps, timestep_fs,
                          supercell_min_length, seed, keep_stale, plot, as_json):
    """Li-ion transport: NVT MD with the force field (Bussi thermostat, every structure and
    temperature in one batch), tracer diffusivity with its uncertainty (kinisi), Arrhenius
    activation energy and the room-temperature diffusivity and conductivity; ranked by it."""
    from nodestore.loop.transport import TransportSettings, analyze_transport

    settings = TransportSettings(temperatures=temperatures, production_ps=production_ps,
                                 equilibration_ps=equilibration_ps, timestep_fs=timestep_fs,
                                 supercell_min_length=supercell_min_length, seed=seed)
    r = analyze_transport(open_node(ctx), settings, max_e_hull=max_e_hull, frames=frames, keep_stale=keep_stale,
                          plot=plot, progress=not as_json)
    if as_json:
        echo_json(r)
        return
    d_cols = [k for k in (r.entries[0] if r.entries else {}) if k.startswith("li_diffusivity_") and
              k.endswith("K") and k != "li_diffusivity_300K"]
    cols = ["frame_id", "formula", "n_atoms", *d_cols, "li_ea", "li_ea_err", "li_ea_chi2", "li_diffusivity_300K",
            "li_conductivity_300K", "stale"]
    table_print([{**e, "frame_id": e["frame_id"][:10]} for e in r.entries], cols)
    click.echo("D* in cm²/s (unresolved from zero: see --json), Ea in eV over the resolved temperatures asked for, "
               "σ(300 K) in S/cm (Nernst-Einstein)")
    for e in r.entries:
        if (e.get("li_ea_chi2") or 0) > 4:
            click.echo(f"  {e['frame_id'][:10]} {e['formula']}: ln D* is not linear in 1/T over "
                       f"{', '.join(f'{t:g}' for t in e['fit_temperatures'])} K (reduced chi² "
                       f"{e['li_ea_chi2']:.1f}): fit a narrower window with -T")
    click.echo(f"computed {r.computed}, cached {r.cached}, stale {len(r.stale)}, failed {len(r.failed)}; "
               f"MD runs {r.runs_computed} new, {r.runs_cached} stored (force field {r.checkpoint}, "
               f"settings {r.settings})")
    for fid, err in r.failed:
        click.echo(f"  failed: {fid[:10]}: {err}")
    if r.plot:
        click.echo(f"wrote {r.plot}")


@analyze.command("electronic")
@click.option("--frame", "frames", multiple=True, help="A frame id (or unique prefix); repeat for several. "
              "Default: the reference phases and the entries within --max-e-hull.")
@click.option("--max-e-hull", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Entries this close to the hull (eV/atom), with the reference phases.")
@click.option("--width", type=float, default=0.1, show_default=True, help="Gaussian broadening of the DOS (eV).")
@click.option("--npts", type=int, default=801, show_default=True, help="Points of the DOS.")
@click.option("--window", type=(float, float), default=(-10.0, 6.0), show_default=True,
              help="DOS window relative to the Fermi level (eV).")
@click.option("--kpt-density", type=float, default=None,
              help="k-point density (per 1/Å) of the calculation; default: the node's method's.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the densities of states (PNG).")
@SCHEDULER_OPTION
@JSON_OPTION
@click.pass_context
def analyze_electronic_cmd(ctx, frames, max_e_hull, width, npts, window, kpt_density, plot, as_json):
    """Band gap and density of states by the node's labeller (GPAW: one SCF per structure with the
    node's method), stored per frame; ranked by gap."""
    from nodestore.loop.electronic import ElectronicSettings, analyze_electronic

    settings = ElectronicSettings(width=width, npts=npts, emin=window[0], emax=window[1], kpt_density=kpt_density)
    r = analyze_electronic(open_node(ctx), settings, max_e_hull=max_e_hull, frames=frames, plot=plot,
                           progress=not as_json)
    if as_json:
        echo_json(r)
        return
    table_print([{**e, "frame_id": e["frame_id"][:10]} for e in r.entries],
                ["frame_id", "formula", "n_atoms", "band_gap", "band_gap_direct", "fermi_level", "metal", "kpoints"])
    click.echo("gaps in eV (Kohn-Sham, on the calculation's k-point mesh)")
    click.echo(f"computed {r.computed}, cached {r.cached}, failed {len(r.failed)} "
               f"(labeller {r.method}, settings {r.settings})")
    for fid, err in r.failed:
        click.echo(f"  failed: {fid[:10]}: {err}")
    if r.plot:
        click.echo(f"wrote {r.plot}")
