/* core/attention — batched multi-head scaled-dot-product attention
 * (declared in core/kernels.h), flash-style over key chunks on GEMMs.
 *
 * Tasks are (batch item, head, block of up to ATTN_QB queries), split into
 * one contiguous range per OpenMP thread.  Per task and per chunk of ATTN_KC
 * keys:
 *   S = scale * Q_blk K_c^T                      (sd_gemm)
 *   m' = max(m, rowmax S); P = exp(S - m')       (in place; the chunk stays in L2)
 *   l = l * exp(m - m') + rowsum P; O = O * exp(m - m') + P V_c   (sd_gemm, beta 1)
 * then O / l: the online softmax of FlashAttention (Dao et al. 2022, §3.1).
 * sd_gemm is oneDNN's sgemm, run on the calling thread inside the parallel
 * region with the widest vectors the CPU has (on AVX-512 it is ~1.6x the
 * hand-written AVX2 tiles this file had); K and V are read in place.
 * Memory per thread: ATTN_QB x ATTN_KC scores and the row statistics, never a
 * head's nq x nk score matrix.  Every output element is computed by one task
 * in a fixed order: results do not depend on the thread count. */
#pragma GCC optimize("fp-contract=fast")

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels.h"
#include "core/kernels_math.h"

#define ATTN_QB 256  /* queries per task: large enough that the GEMMs run near peak */
#define ATTN_KC 1024 /* keys per chunk: ATTN_QB x ATTN_KC scores = 1 MB */

static int64_t round16(int64_t x) { return (x + 15) & ~(int64_t)15; }
static int64_t attn_qblk(int64_t nq) { return nq < ATTN_QB ? nq : ATTN_QB; }
static int64_t attn_kc(int64_t nk) { return nk < ATTN_KC ? nk : ATTN_KC; }

/* Per-thread scratch: scores [qblk, round16(kc)] + running max and sum [ATTN_QB each]. */
static int64_t attn_thread_floats(int64_t nq, int64_t nk) {
    return attn_qblk(nq) * round16(attn_kc(nk)) + 2 * ATTN_QB + 16;
}

int64_t sd_attention_scratch_floats(int64_t nq, int64_t nk, int64_t dh) {
    (void)dh;
    return (int64_t)sd_get_threads() * attn_thread_floats(nq, nk);
}

/* Maximum of r[0..n) (n >= 1); four independent chains so the compares
 * overlap.  max is exact, so the order does not change the result. */
static float row_max(const float *r, int64_t n) {
    sd_v8f m0 = sd_v8_set(r[0]), m1 = m0, m2 = m0, m3 = m0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        m0 = sd_v8_max(m0, sd_v8_load(r + j));
        m1 = sd_v8_max(m1, sd_v8_load(r + j + 8));
        m2 = sd_v8_max(m2, sd_v8_load(r + j + 16));
        m3 = sd_v8_max(m3, sd_v8_load(r + j + 24));
    }
    for (; j + 8 <= n; j += 8) m0 = sd_v8_max(m0, sd_v8_load(r + j));
    float m = sd_v8_hmax(sd_v8_max(sd_v8_max(m0, m1), sd_v8_max(m2, m3)));
    for (; j < n; j++) m = r[j] > m ? r[j] : m;
    return m;
}

/* One key chunk [j0, j0 + kn) of rows query rows starting at q0: exponentiates
 * S in place against the running maxima m (updated), rescales l and the
 * output rows o by exp(m_old - m_new) when the maximum moved.  Causal rows
 * see keys <= their query only; a row that sees no key of this chunk is
 * left unchanged (its P row is 0). */
