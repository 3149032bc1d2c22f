#include "sampler/pipeline.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "sampler/scheduler.h"
#include "text_encoder/clip_text.h"
#include "text_encoder/sdxl_conditioning.h"
#include "text_encoder/tokenizer.h"
#include "unet/unet.h"
#include "vae/vae.h"

#define PROMPT_CACHE_SIZE 16

/* One encoded prompt, keyed by its text and how it was encoded. */
typedef struct cached_cond {
    char *text;
    sd_prompt_syntax syntax;
    int clip_skip;
    sd_text_cond cond;
    unsigned long last_use;
} cached_cond;

struct sd_pipeline {
    sd_model model;
    sd_tokenizer *tok;
    sd_clip_text *clip;
    /* SDXL (UNet addition_embed_type "text_time"): tokenizer_2 / text_encoder_2 */
    int sdxl;
    int force_zeros;                  /* model_index force_zeros_for_empty_prompt (SDXL default true) */
    sd_tokenizer *tok2;
    sd_clip_text *clip2;
    sd_clip_text_config ccfg2;
    sd_unet *unet;
    vae_model *vae;
    sd_unet_config ucfg;
    vae_config vcfg;
    sd_clip_text_config ccfg;
    int vae_factor;
    sd_scratch scratch;               /* the UNet's and the VAE's activations: one set of pages */
    sd_weight_cache *unet_cache, *vae_cache; /* mapped prepared conv weights: freed after the UNet / VAE */
    cached_cond cache[PROMPT_CACHE_SIZE];
    unsigned long use_clock;
};

sd_model *sd_pipeline_model(sd_pipeline *p) { return &p->model; }
struct sd_unet *sd_pipeline_unet(sd_pipeline *p) { return p->unet; }
struct vae_model *sd_pipeline_vae(sd_pipeline *p) { return p->vae; }
size_t sd_pipeline_scratch_bytes(const sd_pipeline *p) { return p->scratch.bytes; }
int sd_pipeline_vae_factor(const sd_pipeline *p) { return p->vae_factor; }
int sd_pipeline_is_sdxl(const sd_pipeline *p) { return p->sdxl; }
int sd_pipeline_zero_negative(const sd_pipeline *p) { return p->sdxl && p->force_zeros; }

void sd_pipeline_default_size(const sd_pipeline *p, int *width, int *height) {
    *width = *height = p->ucfg.sample_size * p->vae_factor;
}

int sd_pipeline_default_sampler(const sd_pipeline *p, sd_sampler_id *id, sd_error *err) {
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(p->model.scheduler_config, "_class_name");
    if (!cJSON_IsString(cls))
        return sd_fail(err, "%s: key '_class_name': expected the scheduler class name",
                       p->model.scheduler_config_path);
    if (sd_sampler_from_class(cls->valuestring, id, err))
        return sd_error_prefix(err, "%s", p->model.scheduler_config_path);
    return 0;
}

static void report(const sd_pipeline_options *opt, const char *stage, int done, int total) {
    if (opt && opt->on_progress) opt->on_progress(opt->progress_ctx, stage, done, total);
}

