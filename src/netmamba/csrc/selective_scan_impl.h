/* The Mamba mixer's CPU kernels (selective scan, causal depthwise conv) for one element type and
 * instruction set; included by selective_scan.c once per variant.
 *
 * The includer defines:
 *   REAL        float or double
 *   VEC         a GCC vector of REAL, 32 bytes wide; VL its number of lanes
 *   SPLAT(x)    a VEC with every lane x
 *   VMAX(a, b)  lane-wise maximum
 *   LIBM_MATH   1 to compute exp / log1p with libm (float64: accuracy for gradient checks),
 *               0 for the inline polynomials
 *   TARGET      the function attribute selecting the instruction set (may be empty)
 *   NAME(x)     x with the variant's suffix appended
 * and BLOCK_VECS_FWD / BLOCK_VECS_BWD (vectors of channels per scan block) and CONV_CHUNK.
 *
 * Work is cut into jobs: one job is (batch row b, block of channels). Inputs are (B, L, E) with
 * the channel axis contiguous, so every operation is a vertical vector operation over channels
 * and B_t[n], C_t[n] are broadcast scalars.
 */

#define VEXP2 NAME(exp2)

/* Unaligned vector loads and stores: through a vector type of element alignment (one 32-byte
 * move; memcpy would be expanded as two 16-byte moves, and a 32-byte load of data just stored as
 * two halves stalls on store forwarding). */
typedef REAL NAME(uvec) __attribute__((vector_size(sizeof(VEC)), aligned(sizeof(REAL)), may_alias));
#define LOADU(p) ((VEC)(*(const NAME(uvec) *)(p)))
#define STOREU(p, v) (*(NAME(uvec) *)(p) = (v))

/* 2^t. float: t = k + f with k = round(t), f in [-1/2, 1/2]; 2^f by a degree-5 polynomial fitted
 * on that interval (relative error 1.9e-7 in float arithmetic, Estrin's scheme for a short
 * dependency chain); 2^k by adding k to the exponent bits. t is clamped to [-100, 100], so
 * results stay normal numbers (no slow denormals) and never wrap; the scan only needs t <= 0. */
static inline ALWAYS_INLINE TARGET VEC NAME(exp2)(VEC t) {
#if LIBM_MATH
    VEC r;
    for (int i = 0; i < VL; ++i) r[i] = exp2(t[i]);
    return r;
#else
    typedef int32_t ivec __attribute__((vector_size(sizeof(VEC))));
    t = VMAX(t, SPLAT(-100.0f));
    t = -VMAX(-t, SPLAT(-100.0f));
    const VEC magic = SPLAT(12582912.0f); /* 1.5 * 2^23: t + magic rounds t to an integer */
    const VEC r = t + magic;
    const VEC f = t - (r - magic);
    const ivec k = (ivec)r - (ivec)magic;
    const VEC f2 = f * f;
    const VEC p01 = SPLAT(6.9314685594e-01f) * f + SPLAT(1.0f);
    const VEC p23 = SPLAT(5.5508929525e-02f) * f + SPLAT(2.4022238003e-01f);
    const VEC p45 = SPLAT(1.3218672482e-03f) * f + SPLAT(9.6716979384e-03f);
    const VEC p = p01 + f2 * (p23 + f2 * p45);
    return (VEC)((ivec)p + (k << 23));
#endif
}

/* sigmoid(z) = 1 / (1 + e^-z) = 1 / (1 + 2^(-z log2 e)) */
static inline ALWAYS_INLINE TARGET VEC NAME(sigmoid)(VEC z) {
    const VEC one = SPLAT(1);
    return one / (one + VEXP2(z * SPLAT((REAL)-LOG2E)));
}

/* softplus(x) = max(x, 0) + log1p(e^-|x|). With y = e^-|x| in (0, 1] and s = y / (2 + y) in
 * (0, 1/3]: log1p(y) = 2 atanh(s) = 2 (s + s^3/3 + ... + s^11/11), truncation error < 1e-7. */
static inline ALWAYS_INLINE TARGET VEC NAME(softplus)(VEC x) {
#if LIBM_MATH
    VEC r;
    for (int i = 0; i < VL; ++i) r[i] = (x[i] > 0 ? x[i] : 0) + log1p(exp(-fabs(x[i])));
    return r;
#else
    const VEC ax = VMAX(x, -x);
    const VEC y = VEXP2(ax * SPLAT((REAL)-LOG2E));
    const VEC s = y / (SPLAT(2) + y), s2 = s * s;
    VEC p = SPLAT(1.0f / 11);
    p = p * s2 + SPLAT(1.0f / 9);
    p = p * s2 + SPLAT(1.0f / 7);
    p = p * s2 + SPLAT(1.0f / 5);
    p = p * s2 + SPLAT(1.0f / 3);
    p = p * s2 + SPLAT(1);
    return VMAX(x, SPLAT(0)) + SPLAT(2) * s * p;
#endif
}

