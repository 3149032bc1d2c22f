/* core/kernels — the numeric hot paths shared by unet/, vae/ and
 * text_encoder/: thread control, GEMM routing, oneDNN convolutions,
 * normalisations, activations, attention and activation-layout helpers.
 *
 * Layout: activations inside the networks are NHWC ([N, H, W, C], a token
 * matrix [N, H*W, C]) or, for the convolution-heavy parts, the channel-
 * blocked layout oneDNN prefers on the machine (see "layout" below: nChw8c on
 * AVX2, where oneDNN's NHWC kernels run at half speed); weights keep
 * PyTorch's layout ([out, in] for linears, [Co, Ci, kh, kw] for convs).  All
 * sizes are int64_t element counts; all matrices are row-major.
 *
 * Threads: one count for the whole run (sd_set_threads) applied to OpenMP,
 * OpenBLAS and oneDNN.  Every kernel writes each output element from one
 * thread in a fixed order, so results are the same bytes run to run at a
 * fixed thread count.  Kernels must not be called from inside an OpenMP
 * parallel region (they parallelise themselves; sd_gemm is the exception).
 * Not reentrant from several threads at once (one oneDNN stream).
 *
 * Allocation: none that grows with the step count.  sd_conv2d caches one
 * oneDNN primitive (and, where oneDNN has only its reference kernel for the
 * asked layouts, conversion buffers) per input shape on first use;
 * sd_group_norm* mallocs a few per-channel vectors per call; sd_attention
 * allocates only when given no scratch.
 */
#ifndef SDMOE_CORE_KERNELS_H
#define SDMOE_CORE_KERNELS_H

#include <stdint.h>

#include "core/error.h"
#include "core/weight_cache.h"
#include "core/weights.h"

/* ------------------------------------------------------------------ threads */

/* Applies n (>= 1) to OpenMP, OpenBLAS and oneDNN (which runs on OpenMP). */
void sd_set_threads(int n);
/* The count set by sd_set_threads (if never set: OpenMP's default, i.e.
 * OMP_NUM_THREADS or the CPU count). */
int sd_get_threads(void);
/* Physical cores of this machine (logical CPUs / SMT siblings), >= 1. */
int sd_default_threads(void);

/* --------------------------------------------------------------------- GEMM */

/* C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C, row-major.
 * op(A) = A (trans_a = 0, A is [M, lda>=K]) or A^T (trans_a = 1, A is [K, lda>=M]);
 * likewise B.  The one place that routes a shape to OpenBLAS or oneDNN
 * (measured equal here, so all go to oneDNN's dnnl_sgemm: one thread pool;
 * see core/gemm.c).  Threaded; inside an OpenMP parallel region it runs on
 * the calling thread only. */
void sd_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
             const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
             float *C, int64_t ldc);

/* y[n, out] = x[n, in] . W^T + b.  W as stored by PyTorch [out, in]; b may be NULL. */
void sd_linear(const float *x, const float *W, const float *b, int64_t n, int64_t in,
               int64_t out, float *y);
/* Same with row strides: x rows every ldx floats, y rows every ldy floats;
 * accumulate = 1 adds into y (y += x.W^T + b) instead of overwriting. */
void sd_linear_ex(const float *x, int64_t ldx, const float *W, const float *b, int64_t n,
                  int64_t in, int64_t out, float *y, int64_t ldy, int accumulate);

/* ------------------------------------------------------------- convolution */

/* A 2-D convolution prepared once from PyTorch weights (reordered once into
 * oneDNN's preferred weight format); runs on NHWC or blocked activations. */
typedef struct sd_conv2d sd_conv2d;

typedef struct sd_conv2d_desc {
    int64_t c_in, c_out;     /* channels */
    int64_t kh, kw;          /* kernel size */
    int64_t stride_h, stride_w;
    int64_t pad_t, pad_l;    /* zero padding top / left */
    int64_t pad_b, pad_r;    /* zero padding bottom / right (asymmetric allowed) */
} sd_conv2d_desc;

/* weight [c_out, c_in, kh, kw] (copied/reordered here, the caller's buffer
 * may go away afterwards); bias [c_out] or NULL. */
int sd_conv2d_create(sd_conv2d **out, const sd_conv2d_desc *d, const float *weight,
                     const float *bias, sd_error *err);
/* Like sd_conv2d_create with the weights of a bound tensor.  The prepared
 * (reordered) copy is taken from `cache` under a key made of `name` and the
 * exact oneDNN format when present there (the tensor is then neither
 * converted nor read: the conv runs on the cache's mapped bytes); otherwise it
 * is made from the tensor (converted first if bound lazily), the tensor's
 * mapped file pages are released, and the copy is added to the cache (it must
 * be saved while the conv lives).  cache may be NULL. */
int sd_conv2d_create_bound(sd_conv2d **out, const sd_conv2d_desc *d, sd_tensor *weight, const float *bias,
                           sd_weight_cache *cache, const char *name, sd_error *err);
