/* unet/unet_forward — the UNet2DConditionModel forward pass on NHWC
 * activations (diffusers v0.27.2 unet_2d_condition.py forward, with
 * unet_2d_blocks.py CrossAttnDownBlock2D / DownBlock2D / UNetMidBlock2DCrossAttn
 * / CrossAttnUpBlock2D / UpBlock2D, resnet.py ResnetBlock2D, Downsample2D,
 * Upsample2D, transformer_2d.py Transformer2DModel, attention.py
 * BasicTransformerBlock). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/memory.h"
#include "unet/unet_internal.h"

#define MAX_SKIPS 256

/* ------------------------------------------------------------- geometry */

/* Spatial size of every level for an h x w latent (the down samplers' conv arithmetic). */
static void level_sizes(const sd_unet *u, int64_t h, int64_t w, int64_t *lh, int64_t *lw) {
    lh[0] = h, lw[0] = w;
    for (int l = 0; l + 1 < u->cfg.n_levels; l++)
        sd_conv2d_out_size(u->down[l].sampler, lh[l], lw[l], &lh[l + 1], &lw[l + 1]);
}

typedef struct unet_plan {
    int64_t lh[SD_UNET_MAX_LEVELS], lw[SD_UNET_MAX_LEVELS];
    int64_t x, skips, act, tok, lin, attn; /* floats per buffer kind */
} unet_plan;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Token buffers, projection scratch and attention scratch for one Transformer2D at hw pixels. */
static void plan_transformer(unet_plan *p, const sd_unet_transformer *tr, int64_t n, int64_t hw, int64_t n_ctx) {
    int64_t rows = n * hw;
    p->tok = max64(p->tok, rows * tr->inner);
    for (int k = 0; k < tr->n_blocks; k++) {
        sd_unet_tblock *t = &tr->blocks[k];
        p->lin = max64(p->lin, sd_proj_scratch_floats(&t->attn1.to_q, rows));
        p->lin = max64(p->lin, sd_proj_scratch_floats(&t->attn1.to_k, rows));
        p->lin = max64(p->lin, sd_proj_scratch_floats(&t->attn1.to_v, rows));
        p->lin = max64(p->lin, sd_proj_scratch_floats(&t->attn2.to_q, rows));
        p->lin = max64(p->lin, sd_ff_scratch_floats(&t->ff, rows));
        p->attn = max64(p->attn, sd_attention_scratch_floats(hw, max64(hw, n_ctx), t->attn1.head_dim));
    }
}

/* Floats of an [n, c, hw] activation in the UNet's layout. */
static int64_t act_floats(const sd_unet *u, int64_t n, int64_t c, int64_t hw) { return sd_layout_floats(u->blk, n, c, hw); }

static void plan_block(const sd_unet *u, unet_plan *p, const sd_unet_block *blk, int64_t n, int64_t hw, int64_t n_ctx) {
    for (int j = 0; j < blk->n_resnets; j++)
        p->act = max64(p->act, act_floats(u, n, max64(blk->resnets[j].c_in, blk->resnets[j].c_out), hw));
    for (int a = 0; a < blk->n_attn; a++) {
        plan_transformer(p, &blk->attn[a], n, hw, n_ctx);
        p->act = max64(p->act, n * hw * blk->attn[a].inner); /* NHWC proj_in/proj_out results */
    }
}

static void unet_plan_make(const sd_unet *u, int64_t n, int64_t h, int64_t w, int64_t n_ctx, unet_plan *p) {
    const sd_unet_config *c = &u->cfg;
    int nl = c->n_levels;
    memset(p, 0, sizeof *p);
    level_sizes(u, h, w, p->lh, p->lw);
    int64_t c0 = c->block_out_channels[0];
    p->x = n * c->in_channels * h * w; /* NCHW copy for center_input_sample */
    p->skips = act_floats(u, n, c0, h * w);
    p->act = max64(act_floats(u, n, c0, h * w), act_floats(u, n, c->out_channels, h * w));
    for (int l = 0; l < nl; l++) {
        int64_t hw = p->lh[l] * p->lw[l], cl = c->block_out_channels[l];
        plan_block(u, p, &u->down[l], n, hw, n_ctx);
        p->skips += act_floats(u, n, cl, hw) * u->down[l].n_resnets;
        if (u->down[l].sampler) p->skips += act_floats(u, n, cl, p->lh[l + 1] * p->lw[l + 1]);
    }
    if (u->mid.n_resnets) plan_block(u, p, &u->mid, n, p->lh[nl - 1] * p->lw[nl - 1], n_ctx);
    for (int i = 0; i < nl; i++) {
        int lvl = nl - 1 - i;
        plan_block(u, p, &u->up[i], n, p->lh[lvl] * p->lw[lvl], n_ctx);
        if (u->up[i].sampler)
            p->act = max64(p->act, act_floats(u, n, u->up[i].c_out, p->lh[lvl - 1] * p->lw[lvl - 1]));
    }
}