static inline ALWAYS_INLINE TARGET REAL NAME(hsum)(VEC v) {
    REAL s = 0;
    for (int i = 0; i < VL; ++i) s += v[i];
    return s;
}

/* out[n] += the sum of the lanes of v[n], for n < N (eight at a time where REDUCE8 exists: a
 * transposing reduction costs 10 instructions for 8 sums instead of about 50). */
static inline ALWAYS_INLINE TARGET void NAME(add_lane_sums)(REAL *out, const VEC *v, int64_t N) {
    int64_t n = 0;
#ifdef REDUCE8
    for (; n + 8 <= N; n += 8) STOREU(out + n, LOADU(out + n) + REDUCE8(v + n));
#endif
    for (; n < N; ++n) out[n] += NAME(hsum)(v[n]);
}

static inline ALWAYS_INLINE REAL NAME(mask_at)(const uint8_t *mask, int64_t sb, int64_t sl, int64_t b,
                                 int64_t l) {
    return (!mask || mask[b * sb + l * sl]) ? 1 : 0;
}

/* Gather rows [0, L) of channels [e0, e0 + width) of a (B, L, E) tensor (channel stride 1)
 * into dst[L][W], zero-padding the lanes past `width`. */
static TARGET void NAME(gather)(REAL *restrict dst, const REAL *src, int64_t stride_l, int64_t L,
                                int64_t width, int64_t W) {
    for (int64_t l = 0; l < L; ++l) {
        const REAL *row = src + l * stride_l;
        REAL *out = dst + l * W;
        int64_t i = 0;
        for (; i + VL <= width; i += VL) *(VEC *)(out + i) = LOADU(row + i);
        for (; i < width; ++i) out[i] = row[i];
        for (; i < W; ++i) out[i] = 0;
    }
}

static TARGET void NAME(scatter)(REAL *dst, const REAL *restrict src, int64_t stride_l, int64_t L,
                                 int64_t width, int64_t W) {
    for (int64_t l = 0; l < L; ++l) {
        REAL *row = dst + l * stride_l;
        const REAL *in = src + l * W;
        int64_t i = 0;
        for (; i + VL <= width; i += VL) STOREU(row + i, *(const VEC *)(in + i));
        for (; i < width; ++i) row[i] = in[i];
    }
}

/* ==== selective scan ========================================================================= */

typedef struct {
    REAL *u, *delta, *z, *dout, *out, *dgate, *du, *ddelta, *dsoft; /* [L][W] */
    REAL *Bl, *Cl;                                                  /* [L][N] */
    REAL *A, *A2, *D, *bias;                                        /* [N][W], [N][W], [W], [W] */
    REAL *h;                                                        /* [N][W] or [L][N][W] */
    REAL *dA, *dD, *dbias;                                          /* [N][W], [W], [W] */
} NAME(workspace);

static int NAME(workspace_alloc)(NAME(workspace) * ws, int64_t L, int64_t N, int64_t W,
                                 int backward) {
    memset(ws, 0, sizeof(*ws));
    const size_t lw = (size_t)L * W, ln = (size_t)L * N, nw = (size_t)N * W;
    REAL **rows[] = {&ws->u,     &ws->delta, &ws->z,      &ws->dout, &ws->out,
                     &ws->dgate, &ws->du,    &ws->ddelta, &ws->dsoft};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); ++i)
        if (!(*rows[i] = scan_alloc(lw * sizeof(REAL)))) return -1;
    REAL **small[] = {&ws->A, &ws->A2, &ws->dA};
    for (size_t i = 0; i < sizeof(small) / sizeof(small[0]); ++i)
        if (!(*small[i] = scan_alloc(nw * sizeof(REAL)))) return -1;
    REAL **lanes[] = {&ws->D, &ws->bias, &ws->dD, &ws->dbias};
    for (size_t i = 0; i < sizeof(lanes) / sizeof(lanes[0]); ++i)
        if (!(*lanes[i] = scan_alloc(W * sizeof(REAL)))) return -1;
    if (!(ws->Bl = scan_alloc(ln * sizeof(REAL))) || !(ws->Cl = scan_alloc(ln * sizeof(REAL))))
        return -1;
    if (!(ws->h = scan_alloc((backward ? (size_t)L : 1) * nw * sizeof(REAL)))) return -1;
    return 0;
}

