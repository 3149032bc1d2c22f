/* core/kernels — elementwise activations, normalisations and NHWC layout
 * helpers (declared in core/kernels.h).  Loops are written branch-free over
 * contiguous floats so GCC vectorises them; threading is OpenMP over rows or
 * fixed chunks (fixed work split -> the same bytes run to run). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels.h"
#include "core/kernels_math.h"

/* Rows per OpenMP chunk for cheap elementwise work: below this, threading costs more. */
#define SD_PAR_MIN 32768

/* ------------------------------------------------------------- elementwise */

void sd_silu(const float *x, float *y, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > SD_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = sd_silu1(x[i]);
}

void sd_gelu_erf(const float *x, float *y, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > SD_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = sd_gelu1(x[i]);
}

void sd_quick_gelu(const float *x, float *y, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > SD_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * sd_sigmoid1(1.702f * x[i]);
}

void sd_geglu(const float *hg, int64_t rows, int64_t inner, float *y) {
    if (y == hg) {
        /* in place: row r's output starts at or before its input, rows in order */
        for (int64_t r = 0; r < rows; r++) {
            const float *h = hg + r * 2 * inner, *g = h + inner;
            float *o = y + r * inner;
            for (int64_t j = 0; j < inner; j++) o[j] = h[j] * sd_gelu1(g[j]);
        }
        return;
    }
    #pragma omp parallel for schedule(static) if (rows * inner > SD_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *h = hg + r * 2 * inner, *g = h + inner;
        float *o = y + r * inner;
        for (int64_t j = 0; j < inner; j++) o[j] = h[j] * sd_gelu1(g[j]);
    }
}

void sd_add(const float *a, const float *b, float *y, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > SD_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void sd_add_scale(const float *a, const float *b, float scale, float *y, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > SD_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = (a[i] + b[i]) * scale;
}

void sd_add_bias(float *x, int64_t rows, int64_t c, const float *bias) {
    #pragma omp parallel for schedule(static) if (rows * c > SD_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * c;
        for (int64_t j = 0; j < c; j++) xr[j] += bias[j];
    }
}

void sd_add_bias_per_item(float *x, int64_t n, int64_t hw, int64_t c, const float *bias) {
    #pragma omp parallel for collapse(2) schedule(static) if (n * hw * c > SD_PAR_MIN)
    for (int64_t b = 0; b < n; b++)
        for (int64_t p = 0; p < hw; p++) {
            float *xr = x + (b * hw + p) * c;
            const float *br = bias + b * c;
            for (int64_t j = 0; j < c; j++) xr[j] += br[j];
        }
}

/* ----------------------------------------------------------- normalisation */

/* Fixed number of pixel chunks per image for the GroupNorm reductions, so the
 * summation order does not depend on the thread count. */
#define GN_CHUNKS 64

/* Per-channel partial sums of x (pass 0) or of (x - mean[group])^2 (pass 1)
 * over one chunk of pixels. */
static void gn_chunk_sums(const float *x, int64_t p0, int64_t p1, int64_t c, const float *chan_mean,
                          double *out) {
    float acc[c];
    memset(acc, 0, sizeof acc);
    for (int64_t p = p0; p < p1; p++) {
        const float *xr = x + p * c;
        if (chan_mean) {
            for (int64_t j = 0; j < c; j++) {
                float d = xr[j] - chan_mean[j];
                acc[j] += d * d;
            }
        } else {
            for (int64_t j = 0; j < c; j++) acc[j] += xr[j];
        }
    }
    for (int64_t j = 0; j < c; j++) out[j] = acc[j];
}

