/* What the tensor shapes of a single-file (LDM-named) checkpoint tell about
 * its architecture, checked against a config when one was given.  Only
 * structural facts are read here; the full per-tensor shape check happens
 * when the components bind (core/weights). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/model_arch.h"

typedef struct walk {
    const sd_weights *w;
    const char *prefix;
    const char *ckpt;
    const char *source; /* NULL: infer only */
    sd_error *err;
    char key[512];      /* the last key looked up (with prefix) */
} walk;

static const st_tensor *find(walk *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const st_tensor *find(walk *k, const char *fmt, ...) {
    char name[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    snprintf(k->key, sizeof k->key, "%s%s", k->prefix, name);
    return sd_weights_find(k->w, k->key, NULL);
}

/* Compares one fact read from tensor t (key in k->key; t NULL when the
 * fact is that the key is absent) with the config. */
static int fact(walk *k, const st_tensor *t, int got, int want, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fact(walk *k, const st_tensor *t, int got, int want, const char *fmt, ...) {
    if (!k->source || got == want) return 0;
    char what[160], shape[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (!t)
        return sd_fail(k->err, "%s: the weights give %s = %d (tensor '%s' is absent), but %s says %d", k->ckpt, what,
                       got, k->key, k->source, want);
    sd_shape_str(shape, sizeof shape, t->ndim, t->shape);
    return sd_fail(k->err, "%s: tensor '%s' %s gives %s = %d, but %s says %d", k->ckpt, k->key, shape, what, got,
                   k->source, want);
}

static int require(walk *k, const st_tensor *t, int ndim, const char *what) {
    if (!t) return sd_fail(k->err, "%s: missing tensor '%s' (%s)", k->ckpt, k->key, what);
    if (t->ndim != ndim) {
        char shape[128];
        sd_shape_str(shape, sizeof shape, t->ndim, t->shape);
        return sd_fail(k->err, "%s: tensor '%s' has shape %s, expected %d dimensions (%s)", k->ckpt, k->key, shape, ndim,
                       what);
    }
    return 0;
}

/* ---- UNet ---- */

/* The spatial transformer at <block>.<idx>.1, if any: depth, projection, context. */
static int unet_attention(walk *k, const char *block, int idx, sd_unet_arch *a, const sd_unet_arch *want, int level) {
    const st_tensor *pi = find(k, "%s.%d.1.proj_in.weight", block, idx);
    if (!pi) return 0;
    int linear = pi->ndim == 2;
    if (fact(k, pi, linear, want ? want->use_linear_projection : linear, "use_linear_projection")) return -1;
    a->use_linear_projection = linear;
    int d = 0;
    while (find(k, "%s.%d.1.transformer_blocks.%d.attn1.to_q.weight", block, idx, d)) d++;
    const st_tensor *tk = find(k, "%s.%d.1.transformer_blocks.0.attn2.to_k.weight", block, idx);
    if (require(k, tk, 2, "cross-attention key projection")) return -1;
    if (fact(k, tk, (int)tk->shape[1], want ? want->cross_attention_dim : (int)tk->shape[1], "cross_attention_dim"))
        return -1;
    a->cross_attention_dim = (int)tk->shape[1];
    if (level >= 0) {
        find(k, "%s.%d.1.transformer_blocks.%d.attn1.to_q.weight", block, idx, d);
        if (fact(k, NULL, d, want ? want->depth[level] : d, "transformer_layers_per_block[%d]", level)) return -1;
        a->depth[level] = d;
    }
    return 1;
}

/* input_blocks: conv_in, then per level `layers` resnets (+ attention) and a downsampler. */
static int unet_down(walk *k, const sd_unet_arch *want, sd_unet_arch *a) {
    int level = 0, nl = 0, idx = 1;
    for (;; idx++) {
        const st_tensor *op = find(k, "input_blocks.%d.0.op.weight", idx);
        if (op) {
            if (nl == 0) return sd_fail(k->err, "%s: tensor '%s': a downsampler with no resnet before it", k->ckpt, k->key);
            if (fact(k, op, nl, want ? want->layers[level] : nl, "layers_per_block[%d] (resnets before this downsampler)",
                     level))
                return -1;
            a->layers[level++] = nl;
            nl = 0;
            if (level >= ARCH_MAX) return sd_fail(k->err, "%s: more than %d UNet levels", k->ckpt, ARCH_MAX);
            continue;
        }
        const st_tensor *r = find(k, "input_blocks.%d.0.in_layers.2.weight", idx);
        if (!r) break;
        if (require(k, r, 4, "resnet conv1")) return -1;
        int ch = (int)r->shape[0];
        if (nl == 0) {
            if (want && level >= want->n_levels)
                return sd_fail(k->err, "%s: tensor '%s': UNet level %d exists, but %s says %d levels", k->ckpt, k->key,
                               level, k->source, want->n_levels);
            if (fact(k, r, ch, want ? want->channels[level] : ch, "block_out_channels[%d]", level)) return -1;
            a->channels[level] = ch;
        } else if (ch != a->channels[level]) {
            return sd_fail(k->err, "%s: tensor '%s' has %d output channels, expected %d like the rest of level %d",
                           k->ckpt, k->key, ch, a->channels[level], level);
        }
        int has = unet_attention(k, "input_blocks", idx, a, want, level);
        if (has < 0) return -1;
        if (nl == 0) {
            const st_tensor *pi = find(k, "input_blocks.%d.1.proj_in.weight", idx);
            if (fact(k, pi, has, want ? want->down_attn[level] : has,
                     "attention in down block %d (1 = CrossAttnDownBlock2D, 0 = DownBlock2D)", level))
                return -1;
            a->down_attn[level] = has;
        } else if (has != a->down_attn[level]) {
            return sd_fail(k->err, "%s: input_blocks.%d: attention present in some resnets of level %d only", k->ckpt,
                           idx, level);
        }
        nl++;
    }
    if (nl == 0) return sd_fail(k->err, "%s: tensor '%s' missing: the UNet has no resnet after its last downsampler",
                                k->ckpt, k->key);
    find(k, "input_blocks.%d.0.in_layers.2.weight", idx);
    if (fact(k, NULL, nl, want ? want->layers[level] : nl, "layers_per_block[%d]", level) ||
        fact(k, NULL, level + 1, want ? want->n_levels : level + 1, "the number of levels (len(block_out_channels))"))
        return -1;
    a->layers[level] = nl;
    a->n_levels = level + 1;
    return 0;
}

/* output_blocks: up block i has layers[L-1-i] + 1 resnets (+ attention). */
static int unet_up(walk *k, const sd_unet_arch *want, sd_unet_arch *a) {
    int L = a->n_levels, idx = 0;
    for (int i = 0; i < L; i++) {
        int n = a->layers[L - 1 - i] + 1;
        for (int j = 0; j < n; j++, idx++) {
            if (require(k, find(k, "output_blocks.%d.0.in_layers.2.weight", idx), 4, "up-block resnet conv1")) return -1;
            int has = unet_attention(k, "output_blocks", idx, a, want, -1);
            if (has < 0) return -1;
            const st_tensor *pi = find(k, "output_blocks.%d.1.proj_in.weight", idx);
            if (j == 0 && fact(k, pi, has, want ? want->up_attn[i] : has,
                               "attention in up block %d (1 = CrossAttnUpBlock2D, 0 = UpBlock2D)", i))
                return -1;
            if (j == 0) a->up_attn[i] = has;
            else if (has != a->up_attn[i])
                return sd_fail(k->err, "%s: output_blocks.%d: attention present in some resnets of up block %d only",
                               k->ckpt, idx, i);
        }
    }
    return 0;
}

int sd_unet_arch_from_weights(const sd_weights *w, const char *prefix, const char *ckpt, const sd_unet_arch *want,
                              const char *source, sd_unet_arch *a, sd_error *err) {
    walk k = {w, prefix, ckpt, want ? source : NULL, err, ""};
    if (want) *a = *want;
    const st_tensor *t = find(&k, "input_blocks.0.0.weight");
    if (require(&k, t, 4, "UNet conv_in")) return -1;
    if (fact(&k, t, (int)t->shape[1], want ? want->in_channels : (int)t->shape[1], "in_channels")) return -1;
    a->in_channels = (int)t->shape[1];
    if (unet_down(&k, want, a) || unet_up(&k, want, a)) return -1;
    t = find(&k, "out.2.weight");
    if (require(&k, t, 4, "UNet conv_out")) return -1;
    if (fact(&k, t, (int)t->shape[0], want ? want->out_channels : (int)t->shape[0], "out_channels")) return -1;
    a->out_channels = (int)t->shape[0];
    /* SDXL's added conditioning: label_emb.0.0 = add_embedding.linear_1 [time_embed_dim, adm_in] */
    t = find(&k, "label_emb.0.0.weight");
    int tt = t != NULL;
    if (fact(&k, t, tt, want ? want->text_time : tt, "addition_embed_type \"text_time\" (1 = present)")) return -1;
    a->text_time = tt;
    if (tt) {
        if (require(&k, t, 2, "added-conditioning embedding (add_embedding.linear_1)")) return -1;
        if (fact(&k, t, (int)t->shape[1], want ? want->add_embed_in : (int)t->shape[1],
                 "projection_class_embeddings_input_dim"))
            return -1;
        a->add_embed_in = (int)t->shape[1];
    }
    return 0;
}

/* ---- VAE ---- */

int sd_vae_arch_from_weights(const sd_weights *w, const char *prefix, const char *ckpt, const sd_vae_arch *want,
                             const char *source, sd_vae_arch *a, sd_error *err) {
    walk k = {w, prefix, ckpt, want ? source : NULL, err, ""};
    if (want) *a = *want;
    const st_tensor *t = find(&k, "encoder.conv_in.weight");
    if (require(&k, t, 4, "VAE encoder conv_in")) return -1;
    if (fact(&k, t, (int)t->shape[1], want ? want->in_channels : (int)t->shape[1], "in_channels")) return -1;
    a->in_channels = (int)t->shape[1];
    int level = 0;
    for (; (t = find(&k, "encoder.down.%d.block.0.conv1.weight", level)); level++) {
        if (level >= ARCH_MAX) return sd_fail(err, "%s: more than %d VAE levels", ckpt, ARCH_MAX);
        if (require(&k, t, 4, "VAE resnet conv1")) return -1;
        if (want && level >= want->n_levels)
            return sd_fail(err, "%s: tensor '%s': VAE level %d exists, but %s says %d levels", ckpt, k.key, level,
                           source, want->n_levels);
        if (fact(&k, t, (int)t->shape[0], want ? want->channels[level] : (int)t->shape[0], "block_out_channels[%d]", level))
            return -1;
        a->channels[level] = (int)t->shape[0];
        int j = 0;
        while (find(&k, "encoder.down.%d.block.%d.conv1.weight", level, j)) j++;
        if (fact(&k, NULL, j, want ? want->layers : j, "layers_per_block (resnets of encoder level %d)", level)) return -1;
        a->layers = j;
    }
    if (fact(&k, NULL, level, want ? want->n_levels : level, "the number of levels (len(block_out_channels))")) return -1;
    if (level == 0) return sd_fail(err, "%s: missing tensor '%s' (VAE encoder level 0)", ckpt, k.key);
    a->n_levels = level;
    t = find(&k, "post_quant_conv.weight");
    if (require(&k, t, 4, "VAE post_quant_conv")) return -1;
    if (fact(&k, t, (int)t->shape[0], want ? want->latent_channels : (int)t->shape[0], "latent_channels")) return -1;
    a->latent_channels = (int)t->shape[0];
    t = find(&k, "decoder.conv_out.weight");
    if (require(&k, t, 4, "VAE decoder conv_out")) return -1;
    if (fact(&k, t, (int)t->shape[0], want ? want->out_channels : (int)t->shape[0], "out_channels")) return -1;
    a->out_channels = (int)t->shape[0];
    return 0;
}

/* ---- CLIP text encoder ---- */

int sd_clip_arch_from_weights(const sd_weights *w, const char *prefix, const char *ckpt, const sd_clip_arch *want,
                              const char *source, sd_clip_arch *a, sd_error *err) {
    walk k = {w, prefix, ckpt, want ? source : NULL, err, ""};
    if (want) *a = *want;
    const st_tensor *t = find(&k, "embeddings.token_embedding.weight");
    if (require(&k, t, 2, "CLIP token embedding")) return -1;
    if (fact(&k, t, (int)t->shape[0], want ? want->vocab_size : (int)t->shape[0], "vocab_size") ||
        fact(&k, t, (int)t->shape[1], want ? want->hidden_size : (int)t->shape[1], "hidden_size"))
        return -1;
    a->vocab_size = (int)t->shape[0];
    a->hidden_size = (int)t->shape[1];
    t = find(&k, "embeddings.position_embedding.weight");
    if (require(&k, t, 2, "CLIP position embedding")) return -1;
    if (fact(&k, t, (int)t->shape[0], want ? want->max_positions : (int)t->shape[0], "max_position_embeddings"))
        return -1;
    a->max_positions = (int)t->shape[0];
    t = find(&k, "encoder.layers.0.mlp.fc1.weight");
    if (require(&k, t, 2, "CLIP layer 0 fc1")) return -1;
    if (fact(&k, t, (int)t->shape[0], want ? want->intermediate_size : (int)t->shape[0], "intermediate_size"))
        return -1;
    a->intermediate_size = (int)t->shape[0];
    int n = 0;
    while (find(&k, "encoder.layers.%d.self_attn.q_proj.weight", n)) n++;
    if (fact(&k, NULL, n, want ? want->num_layers : n, "num_hidden_layers")) return -1;
    a->num_layers = n;
    return 0;
}

/* ---- OpenCLIP text transformer (SDXL text_encoder_2) ---- */

int sd_openclip_arch_from_weights(const sd_weights *w, const char *prefix, const char *ckpt, const sd_clip_arch *want,
                                  const char *source, sd_clip_arch *a, sd_error *err) {
    walk k = {w, prefix, ckpt, want ? source : NULL, err, ""};
    if (want) *a = *want;
    const st_tensor *t = find(&k, "token_embedding.weight");
    if (require(&k, t, 2, "OpenCLIP token embedding")) return -1;
    if (fact(&k, t, (int)t->shape[0], want ? want->vocab_size : (int)t->shape[0], "vocab_size") ||
        fact(&k, t, (int)t->shape[1], want ? want->hidden_size : (int)t->shape[1], "hidden_size"))
        return -1;
    a->vocab_size = (int)t->shape[0];
    a->hidden_size = (int)t->shape[1];
    t = find(&k, "positional_embedding");
    if (require(&k, t, 2, "OpenCLIP positional embedding")) return -1;
    if (fact(&k, t, (int)t->shape[0], want ? want->max_positions : (int)t->shape[0], "max_position_embeddings"))
        return -1;
    a->max_positions = (int)t->shape[0];
    t = find(&k, "transformer.resblocks.0.mlp.c_fc.weight");
    if (require(&k, t, 2, "OpenCLIP layer 0 c_fc")) return -1;
    if (fact(&k, t, (int)t->shape[0], want ? want->intermediate_size : (int)t->shape[0], "intermediate_size"))
        return -1;
    a->intermediate_size = (int)t->shape[0];
    t = find(&k, "transformer.resblocks.0.attn.in_proj_weight");
    if (require(&k, t, 2, "OpenCLIP layer 0 fused q|k|v projection")) return -1;
    if (t->shape[0] != 3 * (int64_t)a->hidden_size || t->shape[1] != a->hidden_size) {
        char shape[128];
        sd_shape_str(shape, sizeof shape, t->ndim, t->shape);
        return sd_fail(err, "%s: tensor '%s' has shape %s, expected [%d, %d] (q, k and v of width %d stacked)", ckpt,
                       k.key, shape, 3 * a->hidden_size, a->hidden_size, a->hidden_size);
    }
    int n = 0;
    while (find(&k, "transformer.resblocks.%d.attn.in_proj_weight", n)) n++;
    if (fact(&k, NULL, n, want ? want->num_layers : n, "num_hidden_layers")) return -1;
    a->num_layers = n;
    t = find(&k, "text_projection");
    int wp = t != NULL; /* what the weights have decides (a config's "architectures" is informational) */
    a->with_projection = wp;
    if (wp) {
        if (require(&k, t, 2, "OpenCLIP text_projection [hidden, projection_dim]")) return -1;
        if (t->shape[0] != a->hidden_size) {
            char shape[128];
            sd_shape_str(shape, sizeof shape, t->ndim, t->shape);
            return sd_fail(err, "%s: tensor '%s' has shape %s, expected [%d, projection_dim] (OpenCLIP stores the "
                                "projection as [hidden, projection_dim])", ckpt, k.key, shape, a->hidden_size);
        }
        if (fact(&k, t, (int)t->shape[1], want ? want->projection_dim : (int)t->shape[1], "projection_dim")) return -1;
        a->projection_dim = (int)t->shape[1];
    }
    return 0;
}
