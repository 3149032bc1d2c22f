/* core/layout — channel-blocked activation layouts (NHWC, NCHW, nChw8c,
 * nChw16c; contract in core/kernels.h): conversions, GroupNorm, per-channel
 * adds, nearest upsampling and channel concatenation on any of them.
 *
 * Every kernel walks "runs": the longest channel ranges that are contiguous
 * in both the input and the output layout (min of the two block sizes, with
 * NHWC's block being all c channels), so blocked data is processed 8 or 16
 * lanes at a time. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels.h"
#include "core/kernels_math.h"

#define SD_PAR_MIN 32768

/* Channels per contiguous block of a layout for c channels. */
static int64_t lay_block(int blk, int64_t c) { return blk == SD_LAYOUT_NHWC ? c : blk; }

int64_t sd_layout_channels(int blk, int64_t c) {
    return blk <= SD_LAYOUT_NCHW ? c : (c + blk - 1) / blk * blk;
}

int64_t sd_layout_floats(int blk, int64_t n, int64_t c, int64_t hw) { return n * sd_layout_channels(blk, c) * hw; }

/* Zeroes the padding lanes of pixel (b, p) of a blocked tensor. */
static void zero_pad_lanes(float *y, int blk, int64_t c, int64_t hw, int64_t b, int64_t p) {
    if (blk <= SD_LAYOUT_NCHW || c % blk == 0) return;
    float *at = y + sd_layout_offset(blk, c, hw, b, c - c % blk, p);
    memset(at + c % blk, 0, (size_t)(blk - c % blk) * sizeof(float));
}

/* y[0..len) (+)= x[0..len) */
static inline void run_copy(float *y, const float *x, int64_t len, int accumulate) {
    if (!accumulate) {
        memcpy(y, x, (size_t)len * sizeof(float));
        return;
    }
    for (int64_t j = 0; j < len; j++) y[j] += x[j];
}

void sd_layout_convert(const float *x, int blk_in, float *y, int blk_out, int64_t n, int64_t c,
                       int64_t hw, int accumulate) {
    if (blk_in == blk_out && !accumulate) {
        memcpy(y, x, (size_t)sd_layout_floats(blk_in, n, c, hw) * sizeof(float));
        return;
    }
    if (blk_in == SD_LAYOUT_NCHW && blk_out == SD_LAYOUT_NHWC && !accumulate) {
        #pragma omp parallel for collapse(2) schedule(static) if (n * c * hw > SD_PAR_MIN)
        for (int64_t b = 0; b < n; b++)
            for (int64_t p = 0; p < hw; p++)
                for (int64_t j = 0; j < c; j++) y[(b * hw + p) * c + j] = x[(b * c + j) * hw + p];
        return;
    }
    int64_t r = lay_block(blk_in, c) < lay_block(blk_out, c) ? lay_block(blk_in, c) : lay_block(blk_out, c);
    #pragma omp parallel for collapse(2) schedule(static) if (n * c * hw > SD_PAR_MIN)
    for (int64_t b = 0; b < n; b++)
        for (int64_t p = 0; p < hw; p++) {
            for (int64_t c0 = 0; c0 < c; c0 += r) {
                int64_t len = c - c0 < r ? c - c0 : r;
                run_copy(y + sd_layout_offset(blk_out, c, hw, b, c0, p),
                         x + sd_layout_offset(blk_in, c, hw, b, c0, p), len, accumulate);
            }
            if (!accumulate) zero_pad_lanes(y, blk_out, c, hw, b, p);
        }
}

void sd_add_channel_vec(float *x, int blk, int64_t n, int64_t c, int64_t hw, const float *vec) {
    int64_t r = lay_block(blk, c);
    #pragma omp parallel for collapse(2) schedule(static) if (n * c * hw > SD_PAR_MIN)
    for (int64_t b = 0; b < n; b++)
        for (int64_t p = 0; p < hw; p++)
            for (int64_t c0 = 0; c0 < c; c0 += r) {
                int64_t len = c - c0 < r ? c - c0 : r;
                float *xr = x + sd_layout_offset(blk, c, hw, b, c0, p);
                for (int64_t j = 0; j < len; j++) xr[j] += vec[c0 + j];
            }
}