void sd_group_norm(const float *x, int64_t n, int64_t hw, int64_t c, int groups, float eps,
                   const float *gamma, const float *beta, float *y, int fuse_silu) {
    int64_t cg = c / groups;
    int64_t chunks = hw < GN_CHUNKS ? (hw > 0 ? hw : 1) : GN_CHUNKS;
    double *part = malloc((size_t)(n * chunks * c) * sizeof(double));
    float *chan_mean = malloc((size_t)(n * c) * sizeof(float));
    float *scale = malloc((size_t)(n * c) * sizeof(float));
    float *shift = malloc((size_t)(n * c) * sizeof(float));
    double *gmean = malloc((size_t)(n * groups) * sizeof(double));
    for (int pass = 0; pass < 2; pass++) {
        #pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < n; b++)
            for (int64_t k = 0; k < chunks; k++) {
                int64_t p0 = hw * k / chunks, p1 = hw * (k + 1) / chunks;
                gn_chunk_sums(x + b * hw * c, p0, p1, c, pass ? chan_mean + b * c : NULL,
                              part + (b * chunks + k) * c);
            }
        for (int64_t b = 0; b < n; b++)
            for (int g = 0; g < groups; g++) {
                double s = 0;
                for (int64_t k = 0; k < chunks; k++)
                    for (int64_t j = g * cg; j < (g + 1) * cg; j++) s += part[(b * chunks + k) * c + j];
                s /= (double)(hw * cg);
                if (pass == 0) {
                    gmean[b * groups + g] = s;
                    for (int64_t j = g * cg; j < (g + 1) * cg; j++) chan_mean[b * c + j] = (float)s;
                } else {
                    float rstd = (float)(1.0 / sqrt(s + (double)eps));
                    for (int64_t j = g * cg; j < (g + 1) * cg; j++) {
                        float ga = gamma ? gamma[j] : 1.0f, be = beta ? beta[j] : 0.0f;
                        scale[b * c + j] = ga * rstd;
                        shift[b * c + j] = be - (float)gmean[b * groups + g] * ga * rstd;
                    }
                }
            }
    }
    #pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t p = 0; p < hw; p++) {
            const float *xr = x + (b * hw + p) * c;
            float *yr = y + (b * hw + p) * c;
            const float *sc = scale + b * c, *sh = shift + b * c;
            if (fuse_silu)
                for (int64_t j = 0; j < c; j++) yr[j] = sd_silu1(xr[j] * sc[j] + sh[j]);
            else
                for (int64_t j = 0; j < c; j++) yr[j] = xr[j] * sc[j] + sh[j];
        }
    free(part);
    free(chan_mean);
    free(scale);
    free(shift);
    free(gmean);
}

void sd_layer_norm(const float *x, int64_t rows, int64_t d, const float *gamma,
                   const float *beta, float eps, float *y) {
    #pragma omp parallel for schedule(static) if (rows * d > SD_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float s = 0;
        for (int64_t j = 0; j < d; j++) s += xr[j];
        float mean = s / (float)d, v = 0;
        for (int64_t j = 0; j < d; j++) {
            float t = xr[j] - mean;
            v += t * t;
        }
        float rstd = 1.0f / sqrtf(v / (float)d + eps);
        for (int64_t j = 0; j < d; j++) {
            float t = (xr[j] - mean) * rstd;
            yr[j] = t * (gamma ? gamma[j] : 1.0f) + (beta ? beta[j] : 0.0f);
        }
    }
}

/* ---------------------------------------------------------------- layout */

void sd_nchw_to_nhwc(const float *x, int64_t n, int64_t c, int64_t h, int64_t w, float *y) {
    int64_t hw = h * w;
    #pragma omp parallel for collapse(2) schedule(static) if (n * c * hw > SD_PAR_MIN)
    for (int64_t b = 0; b < n; b++)
        for (int64_t p = 0; p < hw; p++)
            for (int64_t j = 0; j < c; j++) y[(b * hw + p) * c + j] = x[(b * c + j) * hw + p];
}

void sd_nhwc_to_nchw(const float *x, int64_t n, int64_t h, int64_t w, int64_t c, float *y) {
    int64_t hw = h * w;
    #pragma omp parallel for collapse(2) schedule(static) if (n * c * hw > SD_PAR_MIN)
    for (int64_t b = 0; b < n; b++)
        for (int64_t j = 0; j < c; j++)
            for (int64_t p = 0; p < hw; p++) y[(b * c + j) * hw + p] = x[(b * hw + p) * c + j];
}

void sd_upsample_nearest(const float *x, int64_t n, int64_t h, int64_t w, int64_t c, float *y,
                         int64_t oh, int64_t ow, int64_t y_ld) {
    #pragma omp parallel for collapse(2) schedule(static) if (n * oh * ow * c > SD_PAR_MIN)
    for (int64_t b = 0; b < n; b++)
        for (int64_t i = 0; i < oh; i++) {
            /* torch 'nearest': src = floor(dst * (in / out)) computed in float scale */
            int64_t si = (int64_t)floorf((float)i * ((float)h / (float)oh));
            if (si > h - 1) si = h - 1;
            for (int64_t j = 0; j < ow; j++) {
                int64_t sj = (int64_t)floorf((float)j * ((float)w / (float)ow));
                if (sj > w - 1) sj = w - 1;
                memcpy(y + ((b * oh + i) * ow + j) * y_ld, x + ((b * h + si) * w + sj) * c,
                       (size_t)c * sizeof(float));
            }
        }
}

void sd_copy_rows(const float *x, int64_t x_ld, int64_t rows, int64_t c, float *y, int64_t y_ld) {
    #pragma omp parallel for schedule(static) if (rows * c > SD_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        memcpy(y + r * y_ld, x + r * x_ld, (size_t)c * sizeof(float));
}

void sd_concat_channels(const float *a, int64_t ca, const float *b, int64_t cb, int64_t rows,
                        float *y) {
    #pragma omp parallel for schedule(static) if (rows * (ca + cb) > SD_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        memcpy(y + r * (ca + cb), a + r * ca, (size_t)ca * sizeof(float));
        memcpy(y + r * (ca + cb) + ca, b + r * cb, (size_t)cb * sizeof(float));
    }
}
