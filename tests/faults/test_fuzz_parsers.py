"""Fuzzing every parser of user input: a value is accepted or refused with one NodestoreError, never
another exception, never a hang.  Small counts by default; ``pytest --large`` runs 2,000 per parser.

An input a parser refuses is then given to the writing verb that reads it (``import`` for structure
files, ``remote add`` for URLs, ``clone`` for bundles), which must refuse it too and leave every
file as it was (``writes_nothing``; the count is printed at the end with ``-s``)."""

import contextlib
import io
import json
import os
import tarfile
import time

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nodestore.errors import NodestoreError  # noqa: E402

FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e-4, 1e308, 3.5]))
NUM_TEXT = st.one_of(FLOATS.map(repr), st.sampled_from(["", "x", "1e309", "-0", "nan", "inf", "1(2)", "3.5"]))
LIMIT_S = 10.0


def fuzz(f):
    """The hypothesis settings of this run (the profile ``--large`` selects)."""
    return settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)(f)


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    """Import the parsers' libraries once, outside the timed calls (a first import is not a hang)."""
    import ase.io.cif  # noqa: F401
    import ase.io.extxyz  # noqa: F401
    import ase.io.vasp  # noqa: F401
    import pymatgen.core  # noqa: F401
    import pymatgen.entries.computed_entries  # noqa: F401
    import pymatgen.io.ase  # noqa: F401

    import nodestore.chem.api  # noqa: F401


def refused(fn, *args) -> bool:
    """``fn(*args)`` as ``accepted_or_refused``; True when it was refused."""
    t0 = time.process_time()
    try:
        fn(*args)
        out = False
    except NodestoreError:
        out = True
    assert time.process_time() - t0 < LIMIT_S, "took longer than 10 s"
    return out


def accepted_or_refused(fn, *args):
    """``fn(*args)`` returns or raises a NodestoreError, within 10 s of CPU time (wall time
    measures the other processes of a busy machine too)."""
    refused(fn, *args)


