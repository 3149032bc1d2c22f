/* `sdmoe batch`: many images from a jobs file with one model load,
 * resumable through DIR/manifest.jsonl, shardable across processes
 * (docs/batch.md).
 *
 *   jobs file -> jobs (cli/batch_jobs) -> this shard's jobs -> a plan per job
 *   (flags as defaults, sampler resolved against the model) -> images
 *   (file "<stem>-NN.png", seed, params key) -> groups of <= --batch-size
 *   consecutive images with one shape -> render the groups that hold a
 *   pending image -> PNG (atomic) -> manifest line (atomic) -> progress.
 *
 * Groups are formed over every image of the shard, done or not, so a resumed
 * run renders each pending image in exactly the group (same batch
 * companions) an uninterrupted run would have: the bytes repeat even where
 * batched and single renders differ in the last bit.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/batch_jobs.h"
#include "cli/batch_manifest.h"
#include "cli/commands.h"
#include "cli/gen_options.h"
#include "cli/progress.h"
#include "cli/render.h"
#include "core/fileio.h"
#include "core/kernels.h"
#include "core/sha256.h"
#include "sampler/pipeline.h"
#include "text_encoder/conditioning.h"
#include "unet/unet.h"
#include "vae/vae.h"

#define MAX_IMAGES 1000000   /* images in one shard */
#define MAX_LISTED_FAILURES 20

/* ---- sharding ---- */

typedef struct shard {
    int index, count;
    char source[96];         /* where index/count came from, for the log */
} shard;

static int parse_uint(const char *s, long max, long *out) {
    char *end;
    errno = 0;
    long v = s && *s ? strtol(s, &end, 10) : -1;
    if (!s || !*s || errno || *end || v < 0 || v > max) return -1;
    *out = v;
    return 0;
}

/* Index of this task from the environment: a Slurm job array's
 * SLURM_ARRAY_TASK_ID, else a Kubernetes Indexed Job's JOB_COMPLETION_INDEX.
 * When the count comes from Slurm (SLURM_ARRAY_TASK_COUNT), the index is the
 * position in the array, (ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP,
 * so --array=1-8 works; with a count given by the user (auto/N,
 * SDMOE_SHARD_COUNT) the ID itself is the index, so `sbatch --array=3`
 * reruns exactly shard 3. */
static int shard_env_index(int count_from_slurm, long *index, char *msg, size_t cap) {
    const char *id = getenv("SLURM_ARRAY_TASK_ID"), *k8s = getenv("JOB_COMPLETION_INDEX");
    const char *smin = getenv("SLURM_ARRAY_TASK_MIN"), *sstep = getenv("SLURM_ARRAY_TASK_STEP");
    long v, min = 0, step = 1;
    if (id) {
        if (parse_uint(id, 100000000, &v)) {
            snprintf(msg, cap, "--shard auto: SLURM_ARRAY_TASK_ID='%s' is not a whole number", id);
            return -1;
        }
        if (count_from_slurm && ((smin && parse_uint(smin, v, &min)) ||
                                 (sstep && parse_uint(sstep, 100000000, &step)) || step < 1 || (v - min) % step)) {
            snprintf(msg, cap, "--shard auto: SLURM_ARRAY_TASK_ID=%s is not in an evenly spaced array "
                     "(give the count: --shard auto/N, or --shard I/N)", id);
            return -1;
        }
        *index = count_from_slurm ? (v - min) / step : v;
        return 0;
    }
    if (k8s) {
        if (parse_uint(k8s, 100000000, index)) {
            snprintf(msg, cap, "--shard auto: JOB_COMPLETION_INDEX='%s' is not a whole number", k8s);
            return -1;
        }
        return 0;
    }
    snprintf(msg, cap, "--shard auto: neither SLURM_ARRAY_TASK_ID (Slurm job array) nor JOB_COMPLETION_INDEX "
             "(Kubernetes Indexed Job) is set");
    return -1;
}

/* The shard count for --shard auto: auto/N, else SDMOE_SHARD_COUNT, else
 * SLURM_ARRAY_TASK_COUNT under Slurm.  -1 = unknown, -2 = malformed. */
static long shard_env_count(const char *slash, int *from_slurm) {
    long count = -1;
    const char *env = getenv("SDMOE_SHARD_COUNT"), *slurm = getenv("SLURM_ARRAY_TASK_COUNT");
    *from_slurm = 0;
    if (slash) return parse_uint(slash + 1, 1000000, &count) ? -2 : count;
    if (env) return parse_uint(env, 1000000, &count) ? -2 : count;
    if (getenv("SLURM_ARRAY_TASK_ID") && slurm) {
        *from_slurm = 1;
        return parse_uint(slurm, 1000000, &count) ? -2 : count;
    }
    return -1;
}