static void message(const sd_pipeline_options *opt, int is_warning, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void message(const sd_pipeline_options *opt, int is_warning, const char *fmt, ...) {
    if (!opt || !opt->on_message) return;
    char msg[SD_ERROR_MSG_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    opt->on_message(opt->progress_ctx, is_warning, msg);
}

/* Opens component c's weight cache and hands it to c's binder; any problem
 * only leaves the component uncached (with a warning). */
static void weight_cache_attach(sd_component *c, sd_weight_cache **cache, const sd_pipeline_options *opt) {
    sd_weight_cache_options wo = {opt ? opt->weight_cache_dir : NULL, opt ? opt->weight_cache_max_bytes : 0};
    sd_error e = {0};
    /* the files as they were mapped (a file replaced since must not lend its identity) */
    int n = c->weights ? sd_weights_file_count(c->weights) : 0;
    const char **paths = calloc((size_t)n + 1, sizeof *paths);
    struct stat *stats = calloc((size_t)n + 1, sizeof *stats);
    if (!paths || !stats) {
        message(opt, 1, "weight cache not used: out of memory");
    } else {
        for (int i = 0; i < n; i++) {
            const st_file *f = sd_weights_file(c->weights, i);
            paths[i] = f->path;
            stats[i] = f->stat;
        }
        if (n && sd_weight_cache_open(cache, &wo, c->name, paths, stats, n, &e))
            message(opt, 1, "weight cache not used: %s", e.msg);
    }
    free(paths);
    free(stats);
    sd_weight_cache_stats s;
    sd_weight_cache_get_stats(*cache, &s);
    if (s.ignored[0]) message(opt, 1, "weight cache: ignored %s (it will be rewritten)", s.ignored);
    c->binder.cache = *cache;
}

/* Writes what loading c added to its cache (a failure is only a warning). */
static void weight_cache_save(sd_component *c, sd_weight_cache *cache, const sd_pipeline_options *opt) {
    sd_weight_cache_stats s;
    sd_weight_cache_get_stats(cache, &s);
    if (opt && opt->weight_cache_read_only && s.misses) return;
    if (s.misses)
        message(opt, 0, "weight cache: writing the %s's prepared weights (%lld MB) to %s", c->name,
                (long long)(s.added_bytes >> 20), sd_weight_cache_path(cache));
    sd_error e = {0};
    if (sd_weight_cache_save(cache, &e)) message(opt, 1, "weight cache of the %s not written: %s", c->name, e.msg);
    sd_weight_cache_get_stats(cache, &s);
    if (s.skipped[0]) message(opt, 1, "weight cache of the %s not written: %s", c->name, s.skipped);
}

void sd_pipeline_weight_cache_stats(const sd_pipeline *p, const char *component, sd_weight_cache_stats *s) {
    sd_weight_cache_get_stats(!strcmp(component, "unet") ? p->unet_cache : !strcmp(component, "vae") ? p->vae_cache
                                                                                                    : NULL,
                              s);
}

static void apply_moe_routing(sd_unet *u, sd_moe_routing routing) {
    int n = sd_unet_tblock_count(u);
    for (int i = 0; i < n; i++) {
        sd_unet_tblock *b = sd_unet_tblock_at(u, i);
        sd_moe_layer *layers[] = {b->attn1.to_q.moe, b->attn1.to_k.moe, b->attn1.to_v.moe,
                                  b->attn2.to_q.moe, b->attn2.to_k.moe, b->attn2.to_v.moe, b->ff.moe};
        for (size_t k = 0; k < sizeof layers / sizeof layers[0]; k++)
            if (layers[k]) sd_moe_set_routing(layers[k], routing);
    }
}

/* SDXL's second tokenizer and text encoder, and force_zeros_for_empty_prompt
 * (StableDiffusionXLPipeline's default: true). */
static int load_text_2(sd_pipeline *p, sd_error *err) {
    sd_component *c = &p->model.text_encoder_2;
    if (!c->present || !p->model.tokenizer_2_dir)
        return sd_fail(err, "%s: the UNet has SDXL added conditioning (addition_embed_type \"text_time\") but the "
                       "model has no %s", p->model.path, !c->present ? "text_encoder_2 component" : "tokenizer_2 folder");
    if (sd_tokenizer_open(&p->tok2, p->model.tokenizer_2_dir, err)) return -1;
    if (sd_clip_text_config_read(c->config, c->config_path, &p->ccfg2, err)) return -1;
    if (sd_clip_text_load(&p->clip2, &p->ccfg2, &c->binder, err)) return -1;
    if (sd_binder_check_complete(&c->binder, err)) return -1;
    sd_sdxl_encoders e = {p->tok, p->tok2, p->clip, p->clip2};
    if (sd_sdxl_encoders_check(&e, err)) return sd_error_prefix(err, "%s", p->model.path);
    if (sd_sdxl_context_dim(&e) != p->ucfg.cross_attention_dim[0])
        return sd_fail(err, "%s: text_encoder hidden_size %d + text_encoder_2 hidden_size %d = %d, the UNet's "
                       "cross_attention_dim is %d", p->model.path, p->ccfg.hidden_size, p->ccfg2.hidden_size,
                       sd_sdxl_context_dim(&e), p->ucfg.cross_attention_dim[0]);
    if (sd_sdxl_pooled_dim(&e) != p->ucfg.add_text_dim || p->ucfg.add_n_time_ids != SD_SDXL_N_TIME_IDS)
        return sd_fail(err, "%s: text_encoder_2 projection_dim %d with %d time ids, the UNet's added conditioning "
                       "expects %d + %d (projection_class_embeddings_input_dim)", p->model.path,
                       sd_sdxl_pooled_dim(&e), SD_SDXL_N_TIME_IDS, p->ucfg.add_text_dim, p->ucfg.add_n_time_ids);
    p->force_zeros = 1;
    const cJSON *fz = cJSON_GetObjectItemCaseSensitive(p->model.model_index, "force_zeros_for_empty_prompt");
    if (fz && !cJSON_IsNull(fz)) {
        if (!cJSON_IsBool(fz))
            return sd_fail(err, "%s: key 'force_zeros_for_empty_prompt': expected true or false",
                           p->model.model_index_path);
        p->force_zeros = cJSON_IsTrue(fz);
    }
    p->sdxl = 1;
    return 0;
}

static int load_text(sd_pipeline *p, sd_error *err) {
    sd_component *c = &p->model.text_encoder;
    if (!c->present) return sd_fail(err, "%s: no text_encoder component", p->model.path);
    if (sd_tokenizer_open(&p->tok, p->model.tokenizer_dir, err)) return -1;
    if (sd_clip_text_config_read(c->config, c->config_path, &p->ccfg, err)) return -1;
    if (sd_clip_text_load(&p->clip, &p->ccfg, &c->binder, err)) return -1;
    if (sd_binder_check_complete(&c->binder, err)) return -1;
    return p->ucfg.add_text_time ? load_text_2(p, err) : 0;
}

/* The UNet config decides what else loads (SDXL's second text encoder). */
static int parse_unet_config(sd_pipeline *p, sd_error *err) {
    sd_component *c = &p->model.unet;
    if (!c->present) return sd_fail(err, "%s: no unet component", p->model.path);
    return sd_unet_config_parse(&p->ucfg, c->config, c->config_path, err);
}

static int load_unet(sd_pipeline *p, const sd_pipeline_options *opt, sd_error *err) {
    sd_component *c = &p->model.unet;
    c->binder.lazy = p->ucfg.moe_enabled; /* experts stay mapped until chosen */
    weight_cache_attach(c, &p->unet_cache, opt);
    if (sd_unet_load(&p->unet, &p->ucfg, &c->binder, err) || sd_binder_check_complete(&c->binder, err)) return -1;
    weight_cache_save(c, p->unet_cache, opt);
    return 0;
}

static int load_vae(sd_pipeline *p, const sd_pipeline_options *opt, sd_error *err) {
    sd_component *c = &p->model.vae;
    if (!c->present) return sd_fail(err, "%s: no vae component", p->model.path);
    if (vae_config_from_json(&p->vcfg, c->config, c->config_path, err)) return -1;
    weight_cache_attach(c, &p->vae_cache, opt);
    /* text-to-image only decodes: the encoder's tensors are bound and checked, not built */
    if (vae_load(&p->vae, &p->vcfg, &c->binder, VAE_PART_DECODER, err)) return -1;
    if (sd_binder_check_complete(&c->binder, err)) return -1;
    weight_cache_save(c, p->vae_cache, opt);
    p->vae_factor = 1 << (p->vcfg.n_levels - 1);
    return 0;
}

int sd_pipeline_load(sd_pipeline **out, const char *model_path, const sd_pipeline_options *opt,
                     sd_error *err) {
    *out = NULL;
    sd_pipeline *p = calloc(1, sizeof *p);
    if (!p) return sd_fail(err, "out of memory");
    sd_model_options mo = {0};
    if (opt) {
        mo.variant = opt->variant;
        mo.model_config = opt->model_config;
        mo.assets_dir = opt->assets_dir;
        mo.cache_dir = opt->weight_cache_dir;
    }
    report(opt, "load", 0, 4);
    if (sd_model_open(&p->model, model_path, &mo, err)) {
        free(p);
        return -1;
    }
    report(opt, "load", 1, 4);
    if (parse_unet_config(p, err) || load_text(p, err)) goto fail;
    report(opt, "load", 2, 4);
    if (load_unet(p, opt, err)) goto fail;
    if (opt) apply_moe_routing(p->unet, opt->moe_routing);
    report(opt, "load", 3, 4);
    if (load_vae(p, opt, err)) goto fail;
    /* sampling and decoding never overlap: peak RSS = weights + the larger workspace */
    sd_unet_share_scratch(p->unet, &p->scratch);
    vae_share_scratch(p->vae, &p->scratch);
    report(opt, "load", 4, 4);
    *out = p;
    return 0;
fail:
    sd_pipeline_free(p);
    return -1;
}

void sd_pipeline_free(sd_pipeline *p) {
    if (!p) return;
    for (int i = 0; i < PROMPT_CACHE_SIZE; i++) {
        free(p->cache[i].text);
        sd_text_cond_free(&p->cache[i].cond);
    }
    vae_free(p->vae);
    sd_unet_free(p->unet);
    sd_clip_text_free(p->clip);
    sd_tokenizer_free(p->tok);
    sd_clip_text_free(p->clip2);
    sd_tokenizer_free(p->tok2);
    sd_weight_cache_free(p->unet_cache); /* after the convs that run on its mapped bytes */
    sd_weight_cache_free(p->vae_cache);
    sd_model_close(&p->model);
    sd_scratch_release(&p->scratch);
    free(p);
}

/* Encoded prompt from the cache, or encoded now (the least recently used
 * slot is replaced).  The returned cond is owned by the cache. */
static const sd_text_cond *encode_cached(sd_pipeline *p, const char *text, sd_prompt_syntax syntax,
                                         int clip_skip, sd_error *err) {
    int victim = 0;
    for (int i = 0; i < PROMPT_CACHE_SIZE; i++) {
        cached_cond *c = &p->cache[i];
        if (c->text && c->syntax == syntax && c->clip_skip == clip_skip && !strcmp(c->text, text)) {
            c->last_use = ++p->use_clock;
            return &c->cond;
        }
        if (!c->text || c->last_use < p->cache[victim].last_use) victim = i;
        if (!c->text) break;
    }
    cached_cond *c = &p->cache[victim];
    free(c->text);
    sd_text_cond_free(&c->cond);
    memset(c, 0, sizeof *c);
    if (p->sdxl) {
        sd_sdxl_encoders e = {p->tok, p->tok2, p->clip, p->clip2};
        if (sd_sdxl_encode(&e, text, syntax, clip_skip, &c->cond, err)) return NULL;
    } else if (sd_conditioning_encode(p->tok, p->clip, text, syntax, clip_skip, &c->cond, err)) {
        return NULL;
    }
    c->text = strdup(text);
    if (!c->text) {
        sd_text_cond_free(&c->cond);
        sd_fail(err, "out of memory");
        return NULL;
    }
    c->syntax = syntax;
    c->clip_skip = clip_skip;
    c->last_use = ++p->use_clock;
    return &c->cond;
}

/* A working copy of a cached cond (padding may extend it). */
static int copy_cond(const sd_text_cond *src, sd_text_cond *dst, sd_error *err) {
    *dst = *src;
    dst->pooled = NULL;
    size_t n = (size_t)src->n_chunks * src->chunk_len * src->hidden;
    dst->emb = malloc(n * sizeof(float) + 1);
    if (!dst->emb) return sd_fail(err, "out of memory");
    memcpy(dst->emb, src->emb, n * sizeof(float));
    if (src->pooled) {
        dst->pooled = malloc((size_t)src->pooled_dim * sizeof(float));
        if (!dst->pooled) {
            sd_text_cond_free(dst);
            return sd_fail(err, "out of memory");
        }
        memcpy(dst->pooled, src->pooled, (size_t)src->pooled_dim * sizeof(float));
    }
    return 0;
}

static int validate(const sd_pipeline *p, const sd_txt2img_params *q, sd_error *err) {
    if (!q->prompt && !q->prompts) return sd_fail(err, "no prompt given");
    if (q->n_images < 1 || !q->seeds) return sd_fail(err, "n_images must be >= 1 with one seed each");
    if (q->steps < 1) return sd_fail(err, "steps: %d, expected at least 1", q->steps);
    int f = p->vae_factor;
    if (q->width < f || q->height < f || q->width % f || q->height % f)
        return sd_fail(err, "size %dx%d: width and height must be positive multiples of %d", q->width,
                       q->height, f);
    if (!isfinite(q->cfg_scale)) return sd_fail(err, "cfg scale must be a finite number");
    const int micro[6] = {q->original_width, q->original_height, q->target_width, q->target_height, q->crop_top,
                          q->crop_left};
    static const char *const names[6] = {"original width", "original height", "target width", "target height",
                                         "crop top", "crop left"};
    for (int i = 0; i < 6; i++) {
        if (micro[i] < 0) return sd_fail(err, "%s %d: expected 0 (default) or a positive number", names[i], micro[i]);
        if (micro[i] && !p->sdxl)
            return sd_fail(err, "%s %d: original/target size and crop coordinates apply to SDXL models only (a UNet "
                           "with addition_embed_type \"text_time\")", names[i], micro[i]);
    }
    return 0;
}

/* Per-request state: conditioning, generators, schedulers and buffers. */
typedef struct request {
    int n, do_cfg, rows;                  /* images, CFG on, UNet batch rows */
    int64_t lh, lw, numel;                /* latent size, floats per latent */
    int64_t n_ctx, hidden;
    float *context;                       /* [rows, n_ctx, hidden] */
    int pooled_dim;                       /* SDXL: */
    float *text_embeds;                   /*   [rows, pooled_dim] pooled text embeddings */
    float *time_ids;                      /*   [rows, SD_SDXL_N_TIME_IDS] */
    float *latents, *x_in, *eps, *guided; /* [n|rows, numel] */
    sd_rng *gens;
    sd_scheduler **scheds;
} request;

static void request_free(request *r) {
    if (r->scheds)
        for (int i = 0; i < r->n; i++) sd_scheduler_free(r->scheds[i]);
    free(r->scheds);
    free(r->gens);
    free(r->context);
    free(r->text_embeds);
    free(r->time_ids);
    free(r->latents);
    free(r->x_in);
    free(r->eps);
    free(r->guided);
}

/* Encodes every image's prompt pair into the context [uncond x n, cond x n]
 * (and for SDXL the pooled text embeddings in the same order).  An absent
 * negative prompt is "" — or, on SDXL with force_zeros_for_empty_prompt,
 * zeros of the prompt's shape (diffusers' zeros_like(prompt_embeds)). */
static int build_context(sd_pipeline *p, const sd_txt2img_params *q, request *r, sd_txt2img_result *res,
                         sd_error *err) {
    sd_text_cond *conds = calloc((size_t)2 * r->n, sizeof *conds);
    char *zero = calloc((size_t)r->n, 1);
    sd_text_cond empty = {0};
    if (!conds || !zero) {
        free(conds);
        free(zero);
        return sd_fail(err, "out of memory");
    }
    int rc = 0, max_chunks = 0, have_empty = 0;
    if (q->syntax == SD_PROMPT_SYNTAX_A1111) {
        /* a working copy: the cache may evict the entry while the batch encodes */
        const sd_text_cond *e = encode_cached(p, "", q->syntax, q->clip_skip, err);
        rc = !e || copy_cond(e, &empty, err) ? -1 : 0;
        have_empty = !rc;
    }
    for (int i = 0; i < r->n && !rc; i++) {
        const char *pos = q->prompts ? q->prompts[i] : q->prompt;
        const char *neg = q->negative_prompts ? q->negative_prompts[i] : q->negative_prompt;
        zero[i] = !neg && sd_pipeline_zero_negative(p);
        const sd_text_cond *c = encode_cached(p, pos ? pos : "", q->syntax, q->clip_skip, err);
        if (!c || copy_cond(c, &conds[r->n + i], err)) {
            rc = -1;
            break;
        }
        const sd_text_cond *u = NULL;
        if (!zero[i] && (!(u = encode_cached(p, neg ? neg : "", q->syntax, q->clip_skip, err)) ||
                         copy_cond(u, &conds[i], err))) {
            rc = -1;
            break;
        }
        c = &conds[r->n + i];
        if (i == 0) res->prompt_tokens = c->n_tokens;
        res->dropped_tokens += c->n_dropped + (u ? u->n_dropped : 0);
        res->invalid_utf8 += c->n_invalid_utf8 + (u ? u->n_invalid_utf8 : 0);
        if (c->n_chunks > max_chunks) max_chunks = c->n_chunks;
        if (u && u->n_chunks > max_chunks) max_chunks = u->n_chunks;
    }
    /* A1111 pads cond and uncond to one chunk count; across a batch every
     * item must share it too (one UNet call).  Zero negatives take the
     * common shape directly. */
    const sd_text_cond *shape = &conds[r->n];
    for (int i = 0; i < 2 * r->n && !rc; i++)
        if (i < r->n && zero[i])
            rc = sd_sdxl_zero_cond(max_chunks, shape->chunk_len, shape->hidden, shape->pooled_dim, &conds[i], err);
        else if (conds[i].n_chunks < max_chunks) {
            if (!have_empty) rc = sd_fail(err, "internal: prompts of different lengths in plain syntax");
            else rc = sd_conditioning_pad(&conds[i], max_chunks, &empty, err);
        }
    if (!rc) {
        r->n_ctx = (int64_t)max_chunks * shape->chunk_len;
        r->hidden = shape->hidden;
        r->pooled_dim = p->sdxl ? shape->pooled_dim : 0;
        int first = r->do_cfg ? 0 : r->n; /* without CFG only the cond half exists */
        r->context = malloc((size_t)r->rows * r->n_ctx * r->hidden * sizeof(float));
        if (!r->context) rc = sd_fail(err, "out of memory");
        for (int i = 0; i < r->rows && !rc; i++)
            memcpy(r->context + (size_t)i * r->n_ctx * r->hidden, conds[first + i].emb,
                   (size_t)r->n_ctx * r->hidden * sizeof(float));
        if (!rc && p->sdxl) {
            r->text_embeds = malloc((size_t)r->rows * r->pooled_dim * sizeof(float));
            if (!r->text_embeds) rc = sd_fail(err, "out of memory");
            for (int i = 0; i < r->rows && !rc; i++)
                memcpy(r->text_embeds + (size_t)i * r->pooled_dim, conds[first + i].pooled,
                       (size_t)r->pooled_dim * sizeof(float));
        }
    }
    for (int i = 0; i < 2 * r->n; i++) sd_text_cond_free(&conds[i]);
    sd_text_cond_free(&empty);
    free(conds);
    free(zero);
    return rc;
}

/* SDXL's time ids, one row per UNet batch row (the negative rows get the
 * same ids: diffusers' negative_original_size etc. unset). */
static int build_time_ids(const sd_txt2img_params *q, request *r, sd_error *err) {
    float ids[SD_SDXL_N_TIME_IDS];
    sd_sdxl_time_ids(q->original_height ? q->original_height : q->height,
                     q->original_width ? q->original_width : q->width, q->crop_top, q->crop_left,
                     q->target_height ? q->target_height : q->height, q->target_width ? q->target_width : q->width,
                     ids);
    r->time_ids = malloc((size_t)r->rows * sizeof ids);
    if (!r->time_ids) return sd_fail(err, "out of memory");
    for (int i = 0; i < r->rows; i++) memcpy(r->time_ids + (size_t)i * SD_SDXL_N_TIME_IDS, ids, sizeof ids);
    return 0;
}

static int request_init(sd_pipeline *p, const sd_txt2img_params *q, request *r, sd_txt2img_result *res,
                        sd_error *err) {
    memset(r, 0, sizeof *r);
    r->n = q->n_images;
    r->do_cfg = q->cfg_scale > 1.0;
    r->rows = r->do_cfg ? 2 * r->n : r->n;
    r->lh = q->height / p->vae_factor;
    r->lw = q->width / p->vae_factor;
    r->numel = (int64_t)p->ucfg.in_channels * r->lh * r->lw;
    size_t lat = (size_t)r->numel * sizeof(float);
    r->latents = malloc(lat * r->n);
    r->guided = malloc(lat * r->n);
    r->x_in = malloc(lat * r->rows);
    r->eps = malloc(lat * r->rows);
    r->gens = calloc((size_t)r->n, sizeof(sd_rng));
    r->scheds = calloc((size_t)r->n, sizeof(sd_scheduler *));
    if (!r->latents || !r->guided || !r->x_in || !r->eps || !r->gens || !r->scheds)
        return sd_fail(err, "out of memory for %d latents of %lldx%lld", r->n, (long long)r->lh,
                       (long long)r->lw);
    for (int i = 0; i < r->n; i++)
        if (sd_scheduler_create(&r->scheds[i], p->model.scheduler_config, p->model.scheduler_config_path,
                                q->sampler, q->karras, q->steps, (size_t)r->numel, err))
            return -1;
    if (build_context(p, q, r, res, err)) return -1;
    return p->sdxl ? build_time_ids(q, r, err) : 0;
}

/* First non-finite value in x[n], or -1. */
static int64_t find_non_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

static void initial_noise(request *r, const sd_txt2img_params *q, const sd_txt2img_hooks *h) {
    for (int i = 0; i < r->n; i++) {
        float *x = r->latents + (size_t)i * r->numel;
        sd_rng_seed(&r->gens[i], q->seeds[i]);
        sd_rng_randn(&r->gens[i], x, (size_t)r->numel);
        if (i == 0 && h && h->on_step) h->on_step(h->ctx, -1, 0, x, NULL, NULL, r->numel);
        float s = sd_scheduler_init_noise_sigma(r->scheds[i]);
        for (int64_t k = 0; k < r->numel; k++) x[k] *= s;
        if (i == 0 && h && h->on_step) h->on_step(h->ctx, -1, 0, NULL, NULL, x, r->numel);
    }
}

/* One UNet call and one scheduler step for every image. */
static int denoise_call(sd_pipeline *p, const sd_txt2img_params *q, request *r, int c,
                        const sd_txt2img_hooks *h, sd_error *err) {
    float t = sd_scheduler_timestep(r->scheds[0], c);
    size_t lat = (size_t)r->numel;
    for (int i = 0; i < r->n; i++) {
        float *dst = r->x_in + (size_t)(r->do_cfg ? r->n + i : i) * lat;
        sd_scheduler_scale_model_input(r->scheds[i], c, r->latents + i * lat, dst, lat);
        if (r->do_cfg) memcpy(r->x_in + i * lat, dst, lat * sizeof(float));
    }
    if (sd_unet_forward_ex(p->unet, r->x_in, r->rows, r->lh, r->lw, t, NULL, r->n_ctx, r->eps, err))
        return -1;
    int64_t bad = find_non_finite(r->eps, (int64_t)lat * r->rows);
    if (bad >= 0)
        return sd_fail(err, "UNet produced a non-finite value (NaN/Inf) at sampling call %d (timestep %g), "
                       "latent element %lld: the checkpoint's weights are probably broken",
                       c + 1, (double)t, (long long)bad);
    if (h && h->on_unet_call) h->on_unet_call(h->ctx, c, t);
    float g = (float)q->cfg_scale;
    for (int i = 0; i < r->n; i++) {
        float *out = r->guided + i * lat;
        if (r->do_cfg) {
            const float *eu = r->eps + i * lat, *ec = r->eps + (r->n + i) * lat;
            for (size_t k = 0; k < lat; k++) out[k] = eu[k] + g * (ec[k] - eu[k]);
        } else {
            memcpy(out, r->eps + i * lat, lat * sizeof(float));
        }
        if (sd_scheduler_step(r->scheds[i], c, out, r->latents + i * lat, &r->gens[i], err)) return -1;
    }
    if (h && h->on_step)
        h->on_step(h->ctx, c, t, r->x_in, r->guided, r->latents, r->numel);
    return 0;
}

int sd_pipeline_txt2img(sd_pipeline *p, const sd_txt2img_params *q, const sd_txt2img_hooks *h,
                        sd_txt2img_result *res, sd_error *err) {
    memset(res, 0, sizeof *res);
    if (validate(p, q, err)) return -1;
    sd_txt2img_params qq = *q;
    if (qq.clip_skip < 1) qq.clip_skip = 1; /* 0 = unset = last layer */
    q = &qq;
    request r;
    if (h && h->on_progress) h->on_progress(h->ctx, "encode", 0, 1);
    if (request_init(p, q, &r, res, err)) {
        request_free(&r);
        return -1;
    }
    if (h && h->on_progress) h->on_progress(h->ctx, "encode", 1, 1);
    int rc = sd_unet_reserve(p->unet, r.rows, r.lh, r.lw, r.n_ctx, err);
    if (!rc) rc = sd_unet_set_context(p->unet, r.context, r.rows, r.n_ctx, err);
    if (!rc && p->sdxl) rc = sd_unet_set_added_cond(p->unet, r.text_embeds, r.time_ids, r.rows, err);
    if (!rc && h && h->on_conditioning)
        h->on_conditioning(h->ctx, r.context, r.rows, r.n_ctx, r.hidden, r.text_embeds, r.pooled_dim, r.time_ids,
                           p->sdxl ? SD_SDXL_N_TIME_IDS : 0);
    if (!rc) initial_noise(&r, q, h);
    int calls = sd_scheduler_num_calls(r.scheds[0]);
    if (h && h->on_progress) h->on_progress(h->ctx, "sample", 0, calls);
    for (int c = 0; c < calls && !rc; c++) {
        rc = denoise_call(p, q, &r, c, h, err);
        if (!rc && h && h->on_progress) h->on_progress(h->ctx, "sample", c + 1, calls);
    }
    if (!rc) {
        res->n_images = r.n;
        res->width = q->width;
        res->height = q->height;
        size_t img = (size_t)3 * q->width * q->height;
        res->vae_out = malloc(img * r.n * sizeof(float));
        res->latents = malloc((size_t)r.numel * r.n * sizeof(float));
        if (!res->vae_out || !res->latents) rc = sd_fail(err, "out of memory for the decoded images");
    }
    if (!rc) {
        memcpy(res->latents, r.latents, (size_t)r.numel * r.n * sizeof(float));
        if (h && h->on_progress) h->on_progress(h->ctx, "decode", 0, r.n);
        for (int i = 0; i < r.n && !rc; i++) {
            const float *lat = r.latents + (size_t)i * r.numel;
            float *out = res->vae_out + (size_t)i * 3 * q->width * q->height;
            rc = q->vae_tile > 0 ? vae_decode_tiled(p->vae, lat, 1, r.lh, r.lw, q->vae_tile, out, err)
                                 : vae_decode_latents(p->vae, lat, 1, r.lh, r.lw, out, NULL, err);
            if (!rc && find_non_finite(res->vae_out + (size_t)i * 3 * q->width * q->height,
                                       (int64_t)3 * q->width * q->height) >= 0)
                rc = sd_fail(err, "VAE decode produced a non-finite value (NaN/Inf) for image %d: the VAE "
                             "weights are probably broken", i + 1);
            if (!rc && h && h->on_progress) h->on_progress(h->ctx, "decode", i + 1, r.n);
        }
    }
    request_free(&r);
    if (rc) sd_txt2img_result_free(res);
    return rc;
}

void sd_txt2img_result_free(sd_txt2img_result *r) {
    free(r->vae_out);
    free(r->latents);
    memset(r, 0, sizeof *r);
}
