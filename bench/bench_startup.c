/* bench_startup — start to first sampling step through the real pipeline
 * (see bench.h): the SD1.5-shaped weight files are linked into a diffusers
 * folder, opened with sd_pipeline_load exactly as `sdmoe generate` opens a
 * model, and a 512^2 request runs until the sampler starts its first step:
 * without the weight cache, with an empty one (the first run, which writes
 * it) and with it filled (every later run). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench/bench.h"
#include "sampler/pipeline.h"

static int mkdir_p(const char *path, sd_error *err) {
    if (mkdir(path, 0755) && errno != EEXIST) return sd_fail(err, "bench: cannot create %s: %s", path, strerror(errno));
    return 0;
}

static int write_json(const char *dir, const char *name, cJSON *j, sd_error *err) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = j ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!text) return sd_fail(err, "bench: out of memory");
    FILE *f = fopen(path, "w");
    int rc = !f || fputs(text, f) < 0 ? sd_fail(err, "bench: cannot write %s: %s", path, strerror(errno)) : 0;
    if (f && fclose(f) && !rc) rc = sd_fail(err, "bench: cannot write %s", path);
    free(text);
    return rc;
}

/* dir/name -> target (absolute), replacing an older link. */
static int link_to(const char *dir, const char *name, const char *target, sd_error *err) {
    char path[PATH_MAX], abs[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!realpath(target, abs)) return sd_fail(err, "bench: %s: %s", target, strerror(errno));
    unlink(path);
    if (symlink(abs, path)) return sd_fail(err, "bench: cannot link %s -> %s: %s", path, abs, strerror(errno));
    return 0;
}

static cJSON *pair(const char *lib, const char *cls) {
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateString(lib));
    cJSON_AddItemToArray(a, cJSON_CreateString(cls));
    return a;
}

static cJSON *model_index_json(void) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "_class_name", "StableDiffusionPipeline");
    cJSON_AddItemToObject(j, "scheduler", pair("diffusers", "EulerDiscreteScheduler"));
    cJSON_AddItemToObject(j, "text_encoder", pair("transformers", "CLIPTextModel"));
    cJSON_AddItemToObject(j, "tokenizer", pair("transformers", "CLIPTokenizer"));
    cJSON_AddItemToObject(j, "unet", pair("diffusers", "UNet2DConditionModel"));
    cJSON_AddItemToObject(j, "vae", pair("diffusers", "AutoencoderKL"));
    return j;
}

/* SD1.5's published scheduler settings (runwayml/stable-diffusion-v1-5). */
static cJSON *scheduler_json(void) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "_class_name", "EulerDiscreteScheduler");
    cJSON_AddNumberToObject(j, "beta_start", 0.00085);
    cJSON_AddNumberToObject(j, "beta_end", 0.012);
    cJSON_AddStringToObject(j, "beta_schedule", "scaled_linear");
    cJSON_AddNumberToObject(j, "num_train_timesteps", 1000);
    cJSON_AddNumberToObject(j, "steps_offset", 1);
    cJSON_AddStringToObject(j, "prediction_type", "epsilon");
    cJSON_AddStringToObject(j, "timestep_spacing", "leading");
    return j;
}

static int make_folder(const bench_startup_in *in, sd_error *err) {
    static const char *const subs[] = {"unet", "vae", "text_encoder", "scheduler"};
    char sub[PATH_MAX];
    if (mkdir_p(in->folder, err)) return -1;
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        snprintf(sub, sizeof sub, "%s/%s", in->folder, subs[i]);
        if (mkdir_p(sub, err)) return -1;
    }
    char unet[PATH_MAX], vae[PATH_MAX], te[PATH_MAX], sch[PATH_MAX];
    snprintf(unet, sizeof unet, "%s/unet", in->folder);
    snprintf(vae, sizeof vae, "%s/vae", in->folder);
    snprintf(te, sizeof te, "%s/text_encoder", in->folder);
    snprintf(sch, sizeof sch, "%s/scheduler", in->folder);
    return write_json(in->folder, "model_index.json", model_index_json(), err) ||
           write_json(unet, "config.json", bench_unet_config_json(0, 0), err) ||
           write_json(vae, "config.json", bench_vae_config_json(), err) ||
           write_json(te, "config.json", bench_clip_config_json(), err) ||
           write_json(sch, "scheduler_config.json", scheduler_json(), err) ||
           link_to(unet, "diffusion_pytorch_model.safetensors", in->unet_file, err) ||
           link_to(vae, "diffusion_pytorch_model.safetensors", in->vae_file, err) ||
           link_to(te, "model.safetensors", in->clip_file, err) ||
           link_to(in->folder, "tokenizer", in->tokenizer_dir, err);
}

typedef struct watch {
    double t0, load_done, first_step, first_step_done, second_step_done;
    double rss_first_step;
} watch;

static void on_load(void *ctx, const char *stage, int done, int total) {
    watch *w = ctx;
    if (!strcmp(stage, "load") && done == total) w->load_done = bench_now_ms() - w->t0;
}

