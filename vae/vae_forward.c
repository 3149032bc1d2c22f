/* vae/vae_forward — AutoencoderKL decode and encode.
 *
 * Activations stay in the model's layout m->blk (core/kernels.h: NHWC or
 * oneDNN's channel-blocked nChw8c / nChw16c) from the first convolution to
 * the last: convolutions, GroupNorm (+SiLU fused), nearest upsampling and
 * the residual adds (fused into the convolution that makes the second
 * operand) all work in it.  Conversions happen only at the boundaries: the
 * NCHW latents / image (the network's first convolution reads NCHW
 * directly, oneDNN's fast path for few input channels), and the mid block's
 * attention, whose GroupNorm writes NHWC token rows and whose to_out result
 * is added back into the blocked activation.
 *
 * One run walks the network with three activation buffers: x (the current
 * tensor), s (its spare: GroupNorm outputs, upsampled maps, conv outputs
 * that change the shape, after which x and s swap) and t (a resnet's conv1
 * output).  The sizes are planned from the config, the layout and
 * (batch, h, w) before the run; the buffers only grow. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vae/vae_internal.h"

/* ---------------------------------------------------------------- planning */

typedef struct vae_need {
    size_t act, t, qkv, scratch; /* floats per buffer */
} vae_need;

static void need(size_t *slot, int64_t floats) {
    if ((size_t)floats > *slot) *slot = (size_t)floats;
}

/* Floats of an [n, c, hw] activation in the model's layout. */
static int64_t act_floats(const vae_model *m, int64_t n, int64_t c, int64_t hw) {
    return sd_layout_floats(m->blk, n, c, hw);
}

/* Downsample2D(padding=0): F.pad(0, 1, 0, 1) then 3x3 stride 2 -> (in - 2) / 2 + 1. */
static int64_t down_size(int64_t in) { return in >= 2 ? (in - 2) / 2 + 1 : 0; }

static void plan_resnets(const vae_model *m, vae_need *nd, const vae_level *lv, int64_t n, int64_t hw) {
    for (int j = 0; j < lv->n_res; j++) {
        const vae_resnet *r = &lv->res[j];
        need(&nd->act, act_floats(m, n, r->c_in > r->c_out ? r->c_in : r->c_out, hw));
        need(&nd->t, act_floats(m, n, r->c_out, hw));
    }
}

/* The mid block; its attention's NHWC token rows fit in s and t (an
 * activation in any layout holds at least n * hw * c floats). */
static void plan_mid(const vae_model *m, vae_need *nd, const vae_mid *mid, int64_t n, int64_t hw) {
    int64_t c = mid->res[0].c_in;
    need(&nd->act, act_floats(m, n, c, hw));
    need(&nd->t, act_floats(m, n, c, hw));
    if (!mid->has_attn) return;
    need(&nd->qkv, 3 * n * hw * c);
    need(&nd->scratch, sd_attention_scratch_floats(hw, hw, c));
}

static void plan_decoder(const vae_model *m, int64_t n, int64_t h, int64_t w, vae_need *nd) {
    const vae_coder *d = &m->dec;
    need(&nd->act, n * h * w * m->cfg.latent_channels); /* NCHW z and post_quant_conv(z) */
    need(&nd->act, act_floats(m, n, d->conv_in.c_out, h * w));
    plan_mid(m, nd, &d->mid, n, h * w);
    for (int i = 0; i < m->cfg.n_levels; i++) {
        const vae_level *lv = &d->levels[i];
        plan_resnets(m, nd, lv, n, h * w);
        if (!lv->has_resample) continue;
        h *= 2;
        w *= 2;
        need(&nd->act, act_floats(m, n, lv->res[0].c_out, h * w));
    }
    need(&nd->act, act_floats(m, n, d->conv_out.c_in, h * w));
    need(&nd->act, act_floats(m, n, m->cfg.out_channels, h * w));
}

