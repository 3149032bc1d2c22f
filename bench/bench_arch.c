/* bench/bench_arch — SD1.5-shaped configs, tensor inventories and the
 * kernel calls of one forward (contract in bench/bench.h).
 *
 * The walkers follow diffusers v0.27.2 (unet_2d_condition.py, unet_2d_blocks.py,
 * resnet.py, transformer_2d.py, attention.py; autoencoders/vae.py) and the
 * channel arithmetic of unet/unet_load.c and vae/vae_load.c, so the files
 * they describe load through the real loaders with nothing missing or extra
 * (sd_binder_check_complete), and the parameter totals reproduce the
 * published ones (UNet 859,520,964; VAE 83,653,863; CLIP-L text 123,060,480).
 * MACs are counted as anchors.md §5 does: convs, linears and the two
 * attention matmuls; norms, activations, softmax and adds are 0. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "core/json.h"

/* ---------------------------------------------------------------- configs */

static cJSON *str_list(const char *a, const char *b, const char *c, const char *d) {
    const char *v[4] = {a, b, c, d};
    return cJSON_CreateStringArray(v, 4);
}

static cJSON *int_list4(int a, int b, int c, int d) {
    const int v[4] = {a, b, c, d};
    return cJSON_CreateIntArray(v, 4);
}

