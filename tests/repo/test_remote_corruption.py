"""Defect 6 of issue 11: a corrupted ``.dir`` object on a remote is exit 7 (an IntegrityError), not exit 70."""

from conftest import REFERENCE_FILES

from faults.helpers import run


def test_clone_of_a_remote_with_a_corrupted_dir_object_is_exit_7(node, tmp_path):
    node.import_files(REFERENCE_FILES, message="refs")
    node.remote_add("origin", str(tmp_path / "remote"))
    node.push("origin")
    dirs = list((tmp_path / "remote" / "objects").rglob("*.dir"))
    assert dirs
    for d in dirs:
        d.chmod(0o644)
        d.write_text("{not json")
    rc, out = run(tmp_path, "clone", tmp_path / "remote", tmp_path / "clone")
    assert rc == 7, out
    assert "corrupted" in out and not (tmp_path / "clone").exists()
