/* vae/vae_forward — AutoencoderKL decode and encode on NHWC activations.
 *
 * One run walks the network with three activation buffers: x (the current
 * tensor), s (its spare: GroupNorm outputs, upsampled maps, conv outputs
 * that change the shape, after which x and s swap) and t (a resnet's conv1
 * output).  Residual adds are fused into the convolution or linear layer
 * that produces the second operand.  The sizes are planned from the config
 * and (batch, h, w) before the run; the buffers only grow. */
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

/* Downsample2D(padding=0): F.pad(0, 1, 0, 1) then 3x3 stride 2 -> (in - 2) / 2 + 1. */
static int64_t down_size(int64_t in) { return in >= 2 ? (in - 2) / 2 + 1 : 0; }

static void plan_resnets(vae_need *nd, const vae_level *lv, int64_t n, int64_t hw) {
    for (int j = 0; j < lv->n_res; j++) {
        const vae_resnet *r = &lv->res[j];
        need(&nd->act, n * hw * (r->c_in > r->c_out ? r->c_in : r->c_out));
        need(&nd->t, n * hw * r->c_out);
    }
}

static void plan_mid(vae_need *nd, const vae_mid *m, int64_t n, int64_t hw) {
    int64_t c = m->res[0].c_in;
    need(&nd->act, n * hw * c);
    need(&nd->t, n * hw * c);
    if (!m->has_attn) return;
    need(&nd->qkv, 3 * n * hw * c);
    need(&nd->scratch, sd_attention_scratch_floats(hw, hw, c));
}

static void plan_decoder(const vae_model *m, int64_t n, int64_t h, int64_t w, vae_need *nd) {
    const vae_coder *d = &m->dec;
    need(&nd->act, n * h * w * m->cfg.latent_channels);
    plan_mid(nd, &d->mid, n, h * w);
    for (int i = 0; i < m->cfg.n_levels; i++) {
        const vae_level *lv = &d->levels[i];
        plan_resnets(nd, lv, n, h * w);
        if (!lv->has_resample) continue;
        h *= 2;
        w *= 2;
        need(&nd->act, n * h * w * lv->res[0].c_out);
    }
    need(&nd->act, n * h * w * m->cfg.out_channels);
}

static int plan_encoder(const vae_model *m, int64_t n, int64_t h, int64_t w, vae_need *nd, sd_error *err) {
    const vae_coder *e = &m->enc;
    need(&nd->act, n * h * w * (m->cfg.in_channels > e->conv_in.c_out ? m->cfg.in_channels : e->conv_in.c_out));
    for (int i = 0; i < m->cfg.n_levels; i++) {
        const vae_level *lv = &e->levels[i];
        plan_resnets(nd, lv, n, h * w);
        if (!lv->has_resample) continue;
        if (h < 2 || w < 2)
            return sd_fail(err, "vae: encode: image too small: %lldx%lld at down block %d, need at least 2x2",
                           (long long)h, (long long)w, i);
        h = down_size(h);
        w = down_size(w);
        need(&nd->act, n * h * w * lv->res[0].c_out);
    }
    plan_mid(nd, &e->mid, n, h * w);
    need(&nd->act, n * h * w * 2 * m->cfg.latent_channels);
    return 0;
}

/* --------------------------------------------------------------- workspace */

static int grow(float **buf, size_t *cap, size_t want, sd_error *err) {
    if (want <= *cap) return 0;
    free(*buf);
    *cap = 0;
    size_t bytes = (want * sizeof(float) + 63) & ~(size_t)63;
    *buf = aligned_alloc(64, bytes);
    if (!*buf) return sd_fail(err, "vae: out of memory (%zu MB activation buffer)", bytes >> 20);
    *cap = want;
    return 0;
}

static int ws_reserve(vae_ws *ws, const vae_need *nd, sd_error *err) {
    return grow(&ws->x, &ws->cap_x, nd->act, err) || grow(&ws->s, &ws->cap_s, nd->act, err) ||
           grow(&ws->t, &ws->cap_t, nd->t, err) || grow(&ws->qkv, &ws->cap_qkv, nd->qkv, err) ||
           grow(&ws->scratch, &ws->cap_scratch, nd->scratch, err);
}

void vae_ws_free(vae_ws *ws) {
    free(ws->x);
    free(ws->s);
    free(ws->t);
    free(ws->qkv);
    free(ws->scratch);
    memset(ws, 0, sizeof *ws);
}

/* --------------------------------------------------------------------- run */

typedef struct vae_run {
    vae_ws *ws;
    float *x, *s;          /* x: current activation NHWC [n, h, w, c] */
    int64_t n, h, w, c;
    int groups;
    const vae_probe *probe;
    sd_error *err;
} vae_run;

static void swap_xs(vae_run *r) {
    float *p = r->x;
    r->x = r->s;
    r->s = p;
}

static void tap(vae_run *r, const char *name) {
    if (r->probe && r->probe->fn) r->probe->fn(r->probe->user, name, r->x, r->n, r->h, r->w, r->c);
}

/* x = conv(x). */
static int run_conv(vae_run *r, const vae_conv *c) {
    int64_t oh, ow;
    sd_conv2d_out_size(c->k, r->h, r->w, &oh, &ow);
    if (sd_conv2d_forward(c->k, r->x, r->n, r->h, r->w, r->s, r->err)) return -1;
    swap_xs(r);
    r->h = oh;
    r->w = ow;
    r->c = c->c_out;
    return 0;
}

