"""The Triton kernels: per-program partials of one tensor in one read, and one finisher.

Imported only through :func:`gradscope.kernels.load` (it imports ``triton``, and whether
``triton.jit`` makes compiled or interpreted kernels is decided when this file runs).

* :func:`forward_partials` reads an activation output ``y`` (and its input ``x`` where the
  family needs it) once, in its own dtype, as a 3-d strided view ``(outer, units, inner)``
  whose rows are ``outer x inner``. Program ``(r, u)`` reduces a chunk of rows for a block
  of units in ``float32`` and writes :data:`FORWARD_PARTIALS` values (finite count, mean and
  centred sum of squares merged tile by tile with Chan's formula, min, max, NaN/±Inf
  counts, the family's counts and derivative sum) into the workspace, plus, per unit, the
  largest finite value of the regime's source (``+inf`` marks a unit with a NaN/Inf).
* :func:`grad_partials` reads a gradient once: the sum of squares (divided by a loss
  scale's square when one is given) and the NaN/Inf count, per program.
* :func:`finish` merges every segment of a batch (one program per segment, partials in a
  fixed order, ``float64`` accumulation): no atomics, the same result on every run.

Offsets are ``int64`` (tensors beyond 2**31 elements); comparisons with NaN are false, and
NaN/±Inf are counted apart from the min/max (a ``tl.max`` may ignore NaN).
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Values per forward program, stored structure-of-arrays (value ``k`` of program ``p`` at
#: ``k * programs + p``): finite count, mean, M2, min, max, NaN, +Inf, -Inf, saturated,
#: small derivative, derivative sum, inside (piecewise derivative), off.
FORWARD_PARTIALS = 13
#: Values per gradient program: sum of squares, NaN/Inf count.
GRAD_PARTIALS = 2
#: Columns of a segment descriptor: kind, partials offset, programs, result offset, unit
#: partials offset, units, chunks, window offset (-1: none), regime (1 relu, 2 negative),
#: three unused. The step and the window's limit (a unit whose last active step is <= it
#: is idle) are arguments: the descriptors stay the same from step to step.
DESC = 12


# Only builtins, and reductions through ``tl.reduce`` with triton's own combines (what
# ``tl.sum``/``tl.max``/``tl.min`` do; the interpreter runs these three in NumPy): when
# ``triton`` was imported before the interpreter was asked for, its ``@jit`` helpers
# (``tl.sum``, ``tl.zeros``, ...) are compiled functions that the interpreter cannot call.
_add = tl.standard._sum_combine
_max2 = tl.standard._elementwise_max
_min2 = tl.standard._elementwise_min


@triton.jit
def forward_partials(y_ptr, x_ptr, ws_ptr, unit_ptr,
                     R, U, inner, ys_o, ys_u, ys_i, xs_o, xs_u, xs_i,
                     rows_per_prog, n_progs,
                     sat_a, sat_b, in_lo, in_hi, delta, p1, p2,
                     HAS_X: tl.constexpr, SAT_LO: tl.constexpr, SAT_HI: tl.constexpr,
                     INSIDE: tl.constexpr, DERIV: tl.constexpr, REGIME: tl.constexpr,
                     SRC_X: tl.constexpr, UNITS: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_U: tl.constexpr):
    pr = tl.program_id(0)
    pu = tl.program_id(1)
    pid = pu.to(tl.int64) * tl.num_programs(0) + pr
    u = pu.to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U).to(tl.int64)
    umask = u < U
    r0 = pr.to(tl.int64) * rows_per_prog
    r_end = tl.minimum(r0 + rows_per_prog, R)
    inf = float("inf")
    zero = tl.full([], 0.0, dtype=tl.float32)
    n_acc = zero
    mean_acc = zero
    m2_acc = zero
    mn = zero + inf
    mx = zero - inf
    nan_c = zero
    pinf_c = zero
    ninf_c = zero
    sat_c = zero
    small_c = zero
    dsum = zero
    inside_c = zero
    off_c = zero
    umax = tl.full([BLOCK_U], -inf, dtype=tl.float32)
    for start in range(r0, r_end, BLOCK_R):
        r = start + tl.arange(0, BLOCK_R).to(tl.int64)
        rmask = r < r_end
        o = r // inner
        i = r - o * inner
        m = rmask[:, None] & umask[None, :]
        y = tl.load(y_ptr + (o * ys_o + i * ys_i)[:, None] + (u * ys_u)[None, :],
                    mask=m, other=0.0).to(tl.float32)
        if HAS_X:
            x = tl.load(x_ptr + (o * xs_o + i * xs_i)[:, None] + (u * xs_u)[None, :],
                        mask=m, other=0.0).to(tl.float32)
        else:
            x = y
        isnan = m & (y != y)
        ispinf = m & (y == inf)
        isninf = m & (y == -inf)
        fin = m & (y == y) & (y != inf) & (y != -inf)
        # moments of the finite elements: this tile's, merged into the program's (Chan)
        n_t = tl.reduce(fin.to(tl.float32), None, _add)
        s_t = tl.reduce(tl.where(fin, y, 0.0), None, _add)
        mean_t = s_t / tl.maximum(n_t, 1.0)
        d_t = tl.where(fin, y - mean_t, 0.0)
        m2_t = tl.reduce(d_t * d_t, None, _add)
        n_new = n_acc + n_t
        delta_m = mean_t - mean_acc
        w = n_t / tl.maximum(n_new, 1.0)
        mean_acc = mean_acc + delta_m * w
        m2_acc = m2_acc + m2_t + delta_m * delta_m * n_acc * w
        n_acc = n_new
        nan_c += tl.reduce(isnan.to(tl.float32), None, _add)
        pinf_c += tl.reduce(ispinf.to(tl.float32), None, _add)
        ninf_c += tl.reduce(isninf.to(tl.float32), None, _add)
        ordered = m & (y == y)  # NaN is left to its count
        mn = tl.minimum(mn, tl.reduce(tl.where(ordered, y, inf), None, _min2))
        mx = tl.maximum(mx, tl.reduce(tl.where(ordered, y, -inf), None, _max2))
        # saturation: y below (strictly: 1, or not: 2) sat_a, or above sat_b
        if SAT_LO + SAT_HI > 0:
            sat = (y != y) & (y == y)  # all false
            if SAT_LO == 1:
                sat = sat | (y < sat_a)
            if SAT_LO == 2:
                sat = sat | (y <= sat_a)
            if SAT_HI == 1:
                sat = sat | (y > sat_b)
            if SAT_HI == 2:
                sat = sat | (y >= sat_b)
            sat_c += tl.reduce((m & sat).to(tl.float32), None, _add)
        # the local derivative: piecewise (a count of in_lo < y < in_hi) or elementwise
        if INSIDE == 1:
            inside_c += tl.reduce((m & (y > in_lo)).to(tl.float32), None, _add)
        if INSIDE == 2:
            inside_c += tl.reduce((m & (y < in_hi)).to(tl.float32), None, _add)
        if INSIDE == 3:
            inside_c += tl.reduce((m & (y > in_lo) & (y < in_hi)).to(tl.float32), None, _add)
        if DERIV > 0:
            if DERIV == 1:  # sigmoid: y (1 - y)
                d = y - y * y
            elif DERIV == 2:  # tanh: 1 - y^2
                d = 1.0 - y * y
            elif DERIV == 3:  # softsign: (1 - |y|)^2
                a = 1.0 - tl.abs(y)
                d = a * a
            elif DERIV == 4:  # ELU, SELU: min(y, 0) + p1, p2 where y > 0
                d = tl.where(y > 0, p2, y + p1)
            elif DERIV == 5:  # CELU: min(y, 0) / p1 + 1
                d = tl.where(y > 0, 0.0, y) / p1 + 1.0
            elif DERIV == 6:  # GELU: y / x (1/2 where undefined) + x phi(x)
                c = y / x
                c = tl.where(c != c, 0.5, c)
                d = c + x * tl.exp(-0.5 * x * x) * 0.3989422804014327
            elif DERIV == 7:  # GELU, tanh approximation
                k = 0.7978845608028654
                inner_t = k * (x + 0.044715 * x * x * x)
                t = 1.0 - 2.0 / (tl.exp(2.0 * inner_t) + 1.0)
                d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
            else:  # SiLU: s (1 + x (1 - s))
                s = 1.0 / (1.0 + tl.exp(-x))
                d = s * (1.0 + x * (1.0 - s))
            small_c += tl.reduce((m & (d < delta)).to(tl.float32), None, _add)
            dsum += tl.reduce(tl.where(m, d, 0.0), None, _add)
        if REGIME > 0:
            if SRC_X:
                src = x
            else:
                src = y
            src_fin = m & (src == src) & (src != inf) & (src != -inf)
            if REGIME == 1:  # ReLU-like: finite y <= 0
                off_c += tl.reduce((src_fin & (src <= 0.0)).to(tl.float32), None, _add)
            else:  # the negative regime: finite src < 0
                off_c += tl.reduce((src_fin & (src < 0.0)).to(tl.float32), None, _add)
            if UNITS:
                v = tl.where(src_fin, src, inf)
                v = tl.where(m, v, -inf)
                umax = tl.maximum(umax, tl.reduce(v, 0, _max2))
    base = ws_ptr + pid
    tl.store(base, n_acc)
    tl.store(base + n_progs, mean_acc)
    tl.store(base + 2 * n_progs, m2_acc)
    tl.store(base + 3 * n_progs, mn)
    tl.store(base + 4 * n_progs, mx)
    tl.store(base + 5 * n_progs, nan_c)
    tl.store(base + 6 * n_progs, pinf_c)
    tl.store(base + 7 * n_progs, ninf_c)
    tl.store(base + 8 * n_progs, sat_c)
    tl.store(base + 9 * n_progs, small_c)
    tl.store(base + 10 * n_progs, dsum)
    tl.store(base + 11 * n_progs, inside_c)
    tl.store(base + 12 * n_progs, off_c)
    if UNITS:
        tl.store(unit_ptr + pr.to(tl.int64) * U + u, umax, mask=umask)


@triton.jit
def grad_partials(g_ptr, ws_ptr, scale_ptr, N, per_prog, n_progs,
                  HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    start0 = pid.to(tl.int64) * per_prog
    end = tl.minimum(start0 + per_prog, N)
    inf = float("inf")
    sq = tl.full([BLOCK], 0, dtype=tl.float32)
    bad = tl.full([BLOCK], 0, dtype=tl.float32)
    for start in range(start0, end, BLOCK):
        idx = start + tl.arange(0, BLOCK).to(tl.int64)
        m = idx < end
        g = tl.load(g_ptr + idx, mask=m, other=0.0).to(tl.float32)
        sq += g * g
        bad += ((g != g) | (g == inf) | (g == -inf)).to(tl.float32)
    ss = tl.reduce(sq, 0, _add)
    if HAS_SCALE:
        s = tl.load(scale_ptr).to(tl.float32)
        ss = ss / (s * s)
    tl.store(ws_ptr + pid, ss)
    tl.store(ws_ptr + n_progs + pid, tl.reduce(bad, 0, _add))


@triton.jit
def finish(ws_ptr, unit_ptr, desc_ptr, out_ptr, last_ptr, step, limit,
           NDESC: tl.constexpr, BLOCK: tl.constexpr):
    seg = tl.program_id(0)
    d = desc_ptr + seg.to(tl.int64) * NDESC
    kind = tl.load(d)
    p_off = tl.load(d + 1)
    n_p = tl.load(d + 2)
    r_off = tl.load(d + 3)
    out = out_ptr + r_off
    ws = ws_ptr + p_off
    lanes = tl.arange(0, BLOCK).to(tl.int64)
    inf = float("inf")
    nan = float("nan")
    if kind == 0:
        u_off = tl.load(d + 4)
        U = tl.load(d + 5)
        chunks = tl.load(d + 6)
        l_off = tl.load(d + 7)
        regime = tl.load(d + 8)
        n = tl.full([BLOCK], 0, dtype=tl.float64)
        s = tl.full([BLOCK], 0, dtype=tl.float64)
        nan_c = tl.full([BLOCK], 0, dtype=tl.float64)
        pinf_c = tl.full([BLOCK], 0, dtype=tl.float64)
        ninf_c = tl.full([BLOCK], 0, dtype=tl.float64)
        sat_c = tl.full([BLOCK], 0, dtype=tl.float64)
        small_c = tl.full([BLOCK], 0, dtype=tl.float64)
        dsum = tl.full([BLOCK], 0, dtype=tl.float64)
        inside_c = tl.full([BLOCK], 0, dtype=tl.float64)
        off_c = tl.full([BLOCK], 0, dtype=tl.float64)
        mn = tl.full([BLOCK], inf, dtype=tl.float32)
        mx = tl.full([BLOCK], -inf, dtype=tl.float32)
        for i in range(0, n_p, BLOCK):
            idx = i + lanes
            m = idx < n_p
            c = tl.load(ws + idx, mask=m, other=0.0).to(tl.float64)
            mean = tl.load(ws + n_p + idx, mask=m, other=0.0).to(tl.float64)
            n += c
            s += c * mean
            mn = tl.minimum(mn, tl.load(ws + 3 * n_p + idx, mask=m, other=inf))
            mx = tl.maximum(mx, tl.load(ws + 4 * n_p + idx, mask=m, other=-inf))
            nan_c += tl.load(ws + 5 * n_p + idx, mask=m, other=0.0).to(tl.float64)
            pinf_c += tl.load(ws + 6 * n_p + idx, mask=m, other=0.0).to(tl.float64)
            ninf_c += tl.load(ws + 7 * n_p + idx, mask=m, other=0.0).to(tl.float64)
            sat_c += tl.load(ws + 8 * n_p + idx, mask=m, other=0.0).to(tl.float64)
            small_c += tl.load(ws + 9 * n_p + idx, mask=m, other=0.0).to(tl.float64)
            dsum += tl.load(ws + 10 * n_p + idx, mask=m, other=0.0).to(tl.float64)
            inside_c += tl.load(ws + 11 * n_p + idx, mask=m, other=0.0).to(tl.float64)
            off_c += tl.load(ws + 12 * n_p + idx, mask=m, other=0.0).to(tl.float64)
        total_n = tl.reduce(n, 0, _add)
        total_s = tl.reduce(s, 0, _add)
        mu = total_s / tl.maximum(total_n, 1.0)
        m2 = tl.full([BLOCK], 0, dtype=tl.float64)
        for i in range(0, n_p, BLOCK):
            idx = i + lanes
            m = idx < n_p
            c = tl.load(ws + idx, mask=m, other=0.0).to(tl.float64)
            mean = tl.load(ws + n_p + idx, mask=m, other=0.0).to(tl.float64)
            dm = mean - mu
            m2 += tl.load(ws + 2 * n_p + idx, mask=m, other=0.0).to(tl.float64) + c * dm * dm
        nans = tl.reduce(nan_c, 0, _add)
        pinfs = tl.reduce(pinf_c, 0, _add)
        ninfs = tl.reduce(ninf_c, 0, _add)
        bad = nans + pinfs + ninfs
        the_sum = tl.where(pinfs > 0, inf, total_s)
        the_sum = tl.where(ninfs > 0, -inf, the_sum)
        the_sum = tl.where((nans > 0) | ((pinfs > 0) & (ninfs > 0)), nan, the_sum)
        tl.store(out, the_sum.to(tl.float32))
        tl.store(out + 1, tl.where(bad > 0, nan, tl.reduce(m2, 0, _add)).to(tl.float32))
        tl.store(out + 2, tl.where(nans > 0, nan, tl.reduce(mn, 0, _min2)))
        tl.store(out + 3, tl.where(nans > 0, nan, tl.reduce(mx, 0, _max2)))
        tl.store(out + 4, bad.to(tl.float32))
        tl.store(out + 5, tl.reduce(sat_c, 0, _add).to(tl.float32))
        tl.store(out + 6, tl.reduce(small_c, 0, _add).to(tl.float32))
        tl.store(out + 7, tl.reduce(dsum, 0, _add).to(tl.float32))
        tl.store(out + 8, tl.reduce(inside_c, 0, _add).to(tl.float32))
        tl.store(out + 9, tl.reduce(off_c, 0, _add).to(tl.float32))
        # units: the largest finite source value over the chunks (+inf: a NaN/Inf element)
        act = tl.full([BLOCK], 0, dtype=tl.float32)
        badu = tl.full([BLOCK], 0, dtype=tl.float32)
        idle = tl.full([BLOCK], 0, dtype=tl.float32)
        for ub in range(0, U, BLOCK):
            uu = ub + lanes
            um = uu < U
            peak = tl.full([BLOCK], -inf, dtype=tl.float32)
            for ch in range(0, chunks):
                peak = tl.maximum(peak, tl.load(unit_ptr + u_off + ch * U + uu, mask=um,
                                                other=-inf))
            is_bad = um & (peak == inf)
            if regime == 1:
                on = um & (peak != inf) & (peak > 0.0)
            else:
                on = um & (peak != inf) & (peak >= 0.0)
            act += on.to(tl.float32)
            badu += is_bad.to(tl.float32)
            if l_off >= 0:
                lp = last_ptr + l_off + uu
                last = tl.load(lp, mask=um, other=0)
                last = tl.where(on | is_bad, step, last)
                tl.store(lp, last, mask=um)
                idle += (um & (last <= limit)).to(tl.float32)
        tl.store(out + 10, tl.reduce(act, 0, _add))
        tl.store(out + 11, tl.reduce(badu, 0, _add))
        tl.store(out + 12, tl.reduce(idle, 0, _add))
    else:  # (names apart from the other branch's: Triton types each name once per branch)
        g_sq = tl.full([BLOCK], 0, dtype=tl.float64)
        g_bad = tl.full([BLOCK], 0, dtype=tl.float64)
        for i in range(0, n_p, BLOCK):
            g_idx = i + lanes
            g_m = g_idx < n_p
            g_sq += tl.load(ws + g_idx, mask=g_m, other=0.0).to(tl.float64)
            g_bad += tl.load(ws + n_p + g_idx, mask=g_m, other=0.0).to(tl.float64)
        g_nb = tl.reduce(g_bad, 0, _add)
        tl.store(out, tl.sqrt(tl.reduce(g_sq, 0, _add)).to(tl.float32))
        tl.store(out + 1, g_nb.to(tl.float32))
        tl.store(out + 2, tl.where(g_nb > 0, nan, 0.0).to(tl.float32))