/* ------------------------------------------------------------- GroupNorm */

/* Fixed number of pixel chunks per image for the reductions, so the
 * summation order does not depend on the thread count. */
#define GN_CHUNKS 64

/* Per-group sums over pixels [p0, p1) of item b: of x (mean == NULL) or of
 * (x - mean[ch])^2; channel partials in float (acc, cp floats), groups in double. */
static void gn_chunk(const float *x, int blk, int64_t c, int64_t hw, int64_t b, int64_t p0, int64_t p1,
                     const float *mean, int groups, float *acc, double *out) {
    int64_t r = lay_block(blk, c), cg = c / groups;
    memset(acc, 0, (size_t)c * sizeof(float));
    for (int64_t c0 = 0; c0 < c; c0 += r) {
        int64_t len = c - c0 < r ? c - c0 : r;
        float *a = acc + c0;
        const float *m = mean ? mean + c0 : NULL;
        if (blk > SD_LAYOUT_NCHW && len == blk) { /* a full block: its lanes as vectors, pixels in order */
            const float *xp = x + sd_layout_offset(blk, c, hw, b, c0, 0);
            for (int64_t v = 0; v < blk; v += 8) {
                sd_v8f s = sd_v8_set(0.0f), mv = m ? sd_v8_load(m + v) : s;
                for (int64_t p = p0; p < p1; p++) {
                    sd_v8f d = sd_v8_load(xp + p * blk + v);
                    if (m) {
                        d = d - mv;
                        s += d * d;
                    } else {
                        s += d;
                    }
                }
                sd_v8_store(a + v, s);
            }
            continue;
        }
        for (int64_t p = p0; p < p1; p++) {
            const float *xr = x + sd_layout_offset(blk, c, hw, b, c0, p);
            if (m)
                for (int64_t j = 0; j < len; j++) {
                    float d = xr[j] - m[j];
                    a[j] += d * d;
                }
            else
                for (int64_t j = 0; j < len; j++) a[j] += xr[j];
        }
    }
    for (int g = 0; g < groups; g++) {
        double s = 0;
        for (int64_t j = g * cg; j < (g + 1) * cg; j++) s += acc[j];
        out[g] = s;
    }
}

/* y = x * scale + shift (SiLU optional) over one run of len lanes. */
static inline void gn_apply(const float *x, float *y, const float *sc, const float *sh, int64_t len, int silu) {
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
        sd_v8f v = sd_v8_load(x + j) * sd_v8_load(sc + j) + sd_v8_load(sh + j);
        sd_v8_store(y + j, silu ? sd_v8_silu(v) : v);
    }
    if (j < len) {
        sd_v8f v = sd_v8_load_part(x + j, len - j) * sd_v8_load_part(sc + j, len - j) +
                   sd_v8_load_part(sh + j, len - j);
        sd_v8_store_part(y + j, silu ? sd_v8_silu(v) : v, len - j);
    }
}

