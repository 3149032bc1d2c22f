/* unet/unet_config — unet/config.json -> sd_unet_config with diffusers
 * v0.27.2 UNet2DConditionModel.__init__ defaults and its list broadcasting
 * (int -> one value per down block; up blocks use the reversed lists). */
#include <stdio.h>
#include <string.h>

#include "core/json.h"
#include "unet/unet.h"

#define L SD_UNET_MAX_LEVELS

/* Reads an int-or-list key into out[n_levels]: absent -> def, one value ->
 * broadcast, else exactly n_levels values. */
static int level_list(const cJSON *j, const char *file, const char *key, int def, int n_levels, int *out,
                      int *present, sd_error *err) {
    int v[L], n = 0;
    if (sd_json_int_list(j, file, key, v, L, &n, err)) return -1;
    if (present) *present = n > 0;
    if (n == 0)
        for (int i = 0; i < n_levels; i++) out[i] = def;
    else if (n == 1)
        for (int i = 0; i < n_levels; i++) out[i] = v[0];
    else if (n == n_levels)
        memcpy(out, v, sizeof(int) * (size_t)n_levels);
    else
        return sd_fail(err, "%s: key '%s': expected one value or %d (one per down block), got %d", file,
                       key, n_levels, n);
    for (int i = 0; i < n_levels; i++)
        if (out[i] < 1 && strcmp(key, "layers_per_block") != 0)
            return sd_fail(err, "%s: key '%s': values must be >= 1", file, key);
    return 0;
}

/* A key that must be absent/null (a feature the SD 1.x/2.x forward does not have). */
static int require_null(const cJSON *j, const char *file, const char *key, sd_error *err) {
    if (sd_json_has(j, key)) return sd_fail(err, "%s: key '%s': not supported (only null)", file, key);
    return 0;
}

static int require_string(const cJSON *j, const char *file, const char *key, const char *want, sd_error *err) {
    char buf[64];
    if (sd_json_string(j, file, key, want, buf, sizeof buf, err)) return -1;
    if (strcmp(buf, want) != 0)
        return sd_fail(err, "%s: key '%s': \"%s\" is not supported (expected \"%s\")", file, key, buf, want);
    return 0;
}

static int require_false(const cJSON *j, const char *file, const char *key, sd_error *err) {
    int v;
    if (sd_json_bool(j, file, key, 0, &v, err)) return -1;
    if (v) return sd_fail(err, "%s: key '%s': true is not supported", file, key);
    return 0;
}

static int parse_block_types(sd_unet_config *c, const cJSON *j, const char *file, sd_error *err) {
    static const char *def_down[4] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                      "DownBlock2D"};
    static const char *def_up[4] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
    char down[L][64], up[L][64];
    int nd = 0, nu = 0;
    if (sd_json_string_list(j, file, "down_block_types", down, L, &nd, err)) return -1;
    if (sd_json_string_list(j, file, "up_block_types", up, L, &nu, err)) return -1;
    if (nd == 0) {
        nd = 4;
        for (int i = 0; i < 4; i++) snprintf(down[i], 64, "%s", def_down[i]);
    }
    if (nu == 0) {
        nu = 4;
        for (int i = 0; i < 4; i++) snprintf(up[i], 64, "%s", def_up[i]);
    }
    if (nd != c->n_levels || nu != c->n_levels)
        return sd_fail(err, "%s: down_block_types (%d) and up_block_types (%d) must both have one entry per "
                       "block_out_channels entry (%d)", file, nd, nu, c->n_levels);
    for (int i = 0; i < nd; i++) {
        if (!strcmp(down[i], "CrossAttnDownBlock2D")) c->down_kind[i] = SD_UNET_BLOCK_CROSS_ATTN;
        else if (!strcmp(down[i], "DownBlock2D")) c->down_kind[i] = SD_UNET_BLOCK_PLAIN;
        else return sd_fail(err, "%s: down_block_types[%d]: \"%s\" is not supported (CrossAttnDownBlock2D, "
                            "DownBlock2D)", file, i, down[i]);
        if (!strcmp(up[i], "CrossAttnUpBlock2D")) c->up_kind[i] = SD_UNET_BLOCK_CROSS_ATTN;
        else if (!strcmp(up[i], "UpBlock2D")) c->up_kind[i] = SD_UNET_BLOCK_PLAIN;
        else return sd_fail(err, "%s: up_block_types[%d]: \"%s\" is not supported (CrossAttnUpBlock2D, "
                            "UpBlock2D)", file, i, up[i]);
    }
    char mid[64];
    if (!sd_json_has(j, "mid_block_type") && cJSON_GetObjectItemCaseSensitive(j, "mid_block_type")) {
        c->mid_block = 0; /* explicit null: no mid block */
    } else {
        if (sd_json_string(j, file, "mid_block_type", "UNetMidBlock2DCrossAttn", mid, sizeof mid, err)) return -1;
        if (strcmp(mid, "UNetMidBlock2DCrossAttn") != 0)
            return sd_fail(err, "%s: key 'mid_block_type': \"%s\" is not supported (UNetMidBlock2DCrossAttn)",
                           file, mid);
        c->mid_block = 1;
    }
    return 0;
}