/* Floats rounded up to a 64-byte boundary. */
static int64_t pad16(int64_t f) { return (f + 15) & ~(int64_t)15; }

static int workspace_ensure(sd_unet *u, int64_t n, int64_t h, int64_t w, int64_t n_ctx, sd_error *err) {
    unet_plan p;
    unet_plan_make(u, n, h, w, n_ctx, &p);
    int64_t total = pad16(p.x) + pad16(p.skips) + 5 * pad16(p.act) + 6 * pad16(p.tok) + pad16(p.lin) +
                    pad16(p.attn);
    unet_workspace *ws = &u->ws;
    if (!ws->mem) ws->mem = &ws->own;
    /* carved afresh on every call: a shared scratch may have moved since */
    ws->need_bytes = (size_t)total * sizeof(float);
    float *at = sd_scratch_reserve(ws->mem, ws->need_bytes);
    if (!at)
        return sd_fail(err, "unet: out of memory for a %lld x %lld x %lld workspace (%lld MB)", (long long)n,
                       (long long)h, (long long)w, (long long)(total * 4 >> 20));
#define CARVE(field, count) (ws->field = at, at += pad16(count))
    CARVE(x, p.x);
    CARVE(skips, p.skips);
    CARVE(ha, p.act);
    CARVE(hb, p.act);
    CARVE(cat, p.act);
    CARVE(t1, p.act);
    CARVE(t2, p.act);
    CARVE(ln, p.tok);
    CARVE(q, p.tok);
    CARVE(k, p.tok);
    CARVE(v, p.tok);
    CARVE(o, p.tok);
    CARVE(ffo, p.tok);
    CARVE(lin_scratch, p.lin);
    CARVE(attn_scratch, p.attn);
#undef CARVE
    ws->attn_scratch_floats = p.attn;
    ws->n = n, ws->h = h, ws->w = w, ws->n_ctx = n_ctx;
    return 0;
}

size_t sd_unet_workspace_bytes(const sd_unet *u) { return u->ws.need_bytes; }

void sd_unet_share_scratch(sd_unet *u, sd_scratch *s) {
    sd_scratch_release(&u->ws.own);
    u->ws.mem = s ? s : &u->ws.own;
}

int sd_unet_reserve(sd_unet *u, int64_t n, int64_t h, int64_t w, int64_t n_ctx, sd_error *err) {
    if (n < 1 || h < 1 || w < 1 || n_ctx < 1) return sd_fail(err, "unet: reserve: sizes must be >= 1");
    return workspace_ensure(u, n, h, w, n_ctx, err);
}

void sd_unet_set_capture(sd_unet *u, sd_unet_capture_fn fn, void *ctx) {
    u->capture = fn;
    u->capture_ctx = ctx;
}

/* Hands an activation (in the UNet's layout unless `nhwc`) to the capture callback as NHWC. */
static void capture_ex(sd_unet *u, const char *name, const float *x, int nhwc, int64_t n, int64_t h, int64_t w,
                       int64_t c) {
    if (!u->capture) return;
    if (!nhwc && u->blk != SD_LAYOUT_NHWC) {
        size_t need = (size_t)(n * h * w * c);
        if (need > u->cap_floats) {
            float *nb = realloc(u->cap_buf, need * sizeof(float));
            if (!nb) return;
            u->cap_buf = nb, u->cap_floats = need;
        }
        sd_layout_convert(x, u->blk, u->cap_buf, SD_LAYOUT_NHWC, n, c, h * w, 0);
        x = u->cap_buf;
    }
    u->capture(u->capture_ctx, name, x, n, h, w, c);
}