static void NAME(workspace_free)(NAME(workspace) * ws) {
    REAL *all[] = {ws->u,  ws->delta, ws->z,  ws->dout, ws->out,  ws->dgate, ws->du,
                   ws->ddelta, ws->dsoft, ws->Bl, ws->Cl, ws->A, ws->A2, ws->D,
                   ws->bias, ws->h, ws->dA, ws->dD, ws->dbias};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); ++i) free(all[i]);
}

typedef struct {
    REAL *h, *A2;                                   /* [blocks][N][W] */
    REAL *D, *bias;                                 /* [blocks][W] */
    REAL *row_u, *row_delta, *row_z, *row_out;      /* [W]: the tail block's part of a row */
} NAME(fwd_workspace);

static int NAME(fwd_workspace_alloc)(NAME(fwd_workspace) * ws, int64_t blocks, int64_t N,
                                     int64_t W) {
    memset(ws, 0, sizeof(*ws));
    if (!(ws->h = scan_alloc((size_t)blocks * N * W * sizeof(REAL))) ||
        !(ws->A2 = scan_alloc((size_t)blocks * N * W * sizeof(REAL))) ||
        !(ws->D = scan_alloc((size_t)blocks * W * sizeof(REAL))) ||
        !(ws->bias = scan_alloc((size_t)blocks * W * sizeof(REAL))))
        return -1;
    REAL **rows[] = {&ws->row_u, &ws->row_delta, &ws->row_z, &ws->row_out};
    for (int i = 0; i < 4; ++i)
        if (!(*rows[i] = scan_alloc((size_t)W * sizeof(REAL)))) return -1;
    return 0;
}

static void NAME(fwd_workspace_free)(NAME(fwd_workspace) * ws) {
    REAL *all[] = {ws->h, ws->A2, ws->D, ws->bias, ws->row_u, ws->row_delta, ws->row_z,
                   ws->row_out};
    for (int i = 0; i < 8; ++i) free(all[i]);
}

/* B or C of batch row b as [L][N] contiguous. */
static TARGET void NAME(gather_states)(REAL *restrict dst, const REAL *src, int64_t stride_l,
                                       int64_t L, int64_t N) {
    for (int64_t l = 0; l < L; ++l)
        for (int64_t n = 0; n < N; ++n) dst[l * N + n] = src[l * stride_l + n];
}

/* B and C of row b; A (and A log2 e), D and the delta bias of the block. */
static TARGET void NAME(load_block)(NAME(workspace) * ws, const scan_args *a, int64_t b,
                                    int64_t e0, int64_t width, int64_t W) {
    const int64_t L = a->length, N = a->states;
    const REAL *A = a->A, *D = a->D, *bias = a->delta_bias;
    NAME(gather_states)(ws->Bl, (const REAL *)a->Bm + b * a->B_sb, a->B_sl, L, N);
    NAME(gather_states)(ws->Cl, (const REAL *)a->Cm + b * a->C_sb, a->C_sl, L, N);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < W; ++i) {
            const REAL an = i < width ? A[(e0 + i) * N + n] : 0;
            ws->A[n * W + i] = an;
            ws->A2[n * W + i] = an * (REAL)LOG2E; /* exp(d A) = 2^(d A log2 e) */
        }
    for (int64_t i = 0; i < W; ++i) {
        ws->D[i] = (D && i < width) ? D[e0 + i] : 0;
        ws->bias[i] = (bias && i < width) ? bias[e0 + i] : 0;
    }
}

/* delta as the scan uses it: softplus(delta + bias) (when asked), times the mask m (0 or 1).
 * `dsoft` receives d delta / d raw delta = sigmoid(delta + bias) m (or m). */
static inline ALWAYS_INLINE TARGET VEC NAME(effective_delta)(const scan_args *a, VEC raw,
                                                             VEC bias, REAL m, VEC *dsoft) {
    const VEC x = raw + bias;
    if (a->delta_softplus) {
        if (dsoft) *dsoft = NAME(sigmoid)(x) * SPLAT(m);
        return NAME(softplus)(x) * SPLAT(m);
    }
    if (dsoft) *dsoft = SPLAT(m);
    return x * SPLAT(m);
}

/* Forward of one job, (row b, channel blocks [blk0, blk1)):
 *   h_t[n] = exp(delta_t A[n]) h_{t-1}[n] + delta_t B_t[n] u_t,  y = sum_n C_t[n] h_t[n] + D u_t,
 *   out = y * silu(z).
 * Positions outer, channel blocks inner: each step reads one contiguous stretch of the rows of
 * u, delta and z (which the hardware prefetcher follows; a block's column, rows 2-4 KB apart,
 * it does not), while the states of every block stay in L1/L2. A masked position (delta = 0)
 * leaves h unchanged, so it skips the exponentials. */