static int plan_encoder(const vae_model *m, int64_t n, int64_t h, int64_t w, vae_need *nd, sd_error *err) {
    const vae_coder *e = &m->enc;
    need(&nd->act, act_floats(m, n, e->conv_in.c_out, h * w));
    for (int i = 0; i < m->cfg.n_levels; i++) {
        const vae_level *lv = &e->levels[i];
        plan_resnets(m, nd, lv, n, h * w);
        if (!lv->has_resample) continue;
        if (h < 2 || w < 2)
            return sd_fail(err, "vae: encode: image too small: %lldx%lld at down block %d, need at least 2x2",
                           (long long)h, (long long)w, i);
        h = down_size(h);
        w = down_size(w);
        need(&nd->act, act_floats(m, n, lv->res[0].c_out, h * w));
    }
    plan_mid(m, nd, &e->mid, n, h * w);
    need(&nd->act, act_floats(m, n, 2 * m->cfg.latent_channels, h * w)); /* conv_out, quant_conv, NCHW moments */
    return 0;
}

/* --------------------------------------------------------------- workspace */

static size_t pad16z(size_t f) { return (f + 15) & ~(size_t)15; }

static void raise_cap(size_t *cap, size_t want) {
    if (want > *cap) *cap = want;
}

/* Carves x, s, t, qkv, scratch (and the probe's NHWC copy when probed = 1)
 * out of one region, sized to the high-water marks so far. */
static int ws_reserve(vae_ws *ws, const vae_need *nd, int probed, sd_error *err) {
    if (!ws->mem) ws->mem = &ws->own;
    raise_cap(&ws->cap_x, nd->act);
    raise_cap(&ws->cap_s, nd->act);
    raise_cap(&ws->cap_t, nd->t);
    raise_cap(&ws->cap_qkv, nd->qkv);
    raise_cap(&ws->cap_scratch, nd->scratch);
    if (probed) raise_cap(&ws->cap_tap, nd->act);
    size_t total = pad16z(ws->cap_x) + pad16z(ws->cap_s) + pad16z(ws->cap_t) + pad16z(ws->cap_qkv) +
                   pad16z(ws->cap_scratch) + pad16z(ws->cap_tap);
    float *at = sd_scratch_reserve(ws->mem, total * sizeof(float));
    if (!at) return sd_fail(err, "vae: out of memory (%zu MB activation workspace)", (total * sizeof(float)) >> 20);
    ws->x = at, at += pad16z(ws->cap_x);
    ws->s = at, at += pad16z(ws->cap_s);
    ws->t = at, at += pad16z(ws->cap_t);
    ws->qkv = at, at += pad16z(ws->cap_qkv);
    ws->scratch = at, at += pad16z(ws->cap_scratch);
    ws->tap = ws->cap_tap ? at : NULL;
    return 0;
}

void vae_ws_free(vae_ws *ws) {
    sd_scratch_release(&ws->own);
    memset(ws, 0, sizeof *ws);
}

void vae_share_scratch(vae_model *m, sd_scratch *s) {
    sd_scratch_release(&m->ws.own);
    m->ws.mem = s ? s : &m->ws.own;
}

size_t vae_workspace_bytes(const vae_model *m) {
    const vae_ws *ws = &m->ws;
    return (ws->cap_x + ws->cap_s + ws->cap_t + ws->cap_qkv + ws->cap_scratch + ws->cap_tap) * sizeof(float) +
           m->tile_bytes;
}

/* --------------------------------------------------------------------- run */

typedef struct vae_run {
    vae_ws *ws;
    float *x, *s;          /* x: current activation [n, c, h, w] in layout blk */
    int64_t n, h, w, c;
    int blk, groups;
    const vae_probe *probe;
    sd_error *err;
} vae_run;

static void swap_xs(vae_run *r) {
    float *p = r->x;
    r->x = r->s;
    r->s = p;
}

/* Hands p ([n, c, h, w] in layout lay) to the probe as NHWC. */
static void tap_at(vae_run *r, const char *name, const float *p, int lay, int64_t h, int64_t w, int64_t c) {
    if (!r->probe || !r->probe->fn) return;
    if (lay != SD_LAYOUT_NHWC) {
        sd_layout_convert(p, lay, r->ws->tap, SD_LAYOUT_NHWC, r->n, c, h * w, 0);
        p = r->ws->tap;
    }
    r->probe->fn(r->probe->user, name, p, r->n, h, w, c);
}

static void tap(vae_run *r, const char *name) { tap_at(r, name, r->x, r->blk, r->h, r->w, r->c); }

