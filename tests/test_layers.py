"""The layers of DESIGN.md: each folder of nodestore/ imports only the layers below it
(models and repo are siblings: neither imports the other)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "nodestore"

#: layer -> the layers it may import
ALLOWED = {
    "frames": set(),
    "chem": {"frames"},
    "models": {"frames", "chem"},
    "repo": {"frames", "chem"},
    "loop": {"frames", "chem", "models", "repo"},
    "serve": {"frames", "chem", "models", "repo", "loop"},
    "cli": {"frames", "chem", "models", "repo", "loop", "serve"},
}


def _imported_layers(path: Path, layer: str) -> set[str]:
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PKG).parts) - 1  # folders below nodestore/
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = node.level - 1
                if up < depth:  # inside its own layer
                    continue
                names = [f"nodestore.{node.module}" if node.module else "nodestore"]
                if not node.module:
                    names = [f"nodestore.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for n in names:
            parts = n.split(".")
            if parts[0] == "nodestore" and len(parts) > 1 and parts[1] in ALLOWED and parts[1] != layer:
                out.add(parts[1])
    return out


def test_each_layer_imports_only_the_layers_below_it():
    bad = []
    for layer, allowed in ALLOWED.items():
        for f in sorted((PKG / layer).rglob("*.py")):
            wrong = _imported_layers(f, layer) - allowed
            if wrong:
                bad.append(f"{f.relative_to(PKG)} imports {sorted(wrong)}")
    assert not bad, "\n".join(bad)
