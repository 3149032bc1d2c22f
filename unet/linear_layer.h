/* unet/linear_layer — the seam where mixture-of-experts plugs in.
 *
 * Every attention q/k/v projection and every transformer feed-forward of the
 * UNet is called through sd_proj_forward / sd_ff_forward with ALL rows of the
 * batched call (n_rows = batch x tokens: both CFG halves, every image), as
 * SegMoE's router needs (../shared/docs/segmoe.md section 4).  A dense layer
 * is one GEMM; when `moe` is set, the call is routed to unet/moe_layer.
 * `observe`, when set, sees the layer's input before it is computed (used by
 * moe_merge to record gate hidden states).
 */
#ifndef SDMOE_UNET_LINEAR_LAYER_H
#define SDMOE_UNET_LINEAR_LAYER_H

#include <stdint.h>

#include "core/error.h"
#include "core/weights.h"

typedef struct sd_moe_layer sd_moe_layer; /* unet/moe_layer.h */

typedef void (*sd_observe_fn)(void *ctx, const float *x, int64_t n_rows, int64_t n_cols);

/* y[n, out] = x[n, in] . W^T (+ b).  Weight as stored by PyTorch: [out, in]. */
typedef struct sd_dense {
    sd_tensor w; /* [out, in] */
    sd_tensor b; /* [out] or unbound (data == NULL, numel == 0) */
} sd_dense;

/* diffusers FeedForward with GEGLU: net.0.proj [2*inner, d] (+bias) -> split
 * [h | g] along the last dim -> h * gelu_erf(g) -> net.2 [d, inner] (+bias). */
typedef struct sd_geglu_ff {
    sd_dense proj; /* ff.net.0.proj */
    sd_dense out;  /* ff.net.2 */
} sd_geglu_ff;

/* An attention projection (to_q/to_k/to_v): dense, or an MoE over experts. */
typedef struct sd_proj {
    sd_dense dense;         /* used when moe == NULL */
    sd_moe_layer *moe;      /* owned by the UNet when set */
    sd_observe_fn observe;
    void *observe_ctx;
} sd_proj;

/* A transformer feed-forward: dense GEGLU, or an MoE whose experts are whole FFs. */
typedef struct sd_ff {
    sd_geglu_ff dense;
    sd_moe_layer *moe;
    sd_observe_fn observe;
    void *observe_ctx;
} sd_ff;

/* Output width / input width of a projection or FF. */
int64_t sd_proj_out_dim(const sd_proj *p);
int64_t sd_proj_in_dim(const sd_proj *p);

/* y[n_rows, out] from x[n_rows, in].  `scratch` must hold
 * sd_proj_scratch_floats(p, n_rows) floats (0 for a dense layer). */
int sd_proj_forward(sd_proj *p, const float *x, int64_t n_rows, float *y, float *scratch, sd_error *err);
int64_t sd_proj_scratch_floats(const sd_proj *p, int64_t n_rows);

/* y[n_rows, d] from x[n_rows, d]; `scratch` holds sd_ff_scratch_floats(). */
int sd_ff_forward(sd_ff *f, const float *x, int64_t n_rows, float *y, float *scratch, sd_error *err);
int64_t sd_ff_scratch_floats(const sd_ff *f, int64_t n_rows);

/* Dense building blocks (also used by the MoE experts). */
void sd_dense_forward(const sd_dense *l, const float *x, int64_t n_rows, float *y);
/* GEGLU FF on n_rows; scratch holds n_rows * 2 * inner floats. */
void sd_geglu_ff_forward(const sd_geglu_ff *f, const float *x, int64_t n_rows, float *y, float *scratch);

#endif
