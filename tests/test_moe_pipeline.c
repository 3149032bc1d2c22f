/* MoE text-to-image: the 3 SegMoE pipeline runs of moe/refs/pipeline (DDPM,
 * Euler a, DPM++ 2M Karras) through sampler/pipeline, from the SegMoE-made
 * folder and from a folder made by our own merge of moe/segmoe-2x2.yaml
 * (seed 1234): its gates, computed by moe_merge/gate_init from the experts'
 * own pipelines, equal SegMoE's (moe/refs/gates.safetensors), so the runs
 * match the same references.  Also the default sampler of a SegMoE folder. */
#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/fileio.h"
#include "core/image.h"
#include "moe_merge/gate_init.h"
#include "moe_merge/merge_writer.h"
#include "moe_merge/segmoe_config.h"
#include "sampler/pipeline.h"
#include "tests/support/test_support.h"
#include "unet/unet.h"

#define SEGMOE_DIR "moe/tiny-segmoe-2x2"
#define GATES_REF "moe/refs/gates.safetensors"
#define MERGE_SEED 1234 /* moe/README.md: the gate runs' SEED */
/* moe/README.md "Suggested tolerances" */
#define GATE_ABS 1e-4
#define GATE_REL 1e-4
#define LAT_ABS 2e-3
#define LAT_REL 5e-4
#define IMG_ABS 2e-3

typedef struct run_case {
    const char *name;
    const char *sampler; /* sd_sampler_lookup name */
    uint64_t seed;
    int height, width, steps;
    const char *prompt, *negative;
} run_case;

/* moe/refs/cases.json -> pipelines.cases */
static const run_case RUNS[] = {
    {"ddpm_seed1234_64x64", "ddpm", 1234, 64, 64, 10, "a photo of a cat, sharp focus", "blurry"},
    {"euler_a_seed7_64x96", "euler_a", 7, 64, 96, 8, "an oil painting of a dog in a garden", NULL},
    {"dpmpp_2m_karras_seed2024_96x64", "dpm++2m_karras", 2024, 96, 64, 8, "a lighthouse at dusk, dramatic sky",
     "low quality"},
};
#define N_RUNS ((int)(sizeof RUNS / sizeof RUNS[0]))

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}
static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

typedef struct trace {
    int64_t numel;
    int n_calls;
    float *noise, *init;
    float *inputs, *eps, *latents; /* [n_calls, numel] */
} trace;

static void on_step(void *ctx, int call, float t, const float *in, const float *eps, const float *lat,
                    int64_t numel) {
    (void)t;
    trace *tr = ctx;
    size_t bytes = (size_t)numel * sizeof(float);
    if (call < 0) {
        if (in) memcpy(tr->noise, in, bytes);
        if (lat) memcpy(tr->init, lat, bytes);
        return;
    }
    cr_assert_lt(call, tr->n_calls, "more UNet calls than the reference");
    memcpy(tr->inputs + call * numel, in, bytes);
    memcpy(tr->eps + call * numel, eps, bytes);
    memcpy(tr->latents + call * numel, lat, bytes);
}

static sd_pipeline *load_pipeline(const char *path) {
    sd_pipeline *p;
    sd_error err = {0};
    cr_assert_eq(sd_pipeline_load(&p, path, NULL, &err), 0, "load %s: %s", path, err.msg);
    cr_assert_eq(sd_unet_moe_count(sd_pipeline_unet(p)), 105, "%s: MoE layers bound", path);
    return p;
}