/* --shard I/N | auto | auto/N. */
static int shard_parse(const char *spec, shard *out, char *msg, size_t cap) {
    *out = (shard){0, 1, ""};
    if (!spec) return 0;
    long index = -1, count = -1;
    const char *slash = strchr(spec, '/');
    if (!strncmp(spec, "auto", 4) && (spec[4] == 0 || spec[4] == '/')) {
        int from_slurm;
        count = shard_env_count(slash, &from_slurm);
        if (!getenv("SLURM_ARRAY_TASK_ID") && !getenv("JOB_COMPLETION_INDEX"))
            return shard_env_index(0, &index, msg, cap); /* says what is missing */
        if (count == -1) {
            snprintf(msg, cap, "--shard auto: the number of shards is unknown: use --shard auto/N or set "
                     "SDMOE_SHARD_COUNT (SLURM_ARRAY_TASK_COUNT is read under Slurm)");
            return -1;
        }
        if (shard_env_index(from_slurm, &index, msg, cap)) return -1;
        snprintf(out->source, sizeof out->source, "%s",
                 getenv("SLURM_ARRAY_TASK_ID") ? "Slurm array task" : "JOB_COMPLETION_INDEX");
    } else {
        char head[32];
        size_t n = slash ? (size_t)(slash - spec) : 0;
        if (!slash || n >= sizeof head || parse_uint(slash + 1, 1000000, &count)) count = -2;
        if (count != -2) {
            memcpy(head, spec, n);
            head[n] = 0;
            if (parse_uint(head, 1000000, &index)) count = -2;
        }
    }
    if (count < 1 || index < 0) {
        snprintf(msg, cap, "--shard '%s': expected I/N with 0 <= I < N, auto or auto/N", spec);
        return -1;
    }
    if (index >= count) {
        snprintf(msg, cap, "--shard %s: shard index %ld is not below the shard count %ld", spec, index, count);
        return -1;
    }
    out->index = (int)index;
    out->count = (int)count;
    return 0;
}

/* ---- plans and images ---- */

/* A job's settings, the flags filling what the line leaves out. */
typedef struct job_plan {
    const batch_job *job;
    int ok;
    render_sampler rs;
    const char *scheduler;
    int width, height, steps, clip_skip, count, chunks;
    double cfg;
    const char *negative;    /* NULL = none */
    uint64_t seed0;
    int sdxl;                /* SDXL micro-conditioning, defaults resolved: */
    int orig_w, orig_h, target_w, target_h, crop_top, crop_left;
} job_plan;

typedef struct batch_image {
    job_plan *plan;
    int k;                   /* image index in the job */
    uint64_t seed;
    char file[BATCH_JOBS_MAX_NAME + 16];
    char key[65];            /* params key */
    int pending, failed;
} batch_image;

typedef struct failure {
    int line;
    char msg[400];
} failure;

typedef struct batch_run {
    const gen_options *o;
    const char *jobs_label;  /* file name or "stdin", for messages */
    shard sh;
    sd_pipeline *p;
    sd_model *m;
    const sd_unet_config *uc;
    sd_prompt_syntax syntax;
    char hash[11];
    batch_manifest_writer mw;
    cli_progress bar;
    int processed;           /* pending images written or failed */
    int rendered, skipped, failed_images, failed_jobs;
    failure *failures;
    int n_failures;
} batch_run;

static void note_failure(batch_run *r, int line, const char *msg) {
    r->failed_jobs++;
    if (r->n_failures < MAX_LISTED_FAILURES) {
        if (!r->failures) r->failures = calloc(MAX_LISTED_FAILURES, sizeof *r->failures);
        if (!r->failures) return;
        failure *f = &r->failures[r->n_failures++];
        f->line = line;
        snprintf(f->msg, sizeof f->msg, "%.399s", msg);
    }
}

/* Seed of image 0 of a job: its own "seed"; else --seed (every job starts
 * there); else the first 32 bits of SHA-256("sdmoe batch " + stem), fixed
 * for the job so a resumed run reproduces it. */
