"""Compiled (numba) pair tests of the matcher.

Each function here is a *necessary* condition of one step of pymatgen's
``StructureMatcher.fit`` (see :mod:`nodestore.chem.matcher` for the argument),
written as plain loops so that thousands of pairs cost microseconds instead of
numpy's per-call overhead.  All of them err on the side of "may match": a slack
far above float rounding is added to every tolerance.

Compiled on first use and cached next to this file (``cache=True``).
"""

from __future__ import annotations

import numba as nb
import numpy as np

#: enumeration box beyond which successive minima are not computed (bound skipped)
MAX_BOX = 8
#: capacity of the candidate-vector lists of one length (beyond it: "may map")
_MAX_VECS = 4096


@nb.njit(cache=True)
def _inv3(m):
    out = np.empty((3, 3))
    out[0, 0] = m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]
    out[0, 1] = m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]
    out[0, 2] = m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]
    out[1, 0] = m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]
    out[1, 1] = m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]
    out[1, 2] = m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]
    out[2, 0] = m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]
    out[2, 1] = m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]
    out[2, 2] = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    det = m[0, 0] * out[0, 0] + m[0, 1] * out[1, 0] + m[0, 2] * out[2, 0]
    return out / det


@nb.njit(cache=True)
def _det3(a, b, c):
    return (a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
            + a[2] * (b[0] * c[1] - b[1] * c[0]))


@nb.njit(cache=True)
def _boxes(m, radius):
    """Coefficient bounds: every lattice vector n @ m with norm <= radius has |n_j| <= box[j]."""
    inv = _inv3(m)
    box = np.empty(3, np.int64)
    for j in range(3):
        box[j] = int(np.floor(radius * np.sqrt(inv[0, j] ** 2 + inv[1, j] ** 2 + inv[2, j] ** 2) + 1e-9))
    return box


@nb.njit(cache=True)
def successive_minima(m):
    """The three successive minima of the lattice with row vectors ``m`` (exact: every
    vector not longer than the longest basis vector is enumerated).  Zeros, a bound that
    rejects nothing, if the enumeration box would be larger than ``MAX_BOX``."""
    r2 = 0.0
    for i in range(3):
        s = m[i, 0] ** 2 + m[i, 1] ** 2 + m[i, 2] ** 2
        if s > r2:
            r2 = s
    radius = np.sqrt(r2) * (1 + 1e-9)
    box = _boxes(m, radius)
    if box.max() > MAX_BOX:
        return np.zeros(3)
    count = (2 * box[0] + 1) * (2 * box[1] + 1) * (2 * box[2] + 1)
    vecs = np.empty((count, 3))
    norms = np.empty(count)
    k = 0
    for a in range(-box[0], box[0] + 1):
        for b in range(-box[1], box[1] + 1):
            for c in range(-box[2], box[2] + 1):
                for x in range(3):
                    vecs[k, x] = a * m[0, x] + b * m[1, x] + c * m[2, x]
                norms[k] = np.sqrt(vecs[k, 0] ** 2 + vecs[k, 1] ** 2 + vecs[k, 2] ** 2)
                k += 1
    order = np.argsort(norms, kind="mergesort")
    out = np.zeros(3)
    p1 = np.zeros(3)
    p2 = np.zeros(3)
    found = 0
    for idx in order:
        n = norms[idx]
        if n < 1e-12:
            continue
        v = vecs[idx]
        if found == 0:
            p1[:] = v
        elif found == 1:
            cx = p1[1] * v[2] - p1[2] * v[1]
            cy = p1[2] * v[0] - p1[0] * v[2]
            cz = p1[0] * v[1] - p1[1] * v[0]
            if np.sqrt(cx * cx + cy * cy + cz * cz) <= 1e-8 * out[0] * n:
                continue
            p2[:] = v
        else:
            if abs(_det3(p1, p2, v)) <= 1e-8 * out[0] * out[1] * n:
                continue
        out[found] = n
        found += 1
        if found == 3:
            return out
    return np.zeros(3)


