/* unet/unet_load — binds the UNet2DConditionModel weights by diffusers name
 * (shapes from the config), prepares the oneDNN convolutions, and binds
 * SegMoE layers where the config and the file say so. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/memory.h"
#include "unet/moe_layer.h"
#include "unet/unet_internal.h"

/* Formats a tensor / module name.  A name too long for the buffer is cut
 * (it then fails to bind with a message naming it). */
static void name_fmt(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void name_fmt(char *out, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

/* Binding context: the binder, the error and the current name prefix. */
typedef struct loader {
    sd_unet *u;
    sd_binder *b;
    sd_error *err;
} loader;

/* Binds "<prefix>.<suffix>" with the given dims and makes its f32 data ready
 * (a lazy binder converts here, once, outside any parallel region). */
static int bind_t(loader *L, sd_tensor *t, const char *prefix, const char *suffix, int ndim, int64_t d0,
                  int64_t d1, int64_t d2, int64_t d3) {
    char name[320];
    name_fmt(name, sizeof name, "%s.%s", prefix, suffix);
    int64_t shape[4] = {d0, d1, d2, d3};
    if (sd_bind(L->b, t, name, ndim, shape, L->err)) return -1;
    if (!sd_tensor_f32(t, L->err)) return sd_error_prefix(L->err, "unet: %s", name);
    return 0;
}

static int bind_dense(loader *L, sd_dense *d, const char *prefix, int64_t out, int64_t in, int bias) {
    if (bind_t(L, &d->w, prefix, "weight", 2, out, in, 0, 0)) return -1;
    if (bias && bind_t(L, &d->b, prefix, "bias", 1, out, 0, 0, 0)) return -1;
    return 0;
}

/* A 1x1 conv (SD1 proj_in/out) or a linear (SD2), both used as a dense layer on NHWC rows. */
static int bind_proj_io(loader *L, sd_dense *d, const char *prefix, int64_t out, int64_t in) {
    if (L->u->cfg.use_linear_projection) return bind_dense(L, d, prefix, out, in, 1);
    if (bind_t(L, &d->w, prefix, "weight", 4, out, in, 1, 1)) return -1;
    return bind_t(L, &d->b, prefix, "bias", 1, out, 0, 0, 0);
}

/* conv "<prefix>" [co, ci, k, k] + bias, prepared for oneDNN.  The weight is
 * bound lazily: with a weight cache hit it is never converted nor read. */
static int bind_conv(loader *L, sd_tensor *w, sd_tensor *b, sd_conv2d **conv, const char *prefix, int64_t co,
                     int64_t ci, int64_t k, int64_t stride, int64_t pad_tl, int64_t pad_br) {
    char name[320];
    name_fmt(name, sizeof name, "%s.weight", prefix);
    int64_t shape[4] = {co, ci, k, k};
    sd_binder lazy = *L->b;
    lazy.lazy = 1;
    if (sd_bind(&lazy, w, name, 4, shape, L->err) || bind_t(L, b, prefix, "bias", 1, co, 0, 0, 0)) return -1;
    sd_conv2d_desc d = {ci, co, k, k, stride, stride, pad_tl, pad_tl, pad_br, pad_br};
    if (sd_conv2d_create_bound(conv, &d, w, b->data, L->b->cache, name, L->err))
        return sd_error_prefix(L->err, "unet: %s", prefix);
    return 0;
}

static int bind_resnet(loader *L, sd_unet_resnet *r, const char *prefix, int64_t c_in, int64_t c_out, float scale) {
    char p[320];
    int64_t temb = L->u->cfg.time_embed_dim;
    r->c_in = c_in, r->c_out = c_out, r->out_scale = scale;
    name_fmt(p, sizeof p, "%s.norm1", prefix);
    if (bind_t(L, &r->norm1_w, p, "weight", 1, c_in, 0, 0, 0) || bind_t(L, &r->norm1_b, p, "bias", 1, c_in, 0, 0, 0))
        return -1;
    name_fmt(p, sizeof p, "%s.conv1", prefix);
    if (bind_conv(L, &r->conv1_w, &r->conv1_b, &r->conv1, p, c_out, c_in, 3, 1, 1, 1)) return -1;
    name_fmt(p, sizeof p, "%s.time_emb_proj", prefix);
    if (bind_dense(L, &r->time_emb_proj, p, c_out, temb, 1)) return -1;
    name_fmt(p, sizeof p, "%s.norm2", prefix);
    if (bind_t(L, &r->norm2_w, p, "weight", 1, c_out, 0, 0, 0) ||
        bind_t(L, &r->norm2_b, p, "bias", 1, c_out, 0, 0, 0))
        return -1;
    name_fmt(p, sizeof p, "%s.conv2", prefix);
    if (bind_conv(L, &r->conv2_w, &r->conv2_b, &r->conv2, p, c_out, c_out, 3, 1, 1, 1)) return -1;
    if (c_in != c_out) { /* use_in_shortcut */
        name_fmt(p, sizeof p, "%s.conv_shortcut", prefix);
        if (bind_conv(L, &r->short_w, &r->short_b, &r->conv_shortcut, p, c_out, c_in, 1, 1, 0, 0)) return -1;
    }
    return 0;
}

/* to_q/to_k/to_v: dense [out, in] without bias, or an MoE when allowed and gated in the file. */
static int bind_qkv(loader *L, sd_proj *p, const char *prefix, int64_t out, int64_t in, int moe_ok) {
    char gate[320];
    name_fmt(gate, sizeof gate, "%s.gate.weight", prefix);
    if (moe_ok && sd_binder_has(L->b, gate)) {
        const sd_unet_config *c = &L->u->cfg;
        if (sd_moe_bind_proj(&p->moe, L->b, prefix, c->moe_num_experts, c->moe_top_k, in, out, L->err)) return -1;
        L->u->n_moe++;
        return 0;
    }
    return bind_t(L, &p->dense.w, prefix, "weight", 2, out, in, 0, 0);
}

static int bind_attention(loader *L, sd_unet_attention *a, const char *prefix, int heads, int64_t dim,
                          int64_t kv_dim, int moe_attn) {
    char p[320];
    a->heads = heads, a->dim = dim, a->head_dim = dim / heads, a->kv_dim = kv_dim;
    name_fmt(p, sizeof p, "%s.to_q", prefix);
    if (bind_qkv(L, &a->to_q, p, dim, dim, moe_attn)) return -1;
    name_fmt(p, sizeof p, "%s.to_k", prefix);
    if (bind_qkv(L, &a->to_k, p, dim, kv_dim, moe_attn)) return -1;
    name_fmt(p, sizeof p, "%s.to_v", prefix);
    if (bind_qkv(L, &a->to_v, p, dim, kv_dim, moe_attn)) return -1;
    name_fmt(p, sizeof p, "%s.to_out.0", prefix);
    return bind_dense(L, &a->to_out, p, dim, dim, 1);
}

static int bind_norm(loader *L, sd_tensor *w, sd_tensor *b, const char *prefix, const char *which, int64_t dim) {
    char p[320];
    if (prefix[0]) name_fmt(p, sizeof p, "%s.%s", prefix, which);
    else name_fmt(p, sizeof p, "%s", which);
    return bind_t(L, w, p, "weight", 1, dim, 0, 0, 0) || bind_t(L, b, p, "bias", 1, dim, 0, 0, 0) ? -1 : 0;
}

static int bind_tblock(loader *L, sd_unet_tblock *t, const char *prefix, int heads, int64_t dim, int64_t ctx_dim,
                       int moe_covered) {
    const sd_unet_config *c = &L->u->cfg;
    char p[320];
    name_fmt(t->name, sizeof t->name, "%s", prefix);
    int moe_attn = moe_covered && c->moe_attn, moe_ff = moe_covered && c->moe_ff;
    if (bind_norm(L, &t->norm1_w, &t->norm1_b, prefix, "norm1", dim)) return -1;
    name_fmt(p, sizeof p, "%s.attn1", prefix);
    if (bind_attention(L, &t->attn1, p, heads, dim, dim, moe_attn)) return -1;
    if (bind_norm(L, &t->norm2_w, &t->norm2_b, prefix, "norm2", dim)) return -1;
    name_fmt(p, sizeof p, "%s.attn2", prefix);
    if (bind_attention(L, &t->attn2, p, heads, dim, ctx_dim, moe_attn)) return -1;
    if (bind_norm(L, &t->norm3_w, &t->norm3_b, prefix, "norm3", dim)) return -1;
    /* FeedForward(dim, mult=4, activation "geglu"): inner = 4 dim */
    int64_t inner = 4 * dim;
    name_fmt(p, sizeof p, "%s.ff.gate.weight", prefix);
    if (moe_ff && sd_binder_has(L->b, p)) {
        name_fmt(p, sizeof p, "%s.ff", prefix);
        if (sd_moe_bind_ff(&t->ff.moe, L->b, p, c->moe_num_experts, c->moe_top_k, dim, inner, L->err)) return -1;
        L->u->n_moe++;
        return 0;
    }
    name_fmt(p, sizeof p, "%s.ff.net.0.proj", prefix);
    if (bind_dense(L, &t->ff.dense.proj, p, 2 * inner, dim, 1)) return -1;
    name_fmt(p, sizeof p, "%s.ff.net.2", prefix);
    return bind_dense(L, &t->ff.dense.out, p, dim, inner, 1);
}

static int bind_transformer(loader *L, sd_unet_transformer *tr, const char *prefix, int64_t channels, int heads,
                            int depth, int64_t ctx_dim, int moe_covered) {
    char p[320];
    tr->channels = channels, tr->inner = channels, tr->groups = L->u->cfg.norm_num_groups;
    if (bind_norm(L, &tr->norm_w, &tr->norm_b, prefix, "norm", channels)) return -1;
    name_fmt(p, sizeof p, "%s.proj_in", prefix);
    if (bind_proj_io(L, &tr->proj_in, p, tr->inner, channels)) return -1;
    tr->blocks = calloc((size_t)depth, sizeof *tr->blocks);
    if (!tr->blocks) return sd_fail(L->err, "unet: out of memory");
    tr->n_blocks = depth;
    for (int k = 0; k < depth; k++) {
        name_fmt(p, sizeof p, "%s.transformer_blocks.%d", prefix, k);
        if (bind_tblock(L, &tr->blocks[k], p, heads, tr->inner, ctx_dim, moe_covered)) return -1;
    }
    name_fmt(p, sizeof p, "%s.proj_out", prefix);
    return bind_proj_io(L, &tr->proj_out, p, channels, tr->inner);
}

static int block_alloc(loader *L, sd_unet_block *blk, int n_res, int n_attn) {
    blk->resnets = calloc((size_t)n_res, sizeof *blk->resnets);
    blk->attn = n_attn ? calloc((size_t)n_attn, sizeof *blk->attn) : NULL;
    if (!blk->resnets || (n_attn && !blk->attn)) return sd_fail(L->err, "unet: out of memory");
    blk->n_resnets = n_res, blk->n_attn = n_attn;
    return 0;
}

static int bind_down(loader *L, int l) {
    const sd_unet_config *c = &L->u->cfg;
    sd_unet_block *blk = &L->u->down[l];
    int64_t in = c->block_out_channels[l > 0 ? l - 1 : 0], out = c->block_out_channels[l];
    int cross = c->down_kind[l] == SD_UNET_BLOCK_CROSS_ATTN, nres = c->layers_per_block[l];
    int moe = c->moe_enabled && l >= c->moe_down_start && l < c->moe_down_end;
    blk->kind = c->down_kind[l], blk->c_out = out;
    if (block_alloc(L, blk, nres, cross ? nres : 0)) return -1;
    char p[320];
    for (int j = 0; j < nres; j++) {
        name_fmt(p, sizeof p, "down_blocks.%d.resnets.%d", l, j);
        if (bind_resnet(L, &blk->resnets[j], p, j ? out : in, out, c->resnet_out_scale_factor)) return -1;
        if (!cross) continue;
        name_fmt(p, sizeof p, "down_blocks.%d.attentions.%d", l, j);
        if (bind_transformer(L, &blk->attn[j], p, out, c->heads[l], c->transformer_layers[l],
                             c->cross_attention_dim[l], moe))
            return -1;
    }
    if (l == c->n_levels - 1) return 0;
    /* Downsample2D: conv stride 2, padding p; p == 0 pads (0,1,0,1) first */
    int64_t pad = c->downsample_padding;
    name_fmt(p, sizeof p, "down_blocks.%d.downsamplers.0.conv", l);
    return bind_conv(L, &blk->sampler_w, &blk->sampler_b, &blk->sampler, p, out, out, 3, 2, pad, pad ? pad : 1);
}

static int bind_mid(loader *L) {
    const sd_unet_config *c = &L->u->cfg;
    int n = c->n_levels;
    int64_t ch = c->block_out_channels[n - 1];
    sd_unet_block *blk = &L->u->mid;
    blk->kind = SD_UNET_BLOCK_CROSS_ATTN, blk->c_out = ch;
    if (block_alloc(L, blk, 2, 1)) return -1; /* UNetMidBlock2DCrossAttn, num_layers 1 */
    if (bind_resnet(L, &blk->resnets[0], "mid_block.resnets.0", ch, ch, c->mid_block_scale_factor)) return -1;
    if (bind_transformer(L, &blk->attn[0], "mid_block.attentions.0", ch, c->heads[n - 1], c->transformer_layers[n - 1],
                         c->cross_attention_dim[n - 1], 0))
        return -1;
    return bind_resnet(L, &blk->resnets[1], "mid_block.resnets.1", ch, ch, c->mid_block_scale_factor);
}

static int bind_up(loader *L, int i) {
    const sd_unet_config *c = &L->u->cfg;
    int n = c->n_levels, lvl = n - 1 - i;
    sd_unet_block *blk = &L->u->up[i];
    int64_t out = c->block_out_channels[lvl];
    int64_t prev = c->block_out_channels[i > 0 ? n - i : n - 1];
    int64_t in = c->block_out_channels[lvl - 1 >= 0 ? lvl - 1 : 0];
    int cross = c->up_kind[i] == SD_UNET_BLOCK_CROSS_ATTN, nres = c->layers_per_block[lvl] + 1;
    int moe = c->moe_enabled && i >= c->moe_up_start && i < c->moe_up_end;
    blk->kind = c->up_kind[i], blk->c_out = out;
    if (block_alloc(L, blk, nres, cross ? nres : 0)) return -1;
    char p[320];
    for (int j = 0; j < nres; j++) {
        int64_t skip = j == nres - 1 ? in : out, res_in = j == 0 ? prev : out;
        name_fmt(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
        if (bind_resnet(L, &blk->resnets[j], p, res_in + skip, out, c->resnet_out_scale_factor)) return -1;
        if (!cross) continue;
        name_fmt(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
        if (bind_transformer(L, &blk->attn[j], p, out, c->heads[lvl], c->up_transformer_layers[i],
                             c->cross_attention_dim[lvl], moe))
            return -1;
    }
    if (i == n - 1) return 0;
    name_fmt(p, sizeof p, "up_blocks.%d.upsamplers.0.conv", i);
    return bind_conv(L, &blk->sampler_w, &blk->sampler_b, &blk->sampler, p, out, out, 3, 1, 1, 1);
}

/* Lists every transformer block in forward order. */
static int index_tblocks(loader *L) {
    sd_unet *u = L->u;
    int n = u->cfg.n_levels, count = 0;
    sd_unet_block *order[2 * SD_UNET_MAX_LEVELS + 1];
    int no = 0;
    for (int l = 0; l < n; l++) order[no++] = &u->down[l];
    if (u->mid.n_resnets) order[no++] = &u->mid;
    for (int i = 0; i < n; i++) order[no++] = &u->up[i];
    for (int pass = 0; pass < 2; pass++) {
        count = 0;
        for (int b = 0; b < no; b++)
            for (int a = 0; a < order[b]->n_attn; a++)
                for (int k = 0; k < order[b]->attn[a].n_blocks; k++) {
                    if (pass) u->tblocks[count] = &order[b]->attn[a].blocks[k];
                    count++;
                }
        if (!pass) {
            u->tblocks = calloc((size_t)(count ? count : 1), sizeof *u->tblocks);
            if (!u->tblocks) return sd_fail(L->err, "unet: out of memory");
        }
    }
    u->n_tblocks = count;
    return 0;
}

static int unet_bind_all(loader *L) {
    sd_unet *u = L->u;
    const sd_unet_config *c = &u->cfg;
    int64_t c0 = c->block_out_channels[0], kin = c->conv_in_kernel, kout = c->conv_out_kernel;
    if (bind_conv(L, &u->conv_in_w, &u->conv_in_b, &u->conv_in, "conv_in", c0, c->in_channels, kin, 1,
                  (kin - 1) / 2, (kin - 1) / 2))
        return -1;
    if (bind_dense(L, &u->time_lin1, "time_embedding.linear_1", c->time_embed_dim, c0, 1) ||
        bind_dense(L, &u->time_lin2, "time_embedding.linear_2", c->time_embed_dim, c->time_embed_dim, 1))
        return -1;
    if (c->add_text_time &&
        (bind_dense(L, &u->add_lin1, "add_embedding.linear_1", c->time_embed_dim, c->add_embed_in, 1) ||
         bind_dense(L, &u->add_lin2, "add_embedding.linear_2", c->time_embed_dim, c->time_embed_dim, 1)))
        return -1;
    for (int l = 0; l < c->n_levels; l++)
        if (bind_down(L, l)) return -1;
    if (c->mid_block && bind_mid(L)) return -1;
    for (int i = 0; i < c->n_levels; i++)
        if (bind_up(L, i)) return -1;
    if (bind_norm(L, &u->norm_out_w, &u->norm_out_b, "", "conv_norm_out", c0)) return -1;
    if (bind_conv(L, &u->conv_out_w, &u->conv_out_b, &u->conv_out, "conv_out", c->out_channels, c0, kout, 1,
                  (kout - 1) / 2, (kout - 1) / 2))
        return -1;
    return index_tblocks(L);
}

int sd_unet_load(sd_unet **out, const sd_unet_config *cfg, sd_binder *b, sd_error *err) {
    *out = NULL;
    sd_unet *u = calloc(1, sizeof *u);
    if (!u) return sd_fail(err, "unet: out of memory");
    u->cfg = *cfg;
    u->blk = sd_preferred_layout();
    int64_t maxc = cfg->time_embed_dim;
    for (int l = 0; l < cfg->n_levels; l++)
        if (cfg->block_out_channels[l] > maxc) maxc = cfg->block_out_channels[l];
    u->maxc = maxc;
    u->tproj = calloc((size_t)cfg->block_out_channels[0], sizeof(float));
    u->temb0 = calloc((size_t)cfg->time_embed_dim, sizeof(float));
    u->temb = calloc((size_t)cfg->time_embed_dim, sizeof(float));
    u->temb_act = calloc((size_t)cfg->time_embed_dim, sizeof(float));
    u->tvec = calloc((size_t)maxc, sizeof(float));
    u->temb_rows_cap = 1;
    if (!u->tproj || !u->temb0 || !u->temb || !u->temb_act || !u->tvec) {
        sd_unet_free(u);
        return sd_fail(err, "unet: out of memory");
    }
    loader L = {u, b, err};
    if (unet_bind_all(&L)) {
        sd_unet_free(u);
        return -1;
    }
    *out = u;
    return 0;
}

static void free_resnet(sd_unet_resnet *r) {
    sd_conv2d_free(r->conv1);
    sd_conv2d_free(r->conv2);
    sd_conv2d_free(r->conv_shortcut);
}

static void free_attention(sd_unet_attention *a) {
    sd_moe_free(a->to_q.moe);
    sd_moe_free(a->to_k.moe);
    sd_moe_free(a->to_v.moe);
}

static void free_block(sd_unet_block *blk) {
    for (int j = 0; blk->resnets && j < blk->n_resnets; j++) free_resnet(&blk->resnets[j]);
    for (int a = 0; blk->attn && a < blk->n_attn; a++) {
        sd_unet_transformer *tr = &blk->attn[a];
        for (int k = 0; tr->blocks && k < tr->n_blocks; k++) {
            free_attention(&tr->blocks[k].attn1);
            free_attention(&tr->blocks[k].attn2);
            sd_moe_free(tr->blocks[k].ff.moe);
            free(tr->blocks[k].kv_cache);
        }
        free(tr->blocks);
    }
    free(blk->resnets);
    free(blk->attn);
    sd_conv2d_free(blk->sampler);
}

void sd_unet_free(sd_unet *u) {
    if (!u) return;
    sd_conv2d_free(u->conv_in);
    sd_conv2d_free(u->conv_out);
    for (int l = 0; l < SD_UNET_MAX_LEVELS; l++) {
        free_block(&u->down[l]);
        free_block(&u->up[l]);
    }
    free_block(&u->mid);
    free(u->tblocks);
    free(u->tproj);
    free(u->temb0);
    free(u->aug);
    free(u->temb);
    free(u->temb_act);
    free(u->tvec);
    sd_scratch_release(&u->ws.own);
    free(u->cap_buf);
    free(u);
}

int sd_unet_set_layout(sd_unet *u, int blk, sd_error *err) {
    if (blk != SD_LAYOUT_NHWC && blk != 8 && blk != 16)
        return sd_fail(err, "unet: layout %d is not NHWC (0), 8 or 16", blk);
    u->blk = blk;
    return 0;
}

int sd_unet_get_layout(const sd_unet *u) { return u->blk; }

const sd_unet_config *sd_unet_get_config(const sd_unet *u) { return &u->cfg; }

sd_unet_block *sd_unet_down_block(sd_unet *u, int i) { return i >= 0 && i < u->cfg.n_levels ? &u->down[i] : NULL; }
sd_unet_block *sd_unet_up_block(sd_unet *u, int i) { return i >= 0 && i < u->cfg.n_levels ? &u->up[i] : NULL; }
sd_unet_block *sd_unet_mid_block(sd_unet *u) { return u->mid.n_resnets ? &u->mid : NULL; }
int sd_unet_tblock_count(const sd_unet *u) { return u->n_tblocks; }
sd_unet_tblock *sd_unet_tblock_at(sd_unet *u, int i) { return i >= 0 && i < u->n_tblocks ? u->tblocks[i] : NULL; }
int sd_unet_moe_count(const sd_unet *u) { return u->n_moe; }

/* "<tblock>.<rest>" -> the tblock and rest, or NULL. */
static sd_unet_tblock *tblock_of(sd_unet *u, const char *prefix, const char **rest) {
    for (int i = 0; i < u->n_tblocks; i++) {
        size_t len = strlen(u->tblocks[i]->name);
        if (!strncmp(prefix, u->tblocks[i]->name, len) && prefix[len] == '.') {
            *rest = prefix + len + 1;
            return u->tblocks[i];
        }
    }
    return NULL;
}

sd_proj *sd_unet_find_proj(sd_unet *u, const char *prefix) {
    const char *rest;
    sd_unet_tblock *t = tblock_of(u, prefix, &rest);
    if (!t) return NULL;
    static const char *names[] = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v"};
    sd_proj *projs[] = {&t->attn1.to_q, &t->attn1.to_k, &t->attn1.to_v,
                        &t->attn2.to_q, &t->attn2.to_k, &t->attn2.to_v};
    for (int i = 0; i < 6; i++)
        if (!strcmp(rest, names[i])) return projs[i];
    return NULL;
}

sd_ff *sd_unet_find_ff(sd_unet *u, const char *prefix) {
    const char *rest;
    sd_unet_tblock *t = tblock_of(u, prefix, &rest);
    return t && !strcmp(rest, "ff") ? &t->ff : NULL;
}