static void on_request(void *ctx, const char *stage, int done, int total) {
    (void)total;
    watch *w = ctx;
    if (strcmp(stage, "sample")) return;
    if (done == 0) {
        w->first_step = bench_now_ms() - w->t0;
        w->rss_first_step = (double)bench_status_kb("VmRSS") / 1024.0;
    } else if (done == 1) {
        w->first_step_done = bench_now_ms() - w->t0;
    } else if (done == 2) {
        w->second_step_done = bench_now_ms() - w->t0;
    }
}

double bench_anon_first_touch_gbps(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE); /* as core/memory.c maps big buffers */
#endif
    double t0 = bench_now_ms();
    memset(p, 1, bytes);
    double ms = bench_now_ms() - t0;
    munmap(p, bytes);
    return (double)bytes / (ms * 1e6);
}

/* Empties the page cache (needs root): the files are then read from disk. */
static int drop_page_cache(sd_error *err) {
    sync();
    FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
    int ok = f && fputs("3\n", f) >= 0;
    if (f && fclose(f)) ok = 0;
    return ok ? 0 : sd_fail(err, "bench: --cold needs root to write /proc/sys/vm/drop_caches");
}

/* Removes the bench's cache folder's files (the folder is the bench's own). */
static void cache_dir_clear(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char path[PATH_MAX];
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' && snprintf(path, sizeof path, "%s/%s", dir, de->d_name) < (int)sizeof path)
            unlink(path);
    closedir(d);
}

/* One start: sd_pipeline_load (weight cache in cache_dir, or "off") and a
 * 512^2 2-step Euler request (step 2 gives the steady step time). */
static int run_once(const bench_startup_in *in, const char *cache_dir, bench_startup_run *out, sd_error *err) {
    memset(out, 0, sizeof *out);
    if (in->cold && drop_page_cache(err)) return -1;
    watch w = {0};
    sd_pipeline_options po = {.weight_cache_dir = cache_dir, .on_progress = on_load, .progress_ctx = &w};
    sd_pipeline *p = NULL;
    bench_reset_hwm();
    w.t0 = bench_now_ms();
    if (sd_pipeline_load(&p, in->folder, &po, err)) return -1;
    uint64_t seed = 1;
    sd_txt2img_params q = {.prompt = "a lighthouse on a cliff at dawn, oil painting",
                           .negative_prompt = "blurry",
                           .width = 512,
                           .height = 512,
                           .steps = 2,
                           .cfg_scale = 7.5,
                           .sampler = SD_SAMPLER_EULER,
                           .karras = SD_KARRAS_FROM_CONFIG,
                           .n_images = 1,
                           .seeds = &seed};
    sd_txt2img_hooks h = {.ctx = &w, .on_progress = on_request};
    sd_txt2img_result res;
    int rc = sd_pipeline_txt2img(p, &q, &h, &res, err);
    if (!rc) {
        sd_weight_cache_stats us, vs;
        sd_pipeline_weight_cache_stats(p, "unet", &us);
        sd_pipeline_weight_cache_stats(p, "vae", &vs);
        out->load_ms = w.load_done;
        out->first_step_ms = w.first_step;
        out->step_ms = w.first_step_done - w.first_step;
        out->second_step_ms = w.second_step_done - w.first_step_done;
        /* what a user waits beyond the compute: pages mapped lazily (weights,
         * cache) and first-touch workspaces are paid inside step 1 */
        out->overhead_ms = w.first_step_done - out->second_step_ms;
        out->rss_first_step_mb = w.rss_first_step;
        out->peak_rss_mb = (double)bench_status_kb("VmHWM") / 1024.0;
        out->cache_hit_mb = (double)(us.hit_bytes + vs.hit_bytes) / (1 << 20);
        out->cache_written_mb = (double)((us.saved ? us.added_bytes : 0) + (vs.saved ? vs.added_bytes : 0)) / (1 << 20);
        sd_txt2img_result_free(&res);
    }
    sd_pipeline_free(p);
    return rc;
}

int bench_startup(const bench_startup_in *in, bench_startup_out *out, sd_error *err) {
    memset(out, 0, sizeof *out);
    if (make_folder(in, err)) return -1;
    const char *files[3] = {in->unet_file, in->vae_file, in->clip_file};
    if (in->cold && drop_page_cache(err)) return -1;
    out->read_ms = bench_read_files_ms(files, 3);
    out->anon_first_touch_gbps = bench_anon_first_touch_gbps((size_t)512 << 20);
    char cache_dir[PATH_MAX];
    snprintf(cache_dir, sizeof cache_dir, "%s/weight-cache", in->folder);
    if (mkdir_p(cache_dir, err)) return -1;
    cache_dir_clear(cache_dir);
    if (run_once(in, "off", &out->uncached, err) || run_once(in, cache_dir, &out->first, err) ||
        run_once(in, cache_dir, &out->cached, err))
        return -1;
    cache_dir_clear(cache_dir); /* gigabytes: not left behind */
    return 0;
}
