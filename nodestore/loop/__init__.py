"""The discovery loop: one entry point per DVC stage, joining models and the repository."""

from __future__ import annotations


def create_node(system, path=None, reference_method: str | None = None, **kwargs):
    """``nodestore init``: a node whose first commit already holds the loop's dvc.yaml."""
    from nodestore.repo import Node
    from nodestore.repo.init import DEFAULT_REFERENCE_METHOD

    from .pipeline import dvc_yaml

    return Node.init(system, path, reference_method=reference_method or DEFAULT_REFERENCE_METHOD,
                     files={"dvc.yaml": dvc_yaml()}, **kwargs)