static TARGET void NAME(scan_forward_job)(NAME(fwd_workspace) * ws, const scan_args *a, int64_t b,
                                          int64_t blk0, int64_t blk1) {
    enum { K = BLOCK_VECS_FWD, W = K * VL };
    const int64_t L = a->length, N = a->states, E = a->channels, nblk = blk1 - blk0;
    const int has_z = a->z != NULL;
    const REAL *u = (const REAL *)a->u + b * a->u_sb, *delta = (const REAL *)a->delta + b * a->delta_sb;
    const REAL *z = has_z ? (const REAL *)a->z + b * a->z_sb : NULL;
    const REAL *Bm = (const REAL *)a->Bm + b * a->B_sb, *Cm = (const REAL *)a->Cm + b * a->C_sb;
    REAL *out = (REAL *)a->out + b * L * E;
    const REAL *A = a->A, *D = a->D, *bias_in = a->delta_bias;
    for (int64_t i = 0; i < nblk * W; ++i) { /* the job's A log2 e, D, bias; zero-padded lanes */
        const int64_t e = blk0 * W + i;
        for (int64_t n = 0; n < N; ++n)
            ws->A2[((i / W) * N + n) * W + i % W] = e < E ? A[e * N + n] * (REAL)LOG2E : 0;
        ws->D[i] = (D && e < E) ? D[e] : 0;
        ws->bias[i] = (bias_in && e < E) ? bias_in[e] : 0;
    }
    memset(ws->h, 0, (size_t)nblk * N * W * sizeof(REAL));
    for (int64_t l = 0; l < L; ++l) {
        const REAL m = NAME(mask_at)(a->mask, a->mask_sb, a->mask_sl, b, l);
        const REAL *Bl = Bm + l * a->B_sl, *Cl = Cm + l * a->C_sl;
        for (int64_t blk = 0; blk < nblk; ++blk) {
            const int64_t e0 = (blk0 + blk) * W, width = E - e0 < W ? E - e0 : W;
            const REAL *ur = u + l * a->u_sl + e0, *dr = delta + l * a->delta_sl + e0;
            const REAL *zr = has_z ? z + l * a->z_sl + e0 : NULL;
            REAL *outr = out + l * E + e0;
            if (width < W) { /* the tail block: zero-padded copies of its part of the row */
                for (int64_t i = 0; i < W; ++i) {
                    ws->row_u[i] = i < width ? ur[i] : 0;
                    ws->row_delta[i] = i < width ? dr[i] : 0;
                    ws->row_z[i] = (has_z && i < width) ? zr[i] : 0;
                }
                ur = ws->row_u, dr = ws->row_delta, zr = has_z ? ws->row_z : NULL;
                outr = ws->row_out;
            }
            VEC *restrict h = (VEC *)ws->h + blk * N * K;
            const VEC *A2 = (const VEC *)ws->A2 + blk * N * K;
            const VEC *Dv = (const VEC *)ws->D + blk * K, *bias = (const VEC *)ws->bias + blk * K;
            VEC uu[K], y[K];
            for (int k = 0; k < K; ++k) {
                uu[k] = LOADU(ur + k * VL);
                y[k] = Dv[k] * uu[k];
            }
            if (m != 0) {
                VEC dd[K], du[K];
                for (int k = 0; k < K; ++k) {
                    dd[k] = NAME(effective_delta)(a, LOADU(dr + k * VL), bias[k], m, NULL);
                    du[k] = dd[k] * uu[k];
                }
                for (int64_t n = 0; n < N; ++n) {
                    const VEC bn = SPLAT(Bl[n]), cn = SPLAT(Cl[n]);
                    for (int k = 0; k < K; ++k) {
                        const VEC decay = VEXP2(dd[k] * A2[n * K + k]);
                        const VEC hn = decay * h[n * K + k] + du[k] * bn;
                        h[n * K + k] = hn;
                        y[k] += hn * cn;
                    }
                }
            } else {
                for (int64_t n = 0; n < N; ++n) {
                    const VEC cn = SPLAT(Cl[n]);
                    for (int k = 0; k < K; ++k) y[k] += h[n * K + k] * cn;
                }
            }
            for (int k = 0; k < K; ++k) {
                if (has_z) {
                    const VEC zz = LOADU(zr + k * VL);
                    y[k] *= zz * NAME(sigmoid)(zz);
                }
                STOREU(outr + k * VL, y[k]);
            }
            if (width < W)
                for (int64_t i = 0; i < width; ++i) out[l * E + e0 + i] = ws->row_out[i];
        }
    }
}