/* x = SiLU(GN(x)) (conv_norm_out + conv_act). */
static void run_norm_silu(vae_run *r, const float *gamma, const float *beta) {
    sd_group_norm(r->x, r->n, r->h * r->w, r->c, r->groups, VAE_NORM_EPS, gamma, beta, r->s, 1);
    swap_xs(r);
}

/* ResnetBlock2D (resnet.py): h = conv1(SiLU(norm1(x))); h = conv2(SiLU(norm2(h)));
 * x = shortcut(x) + h.  Dropout is inference-inert. */
static int run_resnet(vae_run *r, const vae_resnet *p) {
    int64_t hw = r->h * r->w;
    float *t = r->ws->t;
    sd_group_norm(r->x, r->n, hw, p->c_in, r->groups, VAE_NORM_EPS, p->norm1_w, p->norm1_b, r->s, 1);
    if (sd_conv2d_forward(p->conv1.k, r->s, r->n, r->h, r->w, t, r->err)) return -1;
    sd_group_norm(t, r->n, hw, p->c_out, r->groups, VAE_NORM_EPS, p->norm2_w, p->norm2_b, t, 1);
    if (p->has_shortcut) {
        if (sd_conv2d_forward(p->shortcut.k, r->x, r->n, r->h, r->w, r->s, r->err)) return -1;
        swap_xs(r);
    }
    r->c = p->c_out;
    return sd_conv2d_forward_ex(p->conv2.k, t, p->c_out, r->n, r->h, r->w, r->x, p->c_out, 1, r->err);
}

/* Attention with AttnProcessor semantics (attention_processor.py): tokens
 * = the h*w pixels, group_norm first, one head of width c, scale
 * dim_head**-0.5, to_out[0], residual added (rescale_output_factor 1).
 * q, k, v share one [rows, 3c] buffer so each projection is one GEMM. */
static void run_attention(vae_run *r, const vae_attention *a) {
    int64_t c = a->c, tokens = r->h * r->w, rows = r->n * tokens;
    float *qkv = r->ws->qkv;
    sd_group_norm(r->x, r->n, tokens, c, r->groups, VAE_NORM_EPS, a->norm_w, a->norm_b, r->s, 0);
    sd_linear_ex(r->s, c, a->q_w, a->q_b, rows, c, c, qkv, 3 * c, 0);
    sd_linear_ex(r->s, c, a->k_w, a->k_b, rows, c, c, qkv + c, 3 * c, 0);
    sd_linear_ex(r->s, c, a->v_w, a->v_b, rows, c, c, qkv + 2 * c, 3 * c, 0);
    float scale = (float)pow((double)c, -0.5);
    sd_attention(qkv, 3 * c, qkv + c, 3 * c, qkv + 2 * c, 3 * c, r->n, tokens, tokens, 1, c, scale, 0, r->s, c,
                 r->ws->scratch);
    sd_linear_ex(r->s, c, a->o_w, a->o_b, rows, c, c, r->x, c, 1);
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
        sd_upsample_nearest(r->x, r->n, r->h, r->w, r->c, r->s, 2 * r->h, 2 * r->w, r->c);
        swap_xs(r);
        r->h *= 2;
        r->w *= 2;
    }
    return run_conv(r, &lv->resample);
}

static vae_run run_start(vae_model *m, int64_t n, int64_t h, int64_t w, int64_t c, const vae_probe *probe,
                         sd_error *err) {
    vae_run r = {.ws = &m->ws, .x = m->ws.x, .s = m->ws.s, .n = n, .h = h, .w = w, .c = c,
                 .groups = m->cfg.norm_num_groups, .probe = probe, .err = err};
    return r;
}

/* ------------------------------------------------------------------ decode */

void vae_decode_out_size(const vae_model *m, int64_t h, int64_t w, int64_t *ih, int64_t *iw) {
    int64_t f = (int64_t)1 << (m->cfg.n_levels - 1);
    *ih = h * f;
    *iw = w * f;
}

static int decode_run(vae_model *m, vae_run *r) {
    const vae_coder *d = &m->dec;
    char name[64];
    if (run_conv(r, &m->post_quant_conv)) return -1;
    tap(r, "post_quant_conv");
    if (run_conv(r, &d->conv_in)) return -1;
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
    if (ws_reserve(&m->ws, &nd, err)) return -1;
    int64_t lc = m->cfg.latent_channels, count = n * h * w * lc;
    vae_run r = run_start(m, n, h, w, lc, probe, err);
    sd_nchw_to_nhwc(latents, n, lc, h, w, r.x);
    /* the pipeline's `latents / scaling_factor`: a float32 division, not a
     * multiplication by the reciprocal */
    float sf = (float)m->cfg.scaling_factor;
    for (int64_t i = 0; i < count; i++) r.x[i] /= sf;
    tap(&r, "decoder_input");
    if (decode_run(m, &r)) return sd_error_prefix(err, "vae: decode");
    sd_nhwc_to_nchw(r.x, r.n, r.h, r.w, r.c, image);
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

static int encode_run(vae_model *m, vae_run *r) {
    const vae_coder *e = &m->enc;
    char name[64];
    if (run_conv(r, &e->conv_in)) return -1;
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
    if (plan_encoder(m, n, h, w, &nd, err) || ws_reserve(&m->ws, &nd, err)) return -1;
    vae_run r = run_start(m, n, h, w, m->cfg.in_channels, probe, err);
    sd_nchw_to_nhwc(image, n, r.c, h, w, r.x);
    if (encode_run(m, &r)) return sd_error_prefix(err, "vae: encode");
    sd_nhwc_to_nchw(r.x, r.n, r.h, r.w, r.c, r.s);
    split_moments(r.s, r.n, m->cfg.latent_channels, r.h * r.w, mean, logvar, std);
    return 0;
}
