"""optimade's ``EntryCollection`` over a node's table.  Imported only once optimade's
configuration is in place (see ``optimade.build_app``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from optimade.exceptions import NotImplementedResponse
from optimade.models import StructureResource
from optimade.server.entry_collections import EntryCollection
from optimade.server.mappers import StructureMapper

from .filters import MaskTransformer


class TableCollection(EntryCollection):
    """optimade's ``EntryCollection`` over a node's table (read-only)."""

    def __init__(self, columns):
        super().__init__(StructureResource, StructureMapper, MaskTransformer(mapper=StructureMapper))
        self.columns = columns

    def __len__(self) -> int:
        return self.columns.n

    def insert(self, data) -> None:
        raise NotImplementedError("a node is served read-only")

    def count(self, **kwargs: Any) -> int:
        mask = kwargs.get("filter")
        return int(self._mask(mask).sum())

    def _mask(self, flt) -> np.ndarray:
        if not flt:
            return np.ones(self.columns.n, dtype=bool)
        return np.asarray(flt(self.columns), dtype=bool)

    def _run_db_query(self, criteria: dict[str, Any], single_entry: bool = False):
        rows = np.nonzero(self._mask(criteria.get("filter")))[0]
        sort = criteria.get("sort")
        if sort:
            keys = []
            for field, direction in reversed(list(sort)):
                f = self.columns.fields.get(field)
                if f is None:
                    continue
                k = f.sort_key()[rows]
                keys.append(k if direction > 0 else np.where(np.isinf(k), np.inf, -k))
            if keys:
                rows = rows[np.lexsort(keys)]
        if criteria.get("page_above") is not None:
            raise NotImplementedResponse(detail="page_above is not supported: use page_offset or page_number")
        n = len(rows)
        limit = int(criteria.get("limit") or 20)
        skip = int(criteria.get("skip") or 0)
        page = rows[skip:skip + limit] if not single_entry else rows[:2]
        more = (skip + len(page)) < n if not single_entry else False
        return self.columns.documents(page), n, more