static int parse_unsupported(const cJSON *j, const char *file, sd_error *err) {
    static const char *nulls[] = {"class_embed_type", "encoder_hid_dim", "encoder_hid_dim_type",
                                  "time_cond_proj_dim", "timestep_post_act", "time_embedding_act_fn",
                                  "num_class_embeds", "cross_attention_norm"};
    for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++)
        if (require_null(j, file, nulls[i], err)) return -1;
    if (require_string(j, file, "act_fn", "silu", err)) return -1;
    if (require_string(j, file, "time_embedding_type", "positional", err)) return -1;
    if (require_string(j, file, "resnet_time_scale_shift", "default", err)) return -1;
    if (require_string(j, file, "attention_type", "default", err)) return -1;
    if (require_false(j, file, "only_cross_attention", err)) return -1;
    if (require_false(j, file, "mid_block_only_cross_attention", err)) return -1;
    if (require_false(j, file, "dual_cross_attention", err)) return -1;
    if (require_false(j, file, "resnet_skip_time_act", err)) return -1;
    if (require_false(j, file, "class_embeddings_concat", err)) return -1;
    return 0;
}

/* SDXL's added conditioning (unet_2d_condition.py, addition_embed_type
 * "text_time"): add_time_proj = Timesteps(addition_time_embed_dim) of each of
 * the 6 time ids, add_embedding = TimestepEmbedding(projection_class_
 * embeddings_input_dim -> time_embed_dim); the pooled text width is what the
 * input dim leaves after the 6 sinusoids. */
static int parse_added_cond(sd_unet_config *c, const cJSON *j, const char *file, sd_error *err) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "addition_embed_type");
    if (!t || cJSON_IsNull(t)) {
        c->add_text_time = 0;
        return require_null(j, file, "projection_class_embeddings_input_dim", err);
    }
    char type[32];
    if (sd_json_string(j, file, "addition_embed_type", "", type, sizeof type, err)) return -1;
    if (strcmp(type, "text_time") != 0)
        return sd_fail(err, "%s: key 'addition_embed_type': \"%s\" is not supported (null or \"text_time\")",
                       file, type);
    if (!sd_json_has(j, "addition_time_embed_dim") || !sd_json_has(j, "projection_class_embeddings_input_dim"))
        return sd_fail(err, "%s: addition_embed_type \"text_time\" needs 'addition_time_embed_dim' and "
                       "'projection_class_embeddings_input_dim'", file);
    if (sd_json_int(j, file, "addition_time_embed_dim", 0, &c->addition_time_embed_dim, err) ||
        sd_json_int(j, file, "projection_class_embeddings_input_dim", 0, &c->add_embed_in, err))
        return -1;
    c->add_text_time = 1;
    c->add_n_time_ids = 6;
    if (c->addition_time_embed_dim < 2 || c->addition_time_embed_dim > 65536 || c->add_embed_in > 1 << 20)
        return sd_fail(err, "%s: key 'addition_time_embed_dim': expected an integer between 2 and 65536", file);
    c->add_text_dim = c->add_embed_in - c->add_n_time_ids * c->addition_time_embed_dim;
    if (c->add_text_dim < 1)
        return sd_fail(err, "%s: key 'projection_class_embeddings_input_dim': %d leaves no room for the pooled "
                       "text embedding after 6 x addition_time_embed_dim (%d)", file, c->add_embed_in,
                       c->addition_time_embed_dim);
    return 0;
}

