"""The node's dvc.yaml: the discovery loop unrolled per iteration.

DVC forbids cycles, so iteration k reads only what iteration k-1 left:
``loop/iter-{prev}/models`` (the checkpoints train@prev wrote) and
``loop/iter-{prev}/table.json`` (the table manifest when prev was committed;
segments are immutable, so a manifest pins the data).  ``foreach`` over
``loop.iterations`` in params.yaml unrolls the stages; appending an item and
running ``dvc repro`` runs only the new ones.  The iterations are a mapping
keyed by k as a string (``"2": {prev: 1}``), so that DVC names the stages of
iteration k ``generate@k`` ... ``curate@k`` (a list would be named by index,
one off; integer keys unroll nothing).
"""

from __future__ import annotations

STAGES = ("generate", "screen", "select", "label", "train", "curate")


def _stage(name: str, deps: list[str], params: list[str], outs: list[str], metrics: list[str] | None = None,
           plots: list[str] | None = None) -> str:
    lines = [f"  {name}:", "    foreach: ${loop.iterations}", "    do:",
             f"      cmd: nodestore stage {name} ${{key}}"]
    lines.append("      deps:")
    lines += [f"        - {d}" for d in deps]
    if params:
        lines.append("      params:")
        lines += [f"        - {p}" for p in params]
    lines.append("      outs:")
    lines += [f"        - {o}" for o in outs]
    if metrics:
        lines.append("      metrics:")
        lines += [f"        - {m}:\n            cache: false" for m in metrics]
    if plots:
        lines.append("      plots:")
        lines += [f"        - {p}:\n            cache: false" for p in plots]
    return "\n".join(lines)


def dvc_yaml() -> str:
    cur = "loop/iter-${key}"
    prev = "loop/iter-${item.prev}"
    stages = [
        _stage("generate", [f"{prev}/models", f"{prev}/table.json"], ["generate", "generator"],
               [f"{cur}/candidates"]),
        _stage("screen", [f"{cur}/candidates", f"{prev}/models", f"{prev}/table.json"],
               ["screen", "forcefield", "match"], [f"{cur}/screened"]),
        _stage("select", [f"{cur}/screened"], ["select"], [f"{cur}/selected"]),
        _stage("label", [f"{cur}/selected"], ["label", "labeller"], [f"{cur}/labelled"]),
        _stage("train", [f"{cur}/labelled", f"{prev}/models", f"{prev}/table.json"],
               ["train", "forcefield", "generator"], [f"{cur}/models"],
               metrics=[f"{cur}/train.json"]),
        _stage("curate", [f"{cur}/screened", f"{cur}/labelled", f"{cur}/models", f"{prev}/table.json"],
               ["curate", "match"], [f"{cur}/curated"], metrics=[f"{cur}/metrics.json"],
               plots=[f"{cur}/ehull.csv"]),
    ]
    head = "# written by `nodestore init`: the discovery loop, one iteration per key k of loop.iterations\n"
    return head + "stages:\n" + "\n".join(stages) + "\n"