static void capture(sd_unet *u, const char *name, const float *x, int64_t n, int64_t h, int64_t w, int64_t c) {
    capture_ex(u, name, x, 0, n, h, w, c);
}

/* ------------------------------------------------------------ time embedding */

/* diffusers get_timestep_embedding (embeddings.py) in float32: exponent =
 * -ln(10000) * k / (half - freq_shift), arg = t * exp(exponent), [sin | cos]
 * ([cos | sin] with flip_sin_to_cos), zero pad for odd dims.  Used for
 * time_proj (dim c0) and SDXL's add_time_proj (dim addition_time_embed_dim,
 * same flip and shift). */
static void sinusoid(const sd_unet_config *c, float t, int64_t dim, float *out) {
    int64_t half = dim / 2;
    const float neg_log = (float)-log(10000.0);
    for (int64_t k = 0; k < half; k++) {
        float e = neg_log * (float)k;
        e = e / ((float)half - c->freq_shift);
        float arg = t * expf(e);
        float s = (float)sin((double)arg), co = (float)cos((double)arg);
        out[c->flip_sin_to_cos ? k : half + k] = co;
        out[c->flip_sin_to_cos ? half + k : k] = s;
    }
    if (dim % 2) out[dim - 1] = 0.0f;
}

/* Grows the per-row time-embedding vectors to `rows` (per request, never in
 * the step loop: forward only uses rows that sd_unet_set_added_cond sized). */
static int temb_rows_ensure(sd_unet *u, int64_t rows, sd_error *err) {
    if (rows <= u->temb_rows_cap) return 0;
    int64_t te = u->cfg.time_embed_dim;
    float *a = realloc(u->temb, (size_t)(rows * te) * sizeof(float));
    if (a) u->temb = a;
    float *b = a ? realloc(u->temb_act, (size_t)(rows * te) * sizeof(float)) : NULL;
    if (b) u->temb_act = b;
    float *v = b ? realloc(u->tvec, (size_t)(rows * u->maxc) * sizeof(float)) : NULL;
    if (v) u->tvec = v;
    if (!v) return sd_fail(err, "unet: out of memory for the time embeddings");
    u->temb_rows_cap = rows;
    return 0;
}

/* TimestepEmbedding: linear_1 -> SiLU -> linear_2 of time_proj(t) into temb0;
 * emb rows = temb0 (+ aug[row] for text_time models); temb_act = SiLU(emb),
 * which every resnet feeds to its time_emb_proj.  Returns the row count. */
static int64_t time_embedding(sd_unet *u, float t, int64_t n) {
    int64_t te = u->cfg.time_embed_dim;
    sinusoid(&u->cfg, t, u->cfg.block_out_channels[0], u->tproj);
    sd_dense_forward(&u->time_lin1, u->tproj, 1, u->temb_act);
    sd_silu(u->temb_act, u->temb_act, te);
    sd_dense_forward(&u->time_lin2, u->temb_act, 1, u->temb0);
    int64_t rows = u->cfg.add_text_time ? n : 1;
    for (int64_t r = 0; r < rows; r++) {
        float *e = u->temb + r * te;
        const float *aug = u->cfg.add_text_time ? u->aug + r * te : NULL;
        for (int64_t k = 0; k < te; k++) e[k] = aug ? u->temb0[k] + aug[k] : u->temb0[k];
    }
    sd_silu(u->temb, u->temb_act, rows * te);
    return rows;
}

