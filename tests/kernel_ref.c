/* tests/kernel_ref — see kernel_ref.h.  Deliberately naive: these are the
 * definitions the fast kernels are checked against. */
#include "kernel_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ref_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t p = 0; p < K; p++) {
                double a = trans_a ? A[p * lda + i] : A[i * lda + p];
                double b = trans_b ? B[j * ldb + p] : B[p * ldb + j];
                s += a * b;
            }
            double c0 = beta == 0.0f ? 0.0 : (double)beta * C[i * ldc + j];
            C[i * ldc + j] = (float)(alpha * s + c0);
        }
}

void ref_linear(const float *x, const float *W, const float *b, int64_t n, int64_t in,
                int64_t out, float *y) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t o = 0; o < out; o++) {
            double s = b ? b[o] : 0.0;
            for (int64_t i = 0; i < in; i++) s += (double)x[r * in + i] * W[o * in + i];
            y[r * out + o] = (float)s;
        }
}

void ref_conv2d(const float *x, int64_t n, int64_t h, int64_t w, int64_t ci, const float *weight,
                const float *bias, int64_t co, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                int64_t pt, int64_t pl, int64_t pb, int64_t pr, float *y) {
    int64_t oh = (h + pt + pb - kh) / sh + 1, ow = (w + pl + pr - kw) / sw + 1;
    for (int64_t b = 0; b < n; b++)
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++)
                for (int64_t o = 0; o < co; o++) {
                    double s = bias ? bias[o] : 0.0;
                    for (int64_t di = 0; di < kh; di++)
                        for (int64_t dj = 0; dj < kw; dj++) {
                            int64_t yi = i * sh - pt + di, xj = j * sw - pl + dj;
                            if (yi < 0 || yi >= h || xj < 0 || xj >= w) continue;
                            for (int64_t c = 0; c < ci; c++)
                                s += (double)x[((b * h + yi) * w + xj) * ci + c] *
                                     weight[((o * ci + c) * kh + di) * kw + dj];
                        }
                    y[((b * oh + i) * ow + j) * co + o] = (float)s;
                }
}

void ref_group_norm(const float *x, int64_t n, int64_t hw, int64_t c, int groups, float eps,
                    const float *gamma, const float *beta, float *y, int fuse_silu) {
    int64_t cg = c / groups;
    for (int64_t b = 0; b < n; b++)
        for (int g = 0; g < groups; g++) {
            double s = 0, ss = 0;
            for (int64_t p = 0; p < hw; p++)
                for (int64_t j = g * cg; j < (g + 1) * cg; j++) s += x[(b * hw + p) * c + j];
            double mean = s / (double)(hw * cg);
            for (int64_t p = 0; p < hw; p++)
                for (int64_t j = g * cg; j < (g + 1) * cg; j++) {
                    double d = x[(b * hw + p) * c + j] - mean;
                    ss += d * d;
                }
            double rstd = 1.0 / sqrt(ss / (double)(hw * cg) + eps);
            for (int64_t p = 0; p < hw; p++)
                for (int64_t j = g * cg; j < (g + 1) * cg; j++) {
                    int64_t at = (b * hw + p) * c + j;
                    double v = (x[at] - mean) * rstd * (gamma ? gamma[j] : 1.0) + (beta ? beta[j] : 0.0);
                    if (fuse_silu) v = v / (1.0 + exp(-v));
                    y[at] = (float)v;
                }
        }
}

void ref_layer_norm(const float *x, int64_t rows, int64_t d, const float *gamma,
                    const float *beta, float eps, float *y) {
    for (int64_t r = 0; r < rows; r++) {
        double s = 0, ss = 0;
        for (int64_t j = 0; j < d; j++) s += x[r * d + j];
        double mean = s / (double)d;
        for (int64_t j = 0; j < d; j++) ss += (x[r * d + j] - mean) * (x[r * d + j] - mean);
        double rstd = 1.0 / sqrt(ss / (double)d + eps);
        for (int64_t j = 0; j < d; j++)
            y[r * d + j] = (float)((x[r * d + j] - mean) * rstd * (gamma ? gamma[j] : 1.0) +
                                   (beta ? beta[j] : 0.0));
    }
}

void ref_silu(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = (float)(x[i] / (1.0 + exp(-(double)x[i])));
}

void ref_gelu_erf(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = (float)(0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0))));
}

