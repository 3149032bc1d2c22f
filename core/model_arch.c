/* Architecture structs <-> diffusers configs, SD 1.5 defaults and LDM yamls.
 * Defaults for absent config keys are those of diffusers v0.27.2
 * (UNet2DConditionModel.__init__, AutoencoderKL.__init__) and transformers'
 * CLIPTextConfig; the yaml rules follow diffusers v0.27.2
 * loaders/single_file_utils.py create_unet_diffusers_config /
 * create_vae_diffusers_config / create_scheduler_from_ldm. */
#include "core/model_arch.h"

#include <stdint.h>

#include <stdio.h>
#include <string.h>

#include "core/json.h"

/* ---- SD 1.5 defaults (runwayml/stable-diffusion-v1-5 configs) ---- */

void sd_unet_arch_sd15(sd_unet_arch *a) {
    static const int ch[4] = {320, 640, 1280, 1280};
    memset(a, 0, sizeof *a);
    a->n_levels = 4;
    for (int i = 0; i < 4; i++) {
        a->channels[i] = ch[i];
        a->layers[i] = 2;
        a->down_attn[i] = i < 3;
        a->up_attn[i] = i > 0;
        a->depth[i] = 1;
        a->heads[i] = 8;
    }
    a->in_channels = a->out_channels = 4;
    a->cross_attention_dim = 768;
    a->norm_num_groups = 32;
    a->norm_eps = 1e-5;
    a->sample_size = 64;
}

void sd_vae_arch_sd15(sd_vae_arch *a) {
    static const int ch[4] = {128, 256, 512, 512};
    memset(a, 0, sizeof *a);
    a->n_levels = 4;
    memcpy(a->channels, ch, sizeof ch);
    a->layers = 2;
    a->in_channels = a->out_channels = 3;
    a->latent_channels = 4;
    a->norm_num_groups = 32;
    a->scaling_factor = 0.18215;
    a->sample_size = 512;
}

void sd_clip_arch_sd15(sd_clip_arch *a) {
    memset(a, 0, sizeof *a);
    a->vocab_size = 49408;
    a->hidden_size = 768;
    a->intermediate_size = 3072;
    a->num_layers = 12;
    a->num_heads = 12;
    a->max_positions = 77;
    a->projection_dim = 768;
    snprintf(a->hidden_act, sizeof a->hidden_act, "quick_gelu");
    a->layer_norm_eps = 1e-5;
}

/* ---- reading configs ---- */

/* An int-or-list key as n values: a single value (or a list of one) is
 * broadcast; absent keeps out[] as it is. */
static int read_per_level(const cJSON *cfg, const char *file, const char *key, int n, int *out, sd_error *err) {
    int v[ARCH_MAX + 1], k;
    if (sd_json_int_list(cfg, file, key, v, ARCH_MAX + 1, &k, err)) return -1;
    if (k == 0) return 0;
    if (k != 1 && k != n) return sd_fail(err, "%s: key '%s': expected one value or %d (one per block), got %d", file, key, n, k);
    for (int i = 0; i < n; i++) out[i] = v[k == 1 ? 0 : i];
    return 0;
}

static int positive(const char *file, const char *key, int v, sd_error *err) {
    return v > 0 ? 0 : sd_fail(err, "%s: key '%s': expected a positive integer, got %d", file, key, v);
}

static int read_block_types(const cJSON *cfg, const char *file, const char *key, int n, const char *attn_type,
                            const char *plain_type, int *attn, sd_error *err) {
    char types[ARCH_MAX + 1][64];
    int k;
    if (sd_json_string_list(cfg, file, key, types, ARCH_MAX + 1, &k, err)) return -1;
    if (k == 0) return 0; /* absent: keep the defaults */
    if (k != n)
        return sd_fail(err, "%s: key '%s': %d block types, expected %d (one per block_out_channels entry)", file, key,
                       k, n);
    for (int i = 0; i < n; i++) {
        if (!strcmp(types[i], attn_type)) attn[i] = 1;
        else if (!strcmp(types[i], plain_type)) attn[i] = 0;
        else
            return sd_fail(err, "%s: key '%s'[%d]: block type '%s' is not supported (expected %s or %s)", file, key,
                           i, types[i], attn_type, plain_type);
    }
    return 0;
}