int sd_unet_set_added_cond(sd_unet *u, const float *text_embeds, const float *time_ids, int64_t n,
                           sd_error *err) {
    const sd_unet_config *c = &u->cfg;
    if (!c->add_text_time)
        return sd_fail(err, "unet: added conditioning given to a model without addition_embed_type \"text_time\"");
    if (n < 1 || !text_embeds || !time_ids) return sd_fail(err, "unet: added conditioning: need n >= 1 and both inputs");
    u->aug_n = 0;
    int64_t te = c->time_embed_dim, din = c->add_embed_in, td = c->addition_time_embed_dim;
    if (temb_rows_ensure(u, n, err)) return -1;
    int64_t tdim = c->add_n_time_ids * td;
    float *aug = realloc(u->aug, (size_t)(n * te) * sizeof(float));
    if (aug) u->aug = aug;
    float *in = aug ? malloc((size_t)(n * (din + tdim + te)) * sizeof(float)) : NULL;
    if (!in) return sd_fail(err, "unet: out of memory for the added conditioning");
    float *tp = in + n * din, *mid = tp + n * tdim;
    /* add_time_proj(time_ids.flatten()).reshape(n, -1); add_embeds = cat([text_embeds, that]): pooled first */
    for (int64_t r = 0; r < n; r++)
        for (int i = 0; i < c->add_n_time_ids; i++)
            sinusoid(c, time_ids[r * c->add_n_time_ids + i], td, tp + r * tdim + i * td);
    for (int64_t r = 0; r < n; r++) {
        memcpy(in + r * din, text_embeds + r * c->add_text_dim, (size_t)c->add_text_dim * sizeof(float));
        memcpy(in + r * din + c->add_text_dim, tp + r * tdim, (size_t)tdim * sizeof(float));
    }
    capture_ex(u, "add_time_proj", tp, 1, n, 1, 1, tdim);
    capture_ex(u, "add_embedding_input", in, 1, n, 1, 1, din);
    sd_dense_forward(&u->add_lin1, in, n, mid);
    sd_silu(mid, mid, n * te);
    sd_dense_forward(&u->add_lin2, mid, n, u->aug);
    capture_ex(u, "add_embedding", u->aug, 1, n, 1, 1, te);
    free(in);
    u->aug_n = n;
    return 0;
}

/* ------------------------------------------------------------------ resnet */

/* y = (shortcut(x) + conv2(SiLU(GN2(conv1(SiLU(GN1(x))) + proj(SiLU(temb)))))) / out_scale.
 * y must not alias x. */
static int run_resnet(sd_unet *u, sd_unet_resnet *r, const float *x, int64_t n, int64_t h, int64_t w, float *y,
                      sd_error *err) {
    unet_workspace *ws = &u->ws;
    int64_t hw = h * w;
    int G = u->cfg.norm_num_groups;
    float eps = u->cfg.norm_eps;
    int blk = u->blk;
    int64_t y_floats = act_floats(u, n, r->c_out, hw);
    sd_group_norm_ex(x, blk, ws->t1, blk, n, hw, r->c_in, G, eps, r->norm1_w.data, r->norm1_b.data, 1);
    if (sd_conv2d_forward_blk(r->conv1, ws->t1, blk, n, h, w, ws->t2, 0, err)) return -1;
    sd_dense_forward(&r->time_emb_proj, u->temb_act, u->temb_rows, u->tvec);
    if (u->temb_rows == 1) {
        sd_add_channel_vec(ws->t2, blk, n, r->c_out, hw, u->tvec);
    } else { /* one time embedding per batch item (text_time) */
        int64_t item = act_floats(u, 1, r->c_out, hw);
        for (int64_t i = 0; i < n; i++) sd_add_channel_vec(ws->t2 + i * item, blk, 1, r->c_out, hw, u->tvec + i * r->c_out);
    }
    sd_group_norm_ex(ws->t2, blk, ws->t1, blk, n, hw, r->c_out, G, eps, r->norm2_w.data, r->norm2_b.data, 1);
    if (r->conv_shortcut) {
        if (sd_conv2d_forward_blk(r->conv_shortcut, x, blk, n, h, w, y, 0, err)) return -1;
    } else {
        memcpy(y, x, (size_t)y_floats * sizeof(float));
    }
    if (sd_conv2d_forward_blk(r->conv2, ws->t1, blk, n, h, w, y, 1, err)) return -1;
    if (r->out_scale != 1.0f)
        for (int64_t i = 0; i < y_floats; i++) y[i] /= r->out_scale;
    return 0;
}

/* ------------------------------------------------------------- transformer */

