/* core/rng — PyTorch's CPU generator, reproduced draw for draw.
 *
 * Owns the random stream of one request: `torch.Generator('cpu').manual_seed(s)`
 * followed by any sequence of `torch.randn(shape, generator=g)` and
 * `torch.rand(shape, generator=g)` on float32 tensors gives the same numbers
 * as the same sequence of sd_rng_randn / sd_rng_rand calls (PyTorch 1.13,
 * aten/src/ATen/CPUGeneratorImpl.cpp, core/MT19937RNGEngine.h,
 * native/cpu/DistributionTemplates.h):
 *
 *  - the engine is mt19937 seeded with the LOW 32 BITS of the seed;
 *  - a float uniform is (u32 & 0xFFFFFF) * 2^-24 (one u32 per value);
 *  - randn of n >= 16 values fills n uniforms, then Box-Muller per block of
 *    16 (value j pairs with j+8); when n % 16 != 0 the last 16 positions are
 *    redrawn from 16 fresh uniforms and transformed again;
 *  - randn of n < 16 values draws per element a double normal from two
 *    53-bit uniform doubles (each from two u32), returns r*cos and keeps
 *    r*sin in the generator for the next such element (the cache survives
 *    other draws until used or reseeded).
 *
 * The draw depends only on the element count, not the shape, since tensors
 * are contiguous: draw NCHW latents as one run of N*C*H*W values.
 *
 * A generator is a plain value owned by its request (no globals): one per
 * image of a batch, seeded seed + i.  Not thread-safe; never shared.
 *
 *     sd_rng g;
 *     sd_rng_seed(&g, 42);
 *     sd_rng_randn(&g, latents, 4 * 64 * 64);
 */
#ifndef SDMOE_CORE_RNG_H
#define SDMOE_CORE_RNG_H

#include <stddef.h>
#include <stdint.h>

#define SD_RNG_MT_N 624

typedef struct sd_rng {
    uint32_t mt[SD_RNG_MT_N]; /* mt19937 state */
    int mti;                  /* next state word to temper */
    uint64_t seed;            /* the seed as given (for metadata) */
    int has_next_normal;      /* cached second normal of the double path */
    double next_normal;
} sd_rng;

/* Resets g as manual_seed(seed): new engine state, cached normal dropped. */
void sd_rng_seed(sd_rng *g, uint64_t seed);

/* One raw 32-bit output of the engine. */
uint32_t sd_rng_u32(sd_rng *g);

/* torch.rand: n float32 uniforms in [0, 1). */
void sd_rng_rand(sd_rng *g, float *out, size_t n);

/* torch.randn: n float32 standard normals, out[n] (contiguous tensor order). */
void sd_rng_randn(sd_rng *g, float *out, size_t n);

#endif
