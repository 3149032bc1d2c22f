/* Model opening: the common parts and diffusers folders (file names and
 * variant/shard rules as diffusers v0.27.2 pipeline_utils / modeling_utils
 * resolve them).  Single-file checkpoints are in model_single.c. */
#include "core/model.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/model_arch.h"
#include "core/model_internal.h"
#include "core/sha256.h"
#include "core/weight_cache.h"

static const char *const component_names[SD_MODEL_N_COMPONENTS] = {"unet", "vae", "text_encoder", "text_encoder_2"};

/* ---- small helpers ---- */

char *model_strf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

int model_check_tokenizer(const char *dir, const char *what, sd_error *err) {
    static const char *const files[] = {"vocab.json", "merges.txt"};
    if (!sd_is_dir(dir)) return sd_fail(err, "%s: missing %s folder", dir, what);
    for (int i = 0; i < 2; i++) {
        char *p = sd_path_join(dir, files[i]);
        int ok = p && sd_is_file(p);
        free(p);
        if (!ok) return sd_fail(err, "%s: %s has no %s (a CLIP BPE tokenizer needs vocab.json and merges.txt)", dir, what,
                                files[i]);
    }
    return 0;
}

cJSON *model_sd15_scheduler_config(void) {
    /* runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json */
    return cJSON_Parse("{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": \"0.6.0\","
                       " \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
                       " \"clip_sample\": false, \"num_train_timesteps\": 1000, \"set_alpha_to_one\": false,"
                       " \"skip_prk_steps\": true, \"steps_offset\": 1, \"trained_betas\": null}");
}

void model_ignore_position_ids(sd_component *c) {
    if (c->present && c->weights) sd_binder_ignore(&c->binder, "text_model.embeddings.position_ids");
}

sd_component *sd_model_component(sd_model *m, int i) {
    sd_component *all[SD_MODEL_N_COMPONENTS] = {&m->unet, &m->vae, &m->text_encoder, &m->text_encoder_2};
    return (i >= 0 && i < SD_MODEL_N_COMPONENTS) ? all[i] : NULL;
}

/* Display name: last path element, without a .safetensors extension. */
static char *display_name(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    char *s = model_strf("%.*s", (int)(n - b), path + b);
    const char *ext = ".safetensors";
    size_t sl = s ? strlen(s) : 0, el = strlen(ext);
    if (sl > el && !strcmp(s + sl - el, ext)) s[sl - el] = '\0';
    return s;
}

/* ---- diffusers folders ---- */

/* model_index.json lists `key` as [library, class]; [null, null] or absent = 0. */
static int index_lists(const cJSON *idx, const char *file, const char *key, int *listed, sd_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(idx, key);
    *listed = 0;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2)
        return sd_fail(err, "%s: key '%s': expected [library, class]", file, key);
    const cJSON *cls = cJSON_GetArrayItem(v, 1);
    if (cJSON_IsNull(cls)) return 0;
    if (!cJSON_IsString(cls)) return sd_fail(err, "%s: key '%s': expected [library, class] with a class name", file, key);
    *listed = 1;
    return 0;
}

/* A shard name from an index must be a plain file name inside the component folder. */
static int shard_name_ok(const char *s) {
    return s[0] && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

/* Reads <index>.json's weight_map into the list of distinct shard files. */
static int read_shard_index(sd_component *c, const char *cdir, const char *index_path, cJSON **index, sd_error *err) {
    if (sd_json_load(index_path, index, err)) return -1;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(*index, "weight_map");
    if (!cJSON_IsObject(wm) || !wm->child)
        return sd_fail(err, "%s: key 'weight_map': expected a non-empty object {tensor: shard file}", index_path);
    int cap = cJSON_GetArraySize(wm);
    c->files = calloc((size_t)cap, sizeof(char *));
    if (!c->files) return sd_fail(err, "%s: out of memory", index_path);
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring))
            return sd_fail(err, "%s: key 'weight_map'.'%s': expected the file name of a shard in %s", index_path,
                           e->string, cdir);
        int seen = 0;
        for (int i = 0; i < c->n_files && !seen; i++) seen = !strcmp(strrchr(c->files[i], '/') + 1, e->valuestring);
        if (!seen && !(c->files[c->n_files++] = model_strf("%s/%s", cdir, e->valuestring)))
            return sd_fail(err, "%s: out of memory", index_path);
    }
    return 0;
}