void sd_conv2d_free(sd_conv2d *c);
/* Output spatial size for an input of h x w. */
void sd_conv2d_out_size(const sd_conv2d *c, int64_t h, int64_t w, int64_t *oh, int64_t *ow);

/* y NHWC [n, oh, ow, c_out] = conv(x NHWC [n, h, w, c_in]) + bias.
 * The first call for a given (n, h, w, ...) creates and caches the primitive. */
int sd_conv2d_forward(sd_conv2d *c, const float *x, int64_t n, int64_t h, int64_t w, float *y,
                      sd_error *err);
/* Same in a channel-blocked layout (see "layout" below): x [n, c_in, h, w]
 * and y [n, c_out, oh, ow] both in layout blk (SD_LAYOUT_NHWC, 8 or 16);
 * accumulate = 1 computes y += conv(x) + bias.  Use sd_preferred_layout()
 * for oneDNN's fastest kernels (2x faster than NHWC on AVX2). */
int sd_conv2d_forward_blk(sd_conv2d *c, const float *x, int blk, int64_t n, int64_t h, int64_t w,
                          float *y, int accumulate, sd_error *err);
/* Input and output in different layouts (also SD_LAYOUT_NCHW), e.g. a
 * network's first convolution reading NCHW with few input channels (oneDNN
 * has a fast path for that; a padded blocked input is very slow there). */
int sd_conv2d_forward_layout(sd_conv2d *c, const float *x, int blk_in, int64_t n, int64_t h, int64_t w,
                             float *y, int blk_out, int accumulate, sd_error *err);
/* General form: x pixels every x_ld floats (x_ld >= c_in, e.g. a channel
 * slice of a concat buffer), y pixels every y_ld floats (>= c_out);
 * accumulate = 1 computes y += conv(x) + bias (residual add fused). */
int sd_conv2d_forward_ex(sd_conv2d *c, const float *x, int64_t x_ld, int64_t n, int64_t h,
                         int64_t w, float *y, int64_t y_ld, int accumulate, sd_error *err);

/* ----------------------------------------------------------- normalisation */

/* GroupNorm over NHWC x [n, hw, c] (torch.nn.GroupNorm: biased variance,
 * y = (x - mean) / sqrt(var + eps) * gamma + beta), c % groups == 0;
 * fuse_silu = 1 applies SiLU to the result.  y may equal x. */
void sd_group_norm(const float *x, int64_t n, int64_t hw, int64_t c, int groups, float eps,
                   const float *gamma, const float *beta, float *y, int fuse_silu);

/* LayerNorm over the last dim of x [rows, d]; gamma/beta [d] (may be NULL =
 * 1 / 0).  y may equal x. */
void sd_layer_norm(const float *x, int64_t rows, int64_t d, const float *gamma,
                   const float *beta, float eps, float *y);

/* ------------------------------------------------------------- elementwise */

/* y = x * sigmoid(x).  y may equal x (also for the two below). */
void sd_silu(const float *x, float *y, int64_t n);
/* y = 0.5 x (1 + erf(x / sqrt 2))  (torch gelu, approximate='none'). */
void sd_gelu_erf(const float *x, float *y, int64_t n);
/* y = x * sigmoid(1.702 x)  (CLIP quick_gelu). */
void sd_quick_gelu(const float *x, float *y, int64_t n);
/* GEGLU gate (diffusers GEGLU): hg [rows, 2*inner] = [h | g] per row;
 * y [rows, inner] = h * gelu_erf(g).  y may equal hg (rows are compacted). */
void sd_geglu(const float *hg, int64_t rows, int64_t inner, float *y);

/* y = a + b (n floats); y may equal a or b. */
void sd_add(const float *a, const float *b, float *y, int64_t n);
/* y = (a + b) * scale. */
void sd_add_scale(const float *a, const float *b, float scale, float *y, int64_t n);
/* x [n, hw, c] += bias [n, c] (one vector per batch item; e.g. the resnet's
 * time-embedding projection).  Use sd_add_bias for one vector shared by all rows. */
void sd_add_bias_per_item(float *x, int64_t n, int64_t hw, int64_t c, const float *bias);
/* x [rows, c] += bias [c]. */
void sd_add_bias(float *x, int64_t rows, int64_t c, const float *bias);

/* ---------------------------------------------------------------- attention */

/* Multi-head scaled-dot-product attention, batched, on token-major rows:
 *   q: item b, token i, head h at q[(b*nq + i)*q_ld + h*dh .. +dh]
 *   k, v: same with nk tokens and k_ld / v_ld
 *   out: [b*nq + i]*o_ld + h*dh
 * out = softmax(scale * Q K^T [+ causal mask: key j > query i excluded]) V.
 * Tiled over query blocks: never holds more than (block x nk) scores per
 * thread.  scratch holds sd_attention_scratch_floats(nq, nk, dh) floats
 * (computed with the current thread count), or is NULL to allocate per call. */
