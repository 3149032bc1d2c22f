/* tests/kernel_ref — plain reference implementations of the core/kernels
 * fast paths (straight loops, double accumulation, libm functions), used
 * only by tests to check the fast kernels on odd sizes.  Same contracts as
 * the functions of the same name without the "ref_" prefix in core/kernels.h. */
#ifndef SDMOE_TESTS_KERNEL_REF_H
#define SDMOE_TESTS_KERNEL_REF_H

#include <stdint.h>

void ref_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc);
void ref_linear(const float *x, const float *W, const float *b, int64_t n, int64_t in,
                int64_t out, float *y);
/* x NHWC [n,h,w,ci], weight [co,ci,kh,kw] -> y NHWC [n,oh,ow,co]. */
void ref_conv2d(const float *x, int64_t n, int64_t h, int64_t w, int64_t ci, const float *weight,
                const float *bias, int64_t co, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                int64_t pt, int64_t pl, int64_t pb, int64_t pr, float *y);
void ref_group_norm(const float *x, int64_t n, int64_t hw, int64_t c, int groups, float eps,
                    const float *gamma, const float *beta, float *y, int fuse_silu);
void ref_layer_norm(const float *x, int64_t rows, int64_t d, const float *gamma,
                    const float *beta, float eps, float *y);
void ref_silu(const float *x, float *y, int64_t n);
void ref_gelu_erf(const float *x, float *y, int64_t n);
void ref_quick_gelu(const float *x, float *y, int64_t n);
void ref_geglu(const float *hg, int64_t rows, int64_t inner, float *y);
void ref_attention(const float *q, int64_t q_ld, const float *k, int64_t k_ld, const float *v,
                   int64_t v_ld, int64_t batch, int64_t nq, int64_t nk, int heads, int64_t dh,
                   float scale, int causal, float *out, int64_t o_ld);
void ref_upsample_nearest(const float *x, int64_t n, int64_t h, int64_t w, int64_t c, float *y,
                          int64_t oh, int64_t ow);
/* y [rows, ca + cb] = [a | b]. */
void ref_concat(const float *a, int64_t ca, const float *b, int64_t cb, int64_t rows, float *y);
void ref_nchw_to_nhwc(const float *x, int64_t n, int64_t c, int64_t h, int64_t w, float *y);
/* Index of element (b, ch, p) of an [n, c, hw] tensor in layout blk
 * (0 NHWC, 1 NCHW, 8/16 blocked with zero padding lanes), written out
 * independently of core/kernels.h's sd_layout_offset. */
int64_t ref_layout_index(int blk, int64_t c, int64_t hw, int64_t b, int64_t ch, int64_t p);
/* Stored floats of such a tensor. */
int64_t ref_layout_size(int blk, int64_t n, int64_t c, int64_t hw);
/* NHWC -> layout blk (padding lanes zero). */
void ref_to_layout(const float *nhwc, int blk, int64_t n, int64_t c, int64_t hw, float *y);

#endif