/* One reference run: noise, every step, final latents, decoded image. */
static void check_run(sd_pipeline *p, const run_case *rc, const char *label) {
    char rel[256];
    snprintf(rel, sizeof rel, "moe/refs/pipeline/%s.safetensors", rc->name);
    st_file ref;
    tst_open_ref(&ref, rel);
    const st_tensor *steps_t = tst_ref_tensor(&ref, "step_latents");
    trace tr = {.numel = 4 * (rc->height / 8) * (rc->width / 8), .n_calls = (int)steps_t->shape[0]};
    cr_assert_eq(tr.n_calls, rc->steps);
    tr.noise = calloc(tr.numel, 4);
    tr.init = calloc(tr.numel, 4);
    tr.inputs = calloc(tr.numel * tr.n_calls, 4);
    tr.eps = calloc(tr.numel * tr.n_calls, 4);
    tr.latents = calloc(tr.numel * tr.n_calls, 4);

    sd_error err = {0};
    sd_txt2img_params q = {.prompt = rc->prompt, .negative_prompt = rc->negative, .width = rc->width,
                           .height = rc->height, .steps = rc->steps, .cfg_scale = 7.5,
                           .syntax = SD_PROMPT_SYNTAX_PLAIN, .n_images = 1, .seeds = &rc->seed};
    cr_assert_eq(sd_sampler_lookup(rc->sampler, &q.sampler, &q.karras, &err), 0, "%s", err.msg);
    sd_txt2img_hooks h = {.on_step = on_step, .ctx = &tr};
    sd_txt2img_result res;
    cr_assert_eq(sd_pipeline_txt2img(p, &q, &h, &res, &err), 0, "%s %s: %s", label, rc->name, err.msg);

    char what[200];
    float *r;
    size_t n;
#define CMP_REF(tname, got, abs_tol, rel_tol)                                 \
    r = tst_ref_f32(&ref, tname, &n);                                        \
    snprintf(what, sizeof what, "%s: %s %s", label, rc->name, tname);        \
    tst_check_close(what, got, r, n, abs_tol, rel_tol);                     \
    free(r);
    CMP_REF("noise", tr.noise, 1e-5, 0);
    CMP_REF("init_latents", tr.init, 1e-4, 1e-5);
    CMP_REF("step_model_inputs", tr.inputs, LAT_ABS, LAT_REL);
    CMP_REF("step_noise_pred", tr.eps, LAT_ABS, LAT_REL);
    CMP_REF("step_latents", tr.latents, LAT_ABS, LAT_REL);
    CMP_REF("final_latents", res.latents, LAT_ABS, LAT_REL);
    CMP_REF("vae_out", res.vae_out, IMG_ABS, 0);
    size_t img_n = (size_t)3 * rc->width * rc->height;
    float *unit = malloc(img_n * 4);
    sd_image_denormalize(res.vae_out, unit, img_n);
    CMP_REF("image", unit, IMG_ABS, 0);
#undef CMP_REF
    /* 8-bit pixels: within one level on <= 1 % of values */
    sd_image img;
    cr_assert_eq(sd_image_from_vae(res.vae_out, rc->width, rc->height, &img, &err), 0, "%s", err.msg);
    int64_t *u8 = tst_ref_i64(&ref, "image_u8", &n);
    cr_assert_eq(n, img_n);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)img.rgb[i] - (int)u8[i]);
        cr_expect_leq(d, 1, "%s: %s pixel value %zu differs by %d", label, rc->name, i, d);
        off += d != 0;
    }
    cr_expect_leq(off * 100, n, "%s: %s: %zu of %zu pixel values differ", label, rc->name, off, n);
    free(u8);
    sd_image_free(&img);
    free(unit);
    sd_txt2img_result_free(&res);
    free(tr.noise), free(tr.init), free(tr.inputs), free(tr.eps), free(tr.latents);
    st_close(&ref);
}

static void check_all_runs(const char *model_dir, const char *label) {
    sd_pipeline *p = load_pipeline(model_dir);
    for (int i = 0; i < N_RUNS; i++) check_run(p, &RUNS[i], label);
    sd_pipeline_free(p);
}

Test(moe_pipeline, segmoe_folder_reference_runs, .timeout = 600) {
    if (!tst_require_fixture(SEGMOE_DIR "/model_index.json")) return;
    char *dir = tst_fixture_path(SEGMOE_DIR);
    check_all_runs(dir, "SegMoE folder");
    free(dir);
}

/* A SegMoE folder's scheduler is DDPM, so that is its default sampler. */
Test(moe_pipeline, segmoe_folder_default_sampler_is_ddpm) {
    if (!tst_require_fixture(SEGMOE_DIR "/model_index.json")) return;
    char *dir = tst_fixture_path(SEGMOE_DIR);
    sd_pipeline *p = load_pipeline(dir);
    sd_sampler_id id = SD_SAMPLER_COUNT;
    sd_error err = {0};
    cr_assert_eq(sd_pipeline_default_sampler(p, &id, &err), 0, "%s", err.msg);
    cr_expect_eq(id, SD_SAMPLER_DDPM);
    int w = 0, h = 0;
    sd_pipeline_default_size(p, &w, &h);
    cr_expect_eq(w, 128);
    cr_expect_eq(h, 128);
    sd_pipeline_free(p);
    free(dir);
}