static uint64_t job_seed0(const batch_job *job, int64_t flag_seed) {
    if (job->seed >= 0) return (uint64_t)job->seed;
    if (flag_seed >= 0) return (uint64_t)flag_seed;
    char text[BATCH_JOBS_MAX_NAME + 16], hex[65];
    snprintf(text, sizeof text, "sdmoe batch %s", job->stem);
    sd_error err = {0};
    if (sd_sha256_buffer(text, strlen(text), hex, &err)) return 0;
    hex[8] = 0;
    return strtoull(hex, NULL, 16);
}

/* A1111 packs a prompt into 77-token chunks and pads cond/uncond to one
 * count; a batch pads every image to its longest, which changes the
 * result, so only images of equal count share a call. */
static int prompt_chunks(sd_tokenizer *tok, sd_prompt_syntax syntax, const char *text, int *n, sd_error *err) {
    sd_prompt_chunks c;
    if (sd_prompt_chunks_build(tok, text, syntax, &c, err)) return -1;
    *n = c.n_chunks;
    sd_prompt_chunks_free(&c);
    return 0;
}

static int plan_job(batch_run *r, const batch_job *job, sd_tokenizer *tok, job_plan *pl, sd_error *err) {
    const gen_options *o = r->o;
    memset(pl, 0, sizeof *pl);
    pl->job = job;
    pl->scheduler = job->scheduler ? job->scheduler : o->scheduler;
    if (render_resolve_sampler(r->p, job->sampler ? job->sampler : o->sampler, pl->scheduler, &pl->rs, err))
        return -1;
    int dw, dh, f = sd_pipeline_vae_factor(r->p);
    sd_pipeline_default_size(r->p, &dw, &dh);
    pl->width = job->width ? job->width : o->width ? o->width : dw;
    pl->height = job->height ? job->height : o->height ? o->height : dh;
    if (pl->width % f || pl->height % f)
        return sd_fail(err, "size %dx%d: width and height must be multiples of %d for this model", pl->width,
                       pl->height, f);
    pl->steps = job->steps ? job->steps : o->steps;
    pl->clip_skip = job->clip_skip ? job->clip_skip : o->clip_skip ? o->clip_skip : 1;
    pl->count = job->count ? job->count : o->batch_count;
    pl->cfg = job->has_cfg ? job->cfg_scale : o->cfg_scale;
    pl->negative = job->has_negative ? job->negative : o->negative;
    pl->seed0 = job_seed0(job, o->seed);
    if ((pl->sdxl = sd_pipeline_is_sdxl(r->p))) {
        pl->orig_w = o->original_width ? o->original_width : pl->width;
        pl->orig_h = o->original_height ? o->original_height : pl->height;
        pl->target_w = o->target_width ? o->target_width : pl->width;
        pl->target_h = o->target_height ? o->target_height : pl->height;
        pl->crop_top = o->crop_top;
        pl->crop_left = o->crop_left;
    }
    pl->chunks = 1;
    if (tok) {
        int a, b;
        if (prompt_chunks(tok, r->syntax, job->prompt, &a, err) ||
            prompt_chunks(tok, r->syntax, pl->negative ? pl->negative : "", &b, err))
            return -1;
        pl->chunks = a > b ? a : b;
    }
    pl->ok = 1;
    return 0;
}

/* The parameters that decide an image's pixels, in a fixed key order
 * (their compact JSON's SHA-256 is the manifest's params key). */