@nb.njit(cache=True)
def _angle(u, v):
    x = u[0] * v[0] + u[1] * v[1] + u[2] * v[2]
    if x > 1.0:
        x = 1.0
    elif x < -1.0:
        x = -1.0
    return np.degrees(np.arccos(x))


@nb.njit(cache=True)
def lattice_maps(ref, clen, cang, t, atol, first_only, out):
    """Integer matrices ``F`` (rows: vectors of ``ref``'s lattice in its basis) that
    ``Lattice.find_all_mappings`` + the unimodular test of ``_get_lattices`` could
    yield for the target cell with lengths ``clen`` and angles ``cang`` (alpha, beta,
    gamma, degrees).  ``t = (1 + ltol)(1 + slack)``; ``atol`` in degrees, slack
    included.  Writes up to ``len(out)`` matrices into ``out`` and returns their
    number, ``-1`` when there were more (the caller must then not judge), or stops at
    the first with ``first_only``.
    """
    lmax = max(clen[0], max(clen[1], clen[2]))
    box = _boxes(ref, lmax * t)
    nv = (2 * box[0] + 1) * (2 * box[1] + 1) * (2 * box[2] + 1)
    nv = min(nv, _MAX_VECS)
    coef = np.empty((3, nv, 3), np.int64)
    unit = np.empty((3, nv, 3))
    cnt = np.zeros(3, np.int64)
    v = np.empty(3)
    for a in range(-box[0], box[0] + 1):
        for b in range(-box[1], box[1] + 1):
            for c in range(-box[2], box[2] + 1):
                for x in range(3):
                    v[x] = a * ref[0, x] + b * ref[1, x] + c * ref[2, x]
                n = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
                if n < 1e-12:
                    continue
                for k in range(3):
                    if n < clen[k] * t and n > clen[k] / t:
                        i = cnt[k]
                        if i >= nv:
                            return -1
                        coef[k, i, 0], coef[k, i, 1], coef[k, i, 2] = a, b, c
                        unit[k, i, 0], unit[k, i, 1], unit[k, i, 2] = v[0] / n, v[1] / n, v[2] / n
                        cnt[k] = i + 1
    if cnt[0] == 0 or cnt[1] == 0 or cnt[2] == 0:
        return 0
    found = 0
    for i in range(cnt[0]):
        for j in range(cnt[1]):
            if abs(_angle(unit[0, i], unit[1, j]) - cang[2]) > atol:
                continue
            for k in range(cnt[2]):
                if abs(_angle(unit[0, i], unit[2, k]) - cang[1]) > atol:
                    continue
                if abs(_angle(unit[1, j], unit[2, k]) - cang[0]) > atol:
                    continue
                d = _det3(coef[0, i], coef[1, j], coef[2, k])
                if abs(abs(d) - 1.0) >= 0.5:
                    continue
                if found >= out.shape[0]:
                    return -1
                out[found, 0] = coef[0, i]
                out[found, 1] = coef[1, j]
                out[found, 2] = coef[2, k]
                found += 1
                if first_only:
                    return found
    return found


@nb.njit(cache=True)
def may_map_many(refs, ref_minima, clen, csorted, cang, t, atol):
    """For one target cell against many reference cells: True where the reference may
    be mapped onto it (successive-minima bound, then a lattice mapping exists)."""
    n = refs.shape[0]
    ok = np.zeros(n, np.bool_)
    buf = np.empty((1, 3, 3), np.int64)
    for r in range(n):
        if (ref_minima[r, 0] > t * csorted[0] or ref_minima[r, 1] > t * csorted[1]
                or ref_minima[r, 2] > t * csorted[2]):
            continue
        ok[r] = lattice_maps(refs[r], clen, cang, t, atol, True, buf) != 0
    return ok


