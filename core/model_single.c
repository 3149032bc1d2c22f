/* Single-file CompVis/LDM checkpoints: dialect detection, the architecture
 * (--model-config, <stem>.yaml, SD 1.5 defaults; checked against the tensor
 * shapes), synthesised diffusers configs and the prefix + keymap binders. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/ldm_keymap.h"
#include "core/ldm_yaml.h"
#include "core/model_arch.h"
#include "core/model_internal.h"

#define UNET_PREFIX "model.diffusion_model."
#define VAE_PREFIX "first_stage_model."
#define CLIP_PREFIX "cond_stage_model.transformer."

/* Everything the architecture step decides, before configs are built. */
typedef struct single_arch {
    sd_unet_arch unet;
    sd_vae_arch vae;
    sd_clip_arch clip;
    sd_ldm_sched sched;
    cJSON *folder_cfg[3];     /* --model-config folder: unet, vae, text_encoder configs (owned until moved) */
    char *folder_cfg_path[3];
    char *folder;             /* --model-config folder, or NULL */
    char *yaml;               /* yaml used, or NULL */
    int explicit_unet, explicit_vae, explicit_clip;
} single_arch;

static void single_arch_free(single_arch *a) {
    for (int i = 0; i < 3; i++) {
        cJSON_Delete(a->folder_cfg[i]);
        free(a->folder_cfg_path[i]);
    }
    free(a->folder);
    free(a->yaml);
}

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* PyTorch pickles (.ckpt/.pt/.pth/.bin, or a zip / pickle-protocol signature)
 * are refused -- unless the bytes are a safetensors header (u64 length, then
 * '{'), whatever the file is called: a header length can start with 0x80. */
static int refuse_pickle(const char *path, sd_error *err) {
    static const char *const exts[] = {".ckpt", ".pt", ".pth", ".bin", ".pkl"};
    unsigned char sig[9] = {0};
    size_t n = 0;
    FILE *fp = fopen(path, "rb");
    if (fp) {
        n = fread(sig, 1, sizeof sig, fp);
        fclose(fp);
    }
    if (n == sizeof sig && sig[8] == '{') return 0;
    int pickle = (n >= 4 && !memcmp(sig, "PK\x03\x04", 4)) || (n >= 2 && sig[0] == 0x80 && sig[1] >= 2 && sig[1] <= 5);
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) pickle |= has_suffix(path, exts[i]);
    if (!pickle) return 0;
    return sd_fail(err, "%s: a PyTorch pickle checkpoint; sdmoe reads only .safetensors (a pickle can run code when "
                        "loaded): convert it to safetensors first (e.g. A1111's checkpoint merger with the safetensors "
                        "format, or diffusers' convert_original_stable_diffusion_to_diffusers.py --to_safetensors)", path);
}

/* Which families the keys belong to; refuses what is not SD 1.x. */
static int detect_dialect(const sd_weights *w, const char *path, const char **clip_prefix, sd_error *err) {
    const st_file *f = sd_weights_file(w, 0);
    int unet = 0, vae = 0, clip_hf = 0, clip_old = 0;
    for (int k = 0; k < f->n_tensors; k++) {
        const char *n = f->tensors[k].name;
        if (!strncmp(n, "conditioner.embedders.", 22))
            return sd_fail(err, "%s: an SDXL checkpoint (tensor '%s'): SDXL single files are not supported yet; use "
                                "a diffusers folder", path, n);
        if (!strncmp(n, "cond_stage_model.model.", 23))
            return sd_fail(err, "%s: an SD 2.x checkpoint (OpenCLIP text encoder, tensor '%s'): SD 2.x single files are "
                                "not supported yet", path, n);
        unet |= !strncmp(n, UNET_PREFIX, strlen(UNET_PREFIX));
        vae |= !strncmp(n, VAE_PREFIX, strlen(VAE_PREFIX));
        clip_hf |= !strncmp(n, CLIP_PREFIX "text_model.", strlen(CLIP_PREFIX "text_model."));
        clip_old |= !strncmp(n, CLIP_PREFIX "embeddings.", strlen(CLIP_PREFIX "embeddings."));
    }
    if (!unet)
        return sd_fail(err, "%s: no '" UNET_PREFIX "*' tensors: not a CompVis/LDM Stable Diffusion checkpoint (a "
                            "single diffusers component file? give the pipeline folder instead)", path);
    if (!vae) return sd_fail(err, "%s: no '" VAE_PREFIX "*' tensors: the checkpoint has no VAE", path);
    if (!clip_hf && !clip_old)
        return sd_fail(err, "%s: no '" CLIP_PREFIX "text_model.*' tensors: the checkpoint has no CLIP text encoder", path);
    *clip_prefix = clip_hf ? CLIP_PREFIX "text_model." : CLIP_PREFIX;
    return 0;
}

