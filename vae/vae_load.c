/* vae/vae_load — AutoencoderKL config and weight binding.
 *
 * Channel bookkeeping follows diffusers v0.27.2 vae.py: the encoder's level
 * i maps block_out_channels[i-1] (conv_in's width for i = 0) to
 * block_out_channels[i] with layers_per_block resnets; the decoder walks the
 * list reversed with layers_per_block + 1 resnets per level; the mid block
 * and both conv_in/conv_out ends sit at block_out_channels[-1] / [0]. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "vae/vae_internal.h"

/* ------------------------------------------------------------------ config */

static int check_block_types(const cJSON *json, const char *file, const char *key, const char *want,
                             int n_levels, sd_error *err) {
    char types[VAE_MAX_LEVELS][64];
    int n = 0;
    if (!sd_json_has(json, key)) { /* diffusers default: one block of the standard type */
        if (n_levels != 1)
            return sd_fail(err, "%s: key '%s' is absent (default: one %s) but block_out_channels has %d entries",
                           file, key, want, n_levels);
        return 0;
    }
    if (sd_json_string_list(json, file, key, types, VAE_MAX_LEVELS, &n, err)) return -1;
    if (n != n_levels)
        return sd_fail(err, "%s: key '%s': %d entries, expected %d (one per block_out_channels entry)", file,
                       key, n, n_levels);
    for (int i = 0; i < n; i++)
        if (strcmp(types[i], want))
            return sd_fail(err, "%s: key '%s'[%d]: '%s' is not supported, expected '%s'", file, key, i, types[i],
                           want);
    return 0;
}

static int read_ints(const cJSON *json, const char *file, vae_config *c, sd_error *err) {
    int levels = 0;
    if (sd_json_int(json, file, "in_channels", 3, &c->in_channels, err) ||
        sd_json_int(json, file, "out_channels", 3, &c->out_channels, err) ||
        sd_json_int(json, file, "latent_channels", 4, &c->latent_channels, err) ||
        sd_json_int(json, file, "layers_per_block", 1, &c->layers_per_block, err) ||
        sd_json_int(json, file, "norm_num_groups", 32, &c->norm_num_groups, err) ||
        sd_json_bool(json, file, "mid_block_add_attention", 1, &c->mid_block_add_attention, err) ||
        sd_json_float(json, file, "scaling_factor", 0.18215, &c->scaling_factor, err) ||
        sd_json_int_list(json, file, "block_out_channels", c->block_out_channels, VAE_MAX_LEVELS, &levels, err))
        return -1;
    if (!sd_json_has(json, "block_out_channels")) {
        c->block_out_channels[0] = 64;
        levels = 1;
    }
    c->n_levels = levels;
    return 0;
}

static int validate(const vae_config *c, const char *file, sd_error *err) {
    if (c->n_levels < 1) return sd_fail(err, "%s: key 'block_out_channels': expected at least one entry", file);
    if (c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1)
        return sd_fail(err, "%s: in_channels, out_channels and latent_channels must be positive", file);
    if (c->layers_per_block < 1) return sd_fail(err, "%s: key 'layers_per_block': expected >= 1", file);
    if (c->norm_num_groups < 1) return sd_fail(err, "%s: key 'norm_num_groups': expected >= 1", file);
    if (!(c->scaling_factor > 0)) return sd_fail(err, "%s: key 'scaling_factor': expected > 0", file);
    for (int i = 0; i < c->n_levels; i++) {
        int ch = c->block_out_channels[i];
        if (ch < 1 || ch % c->norm_num_groups)
            return sd_fail(err, "%s: block_out_channels[%d] = %d: expected a positive multiple of norm_num_groups %d",
                           file, i, ch, c->norm_num_groups);
    }
    return 0;
}