static cJSON *image_params(const batch_run *r, const job_plan *pl, uint64_t seed) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    int ok = cJSON_AddStringToObject(o, "prompt", pl->job->prompt) != NULL;
    ok &= (pl->negative ? cJSON_AddStringToObject(o, "negative_prompt", pl->negative)
                        : cJSON_AddNullToObject(o, "negative_prompt")) != NULL;
    ok &= cJSON_AddNumberToObject(o, "seed", (double)seed) != NULL;
    ok &= cJSON_AddNumberToObject(o, "steps", pl->steps) != NULL;
    ok &= cJSON_AddNumberToObject(o, "cfg_scale", pl->cfg) != NULL;
    ok &= cJSON_AddNumberToObject(o, "width", pl->width) != NULL;
    ok &= cJSON_AddNumberToObject(o, "height", pl->height) != NULL;
    ok &= cJSON_AddStringToObject(o, "sampler", sd_sampler_get(pl->rs.id)->name) != NULL;
    ok &= cJSON_AddBoolToObject(o, "karras", pl->rs.karras_in_use) != NULL;
    ok &= cJSON_AddNumberToObject(o, "clip_skip", pl->clip_skip) != NULL;
    ok &= cJSON_AddStringToObject(o, "prompt_syntax", r->o->prompt_syntax) != NULL;
    ok &= cJSON_AddStringToObject(o, "model_hash", r->hash) != NULL;
    if (r->uc->moe_enabled) ok &= cJSON_AddStringToObject(o, "moe_routing", r->o->moe_routing) != NULL;
    /* tiles blend differently from a whole-image decode: part of what an image was made with */
    if (r->o->vae_tiling) ok &= cJSON_AddNumberToObject(o, "vae_tile", VAE_DEFAULT_TILE) != NULL;
    if (pl->sdxl) { /* SDXL only: SD 1.x params keys stay as they were */
        char v[64];
        snprintf(v, sizeof v, "%dx%d", pl->orig_w, pl->orig_h);
        ok &= cJSON_AddStringToObject(o, "original_size", v) != NULL;
        snprintf(v, sizeof v, "%dx%d", pl->target_w, pl->target_h);
        ok &= cJSON_AddStringToObject(o, "target_size", v) != NULL;
        ok &= cJSON_AddNumberToObject(o, "crop_top", pl->crop_top) != NULL;
        ok &= cJSON_AddNumberToObject(o, "crop_left", pl->crop_left) != NULL;
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static int image_key(const batch_run *r, batch_image *im, sd_error *err) {
    cJSON *params = image_params(r, im->plan, im->seed);
    if (!params) return sd_fail(err, "out of memory");
    int rc = batch_manifest_params_key(params, im->key, err);
    cJSON_Delete(params);
    return rc;
}

/* Images in one UNet call must share everything but prompts and seeds. */
static int same_shape(const job_plan *a, const job_plan *b) {
    return a->width == b->width && a->height == b->height && a->steps == b->steps && a->rs.id == b->rs.id &&
           a->rs.karras == b->rs.karras && a->cfg == b->cfg && a->clip_skip == b->clip_skip &&
           a->chunks == b->chunks && a->orig_w == b->orig_w && a->orig_h == b->orig_h && a->target_w == b->target_w &&
           a->target_h == b->target_h && a->crop_top == b->crop_top && a->crop_left == b->crop_left;
}

/* ---- files ---- */

static int mkdir_p(const char *dir, sd_error *err) {
    char *p = strdup(dir);
    if (!p) return sd_fail(err, "out of memory");
    int rc = 0;
    for (char *s = p + 1; !rc; s++) {
        if (*s != '/' && *s) continue;
        char c = *s;
        *s = 0;
        if (mkdir(p, 0755) && errno != EEXIST) rc = sd_fail(err, "%s: cannot create the folder: %s", p, strerror(errno));
        *s = c;
        if (!c) break;
    }
    free(p);
    if (!rc && !sd_is_dir(dir)) rc = sd_fail(err, "-o %s: not a folder", dir);
    if (!rc && access(dir, W_OK | X_OK)) rc = sd_fail(err, "-o %s: cannot write there: %s", dir, strerror(errno));
    return rc;
}

static int file_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Removes "<our file>.tmp-<pid>" left by a killed run: only this shard
 * renders these names, so no live process owns them. */
static void remove_stale_temps(const char *dir, batch_image *ims, int n) {
    const char **names = malloc((size_t)n * sizeof *names);
    DIR *d = names ? opendir(dir) : NULL;
    if (!d) {
        free(names);
        return;
    }
    for (int i = 0; i < n; i++) names[i] = ims[i].file;
    qsort(names, (size_t)n, sizeof *names, file_cmp);
    struct dirent *de;
    while ((de = readdir(d))) {
        char *t = strstr(de->d_name, ".png.tmp-");
        if (!t) continue;
        char base[sizeof ims[0].file];
        size_t len = (size_t)(t - de->d_name) + 4;
        if (len >= sizeof base) continue;
        memcpy(base, de->d_name, len);
        base[len] = 0;
        const char *key = base;
        if (bsearch(&key, names, (size_t)n, sizeof *names, file_cmp)) {
            char *path = sd_path_join(dir, de->d_name);
            if (path) unlink(path);
            free(path);
        }
    }
    closedir(d);
    free(names);
}

/* ---- rendering ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The manifest line of image im: file, job, params, group size, timing, hashes. */
static cJSON *image_record(const batch_run *r, const batch_image *im, int batch, double seconds,
                           const char *sha) {
    cJSON *rec = cJSON_CreateObject(), *params = image_params(r, im->plan, im->seed);
    if (!rec || !params) {
        cJSON_Delete(rec);
        cJSON_Delete(params);
        return NULL;
    }
    const batch_job *job = im->plan->job;
    cJSON_AddStringToObject(rec, "file", im->file);
    cJSON_AddNumberToObject(rec, "job_line", job->line);
    cJSON_AddNumberToObject(rec, "job_index", job->index);
    if (job->named) cJSON_AddStringToObject(rec, "name", job->stem);
    cJSON_AddNumberToObject(rec, "image", im->k);
    while (params->child) {
        cJSON *item = cJSON_DetachItemViaPointer(params, params->child);
        cJSON_AddItemToObject(rec, item->string, item);
    }
    cJSON_Delete(params);
    cJSON_AddStringToObject(rec, "scheduler", im->plan->scheduler);
    cJSON_AddNumberToObject(rec, "batch", batch);
    cJSON_AddNumberToObject(rec, "seconds", (double)(long)(seconds * 1000 + 0.5) / 1000);
    cJSON_AddStringToObject(rec, "sha256", sha);
    cJSON_AddStringToObject(rec, "params_sha256", im->key);
    cJSON_AddStringToObject(rec, "sdmoe", SDMOE_VERSION);
    return rec;
}

/* PNG with its parameters text, then its manifest line. */
static int save_image(batch_run *r, const sd_txt2img_result *res, int i, batch_image *im, int batch,
                      double seconds, sd_error *err) {
    const job_plan *pl = im->plan;
    render_meta meta = {.prompt = pl->job->prompt, .negative = pl->negative, .steps = pl->steps, .sampler = pl->rs,
                        .cfg_scale = pl->cfg, .seed = im->seed, .width = pl->width, .height = pl->height,
                        .clip_skip = pl->clip_skip, .model_hash = r->hash, .model_name = r->m->name,
                        .prompt_syntax = r->o->prompt_syntax,
                        .moe_experts = r->uc->moe_enabled ? r->uc->moe_num_experts : 0,
                        .moe_top_k = r->uc->moe_top_k, .moe_routing = r->o->moe_routing};
    render_meta_sdxl(&meta, r->p, pl->width, pl->height, pl->orig_w, pl->orig_h, pl->target_w, pl->target_h,
                     pl->crop_top, pl->crop_left, pl->negative);
    char *text = NULL, sha[65];
    char *path = sd_path_join(r->o->output, im->file);
    int rc = path ? render_infotext(&meta, &text, err) : sd_fail(err, "out of memory");
    if (!rc) rc = render_save_png(res, i, path, text, err);
    if (!rc) rc = sd_sha256_file(path, sha, err);
    free(text);
    if (!rc) {
        cJSON *rec = image_record(r, im, batch, seconds, sha);
        rc = rec ? batch_manifest_append(&r->mw, rec, err) : sd_fail(err, "out of memory");
        cJSON_Delete(rec);
    }
    if (!rc && r->o->verbose)
        fprintf(stderr, "sdmoe: wrote %s (seed %llu, %.1fs)\n", path, (unsigned long long)im->seed, seconds);
    free(path);
    return rc;
}

static void fail_group(batch_run *r, batch_image **g, int n, const char *msg) {
    const batch_job *last = NULL;
    for (int i = 0; i < n; i++) {
        if (!g[i]->pending) continue;
        g[i]->failed = 1;
        r->failed_images++;
        r->processed++;
        if (g[i]->plan->job != last) {
            last = g[i]->plan->job;
            char line[512];
            snprintf(line, sizeof line, "%.380s (image %s)", msg, g[i]->file);
            fprintf(stderr, "%ssdmoe: %s:%d: failed: %s\n", r->bar.mode == CLI_PROGRESS_BAR ? "\n" : "",
                    r->jobs_label, last->line, line);
            note_failure(r, last->line, line);
        }
    }
    cli_progress_update(&r->bar, r->processed);
}

/* Renders one group (n images sharing a shape) and saves its pending
 * images.  Returns -1 only for errors that must stop the batch (the
 * manifest or the output folder failing); a failed render fails the group. */
static int render_group(batch_run *r, batch_image **g, int n) {
    uint64_t seeds[64];
    const char *prompts[64], *negs[64];
    for (int i = 0; i < n; i++) {
        seeds[i] = g[i]->seed;
        prompts[i] = g[i]->plan->job->prompt;
        negs[i] = g[i]->plan->negative;
    }
    const job_plan *pl = g[0]->plan;
    sd_txt2img_params q = {.prompt = prompts[0], .width = pl->width, .height = pl->height, .steps = pl->steps,
                           .cfg_scale = pl->cfg, .sampler = pl->rs.id, .karras = pl->rs.karras,
                           .clip_skip = pl->clip_skip, .syntax = r->syntax, .n_images = n, .seeds = seeds,
                           .prompts = prompts, .negative_prompts = negs, .original_width = pl->orig_w,
                           .original_height = pl->orig_h, .target_width = pl->target_w, .target_height = pl->target_h,
                           .crop_top = pl->crop_top, .crop_left = pl->crop_left,
                           .vae_tile = r->o->vae_tiling ? VAE_DEFAULT_TILE : 0};
    sd_txt2img_result res;
    sd_error err = {0};
    double t0 = now_s();
    if (sd_pipeline_txt2img(r->p, &q, NULL, &res, &err)) {
        fail_group(r, g, n, err.msg);
        return 0;
    }
    double seconds = (now_s() - t0) / n;
    if (res.dropped_tokens > 0 || res.invalid_utf8 > 0)
        fprintf(stderr, "%ssdmoe: warning: %s:%d%s: %d prompt tokens past 75 were dropped (use --prompt-syntax "
                "a1111 for long prompts), %zu invalid UTF-8 sequences replaced\n",
                r->bar.mode == CLI_PROGRESS_BAR ? "\n" : "", r->jobs_label, pl->job->line, n > 1 ? " (and its batch)" : "",
                res.dropped_tokens, res.invalid_utf8);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (!g[i]->pending) continue;
        rc = save_image(r, &res, i, g[i], n, seconds, &err);
        if (!rc) {
            r->rendered++;
            r->processed++;
            cli_progress_update(&r->bar, r->processed);
        }
    }
    sd_txt2img_result_free(&res);
    if (rc) fprintf(stderr, "\nsdmoe: %s\n", err.msg);
    return rc;
}