/* hidden_mean and gate of every module against SegMoE's (gates.safetensors). */
static void check_gates(const sd_gate_set *set) {
    st_file ref;
    tst_open_ref(&ref, GATES_REF);
    cr_assert_eq(set->n_experts, 2);
    cr_assert_eq(set->plan.n_modules, 105, "15 transformer blocks x 7 module kinds");
    for (int m = 0; m < set->plan.n_modules; m++) {
        const sd_moe_module *mod = &set->plan.modules[m];
        char name[320];
        size_t n;
        snprintf(name, sizeof name, "%s.hidden_mean", mod->name);
        float *h = tst_ref_f32(&ref, name, &n);
        cr_assert_eq(n, (size_t)2 * mod->in_dim, "%s size", name);
        tst_check_close(name, set->hidden_mean[m], h, n, GATE_ABS, GATE_REL);
        free(h);
        snprintf(name, sizeof name, "%s.gate", mod->name);
        float *g = tst_ref_f32(&ref, name, &n);
        tst_check_close(name, set->gates[m], g, n, GATE_ABS, GATE_REL);
        free(g);
    }
    st_close(&ref);
}

typedef struct progress_log {
    int sample_updates[2];
    int sample_total;
    int loads;
} progress_log;

static void on_gate_progress(void *ctx, int expert, int n_experts, const char *stage, int done, int total) {
    progress_log *pl = ctx;
    cr_assert_eq(n_experts, 2);
    cr_assert(expert >= 0 && expert < 2);
    if (!strcmp(stage, "sample") && done > 0) {
        pl->sample_updates[expert]++;
        pl->sample_total = total;
    }
    if (!strcmp(stage, "load") && done == total) pl->loads++;
}

/* Gate init against SegMoE's gates, then a merge with those gates (the same
 * computed set, not a second run) and the reference runs from it. */
Test(moe_pipeline, own_merge_gates_and_reference_runs, .timeout = 900) {
    if (!tst_require_fixture("moe/segmoe-2x2.yaml") || !tst_require_fixture(GATES_REF)) return;
    sd_error err = {0};
    sd_segmoe_config cfg;
    char *yaml = tst_fixture_path("moe/segmoe-2x2.yaml");
    cr_assert_eq(sd_segmoe_config_load(&cfg, yaml, &err), 0, "%s", err.msg);

    progress_log pl = {0};
    sd_gate_init_options gopt = {.seed = MERGE_SEED, .on_progress = on_gate_progress, .progress_ctx = &pl};
    sd_gate_init gi;
    sd_gate_init_begin(&gi, &cfg, &gopt);
    cr_assert_eq(sd_gate_set_compute(&gi.set, &cfg, &gi.opt, &err), 0, "%s", err.msg);
    gi.computed = 1;
    cr_expect_eq(pl.loads, 2, "one pipeline load per expert");
    cr_expect_eq(pl.sample_total, SD_GATE_INIT_STEPS);
    cr_expect_eq(pl.sample_updates[0], SD_GATE_INIT_STEPS);
    cr_expect_eq(pl.sample_updates[1], SD_GATE_INIT_STEPS);
    check_gates(&gi.set);

    char *tmp = tst_tmpdir();
    char *out = sd_path_join(tmp, "merged");
    sd_merge_options mo = {.seed = MERGE_SEED, .dtype = SD_MERGE_DTYPE_AUTO, .gates = sd_gate_init_merge_fn,
                           .gates_ctx = &gi};
    sd_merge_summary sum;
    cr_assert_eq(sd_merge_write(&cfg, out, &mo, &sum, &err), 0, "%s", err.msg);
    cr_expect_eq(sum.n_modules, 105);
    cr_expect_eq(sum.n_params, 2993348);
    sd_gate_init_end(&gi);

    /* the written gates are the computed ones: within tolerance of SegMoE's file */
    char *unet_path = sd_path_join(out, "unet/diffusion_pytorch_model.safetensors");
    st_file ours, segmoe;
    cr_assert_eq(st_open(&ours, unet_path, &err), 0, "%s", err.msg);
    tst_open_ref(&segmoe, SEGMOE_DIR "/unet/diffusion_pytorch_model.safetensors");
    int n_gates = 0;
    for (int i = 0; i < segmoe.n_tensors; i++) {
        const char *name = segmoe.tensors[i].name;
        if (!strstr(name, ".gate.weight")) continue;
        size_t n1, n2;
        float *a = tst_ref_f32(&ours, name, &n1), *b = tst_ref_f32(&segmoe, name, &n2);
        cr_assert_eq(n1, n2);
        tst_check_close(name, a, b, n1, GATE_ABS, GATE_REL);
        free(a), free(b);
        n_gates++;
    }
    cr_expect_eq(n_gates, 105);
    st_close(&ours), st_close(&segmoe);
    free(unet_path);

    check_all_runs(out, "own merge");

    sd_segmoe_config_free(&cfg);
    free(yaml), free(out);
    rm_tree(tmp);
    free(tmp);
}
