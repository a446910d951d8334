"""Science on frames: hull, matching, novelty, entropy, curation, metrics.

Imports only ``nodestore.frames``, ``nodestore.errors``, ``nodestore.schemas_util``
and third-party libraries.  Heavy libraries load inside the submodules, so
``import nodestore.chem`` stays cheap; import the submodules you need::

    from nodestore.chem.api import hull_for_table, classify_table, query
"""

from __future__ import annotations

__all__ = ["api", "curate", "entropy", "hull", "matcher", "metrics", "novelty", "synthetic"]