int vae_config_from_json(vae_config *cfg, const cJSON *json, const char *file, sd_error *err) {
    vae_config c;
    memset(&c, 0, sizeof c);
    char act[64];
    if (read_ints(json, file, &c, err)) return -1;
    if (sd_json_string(json, file, "act_fn", "silu", act, sizeof act, err)) return -1;
    if (strcmp(act, "silu") && strcmp(act, "swish"))
        return sd_fail(err, "%s: key 'act_fn': '%s' is not supported, expected 'silu'", file, act);
    if (validate(&c, file, err) ||
        check_block_types(json, file, "down_block_types", "DownEncoderBlock2D", c.n_levels, err) ||
        check_block_types(json, file, "up_block_types", "UpDecoderBlock2D", c.n_levels, err))
        return -1;
    *cfg = c;
    return 0;
}

/* ----------------------------------------------------------------- binding */

#define NAME_CAP 256

/* Formats a tensor name into buf[NAME_CAP].  Names are built from fixed
 * fields and small indices (< 100 characters), so they always fit. */
static __attribute__((format(printf, 2, 3))) char *fmt_name(char *buf, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, NAME_CAP, fmt, ap);
    va_end(ap);
    return buf;
}

typedef struct loader {
    sd_binder *b;
    int build;      /* 1: create the convolutions of the half being bound */
    sd_error *err;
} loader;

static int bind_f32(loader *L, const char *name, int ndim, const int64_t *shape, const float **out) {
    sd_tensor t;
    if (sd_bind(L->b, &t, name, ndim, shape, L->err)) return -1;
    *out = sd_tensor_f32(&t, L->err);
    return *out ? 0 : -1;
}

static int bind_vec(loader *L, const char *prefix, const char *leaf, int64_t c, const float **out) {
    char name[NAME_CAP];
    fmt_name(name, "%s.%s", prefix, leaf);
    return bind_f32(L, name, 1, &c, out);
}

/* <prefix>.weight [c, c] and <prefix>.bias [c]. */
static int bind_linear(loader *L, const char *prefix, int64_t c, const float **w, const float **b) {
    int64_t shape[2] = {c, c};
    char name[NAME_CAP];
    fmt_name(name, "%s.weight", prefix);
    if (bind_f32(L, name, 2, shape, w)) return -1;
    return bind_vec(L, prefix, "bias", c, b);
}

/* <prefix>.weight [c_out, c_in, k, k] and .bias; builds the oneDNN
 * convolution (stride, padding top/left/bottom/right) when L->build. */
static int bind_conv(loader *L, const char *prefix, int64_t c_in, int64_t c_out, int64_t k, int64_t stride,
                     const int64_t pad[4], vae_conv *out) {
    int64_t shape[4] = {c_out, c_in, k, k};
    char name[NAME_CAP];
    const float *b;
    sd_tensor w;
    sd_binder lazy = *L->b; /* converted only when built and not in the weight cache */
    lazy.lazy = 1;
    fmt_name(name, "%s.weight", prefix);
    if (sd_bind(&lazy, &w, name, 4, shape, L->err) || bind_vec(L, prefix, "bias", c_out, &b)) return -1;
    out->c_in = c_in;
    out->c_out = c_out;
    if (!L->build) return 0;
    sd_conv2d_desc d = {.c_in = c_in, .c_out = c_out, .kh = k, .kw = k, .stride_h = stride, .stride_w = stride,
                        .pad_t = pad[0], .pad_l = pad[1], .pad_b = pad[2], .pad_r = pad[3]};
    if (sd_conv2d_create_bound(&out->k, &d, &w, b, L->b->cache, name, L->err))
        return sd_error_prefix(L->err, "vae: %s", prefix);
    return 0;
}

static const int64_t PAD_SAME3[4] = {1, 1, 1, 1};
static const int64_t PAD_NONE[4] = {0, 0, 0, 0};
/* Downsample2D with padding 0: F.pad(x, (0, 1, 0, 1)) then stride-2 conv. */
static const int64_t PAD_DOWN[4] = {0, 0, 1, 1};