/* Every tensor the index names must be in the shard it names. */
static int check_shard_index(const sd_component *c, const cJSON *index, const char *index_path, sd_error *err) {
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
    for (const cJSON *e = wm->child; e; e = e->next) {
        const st_file *f = NULL;
        for (int i = 0; i < sd_weights_file_count(c->weights) && !f; i++) {
            const st_file *fi = sd_weights_file(c->weights, i);
            if (!strcmp(strrchr(fi->path, '/') + 1, e->valuestring)) f = fi;
        }
        if (!f || !st_find(f, e->string))
            return sd_fail(err, "%s: key 'weight_map'.'%s': tensor not found in shard %s", index_path, e->string,
                           e->valuestring);
    }
    return 0;
}

/* Candidate weight files of a component folder, in diffusers' order. */
static int find_weight_file(const char *cdir, const char *variant, char **single, char **index) {
    static const char *const bases[] = {"diffusion_pytorch_model", "model"};
    *single = *index = NULL;
    for (int b = 0; b < 2; b++) {
        char *s = variant ? model_strf("%s/%s.%s.safetensors", cdir, bases[b], variant)
                          : model_strf("%s/%s.safetensors", cdir, bases[b]);
        /* diffusers' _add_variant puts the variant before the last extension */
        char *x = variant ? model_strf("%s/%s.safetensors.index.%s.json", cdir, bases[b], variant)
                          : model_strf("%s/%s.safetensors.index.json", cdir, bases[b]);
        char *y = variant ? model_strf("%s/%s.%s.safetensors.index.json", cdir, bases[b], variant) : NULL;
        if (s && sd_is_file(s)) *single = s, s = NULL;
        else if (x && sd_is_file(x)) *index = x, x = NULL;
        else if (y && sd_is_file(y)) *index = y, y = NULL;
        free(s), free(x), free(y);
        if (*single || *index) return 1;
    }
    return 0;
}

static int refuse_pickle_folder(const char *cdir, sd_error *err) {
    static const char *const pickles[] = {"diffusion_pytorch_model.bin", "pytorch_model.bin", "model.ckpt"};
    for (int i = 0; i < 3; i++) {
        char *p = sd_path_join(cdir, pickles[i]);
        int found = p && sd_is_file(p);
        free(p);
        if (found)
            return sd_fail(err, "%s/%s: PyTorch pickle weights are not read (unsafe to load); convert the folder to "
                                ".safetensors (e.g. diffusers' save_pretrained(..., safe_serialization=True))",
                           cdir, pickles[i]);
    }
    return sd_fail(err, "%s: no weights: expected diffusion_pytorch_model.safetensors or model.safetensors (or a "
                        "sharded *.safetensors.index.json)", cdir);
}

static int open_component_weights(sd_component *c, const char *cdir, const char *variant, sd_error *err) {
    char *single, *index;
    c->variant_used = variant && find_weight_file(cdir, variant, &single, &index);
    if (!c->variant_used && !find_weight_file(cdir, NULL, &single, &index)) return refuse_pickle_folder(cdir, err);
    cJSON *idx = NULL;
    int rc = 0;
    if (single) {
        c->files = calloc(1, sizeof(char *));
        if (!c->files) rc = sd_fail(err, "%s: out of memory", single);
        else c->files[c->n_files++] = single, single = NULL;
    } else {
        rc = read_shard_index(c, cdir, index, &idx, err);
    }
    if (!rc) rc = sd_weights_open(&c->weights, (const char *const *)c->files, c->n_files, err);
    if (!rc && idx) rc = check_shard_index(c, idx, index, err);
    cJSON_Delete(idx);
    free(single);
    free(index);
    return rc;
}

/* Checks the config's types and values where a wrong one would break loading. */
static int validate_config(const sd_component *c, sd_error *err) {
    if (!strcmp(c->name, "unet")) {
        sd_unet_arch a;
        return sd_unet_arch_from_config(c->config, c->config_path, &a, err);
    }
    if (!strcmp(c->name, "vae")) {
        sd_vae_arch a;
        return sd_vae_arch_from_config(c->config, c->config_path, &a, err);
    }
    sd_clip_arch a;
    return sd_clip_arch_from_config(c->config, c->config_path, &a, err);
}