/* SegMoE's "segmoe_config" (segmoe.md section 5): the seven keys its loader requires. */
static int parse_segmoe(sd_unet_config *c, const cJSON *j, const char *file, sd_error *err) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "segmoe_config");
    if (!s || cJSON_IsNull(s)) return 0;
    if (!cJSON_IsObject(s)) return sd_fail(err, "%s: key 'segmoe_config': expected an object", file);
    static const char *req[] = {"num_experts", "down_idx_start", "down_idx_end", "up_idx_start", "up_idx_end"};
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++)
        if (!sd_json_has(s, req[i])) return sd_fail(err, "%s: segmoe_config: key '%s' is required", file, req[i]);
    char layers[64];
    if (sd_json_int(s, file, "num_experts", 0, &c->moe_num_experts, err) ||
        sd_json_int(s, file, "num_experts_per_tok", 1, &c->moe_top_k, err) ||
        sd_json_string(s, file, "moe_layers", "attn", layers, sizeof layers, err) ||
        sd_json_int(s, file, "down_idx_start", 0, &c->moe_down_start, err) ||
        sd_json_int(s, file, "down_idx_end", 0, &c->moe_down_end, err) ||
        sd_json_int(s, file, "up_idx_start", 0, &c->moe_up_start, err) ||
        sd_json_int(s, file, "up_idx_end", 0, &c->moe_up_end, err))
        return sd_error_prefix(err, "segmoe_config");
    if (c->moe_num_experts < 1 || c->moe_top_k < 1 || c->moe_top_k > c->moe_num_experts)
        return sd_fail(err, "%s: segmoe_config: need 1 <= num_experts_per_tok (%d) <= num_experts (%d)", file,
                       c->moe_top_k, c->moe_num_experts);
    /* SegMoE: FF is MoE when moe_layers != "attn", attention when != "ff" */
    c->moe_ff = strcmp(layers, "attn") != 0;
    c->moe_attn = strcmp(layers, "ff") != 0;
    c->moe_enabled = 1;
    return 0;
}