void sd_group_norm_ex(const float *x, int blk_in, float *y, int blk_out, int64_t n, int64_t hw,
                      int64_t c, int groups, float eps, const float *gamma, const float *beta,
                      int fuse_silu) {
    int64_t cg = c / groups;
    int64_t chunks = hw < GN_CHUNKS ? (hw > 0 ? hw : 1) : GN_CHUNKS;
    /* small buffers (group partials, per-channel vectors): no large per-call allocation */
    double *part = malloc((size_t)(n * chunks * groups) * sizeof(double));
    double *stat = malloc((size_t)(n * groups) * sizeof(double));
    float *chan = malloc((size_t)(3 * n * c) * sizeof(float)); /* mean | scale | shift */
    float *mean_c = chan, *scale = chan + n * c, *shift = chan + 2 * n * c;
    for (int pass = 0; pass < 2; pass++) {
        #pragma omp parallel
        {
            float *acc = malloc((size_t)c * sizeof(float));
            #pragma omp for collapse(2) schedule(static)
            for (int64_t b = 0; b < n; b++)
                for (int64_t k = 0; k < chunks; k++)
                    gn_chunk(x, blk_in, c, hw, b, hw * k / chunks, hw * (k + 1) / chunks, pass ? mean_c + b * c : NULL,
                             groups, acc, part + (b * chunks + k) * groups);
            free(acc);
        }
        for (int64_t b = 0; b < n; b++)
            for (int g = 0; g < groups; g++) {
                double sum = 0;
                for (int64_t k = 0; k < chunks; k++) sum += part[(b * chunks + k) * groups + g];
                sum /= (double)(hw * cg);
                if (pass == 0) { /* mean */
                    stat[b * groups + g] = sum;
                    for (int64_t j = g * cg; j < (g + 1) * cg; j++) mean_c[b * c + j] = (float)sum;
                    continue;
                }
                float rstd = (float)(1.0 / sqrt(sum + (double)eps)), mean = (float)stat[b * groups + g];
                for (int64_t j = g * cg; j < (g + 1) * cg; j++) {
                    float ga = gamma ? gamma[j] : 1.0f, be = beta ? beta[j] : 0.0f;
                    scale[b * c + j] = ga * rstd;
                    shift[b * c + j] = be - mean * ga * rstd;
                }
            }
    }
    if (blk_in == blk_out && blk_in > SD_LAYOUT_NCHW) {
        /* one blocked layout: walk each block's plane front to back */
        int64_t nblk = (c + blk_in - 1) / blk_in;
        #pragma omp parallel for collapse(3) schedule(static)
        for (int64_t b = 0; b < n; b++)
            for (int64_t kb = 0; kb < nblk; kb++)
                for (int64_t k = 0; k < GN_CHUNKS; k++) {
                    int64_t c0 = kb * blk_in, len = c - c0 < blk_in ? c - c0 : blk_in;
                    int64_t p0 = hw * k / GN_CHUNKS, p1 = hw * (k + 1) / GN_CHUNKS;
                    if (len == blk_in) { /* full block: the lanes' scale and shift stay in registers */
                        const float *xp = x + sd_layout_offset(blk_in, c, hw, b, c0, 0);
                        float *yp = y + sd_layout_offset(blk_out, c, hw, b, c0, 0);
                        for (int64_t v = 0; v < blk_in; v += 8) {
                            sd_v8f sc = sd_v8_load(scale + b * c + c0 + v), sh = sd_v8_load(shift + b * c + c0 + v);
                            for (int64_t p = p0; p < p1; p++) {
                                sd_v8f t = sd_v8_load(xp + p * blk_in + v) * sc + sh;
                                sd_v8_store(yp + p * blk_in + v, fuse_silu ? sd_v8_silu(t) : t);
                            }
                        }
                        continue;
                    }
                    for (int64_t p = p0; p < p1; p++) {
                        gn_apply(x + sd_layout_offset(blk_in, c, hw, b, c0, p), y + sd_layout_offset(blk_out, c, hw, b, c0, p),
                                 scale + b * c + c0, shift + b * c + c0, len, fuse_silu);
                        if (len < blk_in) zero_pad_lanes(y, blk_out, c, hw, b, p);
                    }
                }
    } else {
        int64_t r = lay_block(blk_in, c) < lay_block(blk_out, c) ? lay_block(blk_in, c) : lay_block(blk_out, c);
        #pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < n; b++)
            for (int64_t p = 0; p < hw; p++) {
                for (int64_t c0 = 0; c0 < c; c0 += r) {
                    int64_t len = c - c0 < r ? c - c0 : r;
                    gn_apply(x + sd_layout_offset(blk_in, c, hw, b, c0, p), y + sd_layout_offset(blk_out, c, hw, b, c0, p),
                             scale + b * c + c0, shift + b * c + c0, len, fuse_silu);
                }
                zero_pad_lanes(y, blk_out, c, hw, b, p);
            }
    }
    free(part);
    free(stat);
    free(chan);
}