int sd_unet_arch_from_config(const cJSON *cfg, const char *file, sd_unet_arch *a, sd_error *err) {
    memset(a, 0, sizeof *a);
    /* diffusers' own defaults: (320, 640, 1280, 1280), layers 2, 3 cross-attention blocks */
    int ch[ARCH_MAX + 1], n;
    if (sd_json_int_list(cfg, file, "block_out_channels", ch, ARCH_MAX + 1, &n, err)) return -1;
    if (n == 0) {
        sd_unet_arch_sd15(a);
        n = 4;
    } else if (n > ARCH_MAX) {
        return sd_fail(err, "%s: key 'block_out_channels': %d levels, at most %d supported", file, n, ARCH_MAX);
    } else {
        a->n_levels = n;
        for (int i = 0; i < n; i++) {
            a->channels[i] = ch[i];
            a->layers[i] = 2;
            a->depth[i] = 1;
            a->heads[i] = 8;
            a->down_attn[i] = i < n - 1;
            a->up_attn[i] = i > 0;
        }
    }
    for (int i = 0; i < n; i++)
        if (positive(file, "block_out_channels", a->channels[i], err)) return -1;
    if (read_per_level(cfg, file, "layers_per_block", n, a->layers, err) ||
        read_per_level(cfg, file, "transformer_layers_per_block", n, a->depth, err))
        return -1;
    /* diffusers: num_attention_heads = num_attention_heads or attention_head_dim */
    const char *heads_key = sd_json_has(cfg, "num_attention_heads") ? "num_attention_heads" : "attention_head_dim";
    const cJSON *hv = cJSON_GetObjectItemCaseSensitive(cfg, heads_key);
    a->heads_is_list = hv && cJSON_IsArray(hv);
    if (read_per_level(cfg, file, heads_key, n, a->heads, err)) return -1;
    for (int i = 0; i < n; i++)
        if (positive(file, "layers_per_block", a->layers[i], err) ||
            positive(file, "transformer_layers_per_block", a->depth[i], err) || positive(file, heads_key, a->heads[i], err))
            return -1;
    if (read_block_types(cfg, file, "down_block_types", n, "CrossAttnDownBlock2D", "DownBlock2D", a->down_attn, err) ||
        read_block_types(cfg, file, "up_block_types", n, "CrossAttnUpBlock2D", "UpBlock2D", a->up_attn, err))
        return -1;
    if (sd_json_int(cfg, file, "in_channels", 4, &a->in_channels, err) ||
        sd_json_int(cfg, file, "out_channels", 4, &a->out_channels, err) ||
        sd_json_int(cfg, file, "cross_attention_dim", 1280, &a->cross_attention_dim, err) ||
        sd_json_int(cfg, file, "norm_num_groups", 32, &a->norm_num_groups, err) ||
        sd_json_float(cfg, file, "norm_eps", 1e-5, &a->norm_eps, err) ||
        sd_json_bool(cfg, file, "use_linear_projection", 0, &a->use_linear_projection, err) ||
        sd_json_int(cfg, file, "sample_size", 64, &a->sample_size, err))
        return -1;
    if (positive(file, "in_channels", a->in_channels, err) || positive(file, "out_channels", a->out_channels, err) ||
        positive(file, "cross_attention_dim", a->cross_attention_dim, err) ||
        positive(file, "norm_num_groups", a->norm_num_groups, err))
        return -1;
    return 0;
}