/* x = conv(x). */
static int run_conv(vae_run *r, const vae_conv *c) {
    int64_t oh, ow;
    sd_conv2d_out_size(c->k, r->h, r->w, &oh, &ow);
    if (sd_conv2d_forward_blk(c->k, r->x, r->blk, r->n, r->h, r->w, r->s, 0, r->err)) return -1;
    swap_xs(r);
    r->h = oh;
    r->w = ow;
    r->c = c->c_out;
    return 0;
}

/* x = conv(x) for the network's first convolution, reading NCHW in (x_nchw:
 * r->x or the caller's buffer, never r->s) and writing the model's layout. */
static int run_conv_from_nchw(vae_run *r, const vae_conv *c, const float *x_nchw) {
    int64_t oh, ow;
    sd_conv2d_out_size(c->k, r->h, r->w, &oh, &ow);
    if (sd_conv2d_forward_layout(c->k, x_nchw, SD_LAYOUT_NCHW, r->n, r->h, r->w, r->s, r->blk, 0, r->err)) return -1;
    swap_xs(r);
    r->h = oh;
    r->w = ow;
    r->c = c->c_out;
    return 0;
}

/* x = SiLU(GN(x)) (conv_norm_out + conv_act). */
static void run_norm_silu(vae_run *r, const float *gamma, const float *beta) {
    sd_group_norm_ex(r->x, r->blk, r->s, r->blk, r->n, r->h * r->w, r->c, r->groups, VAE_NORM_EPS, gamma, beta, 1);
    swap_xs(r);
}

/* ResnetBlock2D (resnet.py): h = conv1(SiLU(norm1(x))); h = conv2(SiLU(norm2(h)));
 * x = shortcut(x) + h.  Dropout is inference-inert. */
static int run_resnet(vae_run *r, const vae_resnet *p) {
    int64_t hw = r->h * r->w;
    float *t = r->ws->t;
    int blk = r->blk;
    sd_group_norm_ex(r->x, blk, r->s, blk, r->n, hw, p->c_in, r->groups, VAE_NORM_EPS, p->norm1_w, p->norm1_b, 1);
    if (sd_conv2d_forward_blk(p->conv1.k, r->s, blk, r->n, r->h, r->w, t, 0, r->err)) return -1;
    sd_group_norm_ex(t, blk, t, blk, r->n, hw, p->c_out, r->groups, VAE_NORM_EPS, p->norm2_w, p->norm2_b, 1);
    if (p->has_shortcut) {
        if (sd_conv2d_forward_blk(p->shortcut.k, r->x, blk, r->n, r->h, r->w, r->s, 0, r->err)) return -1;
        swap_xs(r);
    }
    r->c = p->c_out;
    return sd_conv2d_forward_blk(p->conv2.k, t, blk, r->n, r->h, r->w, r->x, 1, r->err);
}

/* Attention with AttnProcessor semantics (attention_processor.py): tokens
 * = the h*w pixels, group_norm first, one head of width c, scale
 * dim_head**-0.5, to_out[0], residual added (rescale_output_factor 1).
 * The GroupNorm writes NHWC token rows into s; q, k, v share one [rows, 3c]
 * buffer so each projection is one GEMM; the attention output goes back to
 * s and to_out adds into x (through t and one conversion when x is blocked). */
static void run_attention(vae_run *r, const vae_attention *a) {
    int64_t c = a->c, tokens = r->h * r->w, rows = r->n * tokens;
    float *qkv = r->ws->qkv;
    sd_group_norm_ex(r->x, r->blk, r->s, SD_LAYOUT_NHWC, r->n, tokens, c, r->groups, VAE_NORM_EPS, a->norm_w,
                     a->norm_b, 0);
    sd_linear_ex(r->s, c, a->q_w, a->q_b, rows, c, c, qkv, 3 * c, 0);
    sd_linear_ex(r->s, c, a->k_w, a->k_b, rows, c, c, qkv + c, 3 * c, 0);
    sd_linear_ex(r->s, c, a->v_w, a->v_b, rows, c, c, qkv + 2 * c, 3 * c, 0);
    float scale = (float)pow((double)c, -0.5);
    sd_attention(qkv, 3 * c, qkv + c, 3 * c, qkv + 2 * c, 3 * c, r->n, tokens, tokens, 1, c, scale, 0, r->s, c,
                 r->ws->scratch);
    if (r->blk == SD_LAYOUT_NHWC) {
        sd_linear_ex(r->s, c, a->o_w, a->o_b, rows, c, c, r->x, c, 1);
    } else {
        sd_linear(r->s, a->o_w, a->o_b, rows, c, c, r->ws->t);
        sd_layout_convert(r->ws->t, SD_LAYOUT_NHWC, r->x, r->blk, r->n, c, tokens, 1);
    }
}