/* Computes attn2 K and V of one block for context [n * n_ctx, kv_dim] into its cache. */
static int tblock_cache_kv(sd_unet_tblock *t, const float *ctx, int64_t n, int64_t n_ctx, float *scratch,
                           sd_error *err) {
    int64_t rows = n * n_ctx, dim = t->attn2.dim;
    if (t->kv_cache_rows < rows) {
        free(t->kv_cache);
        t->kv_cache = malloc((size_t)(2 * rows * dim) * sizeof(float));
        t->kv_cache_rows = t->kv_cache ? rows : 0;
        if (!t->kv_cache) return sd_fail(err, "unet: out of memory for the cross-attention cache");
    }
    if (sd_proj_forward(&t->attn2.to_k, ctx, rows, t->kv_cache, scratch, err) ||
        sd_proj_forward(&t->attn2.to_v, ctx, rows, t->kv_cache + rows * dim, scratch, err))
        return sd_error_prefix(err, "unet: %s.attn2", t->name);
    return 0;
}

/* BasicTransformerBlock (norm_type layer_norm, no ada-norm): h += attn1(LN1 h);
 * h += attn2(LN2 h, context); h += ff(LN3 h).  h [n * hw, dim], in place. */
static int run_tblock(sd_unet *u, sd_unet_tblock *t, float *h, int64_t n, int64_t hw, sd_error *err) {
    unet_workspace *ws = &u->ws;
    int64_t rows = n * hw, dim = t->attn1.dim, n_ctx = u->ctx_tokens;
    const float ln_eps = 1e-5f;
    sd_unet_attention *a1 = &t->attn1, *a2 = &t->attn2;
    float scale1 = (float)(1.0 / sqrt((double)a1->head_dim)), scale2 = (float)(1.0 / sqrt((double)a2->head_dim));
    sd_layer_norm(h, rows, dim, t->norm1_w.data, t->norm1_b.data, ln_eps, ws->ln);
    if (sd_proj_forward(&a1->to_q, ws->ln, rows, ws->q, ws->lin_scratch, err) ||
        sd_proj_forward(&a1->to_k, ws->ln, rows, ws->k, ws->lin_scratch, err) ||
        sd_proj_forward(&a1->to_v, ws->ln, rows, ws->v, ws->lin_scratch, err))
        return sd_error_prefix(err, "unet: %s.attn1", t->name);
    sd_attention(ws->q, dim, ws->k, dim, ws->v, dim, n, hw, hw, a1->heads, a1->head_dim, scale1, 0, ws->o, dim,
                 ws->attn_scratch);
    sd_linear_ex(ws->o, dim, a1->to_out.w.data, a1->to_out.b.data, rows, dim, dim, h, dim, 1);

    sd_layer_norm(h, rows, dim, t->norm2_w.data, t->norm2_b.data, ln_eps, ws->ln);
    if (sd_proj_forward(&a2->to_q, ws->ln, rows, ws->q, ws->lin_scratch, err))
        return sd_error_prefix(err, "unet: %s.attn2", t->name);
    const float *K = t->kv_cache, *V = t->kv_cache + n * n_ctx * dim;
    sd_attention(ws->q, dim, K, dim, V, dim, n, hw, n_ctx, a2->heads, a2->head_dim, scale2, 0, ws->o, dim,
                 ws->attn_scratch);
    sd_linear_ex(ws->o, dim, a2->to_out.w.data, a2->to_out.b.data, rows, dim, dim, h, dim, 1);

    sd_layer_norm(h, rows, dim, t->norm3_w.data, t->norm3_b.data, ln_eps, ws->ln);
    if (sd_ff_forward(&t->ff, ws->ln, rows, ws->ffo, ws->lin_scratch, err))
        return sd_error_prefix(err, "unet: %s.ff", t->name);
    sd_add(h, ws->ffo, h, rows * dim);
    return 0;
}

/* Transformer2DModel (continuous input): x += proj_out(blocks(proj_in(GN(x)))).
 * GroupNorm eps 1e-6; proj_in/out are 1x1 convs or linears, both plain GEMMs on NHWC rows. */