/* ---- where the architecture comes from ---- */

static int arch_from_folder(single_arch *a, const char *dir, sd_error *err) {
    static const char *const sub[3] = {"unet", "vae", "text_encoder"};
    a->folder = model_strf("%s", dir);
    for (int i = 0; i < 3; i++) {
        if (!(a->folder_cfg_path[i] = model_strf("%s/%s/config.json", dir, sub[i]))) return sd_fail(err, "out of memory");
        if (!sd_is_file(a->folder_cfg_path[i]))
            return sd_fail(err, "%s: missing (a --model-config folder must hold unet/, vae/ and text_encoder/ "
                                "config.json files)", a->folder_cfg_path[i]);
        if (sd_json_load(a->folder_cfg_path[i], &a->folder_cfg[i], err)) return -1;
    }
    a->explicit_unet = a->explicit_vae = a->explicit_clip = 1;
    return sd_unet_arch_from_config(a->folder_cfg[0], a->folder_cfg_path[0], &a->unet, err) ||
           sd_vae_arch_from_config(a->folder_cfg[1], a->folder_cfg_path[1], &a->vae, err) ||
           sd_clip_arch_from_config(a->folder_cfg[2], a->folder_cfg_path[2], &a->clip, err);
}

static int arch_from_yaml(single_arch *a, const char *path, sd_error *err) {
    cJSON *y;
    a->yaml = model_strf("%s", path);
    if (ldm_yaml_load(path, &y, err)) return -1;
    int rc = sd_arch_from_ldm_yaml(y, path, &a->unet, &a->vae, &a->sched, err);
    cJSON_Delete(y);
    a->explicit_unet = a->explicit_vae = 1; /* LDM yamls say nothing about CLIP: read it from the weights */
    return rc;
}

/* <dir>/<stem>.yaml beside the checkpoint (A1111's convention), or NULL. */
static char *beside_yaml(const char *ckpt) {
    char *y = model_strf("%s", ckpt);
    if (!y) return NULL;
    char *dot = strrchr(y, '.'), *slash = strrchr(y, '/');
    if (dot && (!slash || dot > slash)) *dot = '\0';
    char *p = model_strf("%s.yaml", y);
    free(y);
    if (p && sd_is_file(p)) return p;
    free(p);
    return NULL;
}

static int choose_arch(single_arch *a, const char *ckpt, const sd_model_options *opt, sd_error *err) {
    sd_unet_arch_sd15(&a->unet);
    sd_vae_arch_sd15(&a->vae);
    sd_clip_arch_sd15(&a->clip);
    a->sched = (sd_ldm_sched){0.00085, 0.012, 1000, 0};
    if (opt->model_config && *opt->model_config) {
        if (sd_is_dir(opt->model_config)) return arch_from_folder(a, opt->model_config, err);
        if (!sd_is_file(opt->model_config))
            return sd_fail(err, "%s: --model-config: no such file or folder", opt->model_config);
        return arch_from_yaml(a, opt->model_config, err);
    }
    char *y = beside_yaml(ckpt);
    if (!y) return 0;
    int rc = arch_from_yaml(a, y, err);
    free(y);
    return rc;
}

/* Guess for the CLIP head count when nothing states it: CLIP-L and OpenCLIP
 * use 64-wide heads (768 -> 12). */
static int clip_heads_guess(int hidden) { return hidden % 64 == 0 ? hidden / 64 : 1; }

