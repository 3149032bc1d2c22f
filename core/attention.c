/* core/attention — batched multi-head scaled-dot-product attention tiled
 * over query blocks (declared in core/kernels.h).
 *
 * Tasks are (batch item, head, block of ATTN_QB queries), split into one
 * contiguous range per OpenMP thread, so a thread's consecutive tasks share a
 * head.  Per head a thread packs K (key-major groups of 8: Kp[g][d][8]) and V
 * (rows padded to 8 lanes) once into its scratch; per task:
 *   S = scale * Q_blk K^T       (register-blocked 4 queries x 16 keys)
 *   P = exp(S - rowmax)          (unnormalised; 1/rowsum kept per row)
 *   O_blk = (P V) * 1/rowsum     (register-blocked 4 queries x 16 lanes)
 * Memory per thread: ATTN_QB x nk scores + the packed K/V of one head; never
 * a head's full nq x nk score matrix.  Every output element is computed by
 * one task in a fixed order: results do not depend on the thread count.
 *
 * The micro-kernels are plain C on GCC vector extensions; multiply-adds are
 * contracted to FMA in this file (same binary -> same bytes run to run). */
#pragma GCC optimize("fp-contract=fast")

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels.h"
#include "core/kernels_math.h"

#define ATTN_QB 64 /* queries per task */

/* Keeps a loaded vector in a register: without it GCC re-reads it from memory
 * as an operand of every FMA, doubling the loads of the micro-kernels. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SD_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define SD_IN_REGISTER(v) ((void)0)
#endif

static int64_t attn_qblk(int64_t nq) { return nq < ATTN_QB ? nq : ATTN_QB; }
static int64_t round16(int64_t x) { return (x + 15) & ~(int64_t)15; }
static int64_t round8(int64_t x) { return (x + 7) & ~(int64_t)7; }

/* Per-thread scratch: scores [QB, nkp] + packed K [nkp, dh] + packed V [nk, dhp] + 1/rowsum, rowmax [QB]
 * + output accumulators [QB, dhp]. */
static int64_t attn_thread_floats(int64_t nq, int64_t nk, int64_t dh) {
    int64_t nkp = round16(nk);
    return attn_qblk(nq) * nkp + nkp * dh + nk * round8(dh) + 2 * ATTN_QB + attn_qblk(nq) * round8(dh) + 16;
}

int64_t sd_attention_scratch_floats(int64_t nq, int64_t nk, int64_t dh) {
    return (int64_t)sd_get_threads() * attn_thread_floats(nq, nk, dh);
}

/* Kp[g][d][l] = k[(g*8 + l) * k_ld + d], zero for keys >= nk (groups up to nkp/8). */
static void pack_k(const float *k, int64_t k_ld, int64_t nk, int64_t nkp, int64_t dh, float *kp) {
    for (int64_t g = 0; g < nkp / 8; g++) {
        float *dst = kp + g * dh * 8;
        for (int64_t l = 0; l < 8; l++) {
            int64_t key = g * 8 + l;
            if (key < nk) {
                const float *src = k + key * k_ld;
                for (int64_t d = 0; d < dh; d++) dst[d * 8 + l] = src[d];
            } else {
                for (int64_t d = 0; d < dh; d++) dst[d * 8 + l] = 0.0f;
            }
        }
    }
}

/* Vp[j][0..dhp) = v[j * v_ld + 0..dh), zero lanes to dhp. */
static void pack_v(const float *v, int64_t v_ld, int64_t nk, int64_t dh, float *vp) {
    int64_t dhp = round8(dh);
    for (int64_t j = 0; j < nk; j++) {
        memcpy(vp + j * dhp, v + j * v_ld, (size_t)dh * sizeof(float));
        for (int64_t d = dh; d < dhp; d++) vp[j * dhp + d] = 0.0f;
    }
}

/* S[r][g*8 .. g*8+16) for R query rows (R = 6 or 1) and the key groups g, g+1;
 * rmax[r] tracks the running maximum of each row (lanes of keys < nk). */
static inline __attribute__((always_inline)) void qk_tile(const int R, const float *const *qr, const float *kp0,
                                                          const float *kp1, int64_t dh, float scale, float *s,
                                                          int64_t s_ld, sd_v8f *rmax, sd_v8i valid0,
                                                          sd_v8i valid1) {
    sd_v8f acc[6][2] = {{{0}}};
    for (int64_t d = 0; d < dh; d++) {
        sd_v8f k0 = sd_v8_load(kp0 + d * 8), k1 = sd_v8_load(kp1 + d * 8);
        SD_IN_REGISTER(k0);
        SD_IN_REGISTER(k1);
        for (int r = 0; r < R; r++) {
            sd_v8f q = sd_v8_set(qr[r][d]);
            acc[r][0] += q * k0;
            acc[r][1] += q * k1;
        }
    }
    sd_v8f sc = sd_v8_set(scale), lo = sd_v8_set(-3.0e38f);
    for (int r = 0; r < R; r++) {
        sd_v8f a = acc[r][0] * sc, b = acc[r][1] * sc;
        sd_v8_store(s + r * s_ld, a);
        sd_v8_store(s + r * s_ld + 8, b);
        rmax[r] = sd_v8_max(rmax[r], sd_v8_max(sd_v8_select(valid0, a, lo), sd_v8_select(valid1, b, lo)));
    }
}

