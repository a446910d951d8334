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
def sites_may_match(ref, rfrac, rspec, clen, cang, cfrac, cspec, mats, stol, cart):
    """The site steps of ``_strict_match`` for every lattice mapping in ``mats``, with
    slack: ``_cmp_fstruct`` (with one of the translations pymatgen tries, every site of
    ``cand`` lies within the fractional tolerance of a same-species site of ``ref``),
    then, with ``cart``, the necessary condition of ``_cart_dists`` that
    :func:`cart_feasible` decides.  The tolerances are pymatgen's: from the lattice
    whose parameters average the mapped ``ref`` cell and ``cand``'s cell (lengths
    ``clen``, angles ``cang`` in degrees; fractional coordinates ``cfrac``)."""
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
                if not cart:
                    return True
                # pymatgen now measures Cartesian distances in the average lattice
                A = np.linalg.cholesky(G)  # rows: a lattice with metric G
                r = stol / norm * (1 + 1e-6) + 1e-9
                if cart_feasible(s1, rspec, cfrac, cspec, A, r, i0):
                    return True
                break  # the Cartesian test does not depend on the translation
    return False


@nb.njit(cache=True)
def _cell(zs, starts, t, reach, out):
    """For the translations of a cell centred at ``t``: the largest distance from ``t``
    to a site's nearest candidate (returned), and, if every site has exactly one
    candidate within ``reach`` of ``t``, their mean (``out[:3]``) and the largest
    distance from it (``out[3]``); else ``out[3] = -1``."""
    worst = 0.0
    single = True
    out[0] = out[1] = out[2] = 0.0
    nsite = starts.shape[0] - 1
    for i in range(nsite):
        best = np.inf
        near = 0
        pick = -1
        for q in range(starts[i], starts[i + 1]):
            d = (zs[q, 0] - t[0]) ** 2 + (zs[q, 1] - t[1]) ** 2 + (zs[q, 2] - t[2]) ** 2
            if d < best:
                best = d
            if d < reach * reach:
                near += 1
                pick = q
        if best > worst:
            worst = best
        if near != 1:
            single = False
        elif single:
            out[0] += zs[pick, 0]
            out[1] += zs[pick, 1]
            out[2] += zs[pick, 2]
    out[3] = -1.0
    if single:
        out[0] /= nsite
        out[1] /= nsite
        out[2] /= nsite
        dev = 0.0
        for i in range(nsite):
            for q in range(starts[i], starts[i + 1]):
                d = (zs[q, 0] - t[0]) ** 2 + (zs[q, 1] - t[1]) ** 2 + (zs[q, 2] - t[2]) ** 2
                if d < reach * reach:
                    e = (zs[q, 0] - out[0]) ** 2 + (zs[q, 1] - out[1]) ** 2 + (zs[q, 2] - out[2]) ** 2
                    if e > dev:
                        dev = e
        out[3] = np.sqrt(dev)
    return np.sqrt(worst)


#: cells examined per anchor before the Cartesian test gives up (and says "may match")
_MAX_CELLS = 20000
#: subdivision depth of the translation search (cell half-width r / 2**depth)
_MAX_DEPTH = 7