static int run_transformer(sd_unet *u, sd_unet_transformer *tr, float *x, int64_t n, int64_t h, int64_t w,
                           sd_error *err) {
    unet_workspace *ws = &u->ws;
    int64_t hw = h * w, rows = n * hw;
    /* GroupNorm writes NHWC token rows whatever the activation layout */
    sd_group_norm_ex(x, u->blk, ws->t1, SD_LAYOUT_NHWC, n, hw, tr->channels, tr->groups, 1e-6f, tr->norm_w.data,
                     tr->norm_b.data, 0);
    sd_dense_forward(&tr->proj_in, ws->t1, rows, ws->t2);
    for (int k = 0; k < tr->n_blocks; k++)
        if (run_tblock(u, &tr->blocks[k], ws->t2, n, hw, err)) return -1;
    if (u->blk == SD_LAYOUT_NHWC) {
        sd_linear_ex(ws->t2, tr->inner, tr->proj_out.w.data, tr->proj_out.b.data, rows, tr->inner, tr->channels, x,
                     tr->channels, 1);
    } else {
        sd_dense_forward(&tr->proj_out, ws->t2, rows, ws->t1);
        sd_layout_convert(ws->t1, SD_LAYOUT_NHWC, x, u->blk, n, tr->channels, hw, 1);
    }
    return 0;
}

/* ------------------------------------------------------------------ blocks */

typedef struct skip_t {
    float *p;
    int64_t h, w, c;
} skip_t;

typedef struct fwd_state {
    sd_unet *u;
    int64_t n;
    float *cur;            /* current hidden states */
    int64_t h, w, c;
    skip_t skips[MAX_SKIPS];
    int n_skips;
    float *skip_next;      /* next free float of the skip arena */
} fwd_state;

static float *skip_push(fwd_state *s, int64_t h, int64_t w, int64_t c) {
    float *p = s->skip_next;
    s->skips[s->n_skips++] = (skip_t){p, h, w, c};
    s->skip_next += act_floats(s->u, s->n, c, h * w);
    return p;
}

static int run_down(sd_unet *u, int l, fwd_state *s, sd_error *err) {
    sd_unet_block *blk = &u->down[l];
    char name[96];
    int first = s->n_skips;
    for (int j = 0; j < blk->n_resnets; j++) {
        sd_unet_resnet *r = &blk->resnets[j];
        if (s->n_skips + 2 > MAX_SKIPS) return sd_fail(err, "unet: more than %d skip tensors", MAX_SKIPS);
        float *out = skip_push(s, s->h, s->w, r->c_out);
        if (run_resnet(u, r, s->cur, s->n, s->h, s->w, out, err)) return -1;
        if (blk->n_attn && run_transformer(u, &blk->attn[j], out, s->n, s->h, s->w, err)) return -1;
        s->cur = out, s->c = r->c_out;
    }
    if (blk->sampler) {
        int64_t oh, ow;
        sd_conv2d_out_size(blk->sampler, s->h, s->w, &oh, &ow);
        float *out = skip_push(s, oh, ow, s->c);
        if (sd_conv2d_forward_blk(blk->sampler, s->cur, u->blk, s->n, s->h, s->w, out, 0, err)) return -1;
        s->cur = out, s->h = oh, s->w = ow;
    }
    if (u->capture) {
        snprintf(name, sizeof name, "down_blocks.%d.hidden_states", l);
        capture(u, name, s->cur, s->n, s->h, s->w, s->c);
        for (int j = first; j < s->n_skips; j++) {
            snprintf(name, sizeof name, "down_blocks.%d.res_samples.%d", l, j - first);
            capture(u, name, s->skips[j].p, s->n, s->skips[j].h, s->skips[j].w, s->skips[j].c);
        }
    }
    return 0;
}

static int run_mid(sd_unet *u, fwd_state *s, sd_error *err) {
    sd_unet_block *blk = &u->mid;
    unet_workspace *ws = &u->ws;
    if (run_resnet(u, &blk->resnets[0], s->cur, s->n, s->h, s->w, ws->ha, err)) return -1;
    float *cur = ws->ha, *other = ws->hb;
    for (int a = 0; a < blk->n_attn; a++) {
        if (run_transformer(u, &blk->attn[a], cur, s->n, s->h, s->w, err)) return -1;
        if (run_resnet(u, &blk->resnets[a + 1], cur, s->n, s->h, s->w, other, err)) return -1;
        float *t = cur;
        cur = other, other = t;
    }
    s->cur = cur, s->c = blk->c_out;
    capture(u, "mid_block", s->cur, s->n, s->h, s->w, s->c);
    return 0;
}

