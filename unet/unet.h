/* unet/unet — diffusers' UNet2DConditionModel (SD 1.x / SD 2.x layout,
 * diffusers v0.27.2 models/unets/unet_2d_condition.py, unet_2d_blocks.py,
 * transformer_2d.py, attention.py, resnet.py), config-driven, batched, on
 * the NHWC kernels of core/kernels.h.
 *
 * Owns: the config (sd_unet_config, from unet/config.json with diffusers
 * defaults), the typed weights (bound by diffusers name through an
 * sd_binder; the binder maps names for single-file checkpoints), SegMoE
 * layers where the config's "segmoe_config" and the file's gate tensors say
 * so (through unet/moe_layer.h), the activation workspace, the per-request
 * cross-attention K/V cache, and the forward pass.
 *
 *     sd_unet_config cfg;  sd_unet_config_parse(&cfg, json, "unet/config.json", &err);
 *     sd_unet *u;          sd_unet_load(&u, &cfg, &binder, &err);
 *     sd_unet_reserve(u, 2, 64, 64, 77, &err);            // optional: size the workspace once
 *     sd_unet_set_context(u, ctx, 2, 77, &err);           // once per request (caches attn2 K/V)
 *     sd_unet_forward(u, latents, 2, 64, 64, 957.375f, NULL, eps, &err);   // every step
 *
 * Every attention q/k/v projection and every feed-forward goes through
 * unet/linear_layer.h with all rows of the batched call.
 * Not reentrant: one forward at a time per sd_unet.
 */
#ifndef SDMOE_UNET_UNET_H
#define SDMOE_UNET_UNET_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "core/error.h"
#include "core/memory.h"
#include "core/kernels.h"
#include "core/weights.h"
#include "unet/linear_layer.h"

#define SD_UNET_MAX_LEVELS 8

typedef enum sd_unet_block_kind {
    SD_UNET_BLOCK_PLAIN = 0, /* DownBlock2D / UpBlock2D: resnets only */
    SD_UNET_BLOCK_CROSS_ATTN /* CrossAttnDownBlock2D / CrossAttnUpBlock2D */
} sd_unet_block_kind;

/* Everything the forward pass reads from unet/config.json.  Lists are per
 * down level (index i = down_blocks.i); up block i uses level n_levels-1-i. */
typedef struct sd_unet_config {
    int in_channels, out_channels;       /* 4, 4 */
    int n_levels;                        /* len(block_out_channels) */
    int block_out_channels[SD_UNET_MAX_LEVELS];
    int layers_per_block[SD_UNET_MAX_LEVELS]; /* int or list in the file */
    sd_unet_block_kind down_kind[SD_UNET_MAX_LEVELS];
    sd_unet_block_kind up_kind[SD_UNET_MAX_LEVELS]; /* up_blocks.i order */
    int mid_block;                       /* 1 = UNetMidBlock2DCrossAttn, 0 = none (mid_block_type null) */
    int heads[SD_UNET_MAX_LEVELS];       /* num_attention_heads, else attention_head_dim (head COUNT, diffusers' naming) */
    int cross_attention_dim[SD_UNET_MAX_LEVELS];
    int transformer_layers[SD_UNET_MAX_LEVELS];    /* transformer_layers_per_block (down / mid: last) */
    int up_transformer_layers[SD_UNET_MAX_LEVELS]; /* reverse_transformer_layers_per_block or reversed list */
    int norm_num_groups;                 /* 32 */
    float norm_eps;                      /* 1e-5 (resnets, conv_norm_out) */
    int use_linear_projection;           /* 0: 1x1 conv proj_in/out (SD1), 1: linear (SD2) */
    int flip_sin_to_cos;                 /* true */
    float freq_shift;                    /* 0 */
    int sample_size;                     /* latent size the model was trained at */
    int time_embed_dim;                  /* time_embedding_dim or 4 * block_out_channels[0] */
    int conv_in_kernel, conv_out_kernel; /* 3, 3 */
    int downsample_padding;              /* 1 */
    float resnet_out_scale_factor;       /* 1.0 */
    float mid_block_scale_factor;        /* 1.0 */
    int center_input_sample;             /* false */
    /* SDXL added conditioning (addition_embed_type "text_time"; 0 = none):
     * aug = add_embedding(cat(text_embeds, add_time_proj(time_ids))) */
    int add_text_time;
    int addition_time_embed_dim;         /* 256 for SDXL: sinusoid width per time id */
    int add_embed_in;                    /* projection_class_embeddings_input_dim (2816) */
    int add_n_time_ids;                  /* 6: original h, w, crop top, left, target h, w */
    int add_text_dim;                    /* add_embed_in - 6 * addition_time_embed_dim (pooled width, 1280) */
    /* SegMoE ("segmoe_config" object; absent -> moe_enabled 0) */
    int moe_enabled;
    int moe_num_experts, moe_top_k;      /* num_experts, num_experts_per_tok */
    int moe_ff, moe_attn;                /* from moe_layers: "ff", "attn", other = both */
    int moe_down_start, moe_down_end;    /* down_idx_start/end: blocks [start, end) */
    int moe_up_start, moe_up_end;        /* up_idx_start/end */
} sd_unet_config;

