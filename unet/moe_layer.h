/* unet/moe_layer — SegMoE's SparseMoeBlock: E expert copies of an attention
 * projection or a whole GEGLU feed-forward, plus a bias-free gate [E, in].
 *
 * Routing (SegMoE, segmoe/main.py SparseMoeBlock.forward): logits = X . G^T
 * over all N rows of the batched UNet call; ONE top-k choice per call from
 * the column sums of the logits (ties -> lower index); per-row softmax over
 * the k chosen logits; y = sum_i w_i * expert_i(X).  Only the chosen experts
 * are computed (and converted from f16/bf16 on first use).  Per-token routing
 * (Mixtral style) is an opt-in mode.
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
 * The binder should be lazy so experts stay mapped until chosen. */
int sd_moe_bind_proj(sd_moe_layer **out, sd_binder *b, const char *prefix, int n_experts, int top_k,
                     int64_t in_dim, int64_t out_dim, sd_error *err);
/* Binds an MoE feed-forward at `prefix` ("....ff"), experts GEGLU with inner width. */
int sd_moe_bind_ff(sd_moe_layer **out, sd_binder *b, const char *prefix, int n_experts, int top_k,
                   int64_t dim, int64_t inner_dim, sd_error *err);
void sd_moe_free(sd_moe_layer *m);

void sd_moe_set_routing(sd_moe_layer *m, sd_moe_routing routing);
int sd_moe_num_experts(const sd_moe_layer *m);
int sd_moe_top_k(const sd_moe_layer *m);
int64_t sd_moe_in_dim(const sd_moe_layer *m);
int64_t sd_moe_out_dim(const sd_moe_layer *m);

/* y[n_rows, out] = MoE(x[n_rows, in]).  scratch: sd_moe_scratch_floats(). */
int sd_moe_forward(sd_moe_layer *m, const float *x, int64_t n_rows, float *y, float *scratch, sd_error *err);
int64_t sd_moe_scratch_floats(const sd_moe_layer *m, int64_t n_rows);

/* The last call's routing: chosen expert indices (k of them, in selection
 * order) and the mean weight per chosen expert; for --moe-stats. */
int sd_moe_last_choice(const sd_moe_layer *m, int *experts, float *mean_weights);

#endif