static int run_up(sd_unet *u, int i, fwd_state *s, sd_error *err) {
    sd_unet_block *blk = &u->up[i];
    unet_workspace *ws = &u->ws;
    for (int j = 0; j < blk->n_resnets; j++) {
        sd_unet_resnet *r = &blk->resnets[j];
        if (s->n_skips < 1) return sd_fail(err, "unet: up_blocks.%d: no skip tensor left", i);
        skip_t sk = s->skips[--s->n_skips];
        if (sk.h != s->h || sk.w != s->w || s->c + sk.c != r->c_in)
            return sd_fail(err, "unet: up_blocks.%d.resnets.%d: skip [%lld x %lld x %lld] does not fit hidden "
                           "[%lld x %lld x %lld] (resnet expects %lld channels)", i, j, (long long)sk.h,
                           (long long)sk.w, (long long)sk.c, (long long)s->h, (long long)s->w, (long long)s->c,
                           (long long)r->c_in);
        /* torch.cat([hidden_states, res_hidden_states], dim=1) */
        sd_concat_channels_ex(s->cur, s->c, sk.p, sk.c, u->blk, s->n, s->h * s->w, ws->cat);
        float *out = s->cur == ws->ha ? ws->hb : ws->ha;
        if (run_resnet(u, r, ws->cat, s->n, s->h, s->w, out, err)) return -1;
        if (blk->n_attn && run_transformer(u, &blk->attn[j], out, s->n, s->h, s->w, err)) return -1;
        s->cur = out, s->c = r->c_out;
    }
    if (blk->sampler) {
        if (s->n_skips < 1) return sd_fail(err, "unet: up_blocks.%d: no skip tensor for the upsample size", i);
        /* Upsample2D: nearest to the next skip's size (diffusers forwards
         * upsample_size when the latent is not a multiple of 2^num_upsamplers;
         * otherwise x2, which is the same size), then conv 3x3. */
        int64_t oh = s->skips[s->n_skips - 1].h, ow = s->skips[s->n_skips - 1].w;
        sd_upsample_nearest_ex(s->cur, u->blk, s->n, s->c, s->h, s->w, ws->cat, oh, ow);
        float *out = s->cur == ws->ha ? ws->hb : ws->ha;
        if (sd_conv2d_forward_blk(blk->sampler, ws->cat, u->blk, s->n, oh, ow, out, 0, err)) return -1;
        s->cur = out, s->h = oh, s->w = ow;
    }
    if (u->capture) {
        char name[64];
        snprintf(name, sizeof name, "up_blocks.%d", i);
        capture(u, name, s->cur, s->n, s->h, s->w, s->c);
    }
    return 0;
}

/* ---------------------------------------------------------------- context */

static int64_t context_scratch_floats(const sd_unet *u, int64_t rows) {
    int64_t m = 0;
    for (int i = 0; i < u->n_tblocks; i++) {
        m = max64(m, sd_proj_scratch_floats(&u->tblocks[i]->attn2.to_k, rows));
        m = max64(m, sd_proj_scratch_floats(&u->tblocks[i]->attn2.to_v, rows));
    }
    return m;
}

int sd_unet_set_context(sd_unet *u, const float *context, int64_t n, int64_t n_ctx, sd_error *err) {
    if (n < 1 || n_ctx < 1) return sd_fail(err, "unet: context: need n >= 1 and n_ctx >= 1");
    u->ctx_n = u->ctx_tokens = 0;
    int64_t sf = context_scratch_floats(u, n * n_ctx);
    float *scratch = sf ? malloc((size_t)sf * sizeof(float)) : NULL;
    if (sf && !scratch) return sd_fail(err, "unet: out of memory");
    for (int i = 0; i < u->n_tblocks; i++)
        if (tblock_cache_kv(u->tblocks[i], context, n, n_ctx, scratch, err)) {
            free(scratch);
            return -1;
        }
    free(scratch);
    u->ctx_n = n, u->ctx_tokens = n_ctx;
    return 0;
}

/* ---------------------------------------------------------------- forward */

