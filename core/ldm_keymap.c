#include "core/ldm_keymap.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct pair {
    const char *from, *to;
} pair;

/* ---- parsing helpers: each returns the rest of the name or NULL ---- */

static const char *eat(const char *s, const char *lit) {
    size_t n = strlen(lit);
    return s && strncmp(s, lit, n) == 0 ? s + n : NULL;
}

/* A decimal index (no sign, no leading zero, < 1000) followed by '.'. */
static const char *eat_index(const char *s, int *v) {
    if (!s || s[0] < '0' || s[0] > '9' || (s[0] == '0' && s[1] != '.')) return NULL;
    int x = 0, k = 0;
    while (s[k] >= '0' && s[k] <= '9' && k < 3) x = x * 10 + (s[k++] - '0');
    if (s[k] != '.') return NULL;
    *v = x;
    return s + k + 1;
}

/* A parameter leaf such as "weight": non-empty, no further dots. */
static int is_leaf(const char *s) { return s && *s && !strchr(s, '.'); }

/* Finds the table entry whose `from` prefixes s; returns the rest. */
static const char *eat_table(const char *s, const pair *tab, size_t n, const char **to) {
    for (size_t i = 0; s && i < n; i++) {
        const char *r = eat(s, tab[i].from);
        if (r) {
            *to = tab[i].to;
            return r;
        }
    }
    return NULL;
}