int sd_vae_arch_from_config(const cJSON *cfg, const char *file, sd_vae_arch *a, sd_error *err) {
    memset(a, 0, sizeof *a);
    int n;
    if (sd_json_int_list(cfg, file, "block_out_channels", a->channels, ARCH_MAX, &n, err)) return -1;
    if (n == 0) { /* AutoencoderKL's own default: one level of 64 */
        n = 1;
        a->channels[0] = 64;
    }
    a->n_levels = n;
    for (int i = 0; i < n; i++)
        if (positive(file, "block_out_channels", a->channels[i], err)) return -1;
    if (sd_json_int(cfg, file, "layers_per_block", 1, &a->layers, err) ||
        sd_json_int(cfg, file, "in_channels", 3, &a->in_channels, err) ||
        sd_json_int(cfg, file, "out_channels", 3, &a->out_channels, err) ||
        sd_json_int(cfg, file, "latent_channels", 4, &a->latent_channels, err) ||
        sd_json_int(cfg, file, "norm_num_groups", 32, &a->norm_num_groups, err) ||
        sd_json_float(cfg, file, "scaling_factor", 0.18215, &a->scaling_factor, err) ||
        sd_json_int(cfg, file, "sample_size", 32, &a->sample_size, err))
        return -1;
    int types[ARCH_MAX];
    if (read_block_types(cfg, file, "down_block_types", n, "DownEncoderBlock2D", "DownEncoderBlock2D", types, err) ||
        read_block_types(cfg, file, "up_block_types", n, "UpDecoderBlock2D", "UpDecoderBlock2D", types, err))
        return -1;
    if (positive(file, "layers_per_block", a->layers, err) || positive(file, "latent_channels", a->latent_channels, err) ||
        positive(file, "norm_num_groups", a->norm_num_groups, err))
        return -1;
    return 0;
}

int sd_clip_arch_from_config(const cJSON *cfg, const char *file, sd_clip_arch *a, sd_error *err) {
    memset(a, 0, sizeof *a);
    if (sd_json_int(cfg, file, "vocab_size", 49408, &a->vocab_size, err) ||
        sd_json_int(cfg, file, "hidden_size", 512, &a->hidden_size, err) ||
        sd_json_int(cfg, file, "intermediate_size", 2048, &a->intermediate_size, err) ||
        sd_json_int(cfg, file, "num_hidden_layers", 12, &a->num_layers, err) ||
        sd_json_int(cfg, file, "num_attention_heads", 8, &a->num_heads, err) ||
        sd_json_int(cfg, file, "max_position_embeddings", 77, &a->max_positions, err) ||
        sd_json_int(cfg, file, "projection_dim", 512, &a->projection_dim, err) ||
        sd_json_string(cfg, file, "hidden_act", "quick_gelu", a->hidden_act, sizeof a->hidden_act, err) ||
        sd_json_float(cfg, file, "layer_norm_eps", 1e-5, &a->layer_norm_eps, err))
        return -1;
    if (positive(file, "vocab_size", a->vocab_size, err) || positive(file, "hidden_size", a->hidden_size, err) ||
        positive(file, "intermediate_size", a->intermediate_size, err) ||
        positive(file, "num_hidden_layers", a->num_layers, err) ||
        positive(file, "num_attention_heads", a->num_heads, err) ||
        positive(file, "max_position_embeddings", a->max_positions, err))
        return -1;
    if (a->hidden_size % a->num_heads)
        return sd_fail(err, "%s: key 'num_attention_heads': %d does not divide hidden_size %d", file, a->num_heads,
                       a->hidden_size);
    return 0;
}

void sd_unet_arch_layout(const sd_unet_arch *a, ldm_unet_layout *lay) {
    memset(lay, 0, sizeof *lay);
    int n = a->n_levels < ARCH_MAX ? a->n_levels : ARCH_MAX;
    lay->n_levels = n;
    for (int i = 0; i < n; i++) {
        lay->layers[i] = a->layers[i];
        lay->up_attn[i] = (unsigned char)(a->up_attn[i] != 0);
    }
}

/* ---- writing diffusers-style configs ---- */

static cJSON *int_array(const int *v, int n) { return cJSON_CreateIntArray(v, n); }