/* UNetMidBlock2D: resnets[0], then (attention, resnets[1]). */
static int run_mid(vae_run *r, const vae_mid *m) {
    if (run_resnet(r, &m->res[0])) return -1;
    if (m->has_attn) run_attention(r, &m->attn);
    return run_resnet(r, &m->res[1]);
}

/* DownEncoderBlock2D / UpDecoderBlock2D.  Upsample2D: F.interpolate(
 * scale_factor=2.0, mode="nearest") then conv 3x3; Downsample2D: the
 * asymmetric-padded stride-2 conv prepared at load. */
static int run_level(vae_run *r, const vae_level *lv, int up) {
    for (int j = 0; j < lv->n_res; j++)
        if (run_resnet(r, &lv->res[j])) return -1;
    if (!lv->has_resample) return 0;
    if (up) {
        sd_upsample_nearest_ex(r->x, r->blk, r->n, r->c, r->h, r->w, r->s, 2 * r->h, 2 * r->w);
        swap_xs(r);
        r->h *= 2;
        r->w *= 2;
    }
    return run_conv(r, &lv->resample);
}

static vae_run run_start(vae_model *m, int64_t n, int64_t h, int64_t w, int64_t c, const vae_probe *probe,
                         sd_error *err) {
    vae_run r = {.ws = &m->ws, .x = m->ws.x, .s = m->ws.s, .n = n, .h = h, .w = w, .c = c, .blk = m->blk,
                 .groups = m->cfg.norm_num_groups, .probe = probe, .err = err};
    return r;
}

static int probed(const vae_probe *p) { return p && p->fn; }

/* ------------------------------------------------------------------ decode */

void vae_decode_out_size(const vae_model *m, int64_t h, int64_t w, int64_t *ih, int64_t *iw) {
    int64_t f = (int64_t)1 << (m->cfg.n_levels - 1);
    *ih = h * f;
    *iw = w * f;
}

/* From z = latents / scaling_factor (NCHW in r->x) to the decoder output
 * (r->x in the model's layout). */
static int decode_run(vae_model *m, vae_run *r) {
    const vae_coder *d = &m->dec;
    char name[64];
    /* post_quant_conv (1x1, latent channels) stays NCHW, so that conv_in reads NCHW */
    if (sd_conv2d_forward_layout(m->post_quant_conv.k, r->x, SD_LAYOUT_NCHW, r->n, r->h, r->w, r->s,
                                 SD_LAYOUT_NCHW, 0, r->err))
        return -1;
    swap_xs(r);
    tap_at(r, "post_quant_conv", r->x, SD_LAYOUT_NCHW, r->h, r->w, r->c);
    if (run_conv_from_nchw(r, &d->conv_in, r->x)) return -1;
    tap(r, "decoder.conv_in");
    if (run_mid(r, &d->mid)) return -1;
    tap(r, "decoder.mid_block");
    for (int i = 0; i < m->cfg.n_levels; i++) {
        if (run_level(r, &d->levels[i], 1)) return -1;
        snprintf(name, sizeof name, "decoder.up_blocks.%d", i);
        tap(r, name);
    }
    run_norm_silu(r, d->norm_out_w, d->norm_out_b);
    if (run_conv(r, &d->conv_out)) return -1;
    tap(r, "decoder.conv_out");
    return 0;
}