int ldm_key_format(char *out, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

/* ---- UNet ---- */

static const pair unet_fixed[] = {
    {"conv_in.", "input_blocks.0.0."},
    {"time_embedding.linear_1.", "time_embed.0."},
    {"time_embedding.linear_2.", "time_embed.2."},
    {"add_embedding.linear_1.", "label_emb.0.0."}, /* SDXL text_time (convert_ldm_unet_checkpoint) */
    {"add_embedding.linear_2.", "label_emb.0.2."},
    {"conv_norm_out.", "out.0."},
    {"conv_out.", "out.2."},
};

/* diffusers ResnetBlock2D -> LDM ResBlock (unet_conversion_map_resnet). */
static const pair unet_resnet_parts[] = {
    {"norm1.", "in_layers.0."},     {"conv1.", "in_layers.2."},  {"time_emb_proj.", "emb_layers.1."},
    {"norm2.", "out_layers.0."},    {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."},
};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* "<n>.0.<resnet part>" or "<n>.1.<attention internals>" or the sampler conv. */
static int unet_block_item(const char *rest, int n, int n_items, int attn_ok, char *out, size_t cap,
                           const char *top) {
    int j;
    const char *r, *to;
    if ((r = eat_index(eat(rest, "resnets."), &j)) && j < n_items) {
        const char *leaf = eat_table(r, unet_resnet_parts, N_OF(unet_resnet_parts), &to);
        return is_leaf(leaf) ? ldm_key_format(out, cap, "%s.%d.0.%s%s", top, n + j, to, leaf) : -1;
    }
    if ((r = eat_index(eat(rest, "attentions."), &j)) && j < n_items && attn_ok && *r)
        return ldm_key_format(out, cap, "%s.%d.1.%s", top, n + j, r);
    return -1;
}

static int unet_down(const ldm_unet_layout *lay, const char *s, char *out, size_t cap) {
    int i;
    const char *rest = eat_index(s, &i);
    if (!rest || i >= lay->n_levels) return -1;
    int base = 1;
    for (int k = 0; k < i; k++) base += lay->layers[k] + 1;
    const char *leaf = eat(rest, "downsamplers.0.conv.");
    if (leaf)
        return (i < lay->n_levels - 1 && is_leaf(leaf))
                   ? ldm_key_format(out, cap, "input_blocks.%d.0.op.%s", base + lay->layers[i], leaf)
                   : -1;
    return unet_block_item(rest, base, lay->layers[i], 1, out, cap, "input_blocks");
}

static int unet_up(const ldm_unet_layout *lay, const char *s, char *out, size_t cap) {
    int i;
    const char *rest = eat_index(s, &i);
    int L = lay->n_levels;
    if (!rest || i >= L) return -1;
    int base = 0;
    for (int k = 0; k < i; k++) base += lay->layers[L - 1 - k] + 1;
    int n_items = lay->layers[L - 1 - i] + 1;
    const char *leaf = eat(rest, "upsamplers.0.conv.");
    if (leaf)
        return (i < L - 1 && is_leaf(leaf))
                   ? ldm_key_format(out, cap, "output_blocks.%d.%d.conv.%s", base + n_items - 1, 1 + lay->up_attn[i], leaf)
                   : -1;
    return unet_block_item(rest, base, n_items, lay->up_attn[i], out, cap, "output_blocks");
}

static int unet_mid(const char *s, char *out, size_t cap) {
    int j;
    const char *r, *to;
    if ((r = eat_index(eat(s, "resnets."), &j)) && j < 2) {
        const char *leaf = eat_table(r, unet_resnet_parts, N_OF(unet_resnet_parts), &to);
        return is_leaf(leaf) ? ldm_key_format(out, cap, "middle_block.%d.%s%s", 2 * j, to, leaf) : -1;
    }
    if ((r = eat(s, "attentions.0.")) && *r) return ldm_key_format(out, cap, "middle_block.1.%s", r);
    return -1;
}

int ldm_unet_key(const ldm_unet_layout *lay, const char *name, char *out, size_t cap) {
    const char *r, *to;
    if (lay->n_levels < 1 || lay->n_levels > LDM_MAX_LEVELS) return -1;
    if ((r = eat_table(name, unet_fixed, N_OF(unet_fixed), &to)))
        return is_leaf(r) ? ldm_key_format(out, cap, "%s%s", to, r) : -1;
    if ((r = eat(name, "down_blocks."))) return unet_down(lay, r, out, cap);
    if ((r = eat(name, "up_blocks."))) return unet_up(lay, r, out, cap);
    if ((r = eat(name, "mid_block."))) return unet_mid(r, out, cap);
    return -1;
}

/* ---- VAE ---- */

static const pair vae_resnet_parts[] = {
    {"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."}, {"conv2.", "conv2."},
    {"conv_shortcut.", "nin_shortcut."},
};

/* Current and pre-0.14 diffusers names of the mid-block attention. */
static const pair vae_attn_parts[] = {
    {"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."}, {"to_out.0.", "proj_out."},
    {"query.", "q."},         {"key.", "k."},  {"value.", "v."}, {"proj_attn.", "proj_out."},
};

static const pair vae_side_fixed[] = {
    {"conv_in.", "conv_in."}, {"conv_out.", "conv_out."}, {"conv_norm_out.", "norm_out."},
};

/* "<side>.<...>.resnets.j.<part>" -> "<side>.<ldm>.block.j.<part>" */
static int vae_resnet(const char *s, int n_items, const char *side, const char *ldm, char *out, size_t cap) {
    int j;
    const char *to, *r = eat_index(eat(s, "resnets."), &j);
    if (!r || j >= n_items) return -1;
    const char *leaf = eat_table(r, vae_resnet_parts, N_OF(vae_resnet_parts), &to);
    return is_leaf(leaf) ? ldm_key_format(out, cap, "%s.%s.block.%d.%s%s", side, ldm, j, to, leaf) : -1;
}

static int vae_updown(const ldm_vae_layout *lay, const char *s, const char *side, char *out, size_t cap) {
    int i, up = side[0] == 'd';
    const char *rest = eat_index(s, &i);
    if (!rest || i >= lay->n_levels) return -1;
    int level = up ? lay->n_levels - 1 - i : i; /* the decoder's up blocks are stored in reverse */
    char ldm[32];
    snprintf(ldm, sizeof ldm, "%s.%d", up ? "up" : "down", level);
    const char *leaf = eat(rest, up ? "upsamplers.0.conv." : "downsamplers.0.conv.");
    if (leaf)
        return (i < lay->n_levels - 1 && is_leaf(leaf))
                   ? ldm_key_format(out, cap, "%s.%s.%s.conv.%s", side, ldm, up ? "upsample" : "downsample", leaf)
                   : -1;
    return vae_resnet(rest, 1000, side, ldm, out, cap);
}

static int vae_mid(const char *s, const char *side, char *out, size_t cap) {
    int j;
    const char *r, *to;
    if ((r = eat_index(eat(s, "resnets."), &j)) && j < 2) {
        const char *leaf = eat_table(r, vae_resnet_parts, N_OF(vae_resnet_parts), &to);
        return is_leaf(leaf) ? ldm_key_format(out, cap, "%s.mid.block_%d.%s%s", side, j + 1, to, leaf) : -1;
    }
    if ((r = eat(s, "attentions.0."))) {
        const char *leaf = eat_table(r, vae_attn_parts, N_OF(vae_attn_parts), &to);
        return is_leaf(leaf) ? ldm_key_format(out, cap, "%s.mid.attn_1.%s%s", side, to, leaf) : -1;
    }
    return -1;
}

int ldm_vae_key(const ldm_vae_layout *lay, const char *name, char *out, size_t cap) {
    const char *r, *to;
    if (lay->n_levels < 1 || lay->n_levels > LDM_MAX_LEVELS) return -1;
    if ((r = eat(name, "quant_conv.")) || (r = eat(name, "post_quant_conv.")))
        return is_leaf(r) ? ldm_key_format(out, cap, "%s", name) : -1;
    const char *side = NULL;
    if ((r = eat(name, "encoder."))) side = "encoder";
    else if ((r = eat(name, "decoder."))) side = "decoder";
    else return -1;
    const char *leaf = eat_table(r, vae_side_fixed, N_OF(vae_side_fixed), &to);
    if (leaf) return is_leaf(leaf) ? ldm_key_format(out, cap, "%s.%s%s", side, to, leaf) : -1;
    const char *s;
    if ((s = eat(r, side[0] == 'e' ? "down_blocks." : "up_blocks."))) return vae_updown(lay, s, side, out, cap);
    if ((s = eat(r, "mid_block."))) return vae_mid(s, side, out, cap);
    return -1;
}

/* ---- CLIP ---- */

int ldm_clip_strip_text_model(const char *name, char *out, size_t cap, int *slice_index, int *slice_count) {
    *slice_index = *slice_count = 0;
    const char *r = eat(name, "text_model.");
    return r ? ldm_key_format(out, cap, "%s", r) : -1;
}

/* ---- sd_name_map_fn bridge: interned layouts, one trampoline per slot ---- */

static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static ldm_unet_layout unet_slots[LDM_LAYOUT_SLOTS];
static ldm_vae_layout vae_slots[LDM_LAYOUT_SLOTS];
static int unet_used, vae_used;

#define TRAMPOLINES(kind, K)                                                                              \
    static int kind##_map_##K(const char *name, char *out, size_t cap, int *si, int *sc) {               \
        *si = *sc = 0;                                                                                   \
        return ldm_##kind##_key(&kind##_slots[K], name, out, cap);                                       \
    }
#define SLOTS(kind)                                                                                       \
    TRAMPOLINES(kind, 0) TRAMPOLINES(kind, 1) TRAMPOLINES(kind, 2) TRAMPOLINES(kind, 3)                   \
    TRAMPOLINES(kind, 4) TRAMPOLINES(kind, 5) TRAMPOLINES(kind, 6) TRAMPOLINES(kind, 7)                   \
    static const sd_name_map_fn kind##_fns[LDM_LAYOUT_SLOTS] = {                                          \
        kind##_map_0, kind##_map_1, kind##_map_2, kind##_map_3,                                           \
        kind##_map_4, kind##_map_5, kind##_map_6, kind##_map_7};
SLOTS(unet)
SLOTS(vae)

/* Finds lay among the first *used slots (memcmp: layouts are zero-initialised
 * plain values) or appends it; returns the slot or -1 when full. */
static int intern(void *slots, size_t size, int *used, const void *lay) {
    pthread_mutex_lock(&slot_lock);
    int k;
    for (k = 0; k < *used; k++)
        if (memcmp((char *)slots + (size_t)k * size, lay, size) == 0) break;
    if (k == *used) {
        if (k < LDM_LAYOUT_SLOTS) {
            memcpy((char *)slots + (size_t)k * size, lay, size);
            (*used)++;
        } else {
            k = -1;
        }
    }
    pthread_mutex_unlock(&slot_lock);
    return k;
}

static int check_levels(int n) { return n >= 1 && n <= LDM_MAX_LEVELS; }

int ldm_unet_map_fn(const ldm_unet_layout *lay, sd_name_map_fn *out, sd_error *err) {
    if (!check_levels(lay->n_levels))
        return sd_fail(err, "UNet layout: %d levels, expected 1..%d", lay->n_levels, LDM_MAX_LEVELS);
    ldm_unet_layout canon = {0}; /* only the used entries, so equal layouts compare equal */
    canon.n_levels = lay->n_levels;
    for (int i = 0; i < lay->n_levels; i++) {
        canon.layers[i] = lay->layers[i];
        canon.up_attn[i] = lay->up_attn[i] ? 1 : 0;
    }
    int k = intern(unet_slots, sizeof canon, &unet_used, &canon);
    if (k < 0) return sd_fail(err, "more than %d distinct single-file UNet layouts open at once", LDM_LAYOUT_SLOTS);
    *out = unet_fns[k];
    return 0;
}

int ldm_vae_map_fn(const ldm_vae_layout *lay, sd_name_map_fn *out, sd_error *err) {
    if (!check_levels(lay->n_levels))
        return sd_fail(err, "VAE layout: %d levels, expected 1..%d", lay->n_levels, LDM_MAX_LEVELS);
    ldm_vae_layout canon = {0};
    canon.n_levels = lay->n_levels;
    int k = intern(vae_slots, sizeof canon, &vae_used, &canon);
    if (k < 0) return sd_fail(err, "more than %d distinct single-file VAE layouts open at once", LDM_LAYOUT_SLOTS);
    *out = vae_fns[k];
    return 0;
}
