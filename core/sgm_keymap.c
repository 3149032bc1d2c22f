#include "core/sgm_keymap.h"

#include <stdio.h>
#include <string.h>

#include "core/ldm_keymap.h"
#include "core/weights.h"

typedef struct pair {
    const char *from, *to;
} pair;

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

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

/* "weight" or "bias" exactly. */
static int is_param(const char *s) { return s && (!strcmp(s, "weight") || !strcmp(s, "bias")); }

/* Whole names (textenc_conversion_lst). */
static const pair fixed[] = {
    {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
    {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
    {"text_model.final_layer_norm.weight", "ln_final.weight"},
    {"text_model.final_layer_norm.bias", "ln_final.bias"},
    {"logit_scale", "logit_scale"},
};

/* Inside one resblock: HF module -> OpenCLIP module (weight/bias kept). */
static const pair layer_parts[] = {
    {"layer_norm1.", "ln_1."},
    {"layer_norm2.", "ln_2."},
    {"self_attn.out_proj.", "attn.out_proj."},
    {"mlp.fc1.", "mlp.c_fc."},
    {"mlp.fc2.", "mlp.c_proj."},
};

/* q, k, v: slices 0, 1, 2 of the fused in_proj. */
static const char *const qkv[3] = {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."};

int sgm_openclip_key(const char *name, char *out, size_t cap, int *slice_index, int *slice_count) {
    *slice_index = *slice_count = 0;
    for (size_t i = 0; i < N_OF(fixed); i++)
        if (!strcmp(name, fixed[i].from)) return ldm_key_format(out, cap, "%s", fixed[i].to);
    if (!strcmp(name, "text_projection.weight")) {
        *slice_count = SD_MAP_TRANSPOSED;
        return ldm_key_format(out, cap, "text_projection");
    }
    int layer;
    const char *r = eat_index(eat(name, "text_model.encoder.layers."), &layer), *leaf;
    if (!r) return -1;
    for (size_t i = 0; i < N_OF(layer_parts); i++)
        if ((leaf = eat(r, layer_parts[i].from)))
            return is_param(leaf) ? ldm_key_format(out, cap, "transformer.resblocks.%d.%s%s", layer, layer_parts[i].to, leaf) : -1;
    for (int i = 0; i < 3; i++)
        if ((leaf = eat(r, qkv[i]))) {
            if (!is_param(leaf)) return -1;
            *slice_index = i;
            *slice_count = 3;
            return ldm_key_format(out, cap, "transformer.resblocks.%d.attn.in_proj_%s", layer, leaf);
        }
    return -1;
}