/* Backward of one job. Pass 1 recomputes the states h_t (kept in ws->h, L x N x W) and the
 * gradients that need only them (dC, dz, dD); pass 2 runs the adjoint recurrence backwards:
 *   g_t[n] = dy_t C_t[n] + exp(delta_{t+1} A[n]) g_{t+1}[n]      (dL/dh_t)
 * and accumulates d delta, dA, dB, du from g_t and h_{t-1}.
 * dB and dC (per b, t, n) go to this thread's `dB`/`dC`; dA, dD, d bias to the workspace. */
static TARGET void NAME(scan_backward_job)(NAME(workspace) * ws, const scan_args *a, int64_t b,
                                           int64_t e0, int64_t width, REAL *dB, REAL *dC) {
    enum { K = BLOCK_VECS_BWD, W = K * VL };
    const int64_t L = a->length, N = a->states, E = a->channels;
    NAME(gather)(ws->u, (const REAL *)a->u + b * a->u_sb + e0, a->u_sl, L, width, W);
    NAME(gather)(ws->delta, (const REAL *)a->delta + b * a->delta_sb + e0, a->delta_sl, L, width,
                 W);
    if (a->z) NAME(gather)(ws->z, (const REAL *)a->z + b * a->z_sb + e0, a->z_sl, L, width, W);
    NAME(gather)(ws->dout, (const REAL *)a->dout + b * L * E + e0, E, L, width, W);
    NAME(load_block)(ws, a, b, e0, width, W);
    VEC *restrict H = (VEC *)ws->h; /* [L][N][K] */
    const VEC *A = (const VEC *)ws->A, *A2 = (const VEC *)ws->A2, *Dv = (const VEC *)ws->D;
    const VEC *bias = (const VEC *)ws->bias;
    VEC *dAacc = (VEC *)ws->dA, *dDacc = (VEC *)ws->dD, *dbias_acc = (VEC *)ws->dbias;
    const int has_z = a->z != NULL;
    REAL *dBb = dB + b * L * N, *dCb = dC + b * L * N;

    /* pass 1: effective delta (in place), states, dy = dout * silu(z) (ws->dgate), dz, dC, dD */
    for (int64_t l = 0; l < L; ++l) {
        const REAL m = NAME(mask_at)(a->mask, a->mask_sb, a->mask_sl, b, l);
        VEC uu[K], dd[K], du[K], y[K], dy[K];
        for (int k = 0; k < K; ++k) {
            VEC *draw = (VEC *)(ws->delta + l * W) + k;
            dd[k] = NAME(effective_delta)(a, *draw, bias[k], m, (VEC *)(ws->dsoft + l * W) + k);
            *draw = dd[k];
            uu[k] = ((const VEC *)(ws->u + l * W))[k];
            du[k] = dd[k] * uu[k];
            y[k] = Dv[k] * uu[k];
            const VEC g = ((const VEC *)(ws->dout + l * W))[k];
            if (has_z) {
                const VEC zz = ((const VEC *)(ws->z + l * W))[k];
                dy[k] = g * zz * NAME(sigmoid)(zz);
            } else {
                dy[k] = g;
            }
            ((VEC *)(ws->dgate + l * W))[k] = dy[k];
            dDacc[k] += dy[k] * uu[k];
        }
        const VEC *hprev = l > 0 ? H + (l - 1) * N * K : NULL;
        VEC *hcur = H + l * N * K;
        const REAL *Bl = ws->Bl + l * N, *Cl = ws->Cl + l * N;
        VEC dcs[N];
        for (int64_t n = 0; n < N; ++n) {
            const VEC bn = SPLAT(Bl[n]), cn = SPLAT(Cl[n]);
            VEC dc = SPLAT(0);
            for (int k = 0; k < K; ++k) {
                const VEC decay = VEXP2(dd[k] * A2[n * K + k]);
                const VEC hp = hprev ? hprev[n * K + k] : SPLAT(0);
                const VEC hn = decay * hp + du[k] * bn;
                hcur[n * K + k] = hn;
                y[k] += hn * cn;
                dc += dy[k] * hn;
            }
            dcs[n] = dc;
        }
        NAME(add_lane_sums)(dCb + l * N, dcs, N);
        if (has_z) {
            const VEC one = SPLAT(1);
            for (int k = 0; k < K; ++k) {
                const VEC zz = ((const VEC *)(ws->z + l * W))[k];
                const VEC g = ((const VEC *)(ws->dout + l * W))[k];
                const VEC s = NAME(sigmoid)(zz);
                /* d silu(z) / dz = s (1 + z (1 - s)) */
                ((VEC *)(ws->out + l * W))[k] = g * y[k] * s * (one + zz * (one - s));
            }
        }
    }

    /* pass 2: adjoint recurrence from t = L-1 down to 0 */
    VEC g[N * K], next_decay[N * K];
    for (int64_t i = 0; i < N * K; ++i) g[i] = next_decay[i] = SPLAT(0);
    for (int64_t l = L - 1; l >= 0; --l) {
        VEC uu[K], dd[K], du[K], dy[K], ddelta[K], dux[K];
        for (int k = 0; k < K; ++k) {
            dd[k] = ((const VEC *)(ws->delta + l * W))[k];
            uu[k] = ((const VEC *)(ws->u + l * W))[k];
            du[k] = dd[k] * uu[k];
            dy[k] = ((const VEC *)(ws->dgate + l * W))[k];
            ddelta[k] = SPLAT(0);
            dux[k] = dy[k] * Dv[k];
        }
        const VEC *hprev = l > 0 ? H + (l - 1) * N * K : NULL;
        const REAL *Bl = ws->Bl + l * N, *Cl = ws->Cl + l * N;
        VEC dbs[N];
        for (int64_t n = 0; n < N; ++n) {
            const VEC bn = SPLAT(Bl[n]), cn = SPLAT(Cl[n]);
            VEC db = SPLAT(0);
            for (int k = 0; k < K; ++k) {
                const int64_t i = n * K + k;
                const VEC gi = g[i] * next_decay[i] + dy[k] * cn;
                const VEC decay = VEXP2(dd[k] * A2[i]);
                if (hprev) {
                    const VEC t = gi * hprev[i] * decay; /* dL/d(decay) * decay */
                    ddelta[k] += t * A[i];
                    dAacc[i] += t * dd[k];
                }
                const VEC gb = gi * bn;
                ddelta[k] += gb * uu[k];
                dux[k] += gb * dd[k];
                db += gi * du[k];
                g[i] = gi;
                next_decay[i] = decay;
            }
            dbs[n] = db;
        }
        NAME(add_lane_sums)(dBb + l * N, dbs, N);
        for (int k = 0; k < K; ++k) {
            const VEC draw = ddelta[k] * ((const VEC *)(ws->dsoft + l * W))[k];
            ((VEC *)(ws->ddelta + l * W))[k] = draw;
            dbias_acc[k] += draw;
            ((VEC *)(ws->du + l * W))[k] = dux[k];
        }
    }
    NAME(scatter)((REAL *)a->du + b * L * E + e0, ws->du, E, L, width, W);
    NAME(scatter)((REAL *)a->ddelta + b * L * E + e0, ws->ddelta, E, L, width, W);
    if (has_z && a->dz) NAME(scatter)((REAL *)a->dz + b * L * E + e0, ws->out, E, L, width, W);
}