static int all_equal(const int *v, int n) {
    for (int i = 1; i < n; i++)
        if (v[i] != v[0]) return 0;
    return 1;
}

/* An int-or-list value as diffusers writes it: a scalar when uniform. */
static cJSON *int_or_list(const int *v, int n, int force_list) {
    return (!force_list && all_equal(v, n)) ? cJSON_CreateNumber(v[0]) : int_array(v, n);
}

static cJSON *block_types(const int *attn, int n, const char *attn_type, const char *plain_type) {
    const char *names[ARCH_MAX];
    for (int i = 0; i < n; i++) names[i] = attn[i] ? attn_type : plain_type;
    return cJSON_CreateStringArray(names, n);
}

cJSON *sd_unet_arch_to_config(const sd_unet_arch *a) {
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    int n = a->n_levels;
    cJSON_AddStringToObject(c, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(c, "_diffusers_version", "0.27.2");
    cJSON_AddStringToObject(c, "act_fn", "silu");
    cJSON_AddItemToObject(c, "attention_head_dim", int_or_list(a->heads, n, a->heads_is_list));
    cJSON_AddItemToObject(c, "block_out_channels", int_array(a->channels, n));
    cJSON_AddBoolToObject(c, "center_input_sample", 0);
    cJSON_AddNumberToObject(c, "cross_attention_dim", a->cross_attention_dim);
    cJSON_AddItemToObject(c, "down_block_types", block_types(a->down_attn, n, "CrossAttnDownBlock2D", "DownBlock2D"));
    cJSON_AddNumberToObject(c, "downsample_padding", 1);
    cJSON_AddBoolToObject(c, "flip_sin_to_cos", 1);
    cJSON_AddNumberToObject(c, "freq_shift", 0);
    cJSON_AddNumberToObject(c, "in_channels", a->in_channels);
    cJSON_AddItemToObject(c, "layers_per_block", int_or_list(a->layers, n, 0));
    cJSON_AddNumberToObject(c, "mid_block_scale_factor", 1);
    cJSON_AddStringToObject(c, "mid_block_type", "UNetMidBlock2DCrossAttn");
    cJSON_AddNumberToObject(c, "norm_eps", a->norm_eps);
    cJSON_AddNumberToObject(c, "norm_num_groups", a->norm_num_groups);
    cJSON_AddNullToObject(c, "num_attention_heads");
    cJSON_AddNumberToObject(c, "out_channels", a->out_channels);
    cJSON_AddNumberToObject(c, "sample_size", a->sample_size);
    cJSON_AddStringToObject(c, "time_embedding_type", "positional");
    cJSON_AddItemToObject(c, "transformer_layers_per_block", int_or_list(a->depth, n, 0));
    cJSON_AddItemToObject(c, "up_block_types", block_types(a->up_attn, n, "CrossAttnUpBlock2D", "UpBlock2D"));
    cJSON_AddBoolToObject(c, "upcast_attention", 0);
    cJSON_AddBoolToObject(c, "use_linear_projection", a->use_linear_projection);
    return c;
}

cJSON *sd_vae_arch_to_config(const sd_vae_arch *a) {
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    int n = a->n_levels, none[ARCH_MAX] = {0};
    cJSON_AddStringToObject(c, "_class_name", "AutoencoderKL");
    cJSON_AddStringToObject(c, "_diffusers_version", "0.27.2");
    cJSON_AddStringToObject(c, "act_fn", "silu");
    cJSON_AddItemToObject(c, "block_out_channels", int_array(a->channels, n));
    cJSON_AddItemToObject(c, "down_block_types", block_types(none, n, "", "DownEncoderBlock2D"));
    cJSON_AddNumberToObject(c, "in_channels", a->in_channels);
    cJSON_AddNumberToObject(c, "latent_channels", a->latent_channels);
    cJSON_AddNumberToObject(c, "layers_per_block", a->layers);
    cJSON_AddNumberToObject(c, "norm_num_groups", a->norm_num_groups);
    cJSON_AddNumberToObject(c, "out_channels", a->out_channels);
    cJSON_AddNumberToObject(c, "sample_size", a->sample_size);
    cJSON_AddNumberToObject(c, "scaling_factor", a->scaling_factor);
    cJSON_AddItemToObject(c, "up_block_types", block_types(none, n, "", "UpDecoderBlock2D"));
    return c;
}

cJSON *sd_clip_arch_to_config(const sd_clip_arch *a) {
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    const char *arch = "CLIPTextModel";
    cJSON_AddItemToObject(c, "architectures", cJSON_CreateStringArray(&arch, 1));
    cJSON_AddNumberToObject(c, "bos_token_id", 0);
    cJSON_AddNumberToObject(c, "eos_token_id", 2);
    cJSON_AddStringToObject(c, "hidden_act", a->hidden_act);
    cJSON_AddNumberToObject(c, "hidden_size", a->hidden_size);
    cJSON_AddNumberToObject(c, "intermediate_size", a->intermediate_size);
    cJSON_AddNumberToObject(c, "layer_norm_eps", a->layer_norm_eps);
    cJSON_AddNumberToObject(c, "max_position_embeddings", a->max_positions);
    cJSON_AddStringToObject(c, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(c, "num_attention_heads", a->num_heads);
    cJSON_AddNumberToObject(c, "num_hidden_layers", a->num_layers);
    cJSON_AddNumberToObject(c, "pad_token_id", 1);
    cJSON_AddNumberToObject(c, "projection_dim", a->projection_dim);
    cJSON_AddNumberToObject(c, "vocab_size", a->vocab_size);
    return c;
}

/* ---- LDM yaml ---- */

/* Follows a dotted path of mapping keys; NULL if any step is absent. */
static const cJSON *at(const cJSON *obj, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *save = NULL, *k = strtok_r(buf, ".", &save); k && obj; k = strtok_r(NULL, ".", &save))
        obj = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, k) : NULL;
    return obj;
}