/* Reads the weights' facts: checked against explicit configs, else adopted. */
static int arch_check_weights(single_arch *a, const sd_weights *w, const char *ckpt, const char *clip_prefix,
                              sd_error *err) {
    const char *us = a->folder ? a->folder_cfg_path[0] : a->yaml;
    const char *vs = a->folder ? a->folder_cfg_path[1] : a->yaml;
    sd_unet_arch u = a->unet;
    sd_vae_arch v = a->vae;
    sd_clip_arch c = a->clip;
    if (sd_unet_arch_from_weights(w, UNET_PREFIX, ckpt, a->explicit_unet ? &u : NULL, us, &a->unet, err) ||
        sd_vae_arch_from_weights(w, VAE_PREFIX, ckpt, a->explicit_vae ? &v : NULL, vs, &a->vae, err) ||
        sd_clip_arch_from_weights(w, clip_prefix, ckpt, a->explicit_clip ? &c : NULL, a->folder_cfg_path[2], &a->clip,
                                  err))
        return -1;
    if (!a->explicit_clip) {
        a->clip.num_heads = a->clip.hidden_size == c.hidden_size ? c.num_heads : clip_heads_guess(a->clip.hidden_size);
        a->clip.projection_dim = a->clip.hidden_size;
    }
    return 0;
}

/* ---- building the model ---- */

static int set_config(sd_component *c, cJSON *cfg, char *path, sd_error *err) {
    c->config = cfg;
    c->config_path = path;
    if (!cfg || !path) return sd_fail(err, "out of memory building the %s config", c->name);
    return 0;
}

static int build_configs(sd_model *m, single_arch *a, const char *ckpt, sd_error *err) {
    sd_component *comp[3] = {&m->unet, &m->vae, &m->text_encoder};
    const char *sect[3] = {"model.params.unet_config", "model.params.first_stage_config", "weights"};
    for (int i = 0; i < 3; i++) {
        cJSON *cfg;
        char *path;
        if (a->folder) { /* the folder's configs as they are (they state groups, heads, activation) */
            cfg = a->folder_cfg[i], path = a->folder_cfg_path[i];
            a->folder_cfg[i] = NULL, a->folder_cfg_path[i] = NULL;
        } else {
            cfg = i == 0 ? sd_unet_arch_to_config(&a->unet)
                : i == 1 ? sd_vae_arch_to_config(&a->vae) : sd_clip_arch_to_config(&a->clip);
            path = a->yaml && i < 2 ? model_strf("%s (%s, as a diffusers config)", a->yaml, sect[i])
                                    : model_strf("%s (SD 1.5 defaults, sizes from the %s)", ckpt, sect[2]);
        }
        if (set_config(comp[i], cfg, path, err)) return -1;
    }
    m->arch_source = a->folder ? model_strf("--model-config folder %s", a->folder)
                   : a->yaml   ? model_strf("LDM yaml %s (text encoder sizes from the weights)", a->yaml)
                               : model_strf("SD 1.5 defaults, sizes read from the weights");
    return m->arch_source ? 0 : sd_fail(err, "out of memory");
}

static int build_scheduler(sd_model *m, const single_arch *a, sd_error *err) {
    char *p = a->folder ? model_strf("%s/scheduler/scheduler_config.json", a->folder) : NULL;
    if (p && sd_is_file(p)) {
        m->scheduler_config_path = p;
        return sd_json_load(p, &m->scheduler_config, err);
    }
    free(p);
    cJSON *s = model_sd15_scheduler_config();
    if (!s) return sd_fail(err, "out of memory");
    m->scheduler_config = s;
    cJSON_ReplaceItemInObjectCaseSensitive(s, "beta_start", cJSON_CreateNumber(a->sched.beta_start));
    cJSON_ReplaceItemInObjectCaseSensitive(s, "beta_end", cJSON_CreateNumber(a->sched.beta_end));
    cJSON_ReplaceItemInObjectCaseSensitive(s, "num_train_timesteps", cJSON_CreateNumber(a->sched.num_train_timesteps));
    if (a->sched.v_prediction) cJSON_AddStringToObject(s, "prediction_type", "v_prediction");
    m->scheduler_config_path = a->yaml ? model_strf("SD 1.5 PNDM scheduler config with the betas of %s", a->yaml)
                                       : model_strf("SD 1.5 PNDM scheduler config (built in)");
    return m->scheduler_config_path ? 0 : sd_fail(err, "out of memory");
}

