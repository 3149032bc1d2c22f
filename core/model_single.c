/* Single-file checkpoints: CompVis/LDM (SD 1.x) and Stability SGM (SDXL base
 * layout).  Dialect detection, the architecture (--model-config, <stem>.yaml,
 * SD 1.5 / SDXL base 1.0 defaults; checked against the tensor shapes),
 * synthesised diffusers configs and the prefix + keymap binders. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/ldm_keymap.h"
#include "core/ldm_yaml.h"
#include "core/model_arch.h"
#include "core/model_internal.h"
#include "core/sgm_keymap.h"

#define UNET_PREFIX "model.diffusion_model."
#define VAE_PREFIX "first_stage_model."
#define CLIP_PREFIX "cond_stage_model.transformer."

#define N_TEXT 2 /* text_encoder, text_encoder_2 */

/* What the keys say the checkpoint is. */
typedef struct dialect {
    int sdxl;                  /* SGM layout: conditioner.embedders.{0,1} */
    const char *clip_prefix;   /* text_encoder binder prefix */
    const char *clip_names;    /* where the HF CLIPTextModel names (embeddings.*) begin */
    int old_clip;              /* CLIP keys without the "text_model." level */
} dialect;

/* Everything the architecture step decides, before configs are built. */
typedef struct single_arch {
    int sdxl;
    sd_unet_arch unet;
    sd_vae_arch vae;
    sd_clip_arch clip[N_TEXT];  /* text_encoder, text_encoder_2 (SDXL) */
    sd_ldm_sched sched;
    cJSON *folder_cfg[4];       /* --model-config folder: unet, vae, text_encoder(_2) configs (owned until moved) */
    char *folder_cfg_path[4];
    char *folder;               /* --model-config folder, or NULL */
    char *yaml;                 /* yaml used, or NULL */
    char *clip_src[N_TEXT];     /* SGM yaml: "<yaml> (emb_models[i]: <name>)" when the yaml names a known encoder */
    int explicit_unet, explicit_vae, explicit_clip[N_TEXT];
    int time_dim_stated;        /* addition_time_embed_dim given by a config (else from the weights) */
} single_arch;

static int n_components(const single_arch *a) { return a->sdxl ? 4 : 3; }

