"""The screen believes no force-field energy far below any crystal: a candidate that fell into a
hole of the model gets no E_hull (so no label) and stays off the hull of the others."""

import numpy as np
import pytest
from ase.build import bulk

from nodestore.errors import ValidationError
from nodestore.loop.stages import MIN_E_FORM, _screen_hull

M = "ff:test"


def _items():
    li, s = bulk("Li", "bcc", a=3.44), bulk("S", "sc", a=2.0)
    li2s = bulk("SLi2", "fluorite", a=5.70)
    p = bulk("P", "sc", a=2.3)
    cands = [
        (li2s.copy(), 2 * (-1.9) - 1.5 - 3 * 1.0, M),  # Li2S, 1 eV/atom below Li and S: plausible
        (li2s.copy(), 2 * (-1.9) - 1.5 - 3 * 390, M),  # a collapse: -390 eV/atom of formation
        (p.copy(), -400.0, M),                               # an elemental candidate in a hole
    ]
    refs = [(li, -1.9, M), (s, -1.5 * len(s), M), (bulk("P", "sc", a=2.3), -5.0, M)]
    return cands + refs, len(cands)


def test_a_candidate_below_the_formation_energy_floor_gets_no_e_hull_and_leaves_the_hull():
    items, n = _items()
    e_hull, e_form, dropped = _screen_hull(items, range(len(items)), n, M, MIN_E_FORM)
    assert dropped == 2
    assert np.isnan(e_hull[1]) and np.isnan(e_hull[2])
    # without them the plausible Li2S and the references are on the hull at the right formation energy
    assert e_hull[0] == pytest.approx(0.0, abs=1e-9) and e_form[0] == pytest.approx(-1.0, abs=1e-9)
    assert np.allclose(e_hull[n:], 0.0, atol=1e-9)


def test_the_floor_can_be_switched_off_and_must_be_finite():
    items, n = _items()
    e_hull, _, dropped = _screen_hull(items, range(len(items)), n, M, None)
    assert dropped == 0 and np.isfinite(e_hull[1]) and e_hull[0] > 100  # the hole now sets the hull
    with pytest.raises(ValidationError):
        _screen_hull(items, range(len(items)), n, M, float("nan"))
