"""Per-element reference energies: the least-squares fit, its undetermined directions and its outliers."""

import numpy as np
import pytest

from nodestore.errors import ValidationError
from nodestore.models.references import ReferenceEnergies, fit_shift

MU = {3: -0.3, 15: 0.5, 16: -1.0}
SYM = {3: "Li", 15: "P", 16: "S"}
NUMBERS = [[3]] * 3 + [[3, 3, 16]] * 3 + [[3, 15, 16, 16]] * 3 + [[3, 3, 3, 3, 16, 16]]


def residuals(numbers):
    return [sum(MU[z] for z in n) for n in numbers]


def test_fit_recovers_the_shift_exactly():
    shift, rec = fit_shift(NUMBERS, residuals(NUMBERS))
    assert rec["determined"] and rec["rank"] == 3 and rec["outliers"] == []
    for z, v in MU.items():
        assert shift[SYM[z]] == pytest.approx(v, abs=1e-12)


def test_an_absurd_frame_is_left_out_not_fitted():
    """A structure the model collapsed (off by 10 eV/atom) must not drag every reference."""
    res = residuals(NUMBERS)
    res[-1] += 6 * 10.0
    shift, rec = fit_shift(NUMBERS, res)
    assert rec["outliers"] == [9] and rec["rmse_after_per_atom"] < 1e-12
    for z, v in MU.items():
        assert shift[SYM[z]] == pytest.approx(v, abs=1e-12)
    # ordinary scatter (0.2 eV/atom on one frame) stays in the fit
    res = residuals(NUMBERS)
    res[4] += 3 * 0.2
    assert fit_shift(NUMBERS, res)[1]["outliers"] == []


def test_shift_of_and_round_trip(tmp_path):
    refs = ReferenceEnergies(shift={"Li": -0.3, "S": -1.0}, method="gpaw-pbe-pw300", fit={"n_frames": 3})
    assert refs.shift_of([3, 3, 16]) == pytest.approx(-1.6)
    assert refs.shift_of([15]) == 0.0  # an element the fit never saw keeps the model's own value
    refs.save(tmp_path)
    back = ReferenceEnergies.load(tmp_path)
    assert back == refs
    assert not ReferenceEnergies.load(tmp_path / "nowhere")


def test_fit_needs_frames():
    with pytest.raises(ValidationError):
        fit_shift([], [])