/* runwayml/stable-diffusion-v1-5 unet/config.json (diffusers keys). */
cJSON *bench_unet_config_json(int moe_experts, int moe_top_k) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(j, "_diffusers_version", "0.27.2");
    cJSON_AddStringToObject(j, "act_fn", "silu");
    cJSON_AddNumberToObject(j, "attention_head_dim", 8);
    cJSON_AddItemToObject(j, "block_out_channels", int_list4(320, 640, 1280, 1280));
    cJSON_AddBoolToObject(j, "center_input_sample", 0);
    cJSON_AddNumberToObject(j, "cross_attention_dim", 768);
    cJSON_AddItemToObject(j, "down_block_types", str_list("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                          "CrossAttnDownBlock2D", "DownBlock2D"));
    cJSON_AddNumberToObject(j, "downsample_padding", 1);
    cJSON_AddBoolToObject(j, "flip_sin_to_cos", 1);
    cJSON_AddNumberToObject(j, "freq_shift", 0);
    cJSON_AddNumberToObject(j, "in_channels", 4);
    cJSON_AddNumberToObject(j, "layers_per_block", 2);
    cJSON_AddNumberToObject(j, "mid_block_scale_factor", 1);
    cJSON_AddNumberToObject(j, "norm_eps", 1e-5);
    cJSON_AddNumberToObject(j, "norm_num_groups", 32);
    cJSON_AddNumberToObject(j, "out_channels", 4);
    cJSON_AddNumberToObject(j, "sample_size", 64);
    cJSON_AddItemToObject(j, "up_block_types", str_list("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                        "CrossAttnUpBlock2D"));
    if (moe_experts > 0) {
        /* segmoe.md §5: the mutated YAML dict SegMoE stores in the UNet config */
        cJSON *s = cJSON_AddObjectToObject(j, "segmoe_config");
        cJSON_AddStringToObject(s, "base_model", "runwayml/stable-diffusion-v1-5");
        cJSON_AddNumberToObject(s, "num_experts", moe_experts);
        cJSON_AddNumberToObject(s, "num_experts_per_tok", moe_top_k);
        cJSON_AddStringToObject(s, "moe_layers", "all");
        cJSON_AddStringToObject(s, "type", "sd");
        cJSON_AddNumberToObject(s, "down_idx_start", 0);
        cJSON_AddNumberToObject(s, "down_idx_end", 3);
        cJSON_AddNumberToObject(s, "up_idx_start", 1);
        cJSON_AddNumberToObject(s, "up_idx_end", 4);
    }
    return j;
}

/* stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (diffusers keys). */
cJSON *bench_sdxl_unet_config_json(void) {
    cJSON *j = cJSON_CreateObject();
    const int bo[3] = {320, 640, 1280}, heads[3] = {5, 10, 20}, depth[3] = {1, 2, 10};
    const char *down[3] = {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"};
    const char *up[3] = {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"};
    cJSON_AddStringToObject(j, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(j, "_diffusers_version", "0.27.2");
    cJSON_AddStringToObject(j, "act_fn", "silu");
    cJSON_AddStringToObject(j, "addition_embed_type", "text_time");
    cJSON_AddNumberToObject(j, "addition_embed_type_num_heads", 64);
    cJSON_AddNumberToObject(j, "addition_time_embed_dim", 256);
    cJSON_AddItemToObject(j, "attention_head_dim", cJSON_CreateIntArray(heads, 3));
    cJSON_AddItemToObject(j, "block_out_channels", cJSON_CreateIntArray(bo, 3));
    cJSON_AddNumberToObject(j, "cross_attention_dim", 2048);
    cJSON_AddItemToObject(j, "down_block_types", cJSON_CreateStringArray(down, 3));
    cJSON_AddNumberToObject(j, "in_channels", 4);
    cJSON_AddNumberToObject(j, "layers_per_block", 2);
    cJSON_AddNumberToObject(j, "norm_num_groups", 32);
    cJSON_AddNumberToObject(j, "out_channels", 4);
    cJSON_AddNumberToObject(j, "projection_class_embeddings_input_dim", 2816);
    cJSON_AddNumberToObject(j, "sample_size", 128);
    cJSON_AddItemToObject(j, "transformer_layers_per_block", cJSON_CreateIntArray(depth, 3));
    cJSON_AddItemToObject(j, "up_block_types", cJSON_CreateStringArray(up, 3));
    cJSON_AddBoolToObject(j, "use_linear_projection", 1);
    return j;
}

/* runwayml/stable-diffusion-v1-5 vae/config.json. */
cJSON *bench_vae_config_json(void) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "_class_name", "AutoencoderKL");
    cJSON_AddStringToObject(j, "act_fn", "silu");
    cJSON_AddItemToObject(j, "block_out_channels", int_list4(128, 256, 512, 512));
    cJSON_AddItemToObject(j, "down_block_types", str_list("DownEncoderBlock2D", "DownEncoderBlock2D",
                                                          "DownEncoderBlock2D", "DownEncoderBlock2D"));
    cJSON_AddNumberToObject(j, "in_channels", 3);
    cJSON_AddNumberToObject(j, "latent_channels", 4);
    cJSON_AddNumberToObject(j, "layers_per_block", 2);
    cJSON_AddNumberToObject(j, "norm_num_groups", 32);
    cJSON_AddNumberToObject(j, "out_channels", 3);
    cJSON_AddNumberToObject(j, "sample_size", 512);
    cJSON_AddNumberToObject(j, "scaling_factor", 0.18215);
    cJSON_AddItemToObject(j, "up_block_types", str_list("UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
                                                        "UpDecoderBlock2D"));
    return j;
}

/* openai/clip-vit-large-patch14 text config as SD1.5's text_encoder/config.json. */
cJSON *bench_clip_config_json(void) {
    cJSON *j = cJSON_CreateObject();
    const char *arch[1] = {"CLIPTextModel"};
    cJSON_AddItemToObject(j, "architectures", cJSON_CreateStringArray(arch, 1));
    cJSON_AddNumberToObject(j, "bos_token_id", 0);
    cJSON_AddNumberToObject(j, "eos_token_id", 2);
    cJSON_AddNumberToObject(j, "pad_token_id", 1);
    cJSON_AddStringToObject(j, "hidden_act", "quick_gelu");
    cJSON_AddNumberToObject(j, "hidden_size", 768);
    cJSON_AddNumberToObject(j, "intermediate_size", 3072);
    cJSON_AddNumberToObject(j, "layer_norm_eps", 1e-5);
    cJSON_AddNumberToObject(j, "max_position_embeddings", 77);
    cJSON_AddStringToObject(j, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(j, "num_attention_heads", 12);
    cJSON_AddNumberToObject(j, "num_hidden_layers", 12);
    cJSON_AddNumberToObject(j, "projection_dim", 768);
    cJSON_AddNumberToObject(j, "vocab_size", 49408);
    return j;
}

/* ------------------------------------------------------------- containers */

#define NAME_CAP 256

/* Formats a tensor-name prefix into buf[NAME_CAP] (names are < 120 characters). */
static __attribute__((format(printf, 2, 3))) void fmtn(char *buf, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, NAME_CAP, fmt, ap);
    va_end(ap);
}

void bench_inventory_free(bench_inventory *inv) {
    free(inv->t);
    memset(inv, 0, sizeof *inv);
}

void bench_oplist_free(bench_oplist *l) {
    free(l->ops);
    memset(l, 0, sizeof *l);
}

static __attribute__((format(printf, 8, 9))) int inv_add(bench_inventory *inv, bench_init init, int ndim,
                                                         int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                                                         const char *fmt, ...) {
    if (!inv) return 0;
    if (inv->n == inv->cap) {
        int cap = inv->cap ? 2 * inv->cap : 512;
        bench_tensor *t = realloc(inv->t, (size_t)cap * sizeof *t);
        if (!t) return -1;
        inv->t = t, inv->cap = cap;
    }
    bench_tensor *t = &inv->t[inv->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    int64_t d[4] = {d0, d1, d2, d3};
    t->ndim = ndim, t->numel = 1, t->init = init;
    for (int i = 0; i < ndim; i++) t->shape[i] = d[i], t->numel *= d[i];
    inv->params += t->numel;
    return 0;
}

/* Adds one call; identical calls are merged into a count. */
static int op_add(bench_oplist *l, bench_op_kind kind, int per_request, int64_t a0, int64_t a1, int64_t a2,
                  int64_t a3, int64_t a4, int64_t a5, int64_t a6, int64_t a7) {
    if (!l) return 0;
    int64_t a[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int i = 0; i < l->n; i++)
        if (l->ops[i].kind == kind && l->ops[i].per_request == per_request && !memcmp(l->ops[i].a, a, sizeof a)) {
            l->ops[i].count++;
            return 0;
        }
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 128;
        bench_op *o = realloc(l->ops, (size_t)cap * sizeof *o);
        if (!o) return -1;
        l->ops = o, l->cap = cap;
    }
    bench_op *o = &l->ops[l->n++];
    memset(o, 0, sizeof *o);
    o->kind = kind, o->per_request = per_request, o->count = 1;
    memcpy(o->a, a, sizeof a);
    return 0;
}

/* ------------------------------------------------------------------ ops */

bench_op_cat bench_op_category(bench_op_kind k) {
    switch (k) {
    case BOP_CONV: return BCAT_CONV;
    case BOP_LINEAR: return BCAT_LINEAR;
    case BOP_ATTN: return BCAT_ATTN;
    case BOP_GN:
    case BOP_LN: return BCAT_NORM;
    default: return BCAT_ELEM;
    }
}

const char *bench_cat_name(bench_op_cat c) {
    static const char *n[BCAT_COUNT] = {"conv", "linear", "attention", "norms", "elementwise"};
    return c < BCAT_COUNT ? n[c] : "?";
}

double bench_op_macs(const bench_op *op) {
    const int64_t *a = op->a;
    switch (op->kind) {
    case BOP_CONV: {
        int64_t pad = a[5] / 2, oh = (a[1] + 2 * pad - a[5]) / a[6] + 1, ow = (a[2] + 2 * pad - a[5]) / a[6] + 1;
        return (double)a[0] * (double)(oh * ow) * (double)(a[3] * a[4]) * (double)(a[5] * a[5]);
    }
    case BOP_LINEAR: return (double)a[0] * (double)a[1] * (double)a[2];
    case BOP_ATTN: return 2.0 * (double)a[0] * (double)a[1] * (double)a[2] * (double)(a[3] * a[4]);
    default: return 0;
    }
}

void bench_op_label(const bench_op *op, char *buf, size_t cap) {
    const int64_t *a = op->a;
    switch (op->kind) {
    case BOP_CONV:
        snprintf(buf, cap, "conv%lldx%lld%s %lldx%lldx%lld %lld->%lld%s", (long long)a[5], (long long)a[5],
                 a[6] > 1 ? "/2" : "", (long long)a[0], (long long)a[1], (long long)a[2], (long long)a[3],
                 (long long)a[4], a[7] ? " +acc" : "");
        break;
    case BOP_LINEAR:
        snprintf(buf, cap, "linear %lld x %lld->%lld%s", (long long)a[0], (long long)a[1], (long long)a[2],
                 a[5] ? " (proj_out)" : a[4] ? " +acc" : "");
        break;
    case BOP_ATTN:
        snprintf(buf, cap, "attention b%lld %lldx%lld h%lld d%lld", (long long)a[0], (long long)a[1],
                 (long long)a[2], (long long)a[3], (long long)a[4]);
        break;
    case BOP_GN:
        snprintf(buf, cap, "group_norm%s %lldx%lldx%lld%s", a[4] ? "+silu" : "", (long long)a[0], (long long)a[1],
                 (long long)a[2], a[5] ? " ->tokens" : "");
        break;
    case BOP_LN: snprintf(buf, cap, "layer_norm %lldx%lld", (long long)a[0], (long long)a[1]); break;
    case BOP_GEGLU: snprintf(buf, cap, "geglu %lldx%lld", (long long)a[0], (long long)a[1]); break;
    case BOP_ADD: snprintf(buf, cap, "add %lld", (long long)a[0]); break;
    case BOP_BIAS:
        snprintf(buf, cap, "add_channel_vec %lldx%lldx%lld", (long long)a[0], (long long)a[1], (long long)a[2]);
        break;
    case BOP_CONCAT:
        snprintf(buf, cap, "concat %lldx%lldx(%lld+%lld)", (long long)a[0], (long long)a[1], (long long)a[2],
                 (long long)a[3]);
        break;
    case BOP_UPSAMPLE:
        snprintf(buf, cap, "upsample2x %lldx%lldx%lldx%lld", (long long)a[0], (long long)a[1], (long long)a[2],
                 (long long)a[3]);
        break;
    case BOP_COPY: snprintf(buf, cap, "copy %lld", (long long)a[0]); break;
    case BOP_LAYOUT:
        snprintf(buf, cap, "%s %lldx%lldx%lldx%lld", a[4] ? "layout->nchw" : "nchw->layout", (long long)a[0],
                 (long long)a[1], (long long)a[2], (long long)a[3]);
        break;
    case BOP_TOKENS_ADD:
        snprintf(buf, cap, "tokens+=layout %lldx%lldx%lld", (long long)a[0], (long long)a[1], (long long)a[2]);
        break;
    case BOP_SILU: snprintf(buf, cap, "silu %lld", (long long)a[0]); break;
    default: snprintf(buf, cap, "?"); break;
    }
}

double bench_oplist_macs(const bench_oplist *l, int with_request) {
    double m = 0;
    for (int i = 0; i < l->n; i++)
        if (with_request || !l->ops[i].per_request) m += bench_op_macs(&l->ops[i]) * (double)l->ops[i].count;
    return m;
}

double bench_oplist_cat_macs(const bench_oplist *l, bench_op_cat c, int with_request) {
    double m = 0;
    for (int i = 0; i < l->n; i++)
        if ((with_request || !l->ops[i].per_request) && bench_op_category(l->ops[i].kind) == c)
            m += bench_op_macs(&l->ops[i]) * (double)l->ops[i].count;
    return m;
}

/* ------------------------------------------------------------------ UNet */

typedef struct unet_walk {
    const sd_unet_config *c;
    bench_inventory *inv;
    bench_oplist *ops;
    int64_t n, n_ctx;
    double moe_extra; /* MACs the top-k experts and gates add over dense */
    int groups;       /* VAE GroupNorm groups */
    int fail;
} unet_walk;

#define W_T(W, init, nd, d0, d1, d2, d3, ...) \
    ((W)->fail |= inv_add((W)->inv, init, nd, d0, d1, d2, d3, __VA_ARGS__))
#define W_OP(W, kind, req, a0, a1, a2, a3, a4, a5, a6, a7) \
    ((W)->fail |= op_add((W)->ops, kind, req, a0, a1, a2, a3, a4, a5, a6, a7))

static void w_conv(unet_walk *W, const char *p, int64_t ci, int64_t co, int64_t k, int64_t stride, int64_t h,
                   int64_t w, int acc) {
    W_T(W, BI_WEIGHT, 4, co, ci, k, k, "%s.weight", p);
    W_T(W, BI_BIAS, 1, co, 0, 0, 0, "%s.bias", p);
    W_OP(W, BOP_CONV, 0, W->n, h, w, ci, co, k, stride, acc);
}

static void w_norm(unet_walk *W, const char *p, int64_t c) {
    W_T(W, BI_ONES, 1, c, 0, 0, 0, "%s.weight", p);
    W_T(W, BI_ZEROS, 1, c, 0, 0, 0, "%s.bias", p);
}

/* ResnetBlock2D (resnet.py): GN1+SiLU, conv1, + time_emb_proj(SiLU(temb)),
 * GN2+SiLU, conv2 added onto the shortcut. */
static void w_resnet(unet_walk *W, const char *p, int64_t ci, int64_t co, int64_t h, int64_t w) {
    char q[NAME_CAP];
    int64_t rows = W->n * h * w, G = W->c->norm_num_groups, temb = W->c->time_embed_dim;
    fmtn(q, "%s.norm1", p), w_norm(W, q, ci);
    W_OP(W, BOP_GN, 0, W->n, h * w, ci, G, 1, 0, 0, 0);
    fmtn(q, "%s.conv1", p), w_conv(W, q, ci, co, 3, 1, h, w, 0);
    W_T(W, BI_WEIGHT, 2, co, temb, 0, 0, "%s.time_emb_proj.weight", p);
    W_T(W, BI_BIAS, 1, co, 0, 0, 0, "%s.time_emb_proj.bias", p);
    W_OP(W, BOP_LINEAR, 0, 1, temb, co, 1, 0, 0, 0, 0);
    W_OP(W, BOP_BIAS, 0, W->n, h * w, co, 0, 0, 0, 0, 0);
    fmtn(q, "%s.norm2", p), w_norm(W, q, co);
    W_OP(W, BOP_GN, 0, W->n, h * w, co, G, 1, 0, 0, 0);
    if (ci != co) fmtn(q, "%s.conv_shortcut", p), w_conv(W, q, ci, co, 1, 1, h, w, 0);
    else W_OP(W, BOP_COPY, 0, rows * co, 0, 0, 0, 0, 0, 0, 0);
    fmtn(q, "%s.conv2", p), w_conv(W, q, co, co, 3, 1, h, w, 1);
}

/* A projection [out, in] without bias: dense, or E experts + gate (SegMoE keys). */
static void w_proj(unet_walk *W, const char *p, int64_t rows, int64_t out, int64_t in, int moe, int req) {
    const sd_unet_config *c = W->c;
    if (moe) {
        W_T(W, BI_WEIGHT, 2, c->moe_num_experts, in, 0, 0, "%s.gate.weight", p);
        for (int e = 0; e < c->moe_num_experts; e++)
            W_T(W, BI_WEIGHT, 2, out, in, 0, 0, "%s.experts.%d.weight", p, e);
        W->moe_extra += (double)rows * (double)in * ((double)(c->moe_top_k - 1) * (double)out + c->moe_num_experts);
    } else {
        W_T(W, BI_WEIGHT, 2, out, in, 0, 0, "%s.weight", p);
    }
    W_OP(W, BOP_LINEAR, req, rows, in, out, 0, 0, 0, 0, 0);
}

static void w_geglu_tensors(unet_walk *W, const char *p, int64_t d) {
    W_T(W, BI_WEIGHT, 2, 8 * d, d, 0, 0, "%s.net.0.proj.weight", p);
    W_T(W, BI_BIAS, 1, 8 * d, 0, 0, 0, "%s.net.0.proj.bias", p);
    W_T(W, BI_WEIGHT, 2, d, 4 * d, 0, 0, "%s.net.2.weight", p);
    W_T(W, BI_BIAS, 1, d, 0, 0, 0, "%s.net.2.bias", p);
}

/* BasicTransformerBlock: LN1, attn1 (self), LN2, attn2 (context), LN3, GEGLU FF. */
static void w_tblock(unet_walk *W, const char *p, int64_t d, int heads, int64_t ctx_dim, int64_t hw, int moe) {
    const sd_unet_config *c = W->c;
    char q[NAME_CAP];
    int64_t rows = W->n * hw, dh = d / heads;
    int ma = moe && c->moe_attn, mf = moe && c->moe_ff;
    for (int a = 1; a <= 2; a++) {
        fmtn(q, "%s.norm%d", p, a), w_norm(W, q, d);
        W_OP(W, BOP_LN, 0, rows, d, 0, 0, 0, 0, 0, 0);
        int64_t kv = a == 1 ? d : ctx_dim, kv_rows = a == 1 ? rows : W->n * W->n_ctx;
        fmtn(q, "%s.attn%d.to_q", p, a), w_proj(W, q, rows, d, d, ma, 0);
        fmtn(q, "%s.attn%d.to_k", p, a), w_proj(W, q, kv_rows, d, kv, ma, a == 2);
        fmtn(q, "%s.attn%d.to_v", p, a), w_proj(W, q, kv_rows, d, kv, ma, a == 2);
        W_OP(W, BOP_ATTN, 0, W->n, hw, a == 1 ? hw : W->n_ctx, heads, dh, 0, 0, 0);
        W_T(W, BI_WEIGHT, 2, d, d, 0, 0, "%s.attn%d.to_out.0.weight", p, a);
        W_T(W, BI_BIAS, 1, d, 0, 0, 0, "%s.attn%d.to_out.0.bias", p, a);
        W_OP(W, BOP_LINEAR, 0, rows, d, d, 1, 1, 0, 0, 0);
    }
    fmtn(q, "%s.norm3", p), w_norm(W, q, d);
    W_OP(W, BOP_LN, 0, rows, d, 0, 0, 0, 0, 0, 0);
    if (mf) {
        W_T(W, BI_WEIGHT, 2, c->moe_num_experts, d, 0, 0, "%s.ff.gate.weight", p);
        for (int e = 0; e < c->moe_num_experts; e++)
            fmtn(q, "%s.ff.experts.%d", p, e), w_geglu_tensors(W, q, d);
        W->moe_extra += (double)rows * d * ((double)(c->moe_top_k - 1) * 12.0 * (double)d + c->moe_num_experts);
    } else {
        fmtn(q, "%s.ff", p), w_geglu_tensors(W, q, d);
    }
    W_OP(W, BOP_LINEAR, 0, rows, d, 8 * d, 1, 0, 0, 0, 0);
    W_OP(W, BOP_GEGLU, 0, rows, 4 * d, 0, 0, 0, 0, 0, 0);
    W_OP(W, BOP_LINEAR, 0, rows, 4 * d, d, 1, 0, 0, 0, 0);
    W_OP(W, BOP_ADD, 0, rows * d, 0, 0, 0, 0, 0, 0, 0);
}

/* Transformer2DModel (SD1: 1x1-conv proj_in/out, GroupNorm eps 1e-6). */
static void w_transformer(unet_walk *W, const char *p, int64_t ch, int heads, int depth, int64_t ctx_dim,
                          int64_t h, int64_t w, int moe) {
    char q[NAME_CAP];
    int64_t rows = W->n * h * w;
    int lin = W->c->use_linear_projection;
    fmtn(q, "%s.norm", p), w_norm(W, q, ch);
    W_OP(W, BOP_GN, 0, W->n, h * w, ch, W->c->norm_num_groups, 0, 1, 0, 0);
    W_T(W, BI_WEIGHT, lin ? 2 : 4, ch, ch, 1, 1, "%s.proj_in.weight", p);
    W_T(W, BI_BIAS, 1, ch, 0, 0, 0, "%s.proj_in.bias", p);
    W_OP(W, BOP_LINEAR, 0, rows, ch, ch, 1, 0, 0, 0, 0);
    for (int k = 0; k < depth; k++) {
        fmtn(q, "%s.transformer_blocks.%d", p, k);
        w_tblock(W, q, ch, heads, ctx_dim, h * w, moe);
    }
    W_T(W, BI_WEIGHT, lin ? 2 : 4, ch, ch, 1, 1, "%s.proj_out.weight", p);
    W_T(W, BI_BIAS, 1, ch, 0, 0, 0, "%s.proj_out.bias", p);
    W_OP(W, BOP_LINEAR, 0, rows, ch, ch, 1, 1, 1, 0, 0);
    W_OP(W, BOP_TOKENS_ADD, 0, W->n, ch, h * w, 0, 0, 0, 0, 0);
}

int bench_unet_arch(const sd_unet_config *c, bench_inventory *inv, bench_oplist *ops, int64_t n, int64_t h,
                    int64_t w, int64_t n_ctx, double *moe_macs, sd_error *err) {
    unet_walk W = {.c = c, .inv = inv, .ops = ops, .n = n, .n_ctx = n_ctx};
    int nl = c->n_levels;
    int64_t c0 = c->block_out_channels[0], temb = c->time_embed_dim, lh[SD_UNET_MAX_LEVELS], lw[SD_UNET_MAX_LEVELS];
    char p[NAME_CAP];
    lh[0] = h, lw[0] = w;
    for (int l = 0; l + 1 < nl; l++) { /* Downsample2D: 3x3 stride 2, padding downsample_padding */
        int64_t pad = c->downsample_padding;
        lh[l + 1] = (lh[l] + 2 * pad - 3) / 2 + 1, lw[l + 1] = (lw[l] + 2 * pad - 3) / 2 + 1;
    }
    W_OP(&W, BOP_LAYOUT, 0, n, c->in_channels, h, w, 0, 0, 0, 0);
    w_conv(&W, "conv_in", c->in_channels, c0, c->conv_in_kernel, 1, h, w, 0);
    W_T(&W, BI_WEIGHT, 2, temb, c0, 0, 0, "time_embedding.linear_1.weight");
    W_T(&W, BI_BIAS, 1, temb, 0, 0, 0, "time_embedding.linear_1.bias");
    W_T(&W, BI_WEIGHT, 2, temb, temb, 0, 0, "time_embedding.linear_2.weight");
    W_T(&W, BI_BIAS, 1, temb, 0, 0, 0, "time_embedding.linear_2.bias");
    W_OP(&W, BOP_LINEAR, 0, 1, c0, temb, 1, 0, 0, 0, 0);
    W_OP(&W, BOP_LINEAR, 0, 1, temb, temb, 1, 0, 0, 0, 0);
    if (c->add_text_time) { /* SDXL add_embedding, once per request (constant over the steps) */
        W_T(&W, BI_WEIGHT, 2, temb, c->add_embed_in, 0, 0, "add_embedding.linear_1.weight");
        W_T(&W, BI_BIAS, 1, temb, 0, 0, 0, "add_embedding.linear_1.bias");
        W_T(&W, BI_WEIGHT, 2, temb, temb, 0, 0, "add_embedding.linear_2.weight");
        W_T(&W, BI_BIAS, 1, temb, 0, 0, 0, "add_embedding.linear_2.bias");
        W_OP(&W, BOP_LINEAR, 1, n, c->add_embed_in, temb, 1, 0, 0, 0, 0);
        W_OP(&W, BOP_LINEAR, 1, n, temb, temb, 1, 0, 0, 0, 0);
    }
    for (int l = 0; l < nl; l++) {
        int64_t in = c->block_out_channels[l > 0 ? l - 1 : 0], out = c->block_out_channels[l];
        int cross = c->down_kind[l] == SD_UNET_BLOCK_CROSS_ATTN;
        int moe = c->moe_enabled && l >= c->moe_down_start && l < c->moe_down_end;
        for (int j = 0; j < c->layers_per_block[l]; j++) {
            fmtn(p, "down_blocks.%d.resnets.%d", l, j);
            w_resnet(&W, p, j ? out : in, out, lh[l], lw[l]);
            if (!cross) continue;
            fmtn(p, "down_blocks.%d.attentions.%d", l, j);
            w_transformer(&W, p, out, c->heads[l], c->transformer_layers[l], c->cross_attention_dim[l], lh[l], lw[l],
                          moe);
        }
        if (l == nl - 1) continue;
        fmtn(p, "down_blocks.%d.downsamplers.0.conv", l);
        w_conv(&W, p, out, out, 3, 2, lh[l], lw[l], 0);
    }
    if (c->mid_block) {
        int64_t ch = c->block_out_channels[nl - 1];
        w_resnet(&W, "mid_block.resnets.0", ch, ch, lh[nl - 1], lw[nl - 1]);
        w_transformer(&W, "mid_block.attentions.0", ch, c->heads[nl - 1], c->transformer_layers[nl - 1],
                      c->cross_attention_dim[nl - 1], lh[nl - 1], lw[nl - 1], 0);
        w_resnet(&W, "mid_block.resnets.1", ch, ch, lh[nl - 1], lw[nl - 1]);
    }
    for (int i = 0; i < nl; i++) {
        int lvl = nl - 1 - i, nres = c->layers_per_block[lvl] + 1;
        int64_t out = c->block_out_channels[lvl], prev = c->block_out_channels[i > 0 ? nl - i : nl - 1];
        int64_t in = c->block_out_channels[lvl - 1 >= 0 ? lvl - 1 : 0];
        int cross = c->up_kind[i] == SD_UNET_BLOCK_CROSS_ATTN;
        int moe = c->moe_enabled && i >= c->moe_up_start && i < c->moe_up_end;
        for (int j = 0; j < nres; j++) {
            int64_t skip = j == nres - 1 ? in : out, res_in = j == 0 ? prev : out;
            W_OP(&W, BOP_CONCAT, 0, n, lh[lvl] * lw[lvl], res_in, skip, 0, 0, 0, 0);
            fmtn(p, "up_blocks.%d.resnets.%d", i, j);
            w_resnet(&W, p, res_in + skip, out, lh[lvl], lw[lvl]);
            if (!cross) continue;
            fmtn(p, "up_blocks.%d.attentions.%d", i, j);
            w_transformer(&W, p, out, c->heads[lvl], c->up_transformer_layers[i], c->cross_attention_dim[lvl],
                          lh[lvl], lw[lvl], moe);
        }
        if (i == nl - 1) continue;
        W_OP(&W, BOP_UPSAMPLE, 0, n, lh[lvl], lw[lvl], out, 0, 0, 0, 0);
        fmtn(p, "up_blocks.%d.upsamplers.0.conv", i);
        w_conv(&W, p, out, out, 3, 1, lh[lvl - 1], lw[lvl - 1], 0);
    }
    w_norm(&W, "conv_norm_out", c0);
    W_OP(&W, BOP_GN, 0, n, h * w, c0, c->norm_num_groups, 1, 0, 0, 0);
    w_conv(&W, "conv_out", c0, c->out_channels, c->conv_out_kernel, 1, h, w, 0);
    W_OP(&W, BOP_LAYOUT, 0, n, c->out_channels, h, w, 1, 0, 0, 0);
    if (moe_macs) *moe_macs = (ops ? bench_oplist_macs(ops, 1) : 0) + W.moe_extra;
    if (W.fail) return sd_fail(err, "bench: out of memory building the UNet inventory");
    return 0;
}

/* ------------------------------------------------------------------- VAE */

/* VAE resnets have no time embedding: GN1+SiLU, conv1, GN2+SiLU, conv2 onto the shortcut. */
static void v_resnet(unet_walk *W, const char *p, int64_t ci, int64_t co, int64_t h, int64_t w, int ops) {
    char q[NAME_CAP];
    bench_oplist *keep = W->ops;
    if (!ops) W->ops = NULL;
    fmtn(q, "%s.norm1", p), w_norm(W, q, ci);
    W_OP(W, BOP_GN, 0, W->n, h * w, ci, W->groups, 1, 0, 0, 0);
    fmtn(q, "%s.conv1", p), w_conv(W, q, ci, co, 3, 1, h, w, 0);
    fmtn(q, "%s.norm2", p), w_norm(W, q, co);
    W_OP(W, BOP_GN, 0, W->n, h * w, co, W->groups, 1, 0, 0, 0);
    if (ci != co) fmtn(q, "%s.conv_shortcut", p), w_conv(W, q, ci, co, 1, 1, h, w, 0);
    fmtn(q, "%s.conv2", p), w_conv(W, q, co, co, 3, 1, h, w, 1); /* residual fused (vae_forward.c): no copy */
    W->ops = keep;
}

/* Mid block: resnet, single-head attention over all pixels, resnet.  As
 * vae/vae_forward.c runs it: the GroupNorm writes NHWC token rows, to_out's
 * result is added into the activation (fused into the GEMM in NHWC, one
 * conversion in a blocked layout). */
static void v_mid(unet_walk *W, const char *coder, int64_t ch, int64_t h, int64_t w, int ops) {
    char p[NAME_CAP];
    bench_oplist *keep = W->ops;
    int64_t rows = W->n * h * w;
    fmtn(p, "%s.mid_block.resnets.0", coder), v_resnet(W, p, ch, ch, h, w, ops);
    if (!ops) W->ops = NULL;
    fmtn(p, "%s.mid_block.attentions.0.group_norm", coder), w_norm(W, p, ch);
    W_OP(W, BOP_GN, 0, W->n, h * w, ch, W->groups, 0, 1, 0, 0);
    const char *leaf[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    for (int i = 0; i < 4; i++) {
        W_T(W, BI_WEIGHT, 2, ch, ch, 0, 0, "%s.mid_block.attentions.0.%s.weight", coder, leaf[i]);
        W_T(W, BI_BIAS, 1, ch, 0, 0, 0, "%s.mid_block.attentions.0.%s.bias", coder, leaf[i]);
        W_OP(W, BOP_LINEAR, 0, rows, ch, ch, 1, i == 3, i == 3, 0, 0);
        if (i == 2) W_OP(W, BOP_ATTN, 0, W->n, h * w, h * w, 1, ch, 0, 0, 0);
    }
    W_OP(W, BOP_TOKENS_ADD, 0, W->n, ch, h * w, 0, 0, 0, 0, 0);
    W->ops = keep;
    fmtn(p, "%s.mid_block.resnets.1", coder), v_resnet(W, p, ch, ch, h, w, ops);
}

int bench_vae_arch(const cJSON *cfg, bench_inventory *inv, bench_oplist *ops, int64_t n, int64_t h, int64_t w,
                   sd_error *err) {
    int ch[8], nl = 0, lpb = 2, lat = 4, cin = 3, cout = 3, groups = 32;
    if (sd_json_int(cfg, "vae config", "norm_num_groups", 32, &groups, err) ||
        sd_json_int_list(cfg, "vae config", "block_out_channels", ch, 8, &nl, err) ||
        sd_json_int(cfg, "vae config", "layers_per_block", 2, &lpb, err) ||
        sd_json_int(cfg, "vae config", "latent_channels", 4, &lat, err) ||
        sd_json_int(cfg, "vae config", "in_channels", 3, &cin, err) ||
        sd_json_int(cfg, "vae config", "out_channels", 3, &cout, err))
        return -1;
    unet_walk W = {.inv = inv, .ops = NULL, .n = n, .groups = groups};
    char p[NAME_CAP];
    /* encoder (inventory only) */
    w_conv(&W, "encoder.conv_in", cin, ch[0], 3, 1, 1, 1, 0);
    for (int i = 0; i < nl; i++) {
        for (int j = 0; j < lpb; j++) {
            fmtn(p, "encoder.down_blocks.%d.resnets.%d", i, j);
            v_resnet(&W, p, j ? ch[i] : (i ? ch[i - 1] : ch[0]), ch[i], 1, 1, 0);
        }
        if (i < nl - 1) fmtn(p, "encoder.down_blocks.%d.downsamplers.0.conv", i),
                        w_conv(&W, p, ch[i], ch[i], 3, 2, 1, 1, 0);
    }
    v_mid(&W, "encoder", ch[nl - 1], 1, 1, 0);
    w_norm(&W, "encoder.conv_norm_out", ch[nl - 1]);
    w_conv(&W, "encoder.conv_out", ch[nl - 1], 2 * lat, 3, 1, 1, 1, 0);
    w_conv(&W, "quant_conv", 2 * lat, 2 * lat, 1, 1, 1, 1, 0);
    /* decoder: inventory and ops of one decode (vae_forward.c: latents / scaling_factor
     * and post_quant_conv stay NCHW, conv_in reads NCHW) */
    W.ops = ops;
    w_conv(&W, "post_quant_conv", lat, lat, 1, 1, h, w, 0);
    w_conv(&W, "decoder.conv_in", lat, ch[nl - 1], 3, 1, h, w, 0);
    v_mid(&W, "decoder", ch[nl - 1], h, w, 1);
    int64_t hh = h, ww = w;
    for (int i = 0; i < nl; i++) {
        int64_t c_in = ch[nl - 1 - (i ? i - 1 : 0)], c_out = ch[nl - 1 - i];
        for (int j = 0; j <= lpb; j++) {
            fmtn(p, "decoder.up_blocks.%d.resnets.%d", i, j);
            v_resnet(&W, p, j ? c_out : c_in, c_out, hh, ww, 1);
        }
        if (i == nl - 1) continue;
        W_OP(&W, BOP_UPSAMPLE, 0, n, hh, ww, c_out, 0, 0, 0, 0);
        hh *= 2, ww *= 2;
        fmtn(p, "decoder.up_blocks.%d.upsamplers.0.conv", i);
        w_conv(&W, p, c_out, c_out, 3, 1, hh, ww, 0);
    }
    w_norm(&W, "decoder.conv_norm_out", ch[0]);
    W_OP(&W, BOP_GN, 0, n, hh * ww, ch[0], W.groups, 1, 0, 0, 0);
    w_conv(&W, "decoder.conv_out", ch[0], cout, 3, 1, hh, ww, 0);
    W_OP(&W, BOP_LAYOUT, 0, n, cout, hh, ww, 1, 0, 0, 0);
    if (W.fail) return sd_fail(err, "bench: out of memory building the VAE inventory");
    return 0;
}

/* ------------------------------------------------------------------ CLIP */

int bench_clip_arch(const cJSON *cfg, bench_inventory *inv, bench_oplist *ops, int64_t n, int64_t seq,
                    sd_error *err) {
    int H = 0, I = 0, L = 0, heads = 0, vocab = 0, pos = 0;
    if (sd_json_int(cfg, "clip config", "hidden_size", 512, &H, err) ||
        sd_json_int(cfg, "clip config", "intermediate_size", 2048, &I, err) ||
        sd_json_int(cfg, "clip config", "num_hidden_layers", 12, &L, err) ||
        sd_json_int(cfg, "clip config", "num_attention_heads", 8, &heads, err) ||
        sd_json_int(cfg, "clip config", "vocab_size", 49408, &vocab, err) ||
        sd_json_int(cfg, "clip config", "max_position_embeddings", 77, &pos, err))
        return -1;
    unet_walk W = {.inv = inv, .ops = ops, .n = n};
    int64_t rows = n * seq;
    W_T(&W, BI_EMBED, 2, vocab, H, 0, 0, "text_model.embeddings.token_embedding.weight");
    W_T(&W, BI_EMBED, 2, pos, H, 0, 0, "text_model.embeddings.position_embedding.weight");
    W_OP(&W, BOP_ADD, 0, rows * H, 0, 0, 0, 0, 0, 0, 0);
    char p[NAME_CAP];
    for (int i = 0; i < L; i++) {
        fmtn(p, "text_model.encoder.layers.%d.layer_norm1", i), w_norm(&W, p, H);
        W_OP(&W, BOP_LN, 0, rows, H, 0, 0, 0, 0, 0, 0);
        const char *pr[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        for (int k = 0; k < 4; k++) {
            W_T(&W, BI_WEIGHT, 2, H, H, 0, 0, "text_model.encoder.layers.%d.self_attn.%s.weight", i, pr[k]);
            W_T(&W, BI_BIAS, 1, H, 0, 0, 0, "text_model.encoder.layers.%d.self_attn.%s.bias", i, pr[k]);
            W_OP(&W, BOP_LINEAR, 0, rows, H, H, 1, k == 3, 0, 0, 0);
            if (k == 2) W_OP(&W, BOP_ATTN, 0, n, seq, seq, heads, H / heads, 0, 0, 0);
        }
        fmtn(p, "text_model.encoder.layers.%d.layer_norm2", i), w_norm(&W, p, H);
        W_OP(&W, BOP_LN, 0, rows, H, 0, 0, 0, 0, 0, 0);
        W_T(&W, BI_WEIGHT, 2, I, H, 0, 0, "text_model.encoder.layers.%d.mlp.fc1.weight", i);
        W_T(&W, BI_BIAS, 1, I, 0, 0, 0, "text_model.encoder.layers.%d.mlp.fc1.bias", i);
        W_OP(&W, BOP_LINEAR, 0, rows, H, I, 1, 0, 0, 0, 0);
        W_OP(&W, BOP_SILU, 0, rows * I, 0, 0, 0, 0, 0, 0, 0);
        W_T(&W, BI_WEIGHT, 2, H, I, 0, 0, "text_model.encoder.layers.%d.mlp.fc2.weight", i);
        W_T(&W, BI_BIAS, 1, H, 0, 0, 0, "text_model.encoder.layers.%d.mlp.fc2.bias", i);
        W_OP(&W, BOP_LINEAR, 0, rows, I, H, 1, 1, 0, 0, 0);
    }
    w_norm(&W, "text_model.final_layer_norm", H);
    W_OP(&W, BOP_LN, 0, rows, H, 0, 0, 0, 0, 0, 0);
    if (W.fail) return sd_fail(err, "bench: out of memory building the CLIP inventory");
    return 0;
}
