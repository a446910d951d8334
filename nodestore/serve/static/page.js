// The node's page: it reads the OPTIMADE API served beside it (../v1) and summary.json.
"use strict";
const API = new URL("../v1/", window.location.href).href;
const FIELDS = "chemical_formula_reduced,nsites,_nodestore_e_hull,_nodestore_method,_nodestore_novelty," +
  "_nodestore_iteration,_nodestore_origin";
const PAGE = 25;
let offset = 0, viewer = null;

function state() {
  const h = new URLSearchParams(window.location.hash.slice(1));
  return { filter: h.get("filter") || "", entries: h.get("entries") === "1", open: h.get("open") || "" };
}

function setState(s) {
  const h = new URLSearchParams();
  if (s.filter) h.set("filter", s.filter);
  if (s.entries) h.set("entries", "1");
  if (s.open) h.set("open", s.open);
  history.replaceState(null, "", "#" + h.toString());
}

function fmt(v, digits) {
  if (v === null || v === undefined) return "";
  return typeof v === "number" ? v.toFixed(digits) : String(v);
}

async function getJSON(url) {
  const r = await fetch(url);
  const doc = await r.json();
  if (!r.ok) throw new Error((doc.errors && doc.errors[0] && doc.errors[0].detail) || r.statusText);
  return doc;
}

async function loadTable() {
  const s = state();
  let flt = s.filter.trim();
  if (s.entries) flt = flt ? `(${flt}) AND _nodestore_is_entry = 1` : "_nodestore_is_entry = 1";
  const q = new URLSearchParams({ page_limit: PAGE, page_offset: offset, response_fields: FIELDS,
                                  sort: "_nodestore_e_hull" });
  if (flt) q.set("filter", flt);
  const count = document.getElementById("count");
  const body = document.querySelector("#table tbody");
  try {
    const doc = await getJSON(API + "structures?" + q.toString());
    body.innerHTML = "";
    for (const d of doc.data) {
      const a = d.attributes, tr = document.createElement("tr");
      tr.dataset.id = d.id;
      for (const v of [d.id, a.chemical_formula_reduced, a.nsites, fmt(a._nodestore_e_hull, 3), a._nodestore_method,
                       a._nodestore_novelty, a._nodestore_iteration, a._nodestore_origin]) {
        const td = document.createElement("td");
        td.textContent = v === null || v === undefined ? "" : v;
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => { const st = state(); st.open = d.id; setState(st); openStructure(d.id); });
      body.appendChild(tr);
    }
    const n = doc.meta.data_returned;
    count.className = "";
    count.textContent = `${n} structures match` + (flt ? ` ${flt}` : "") +
      (n ? `; showing ${offset + 1}-${offset + doc.data.length}` : "");
    document.getElementById("prev").disabled = offset === 0;
    document.getElementById("next").disabled = !doc.meta.more_data_available;
  } catch (e) {
    body.innerHTML = "";
    count.className = "error";
    count.textContent = "filter refused: " + e.message;
  }
}

function xyz(a) {
  const lines = [String(a.nsites), a.chemical_formula_reduced || ""];
  a.cartesian_site_positions.forEach((p, i) => lines.push(`${a.species_at_sites[i]} ${p[0]} ${p[1]} ${p[2]}`));
  return lines.join("\n");
}

async function openStructure(id) {
  document.querySelectorAll("#table tbody tr").forEach(tr => tr.classList.toggle("open", tr.dataset.id === id));
  const info = document.getElementById("structure-info");
  try {
    const doc = await getJSON(API + "structures/" + encodeURIComponent(id));
    const a = doc.data.attributes;
    document.getElementById("structure-id").textContent = id;
    info.textContent = `${a.chemical_formula_reduced}, ${a.nsites} sites, method ${a._nodestore_method || "none"}` +
      (a._nodestore_e_hull !== null && a._nodestore_e_hull !== undefined ? `, E_hull ${fmt(a._nodestore_e_hull, 3)} eV/atom` : "");
    info.dataset.nsites = a.nsites;
    draw(a);
  } catch (e) {
    info.className = "error";
    info.textContent = "cannot open " + id + ": " + e.message;
  }
}

function draw(a) {
  const el = document.getElementById("viewer");
  if (typeof $3Dmol === "undefined") { el.textContent = "3Dmol.js did not load"; return; }
  try {
    if (!viewer) viewer = $3Dmol.createViewer(el, { backgroundColor: "white" });
    viewer.clear();
    viewer.addModel(xyz(a), "xyz");
    viewer.setStyle({}, { sphere: { scale: 0.3 }, stick: { radius: 0.12 } });
    const L = a.lattice_vectors;
    if (L && L.every(v => v && v.every(x => x !== null))) {
      const o = [0, 0, 0], add = (p, q) => p.map((x, i) => x + q[i]);
      const c = [o, L[0], L[1], L[2], add(L[0], L[1]), add(L[0], L[2]), add(L[1], L[2]), add(add(L[0], L[1]), L[2])];
      for (const [i, j] of [[0,1],[0,2],[0,3],[1,4],[1,5],[2,4],[2,6],[3,5],[3,6],[4,7],[5,7],[6,7]]) {
        viewer.addLine({ start: { x: c[i][0], y: c[i][1], z: c[i][2] }, end: { x: c[j][0], y: c[j][1], z: c[j][2] },
                         color: "gray" });
      }
    }
    viewer.zoomTo();
    viewer.render();
    el.dataset.drawn = a.nsites;
  } catch (e) {
    el.textContent = "the 3D view needs WebGL: " + e.message;
  }
}

async function loadSummary() {
  const s = await getJSON("summary.json");
  document.getElementById("title").textContent = `nodestore node ${s.system}`;
  document.getElementById("subtitle").textContent = `commit ${s.commit.slice(0, 10)}, ${s.rows} frames, ` +
    `reference method ${s.reference_method}; OPTIMADE API at ${API}`;
  const img = document.getElementById("hull-img");
  if (s.hull) { img.src = "hull.svg"; img.hidden = false; }
  document.getElementById("hull-note").textContent = s.hull_note || "";
  const body = document.querySelector("#metrics-table tbody");
  for (const m of s.iterations) {
    const tr = document.createElement("tr");
    for (const v of [m.iteration, m.candidates, m.screened, m.labelled, m.sun, fmt(m.ff_rmse, 3)]) {
      const td = document.createElement("td");
      td.textContent = v === null || v === undefined ? "" : v;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  if (!s.iterations.length) body.innerHTML = "<tr><td colspan=6>no loop iteration at this commit</td></tr>";
}

window.addEventListener("DOMContentLoaded", async () => {
  const s = state();
  document.getElementById("filter").value = s.filter;
  document.getElementById("entries-only").checked = s.entries;
  document.getElementById("filter-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const st = state();
    st.filter = document.getElementById("filter").value;
    st.entries = document.getElementById("entries-only").checked;
    setState(st);
    offset = 0;
    loadTable();
  });
  document.getElementById("entries-only").addEventListener("change", () =>
    document.getElementById("filter-form").requestSubmit());
  document.getElementById("next").addEventListener("click", () => { offset += PAGE; loadTable(); });
  document.getElementById("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadTable(); });
  await Promise.all([loadSummary().catch(e => { document.getElementById("hull-note").textContent = e.message; }),
                     loadTable()]);
  if (s.open) await openStructure(s.open);
  document.body.dataset.ready = "1";
});
