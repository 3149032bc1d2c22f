/* Architecture structs <-> diffusers configs, SD 1.5 / SDXL defaults, LDM and
 * SGM yamls.
 * Defaults for absent config keys are those of diffusers v0.27.2
 * (UNet2DConditionModel.__init__, AutoencoderKL.__init__) and transformers'
 * CLIPTextConfig; the yaml rules follow diffusers v0.27.2
 * loaders/single_file_utils.py create_unet_diffusers_config /
 * create_vae_diffusers_config / create_scheduler_from_ldm; SGM yamls are read
 * as Stability's generative-models code interprets them (sgm/modules/
 * diffusionmodules/openaimodel.py UNetModel, sgm/modules/encoders/modules.py),
 * mapped to diffusers the way diffusers' SDXL single-file loading does. */
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

/* stabilityai/stable-diffusion-xl-base-1.0 unet/config.json */
void sd_unet_arch_sdxl(sd_unet_arch *a) {
    static const int ch[3] = {320, 640, 1280}, depth[3] = {1, 2, 10};
    memset(a, 0, sizeof *a);
    a->n_levels = 3;
    for (int i = 0; i < 3; i++) {
        a->channels[i] = ch[i];
        a->layers[i] = 2;
        a->down_attn[i] = i > 0;
        a->up_attn[i] = i < 2;
        a->depth[i] = depth[i];
        a->heads[i] = ch[i] / 64;
    }
    a->heads_is_list = 1;
    a->in_channels = a->out_channels = 4;
    a->cross_attention_dim = 2048;
    a->norm_num_groups = 32;
    a->norm_eps = 1e-5;
    a->use_linear_projection = 1;
    a->sample_size = 128;
    a->text_time = 1;
    a->addition_time_embed_dim = 256;
    a->add_embed_in = 2816;
}

/* ... vae/config.json: SD 1.5's VAE with another scaling factor */
void sd_vae_arch_sdxl(sd_vae_arch *a) {
    sd_vae_arch_sd15(a);
    a->scaling_factor = 0.13025;
    a->sample_size = 1024;
}