/* Walks the images in order, cutting groups of <= --batch-size with one
 * shape, and renders each group holding a pending image. */
static int render_all(batch_run *r, batch_image *ims, int n) {
    int bs = r->o->batch_size < 1 ? 1 : r->o->batch_size > 64 ? 64 : r->o->batch_size;
    batch_image *g[64];
    for (int i = 0; i < n;) {
        int k = 0, pending = 0;
        while (i + k < n && k < bs && (k == 0 || same_shape(ims[i].plan, ims[i + k].plan))) {
            g[k] = &ims[i + k];
            pending += g[k]->pending;
            k++;
        }
        if (pending && render_group(r, g, k)) return -1;
        i += k;
    }
    return 0;
}

/* ---- setup ---- */

static int fail_msg(const sd_error *err) {
    fprintf(stderr, "sdmoe: %s\n", err->msg);
    return 1;
}

static int in_shard(const shard *sh, int index) {
    return index % sh->count == sh->index;
}

/* Plans this shard's jobs and lists their images; a job that cannot be
 * planned is a failure.  *ims is malloc'd. */
static int build_images(batch_run *r, const batch_jobs *jobs, job_plan *plans, batch_image **ims, int *n_ims,
                        sd_error *err) {
    sd_tokenizer *tok = NULL;
    if (r->o->batch_size > 1 && r->syntax == SD_PROMPT_SYNTAX_A1111 &&
        sd_tokenizer_open(&tok, r->m->tokenizer_dir, err))
        return -1;
    long total = 0;
    for (int j = 0; j < jobs->n_jobs; j++) {
        if (!in_shard(&r->sh, jobs->jobs[j].index)) continue;
        sd_error perr = {0};
        if (plan_job(r, &jobs->jobs[j], tok, &plans[j], &perr)) note_failure(r, jobs->jobs[j].line, perr.msg);
        else total += plans[j].count;
    }
    sd_tokenizer_free(tok);
    if (total > MAX_IMAGES)
        return sd_fail(err, "%ld images in this shard (at most %d): split the jobs file or use --shard", total,
                       MAX_IMAGES);
    *ims = calloc((size_t)(total ? total : 1), sizeof **ims);
    if (!*ims) return sd_fail(err, "out of memory for %ld images", total);
    int k = 0;
    for (int j = 0; j < jobs->n_jobs; j++) {
        if (!plans[j].ok) continue;
        for (int i = 0; i < plans[j].count; i++, k++) {
            batch_image *im = &(*ims)[k];
            im->plan = &plans[j];
            im->k = i;
            im->seed = plans[j].seed0 + (uint64_t)i;
            snprintf(im->file, sizeof im->file, "%s-%02d.png", plans[j].job->stem, i);
            if (image_key(r, im, err)) return -1;
        }
    }
    *n_ims = k;
    return 0;
}

