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

/* y[i] = f(x[i]) 8 lanes at a time; the tail goes through a zero-padded vector. */
#define SD_MAP_V8(x, y, n, f)                                                        \
    do {                                                                             \
        int64_t nv_ = (n) / 8;                                                       \
        _Pragma("omp parallel for schedule(static) if ((n) > SD_PAR_MIN)")           \
        for (int64_t i_ = 0; i_ < nv_; i_++)                                         \
            sd_v8_store((y) + 8 * i_, f(sd_v8_load((x) + 8 * i_)));                  \
        if (8 * nv_ < (n))                                                           \
            sd_v8_store_part((y) + 8 * nv_, f(sd_v8_load_part((x) + 8 * nv_, (n) - 8 * nv_)), \
                             (n) - 8 * nv_);                                         \
    } while (0)

static inline sd_v8f v8_quick_gelu(sd_v8f x) { return x * sd_v8_sigmoid(sd_v8_set(1.702f) * x); }

void sd_silu(const float *x, float *y, int64_t n) { SD_MAP_V8(x, y, n, sd_v8_silu); }

void sd_gelu_erf(const float *x, float *y, int64_t n) { SD_MAP_V8(x, y, n, sd_v8_gelu); }

void sd_quick_gelu(const float *x, float *y, int64_t n) { SD_MAP_V8(x, y, n, v8_quick_gelu); }

/* One GEGLU row: o[j] = h[j] * gelu(g[j]). */
static void geglu_row(const float *h, const float *g, float *o, int64_t inner) {
    int64_t j = 0;
    for (; j + 8 <= inner; j += 8) sd_v8_store(o + j, sd_v8_load(h + j) * sd_v8_gelu(sd_v8_load(g + j)));
    if (j < inner)
        sd_v8_store_part(o + j, sd_v8_load_part(h + j, inner - j) * sd_v8_gelu(sd_v8_load_part(g + j, inner - j)),
                         inner - j);
}

void sd_geglu(const float *hg, int64_t rows, int64_t inner, float *y) {
    if (y == hg) {
        /* In place: row i is written at i*inner, its input starts at 2*i*inner.
         * Rows [r, r+k) may run in parallel when all their outputs end before
         * the first of their inputs: (r+k)*inner <= 2*r*inner, i.e. k <= r. */
        int64_t r = 0;
        while (r < rows) {
            int64_t k = r < 1 ? 1 : (r < rows - r ? r : rows - r);
            #pragma omp parallel for schedule(static) if (k * inner > SD_PAR_MIN)
            for (int64_t i = r; i < r + k; i++)
                geglu_row(hg + i * 2 * inner, hg + i * 2 * inner + inner, y + i * inner, inner);
            r += k;
        }
        return;
    }
    #pragma omp parallel for schedule(static) if (rows * inner > SD_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) geglu_row(hg + r * 2 * inner, hg + r * 2 * inner + inner, y + r * inner, inner);
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

/* Sum of x[0..d), 8 lane accumulators (fixed order). */
static float sum_v8(const float *x, int64_t d) {
    sd_v8f acc = sd_v8_set(0.0f);
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) acc += sd_v8_load(x + j);
    float s = sd_v8_hsum(acc);
    for (; j < d; j++) s += x[j];
    return s;
}

/* Sum of (x[j] - m)^2 over [0, d). */
static float sumsq_dev_v8(const float *x, int64_t d, float m) {
    sd_v8f acc = sd_v8_set(0.0f), mv = sd_v8_set(m);
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
        sd_v8f t = sd_v8_load(x + j) - mv;
        acc += t * t;
    }
    float s = sd_v8_hsum(acc);
    for (; j < d; j++) s += (x[j] - m) * (x[j] - m);
    return s;
}

void sd_layer_norm(const float *x, int64_t rows, int64_t d, const float *gamma,
                   const float *beta, float eps, float *y) {
    #pragma omp parallel for schedule(static) if (rows * d > SD_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float mean = sum_v8(xr, d) / (float)d;
        float rstd = 1.0f / sqrtf(sumsq_dev_v8(xr, d, mean) / (float)d + eps);
        if (gamma && beta)
            for (int64_t j = 0; j < d; j++) yr[j] = (xr[j] - mean) * rstd * gamma[j] + beta[j];
        else
            for (int64_t j = 0; j < d; j++)
                yr[j] = (xr[j] - mean) * rstd * (gamma ? gamma[j] : 1.0f) + (beta ? beta[j] : 0.0f);
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