/* Lane mask (all ones) of the keys g*8 + l < nk. */
static sd_v8i key_mask(int64_t g, int64_t nk) {
    const sd_v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    int64_t left = nk - g * 8;
    int32_t l = left < 0 ? 0 : (left > 8 ? 8 : (int32_t)left);
    return lane < (sd_v8i){l, l, l, l, l, l, l, l};
}

/* S [rows, nkp] = scale * Q_blk K^T (keys past nk come out 0 and are ignored);
 * rowmax[i] = max of row i over the keys j < nk. */
static void attn_scores(const float *q, int64_t q_ld, int64_t rows, const float *kp, int64_t nk, int64_t nkp,
                        int64_t dh, float scale, float *s, float *rowmax) {
    int64_t i = 0;
    sd_v8f rmax[6];
    for (; i < rows;) {
        int R = rows - i >= 6 ? 6 : 1;
        int64_t limit = nk;
        for (int r = 0; r < R; r++) rmax[r] = sd_v8_set(-3.0e38f);
        const float *qr[6];
        for (int r = 0; r < R; r++) qr[r] = q + (i + r) * q_ld;
        for (int64_t g = 0; g < nkp / 8; g += 2) {
            sd_v8i m0 = key_mask(g, limit), m1 = key_mask(g + 1, limit);
            if (R == 6)
                qk_tile(6, qr, kp + g * dh * 8, kp + (g + 1) * dh * 8, dh, scale, s + i * nkp + g * 8, nkp, rmax, m0, m1);
            else
                qk_tile(1, qr, kp + g * dh * 8, kp + (g + 1) * dh * 8, dh, scale, s + i * nkp + g * 8, nkp, rmax, m0, m1);
        }
        for (int r = 0; r < R; r++) rowmax[i + r] = sd_v8_hmax(rmax[r]);
        i += R;
    }
}

/* Unnormalised softmax of each score row in place: r[j] = exp(r[j] - max);
 * inv[i] = 1 / sum.  Row i is query q0 + i; with `causal`, keys past it get 0
 * and the maximum is taken over the visible keys only (rowmax[i], over all
 * nk keys, serves the non-causal case). */
static void attn_softmax_rows(float *s, int64_t s_ld, int64_t rows, int64_t nk, int64_t q0, int causal,
                              const float *rowmax, float *inv) {
    for (int64_t i = 0; i < rows; i++) {
        float *r = s + i * s_ld;
        int64_t kend = causal ? (q0 + i + 1 < nk ? q0 + i + 1 : nk) : nk, j;
        float m = rowmax[i];
        if (causal) {
            sd_v8f mv = sd_v8_set(r[0]);
            for (j = 0; j + 8 <= kend; j += 8) mv = sd_v8_max(mv, sd_v8_load(r + j));
            m = sd_v8_hmax(mv);
            for (; j < kend; j++) m = r[j] > m ? r[j] : m;
        }
        sd_v8f sum = sd_v8_set(0.0f), mm = sd_v8_set(m);
        for (j = 0; j + 8 <= kend; j += 8) {
            sd_v8f e = sd_v8_exp(sd_v8_load(r + j) - mm);
            sd_v8_store(r + j, e);
            sum += e;
        }
        if (j < kend) {
            /* lanes past kend must not count: exp(0 - m) != 0 */
            sd_v8f e = sd_v8_exp(sd_v8_load_part(r + j, kend - j) - mm);
            for (int64_t l = kend - j; l < 8; l++) e[l] = 0.0f;
            sd_v8_store_part(r + j, e, kend - j);
            sum += e;
        }
        inv[i] = 1.0f / sd_v8_hsum(sum);
        for (j = kend; j < nk; j++) r[j] = 0.0f;
    }
}

/* acc[r][c .. c + 8*W) += P[r][0..nk) Vp[0..nk)[c .. c + 8*W) for R rows (R = 2 or 1)
 * and W (1..6) vectors of 8 lanes; acc rows every dhp floats. */
static inline __attribute__((always_inline)) void pv_tile(const int R, const int W, const float *p, int64_t p_ld,
                                                          const float *vp, int64_t dhp, int64_t nk, int64_t c,
                                                          float *acc_mem) {
    sd_v8f acc[2][6];
    for (int r = 0; r < R; r++)
        for (int w = 0; w < W; w++) acc[r][w] = sd_v8_load(acc_mem + r * dhp + c + 8 * w);
    for (int64_t j = 0; j < nk; j++) {
        sd_v8f vv[6];
        for (int w = 0; w < W; w++) {
            vv[w] = sd_v8_load(vp + j * dhp + c + 8 * w);
            SD_IN_REGISTER(vv[w]);
        }
        for (int r = 0; r < R; r++) {
            sd_v8f pr = sd_v8_set(p[r * p_ld + j]);
            for (int w = 0; w < W; w++) acc[r][w] += pr * vv[w];
        }
    }
    for (int r = 0; r < R; r++)
        for (int w = 0; w < W; w++) sd_v8_store(acc_mem + r * dhp + c + 8 * w, acc[r][w]);
}