/* One thread's share [job_begin, job_end) of the scan. Forward jobs are (row, one of `splits`
 * ranges of channel blocks); backward jobs are (row, one block). Backward accumulators are this
 * thread's (dA (E, N), dD (E), d bias (E), dB and dC (B, L, N)). */
static TARGET int NAME(scan_jobs)(const scan_args *a, int64_t job_begin, int64_t job_end,
                                  int backward, int64_t splits, REAL *dA, REAL *dD, REAL *dbias,
                                  REAL *dB, REAL *dC) {
    const int64_t E = a->channels, N = a->states, L = a->length;
    if (!backward) {
        const int64_t W = BLOCK_VECS_FWD * VL, blocks = (E + W - 1) / W;
        NAME(fwd_workspace) ws;
        if (NAME(fwd_workspace_alloc)(&ws, blocks, N, W) != 0) {
            NAME(fwd_workspace_free)(&ws);
            return -1;
        }
        for (int64_t job = job_begin; job < job_end; ++job) {
            const int64_t b = job / splits, s = job % splits;
            const int64_t blk0 = blocks * s / splits, blk1 = blocks * (s + 1) / splits;
            if (blk1 > blk0) NAME(scan_forward_job)(&ws, a, b, blk0, blk1);
        }
        NAME(fwd_workspace_free)(&ws);
        return 0;
    }
    const int64_t W = BLOCK_VECS_BWD * VL, blocks = (E + W - 1) / W;
    NAME(workspace) ws;
    if (NAME(workspace_alloc)(&ws, L, N, W, 1) != 0) {
        NAME(workspace_free)(&ws);
        return -1;
    }
    for (int64_t job = job_begin; job < job_end; ++job) {
        const int64_t b = job / blocks, e0 = (job % blocks) * W;
        const int64_t width = E - e0 < W ? E - e0 : W;
        memset(ws.dA, 0, (size_t)N * W * sizeof(REAL));
        memset(ws.dD, 0, (size_t)W * sizeof(REAL));
        memset(ws.dbias, 0, (size_t)W * sizeof(REAL));
        NAME(scan_backward_job)(&ws, a, b, e0, width, dB, dC);
        for (int64_t n = 0; n < N; ++n)
            for (int64_t i = 0; i < width; ++i) dA[(e0 + i) * N + n] += ws.dA[n * W + i];
        for (int64_t i = 0; i < width; ++i) {
            dD[e0 + i] += ws.dD[i];
            dbias[e0 + i] += ws.dbias[i];
        }
    }
    NAME(workspace_free)(&ws);
    return 0;
}