@nb.njit(cache=True)
def cart_feasible(s1, rspec, s2, cspec, A, r, i0):
    """Necessary condition of ``_cart_dists`` accepting.  pymatgen takes one displacement
    ``d_i`` per site of ``s2`` (an image vector to a same-species site of ``s1``; metric
    of the rows ``A``) and accepts if every ``|d_i - t| < r`` with ``t`` their mean.  So
    some translation ``t`` has, for every site, a candidate ``d_i`` within ``r``, and is
    the mean of the chosen ones.

    Fixing site ``i0``'s partner fixes ``t`` within ``r`` of that displacement ``c`` (and
    every ``d_i`` within ``2r`` of ``c``).  Cubes of translations around ``c`` are then
    split until each is decided: no site may lack a candidate within reach of the cube
    (the distance is 1-Lipschitz in ``t``), and where every site has exactly one
    candidate in reach the choice is forced, so its mean must lie in the cube and be
    within ``r`` of all of them.  A cube still open at the depth or cell budget counts
    as "may match" (True).
    """
    n1 = s1.shape[0]
    n2 = s2.shape[0]
    ainv = _inv3(A)
    w = np.empty(3)
    for j in range(3):
        w[j] = 2 * r * np.sqrt(ainv[0, j] ** 2 + ainv[1, j] ** 2 + ainv[2, j] ** 2) + 1e-9
    cap = 64 * n2 + 64
    zs = np.empty((cap, 3))
    starts = np.zeros(n2 + 1, np.int64)
    df = np.empty(3)
    stack = np.empty((8 * _MAX_DEPTH + 16, 4))
    info = np.empty(4)
    sq3 = np.sqrt(3.0)
    for k0 in range(n1):
        if rspec[k0] != cspec[i0]:
            continue
        # anchor displacement (fractional), then every site's candidates near it
        c = np.empty(3)
        for x in range(3):
            c[x] = s1[k0, x] - s2[i0, x]
        q = 0
        empty = False
        overflow = False
        for i in range(n2):
            starts[i] = q
            for k in range(n1):
                if rspec[k] != cspec[i]:
                    continue
                for x in range(3):
                    df[x] = s1[k, x] - s2[i, x] - c[x]
                lo0 = int(np.ceil(-df[0] - w[0]))
                hi0 = int(np.floor(-df[0] + w[0]))
                lo1 = int(np.ceil(-df[1] - w[1]))
                hi1 = int(np.floor(-df[1] + w[1]))
                lo2 = int(np.ceil(-df[2] - w[2]))
                hi2 = int(np.floor(-df[2] + w[2]))
                for a in range(lo0, hi0 + 1):
                    for b in range(lo1, hi1 + 1):
                        for g in range(lo2, hi2 + 1):
                            f0, f1, f2 = df[0] + a, df[1] + b, df[2] + g
                            z0 = f0 * A[0, 0] + f1 * A[1, 0] + f2 * A[2, 0]
                            z1 = f0 * A[0, 1] + f1 * A[1, 1] + f2 * A[2, 1]
                            z2 = f0 * A[0, 2] + f1 * A[1, 2] + f2 * A[2, 2]
                            if z0 * z0 + z1 * z1 + z2 * z2 < 4 * r * r:
                                if q >= cap:
                                    overflow = True
                                else:
                                    zs[q, 0], zs[q, 1], zs[q, 2] = z0, z1, z2
                                    q += 1
            if q == starts[i]:
                empty = True
                break
        if overflow:
            return True
        if empty:
            continue
        starts[n2] = q
        # depth-first over cubes of translations t (relative to the anchor), |t| < r
        stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = 0.0, 0.0, 0.0, r
        top = 1
        seen = 0
        while top > 0:
            top -= 1
            t = stack[top, :3].copy()
            h = stack[top, 3]
            seen += 1
            if seen > _MAX_CELLS:
                return True
            rho = h * sq3 * (1 + 1e-9)
            f = _cell(zs[:q], starts, t, r + rho, info)
            if f >= r + rho:
                continue  # some site has no candidate within r of any t in this cube
            if info[3] >= 0:  # the choice is forced: its mean must be a solution in the cube
                inside = (abs(info[0] - t[0]) <= h * (1 + 1e-9) + 1e-12
                          and abs(info[1] - t[1]) <= h * (1 + 1e-9) + 1e-12
                          and abs(info[2] - t[2]) <= h * (1 + 1e-9) + 1e-12)
                if inside and info[3] < r:
                    return True
                continue
            if h < r / 2 ** _MAX_DEPTH:
                return True
            h2 = h / 2
            for sx in (-1.0, 1.0):
                for sy in (-1.0, 1.0):
                    for sz in (-1.0, 1.0):
                        stack[top, 0] = t[0] + sx * h2
                        stack[top, 1] = t[1] + sy * h2
                        stack[top, 2] = t[2] + sz * h2
                        stack[top, 3] = h2
                        top += 1
    return False
