/* core/attention — batched multi-head scaled-dot-product attention tiled
 * over query blocks (declared in core/kernels.h).
 *
 * Each task is (batch item, head, block of SD_ATTN_QBLK queries): scores
 * S = scale * Q_blk K^T (one GEMM), row softmax (max-subtracted, as torch),
 * O_blk = P V (one GEMM).  Tasks run in an OpenMP loop; their GEMMs run on
 * the calling thread (sd_gemm inside a parallel region).  Memory per thread:
 * SD_ATTN_QBLK x nk scores, never a head's full nq x nk matrix. */
#include <omp.h>
#include <stdlib.h>

#include "core/kernels.h"
#include "core/kernels_math.h"

#define SD_ATTN_QBLK 64

static int64_t attn_qblk(int64_t nq) { return nq < SD_ATTN_QBLK ? nq : SD_ATTN_QBLK; }

int64_t sd_attention_scratch_floats(int64_t nq, int64_t nk, int64_t dh) {
    (void)dh;
    return (int64_t)sd_get_threads() * attn_qblk(nq) * nk;
}

/* Softmax of each of `rows` score rows in place; row i of the block is
 * query q0 + i, and with `causal` keys beyond it get probability 0. */
static void attn_softmax_rows(float *s, int64_t rows, int64_t nk, int64_t q0, int causal) {
    for (int64_t i = 0; i < rows; i++) {
        float *r = s + i * nk;
        int64_t kend = causal ? (q0 + i + 1 < nk ? q0 + i + 1 : nk) : nk;
        float m = r[0];
        for (int64_t j = 1; j < kend; j++) m = r[j] > m ? r[j] : m;
        float sum = 0;
        for (int64_t j = 0; j < kend; j++) {
            r[j] = sd_exp1(r[j] - m);
            sum += r[j];
        }
        float inv = 1.0f / sum;
        for (int64_t j = 0; j < kend; j++) r[j] *= inv;
        for (int64_t j = kend; j < nk; j++) r[j] = 0.0f;
    }
}

void sd_attention(const float *q, int64_t q_ld, const float *k, int64_t k_ld, const float *v,
                  int64_t v_ld, int64_t batch, int64_t nq, int64_t nk, int heads, int64_t dh,
                  float scale, int causal, float *out, int64_t o_ld, float *scratch) {
    if (batch < 1 || nq < 1 || nk < 1) return;
    int64_t qblk = attn_qblk(nq);
    int64_t nblk = (nq + qblk - 1) / qblk;
    int64_t tasks = batch * heads * nblk;
    int threads = sd_get_threads();
    float *own = NULL;
    if (!scratch) scratch = own = malloc((size_t)sd_attention_scratch_floats(nq, nk, dh) * sizeof(float));
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t b = t / (heads * nblk), h = (t / nblk) % heads, blk = t % nblk;
        int64_t q0 = blk * qblk, rows = nq - q0 < qblk ? nq - q0 : qblk;
        float *s = scratch + (int64_t)omp_get_thread_num() * qblk * nk;
        const float *qb = q + (b * nq + q0) * q_ld + h * dh;
        const float *kb = k + b * nk * k_ld + h * dh;
        const float *vb = v + b * nk * v_ld + h * dh;
        float *ob = out + (b * nq + q0) * o_ld + h * dh;
        sd_gemm(0, 1, rows, nk, dh, scale, qb, q_ld, kb, k_ld, 0.0f, s, nk);
        attn_softmax_rows(s, rows, nk, q0, causal);
        sd_gemm(0, 0, rows, dh, nk, 1.0f, s, nk, vb, v_ld, 0.0f, ob, o_ld);
    }
    free(own);
}