/* Marks what the manifest already has; returns the pending count. */
static int mark_pending(batch_run *r, batch_image *ims, int n, sd_error *err) {
    batch_manifest man;
    if (batch_manifest_load(r->o->output, &man, err)) return -1;
    int pending = 0;
    for (int i = 0; i < n; i++) {
        ims[i].pending = !batch_manifest_is_done(&man, r->o->output, ims[i].file, ims[i].key);
        pending += ims[i].pending;
    }
    r->skipped = n - pending;
    if (man.n_bad_lines && !r->o->quiet)
        fprintf(stderr, "sdmoe: %s: ignored %d incomplete or damaged manifest line(s)\n", r->o->output,
                man.n_bad_lines);
    batch_manifest_free(&man);
    return pending;
}

static void on_load(void *ctx, const char *stage, int done, int total) {
    (void)stage;
    cli_progress *bar = ctx;
    if (!bar->label[0]) cli_progress_start(bar, "loading", total);
    cli_progress_update(bar, done);
}

static void on_load_message(void *ctx, int is_warning, const char *msg) {
    cli_progress *bar = ctx;
    if (!is_warning && bar->mode == CLI_PROGRESS_QUIET) return;
    char line[SD_ERROR_MSG_MAX + 256];
    snprintf(line, sizeof line, "sdmoe: %s%s", is_warning ? "warning: " : "", msg);
    cli_progress_message(bar, line);
}