static int bind_resnet(loader *L, const char *prefix, int64_t c_in, int64_t c_out, vae_resnet *r) {
    char name[NAME_CAP];
    r->c_in = c_in;
    r->c_out = c_out;
    fmt_name(name, "%s.norm1", prefix);
    if (bind_vec(L, name, "weight", c_in, &r->norm1_w) || bind_vec(L, name, "bias", c_in, &r->norm1_b)) return -1;
    fmt_name(name, "%s.norm2", prefix);
    if (bind_vec(L, name, "weight", c_out, &r->norm2_w) || bind_vec(L, name, "bias", c_out, &r->norm2_b))
        return -1;
    fmt_name(name, "%s.conv1", prefix);
    if (bind_conv(L, name, c_in, c_out, 3, 1, PAD_SAME3, &r->conv1)) return -1;
    fmt_name(name, "%s.conv2", prefix);
    if (bind_conv(L, name, c_out, c_out, 3, 1, PAD_SAME3, &r->conv2)) return -1;
    r->has_shortcut = c_in != c_out;
    if (!r->has_shortcut) return 0;
    fmt_name(name, "%s.conv_shortcut", prefix);
    return bind_conv(L, name, c_in, c_out, 1, 1, PAD_NONE, &r->shortcut);
}

static int bind_attention(loader *L, const char *prefix, int64_t c, vae_attention *a) {
    char name[NAME_CAP];
    a->c = c;
    fmt_name(name, "%s.group_norm", prefix);
    if (bind_vec(L, name, "weight", c, &a->norm_w) || bind_vec(L, name, "bias", c, &a->norm_b)) return -1;
    const char *leaf[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    const float **w[4] = {&a->q_w, &a->k_w, &a->v_w, &a->o_w};
    const float **b[4] = {&a->q_b, &a->k_b, &a->v_b, &a->o_b};
    for (int i = 0; i < 4; i++) {
        fmt_name(name, "%s.%s", prefix, leaf[i]);
        if (bind_linear(L, name, c, w[i], b[i])) return -1;
    }
    return 0;
}

static int bind_mid(loader *L, const char *coder, int64_t c, int add_attention, vae_mid *m) {
    char name[NAME_CAP];
    for (int j = 0; j < 2; j++) {
        fmt_name(name, "%s.mid_block.resnets.%d", coder, j);
        if (bind_resnet(L, name, c, c, &m->res[j])) return -1;
    }
    m->has_attn = add_attention;
    if (!add_attention) return 0;
    fmt_name(name, "%s.mid_block.attentions.0", coder);
    return bind_attention(L, name, c, &m->attn);
}

/* One DownEncoderBlock2D (down = 1) or UpDecoderBlock2D (down = 0). */
static int bind_level(loader *L, const char *prefix, int down, int n_res, int64_t c_in, int64_t c_out,
                      int resample, vae_level *lv) {
    char name[NAME_CAP];
    lv->n_res = n_res;
    lv->res = calloc((size_t)n_res, sizeof *lv->res);
    if (!lv->res) return sd_fail(L->err, "vae: out of memory");
    for (int j = 0; j < n_res; j++) {
        fmt_name(name, "%s.resnets.%d", prefix, j);
        if (bind_resnet(L, name, j ? c_out : c_in, c_out, &lv->res[j])) return -1;
    }
    lv->has_resample = resample;
    if (!resample) return 0;
    fmt_name(name, "%s.%s.0.conv", prefix, down ? "downsamplers" : "upsamplers");
    return bind_conv(L, name, c_out, c_out, 3, down ? 2 : 1, down ? PAD_DOWN : PAD_SAME3, &lv->resample);
}

static int bind_encoder(loader *L, const vae_config *c, vae_coder *e) {
    const int *ch = c->block_out_channels;
    int n = c->n_levels;
    char name[NAME_CAP];
    if (bind_conv(L, "encoder.conv_in", c->in_channels, ch[0], 3, 1, PAD_SAME3, &e->conv_in)) return -1;
    for (int i = 0; i < n; i++) {
        fmt_name(name, "encoder.down_blocks.%d", i);
        if (bind_level(L, name, 1, c->layers_per_block, i ? ch[i - 1] : ch[0], ch[i], i < n - 1, &e->levels[i]))
            return -1;
    }
    if (bind_mid(L, "encoder", ch[n - 1], c->mid_block_add_attention, &e->mid) ||
        bind_vec(L, "encoder.conv_norm_out", "weight", ch[n - 1], &e->norm_out_w) ||
        bind_vec(L, "encoder.conv_norm_out", "bias", ch[n - 1], &e->norm_out_b))
        return -1;
    /* double_z: conv_out gives mean and logvar channels */
    return bind_conv(L, "encoder.conv_out", ch[n - 1], 2 * c->latent_channels, 3, 1, PAD_SAME3, &e->conv_out);
}

static int bind_decoder(loader *L, const vae_config *c, vae_coder *d) {
    const int *ch = c->block_out_channels;
    int n = c->n_levels;
    char name[NAME_CAP];
    if (bind_conv(L, "decoder.conv_in", c->latent_channels, ch[n - 1], 3, 1, PAD_SAME3, &d->conv_in) ||
        bind_mid(L, "decoder", ch[n - 1], c->mid_block_add_attention, &d->mid))
        return -1;
    for (int i = 0; i < n; i++) {
        int64_t c_in = ch[n - 1 - (i ? i - 1 : 0)], c_out = ch[n - 1 - i];
        fmt_name(name, "decoder.up_blocks.%d", i);
        if (bind_level(L, name, 0, c->layers_per_block + 1, c_in, c_out, i < n - 1, &d->levels[i])) return -1;
    }
    if (bind_vec(L, "decoder.conv_norm_out", "weight", ch[0], &d->norm_out_w) ||
        bind_vec(L, "decoder.conv_norm_out", "bias", ch[0], &d->norm_out_b))
        return -1;
    return bind_conv(L, "decoder.conv_out", ch[0], c->out_channels, 3, 1, PAD_SAME3, &d->conv_out);
}

int vae_load(vae_model **out, const vae_config *cfg, sd_binder *b, int parts, sd_error *err) {
    *out = NULL;
    vae_model *m = calloc(1, sizeof *m);
    if (!m) return sd_fail(err, "vae: out of memory");
    m->cfg = *cfg;
    m->blk = sd_preferred_layout();
    int64_t L2 = 2 * (int64_t)cfg->latent_channels, L1 = cfg->latent_channels;
    loader L = {.b = b, .build = (parts & VAE_PART_ENCODER) != 0, .err = err};
    int rc = bind_encoder(&L, cfg, &m->enc) || bind_conv(&L, "quant_conv", L2, L2, 1, 1, PAD_NONE, &m->quant_conv);
    m->enc.loaded = L.build;
    L.build = (parts & VAE_PART_DECODER) != 0;
    rc = rc || bind_conv(&L, "post_quant_conv", L1, L1, 1, 1, PAD_NONE, &m->post_quant_conv) ||
         bind_decoder(&L, cfg, &m->dec);
    m->dec.loaded = L.build;
    if (rc) {
        vae_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

/* ----------------------------------------------------------------- freeing */

static void conv_free(vae_conv *c) {
    if (c->k) sd_conv2d_free(c->k);
    c->k = NULL;
}

static void resnet_free(vae_resnet *r) {
    conv_free(&r->conv1);
    conv_free(&r->conv2);
    conv_free(&r->shortcut);
}

static void coder_free(vae_coder *c) {
    conv_free(&c->conv_in);
    conv_free(&c->conv_out);
    for (int j = 0; j < 2; j++) resnet_free(&c->mid.res[j]);
    for (int i = 0; i < VAE_MAX_LEVELS; i++) {
        vae_level *lv = &c->levels[i];
        for (int j = 0; lv->res && j < lv->n_res; j++) resnet_free(&lv->res[j]);
        free(lv->res);
        conv_free(&lv->resample);
    }
}

void vae_free(vae_model *m) {
    if (!m) return;
    coder_free(&m->enc);
    coder_free(&m->dec);
    conv_free(&m->quant_conv);
    conv_free(&m->post_quant_conv);
    vae_ws_free(&m->ws);
    free(m);
}

const vae_config *vae_model_config(const vae_model *m) { return &m->cfg; }

int vae_set_layout(vae_model *m, int blk, sd_error *err) {
    if (blk != SD_LAYOUT_NHWC && blk != 8 && blk != 16)
        return sd_fail(err, "vae: layout %d is not NHWC (0), 8 or 16", blk);
    m->blk = blk;
    return 0;
}

int vae_get_layout(const vae_model *m) { return m->blk; }