/* ... text_encoder_2/config.json (OpenCLIP ViT-bigG-14's text tower) */
void sd_clip_arch_sdxl_g(sd_clip_arch *a) {
    memset(a, 0, sizeof *a);
    a->vocab_size = 49408;
    a->hidden_size = 1280;
    a->intermediate_size = 5120;
    a->num_layers = 32;
    a->num_heads = 20;
    a->max_positions = 77;
    a->projection_dim = 1280;
    snprintf(a->hidden_act, sizeof a->hidden_act, "gelu");
    a->layer_norm_eps = 1e-5;
    a->with_projection = 1;
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
    /* SDXL's added conditioning; other addition types are left to unet/ to refuse */
    char add[32];
    if (sd_json_string(cfg, file, "addition_embed_type", "", add, sizeof add, err)) return -1;
    a->text_time = !strcmp(add, "text_time");
    if (a->text_time && (sd_json_int(cfg, file, "addition_time_embed_dim", 0, &a->addition_time_embed_dim, err) ||
                         sd_json_int(cfg, file, "projection_class_embeddings_input_dim", 0, &a->add_embed_in, err)))
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
    /* informational (the weights decide whether text_projection is bound): read leniently */
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(cfg, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    a->with_projection = cJSON_IsString(a0) && !strcmp(a0->valuestring, "CLIPTextModelWithProjection");
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
    if (a->text_time) {
        cJSON_AddStringToObject(c, "addition_embed_type", "text_time");
        cJSON_AddNumberToObject(c, "addition_time_embed_dim", a->addition_time_embed_dim);
        cJSON_AddNumberToObject(c, "projection_class_embeddings_input_dim", a->add_embed_in);
    }
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
    const char *arch = a->with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel";
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

int sd_yaml_is_sgm(const cJSON *y) {
    return at(y, "model.params.network_config") != NULL || str_contains(at(y, "model.target"), "DiffusionEngine");
}

static int yaml_refuse_other_families(const cJSON *y, const char *file, sd_error *err) {
    if (sd_yaml_is_sgm(y))
        return sd_fail(err, "%s: an SDXL (sgm DiffusionEngine) config, not an LDM (SD 1.x) one: it describes an SDXL "
                            "checkpoint (conditioner.embedders.* tensors)", file);
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

/* The UNet of an LDM (section model.params.unet_config.params) or SGM
 * (model.params.network_config.params) yaml. */
static int yaml_unet(const cJSON *y, const char *file, const char *section, sd_unet_arch *a, sd_error *err) {
    const cJSON *u = at(y, section);
    char where[512];
    snprintf(where, sizeof where, "%s (%s)", file, section);
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
    if (yaml_refuse_other_families(y, file, err) || yaml_unet(y, file, "model.params.unet_config.params", unet, err) ||
        yaml_vae(y, file, vae, err))
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

/* ---- SGM (SDXL) yaml ---- */

/* target "a.b.Name" (or "Name") ends with the class name `cls`. */
static int target_is(const char *target, const char *cls) {
    size_t n = strlen(target), k = strlen(cls);
    return n >= k && !strcmp(target + n - k, cls) && (n == k || target[n - k - 1] == '.');
}

/* A present key whose value is not null / false / a list of only false. */
static int yaml_truthy(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return 0;
    if (cJSON_IsArray(v)) {
        for (const cJSON *e = v->child; e; e = e->next)
            if (!cJSON_IsFalse(e) && !cJSON_IsNull(e)) return 1;
        return 0;
    }
    return 1;
}

static int sgm_unet(const cJSON *y, const char *file, sd_unet_arch *a, sd_error *err) {
    static const char *const sect = "model.params.network_config.params";
    const cJSON *u = at(y, sect);
    char where[512];
    snprintf(where, sizeof where, "%s (%s)", file, sect);
    if (!cJSON_IsObject(u))
        return sd_fail(err, "%s: key '%s': expected a mapping (the UNet settings of an SGM DiffusionEngine config)", file,
                       sect);
    if (!sd_json_has(u, "num_heads") && !sd_json_has(u, "num_head_channels"))
        return sd_fail(err, "%s: keys 'num_heads' / 'num_head_channels': one of them is required", where);
    if (yaml_unet(y, file, sect, a, err)) return -1;
    /* SDXL's vector conditioning: num_classes "sequential" + adm_in_channels */
    const cJSON *nc = cJSON_GetObjectItemCaseSensitive(u, "num_classes");
    if (!nc || cJSON_IsNull(nc))
        return sd_fail(err, "%s: key 'num_classes': absent, but only SDXL base-style UNets with added conditioning "
                            "(num_classes: sequential, adm_in_channels) are supported", where);
    if (!cJSON_IsString(nc) || strcmp(nc->valuestring, "sequential"))
        return sd_fail(err, "%s: key 'num_classes': expected 'sequential' (SDXL's pooled text + size conditioning); "
                            "class-conditioned UNets are not supported", where);
    int adm, mid;
    if (sd_json_int(u, where, "adm_in_channels", -1, &adm, err) || positive(where, "adm_in_channels", adm, err))
        return -1;
    if (adm > 1 << 20) return sd_fail(err, "%s: key 'adm_in_channels': %d is more than %d", where, adm, 1 << 20);
    a->text_time = 1;
    a->add_embed_in = adm;
    if (sd_json_int(u, where, "transformer_depth_middle", a->depth[a->n_levels - 1], &mid, err)) return -1;
    if (mid != a->depth[a->n_levels - 1])
        return sd_fail(err, "%s: key 'transformer_depth_middle': %d differs from the last transformer_depth %d, which "
                            "diffusers' UNet2DConditionModel uses for its mid block", where, mid,
                       a->depth[a->n_levels - 1]);
    static const char *const unsupported[] = {"disable_self_attentions", "num_attention_blocks"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++)
        if (yaml_truthy(u, unsupported[i]))
            return sd_fail(err, "%s: key '%s': not supported (SDXL base has none)", where, unsupported[i]);
    return 0;
}

/* OpenCLIP text towers by arch name (open_clip model configs, text_cfg):
 * width, heads, layers, embed_dim (= projection); all 77 tokens, vocab
 * 49408, MLP ratio 4, exact GELU. */
static const struct {
    const char *name;
    int width, heads, layers, proj;
} openclip_archs[] = {
    {"ViT-bigG-14", 1280, 20, 32, 1280},
    {"ViT-H-14", 1024, 16, 24, 1024},
    {"ViT-g-14", 1024, 16, 24, 1024},
    {"ViT-L-14", 768, 12, 12, 768},
};

static int sgm_embedder(const cJSON *e, const char *where, int i, char *target, size_t cap, const cJSON **params,
                        sd_error *err) {
    char key[64];
    snprintf(key, sizeof key, "emb_models[%d]", i);
    if (!cJSON_IsObject(e)) return sd_fail(err, "%s: key '%s': expected a mapping", where, key);
    char w2[640];
    snprintf(w2, sizeof w2, "%s.%s", where, key);
    if (sd_json_string(e, w2, "target", "", target, cap, err)) return -1;
    *params = cJSON_GetObjectItemCaseSensitive(e, "params");
    if (*params && !cJSON_IsNull(*params) && !cJSON_IsObject(*params))
        return sd_fail(err, "%s: key 'params': expected a mapping", w2);
    if (*params && cJSON_IsNull(*params)) *params = NULL;
    return 0;
}

/* conditioner_config.params.emb_models: SDXL base's five embedders. */
static int sgm_conditioner(const cJSON *y, const char *file, sd_unet_arch *ua, sd_sgm_text *t, sd_error *err) {
    const cJSON *em = at(y, "model.params.conditioner_config.params.emb_models");
    char where[512];
    snprintf(where, sizeof where, "%s (model.params.conditioner_config.params)", file);
    if (!em || cJSON_IsNull(em)) return 0; /* not stated: SDXL's, with sizes from the weights */
    if (!cJSON_IsArray(em)) return sd_fail(err, "%s: key 'emb_models': expected a list of embedders", where);
    int n = cJSON_GetArraySize(em);
    if (n != 5)
        return sd_fail(err, "%s: key 'emb_models': %d embedders; SDXL base has 5 (FrozenCLIPEmbedder, "
                            "FrozenOpenCLIPEmbedder2, 3 x ConcatTimestepEmbedderND); refiner and other SGM models are "
                            "not supported", where, n);
    static const char *const time_keys[3] = {"original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"};
    int i = 0, outdim = -1;
    for (const cJSON *e = em->child; e; e = e->next, i++) {
        char target[256], w2[640], val[64];
        const cJSON *p = NULL;
        if (sgm_embedder(e, where, i, target, sizeof target, &p, err)) return -1;
        snprintf(w2, sizeof w2, "%s.emb_models[%d].params", where, i);
        static const char *const want[3] = {"FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder2", "ConcatTimestepEmbedderND"};
        const char *cls = want[i < 2 ? i : 2];
        if (!target_is(target, cls))
            return sd_fail(err, "%s: key 'emb_models[%d].target': '%s', expected %s there (SDXL base's conditioner)",
                           where, i, target, cls);
        if (i == 0) { /* sgm FrozenCLIPEmbedder(version="openai/clip-vit-large-patch14", layer="last") */
            if (sd_json_string(p, w2, "version", "openai/clip-vit-large-patch14", t->te1_name, sizeof t->te1_name, err) ||
                sd_json_string(p, w2, "layer", "last", val, sizeof val, err))
                return -1;
            if (strcmp(val, "hidden"))
                return sd_fail(err, "%s: key 'layer': '%s', but SDXL conditions on a hidden layer (layer: hidden, "
                                    "the penultimate one)", w2, val);
            t->te1_known = !strcmp(t->te1_name, "openai/clip-vit-large-patch14");
            if (t->te1_known) sd_clip_arch_sd15(&t->te1);
        } else if (i == 1) { /* sgm FrozenOpenCLIPEmbedder2(arch="ViT-H-14", layer="last") */
            if (sd_json_string(p, w2, "arch", "ViT-H-14", t->te2_name, sizeof t->te2_name, err) ||
                sd_json_string(p, w2, "layer", "last", val, sizeof val, err))
                return -1;
            if (strcmp(val, "penultimate"))
                return sd_fail(err, "%s: key 'layer': '%s', but SDXL conditions on the penultimate layer", w2, val);
            t->te2_known = 0;
            for (size_t k = 0; k < sizeof openclip_archs / sizeof openclip_archs[0]; k++)
                if (!strcmp(t->te2_name, openclip_archs[k].name)) {
                    sd_clip_arch_sdxl_g(&t->te2);
                    t->te2.hidden_size = openclip_archs[k].width;
                    t->te2.num_heads = openclip_archs[k].heads;
                    t->te2.num_layers = openclip_archs[k].layers;
                    t->te2.intermediate_size = 4 * openclip_archs[k].width;
                    t->te2.projection_dim = openclip_archs[k].proj;
                    t->te2_known = 1;
                }
        } else {
            int od;
            if (sd_json_string(e, where, "input_key", time_keys[i - 2], val, sizeof val, err) ||
                sd_json_int(p, w2, "outdim", -1, &od, err) || positive(w2, "outdim", od, err))
                return -1;
            if (strcmp(val, time_keys[i - 2]))
                return sd_fail(err, "%s: key 'emb_models[%d].input_key': '%s', expected '%s' (diffusers' add_time_ids "
                                    "order: original size, crop top-left, target size)", where, i, val, time_keys[i - 2]);
            if (od > 65536) return sd_fail(err, "%s: key 'outdim': %d is more than 65536", w2, od);
            if (outdim >= 0 && od != outdim)
                return sd_fail(err, "%s: key 'outdim': %d, but the first ConcatTimestepEmbedderND has %d (diffusers "
                                    "uses one addition_time_embed_dim)", w2, od, outdim);
            outdim = od;
        }
    }
    ua->addition_time_embed_dim = outdim;
    t->time_embed_dim_stated = 1;
    return 0;
}

/* denoiser_config: DiscreteDenoiser, EpsScaling / VScaling, LegacyDDPMDiscretization. */
static int sgm_denoiser(const cJSON *y, const char *file, sd_ldm_sched *sched, sd_error *err) {
    const cJSON *d = at(y, "model.params.denoiser_config");
    char where[512], target[256];
    snprintf(where, sizeof where, "%s (model.params.denoiser_config)", file);
    if (!d || cJSON_IsNull(d)) return 0;
    if (!cJSON_IsObject(d)) return sd_fail(err, "%s: expected a mapping", where);
    if (sd_json_string(d, where, "target", "", target, sizeof target, err)) return -1;
    if (!target_is(target, "DiscreteDenoiser"))
        return sd_fail(err, "%s: key 'target': '%s' is not supported (expected a DiscreteDenoiser)", where, target);
    const cJSON *p = at(y, "model.params.denoiser_config.params");
    snprintf(where, sizeof where, "%s (model.params.denoiser_config.params)", file);
    if (sd_json_int(p, where, "num_idx", sched->num_train_timesteps, &sched->num_train_timesteps, err)) return -1;
    const cJSON *sc = at(y, "model.params.denoiser_config.params.scaling_config");
    if (sc && !cJSON_IsNull(sc)) {
        if (sd_json_string(sc, where, "target", "", target, sizeof target, err)) return -1;
        if (target_is(target, "EpsScaling")) sched->v_prediction = 0;
        else if (target_is(target, "VScaling")) sched->v_prediction = 1;
        else
            return sd_fail(err, "%s: key 'scaling_config.target': '%s' is not supported (EpsScaling or VScaling)",
                           where, target);
    }
    const cJSON *dc = at(y, "model.params.denoiser_config.params.discretization_config");
    if (dc && !cJSON_IsNull(dc)) {
        if (sd_json_string(dc, where, "target", "", target, sizeof target, err)) return -1;
        if (!target_is(target, "LegacyDDPMDiscretization"))
            return sd_fail(err, "%s: key 'discretization_config.target': '%s' is not supported (expected "
                                "LegacyDDPMDiscretization)", where, target);
        const cJSON *dp = at(y, "model.params.denoiser_config.params.discretization_config.params");
        snprintf(where, sizeof where, "%s (model.params.denoiser_config.params.discretization_config.params)", file);
        sched->beta_start = 0.00085; /* LegacyDDPMDiscretization's defaults */
        sched->beta_end = 0.012;
        if (sd_json_float(dp, where, "linear_start", sched->beta_start, &sched->beta_start, err) ||
            sd_json_float(dp, where, "linear_end", sched->beta_end, &sched->beta_end, err) ||
            sd_json_int(dp, where, "num_timesteps", sched->num_train_timesteps, &sched->num_train_timesteps, err))
            return -1;
    }
    if (!(sched->beta_start > 0 && sched->beta_end > sched->beta_start && sched->beta_end < 1))
        return sd_fail(err, "%s: keys 'linear_start'/'linear_end': expected 0 < %g < %g < 1", where, sched->beta_start,
                       sched->beta_end);
    if (sched->num_train_timesteps < 1 || sched->num_train_timesteps > 100000)
        return sd_fail(err, "%s: keys 'num_idx'/'num_timesteps': %d, expected 1..100000", where,
                       sched->num_train_timesteps);
    return 0;
}

int sd_arch_from_sgm_yaml(const cJSON *y, const char *file, sd_unet_arch *unet, sd_vae_arch *vae, sd_sgm_text *text,
                          sd_ldm_sched *sched, sd_error *err) {
    if (!sd_yaml_is_sgm(y))
        return sd_fail(err, "%s: not an SGM DiffusionEngine config (no model.params.network_config): an SDXL "
                            "checkpoint needs an SDXL yaml such as sd_xl_base.yaml", file);
    if (at(y, "model.params.unet_config") || at(y, "model.params.cond_stage_config"))
        return sd_fail(err, "%s: key 'model.params.unet_config': an LDM section in an SGM config", file);
    if (sgm_unet(y, file, unet, err) || yaml_vae(y, file, vae, err) || sgm_conditioner(y, file, unet, text, err) ||
        sgm_denoiser(y, file, sched, err))
        return -1;
    char where[512];
    snprintf(where, sizeof where, "%s (model.params)", file);
    if (sd_json_float(at(y, "model.params"), where, "scale_factor", vae->scaling_factor, &vae->scaling_factor, err))
        return -1;
    if (!(vae->scaling_factor > 0))
        return sd_fail(err, "%s: key 'scale_factor': expected a positive number", where);
    if (text->time_embed_dim_stated && unet->add_embed_in <= SD_ARCH_SDXL_TIME_IDS * unet->addition_time_embed_dim)
        return sd_fail(err, "%s: adm_in_channels %d leaves no room for the pooled text embedding after %d x outdim %d",
                       file, unet->add_embed_in, SD_ARCH_SDXL_TIME_IDS, unet->addition_time_embed_dim);
    return 0;
}