static int load_model(batch_run *r, sd_error *err) {
    const gen_options *o = r->o;
    cli_progress bar;
    cli_progress_init(&bar, stderr, cli_progress_auto_mode(stderr, o->quiet));
    sd_pipeline_options po = {.variant = o->variant, .model_config = o->model_config,
                              .moe_routing = !strcmp(o->moe_routing, "per-token") ? SD_MOE_ROUTING_PER_TOKEN
                                                                                 : SD_MOE_ROUTING_SEGMOE,
                              .weight_cache_dir = o->weight_cache, .on_progress = on_load,
                              .on_message = on_load_message, .progress_ctx = &bar};
    int rc = sd_pipeline_load(&r->p, o->model, &po, err);
    if (bar.label[0]) cli_progress_finish(&bar);
    if (rc) return -1;
    r->m = sd_pipeline_model(r->p);
    r->uc = sd_unet_get_config(sd_pipeline_unet(r->p));
    if (o->micro_given && !sd_pipeline_is_sdxl(r->p))
        return sd_fail(err, "--original-size, --target-size and --crop-top-left apply to SDXL models only; %s is not one",
                       r->m->path);
    return sd_model_hash(r->m, r->hash, err);
}

/* Reports the parser's bad lines that belong to this shard. */
static void report_bad_lines(batch_run *r, const batch_jobs *jobs) {
    for (int i = 0; i < jobs->n_issues; i++) {
        const batch_issue *is = &jobs->issues[i];
        if (is->index >= 0 && !in_shard(&r->sh, is->index)) continue;
        fprintf(stderr, "sdmoe: %s:%d: skipped: %s\n", r->jobs_label, is->line, is->msg);
        note_failure(r, is->line, is->msg);
    }
}

static void print_summary(const batch_run *r, int n_images) {
    if (!r->o->quiet || r->failed_jobs)
        fprintf(stderr, "sdmoe: batch: %d rendered, %d skipped (already done), %d failed (of %d images); "
                "%d failed job line(s)\n", r->rendered, r->skipped, r->failed_images, n_images, r->failed_jobs);
    for (int i = 0; i < r->n_failures; i++)
        fprintf(stderr, "sdmoe:   failed: %s:%d: %s\n", r->jobs_label, r->failures[i].line, r->failures[i].msg);
    if (r->failed_jobs > r->n_failures)
        fprintf(stderr, "sdmoe:   ... and %d more\n", r->failed_jobs - r->n_failures);
}