static int unet_run(sd_unet *u, const float *sample, int64_t n, int64_t h, int64_t w, float timestep, float *out,
                    sd_error *err) {
    const sd_unet_config *c = &u->cfg;
    unet_workspace *ws = &u->ws;
    int64_t c0 = c->block_out_channels[0], hw = h * w;
    u->temb_rows = time_embedding(u, timestep, n);
    capture_ex(u, "time_proj", u->tproj, 1, 1, 1, 1, c0);
    capture_ex(u, "time_embedding", u->temb0, 1, 1, 1, 1, c->time_embed_dim);
    if (c->add_text_time) capture_ex(u, "emb", u->temb, 1, n, 1, 1, c->time_embed_dim);

    int blk = u->blk;
    const float *src = sample;
    if (c->center_input_sample) { /* sample = 2 * sample - 1 */
        for (int64_t i = 0; i < n * c->in_channels * hw; i++) ws->x[i] = 2.0f * sample[i] - 1.0f;
        src = ws->x;
    }
    fwd_state state = {0}, *s = &state;
    s->u = u, s->n = n, s->h = h, s->w = w, s->c = c0, s->skip_next = ws->skips;
    s->cur = skip_push(s, h, w, c0);
    /* NCHW straight in: oneDNN's first-layer kernel for few input channels */
    if (sd_conv2d_forward_layout(u->conv_in, src, SD_LAYOUT_NCHW, n, h, w, s->cur, blk, 0, err)) return -1;
    capture(u, "conv_in", s->cur, n, h, w, c0);
    for (int l = 0; l < c->n_levels; l++)
        if (run_down(u, l, s, err)) return -1;
    if (u->mid.n_resnets && run_mid(u, s, err)) return -1;
    for (int i = 0; i < c->n_levels; i++)
        if (run_up(u, i, s, err)) return -1;
    /* conv_norm_out -> SiLU -> conv_out */
    sd_group_norm_ex(s->cur, blk, ws->t1, blk, n, hw, c0, c->norm_num_groups, c->norm_eps, u->norm_out_w.data,
                     u->norm_out_b.data, u->capture ? 0 : 1);
    if (u->capture) { /* the fixture's conv_norm_out is the GroupNorm output, before SiLU */
        capture(u, "conv_norm_out", ws->t1, n, h, w, c0);
        sd_silu(ws->t1, ws->t1, act_floats(u, n, c0, hw));
    }
    if (sd_conv2d_forward_blk(u->conv_out, ws->t1, blk, n, h, w, ws->t2, 0, err)) return -1;
    capture(u, "conv_out", ws->t2, n, h, w, c->out_channels);
    sd_layout_convert(ws->t2, blk, out, SD_LAYOUT_NCHW, n, c->out_channels, hw, 0);
    return 0;
}

int sd_unet_forward_ex(sd_unet *u, const float *sample, int64_t n, int64_t h, int64_t w, float timestep,
                       const float *context, int64_t n_ctx, float *out, sd_error *err) {
    if (n < 1 || h < 1 || w < 1) return sd_fail(err, "unet: forward: batch and sizes must be >= 1");
    if (context) {
        if (sd_unet_set_context(u, context, n, n_ctx, err)) return -1;
    } else if (u->ctx_n != n) {
        return sd_fail(err, "unet: forward: no cached context for a batch of %lld (call sd_unet_set_context)",
                       (long long)n);
    }
    if (u->cfg.add_text_time && u->aug_n != n)
        return sd_fail(err, "unet: forward: this SDXL-type UNet needs the added conditioning (text_embeds, time_ids) "
                       "for a batch of %lld (call sd_unet_set_added_cond)", (long long)n);
    if (workspace_ensure(u, n, h, w, u->ctx_tokens, err)) return -1;
    return unet_run(u, sample, n, h, w, timestep, out, err);
}

int sd_unet_forward(sd_unet *u, const float *sample, int64_t n, int64_t h, int64_t w, float timestep,
                    const float *context, float *out, sd_error *err) {
    int64_t n_ctx = u->ctx_tokens > 0 ? u->ctx_tokens : 77;
    return sd_unet_forward_ex(u, sample, n, h, w, timestep, context, n_ctx, out, err);
}