@nb.njit(cache=True)
def sites_may_match(ref, rfrac, rspec, cand, cfrac, cspec, mats, stol):
    """The site step of ``_strict_match`` (``_cmp_fstruct``: with one of the translations
    pymatgen tries, every site of ``cand`` lies within the fractional tolerance of a
    same-species site of ``ref``), for every lattice mapping in ``mats``, with slack.
    The fractional tolerance is pymatgen's: from the lattice whose parameters average
    the mapped ``ref`` cell and ``cand``'s cell."""
    n1 = rfrac.shape[0]
    n2 = cfrac.shape[0]
    # anchor: the first cand site with the most ref sites of another species (as _get_mask)
    best = -1
    i0 = 0
    for j in range(n2):
        diff = 0
        for k in range(n1):
            if rspec[k] != cspec[j]:
                diff += 1
        if diff > best:
            best = diff
            i0 = j
    clen = np.empty(3)
    for x in range(3):
        clen[x] = np.sqrt(cand[x, 0] ** 2 + cand[x, 1] ** 2 + cand[x, 2] ** 2)
    cu = np.empty((3, 3))
    for x in range(3):
        cu[x] = cand[x] / clen[x]
    cang = np.array([_angle(cu[1], cu[2]), _angle(cu[0], cu[2]), _angle(cu[0], cu[1])])
    basis = np.empty((3, 3))
    fm = np.empty((3, 3))
    s1 = np.empty((n1, 3))
    tol = np.empty(3)
    for m in range(mats.shape[0]):
        for x in range(3):
            for y in range(3):
                fm[x, y] = mats[m, x, y]
        basis[:] = fm @ ref
        lengths = np.empty(3)
        ub = np.empty((3, 3))
        for x in range(3):
            lengths[x] = np.sqrt(basis[x, 0] ** 2 + basis[x, 1] ** 2 + basis[x, 2] ** 2)
            ub[x] = basis[x] / lengths[x]
        ang = np.array([_angle(ub[1], ub[2]), _angle(ub[0], ub[2]), _angle(ub[0], ub[1])])
        L = (lengths + clen) / 2
        ca = np.cos(np.radians((ang + cang) / 2))
        G = np.empty((3, 3))
        G[0, 0], G[1, 1], G[2, 2] = L[0] ** 2, L[1] ** 2, L[2] ** 2
        G[0, 1] = G[1, 0] = L[0] * L[1] * ca[2]
        G[0, 2] = G[2, 0] = L[0] * L[2] * ca[1]
        G[1, 2] = G[2, 1] = L[1] * L[2] * ca[0]
        det = (G[0, 0] * (G[1, 1] * G[2, 2] - G[1, 2] * G[2, 1]) - G[0, 1] * (G[1, 0] * G[2, 2] - G[1, 2] * G[2, 0])
               + G[0, 2] * (G[1, 0] * G[2, 1] - G[1, 1] * G[2, 0]))
        if not det > 0:
            return True  # degenerate average lattice: do not judge
        gi = _inv3(G)
        norm = (n2 / np.sqrt(det)) ** (1.0 / 3.0)
        for x in range(3):
            tol[x] = 2 * np.pi * np.sqrt(abs(gi[x, x])) * stol / (np.pi * norm) * (1 + 1e-6) + 1e-9
        finv = _inv3(fm)
        for k in range(n1):
            for x in range(3):
                s1[k, x] = rfrac[k, 0] * finv[0, x] + rfrac[k, 1] * finv[1, x] + rfrac[k, 2] * finv[2, x]
                s1[k, x] -= np.floor(s1[k, x])
        for k0 in range(n1):
            if rspec[k0] != cspec[i0]:
                continue
            all_ok = True
            for j in range(n2):
                hit = False
                for k in range(n1):
                    if rspec[k] != cspec[j]:
                        continue
                    close = True
                    for x in range(3):
                        d = cfrac[j, x] + (s1[k0, x] - cfrac[i0, x]) - s1[k, x]
                        d -= np.floor(d + 0.5)
                        if abs(d) > tol[x]:
                            close = False
                            break
                    if close:
                        hit = True
                        break
                if not hit:
                    all_ok = False
                    break
            if all_ok:
                return True
    return False