/* Everything after the flags: jobs, model, images, rendering, summary. */
static int run_batch(batch_run *r) {
    const gen_options *o = r->o;
    sd_error err = {0};
    batch_jobs jobs;
    if (batch_jobs_load(o->jobs, &jobs, &err)) return fail_msg(&err);
    report_bad_lines(r, &jobs);
    int n_mine = 0;
    for (int j = 0; j < jobs.n_jobs; j++) n_mine += in_shard(&r->sh, jobs.jobs[j].index);
    if (!o->quiet) {
        fprintf(stderr, "sdmoe: %s: %d job(s) (%s)", r->jobs_label, jobs.n_jobs, jobs.jsonl ? "JSON Lines" : "plain text");
        if (r->sh.count > 1)
            fprintf(stderr, "; shard %d/%d%s%s: %d of them", r->sh.index, r->sh.count, r->sh.source[0] ? " from " : "",
                    r->sh.source, n_mine);
        fputc('\n', stderr);
    }
    job_plan *plans = calloc((size_t)(jobs.n_jobs ? jobs.n_jobs : 1), sizeof *plans);
    batch_image *ims = NULL;
    int n_ims = 0, rc = plans ? 0 : -1, pending = 0;
    if (!plans) sd_fail(&err, "out of memory");
    if (!rc && n_mine) rc = mkdir_p(o->output, &err);
    if (!rc && n_mine) rc = load_model(r, &err);
    if (!rc && n_mine) rc = build_images(r, &jobs, plans, &ims, &n_ims, &err);
    if (!rc && n_ims) rc = (pending = mark_pending(r, ims, n_ims, &err)) < 0;
    char mname[96];
    batch_manifest_file_name(r->sh.index, r->sh.count, mname, sizeof mname);
    if (!rc && pending) rc = batch_manifest_open(&r->mw, o->output, mname, &err);
    int fatal = rc;
    if (rc) {
        fprintf(stderr, "sdmoe: %s\n", err.msg);
    } else if (pending) {
        remove_stale_temps(o->output, ims, n_ims);
        if (!o->quiet)
            fprintf(stderr, "sdmoe: %d image(s): %d already done, %d to render (batch size %d, threads %d)\n", n_ims,
                    n_ims - pending, pending, o->batch_size, sd_get_threads());
        cli_progress_init(&r->bar, stderr, cli_progress_auto_mode(stderr, o->quiet));
        cli_progress_start(&r->bar, "batch", pending);
        fatal = render_all(r, ims, n_ims);
        cli_progress_finish(&r->bar);
        batch_manifest_close(&r->mw);
    }
    print_summary(r, n_ims);
    free(ims);
    free(plans);
    batch_jobs_free(&jobs);
    free(r->failures);
    if (r->p) sd_pipeline_free(r->p);
    return fatal || r->failed_jobs ? 1 : 0;
}

int cli_batch(int argc, char **argv) {
    gen_options o;
    gen_options_defaults(&o);
    o.output = NULL; /* batch needs an explicit -o DIR */
    char msg[512];
    int prc = gen_options_parse(&o, argc, argv, 1, msg, sizeof msg);
    if (prc == 1) return 0;
    if (prc == 0 && !o.jobs) snprintf(msg, sizeof msg, "missing --jobs FILE (JSON Lines or one prompt per line; - = stdin)"), prc = -1;
    if (prc == 0 && !o.output) snprintf(msg, sizeof msg, "missing -o DIR (the output folder)"), prc = -1;
    if (prc == 0 && o.prompt) snprintf(msg, sizeof msg, "-p/--prompt: batch takes its prompts from --jobs"), prc = -1;
    if (prc == 0 && o.moe_stats) snprintf(msg, sizeof msg, "--moe-stats is only for sdmoe generate"), prc = -1;
    batch_run r = {.o = &o, .mw = {.fd = -1}};
    if (prc == 0 && shard_parse(o.shard, &r.sh, msg, sizeof msg)) prc = -1;
    sd_error err = {0};
    sd_sampler_id id;
    int karras;
    if (prc == 0 && o.sampler && sd_sampler_lookup(o.sampler, &id, &karras, &err))
        snprintf(msg, sizeof msg, "%.500s", err.msg), prc = -1;
    if (prc == 0 && sd_prompt_syntax_parse(o.prompt_syntax, &r.syntax, &err))
        snprintf(msg, sizeof msg, "%.500s", err.msg), prc = -1;
    if (prc < 0) {
        fprintf(stderr, "sdmoe: %s\n", msg);
        return 2;
    }
    r.jobs_label = strcmp(o.jobs, "-") ? o.jobs : "stdin";
    sd_set_threads(o.threads > 0 ? o.threads : sd_default_threads());
    return run_batch(&r);
}