void sd_attention(const float *q, int64_t q_ld, const float *k, int64_t k_ld, const float *v,
                  int64_t v_ld, int64_t batch, int64_t nq, int64_t nk, int heads, int64_t dh,
                  float scale, int causal, float *out, int64_t o_ld, float *scratch);
int64_t sd_attention_scratch_floats(int64_t nq, int64_t nk, int64_t dh);

/* ---------------------------------------------------------------- layout */

/* Channel-blocked activation layouts, named by an int `blk`:
 *   SD_LAYOUT_NHWC (0)  [n, h, w, c]
 *   SD_LAYOUT_NCHW (1)  [n, c, h, w]
 *   8 or 16             [n, ceil(c/blk), h, w, blk] (oneDNN nChw8c / nChw16c);
 *                       the lanes of the last block past c are zero.
 * Element (b, ch, p) (p = pixel index y*w + x) of a [n, c, hw] tensor is at
 * sd_layout_offset().  The UNet keeps its activations in the layout oneDNN's
 * convolutions prefer on this machine (sd_preferred_layout()) so that no
 * reorder happens between layers; attention works on NHWC token rows. */
#define SD_LAYOUT_NHWC 0
#define SD_LAYOUT_NCHW 1

/* The layout oneDNN's fp32 3x3 convolution picks for its activations when
 * asked with format "any" (queried once): 8 on AVX2, NHWC on AVX-512 (brgconv). */
int sd_preferred_layout(void);
/* Channels as stored (c rounded up to the block). */
int64_t sd_layout_channels(int blk, int64_t c);
/* Floats of an [n, c, hw] tensor in layout blk. */
int64_t sd_layout_floats(int blk, int64_t n, int64_t c, int64_t hw);
static inline int64_t sd_layout_offset(int blk, int64_t c, int64_t hw, int64_t b, int64_t ch, int64_t p) {
    if (blk == SD_LAYOUT_NHWC) return (b * hw + p) * c + ch;
    int64_t cp = (c + blk - 1) / blk * blk;
    return ((b * cp + ch - ch % blk) * hw + p * blk) + ch % blk;
}

/* y (layout blk_out) = x (layout blk_in), or y += x with accumulate = 1;
 * [n, c, hw].  Padding lanes of a blocked y are set to zero (kept with
 * accumulate).  Also the NCHW <-> NHWC conversions. */
void sd_layout_convert(const float *x, int blk_in, float *y, int blk_out, int64_t n, int64_t c,
                       int64_t hw, int accumulate);

/* sd_group_norm on any layout: x in blk_in, y in blk_out (e.g. blocked ->
 * NHWC tokens for a transformer).  Padding lanes of y are zero. */
void sd_group_norm_ex(const float *x, int blk_in, float *y, int blk_out, int64_t n, int64_t hw,
                      int64_t c, int groups, float eps, const float *gamma, const float *beta,
                      int fuse_silu);

/* x [n, c, hw] (layout blk) += vec [c] on every pixel of every item. */
void sd_add_channel_vec(float *x, int blk, int64_t n, int64_t c, int64_t hw, const float *vec);

/* Nearest upsampling (as sd_upsample_nearest) within layout blk:
 * x [n, c, h, w] -> y [n, c, oh, ow]. */
void sd_upsample_nearest_ex(const float *x, int blk, int64_t n, int64_t c, int64_t h, int64_t w,
                            float *y, int64_t oh, int64_t ow);

/* Channel concatenation within layout blk: y [n, ca + cb, hw] = [a | b]. */
void sd_concat_channels_ex(const float *a, int64_t ca, const float *b, int64_t cb, int blk,
                           int64_t n, int64_t hw, float *y);

/* NCHW [n, c, h, w] -> NHWC [n, h, w, c] and back (out-of-place). */
void sd_nchw_to_nhwc(const float *x, int64_t n, int64_t c, int64_t h, int64_t w, float *y);
void sd_nhwc_to_nchw(const float *x, int64_t n, int64_t h, int64_t w, int64_t c, float *y);

/* Nearest upsampling NHWC [n, h, w, c] -> [n, oh, ow, c] (torch
 * F.interpolate mode='nearest': src = floor(dst * in / out)); y pixels every
 * y_ld floats (>= c, so it can write into a channel slice of a concat buffer). */
void sd_upsample_nearest(const float *x, int64_t n, int64_t h, int64_t w, int64_t c, float *y,
                         int64_t oh, int64_t ow, int64_t y_ld);

/* Concatenation along channels: y [rows, ca + cb] = [a [rows, ca] | b [rows, cb]]. */
void sd_concat_channels(const float *a, int64_t ca, const float *b, int64_t cb, int64_t rows,
                        float *y);
/* Copies a [rows, c] matrix with row strides (x_ld, y_ld >= c). */
void sd_copy_rows(const float *x, int64_t x_ld, int64_t rows, int64_t c, float *y, int64_t y_ld);

#endif
