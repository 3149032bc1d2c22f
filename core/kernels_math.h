/* core/kernels_math — branch-free scalar exp / erf / sigmoid that GCC
 * vectorises inside plain loops (glibc's expf/erff are calls and do not).
 * Internal to core/ kernels; accuracy: exp ~2 ulp (Cephes expf polynomial),
 * erf ~4e-7 abs (Eigen/XLA rational approximation on [-4, 4]). */
#ifndef SDMOE_CORE_KERNELS_MATH_H
#define SDMOE_CORE_KERNELS_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* e^x for x in [-87.3, 88.7] (clamped outside: tiny / huge, never inf/NaN). */
static inline float sd_exp1(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.7f ? 88.7f : x;
    float fn = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - fn * 0.693359375f;       /* Cody-Waite ln2 split */
    r = r - fn * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)fn + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float sd_sigmoid1(float x) { return 1.0f / (1.0f + sd_exp1(-x)); }

static inline float sd_silu1(float x) { return x / (1.0f + sd_exp1(-x)); }

/* erf(x): x * P(x^2) / Q(x^2) with x clamped to [-4, 4] (|erf| rounds to 1 beyond). */
static inline float sd_erf1(float x) {
    x = x < -4.0f ? -4.0f : x;
    x = x > 4.0f ? 4.0f : x;
    float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 + -2.10102402082508e-06f;
    p = p * x2 + -5.69250639462346e-05f;
    p = p * x2 + -7.34990630326855e-04f;
    p = p * x2 + -2.95459980854025e-03f;
    p = p * x2 + -1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 + -2.13374055278905e-04f;
    q = q * x2 + -1.68282697438203e-03f;
    q = q * x2 + -7.37332916720468e-03f;
    q = q * x2 + -1.42647390514189e-02f;
    return x * p / q;
}

/* torch gelu(approximate='none'): 0.5 x (1 + erf(x / sqrt 2)). */
static inline float sd_gelu1(float x) { return 0.5f * x * (1.0f + sd_erf1(x * 0.70710678118654752f)); }

#endif