static int str_contains(const cJSON *v, const char *needle) {
    return v && cJSON_IsString(v) && strstr(v->valuestring, needle);
}

static int yaml_refuse_other_families(const cJSON *y, const char *file, sd_error *err) {
    if (at(y, "model.params.network_config") || str_contains(at(y, "model.target"), "DiffusionEngine"))
        return sd_fail(err, "%s: an SDXL (sgm DiffusionEngine) config: SDXL single-file checkpoints are not supported yet",
                       file);
    if (str_contains(at(y, "model.params.cond_stage_config.target"), "OpenCLIP"))
        return sd_fail(err, "%s: an SD 2.x config (OpenCLIP text encoder): SD 2.x single-file checkpoints are not "
                            "supported yet", file);
    const cJSON *u = at(y, "model.params.unet_config.params");
    if (!u || !cJSON_IsObject(u))
        return sd_fail(err, "%s: key 'model.params.unet_config.params': expected a mapping (is this an LDM "
                            "v1-inference.yaml style config?)", file);
    if (sd_json_has(u, "num_classes") || sd_json_has(u, "adm_in_channels"))
        return sd_fail(err, "%s: key 'model.params.unet_config.params.num_classes': class-conditioned UNets "
                            "(unCLIP, upscalers) are not supported", file);
    return 0;
}