/* Parses a UNet config.json object; `file` names it in messages.  Keys that
 * the SD 1.x/2.x forward cannot honour (addition_embed_type, class_embed_type,
 * only_cross_attention, time_cond_proj_dim, a non-"default" resnet_time_scale_shift,
 * ...) are errors naming the key. */
int sd_unet_config_parse(sd_unet_config *cfg, const cJSON *json, const char *file, sd_error *err);

/* ---------------------------------------------------------- typed weights */

/* ResnetBlock2D (resnet.py), prefix P = "<block>.resnets.<j>". */
typedef struct sd_unet_resnet {
    int64_t c_in, c_out;
    float out_scale;                 /* output_scale_factor */
    sd_tensor norm1_w, norm1_b;      /* P.norm1.weight/bias [c_in] */
    sd_tensor conv1_w, conv1_b;      /* P.conv1.weight [c_out, c_in, 3, 3], .bias [c_out] */
    sd_dense time_emb_proj;          /* P.time_emb_proj.weight [c_out, temb], .bias [c_out] */
    sd_tensor norm2_w, norm2_b;      /* P.norm2.weight/bias [c_out] */
    sd_tensor conv2_w, conv2_b;      /* P.conv2.weight [c_out, c_out, 3, 3], .bias [c_out] */
    sd_tensor short_w, short_b;      /* P.conv_shortcut.weight [c_out, c_in, 1, 1], .bias; unbound if c_in == c_out */
    sd_conv2d *conv1, *conv2, *conv_shortcut; /* oneDNN-prepared copies (conv_shortcut may be NULL) */
} sd_unet_resnet;

/* Attention (attention_processor.py), prefix A = "<tblock>.attn1" / ".attn2". */
typedef struct sd_unet_attention {
    int heads;
    int64_t dim, head_dim, kv_dim;   /* query width, dim / heads, key/value source width */
    sd_proj to_q;                    /* A.to_q.weight [dim, dim] (no bias), or MoE */
    sd_proj to_k, to_v;              /* A.to_k.weight / A.to_v.weight [dim, kv_dim] (no bias), or MoE */
    sd_dense to_out;                 /* A.to_out.0.weight [dim, dim], .bias [dim] */
} sd_unet_attention;

/* BasicTransformerBlock (attention.py), prefix B = "<transformer>.transformer_blocks.<k>". */
typedef struct sd_unet_tblock {
    char name[160];                  /* B */
    sd_tensor norm1_w, norm1_b;      /* B.norm1.weight/bias [dim] (LayerNorm eps 1e-5) */
    sd_unet_attention attn1;         /* self-attention */
    sd_tensor norm2_w, norm2_b;      /* B.norm2.* [dim] */
    sd_unet_attention attn2;         /* cross-attention on the text context */
    sd_tensor norm3_w, norm3_b;      /* B.norm3.* [dim] */
    sd_ff ff;                        /* B.ff.net.0.proj [8 dim, dim] (+bias), B.ff.net.2 [dim, 4 dim] (+bias), or MoE */
    float *kv_cache;                 /* attn2 K|V for the cached context: [n, n_ctx, 2 * dim] (owned) */
    int64_t kv_cache_rows;           /* rows the cache has room for (n * n_ctx) */
} sd_unet_tblock;

/* Transformer2DModel (transformer_2d.py), prefix T = "<block>.attentions.<j>". */
typedef struct sd_unet_transformer {
    int64_t channels, inner;         /* in_channels, heads * head_dim */
    int groups;
    sd_tensor norm_w, norm_b;        /* T.norm.weight/bias [channels] (GroupNorm eps 1e-6) */
    sd_dense proj_in;                /* T.proj_in.weight [inner, channels(,1,1)], .bias [inner] */
    int n_blocks;
    sd_unet_tblock *blocks;          /* T.transformer_blocks.<k> */
    sd_dense proj_out;               /* T.proj_out.weight [channels, inner(,1,1)], .bias [channels] */
} sd_unet_transformer;

/* A down block (down_blocks.i), up block (up_blocks.i) or the mid block. */
typedef struct sd_unet_block {
    sd_unet_block_kind kind;
    int n_resnets;
    sd_unet_resnet *resnets;         /* <block>.resnets.<j> */
    int n_attn;                      /* n_resnets for cross-attn down/up blocks, n_resnets-1 for mid, else 0 */
    sd_unet_transformer *attn;       /* <block>.attentions.<j> */
    sd_tensor sampler_w, sampler_b;  /* downsamplers.0.conv [c, c, 3, 3] (stride 2) or upsamplers.0.conv [c, c, 3, 3] */
    sd_conv2d *sampler;              /* NULL for the last down block / last up block */
    int64_t c_out;
} sd_unet_block;

typedef struct sd_unet sd_unet;

