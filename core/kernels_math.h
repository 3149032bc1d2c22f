/* core/kernels_math — 8-lane float math for the kernels of core/ (internal).
 *
 * GCC/Clang vector extensions instead of ISA intrinsics: one source that
 * compiles to AVX2 (8 lanes) with -march=native and to SSE pairs elsewhere.
 * exp ~1 ulp (Cephes expf polynomial, Cody-Waite reduction), erf ~4e-7 abs
 * (Eigen/XLA rational approximation on [-4, 4]).  Every lane is computed the
 * same way, so results do not depend on an element's position (tails go
 * through a zero-padded vector). */
#ifndef SDMOE_CORE_KERNELS_MATH_H
#define SDMOE_CORE_KERNELS_MATH_H

#include <stdint.h>
#include <string.h>

typedef float sd_v8f __attribute__((vector_size(32)));
typedef int32_t sd_v8i __attribute__((vector_size(32)));

static inline sd_v8f sd_v8_load(const float *p) {
    sd_v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void sd_v8_store(float *p, sd_v8f v) { memcpy(p, &v, sizeof v); }
static inline sd_v8f sd_v8_set(float x) { return (sd_v8f){x, x, x, x, x, x, x, x}; }
/* First n (< 8) floats of p, zeros after. */
static inline sd_v8f sd_v8_load_part(const float *p, int64_t n) {
    float t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return sd_v8_load(t);
}
static inline void sd_v8_store_part(float *p, sd_v8f v, int64_t n) {
    float t[8];
    sd_v8_store(t, v);
    memcpy(p, t, (size_t)n * sizeof(float));
}
static inline sd_v8f sd_v8_select(sd_v8i mask, sd_v8f a, sd_v8f b) {
    return (sd_v8f)((mask & (sd_v8i)a) | (~mask & (sd_v8i)b));
}
static inline sd_v8f sd_v8_max(sd_v8f a, sd_v8f b) { return sd_v8_select(a > b, a, b); }
static inline sd_v8f sd_v8_min(sd_v8f a, sd_v8f b) { return sd_v8_select(a < b, a, b); }
static inline float sd_v8_hsum(sd_v8f v) {
    /* fixed pairwise order */
    float a = (v[0] + v[4]) + (v[2] + v[6]), b = (v[1] + v[5]) + (v[3] + v[7]);
    return a + b;
}
static inline float sd_v8_hmax(sd_v8f v) {
    float m = v[0];
    for (int i = 1; i < 8; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* e^x, x clamped to [-87.3, 88.3] (tiny / huge results, never inf or NaN from range). */
static inline sd_v8f sd_v8_exp(sd_v8f x) {
    x = sd_v8_min(sd_v8_max(x, sd_v8_set(-87.3f)), sd_v8_set(88.3f));
    const sd_v8f magic = sd_v8_set(12582912.0f); /* 1.5 * 2^23: round to nearest */
    sd_v8f fn = (x * sd_v8_set(1.44269504088896341f) + magic) - magic;
    sd_v8f r = x - fn * sd_v8_set(0.693359375f);
    r = r - fn * sd_v8_set(-2.12194440e-4f);
    sd_v8f p = sd_v8_set(1.9875691500e-4f);
    p = p * r + sd_v8_set(1.3981999507e-3f);
    p = p * r + sd_v8_set(8.3334519073e-3f);
    p = p * r + sd_v8_set(4.1665795894e-2f);
    p = p * r + sd_v8_set(1.6666665459e-1f);
    p = p * r + sd_v8_set(5.0000001201e-1f);
    p = p * r * r + r + sd_v8_set(1.0f);
    sd_v8i bits = (__builtin_convertvector(fn, sd_v8i) + 127) << 23;
    return p * (sd_v8f)bits;
}

/* 16 lanes (one zmm with AVX-512, two ymm with AVX2) for the longest loops,
 * with the same exp polynomial lane for lane as sd_v8_exp. */
typedef float sd_v16f __attribute__((vector_size(64)));
typedef int32_t sd_v16i __attribute__((vector_size(64)));

static inline sd_v16f sd_v16_set(float x) { return (sd_v16f){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline sd_v16f sd_v16_load(const float *p) {
    sd_v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void sd_v16_store(float *p, sd_v16f v) { memcpy(p, &v, sizeof v); }
static inline sd_v16f sd_v16_select(sd_v16i mask, sd_v16f a, sd_v16f b) {
    return (sd_v16f)((mask & (sd_v16i)a) | (~mask & (sd_v16i)b));
}
static inline sd_v16f sd_v16_exp(sd_v16f x) {
    x = sd_v16_select(x > sd_v16_set(-87.3f), x, sd_v16_set(-87.3f));
    x = sd_v16_select(x < sd_v16_set(88.3f), x, sd_v16_set(88.3f));
    const sd_v16f magic = sd_v16_set(12582912.0f);
    sd_v16f fn = (x * sd_v16_set(1.44269504088896341f) + magic) - magic;
    sd_v16f r = x - fn * sd_v16_set(0.693359375f);
    r = r - fn * sd_v16_set(-2.12194440e-4f);
    sd_v16f p = sd_v16_set(1.9875691500e-4f);
    p = p * r + sd_v16_set(1.3981999507e-3f);
    p = p * r + sd_v16_set(8.3334519073e-3f);
    p = p * r + sd_v16_set(4.1665795894e-2f);
    p = p * r + sd_v16_set(1.6666665459e-1f);
    p = p * r + sd_v16_set(5.0000001201e-1f);
    p = p * r * r + r + sd_v16_set(1.0f);
    sd_v16i bits = (__builtin_convertvector(fn, sd_v16i) + 127) << 23;
    return p * (sd_v16f)bits;
}

static inline sd_v8f sd_v8_sigmoid(sd_v8f x) { return sd_v8_set(1.0f) / (sd_v8_set(1.0f) + sd_v8_exp(-x)); }
static inline sd_v8f sd_v8_silu(sd_v8f x) { return x / (sd_v8_set(1.0f) + sd_v8_exp(-x)); }

/* erf(x) = x * P(x^2) / Q(x^2), x clamped to [-4, 4]. */
static inline sd_v8f sd_v8_erf(sd_v8f x) {
    x = sd_v8_min(sd_v8_max(x, sd_v8_set(-4.0f)), sd_v8_set(4.0f));
    sd_v8f x2 = x * x;
    sd_v8f p = sd_v8_set(-2.72614225801306e-10f);
    p = p * x2 + sd_v8_set(2.77068142495902e-08f);
    p = p * x2 + sd_v8_set(-2.10102402082508e-06f);
    p = p * x2 + sd_v8_set(-5.69250639462346e-05f);
    p = p * x2 + sd_v8_set(-7.34990630326855e-04f);
    p = p * x2 + sd_v8_set(-2.95459980854025e-03f);
    p = p * x2 + sd_v8_set(-1.60960333262415e-02f);
    sd_v8f q = sd_v8_set(-1.45660718464996e-05f);
    q = q * x2 + sd_v8_set(-2.13374055278905e-04f);
    q = q * x2 + sd_v8_set(-1.68282697438203e-03f);
    q = q * x2 + sd_v8_set(-7.37332916720468e-03f);
    q = q * x2 + sd_v8_set(-1.42647390514189e-02f);
    return x * p / q;
}

/* torch gelu(approximate='none'): 0.5 x (1 + erf(x / sqrt 2)). */
static inline sd_v8f sd_v8_gelu(sd_v8f x) {
    return sd_v8_set(0.5f) * x * (sd_v8_set(1.0f) + sd_v8_erf(x * sd_v8_set(0.70710678118654752f)));
}

#endif