def snapshot(root):
    """Every file and directory under ``root`` with its size and mtime (the node's private
    ``.nodestore/`` state aside): what a write would change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] == ".nodestore":
            continue
        for n in filenames + dirnames:
            if rel == "." and n == ".nodestore":
                continue
            st_ = os.lstat(os.path.join(dirpath, n))
            out[os.path.join(rel, n)] = (st_.st_size, st_.st_mtime_ns, st_.st_mode)
    return out


#: inputs refused by a parser, then given to the writing verb that reads them, and how many of those wrote
REFUSALS = {"refused": 0, "writes": 0}


def writes_nothing(root, verb, *args):
    """The writing verb refuses the input too, and nothing under ``root`` changed."""
    before = snapshot(root)
    assert refused(verb, *args), "the parser refused it, the verb accepted it"
    REFUSALS["refused"] += 1
    after = snapshot(root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    REFUSALS["writes"] += bool(changed)
    assert not changed, f"a refused input wrote {changed[:5]}"


@pytest.fixture(scope="module")
def target_node(tmp_path_factory):
    """A node that the refused files are imported into (they must leave it as it was)."""
    from conftest import REFERENCE_FILES
    from nodestore.repo import Node

    node = Node.init("Li-P-S", tmp_path_factory.mktemp("target") / "n")
    node.import_files(REFERENCE_FILES, message="refs")
    yield node
    print(f"\nwrites on refusal: {REFUSALS['writes']} of {REFUSALS['refused']} refused inputs given to a writing verb")
    assert REFUSALS["writes"] == 0


def read(tmp_path_factory, name, data, node=None):
    """The parser and validator accept the file or refuse it with one NodestoreError; a refused
    file given to ``import`` of ``node`` is refused there too and writes nothing."""
    from nodestore.frames import FrameBatch
    from nodestore.frames.io import read_file
    from nodestore.frames.validate import Rules, validate_batch

    d = tmp_path_factory.mktemp("fz")
    p = d / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))

    def go():
        images = read_file(p)
        validate_batch(FrameBatch.from_atoms(images), Rules(elements=frozenset(["Li", "P", "S"])))

    if refused(go) and node is not None:
        writes_nothing(node.path, node.import_files, [p])


CIF_TEMPLATE = """data_x
_cell_length_a {a}
_cell_length_b {b}
_cell_length_c {c}
_cell_angle_alpha {al}
_cell_angle_beta {be}
_cell_angle_gamma {ga}
_symmetry_space_group_name_H-M '{sg}'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
{sites}
"""


@fuzz
@given(a=NUM_TEXT, b=NUM_TEXT, c=NUM_TEXT, al=NUM_TEXT, be=NUM_TEXT, ga=NUM_TEXT,
       sg=st.sampled_from(["P 1", "F m -3 m", "P 63/m m c", "Q 9", ""]),
       sites=st.lists(st.tuples(st.sampled_from(["Li", "S", "P", "Xx", ""]), NUM_TEXT, NUM_TEXT, NUM_TEXT, NUM_TEXT),
                      max_size=4),
       bom=st.booleans(), junk=st.text(max_size=20))
def test_fuzz_cif(tmp_path_factory, target_node, a, b, c, al, be, ga, sg, sites, bom, junk):
    lines = "\n".join(f"{s}{i} {s} {x} {y} {z} {o}" for i, (s, x, y, z, o) in enumerate(sites))
    text = CIF_TEMPLATE.format(a=a, b=b, c=c, al=al, be=be, ga=ga, sg=sg, sites=lines) + junk
    read(tmp_path_factory, "f.cif", ("\ufeff" if bom else "") + text, node=target_node)


@fuzz
@given(scale=NUM_TEXT, cell=st.lists(NUM_TEXT, min_size=9, max_size=9), counts=st.lists(st.integers(-2, 10 ** 9), max_size=3),
       coords=st.lists(NUM_TEXT, max_size=12), direct=st.booleans())
def test_fuzz_poscar(tmp_path_factory, target_node, scale, cell, counts, coords, direct):
    rows = [" ".join(cell[i:i + 3]) for i in (0, 3, 6)]
    species = " ".join(["Li", "S", "P"][:len(counts)])
    text = "\n".join(["x", scale, *rows, species, " ".join(map(str, counts)), "Direct" if direct else "Cartesian",
                      *(" ".join(coords[i:i + 3]) for i in range(0, len(coords), 3))]) + "\n"
    read(tmp_path_factory, "POSCAR", text, node=target_node)


@fuzz
@given(n=st.one_of(st.integers(-3, 12), st.sampled_from([10 ** 9, 2 ** 63])), lattice=st.lists(NUM_TEXT, min_size=9, max_size=9),
       energy=st.one_of(st.none(), NUM_TEXT), atoms=st.lists(st.tuples(st.sampled_from(["Li", "S", "Q"]), NUM_TEXT, NUM_TEXT, NUM_TEXT),
                                                             max_size=4), frames=st.integers(1, 3))
def test_fuzz_extxyz(tmp_path_factory, target_node, n, lattice, energy, atoms, frames):
    head = f'Lattice="{" ".join(lattice)}" Properties=species:S:1:pos:R:3 ' + (f"energy={energy} " if energy is not None else "") + 'pbc="T T T"'
    body = "\n".join(f"{s} {x} {y} {z}" for s, x, y, z in atoms)
    text = "".join(f"{n}\n{head}\n{body}\n" for _ in range(frames))
    read(tmp_path_factory, "f.xyz", text, node=target_node)


JSON = st.recursive(st.one_of(st.none(), st.booleans(), FLOATS, st.integers(), st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=20)


@fuzz
@given(doc=JSON, cls=st.sampled_from([None, "Structure", "ComputedStructureEntry", "Molecule"]))
def test_fuzz_pymatgen_json(tmp_path_factory, target_node, doc, cls):
    if cls and isinstance(doc, dict):
        doc["@class"] = cls
        doc["@module"] = "pymatgen.core.structure"
    read(tmp_path_factory, "f.json", json.dumps(doc, allow_nan=True), node=target_node)


QUERY_TOKENS = st.sampled_from(["e_hull", "energy", "novel", "formula", "and", "or", "not", "<", ">=", "==", "in",
                                "[", "]", "(", ")", "'Li2S'", "0.1", "-", "nan", "__import__", ".", ",", "lambda", "x", " "])


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    from conftest import REFERENCE_FILES
    from nodestore import as_frames
    from nodestore.frames import FrameTable

    t = FrameTable.create(tmp_path_factory.mktemp("tbl") / "t")
    t.append(as_frames(REFERENCE_FILES))
    return t


@fuzz
@given(tokens=st.lists(QUERY_TOKENS, max_size=30), repeat=st.sampled_from([1, 1, 1, 5000]))
@example(tokens=["-", "'Li2S'"], repeat=1)  # found at 2,000 inputs: TypeError (exit 70)
@example(tokens=["-", "formula", "==", "'x'"], repeat=1)
@example(tokens=["-", "novel"], repeat=1)  # a boolean column: numpy refuses its negative (TypeError)
def test_fuzz_query(tmp_path_factory, small_table, target_node, tokens, repeat):
    from nodestore.loop.query import export_frames, select_rows

    expr = " ".join(tokens) * repeat
    if refused(select_rows, small_table, expr):
        # exported from, the query is refused with no file written (nor anything in the node)
        out = tmp_path_factory.mktemp("q")
        writes_nothing(out, export_frames, target_node, out / "rows.extxyz", None, None, expr)
        writes_nothing(target_node.path, export_frames, target_node, out / "rows.extxyz", None, None, expr)


@fuzz
@given(doc=JSON, section=st.sampled_from(["import", "loop", "match", "generate"]))
@example(doc=None, section="import")  # found by the writes-on-refusal check: a rolled-back iterate rewrote .git/index
def test_fuzz_params_and_node_yaml(tmp_path_factory, target_node, doc, section):
    from conftest import REFERENCE_FILES
    from nodestore.config import default_params, read_yaml
    from nodestore.loop.iterate import iterate
    from nodestore.repo import Node

    d = tmp_path_factory.mktemp("y")
    params = default_params()
    params[section] = doc
    text = yaml.safe_dump(params)
    (d / "params.yaml").write_text(text)
    if refused(read_yaml, d / "params.yaml", "params"):
        # the user's edit of the node's params.yaml: the verbs that read it refuse and write nothing
        with edited(target_node.path / "params.yaml", text):
            writes_nothing(target_node.path, iterate, target_node)
            writes_nothing(target_node.path, target_node.import_files, REFERENCE_FILES[:1])
    text = yaml.safe_dump({"schema_version": 1, "system": doc, "node_id": "x"})
    (d / "node.yaml").write_text(text)
    if refused(read_yaml, d / "node.yaml", "node"):
        with edited(target_node.path / "node.yaml", text):
            writes_nothing(target_node.path, lambda: Node.open(target_node.path).import_files(REFERENCE_FILES[:1]))


@contextlib.contextmanager
def edited(path, text):
    """``path`` holds ``text`` inside the block and its old bytes (and times) after it."""
    old, st_ = path.read_bytes(), path.stat()
    path.write_text(text)
    try:
        yield
    finally:
        path.write_bytes(old)
        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))


@fuzz
@given(url=st.one_of(st.text(max_size=40), st.sampled_from(["s3://b/x", "ssh://h/p", "file:///tmp/x", "http://", "::", "a:b"])),
       git_url=st.one_of(st.none(), st.text(max_size=20)), dvc_url=st.one_of(st.none(), st.text(max_size=20)))
@example(url="0", git_url=None, dvc_url="~0")  # found at 2,000 inputs: RuntimeError, no home of user "0"
@example(url="~nosuchuser0/x", git_url=None, dvc_url=None)
@example(url="", git_url=None, dvc_url=None)  # found by the writes-on-refusal check: `remote add` took "" for the cwd
def test_fuzz_remote_urls(target_node, url, git_url, dvc_url):
    from nodestore.repo.remote import split_url

    if "\x00" in url + (git_url or "") + (dvc_url or ""):
        return  # not a path any OS accepts
    if refused(split_url, url, git_url, dvc_url):
        writes_nothing(target_node.path, target_node.remote_add, "fz", url, git_url, dvc_url)


@fuzz
@given(members=st.lists(st.tuples(st.sampled_from(["manifest.json", "node.git/HEAD", "objects/files/md5/ab/cd", "../x",
                                                   "/abs", "other", "node.git/../../y"]),
                                  st.binary(max_size=64), st.sampled_from(["file", "dir", "sym"])), max_size=5),
       raw=st.one_of(st.none(), st.binary(max_size=200)))
def test_fuzz_bundles(tmp_path_factory, members, raw):
    from nodestore.repo import Node
    from nodestore.repo.bundle import safe_extract

    d = tmp_path_factory.mktemp("b")
    p = d / "x.nsbundle"
    if raw is not None:
        p.write_bytes(raw)
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data, kind in members:
                info = tarfile.TarInfo(name)
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "sym":
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        p.write_bytes(buf.getvalue())
    out = d / "out"
    out.mkdir()
    if refused(safe_extract, p, out):
        # cloned from, the bundle is refused with nothing left beside the bundle
        where = d / "clones"
        where.mkdir()
        writes_nothing(where, Node.clone, p, where / "n")
    assert not (d / "x").exists() and not (d.parent / "y").exists()