static void attn_chunk_softmax(float *s, int64_t s_ld, int64_t rows, int64_t j0, int64_t kn, int64_t q0, int causal,
                               float *m, float *l, float *o, int64_t o_ld, int64_t dh, int first) {
    for (int64_t i = 0; i < rows; i++) {
        float *r = s + i * s_ld;
        int64_t vis = causal ? q0 + i + 1 - j0 : kn;
        vis = vis < 0 ? 0 : (vis > kn ? kn : vis);
        if (vis == 0) {
            memset(r, 0, (size_t)kn * sizeof(float));
            continue;
        }
        float cm = row_max(r, vis), mn = first || cm > m[i] ? cm : m[i];
        if (!first && mn != m[i]) {
            float a = expf(m[i] - mn);
            l[i] *= a;
            for (int64_t d = 0; d < dh; d++) o[i * o_ld + d] *= a;
        }
        if (first) l[i] = 0.0f;
        m[i] = mn;
        sd_v8f sum = sd_v8_set(0.0f), mm = sd_v8_set(mn);
        int64_t j = 0;
        /* 16 lanes at a time (a zmm on AVX-512: ~15 % of a 4096-token head) */
        sd_v16f sum16 = sd_v16_set(0.0f), mm16 = sd_v16_set(mn);
        for (; j + 16 <= vis; j += 16) {
            sd_v16f e = sd_v16_exp(sd_v16_load(r + j) - mm16);
            sd_v16_store(r + j, e);
            sum16 += e;
        }
        for (int t = 0; t < 8; t++) sum[t] += sum16[t] + sum16[t + 8];
        for (; j + 8 <= vis; j += 8) {
            sd_v8f e = sd_v8_exp(sd_v8_load(r + j) - mm);
            sd_v8_store(r + j, e);
            sum += e;
        }
        if (j < vis) {
            sd_v8f e = sd_v8_exp(sd_v8_load_part(r + j, vis - j) - mm);
            for (int64_t t = vis - j; t < 8; t++) e[t] = 0.0f;
            sd_v8_store_part(r + j, e, vis - j);
            sum += e;
        }
        l[i] += sd_v8_hsum(sum);
        if (vis < kn) memset(r + vis, 0, (size_t)(kn - vis) * sizeof(float));
    }
}

void sd_attention(const float *q, int64_t q_ld, const float *k, int64_t k_ld, const float *v, int64_t v_ld,
                  int64_t batch, int64_t nq, int64_t nk, int heads, int64_t dh, float scale, int causal,
                  float *out, int64_t o_ld, float *scratch) {
    if (batch < 1 || nq < 1 || nk < 1 || heads < 1 || dh < 1) return;
    float *own = NULL;
    if (!scratch) scratch = own = malloc((size_t)(sd_get_threads() * attn_thread_floats(nq, nk)) * sizeof(float));
    if (!scratch) return;
    int64_t qblk = attn_qblk(nq), nblk = (nq + qblk - 1) / qblk, kc = attn_kc(nk), s_ld = round16(kc);
    int64_t tasks = batch * heads * nblk, per_thread = attn_thread_floats(nq, nk);
    int threads = sd_get_threads();
    if (threads > tasks) threads = (int)tasks;
    #pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *s = scratch + (int64_t)t * per_thread, *m = s + qblk * s_ld, *l = m + ATTN_QB;
        for (int64_t task = tasks * t / nt; task < tasks * (t + 1) / nt; task++) {
            int64_t bh = task / nblk, blk = task % nblk, b = bh / heads, h = bh % heads;
            int64_t q0 = blk * qblk, rows = nq - q0 < qblk ? nq - q0 : qblk;
            /* causal: keys past the block's last query are masked for every row */
            int64_t kend = causal && q0 + rows < nk ? q0 + rows : nk;
            const float *qh = q + (b * nq + q0) * q_ld + h * dh;
            const float *kh = k + b * nk * k_ld + h * dh, *vh = v + b * nk * v_ld + h * dh;
            float *oh = out + (b * nq + q0) * o_ld + h * dh;
            for (int64_t j0 = 0; j0 < kend; j0 += kc) {
                int64_t kn = kend - j0 < kc ? kend - j0 : kc;
                sd_gemm(0, 1, rows, kn, dh, scale, qh, q_ld, kh + j0 * k_ld, k_ld, 0.0f, s, s_ld);
                attn_chunk_softmax(s, s_ld, rows, j0, kn, q0, causal, m, l, oh, o_ld, dh, j0 == 0);
                sd_gemm(0, 0, rows, dh, kn, 1.0f, s, s_ld, vh + j0 * v_ld, v_ld, j0 == 0 ? 0.0f : 1.0f, oh, o_ld);
            }
            for (int64_t r = 0; r < rows; r++) {
                float inv = 1.0f / l[r];
                for (int64_t d = 0; d < dh; d++) oh[r * o_ld + d] *= inv;
            }
        }
    }
    free(own);
}