/* ==== causal depthwise conv1d ================================================================
 *   s_t[e] = bias[e] + sum_j w[j, e] x_{t - (K-1) + j}[e] m_{t - (K-1) + j},  out_t = silu(s_t)
 * (K = kernel width, w stored (K, E); x before the start and at masked positions counts as 0).
 * One job is (row b, CONV_CHUNK positions), all channels (whole vectors, then a scalar tail), so
 * it reads and writes contiguous rows. */

#define CONV_MAX_WIDTH 64

/* The input rows feeding output t: rows[j] = x_{t-(K-1)+j}, or NULL where that is before the
 * start or masked. */
static inline ALWAYS_INLINE void NAME(conv_rows)(const conv_args *a, const REAL *x, int64_t b,
                                                 int64_t t, const REAL **rows) {
    const int64_t Kw = a->width;
    for (int64_t j = 0; j < Kw; ++j) {
        const int64_t src = t - (Kw - 1) + j;
        rows[j] = (src < 0 || NAME(mask_at)(a->mask, a->mask_sb, a->mask_sl, b, src) == 0)
                      ? NULL
                      : x + src * a->x_sl;
    }
}

static inline ALWAYS_INLINE TARGET VEC NAME(conv_pre)(const conv_args *a, const REAL **rows,
                                                       int64_t e) {
    const int64_t Kw = a->width, E = a->channels;
    const REAL *w = a->weight;
    VEC s = a->bias ? LOADU((const REAL *)a->bias + e) : SPLAT(0);
    for (int64_t j = 0; j < Kw; ++j)
        if (rows[j]) s += LOADU(w + j * E + e) * LOADU(rows[j] + e);
    return s;
}

static inline ALWAYS_INLINE REAL NAME(conv_pre_scalar)(const conv_args *a, const REAL **rows,
                                                       int64_t e) {
    const int64_t Kw = a->width, E = a->channels;
    const REAL *w = a->weight;
    REAL s = a->bias ? ((const REAL *)a->bias)[e] : 0;
    for (int64_t j = 0; j < Kw; ++j)
        if (rows[j]) s += w[j * E + e] * rows[j][e];
    return s;
}

static inline REAL NAME(sigmoid_scalar)(REAL z) { return 1 / (1 + exp(-z)); }

/* silu(s) (or s) for output row t, all channels; `pre` receives s when not NULL. */
static inline ALWAYS_INLINE TARGET void NAME(conv_row)(const conv_args *a, const REAL **rows,
                                                       REAL *out, REAL *pre) {
    const int64_t E = a->channels;
    int64_t e = 0;
    for (; e + VL <= E; e += VL) {
        const VEC s = NAME(conv_pre)(a, rows, e);
        if (pre) STOREU(pre + e, s);
        if (out) STOREU(out + e, a->silu ? s * NAME(sigmoid)(s) : s);
    }
    for (; e < E; ++e) {
        const REAL s = NAME(conv_pre_scalar)(a, rows, e);
        if (pre) pre[e] = s;
        if (out) out[e] = a->silu ? s * NAME(sigmoid_scalar)(s) : s;
    }
}

/* Output rows [t0, t1) of row b, every channel: rows are contiguous in memory. */
static TARGET void NAME(conv_forward_job)(const conv_args *a, int64_t b, int64_t t0, int64_t t1) {
    const int64_t E = a->channels;
    const REAL *x = (const REAL *)a->x + b * a->x_sb;
    REAL *out = (REAL *)a->out + b * a->length * E;
    const REAL *rows[CONV_MAX_WIDTH];
    for (int64_t t = t0; t < t1; ++t) {
        NAME(conv_rows)(a, x, b, t, rows);
        NAME(conv_row)(a, rows, out + t * E, NULL);
    }
}