static int build_tokenizer(sd_model *m, const single_arch *a, const sd_model_options *opt, sd_error *err) {
    if (a->folder) {
        char *t = model_strf("%s/tokenizer", a->folder);
        sd_error ignore = {0};
        if (t && !model_check_tokenizer(t, "tokenizer", &ignore)) {
            m->tokenizer_dir = t;
            return 0;
        }
        free(t);
    }
    char *assets = sd_model_assets_dir(opt, err);
    if (!assets) return sd_error_prefix(err, "%s: a single-file checkpoint carries no tokenizer", m->path);
    m->tokenizer_dir = model_strf("%s/tokenizer", assets);
    free(assets);
    return m->tokenizer_dir ? 0 : sd_fail(err, "out of memory");
}

static int build_model_index(sd_model *m, sd_error *err) {
    m->model_index = cJSON_Parse("{\"_class_name\": \"StableDiffusionPipeline\", \"_diffusers_version\": \"0.27.2\","
                                 " \"feature_extractor\": [null, null], \"requires_safety_checker\": false,"
                                 " \"safety_checker\": [null, null], \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],"
                                 " \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],"
                                 " \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],"
                                 " \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],"
                                 " \"vae\": [\"diffusers\", \"AutoencoderKL\"]}");
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(m->scheduler_config, "_class_name");
    if (m->model_index && cJSON_IsString(cls)) {
        const char *pair[2] = {"diffusers", cls->valuestring};
        cJSON_ReplaceItemInObjectCaseSensitive(m->model_index, "scheduler", cJSON_CreateStringArray(pair, 2));
    }
    m->model_index_path = model_strf("%s (synthesised model_index.json)", m->path);
    return m->model_index && m->model_index_path ? 0 : sd_fail(err, "out of memory");
}

/* The three components share one mapping; each binder sees its prefix. */
static int build_binders(sd_model *m, const sd_unet_arch *ua, const sd_vae_arch *va, const char *clip_prefix,
                         sd_error *err) {
    ldm_unet_layout ul;
    ldm_vae_layout vl = {va->n_levels};
    sd_name_map_fn umap, vmap;
    sd_unet_arch_layout(ua, &ul);
    if (ldm_unet_map_fn(&ul, &umap, err) || ldm_vae_map_fn(&vl, &vmap, err)) return -1;
    int old_clip = strcmp(clip_prefix, CLIP_PREFIX) == 0;
    m->unet.binder = (sd_binder){m->shared, "unet", UNET_PREFIX, umap, 0};
    m->vae.binder = (sd_binder){m->shared, "vae", VAE_PREFIX, vmap, 0};
    m->text_encoder.binder = (sd_binder){m->shared, "text_encoder", CLIP_PREFIX,
                                         old_clip ? ldm_clip_strip_text_model : NULL, 0};
    sd_component *comp[3] = {&m->unet, &m->vae, &m->text_encoder};
    for (int i = 0; i < 3; i++) {
        sd_component *c = comp[i];
        c->present = 1;
        c->weights = m->shared;
        if (!(c->files = calloc(1, sizeof(char *))) || !(c->files[0] = model_strf("%s", m->path)))
            return sd_fail(err, "out of memory");
        c->n_files = 1;
    }
    model_ignore_position_ids(&m->text_encoder);
    return 0;
}

int model_open_single(sd_model *m, const char *path, const sd_model_options *opt, sd_error *err) {
    m->kind = SD_MODEL_SINGLE_FILE;
    if (opt->variant && *opt->variant)
        return sd_fail(err, "%s: --variant %s applies to diffusers folders; a single-file checkpoint has one set of "
                            "weights", path, opt->variant);
    if (refuse_pickle(path, err)) return -1;
    const char *paths[1] = {path}, *clip_prefix = NULL;
    if (sd_weights_open(&m->shared, paths, 1, err) || detect_dialect(m->shared, path, &clip_prefix, err)) return -1;
    single_arch a;
    memset(&a, 0, sizeof a);
    int rc = choose_arch(&a, path, opt, err);
    if (!rc) rc = arch_check_weights(&a, m->shared, path, clip_prefix, err);
    if (!rc) rc = build_configs(m, &a, path, err);
    if (!rc) rc = build_scheduler(m, &a, err);
    if (!rc) rc = build_tokenizer(m, &a, opt, err);
    if (!rc) rc = build_model_index(m, err);
    if (!rc) rc = build_binders(m, &a.unet, &a.vae, clip_prefix, err);
    single_arch_free(&a);
    return rc;
}
