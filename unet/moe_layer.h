/* unet/moe_layer — SegMoE's SparseMoeBlock: E expert copies of an attention
 * projection or a whole GEGLU feed-forward, plus a bias-free gate [E, in].
 *
 * Routing (SegMoE, segmoe/main.py SparseMoeBlock.forward): logits = X . G^T
 * over all N rows of the batched UNet call; ONE top-k choice per call from
 * the column sums of the logits (ties -> lower index); per-row softmax over
 * the k chosen logits; y = sum_i w_i * expert_i(X).  Only the chosen experts
 * are computed (and converted from f16/bf16 on first use).  Per-token routing
 * (Mixtral style) is an opt-in mode and NOT SegMoE-identical: each row takes
 * its own top-k of its logits with a softmax over those k; the rows routed to
 * an expert are gathered so that expert runs one GEMM.  All in float32.
 *
 * Keys, with P = "<block path>.attn1.to_q" etc. or "<...>.ff":
 *   P.gate.weight [E, in]
 *   projection experts: P.experts.{e}.weight [out, in]
 *   FF experts: P.experts.{e}.net.0.proj.{weight,bias}, P.experts.{e}.net.2.{weight,bias}
 */
#ifndef SDMOE_UNET_MOE_LAYER_H
#define SDMOE_UNET_MOE_LAYER_H

#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "core/weights.h"
#include "unet/linear_layer.h"

typedef enum sd_moe_routing {
    SD_MOE_ROUTING_SEGMOE = 0, /* one top-k per call from column sums (default) */
    SD_MOE_ROUTING_PER_TOKEN,  /* each row its own top-k (Mixtral style) */
} sd_moe_routing;

/* Binds an MoE projection at `prefix` (e.g. "down_blocks.0.attentions.0.
 * transformer_blocks.0.attn1.to_q") with E experts of [out, in], no bias.
 * Experts are always bound lazily (a copy of the binder with lazy = 1), so
 * f16/bf16 experts stay mapped and unconverted until first chosen; the gate
 * follows the caller's binder.  Shapes are checked; errors name the key. */
int sd_moe_bind_proj(sd_moe_layer **out, sd_binder *b, const char *prefix, int n_experts, int top_k,
                     int64_t in_dim, int64_t out_dim, sd_error *err);
/* Binds an MoE feed-forward at `prefix` ("....ff"): E GEGLU experts of
 * width dim with inner width inner_dim (net.0.proj [2*inner, dim] + bias,
 * net.2 [dim, inner] + bias). */
int sd_moe_bind_ff(sd_moe_layer **out, sd_binder *b, const char *prefix, int n_experts, int top_k,
                   int64_t dim, int64_t inner_dim, sd_error *err);
void sd_moe_free(sd_moe_layer *m);

void sd_moe_set_routing(sd_moe_layer *m, sd_moe_routing routing);
sd_moe_routing sd_moe_get_routing(const sd_moe_layer *m);
/* Changes k (1..E) after binding, e.g. to compare top-1 with top-2. */
int sd_moe_set_top_k(sd_moe_layer *m, int top_k, sd_error *err);
int sd_moe_num_experts(const sd_moe_layer *m);
int sd_moe_top_k(const sd_moe_layer *m);
int64_t sd_moe_in_dim(const sd_moe_layer *m);
int64_t sd_moe_out_dim(const sd_moe_layer *m);
/* 1 for a feed-forward MoE (experts are whole GEGLU FFs), 0 for a projection. */
int sd_moe_is_ff(const sd_moe_layer *m);
/* The prefix the layer was bound at (static storage inside m). */
const char *sd_moe_name(const sd_moe_layer *m);
/* 1 if every tensor of expert e already has f32 data (mapped f32 or
 * converted on use); lazily bound f16/bf16 experts stay 0 until chosen. */
int sd_moe_expert_ready(const sd_moe_layer *m, int e);

/* y[n_rows, out] = MoE(x[n_rows, in]).  scratch: sd_moe_scratch_floats()
 * floats (the size covers both routing modes and any k <= E, so it does not
 * change with sd_moe_set_routing / sd_moe_set_top_k).  x and y must not
 * overlap.  Converts the chosen experts on first use: call outside OpenMP
 * parallel regions.  Errors: a lazy expert whose conversion fails. */
int sd_moe_forward(sd_moe_layer *m, const float *x, int64_t n_rows, float *y, float *scratch, sd_error *err);
int64_t sd_moe_scratch_floats(const sd_moe_layer *m, int64_t n_rows);

/* SegMoE routing only, no expert runs (tests, diagnostics): logits[n, E],
 * col_sums[E] (may be NULL), selected[k] in selection order, weights[n, k]
 * (row n's softmax over the selected logits), k = sd_moe_top_k(m). */
int sd_moe_route(sd_moe_layer *m, const float *x, int64_t n_rows, float *logits, float *col_sums, int *selected,
                 float *weights, sd_error *err);

/* The last call's routing, for --moe-stats: writes k expert indices and k
 * mean weights (arrays of >= top_k entries; either may be NULL) and returns
 * k, or 0 before the first call.  SegMoE routing: the chosen experts in
 * selection order and each one's weight averaged over the N rows.
 * Per-token routing: the k experts with the largest total weight (ties ->
 * lower index), each with its weight summed over rows / N (rows that did not
 * route to it count 0). */
int sd_moe_last_choice(const sd_moe_layer *m, int *experts, float *mean_weights);

#endif