/* Rows [t0, t1) of row b: ds_t = dout_t silu'(s_t) for t in [t0, t1 + K - 1) (kept in `ds`);
 * d bias[e] += sum_t ds_t; dw[j, e] += sum_t ds_t x_{t-(K-1)+j} m;
 * dx_t = m_t sum_j w[j, e] ds_{t+(K-1)-j}. dw and dbias are this thread's accumulators. */
static TARGET void NAME(conv_backward_job)(const conv_args *a, int64_t b, int64_t t0, int64_t t1,
                                           REAL *ds, REAL *dw, REAL *dbias) {
    const int64_t L = a->length, E = a->channels, Kw = a->width;
    const REAL *x = (const REAL *)a->x + b * a->x_sb, *w = a->weight;
    const REAL *dout = (const REAL *)a->dout + b * L * E;
    REAL *dx = (REAL *)a->dx + b * L * E;
    const int64_t t_end = t1 + Kw - 1 < L ? t1 + Kw - 1 : L;
    const REAL *rows[CONV_MAX_WIDTH];
    for (int64_t t = t0; t < t_end; ++t) {
        REAL *d = ds + (t - t0) * E;
        NAME(conv_rows)(a, x, b, t, rows);
        NAME(conv_row)(a, rows, NULL, d); /* d = s for now */
        const REAL *g = dout + t * E;
        const int own = t < t1; /* rows past t1 only feed dx of this job's rows */
        int64_t e = 0;
        for (; e + VL <= E; e += VL) {
            const VEC s = LOADU(d + e);
            VEC v = LOADU(g + e);
            if (a->silu) {
                const VEC sg = NAME(sigmoid)(s);
                v *= sg * (SPLAT(1) + s * (SPLAT(1) - sg));
            }
            STOREU(d + e, v);
            if (!own) continue;
            STOREU(dbias + e, LOADU(dbias + e) + v);
            for (int64_t j = 0; j < Kw; ++j)
                if (rows[j]) STOREU(dw + j * E + e, LOADU(dw + j * E + e) + v * LOADU(rows[j] + e));
        }
        for (; e < E; ++e) {
            const REAL s = d[e];
            REAL v = g[e];
            if (a->silu) {
                const REAL sg = NAME(sigmoid_scalar)(s);
                v *= sg * (1 + s * (1 - sg));
            }
            d[e] = v;
            if (!own) continue;
            dbias[e] += v;
            for (int64_t j = 0; j < Kw; ++j)
                if (rows[j]) dw[j * E + e] += v * rows[j][e];
        }
    }
    for (int64_t t = t0; t < t1; ++t) {
        REAL *out = dx + t * E;
        const REAL m = NAME(mask_at)(a->mask, a->mask_sb, a->mask_sl, b, t);
        int64_t e = 0;
        for (; e + VL <= E; e += VL) {
            VEC acc = SPLAT(0);
            if (m != 0)
                for (int64_t j = 0; j < Kw; ++j) {
                    const int64_t dst = t + (Kw - 1) - j;
                    if (dst < t_end) acc += LOADU(w + j * E + e) * LOADU(ds + (dst - t0) * E + e);
                }
            STOREU(out + e, acc);
        }
        for (; e < E; ++e) {
            REAL acc = 0;
            if (m != 0)
                for (int64_t j = 0; j < Kw; ++j) {
                    const int64_t dst = t + (Kw - 1) - j;
                    if (dst < t_end) acc += w[j * E + e] * ds[(dst - t0) * E + e];
                }
            out[e] = acc;
        }
    }
}

/* Jobs are (row b, chunk of CONV_CHUNK positions), all channels. */
static TARGET int NAME(conv_jobs)(const conv_args *a, int64_t job_begin, int64_t job_end,
                                  int backward, REAL *dw, REAL *dbias) {
    const int64_t L = a->length, chunks = (L + CONV_CHUNK - 1) / CONV_CHUNK;
    REAL *ds = NULL;
    if (backward &&
        !(ds = scan_alloc((size_t)(CONV_CHUNK + a->width) * a->channels * sizeof(REAL))))
        return -1;
    for (int64_t job = job_begin; job < job_end; ++job) {
        const int64_t b = job / chunks, t0 = (job % chunks) * CONV_CHUNK;
        const int64_t t1 = t0 + CONV_CHUNK < L ? t0 + CONV_CHUNK : L;
        if (backward)
            NAME(conv_backward_job)(a, b, t0, t1, ds, dw, dbias);
        else
            NAME(conv_forward_job)(a, b, t0, t1);
    }
    free(ds);
    return 0;
}