void ref_quick_gelu(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = (float)(x[i] / (1.0 + exp(-1.702 * x[i])));
}

void ref_geglu(const float *hg, int64_t rows, int64_t inner, float *y) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < inner; j++) {
            double h = hg[r * 2 * inner + j], g = hg[r * 2 * inner + inner + j];
            y[r * inner + j] = (float)(h * 0.5 * g * (1.0 + erf(g / sqrt(2.0))));
        }
}

void ref_attention(const float *q, int64_t q_ld, const float *k, int64_t k_ld, const float *v,
                   int64_t v_ld, int64_t batch, int64_t nq, int64_t nk, int heads, int64_t dh,
                   float scale, int causal, float *out, int64_t o_ld) {
    double *p = malloc((size_t)nk * sizeof(double));
    for (int64_t b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++)
            for (int64_t i = 0; i < nq; i++) {
                double m = -INFINITY, sum = 0;
                for (int64_t j = 0; j < nk; j++) {
                    double s = 0;
                    for (int64_t d = 0; d < dh; d++)
                        s += (double)q[(b * nq + i) * q_ld + h * dh + d] * k[(b * nk + j) * k_ld + h * dh + d];
                    p[j] = (causal && j > i) ? -INFINITY : s * scale;
                    if (p[j] > m) m = p[j];
                }
                for (int64_t j = 0; j < nk; j++) {
                    p[j] = exp(p[j] - m);
                    sum += p[j];
                }
                for (int64_t d = 0; d < dh; d++) {
                    double o = 0;
                    for (int64_t j = 0; j < nk; j++) o += p[j] / sum * v[(b * nk + j) * v_ld + h * dh + d];
                    out[(b * nq + i) * o_ld + h * dh + d] = (float)o;
                }
            }
    free(p);
}

void ref_upsample_nearest(const float *x, int64_t n, int64_t h, int64_t w, int64_t c, float *y,
                          int64_t oh, int64_t ow) {
    for (int64_t b = 0; b < n; b++)
        for (int64_t i = 0; i < oh; i++)
            for (int64_t j = 0; j < ow; j++) {
                int64_t si = (int64_t)floorf((float)i * ((float)h / (float)oh));
                int64_t sj = (int64_t)floorf((float)j * ((float)w / (float)ow));
                if (si >= h) si = h - 1;
                if (sj >= w) sj = w - 1;
                memcpy(y + ((b * oh + i) * ow + j) * c, x + ((b * h + si) * w + sj) * c,
                       (size_t)c * sizeof(float));
            }
}

void ref_nchw_to_nhwc(const float *x, int64_t n, int64_t c, int64_t h, int64_t w, float *y) {
    for (int64_t b = 0; b < n; b++)
        for (int64_t j = 0; j < c; j++)
            for (int64_t i = 0; i < h * w; i++) y[(b * h * w + i) * c + j] = x[(b * c + j) * h * w + i];
}

int64_t ref_layout_index(int blk, int64_t c, int64_t hw, int64_t b, int64_t ch, int64_t p) {
    if (blk == 0) return (b * hw + p) * c + ch;
    if (blk == 1) return (b * c + ch) * hw + p;
    int64_t nblk = (c + blk - 1) / blk;
    return (((b * nblk + ch / blk) * hw + p) * blk) + ch % blk;
}

int64_t ref_layout_size(int blk, int64_t n, int64_t c, int64_t hw) {
    if (blk <= 1) return n * c * hw;
    return n * ((c + blk - 1) / blk) * blk * hw;
}

void ref_to_layout(const float *nhwc, int blk, int64_t n, int64_t c, int64_t hw, float *y) {
    memset(y, 0, (size_t)ref_layout_size(blk, n, c, hw) * sizeof(float));
    for (int64_t b = 0; b < n; b++)
        for (int64_t p = 0; p < hw; p++)
            for (int64_t ch = 0; ch < c; ch++) y[ref_layout_index(blk, c, hw, b, ch, p)] = nhwc[(b * hw + p) * c + ch];
}

void ref_concat(const float *a, int64_t ca, const float *b, int64_t cb, int64_t rows, float *y) {
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < ca; j++) y[r * (ca + cb) + j] = a[r * ca + j];
        for (int64_t j = 0; j < cb; j++) y[r * (ca + cb) + ca + j] = b[r * cb + j];
    }
}