static int open_folder_component(sd_component *c, const char *dir, const char *variant, sd_error *err) {
    char *cdir = sd_path_join(dir, c->name);
    if (!cdir) return sd_fail(err, "%s: out of memory", dir);
    int rc = 0;
    if (!sd_is_dir(cdir)) rc = sd_fail(err, "%s: missing component folder (model_index.json lists %s)", cdir, c->name);
    if (!rc && !(c->config_path = sd_path_join(cdir, "config.json"))) rc = sd_fail(err, "%s: out of memory", cdir);
    if (!rc) rc = sd_json_load(c->config_path, &c->config, err);
    if (!rc) rc = validate_config(c, err);
    if (!rc) rc = open_component_weights(c, cdir, variant, err);
    free(cdir);
    if (rc) return -1;
    c->present = 1;
    c->binder = (sd_binder){.w = c->weights, .component = c->name, .prefix = ""};
    if (!strncmp(c->name, "text_encoder", 12)) model_ignore_position_ids(c);
    return 0;
}

static int open_folder_tokenizers(sd_model *m, const char *dir, sd_error *err) {
    static const char *const keys[2] = {"tokenizer", "tokenizer_2"};
    char **out[2] = {&m->tokenizer_dir, &m->tokenizer_2_dir};
    for (int i = 0; i < 2; i++) {
        int listed;
        if (index_lists(m->model_index, m->model_index_path, keys[i], &listed, err)) return -1;
        if (!listed && i == 0)
            return sd_fail(err, "%s: key 'tokenizer': expected [library, class] (the pipeline needs a CLIP tokenizer)",
                           m->model_index_path);
        if (!listed) continue;
        if (!(*out[i] = sd_path_join(dir, keys[i]))) return sd_fail(err, "out of memory");
        if (model_check_tokenizer(*out[i], keys[i], err)) return -1;
    }
    return 0;
}

static int open_folder_scheduler(sd_model *m, const char *dir, sd_error *err) {
    int listed;
    if (index_lists(m->model_index, m->model_index_path, "scheduler", &listed, err)) return -1;
    if (!listed)
        return sd_fail(err, "%s: key 'scheduler': expected [library, class] (the pipeline needs a scheduler)",
                       m->model_index_path);
    if (!(m->scheduler_config_path = model_strf("%s/scheduler/scheduler_config.json", dir)))
        return sd_fail(err, "out of memory");
    return sd_json_load(m->scheduler_config_path, &m->scheduler_config, err);
}

static int open_folder(sd_model *m, const char *dir, const sd_model_options *opt, sd_error *err) {
    const char *variant = opt->variant && *opt->variant ? opt->variant : NULL;
    m->kind = SD_MODEL_DIFFUSERS;
    if (opt->model_config && *opt->model_config)
        return sd_fail(err, "%s: --model-config applies to single-file checkpoints; a diffusers folder carries its own "
                            "config.json files", dir);
    if (!(m->model_index_path = sd_path_join(dir, "model_index.json"))) return sd_fail(err, "out of memory");
    if (!sd_is_file(m->model_index_path))
        return sd_fail(err, "%s: not a diffusers pipeline folder: model_index.json missing (for a single-file "
                            "checkpoint give the .safetensors file)", dir);
    if (sd_json_load(m->model_index_path, &m->model_index, err)) return -1;
    int any_variant = 0;
    for (int i = 0; i < SD_MODEL_N_COMPONENTS; i++) {
        sd_component *c = sd_model_component(m, i);
        int listed;
        if (index_lists(m->model_index, m->model_index_path, c->name, &listed, err)) return -1;
        if (!listed && i < 3)
            return sd_fail(err, "%s: key '%s': expected [library, class] (a Stable Diffusion pipeline needs a %s)",
                           m->model_index_path, c->name, c->name);
        if (listed && open_folder_component(c, dir, variant, err)) return -1;
        any_variant |= c->variant_used;
    }
    if (variant && !any_variant)
        return sd_fail(err, "%s: variant '%s' requested, but no component has *.%s.safetensors weights "
                            "(e.g. unet/diffusion_pytorch_model.%s.safetensors)", dir, variant, variant, variant);
    return open_folder_scheduler(m, dir, err) || open_folder_tokenizers(m, dir, err);
}

/* ---- public ---- */

static void component_free(sd_component *c, const sd_weights *shared) {
    cJSON_Delete(c->config);
    free(c->config_path);
    for (int i = 0; i < c->n_files; i++) free(c->files[i]);
    free(c->files);
    if (c->weights != shared) sd_weights_free(c->weights);
}