int sd_unet_config_parse(sd_unet_config *c, const cJSON *j, const char *file, sd_error *err) {
    memset(c, 0, sizeof *c);
    int n = 0, present = 0;
    if (sd_json_int_list(j, file, "block_out_channels", c->block_out_channels, L, &n, err)) return -1;
    if (n == 0) {
        static const int def[4] = {320, 640, 1280, 1280};
        memcpy(c->block_out_channels, def, sizeof def);
        n = 4;
    }
    c->n_levels = n;
    for (int i = 0; i < n; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] > 65536)
            return sd_fail(err, "%s: key 'block_out_channels': values must be between 1 and 65536", file);
    if (parse_block_types(c, j, file, err) || parse_unsupported(j, file, err)) return -1;
    double eps, fshift, rs, ms;
    if (sd_json_int(j, file, "in_channels", 4, &c->in_channels, err) ||
        sd_json_int(j, file, "out_channels", 4, &c->out_channels, err) ||
        sd_json_int(j, file, "norm_num_groups", 32, &c->norm_num_groups, err) ||
        sd_json_float(j, file, "norm_eps", 1e-5, &eps, err) ||
        sd_json_bool(j, file, "use_linear_projection", 0, &c->use_linear_projection, err) ||
        sd_json_bool(j, file, "flip_sin_to_cos", 1, &c->flip_sin_to_cos, err) ||
        sd_json_float(j, file, "freq_shift", 0, &fshift, err) ||
        sd_json_int(j, file, "sample_size", 0, &c->sample_size, err) ||
        sd_json_int(j, file, "time_embedding_dim", 4 * c->block_out_channels[0], &c->time_embed_dim, err) ||
        sd_json_int(j, file, "conv_in_kernel", 3, &c->conv_in_kernel, err) ||
        sd_json_int(j, file, "conv_out_kernel", 3, &c->conv_out_kernel, err) ||
        sd_json_int(j, file, "downsample_padding", 1, &c->downsample_padding, err) ||
        sd_json_float(j, file, "resnet_out_scale_factor", 1.0, &rs, err) ||
        sd_json_float(j, file, "mid_block_scale_factor", 1.0, &ms, err) ||
        sd_json_bool(j, file, "center_input_sample", 0, &c->center_input_sample, err))
        return -1;
    c->norm_eps = (float)eps, c->freq_shift = (float)fshift;
    c->resnet_out_scale_factor = (float)rs, c->mid_block_scale_factor = (float)ms;
    if (!sd_json_has(j, "norm_num_groups") && cJSON_GetObjectItemCaseSensitive(j, "norm_num_groups"))
        return sd_fail(err, "%s: key 'norm_num_groups': null (no conv_norm_out) is not supported", file);
    if (c->in_channels < 1 || c->out_channels < 1 || c->norm_num_groups < 1 || c->time_embed_dim < 1 ||
        c->conv_in_kernel < 1 || c->conv_in_kernel % 2 == 0 || c->conv_out_kernel < 1 ||
        c->conv_out_kernel % 2 == 0 || c->downsample_padding < 0)
        return sd_fail(err, "%s: in/out_channels, norm_num_groups, time_embedding_dim must be >= 1 and the "
                       "conv kernels odd", file);
    if (level_list(j, file, "layers_per_block", 2, n, c->layers_per_block, NULL, err)) return -1;
    for (int i = 0; i < n; i++)
        if (c->layers_per_block[i] < 1) return sd_fail(err, "%s: key 'layers_per_block': values must be >= 1", file);
    /* heads: num_attention_heads or, as diffusers does, attention_head_dim */
    if (level_list(j, file, "num_attention_heads", 8, n, c->heads, &present, err)) return -1;
    if (!present && level_list(j, file, "attention_head_dim", 8, n, c->heads, NULL, err)) return -1;
    if (level_list(j, file, "cross_attention_dim", 1280, n, c->cross_attention_dim, NULL, err)) return -1;
    if (level_list(j, file, "transformer_layers_per_block", 1, n, c->transformer_layers, NULL, err)) return -1;
    int rev[L], nr = 0;
    if (sd_json_int_list(j, file, "reverse_transformer_layers_per_block", rev, L, &nr, err)) return -1;
    if (nr != 0 && nr != n)
        return sd_fail(err, "%s: key 'reverse_transformer_layers_per_block': expected %d values", file, n);
    for (int i = 0; i < n; i++) c->up_transformer_layers[i] = nr ? rev[i] : c->transformer_layers[n - 1 - i];
    for (int i = 0; i < n; i++) {
        int ch = c->block_out_channels[i];
        if (ch % c->norm_num_groups)
            return sd_fail(err, "%s: block_out_channels[%d] = %d is not a multiple of norm_num_groups %d", file, i,
                           ch, c->norm_num_groups);
        if (ch % c->heads[i])
            return sd_fail(err, "%s: block_out_channels[%d] = %d is not a multiple of the head count %d", file, i,
                           ch, c->heads[i]);
    }
    if (parse_added_cond(c, j, file, err)) return -1;
    return parse_segmoe(c, j, file, err);
}
