#include "core/rng.h"

#include <math.h>
#include <string.h>

/* ---- mt19937 (PyTorch core/MT19937RNGEngine.h: the standard engine) ---- */

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

void sd_rng_seed(sd_rng *g, uint64_t seed) {
    /* manual_seed keeps only the low 32 bits for the engine. */
    g->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (int i = 1; i < SD_RNG_MT_N; i++)
        g->mt[i] = 1812433253u * (g->mt[i - 1] ^ (g->mt[i - 1] >> 30)) + (uint32_t)i;
    g->mti = SD_RNG_MT_N;
    g->seed = seed;
    g->has_next_normal = 0;
    g->next_normal = 0.0;
}

static uint32_t mt_mix(uint32_t a, uint32_t b, uint32_t m) {
    uint32_t y = (a & MT_UPPER) | (b & MT_LOWER);
    return m ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
}

static void mt_twist(sd_rng *g) {
    uint32_t *s = g->mt;
    int i = 0;
    for (; i < SD_RNG_MT_N - MT_M; i++) s[i] = mt_mix(s[i], s[i + 1], s[i + MT_M]);
    for (; i < SD_RNG_MT_N - 1; i++) s[i] = mt_mix(s[i], s[i + 1], s[i + MT_M - SD_RNG_MT_N]);
    s[SD_RNG_MT_N - 1] = mt_mix(s[SD_RNG_MT_N - 1], s[0], s[MT_M - 1]);
    g->mti = 0;
}

uint32_t sd_rng_u32(sd_rng *g) {
    if (g->mti >= SD_RNG_MT_N) mt_twist(g);
    uint32_t y = g->mt[g->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* uniform_real_distribution<float>(0, 1): 24 random bits. */
static float rng_uniform_f32(sd_rng *g) { return (float)(sd_rng_u32(g) & 0xFFFFFFu) * (1.0f / 16777216.0f); }

void sd_rng_rand(sd_rng *g, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = rng_uniform_f32(g);
}

/* ---- randn, numel >= 16: PyTorch's normal_fill_AVX2 ----
 *
 * The reference build (like any x86-64 PyTorch on an AVX2 machine) runs
 * normal_fill_16_AVX2, whose log and sincos are the Cephes polynomials of
 * aten/src/ATen/native/cpu/avx_mathfun.h, compiled with FMA contraction.  The
 * scalar restatement below follows the same operation order and fuses the
 * same multiply-adds, which reproduces the reference draws bit for bit
 * (libm logf/sinf/cosf would land within ~2e-6). */

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* log256_ps for x in (0, 1] (Box-Muller's u1 = 1 - uniform is never 0). */
static float cephes_logf(float x) {
    uint32_t ix = f32_bits(x);
    int exponent = (int)(ix >> 23) - 0x7f;
    float m = f32_from_bits((ix & ~0x7f800000u) | 0x3f000000u); /* mantissa in [0.5, 1) */
    float e = (float)exponent + 1.0f;
    if (m < 0.707106781186547524f) { /* SQRTHF */
        e = e - 1.0f;
        x = (m - 1.0f) + m;
    } else {
        x = m - 1.0f;
    }
    float z = x * x;
    float y = 7.0376836292E-2f;
    y = fmaf(y, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, 1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, 2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, 3.3333331174E-1f);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = y - z * 0.5f;
    x = x + y;
    return fmaf(e, 0.693359375f, x);
}

/* sincos256_ps for theta >= 0. */
static void cephes_sincosf(float x, float *s, float *c) {
    float y = x * 1.27323954473516f; /* 4 / pi */
    int32_t j = (int32_t)y;
    j = (j + 1) & ~1;
    y = (float)j;
    int swap_sin = (j & 4) != 0;
    int sin_poly = (j & 2) == 0;
    int neg_cos = ((~(j - 2)) & 4) != 0;
    /* extended-precision reduction x - y*pi/4 */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float yc = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    float sv = sin_poly ? ys : yc, cv = sin_poly ? yc : ys;
    *s = swap_sin ? -sv : sv;
    *c = neg_cos ? -cv : cv;
}

/* normal_fill_16: d[j] and d[j+8] (uniforms) become a Box-Muller pair. */
static void normal_fill_16(float *d) {
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * cephes_logf(u1));
        float s, c;
        cephes_sincosf(two_pi * u2, &s, &c);
        d[j] = radius * c;
        d[j + 8] = radius * s;
    }
}

/* ---- randn, numel < 16: at::normal_distribution<double> ---- */

static double rng_uniform_f64(sd_rng *g) {
    uint64_t hi = sd_rng_u32(g);
    uint64_t lo = sd_rng_u32(g);
    uint64_t r = (hi << 32) | lo;
    return (double)(r & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

static double rng_normal_f64(sd_rng *g) {
    if (g->has_next_normal) {
        g->has_next_normal = 0;
        return g->next_normal;
    }
    double u1 = rng_uniform_f64(g);
    double u2 = rng_uniform_f64(g);
    double r = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    g->next_normal = r * sin(theta);
    g->has_next_normal = 1;
    return r * cos(theta);
}

void sd_rng_randn(sd_rng *g, float *out, size_t n) {
    if (n < 16) {
        for (size_t i = 0; i < n; i++) out[i] = (float)rng_normal_f64(g);
        return;
    }
    sd_rng_rand(g, out, n);
    for (size_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
    if (n % 16 != 0) {
        /* PyTorch recomputes the last 16 values from fresh uniforms. */
        float *tail = out + n - 16;
        sd_rng_rand(g, tail, 16);
        normal_fill_16(tail);
    }
}