void sd_group_norm(const float *x, int64_t n, int64_t hw, int64_t c, int groups, float eps,
                   const float *gamma, const float *beta, float *y, int fuse_silu) {
    sd_group_norm_ex(x, SD_LAYOUT_NHWC, y, SD_LAYOUT_NHWC, n, hw, c, groups, eps, gamma, beta, fuse_silu);
}

/* ------------------------------------------------------ resampling, concat */

void sd_upsample_nearest_ex(const float *x, int blk, int64_t n, int64_t c, int64_t h, int64_t w,
                            float *y, int64_t oh, int64_t ow) {
    int64_t r = lay_block(blk, c);
    /* every stored lane (padding included) is copied, so padding stays zero */
    int64_t lanes = blk <= SD_LAYOUT_NCHW ? r : blk;
    int64_t nblk = (c + r - 1) / r;
    #pragma omp parallel for collapse(3) schedule(static) if (n * c * oh * ow > SD_PAR_MIN)
    for (int64_t b = 0; b < n; b++)
        for (int64_t kb = 0; kb < nblk; kb++)
            for (int64_t i = 0; i < oh; i++) {
                /* torch 'nearest': src = floor(dst * (in / out)), scale in float */
                int64_t si = (int64_t)floorf((float)i * ((float)h / (float)oh));
                if (si > h - 1) si = h - 1;
                for (int64_t j = 0; j < ow; j++) {
                    int64_t sj = (int64_t)floorf((float)j * ((float)w / (float)ow));
                    if (sj > w - 1) sj = w - 1;
                    memcpy(y + sd_layout_offset(blk, c, oh * ow, b, kb * r, i * ow + j),
                           x + sd_layout_offset(blk, c, h * w, b, kb * r, si * w + sj), (size_t)lanes * sizeof(float));
                }
            }
}

void sd_concat_channels_ex(const float *a, int64_t ca, const float *b, int64_t cb, int blk,
                           int64_t n, int64_t hw, float *y) {
    int64_t c = ca + cb;
    if (blk > SD_LAYOUT_NCHW && ca % blk == 0) {
        /* whole planes: a's blocks then b's blocks, per item */
        size_t sa = (size_t)(sd_layout_channels(blk, ca) * hw), sb = (size_t)(sd_layout_channels(blk, cb) * hw);
        for (int64_t i = 0; i < n; i++) {
            memcpy(y + i * (sa + sb), a + i * sa, sa * sizeof(float));
            memcpy(y + i * (sa + sb) + sa, b + i * sb, sb * sizeof(float));
        }
        return;
    }
    if (blk == SD_LAYOUT_NHWC) {
        sd_concat_channels(a, ca, b, cb, n * hw, y);
        return;
    }
    #pragma omp parallel for collapse(2) schedule(static) if (n * c * hw > SD_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        for (int64_t p = 0; p < hw; p++) {
            for (int64_t ch = 0; ch < ca; ch++)
                y[sd_layout_offset(blk, c, hw, i, ch, p)] = a[sd_layout_offset(blk, ca, hw, i, ch, p)];
            for (int64_t ch = 0; ch < cb; ch++)
                y[sd_layout_offset(blk, c, hw, i, ca + ch, p)] = b[sd_layout_offset(blk, cb, hw, i, ch, p)];
            zero_pad_lanes(y, blk, c, hw, i, p);
        }
}