/* model_channels x channel_mult, num_res_blocks, attention_resolutions. */
static int yaml_unet_levels(const cJSON *u, const char *where, sd_unet_arch *a, sd_error *err) {
    int mc = a->channels[0], mult[ARCH_MAX + 1], n, res[16], nres;
    if (sd_json_int(u, where, "model_channels", a->channels[0], &mc, err) ||
        sd_json_int_list(u, where, "channel_mult", mult, ARCH_MAX + 1, &n, err) ||
        positive(where, "model_channels", mc, err))
        return -1;
    if (n > ARCH_MAX) return sd_fail(err, "%s: key 'channel_mult': %d levels, at most %d supported", where, n, ARCH_MAX);
    if (n > 0) {
        a->n_levels = n;
        for (int i = 0; i < n; i++) {
            if (positive(where, "channel_mult", mult[i], err)) return -1;
            if ((int64_t)mc * mult[i] > 65536)
                return sd_fail(err, "%s: key 'channel_mult': %d x %d channels is more than 65536", where, mc, mult[i]);
            a->channels[i] = mc * mult[i];
        }
    } else { /* keep SD 1.5's multipliers (1, 2, 4, 4) on the given width */
        int c0 = a->channels[0];
        for (int i = 0; i < a->n_levels; i++) {
            if ((int64_t)(a->channels[i] / c0) * mc > 65536)
                return sd_fail(err, "%s: key 'model_channels': %d gives more than 65536 channels", where, mc);
            a->channels[i] = a->channels[i] / c0 * mc;
        }
    }
    n = a->n_levels;
    if (read_per_level(u, where, "num_res_blocks", n, a->layers, err) ||
        sd_json_int_list(u, where, "attention_resolutions", res, 16, &nres, err))
        return -1;
    if (nres > 0) { /* level i works at downsampling factor 2^i; attention where listed */
        for (int i = 0; i < n; i++) {
            a->down_attn[i] = 0;
            for (int k = 0; k < nres; k++) a->down_attn[i] |= res[k] == (1 << i);
        }
        for (int i = 0; i < n; i++) a->up_attn[i] = a->down_attn[n - 1 - i];
    }
    return 0;
}

static int yaml_unet(const cJSON *y, const char *file, sd_unet_arch *a, sd_error *err) {
    const cJSON *u = at(y, "model.params.unet_config.params");
    char where[512];
    snprintf(where, sizeof where, "%s (model.params.unet_config.params)", file);
    if (yaml_unet_levels(u, where, a, err)) return -1;
    int n = a->n_levels, num_heads, head_ch, image_size;
    if (sd_json_int(u, where, "in_channels", a->in_channels, &a->in_channels, err) ||
        sd_json_int(u, where, "out_channels", a->out_channels, &a->out_channels, err) ||
        sd_json_int(u, where, "context_dim", a->cross_attention_dim, &a->cross_attention_dim, err) ||
        sd_json_bool(u, where, "use_linear_in_transformer", 0, &a->use_linear_projection, err) ||
        read_per_level(u, where, "transformer_depth", n, a->depth, err) ||
        sd_json_int(u, where, "num_heads", -1, &num_heads, err) ||
        sd_json_int(u, where, "num_head_channels", -1, &head_ch, err) ||
        sd_json_int(at(y, "model.params"), file, "image_size", a->sample_size, &image_size, err))
        return -1;
    a->sample_size = image_size; /* LDM's image_size is the latent size */
    if (num_heads > 0) { /* SD 1.x: a fixed number of heads; diffusers calls it attention_head_dim */
        a->heads_is_list = 0;
        for (int i = 0; i < n; i++) a->heads[i] = num_heads;
    } else if (head_ch > 0) { /* SD 2.x: fixed head width, heads = channels / width */
        a->heads_is_list = 1;
        for (int i = 0; i < n; i++) {
            if (a->channels[i] % head_ch)
                return sd_fail(err, "%s: key 'num_head_channels': %d does not divide the %d channels of level %d",
                               where, head_ch, a->channels[i], i);
            a->heads[i] = a->channels[i] / head_ch;
        }
    }
    for (int i = 0; i < n; i++)
        if (positive(where, "num_res_blocks", a->layers[i], err) || positive(where, "transformer_depth", a->depth[i], err))
            return -1;
    return 0;
}