static void single_arch_free(single_arch *a) {
    for (int i = 0; i < 4; i++) {
        cJSON_Delete(a->folder_cfg[i]);
        free(a->folder_cfg_path[i]);
    }
    for (int i = 0; i < N_TEXT; i++) free(a->clip_src[i]);
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

static int has_prefix(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

/* Which family the keys belong to; refuses what is neither SD 1.x nor SDXL base. */
static int detect_dialect(const sd_weights *w, const char *path, dialect *d, sd_error *err) {
    const st_file *f = sd_weights_file(w, 0);
    int unet = 0, vae = 0, sd1_hf = 0, sd1_old = 0, xl_hf = 0, xl_old = 0, xl_g = 0, refiner = 0;
    const char *xl_key = NULL;
    memset(d, 0, sizeof *d);
    for (int k = 0; k < f->n_tensors; k++) {
        const char *n = f->tensors[k].name;
        if (has_prefix(n, "cond_stage_model.model."))
            return sd_fail(err, "%s: an SD 2.x checkpoint (OpenCLIP text encoder, tensor '%s'): SD 2.x single files are "
                                "not supported yet", path, n);
        if (has_prefix(n, "conditioner.embedders.") && !xl_key) xl_key = n;
        unet |= has_prefix(n, UNET_PREFIX);
        vae |= has_prefix(n, VAE_PREFIX);
        sd1_hf |= has_prefix(n, CLIP_PREFIX "text_model.");
        sd1_old |= has_prefix(n, CLIP_PREFIX "embeddings.");
        xl_hf |= has_prefix(n, SGM_CLIP_PREFIX "text_model.");
        xl_old |= has_prefix(n, SGM_CLIP_PREFIX "embeddings.");
        xl_g |= has_prefix(n, SGM_OPENCLIP_PREFIX);
        refiner |= has_prefix(n, SGM_REFINER_OPENCLIP_PREFIX);
    }
    if (!unet)
        return sd_fail(err, "%s: no '" UNET_PREFIX "*' tensors: not a CompVis/LDM or SGM Stable Diffusion checkpoint (a "
                            "single diffusers component file? give the pipeline folder instead)", path);
    if (!vae) return sd_fail(err, "%s: no '" VAE_PREFIX "*' tensors: the checkpoint has no VAE", path);
    if (xl_key) {
        if (sd1_hf || sd1_old)
            return sd_fail(err, "%s: both SD 1.x ('" CLIP_PREFIX "*') and SDXL ('%s') text encoder tensors", path, xl_key);
        if (refiner && !xl_hf && !xl_old)
            return sd_fail(err, "%s: an SDXL refiner checkpoint (only an OpenCLIP text encoder under '"
                                SGM_REFINER_OPENCLIP_PREFIX "'): SDXL refiner single files are not supported", path);
        if (!xl_hf && !xl_old)
            return sd_fail(err, "%s: an SDXL checkpoint ('%s') without '" SGM_CLIP_PREFIX "text_model.*' tensors: the "
                                "CLIP ViT-L text encoder (text_encoder) is missing", path, xl_key);
        if (!xl_g)
            return sd_fail(err, "%s: an SDXL checkpoint without '" SGM_OPENCLIP_PREFIX "*' tensors: the OpenCLIP text "
                                "encoder (text_encoder_2) is missing", path);
        d->sdxl = 1;
        d->old_clip = !xl_hf;
        d->clip_prefix = SGM_CLIP_PREFIX;
        d->clip_names = xl_hf ? SGM_CLIP_PREFIX "text_model." : SGM_CLIP_PREFIX;
        return 0;
    }
    if (!sd1_hf && !sd1_old)
        return sd_fail(err, "%s: no '" CLIP_PREFIX "text_model.*' tensors: the checkpoint has no CLIP text encoder", path);
    d->old_clip = !sd1_hf;
    d->clip_prefix = CLIP_PREFIX;
    d->clip_names = sd1_hf ? CLIP_PREFIX "text_model." : CLIP_PREFIX;
    return 0;
}

/* ---- where the architecture comes from ---- */

static const char *const component_dirs[4] = {"unet", "vae", "text_encoder", "text_encoder_2"};

static int arch_from_folder(single_arch *a, const char *dir, sd_error *err) {
    int nc = n_components(a);
    a->folder = model_strf("%s", dir);
    for (int i = 0; i < nc; i++) {
        if (!(a->folder_cfg_path[i] = model_strf("%s/%s/config.json", dir, component_dirs[i])))
            return sd_fail(err, "out of memory");
        if (!sd_is_file(a->folder_cfg_path[i]))
            return sd_fail(err, "%s: missing (a --model-config folder must hold unet/, vae/, text_encoder/%s config.json "
                                "files)", a->folder_cfg_path[i], a->sdxl ? " and text_encoder_2/ (SDXL)" : "");
        if (sd_json_load(a->folder_cfg_path[i], &a->folder_cfg[i], err)) return -1;
    }
    a->explicit_unet = a->explicit_vae = 1;
    a->time_dim_stated = 1;
    for (int i = 0; i < nc - 2; i++) a->explicit_clip[i] = 1;
    if (sd_unet_arch_from_config(a->folder_cfg[0], a->folder_cfg_path[0], &a->unet, err) ||
        sd_vae_arch_from_config(a->folder_cfg[1], a->folder_cfg_path[1], &a->vae, err))
        return -1;
    for (int i = 0; i < nc - 2; i++)
        if (sd_clip_arch_from_config(a->folder_cfg[2 + i], a->folder_cfg_path[2 + i], &a->clip[i], err)) return -1;
    return 0;
}

/* An SGM yaml for an SDXL checkpoint: UNet, VAE, scheduler; the text encoders
 * when it names ones whose sizes are known (else they come from the weights). */
static int arch_from_sgm_yaml(single_arch *a, const cJSON *y, const char *path, sd_error *err) {
    sd_sgm_text t;
    memset(&t, 0, sizeof t);
    if (sd_arch_from_sgm_yaml(y, path, &a->unet, &a->vae, &t, &a->sched, err)) return -1;
    a->explicit_unet = a->explicit_vae = 1;
    a->time_dim_stated = t.time_embed_dim_stated;
    const sd_clip_arch *known[N_TEXT] = {t.te1_known ? &t.te1 : NULL, t.te2_known ? &t.te2 : NULL};
    const char *names[N_TEXT] = {t.te1_name, t.te2_name};
    for (int i = 0; i < N_TEXT; i++) {
        if (!known[i]) continue;
        a->clip[i] = *known[i];
        a->explicit_clip[i] = 1;
        if (!(a->clip_src[i] = model_strf("%s (conditioner emb_models[%d]: %s)", path, i, names[i])))
            return sd_fail(err, "out of memory");
    }
    return 0;
}

static int arch_from_yaml(single_arch *a, const char *path, sd_error *err) {
    cJSON *y;
    a->yaml = model_strf("%s", path);
    if (ldm_yaml_load(path, &y, err)) return -1;
    int rc;
    if (a->sdxl && !sd_yaml_is_sgm(y)) {
        rc = sd_fail(err, "%s: an LDM (SD 1.x) yaml, but the checkpoint is SDXL (conditioner.embedders.* tensors): it "
                          "needs an SGM DiffusionEngine config such as sd_xl_base.yaml", path);
    } else if (a->sdxl) {
        rc = arch_from_sgm_yaml(a, y, path, err);
    } else {
        rc = sd_arch_from_ldm_yaml(y, path, &a->unet, &a->vae, &a->sched, err);
        a->explicit_unet = a->explicit_vae = 1; /* LDM yamls say nothing about CLIP: read it from the weights */
    }
    cJSON_Delete(y);
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
    if (a->sdxl) {
        sd_unet_arch_sdxl(&a->unet);
        sd_vae_arch_sdxl(&a->vae);
        sd_clip_arch_sd15(&a->clip[0]); /* CLIP ViT-L/14, as SD 1.5's */
        sd_clip_arch_sdxl_g(&a->clip[1]);
    } else {
        sd_unet_arch_sd15(&a->unet);
        sd_vae_arch_sd15(&a->vae);
        sd_clip_arch_sd15(&a->clip[0]);
    }
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

/* Guess for a head count nothing states: CLIP-L, OpenCLIP and SDXL's UNet use
 * 64-wide heads (768 -> 12, 1280 -> 20). */
static int heads_guess(int width) { return width % 64 == 0 ? width / 64 : 1; }

/* SDXL: the added conditioning must fit text_encoder_2's pooled width:
 * projection_class_embeddings_input_dim = projection_dim + 6 x addition_time_embed_dim. */
static int check_added_cond(single_arch *a, const char *ckpt, sd_error *err) {
    const sd_clip_arch *g = &a->clip[1];
    if (!a->unet.text_time)
        return sd_fail(err, "%s: missing tensor '" UNET_PREFIX "label_emb.0.0.weight' (SDXL's added conditioning, "
                            "add_embedding.linear_1)", ckpt);
    if (!g->with_projection)
        return sd_fail(err, "%s: missing tensor '" SGM_OPENCLIP_PREFIX "text_projection' (text_encoder_2's projection, "
                            "SDXL's pooled text embedding)", ckpt);
    int rest = a->unet.add_embed_in - g->projection_dim;
    if (!a->time_dim_stated) {
        if (rest <= 0 || rest % SD_ARCH_SDXL_TIME_IDS)
            return sd_fail(err, "%s: tensor '" UNET_PREFIX "label_emb.0.0.weight' takes %d inputs; with the pooled text "
                                "embedding of %d ('" SGM_OPENCLIP_PREFIX "text_projection') that leaves %d, not %d time-id "
                                "sinusoids of one width", ckpt, a->unet.add_embed_in, g->projection_dim, rest,
                           SD_ARCH_SDXL_TIME_IDS);
        a->unet.addition_time_embed_dim = rest / SD_ARCH_SDXL_TIME_IDS;
    } else if (rest != SD_ARCH_SDXL_TIME_IDS * a->unet.addition_time_embed_dim) {
        return sd_fail(err, "%s: tensor '" UNET_PREFIX "label_emb.0.0.weight' takes %d inputs, but the pooled text "
                            "embedding (%d, '" SGM_OPENCLIP_PREFIX "text_projection') + %d x addition_time_embed_dim %d "
                            "of %s is %d", ckpt, a->unet.add_embed_in, g->projection_dim, SD_ARCH_SDXL_TIME_IDS,
                       a->unet.addition_time_embed_dim, a->folder ? a->folder_cfg_path[0] : a->yaml,
                       g->projection_dim + SD_ARCH_SDXL_TIME_IDS * a->unet.addition_time_embed_dim);
    }
    return 0;
}

/* Reads the weights' facts: checked against explicit configs, else adopted. */
static int arch_check_weights(single_arch *a, const sd_weights *w, const char *ckpt, const dialect *d, sd_error *err) {
    const char *us = a->folder ? a->folder_cfg_path[0] : a->yaml;
    const char *vs = a->folder ? a->folder_cfg_path[1] : a->yaml;
    sd_unet_arch u = a->unet;
    sd_vae_arch v = a->vae;
    sd_clip_arch c[N_TEXT] = {a->clip[0], a->clip[1]};
    const char *cs[N_TEXT];
    for (int i = 0; i < N_TEXT; i++) cs[i] = a->folder ? a->folder_cfg_path[2 + i] : a->clip_src[i];
    if (sd_unet_arch_from_weights(w, UNET_PREFIX, ckpt, a->explicit_unet ? &u : NULL, us, &a->unet, err) ||
        sd_vae_arch_from_weights(w, VAE_PREFIX, ckpt, a->explicit_vae ? &v : NULL, vs, &a->vae, err) ||
        sd_clip_arch_from_weights(w, d->clip_names, ckpt, a->explicit_clip[0] ? &c[0] : NULL, cs[0], &a->clip[0], err))
        return -1;
    if (a->sdxl && sd_openclip_arch_from_weights(w, SGM_OPENCLIP_PREFIX, ckpt, a->explicit_clip[1] ? &c[1] : NULL, cs[1],
                                                 &a->clip[1], err))
        return -1;
    for (int i = 0; i < (a->sdxl ? 2 : 1); i++) {
        if (a->explicit_clip[i]) continue;
        sd_clip_arch *x = &a->clip[i];
        x->num_heads = x->hidden_size == c[i].hidden_size ? c[i].num_heads : heads_guess(x->hidden_size);
        if (!x->with_projection) x->projection_dim = x->hidden_size;
    }
    if (a->sdxl && !a->explicit_unet) /* SDXL's UNet: 64-wide heads */
        for (int i = 0; i < a->unet.n_levels; i++) a->unet.heads[i] = heads_guess(a->unet.channels[i]);
    return a->sdxl ? check_added_cond(a, ckpt, err) : 0;
}

/* ---- building the model ---- */

static int set_config(sd_component *c, cJSON *cfg, char *path, sd_error *err) {
    c->config = cfg;
    c->config_path = path;
    if (!cfg || !path) return sd_fail(err, "out of memory building the %s config", c->name);
    return 0;
}

static int build_configs(sd_model *m, single_arch *a, const char *ckpt, sd_error *err) {
    sd_component *comp[4] = {&m->unet, &m->vae, &m->text_encoder, &m->text_encoder_2};
    const char *ldm_sect[2] = {"model.params.unet_config", "model.params.first_stage_config"};
    const char *sgm_sect[2] = {"model.params.network_config", "model.params.first_stage_config"};
    const char *defaults = a->sdxl ? "SDXL base 1.0" : "SD 1.5";
    for (int i = 0; i < n_components(a); i++) {
        cJSON *cfg;
        char *path;
        if (a->folder) { /* the folder's configs as they are (they state groups, heads, activation) */
            cfg = a->folder_cfg[i], path = a->folder_cfg_path[i];
            a->folder_cfg[i] = NULL, a->folder_cfg_path[i] = NULL;
        } else {
            cfg = i == 0 ? sd_unet_arch_to_config(&a->unet)
                : i == 1 ? sd_vae_arch_to_config(&a->vae) : sd_clip_arch_to_config(&a->clip[i - 2]);
            if (a->yaml && i < 2)
                path = model_strf("%s (%s, as a diffusers config)", a->yaml, (a->sdxl ? sgm_sect : ldm_sect)[i]);
            else if (i >= 2 && a->clip_src[i - 2])
                path = model_strf("%s, as a diffusers config", a->clip_src[i - 2]);
            else
                path = model_strf("%s (%s defaults, sizes from the weights)", ckpt, defaults);
        }
        if (set_config(comp[i], cfg, path, err)) return -1;
    }
    int te_known = a->explicit_clip[0] && (!a->sdxl || a->explicit_clip[1]);
    m->arch_source = a->folder ? model_strf("--model-config folder %s", a->folder)
                   : a->yaml   ? model_strf("%s yaml %s%s", a->sdxl ? "SGM" : "LDM", a->yaml,
                                            te_known ? "" : " (text encoder sizes from the weights)")
                               : model_strf("%s defaults, sizes read from the weights", defaults);
    return m->arch_source ? 0 : sd_fail(err, "out of memory");
}

/* stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
 * (diffusers' single-file SCHEDULER_DEFAULT_CONFIG as an EulerDiscreteScheduler). */
static cJSON *sdxl_scheduler_config(void) {
    return cJSON_Parse("{\"_class_name\": \"EulerDiscreteScheduler\", \"_diffusers_version\": \"0.19.0.dev0\","
                       " \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
                       " \"clip_sample\": false, \"interpolation_type\": \"linear\", \"num_train_timesteps\": 1000,"
                       " \"prediction_type\": \"epsilon\", \"sample_max_value\": 1.0, \"set_alpha_to_one\": false,"
                       " \"skip_prk_steps\": true, \"steps_offset\": 1, \"timestep_spacing\": \"leading\","
                       " \"trained_betas\": null, \"use_karras_sigmas\": false}");
}

static void set_item(cJSON *obj, const char *key, cJSON *v) {
    if (cJSON_GetObjectItemCaseSensitive(obj, key)) cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v);
    else cJSON_AddItemToObject(obj, key, v);
}

static int build_scheduler(sd_model *m, const single_arch *a, sd_error *err) {
    char *p = a->folder ? model_strf("%s/scheduler/scheduler_config.json", a->folder) : NULL;
    if (p && sd_is_file(p)) {
        m->scheduler_config_path = p;
        return sd_json_load(p, &m->scheduler_config, err);
    }
    free(p);
    cJSON *s = a->sdxl ? sdxl_scheduler_config() : model_sd15_scheduler_config();
    if (!s) return sd_fail(err, "out of memory");
    m->scheduler_config = s;
    set_item(s, "beta_start", cJSON_CreateNumber(a->sched.beta_start));
    set_item(s, "beta_end", cJSON_CreateNumber(a->sched.beta_end));
    set_item(s, "num_train_timesteps", cJSON_CreateNumber(a->sched.num_train_timesteps));
    if (a->sched.v_prediction) set_item(s, "prediction_type", cJSON_CreateString("v_prediction"));
    const char *what = a->sdxl ? "SDXL base 1.0 EulerDiscreteScheduler" : "SD 1.5 PNDM";
    m->scheduler_config_path = a->yaml ? model_strf("%s scheduler config with the betas of %s", what, a->yaml)
                                       : model_strf("%s scheduler config (built in)", what);
    return m->scheduler_config_path ? 0 : sd_fail(err, "out of memory");
}

/* <folder>/<sub> when the --model-config folder has that tokenizer, else
 * <assets>/<sub> (assets/tokenizer_2 = the same BPE files with SDXL's pad "!"). */
static int build_tokenizer(sd_model *m, const single_arch *a, const sd_model_options *opt, sd_error *err) {
    static const char *const subs[2] = {"tokenizer", "tokenizer_2"};
    char **out[2] = {&m->tokenizer_dir, &m->tokenizer_2_dir};
    for (int i = 0; i < (a->sdxl ? 2 : 1); i++) {
        if (a->folder) {
            char *t = model_strf("%s/%s", a->folder, subs[i]);
            sd_error ignore = {0};
            if (t && !model_check_tokenizer(t, subs[i], &ignore)) {
                *out[i] = t;
                continue;
            }
            free(t);
        }
        char *assets = sd_model_assets_dir(opt, err);
        if (!assets) return sd_error_prefix(err, "%s: a single-file checkpoint carries no tokenizer", m->path);
        *out[i] = model_strf("%s/%s", assets, subs[i]);
        free(assets);
        if (!*out[i]) return sd_fail(err, "out of memory");
        if (i == 1 && model_check_tokenizer(*out[i], subs[i], err))
            return sd_error_prefix(err, "%s: an SDXL single file carries no tokenizer_2 (expected in the assets folder)",
                                   m->path);
    }
    return 0;
}

static int build_model_index(sd_model *m, const single_arch *a, sd_error *err) {
    m->model_index = cJSON_Parse(
        a->sdxl ? "{\"_class_name\": \"StableDiffusionXLPipeline\", \"_diffusers_version\": \"0.27.2\","
                  " \"feature_extractor\": [null, null], \"force_zeros_for_empty_prompt\": true,"
                  " \"image_encoder\": [null, null], \"scheduler\": [\"diffusers\", \"EulerDiscreteScheduler\"],"
                  " \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],"
                  " \"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"],"
                  " \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],"
                  " \"tokenizer_2\": [\"transformers\", \"CLIPTokenizer\"],"
                  " \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],"
                  " \"vae\": [\"diffusers\", \"AutoencoderKL\"]}"
                : "{\"_class_name\": \"StableDiffusionPipeline\", \"_diffusers_version\": \"0.27.2\","
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

/* The components share one mapping; each binder sees its prefix. */
static int build_binders(sd_model *m, const single_arch *a, const dialect *d, sd_error *err) {
    ldm_unet_layout ul;
    ldm_vae_layout vl = {a->vae.n_levels};
    sd_name_map_fn umap, vmap;
    sd_unet_arch_layout(&a->unet, &ul);
    if (ldm_unet_map_fn(&ul, &umap, err) || ldm_vae_map_fn(&vl, &vmap, err)) return -1;
    m->unet.binder = (sd_binder){.w = m->shared, .component = "unet", .prefix = UNET_PREFIX, .map = umap};
    m->vae.binder = (sd_binder){.w = m->shared, .component = "vae", .prefix = VAE_PREFIX, .map = vmap};
    m->text_encoder.binder = (sd_binder){.w = m->shared, .component = "text_encoder", .prefix = d->clip_prefix,
                                         .map = d->old_clip ? ldm_clip_strip_text_model : NULL};
    if (a->sdxl)
        m->text_encoder_2.binder = (sd_binder){.w = m->shared, .component = "text_encoder_2", .prefix = SGM_OPENCLIP_PREFIX, .map = sgm_openclip_key};
    for (int i = 0; i < n_components(a); i++) {
        sd_component *c = sd_model_component(m, i);
        c->present = 1;
        c->weights = m->shared;
        if (!(c->files = calloc(1, sizeof(char *))) || !(c->files[0] = model_strf("%s", m->path)))
            return sd_fail(err, "out of memory");
        c->n_files = 1;
    }
    model_ignore_position_ids(&m->text_encoder);
    if (a->sdxl) sd_binder_ignore(&m->text_encoder_2.binder, "logit_scale"); /* CLIP's temperature: unused */
    return 0;
}

int model_open_single(sd_model *m, const char *path, const sd_model_options *opt, sd_error *err) {
    m->kind = SD_MODEL_SINGLE_FILE;
    if (opt->variant && *opt->variant)
        return sd_fail(err, "%s: --variant %s applies to diffusers folders; a single-file checkpoint has one set of "
                            "weights", path, opt->variant);
    if (refuse_pickle(path, err)) return -1;
    const char *paths[1] = {path};
    dialect d;
    if (sd_weights_open(&m->shared, paths, 1, err) || detect_dialect(m->shared, path, &d, err)) return -1;
    single_arch a;
    memset(&a, 0, sizeof a);
    a.sdxl = d.sdxl;
    int rc = choose_arch(&a, path, opt, err);
    if (!rc) rc = arch_check_weights(&a, m->shared, path, &d, err);
    if (!rc) rc = build_configs(m, &a, path, err);
    if (!rc) rc = build_scheduler(m, &a, err);
    if (!rc) rc = build_tokenizer(m, &a, opt, err);
    if (!rc) rc = build_model_index(m, &a, err);
    if (!rc) rc = build_binders(m, &a, &d, err);
    single_arch_free(&a);
    return rc;
}