int vae_decode_latents(vae_model *m, const float *latents, int64_t n, int64_t h, int64_t w, float *image,
                       const vae_probe *probe, sd_error *err) {
    if (!m->dec.loaded) return sd_fail(err, "vae: decode needs the decoder (load with VAE_PART_DECODER)");
    if (n < 1 || h < 1 || w < 1)
        return sd_fail(err, "vae: decode: bad latent shape [%lld, %d, %lld, %lld]", (long long)n,
                       m->cfg.latent_channels, (long long)h, (long long)w);
    vae_need nd = {0};
    plan_decoder(m, n, h, w, &nd);
    if (ws_reserve(&m->ws, &nd, probed(probe), err)) return -1;
    int64_t lc = m->cfg.latent_channels, count = n * h * w * lc;
    vae_run r = run_start(m, n, h, w, lc, probe, err);
    /* the pipeline's `latents / scaling_factor`: a float32 division, not a
     * multiplication by the reciprocal */
    float sf = (float)m->cfg.scaling_factor;
    for (int64_t i = 0; i < count; i++) r.x[i] = latents[i] / sf;
    tap_at(&r, "decoder_input", r.x, SD_LAYOUT_NCHW, h, w, lc);
    if (decode_run(m, &r)) return sd_error_prefix(err, "vae: decode");
    sd_layout_convert(r.x, r.blk, image, SD_LAYOUT_NCHW, r.n, r.c, r.h * r.w, 0);
    return 0;
}

/* ------------------------------------------------------------------ encode */

void vae_encode_out_size(const vae_model *m, int64_t h, int64_t w, int64_t *lh, int64_t *lw) {
    for (int i = 0; i < m->cfg.n_levels - 1; i++) {
        h = down_size(h);
        w = down_size(w);
    }
    *lh = h;
    *lw = w;
}

/* From the NCHW image to quant_conv's moments (r->x in the model's layout). */
static int encode_run(vae_model *m, vae_run *r, const float *image) {
    const vae_coder *e = &m->enc;
    char name[64];
    if (run_conv_from_nchw(r, &e->conv_in, image)) return -1;
    tap(r, "encoder.conv_in");
    for (int i = 0; i < m->cfg.n_levels; i++) {
        if (run_level(r, &e->levels[i], 0)) return -1;
        snprintf(name, sizeof name, "encoder.down_blocks.%d", i);
        tap(r, name);
    }
    if (run_mid(r, &e->mid)) return -1;
    tap(r, "encoder.mid_block");
    run_norm_silu(r, e->norm_out_w, e->norm_out_b);
    if (run_conv(r, &e->conv_out)) return -1;
    tap(r, "encoder.conv_out");
    if (run_conv(r, &m->quant_conv)) return -1;
    tap(r, "quant_conv");
    return 0;
}

/* DiagonalGaussianDistribution (vae.py): mean, logvar = moments.chunk(2, 1);
 * logvar = clamp(logvar, -30, 20); std = exp(0.5 * logvar).  moments is
 * NCHW [n, 2L, hw]. */
static void split_moments(const float *moments, int64_t n, int64_t lc, int64_t hw, float *mean, float *logvar,
                          float *std) {
    for (int64_t b = 0; b < n; b++) {
        const float *mu = moments + b * 2 * lc * hw, *lv = mu + lc * hw;
        int64_t o = b * lc * hw;
        if (mean) memcpy(mean + o, mu, (size_t)(lc * hw) * sizeof(float));
        for (int64_t i = 0; i < lc * hw; i++) {
            float v = fminf(fmaxf(lv[i], -30.0f), 20.0f);
            if (logvar) logvar[o + i] = v;
            if (std) std[o + i] = expf(0.5f * v);
        }
    }
}

int vae_encode_image(vae_model *m, const float *image, int64_t n, int64_t h, int64_t w, float *mean,
                     float *logvar, float *std, const vae_probe *probe, sd_error *err) {
    if (!m->enc.loaded) return sd_fail(err, "vae: encode needs the encoder (load with VAE_PART_ENCODER)");
    if (n < 1 || h < 1 || w < 1)
        return sd_fail(err, "vae: encode: bad image shape [%lld, %d, %lld, %lld]", (long long)n,
                       m->cfg.in_channels, (long long)h, (long long)w);
    vae_need nd = {0};
    if (plan_encoder(m, n, h, w, &nd, err) || ws_reserve(&m->ws, &nd, probed(probe), err)) return -1;
    vae_run r = run_start(m, n, h, w, m->cfg.in_channels, probe, err);
    if (encode_run(m, &r, image)) return sd_error_prefix(err, "vae: encode");
    sd_layout_convert(r.x, r.blk, r.s, SD_LAYOUT_NCHW, r.n, r.c, r.h * r.w, 0);
    split_moments(r.s, r.n, m->cfg.latent_channels, r.h * r.w, mean, logvar, std);
    return 0;
}