/* Called with an intermediate in NHWC [n, h, w, c] (time_proj / time_embedding
 * as [1, 1, 1, c]: one embedding for the whole batch).  Names as in the
 * fixtures: time_proj, time_embedding, (text_time models, [n,1,1,c]: add_time_proj,
 * add_embedding_input, add_embedding, emb), conv_in, down_blocks.<i>.hidden_states,
 * down_blocks.<i>.res_samples.<j>, mid_block, up_blocks.<i>, conv_norm_out, conv_out. */
typedef void (*sd_unet_capture_fn)(void *ctx, const char *name, const float *nhwc, int64_t n,
                                   int64_t h, int64_t w, int64_t c);

/* Binds every tensor the config implies (fails on missing or mis-shaped
 * ones; call sd_binder_check_complete afterwards for unknown ones), prepares
 * the convolutions.  The binder's sd_weights must outlive the UNet.  MoE
 * layers are bound where cfg->moe_enabled, the block is in range and
 * "<prefix>.gate.weight" exists. */
int sd_unet_load(sd_unet **out, const sd_unet_config *cfg, sd_binder *b, sd_error *err);
void sd_unet_free(sd_unet *u);
const sd_unet_config *sd_unet_get_config(const sd_unet *u);

/* Sizes the workspace for up to n latents of h x w and n_ctx context tokens
 * (optional: forward grows it when needed, which allocates). */
int sd_unet_reserve(sd_unet *u, int64_t n, int64_t h, int64_t w, int64_t n_ctx, sd_error *err);

/* Runs the activation workspace in `s` (core/memory.h) instead of the UNet's
 * own pages, e.g. the one the VAE decodes in; s must outlive the UNet or be
 * unset with NULL.  Nothing in the workspace survives between forward calls. */
void sd_unet_share_scratch(sd_unet *u, sd_scratch *s);
/* Bytes of workspace the latest reserve/forward needed. */
size_t sd_unet_workspace_bytes(const sd_unet *u);

/* Computes and caches attn2 K/V of every transformer block for context
 * [n, n_ctx, cross_attention_dim] (constant over a request's steps). */
int sd_unet_set_context(sd_unet *u, const float *context, int64_t n, int64_t n_ctx, sd_error *err);

/* SDXL "text_time" conditioning, constant over a request's steps like the
 * context: text_embeds [n, add_text_dim] (text_encoder_2's pooled, projected
 * embedding) and time_ids [n, add_n_time_ids] (float: original h, w, crop top,
 * left, target h, w).  Caches aug = add_embedding(cat(text_embeds,
 * sinusoid(time_ids))) per row; every forward then uses emb = time_embedding(t)
 * + aug[row].  Required (same n) before forward on a text_time model; an error
 * on a model without added conditioning. */
int sd_unet_set_added_cond(sd_unet *u, const float *text_embeds, const float *time_ids, int64_t n,
                           sd_error *err);

/* eps NCHW [n, out_channels, h, w] = UNet(sample NCHW [n, in_channels, h, w],
 * timestep (shared by the batch, may be fractional), context).  context =
 * [n, n_ctx, cross_attention_dim] computes attn2 K/V for this call (n_ctx = the
 * cached count if a context was set, else 77), or NULL to use the cache of
 * sd_unet_set_context (same n).  `out` may not alias `sample`. */
int sd_unet_forward(sd_unet *u, const float *sample, int64_t n, int64_t h, int64_t w, float timestep,
                    const float *context, float *out, sd_error *err);
/* Same with an explicit number of context tokens. */
int sd_unet_forward_ex(sd_unet *u, const float *sample, int64_t n, int64_t h, int64_t w,
                       float timestep, const float *context, int64_t n_ctx, float *out,
                       sd_error *err);

/* Activation layout between layers (core/kernels.h layouts: SD_LAYOUT_NHWC,
 * 8 or 16); default sd_preferred_layout().  Results agree to rounding. */
int sd_unet_set_layout(sd_unet *u, int blk, sd_error *err);
int sd_unet_get_layout(const sd_unet *u);

/* Intermediates callback (NULL to disable). */
void sd_unet_set_capture(sd_unet *u, sd_unet_capture_fn fn, void *ctx);

/* ---------------------------------------------------------- introspection */

/* Blocks: down_blocks.i (i < n_levels), up_blocks.i, mid (NULL if none). */
sd_unet_block *sd_unet_down_block(sd_unet *u, int i);
sd_unet_block *sd_unet_up_block(sd_unet *u, int i);
sd_unet_block *sd_unet_mid_block(sd_unet *u);

/* Every BasicTransformerBlock in forward order (down, mid, up). */
int sd_unet_tblock_count(const sd_unet *u);
sd_unet_tblock *sd_unet_tblock_at(sd_unet *u, int i);

/* Finds a projection / feed-forward by its diffusers prefix, e.g.
 * "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" or
 * "up_blocks.1.attentions.2.transformer_blocks.0.ff"; NULL if absent.
 * (For setting observe callbacks or MoE routing.) */
sd_proj *sd_unet_find_proj(sd_unet *u, const char *prefix);
sd_ff *sd_unet_find_ff(sd_unet *u, const char *prefix);

/* Number of MoE layers bound. */
int sd_unet_moe_count(const sd_unet *u);

#endif