/* pv_tile with a run-time W, dispatched to constant-W instances. */
static void pv_tile_rw(int R, int W, const float *p, int64_t p_ld, const float *vp, int64_t dhp, int64_t nk,
                       int64_t c, float *acc) {
#define PV_CASE(w)                                                   \
    case w:                                                          \
        if (R == 2) pv_tile(2, w, p, p_ld, vp, dhp, nk, c, acc);     \
        else pv_tile(1, w, p, p_ld, vp, dhp, nk, c, acc);            \
        break;
    switch (W) {
        PV_CASE(1)
        PV_CASE(2)
        PV_CASE(3)
        PV_CASE(4)
        PV_CASE(5)
        PV_CASE(6)
    }
#undef PV_CASE
}

#define ATTN_KC 256 /* keys per pass of the P V product: V chunk and P columns stay in L2 */

/* O_blk [rows, dh] (rows every o_ld) = P [rows, nk] Vp * inv[row]; acc holds rows x dhp floats.
 * The dh lanes are covered in chunks of at most 6 vectors (2 rows x 6 = 12 accumulators). */
static void attn_output(const float *p, int64_t p_ld, int64_t rows, const float *vp, int64_t nk, int64_t dh,
                        const float *inv, float *o, int64_t o_ld, float *acc) {
    int64_t dhp = round8(dh), nvec = dhp / 8, nchunk = (nvec + 5) / 6, wbase = (nvec + nchunk - 1) / nchunk;
    memset(acc, 0, (size_t)(rows * dhp) * sizeof(float));
    for (int64_t j0 = 0; j0 < nk; j0 += ATTN_KC) {
        int64_t jn = nk - j0 < ATTN_KC ? nk - j0 : ATTN_KC;
        const float *vj = vp + j0 * dhp;
        for (int64_t i = 0; i < rows; i += 2) {
            int R = rows - i >= 2 ? 2 : 1;
            for (int64_t v0 = 0; v0 < nvec; v0 += wbase) {
                int W = (int)(nvec - v0 < wbase ? nvec - v0 : wbase);
                pv_tile_rw(R, W, p + i * p_ld + j0, p_ld, vj, dhp, jn, v0 * 8, acc + i * dhp);
            }
        }
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t d = 0; d < dh; d++) o[i * o_ld + d] = acc[i * dhp + d] * inv[i];
}

void sd_attention(const float *q, int64_t q_ld, const float *k, int64_t k_ld, const float *v,
                  int64_t v_ld, int64_t batch, int64_t nq, int64_t nk, int heads, int64_t dh,
                  float scale, int causal, float *out, int64_t o_ld, float *scratch) {
    if (batch < 1 || nq < 1 || nk < 1 || heads < 1 || dh < 1) return;
    int64_t qblk = attn_qblk(nq), nblk = (nq + qblk - 1) / qblk;
    int64_t tasks = batch * heads * nblk, nkp = round16(nk), per_thread = attn_thread_floats(nq, nk, dh);
    int threads = sd_get_threads();
    if (threads > tasks) threads = (int)tasks;
    float *own = NULL;
    if (!scratch) scratch = own = malloc((size_t)(sd_get_threads() * per_thread) * sizeof(float));
    #pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *s = scratch + (int64_t)t * per_thread;
        float *kp = s + qblk * nkp, *vp = kp + nkp * dh, *inv = vp + nk * round8(dh), *rmax = inv + ATTN_QB;
        float *oacc = rmax + ATTN_QB;
        int64_t head_packed = -1;
        for (int64_t task = tasks * t / nt; task < tasks * (t + 1) / nt; task++) {
            int64_t bh = task / nblk, blk = task % nblk, b = bh / heads, h = bh % heads;
            int64_t q0 = blk * qblk, rows = nq - q0 < qblk ? nq - q0 : qblk;
            if (bh != head_packed) {
                pack_k(k + b * nk * k_ld + h * dh, k_ld, nk, nkp, dh, kp);
                pack_v(v + b * nk * v_ld + h * dh, v_ld, nk, dh, vp);
                head_packed = bh;
            }
            attn_scores(q + (b * nq + q0) * q_ld + h * dh, q_ld, rows, kp, nk, nkp, dh, scale, s, rmax);
            attn_softmax_rows(s, nkp, rows, nk, q0, causal, rmax, inv);
            attn_output(s, nkp, rows, vp, nk, dh, inv, out + (b * nq + q0) * o_ld + h * dh, o_ld, oacc);
        }
    }
    free(own);
}