static int yaml_vae(const cJSON *y, const char *file, sd_vae_arch *a, sd_error *err) {
    const cJSON *fsp = at(y, "model.params.first_stage_config.params");
    const cJSON *d = at(y, "model.params.first_stage_config.params.ddconfig");
    if (fsp && cJSON_GetObjectItemCaseSensitive(fsp, "ddconfig") && !cJSON_IsObject(d))
        return sd_fail(err, "%s: model.params.first_stage_config.params.ddconfig: expected a mapping of VAE "
                       "settings (ch, ch_mult, ...), found an empty or scalar value", file);
    if (!d) return 0; /* SD 1.x's VAE */
    char where[512];
    snprintf(where, sizeof where, "%s (model.params.first_stage_config.params.ddconfig)", file);
    int ch = a->channels[0], mult[ARCH_MAX + 1], n;
    if (sd_json_int(d, where, "ch", ch, &ch, err) || sd_json_int_list(d, where, "ch_mult", mult, ARCH_MAX + 1, &n, err) ||
        sd_json_int(d, where, "num_res_blocks", a->layers, &a->layers, err) ||
        sd_json_int(d, where, "z_channels", a->latent_channels, &a->latent_channels, err) ||
        sd_json_int(d, where, "in_channels", a->in_channels, &a->in_channels, err) ||
        sd_json_int(d, where, "out_ch", a->out_channels, &a->out_channels, err) ||
        sd_json_int(d, where, "resolution", a->sample_size, &a->sample_size, err) || positive(where, "ch", ch, err))
        return -1;
    if (n > ARCH_MAX) return sd_fail(err, "%s: key 'ch_mult': %d levels, at most %d supported", where, n, ARCH_MAX);
    if (n > 0) {
        a->n_levels = n;
        for (int i = 0; i < n; i++) {
            if (positive(where, "ch_mult", mult[i], err)) return -1;
            if ((int64_t)ch * mult[i] > 65536)
                return sd_fail(err, "%s: key 'ch_mult': %d x %d channels is more than 65536", where, ch, mult[i]);
            a->channels[i] = ch * mult[i];
        }
    } else {
        int c0 = a->channels[0];
        for (int i = 0; i < a->n_levels; i++) {
            if ((int64_t)(a->channels[i] / c0) * ch > 65536)
                return sd_fail(err, "%s: key 'ch': %d gives more than 65536 channels", where, ch);
            a->channels[i] = a->channels[i] / c0 * ch;
        }
    }
    return positive(where, "num_res_blocks", a->layers, err) || positive(where, "z_channels", a->latent_channels, err);
}

int sd_arch_from_ldm_yaml(const cJSON *y, const char *file, sd_unet_arch *unet, sd_vae_arch *vae, sd_ldm_sched *sched,
                          sd_error *err) {
    if (yaml_refuse_other_families(y, file, err) || yaml_unet(y, file, unet, err) || yaml_vae(y, file, vae, err))
        return -1;
    const cJSON *p = at(y, "model.params");
    char where[512], param[32];
    snprintf(where, sizeof where, "%s (model.params)", file);
    if (sd_json_float(p, where, "scale_factor", vae->scaling_factor, &vae->scaling_factor, err) ||
        sd_json_float(p, where, "linear_start", sched->beta_start, &sched->beta_start, err) ||
        sd_json_float(p, where, "linear_end", sched->beta_end, &sched->beta_end, err) ||
        sd_json_int(p, where, "timesteps", sched->num_train_timesteps, &sched->num_train_timesteps, err) ||
        sd_json_string(p, where, "parameterization", "eps", param, sizeof param, err))
        return -1;
    if (strcmp(param, "eps") && strcmp(param, "v"))
        return sd_fail(err, "%s: key 'parameterization': '%s' is not supported (expected eps or v)", where, param);
    sched->v_prediction = !strcmp(param, "v");
    if (!(sched->beta_start > 0 && sched->beta_end > sched->beta_start && sched->beta_end < 1))
        return sd_fail(err, "%s: keys 'linear_start'/'linear_end': expected 0 < %g < %g < 1", where, sched->beta_start,
                       sched->beta_end);
    return positive(where, "timesteps", sched->num_train_timesteps, err);
}
