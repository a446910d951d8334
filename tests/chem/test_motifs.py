"""The polyanion census on real cells and on units built in a test cell."""

import numpy as np
import pytest
from ase import Atoms

from nodestore.chem.motifs import census, clusters

PS = 2.05  # A, a P-S bond
TET = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)


def boxed(symbols, positions, size=20.0):
    a = Atoms(symbols, positions=np.asarray(positions) + size / 2, cell=[size] * 3, pbc=True)
    return a


def test_gamma_and_beta_li3ps4_are_isolated_ps4(data_dir):
    from nodestore.frames.io import read_file

    g = read_file(data_dir / "structures" / "Li3PS4_gamma_Pmn21.cif")[0]
    assert census(g) == {"PS4": 2}
    b = read_file(data_dir / "structures" / "Li3PS4_beta_Pnma_mp-985583.json")[0]
    assert census(b) == {"PS4": 4}
    s = read_file(data_dir / "structures" / "S_alpha_Fddd.cif")[0]
    assert census(s) == {"S8 ring": 16}


def test_corner_sharing_p2s7():
    sb = PS * TET[0]
    p2 = 2 * sb  # P-S-P through the bridging S
    pos = [[0, 0, 0], *(PS * TET), p2, *(p2 - PS * TET[1:])]
    a = boxed(["P"] + ["S"] * 4 + ["P"] + ["S"] * 3, pos)
    assert census(a) == {"P2S7 (corner-sharing)": 1}


def _p2s6_pp():
    th = np.radians(70)
    pos = [[0, 0, -1.1], [0, 0, 1.1]]
    for z, sign, phis in ((-1.1, -1, (0, 120, 240)), (1.1, 1, (60, 180, 300))):
        for ph in np.radians(phis):
            pos.append([PS * np.sin(th) * np.cos(ph), PS * np.sin(th) * np.sin(ph), z + sign * PS * np.cos(th)])
    return boxed(["P", "P"] + ["S"] * 6, pos)


def test_p2s6_with_a_p_p_bond_and_edge_sharing_p2s6():
    assert census(_p2s6_pp()) == {"P2S6 (P-P bonded)": 1}
    h, al = 1.3, np.radians(55)
    d = np.sqrt(PS ** 2 - h ** 2)
    pos = [[-d, 0, 0], [d, 0, 0], [0, h, 0], [0, -h, 0]]
    for x, sgn in ((-d, -1), (d, 1)):
        pos += [[x + sgn * PS * np.cos(al), 0, PS * np.sin(al)], [x + sgn * PS * np.cos(al), 0, -PS * np.sin(al)]]
    a = boxed(["P", "P", "S", "S", "S", "S", "S", "S"], pos)
    assert census(a) == {"P2S6 (edge-sharing)": 1}


def test_alkali_atoms_are_not_bonded_and_unknown_units_get_a_stable_name():
    # Li beside a PS4 changes nothing; a PS5 unit with an S-S bond is named by composition and graph
    ps4 = [[0, 0, 0], *(PS * TET)]
    a = boxed(["P", "S", "S", "S", "S", "Li", "Li", "Li"], ps4 + [[2.4, 0, 0], [0, 2.4, 0], [0, 0, -2.4]])
    assert census(a) == {"PS4": 1}
    pos = ps4 + [list(PS * TET[0] + 2.05 * np.array([1, 0, 0]))]
    b = boxed(["P", "S", "S", "S", "S", "S"], pos)
    (c,) = clusters(b)
    assert c.label == "PS5 (S-S bonded)" and ("S", "S", 1) in c.bonds


def test_a_chain_through_the_cell_is_polymeric():
    # P-S-P-S... along x through the periodic boundary: one cluster reaching its own image
    a = Atoms("PSPS", positions=[[0, 5, 5], [2.05, 5, 5], [4.1, 5, 5], [6.15, 5, 5]], cell=[8.2, 10, 10], pbc=True)
    (c,) = clusters(a)
    assert c.polymeric and c.label.startswith("polymeric")


@pytest.mark.parametrize("factor", [1.1, 1.3])
def test_the_census_is_stable_around_the_bond_cutoff(data_dir, factor):
    from nodestore.frames.io import read_file

    g = read_file(data_dir / "structures" / "Li3PS4_gamma_Pmn21.cif")[0]
    assert census(g, factor=factor) == {"PS4": 2}