void sd_model_close(sd_model *m) {
    for (int i = 0; i < SD_MODEL_N_COMPONENTS; i++) component_free(sd_model_component(m, i), m->shared);
    sd_weights_free(m->shared);
    cJSON_Delete(m->model_index);
    cJSON_Delete(m->scheduler_config);
    free(m->model_index_path);
    free(m->scheduler_config_path);
    free(m->tokenizer_dir);
    free(m->tokenizer_2_dir);
    free(m->arch_source);
    free(m->path);
    free(m->name);
    free(m->cache_dir);
    memset(m, 0, sizeof *m);
}

int sd_model_open(sd_model *m, const char *path, const sd_model_options *opt, sd_error *err) {
    static const sd_model_options none = {0};
    memset(m, 0, sizeof *m);
    if (!opt) opt = &none;
    for (int i = 0; i < SD_MODEL_N_COMPONENTS; i++) sd_model_component(m, i)->name = component_names[i];
    m->path = model_strf("%s", path);
    m->name = display_name(path);
    m->cache_dir = opt->cache_dir ? model_strf("%s", opt->cache_dir) : NULL;
    int rc;
    if (!m->path || !m->name || (opt->cache_dir && !m->cache_dir)) rc = sd_fail(err, "out of memory");
    else if (sd_is_dir(path)) rc = open_folder(m, path, opt, err);
    else if (sd_is_file(path)) rc = model_open_single(m, path, opt, err);
    else rc = sd_fail(err, "%s: no such model file or folder", path);
    if (rc) sd_model_close(m);
    else m->is_segmoe = cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(m->unet.config, "segmoe_config"));
    return rc ? -1 : 0;
}

int sd_model_hash(sd_model *m, char out[11], sd_error *err) {
    if (!m->hash[0]) {
        const char *file = m->kind == SD_MODEL_SINGLE_FILE ? m->path : (m->unet.n_files ? m->unet.files[0] : NULL);
        char hex[65];
        if (!file) return sd_fail(err, "%s: no UNet weights file to hash", m->path);
        sd_weight_cache_options wo = {.dir = m->cache_dir};
        if (sd_weight_cache_file_sha256(&wo, file, hex, err)) return -1;
        memcpy(m->hash, hex, 10);
        m->hash[10] = '\0';
    }
    memcpy(out, m->hash, 11);
    return 0;
}

void sd_component_stats_get(const sd_component *c, sd_component_stats *s) {
    memset(s, 0, sizeof *s);
    if (!c->present || !c->weights) return;
    const char *prefix = c->binder.prefix ? c->binder.prefix : "";
    size_t pl = strlen(prefix);
    for (int i = 0; i < sd_weights_file_count(c->weights); i++) {
        const st_file *f = sd_weights_file(c->weights, i);
        struct stat st;
        if (stat(f->path, &st) == 0) s->file_bytes += (uint64_t)st.st_size;
        for (int k = 0; k < f->n_tensors; k++) {
            const st_tensor *t = &f->tensors[k];
            if (strncmp(t->name, prefix, pl)) continue;
            s->n_tensors++;
            if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64)
                s->n_params += (int64_t)t->numel;
            s->params_by_dtype[t->dtype] += (int64_t)t->numel;
            s->data_bytes += t->nbytes;
        }
    }
}

/* <dir>/tokenizer holds a tokenizer? */
static int assets_ok(const char *dir) {
    char *tok = model_strf("%s/tokenizer", dir);
    sd_error ignore = {0};
    int ok = tok && model_check_tokenizer(tok, "tokenizer", &ignore) == 0;
    free(tok);
    return ok;
}

char *sd_model_assets_dir(const sd_model_options *opt, sd_error *err) {
    char tried[3][PATH_MAX];
    int n = 0;
    if (opt && opt->assets_dir && *opt->assets_dir) snprintf(tried[n++], PATH_MAX, "%s", opt->assets_dir);
    const char *env = getenv("SDMOE_ASSETS");
    if (env && *env) snprintf(tried[n++], PATH_MAX, "%s", env);
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        snprintf(tried[n++], PATH_MAX, "%.*s/../assets", PATH_MAX - 16, exe);
    }
    for (int i = 0; i < n; i++)
        if (assets_ok(tried[i])) return model_strf("%s", tried[i]);
    sd_fail(err, "no assets folder with a CLIP tokenizer (tokenizer/vocab.json, tokenizer/merges.txt) found; tried:%s%s%s%s%s%s "
                 "(set SDMOE_ASSETS)", n > 0 ? " " : "", n > 0 ? tried[0] : "", n > 1 ? ", " : "", n > 1 ? tried[1] : "",
            n > 2 ? ", " : "", n > 2 ? tried[2] : "");
    return NULL;
}
