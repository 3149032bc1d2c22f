/* sampler/pipeline on SDXL: the 3 text-to-image runs of sdxl/refs/pipeline
 * end to end — conditioning (prompt_embeds, add_text_embeds, add_time_ids),
 * timesteps, sigmas, initial noise, every step's scaled model input, guided
 * eps and latents, the final latents, the decoded image (float and 8-bit);
 * the negative prompt rules (absent -> zeros, "" -> encoded, and
 * force_zeros_for_empty_prompt false), defaults and errors.  Tolerances of
 * sdxl/README.md. */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/image.h"
#include "sampler/pipeline.h"
#include "sampler/scheduler.h"
#include "tests/support/test_support.h"

typedef struct run_case {
    const char *name;
    const char *sampler; /* sd_sampler_lookup name */
    uint64_t seed;
    int height, width, steps;
    double guidance;
    const char *prompt, *negative;
    int orig_h, orig_w, crop_top, crop_left; /* 0 = default */
} run_case;

static const run_case RUNS[] = {
    {"euler_seed42_64x64", "euler", 42, 64, 64, 6, 5.0, "a photo of an astronaut riding a horse on mars", NULL, 0, 0,
     0, 0},
    {"euler_a_seed1234_64x96", "euler_a", 1234, 64, 96, 5, 7.0, "an oil painting of a dog in a garden, impressionism",
     "blurry, low quality", 128, 192, 8, 16},
    {"dpmpp_2m_karras_seed7_96x64", "dpm++2m_karras", 7, 96, 64, 6, 5.0, "a lighthouse at dusk, dramatic sky", "", 0,
     0, 0, 0},
};

typedef struct trace {
    int64_t numel;
    int n_calls;
    float *noise, *init;
    float *timesteps;              /* [n_calls] */
    float *inputs, *eps, *latents; /* [n_calls, numel] */
    float *context, *text_embeds, *time_ids;
    int rows, text_dim, n_time_ids;
    int64_t n_ctx, hidden;
} trace;

static void on_step(void *ctx, int call, float t, const float *in, const float *eps, const float *lat,
                    int64_t numel) {
    trace *tr = ctx;
    size_t bytes = (size_t)numel * sizeof(float);
    if (call < 0) {
        if (in) memcpy(tr->noise, in, bytes);
        if (lat) memcpy(tr->init, lat, bytes);
        return;
    }
    cr_assert_lt(call, tr->n_calls, "more UNet calls than the reference");
    tr->timesteps[call] = t;
    memcpy(tr->inputs + call * numel, in, bytes);
    memcpy(tr->eps + call * numel, eps, bytes);
    memcpy(tr->latents + call * numel, lat, bytes);
}

static float *dup_floats(const float *x, size_t n) {
    if (!x) return NULL;
    float *y = malloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

static void on_conditioning(void *ctx, const float *context, int rows, int64_t n_ctx, int64_t hidden,
                            const float *text_embeds, int text_dim, const float *time_ids, int n_time_ids) {
    trace *tr = ctx;
    tr->rows = rows;
    tr->n_ctx = n_ctx;
    tr->hidden = hidden;
    tr->text_dim = text_dim;
    tr->n_time_ids = n_time_ids;
    free(tr->context);
    free(tr->text_embeds);
    free(tr->time_ids);
    tr->context = dup_floats(context, (size_t)rows * n_ctx * hidden);
    tr->text_embeds = dup_floats(text_embeds, (size_t)rows * text_dim);
    tr->time_ids = dup_floats(time_ids, (size_t)rows * n_time_ids);
}

static void trace_free(trace *tr) {
    free(tr->noise);
    free(tr->init);
    free(tr->timesteps);
    free(tr->inputs);
    free(tr->eps);
    free(tr->latents);
    free(tr->context);
    free(tr->text_embeds);
    free(tr->time_ids);
}

static sd_pipeline *load_model(const char *path) {
    sd_pipeline *p;
    sd_error err = {0};
    int rc = sd_pipeline_load(&p, path, NULL, &err);
    cr_assert_eq(rc, 0, "load %s: %s", path, err.msg);
    return p;
}

static sd_pipeline *load_tiny_sdxl(void) {
    tst_require_fixture("sdxl/tiny-sdxl/model_index.json");
    char *path = tst_fixture_path("sdxl/tiny-sdxl");
    sd_pipeline *p = load_model(path);
    free(path);
    return p;
}

static sd_txt2img_params run_params(const run_case *rc, sd_prompt_syntax syntax) {
    sd_txt2img_params q = {.prompt = rc->prompt, .negative_prompt = rc->negative, .width = rc->width,
                           .height = rc->height, .steps = rc->steps, .cfg_scale = rc->guidance, .syntax = syntax,
                           .n_images = 1, .seeds = &rc->seed, .original_height = rc->orig_h,
                           .original_width = rc->orig_w, .crop_top = rc->crop_top, .crop_left = rc->crop_left};
    sd_error err = {0};
    cr_assert_eq(sd_sampler_lookup(rc->sampler, &q.sampler, &q.karras, &err), 0, "%s", err.msg);
    return q;
}

static void check_run(sd_pipeline *p, const run_case *rc, sd_prompt_syntax syntax) {
    char rel[256];
    snprintf(rel, sizeof rel, "sdxl/refs/pipeline/%s.safetensors", rc->name);
    st_file ref;
    tst_open_ref(&ref, rel);
    const st_tensor *steps_t = tst_ref_tensor(&ref, "step_latents");
    trace tr = {.numel = 4 * (rc->height / 8) * (rc->width / 8), .n_calls = (int)steps_t->shape[0]};
    tr.noise = calloc(tr.numel, 4);
    tr.init = calloc(tr.numel, 4);
    tr.timesteps = calloc(tr.n_calls, 4);
    tr.inputs = calloc(tr.numel * tr.n_calls, 4);
    tr.eps = calloc(tr.numel * tr.n_calls, 4);
    tr.latents = calloc(tr.numel * tr.n_calls, 4);

    sd_error err = {0};
    sd_txt2img_params q = run_params(rc, syntax);
    sd_txt2img_hooks h = {.on_step = on_step, .on_conditioning = on_conditioning, .ctx = &tr};
    sd_txt2img_result res;
    cr_assert_eq(sd_pipeline_txt2img(p, &q, &h, &res, &err), 0, "%s: %s", rc->name, err.msg);

    char what[160];
    float *r;
    size_t n;
#define CMP_REF(tname, got, abs_tol, rel_tol)                                 \
    r = tst_ref_f32(&ref, tname, &n);                                        \
    snprintf(what, sizeof what, "%s %s", rc->name, tname);                   \
    tst_check_close(what, got, r, n, abs_tol, rel_tol);                     \
    free(r);
    /* conditioning: [uncond, cond] rows */
    cr_assert_eq(tr.rows, 2);
    cr_assert_eq(tr.n_ctx, 77);
    cr_assert_eq(tr.hidden, 40);
    cr_assert_eq(tr.text_dim, 20);
    cr_assert_eq(tr.n_time_ids, 6);
    CMP_REF("prompt_embeds", tr.context, 1e-4, 1e-5);
    CMP_REF("add_text_embeds", tr.text_embeds, 1e-4, 1e-5);
    r = tst_ref_f32(&ref, "add_time_ids", &n);
    cr_assert_eq(n, 12);
    for (size_t i = 0; i < n; i++) cr_expect_eq(tr.time_ids[i], r[i], "%s time id %zu: %g vs %g", rc->name, i,
                                                 tr.time_ids[i], r[i]);
    free(r);
    /* schedule: the UNet's timesteps and the scheduler's sigmas */
    CMP_REF("step_timesteps", tr.timesteps, 1e-3, 0);
    CMP_REF("timesteps", tr.timesteps, 1e-3, 0);
    {
        sd_scheduler *s;
        cr_assert_eq(sd_scheduler_create(&s, sd_pipeline_model(p)->scheduler_config, "scheduler_config.json",
                                         q.sampler, q.karras, q.steps, (size_t)tr.numel, &err), 0, "%s", err.msg);
        int ns;
        const float *sig = sd_scheduler_sigmas(s, &ns);
        cr_assert_not_null(sig);
        const st_tensor *st = tst_ref_tensor(&ref, "sigmas");
        cr_assert_eq((int64_t)ns, st->shape[0], "%s: %d sigmas, reference %lld", rc->name, ns, (long long)st->shape[0]);
        CMP_REF("sigmas", sig, 1e-5, 1e-6);
        sd_scheduler_free(s);
    }
    CMP_REF("noise", tr.noise, 1e-5, 0);
    CMP_REF("init_latents", tr.init, 1e-4, 0);
    CMP_REF("step_model_inputs", tr.inputs, 2e-3, 5e-4);
    CMP_REF("step_noise_pred", tr.eps, 2e-3, 5e-4);
    CMP_REF("step_latents", tr.latents, 2e-3, 5e-4);
    CMP_REF("final_latents", res.latents, 2e-3, 5e-4);
    CMP_REF("vae_out", res.vae_out, 2e-3, 0);
    size_t img_n = (size_t)3 * rc->width * rc->height;
    float *unit = malloc(img_n * 4);
    sd_image_denormalize(res.vae_out, unit, img_n);
    CMP_REF("image", unit, 2e-3, 0);
#undef CMP_REF
    /* 8-bit pixels: within one level on <= 1 % of values */
    sd_image img;
    cr_assert_eq(sd_image_from_vae(res.vae_out, rc->width, rc->height, &img, &err), 0, "%s", err.msg);
    int64_t *u8 = tst_ref_i64(&ref, "image_u8", &n);
    cr_assert_eq(n, img_n);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)img.rgb[i] - (int)u8[i]);
        cr_expect_leq(d, 1, "%s pixel value %zu differs by %d", rc->name, i, d);
        off += d != 0;
    }
    cr_expect_leq(off * 100, n, "%s: %zu of %zu pixel values differ", rc->name, off, n);
    free(u8);
    sd_image_free(&img);
    free(unit);
    sd_txt2img_result_free(&res);
    trace_free(&tr);
    st_close(&ref);
}

Test(sdxl_pipeline, all_reference_runs_plain_syntax, .timeout = 300) {
    sd_pipeline *p = load_tiny_sdxl();
    cr_expect_eq(sd_pipeline_is_sdxl(p), 1);
    cr_expect_eq(sd_pipeline_zero_negative(p), 1);
    for (size_t i = 0; i < sizeof RUNS / sizeof RUNS[0]; i++) check_run(p, &RUNS[i], SD_PROMPT_SYNTAX_PLAIN);
    sd_pipeline_free(p);
}

/* No weights, <= 75 tokens: the a1111 syntax gives the same runs. */
Test(sdxl_pipeline, reference_runs_a1111_syntax, .timeout = 300) {
    sd_pipeline *p = load_tiny_sdxl();
    for (size_t i = 0; i < sizeof RUNS / sizeof RUNS[0]; i++) check_run(p, &RUNS[i], SD_PROMPT_SYNTAX_A1111);
    sd_pipeline_free(p);
}

/* Default size = unet sample_size x VAE factor. */
Test(sdxl_pipeline, default_size) {
    sd_pipeline *p = load_tiny_sdxl();
    int w, h;
    sd_pipeline_default_size(p, &w, &h);
    cr_expect_eq(w, 64);
    cr_expect_eq(h, 64);
    sd_pipeline_free(p);
}

/* The uncond half of the conditioning for one negative prompt (NULL = absent). */
static void uncond_of(sd_pipeline *p, const char *negative, trace *tr) {
    uint64_t seed = 1;
    sd_txt2img_params q = {.prompt = "a cat", .negative_prompt = negative, .width = 64, .height = 64, .steps = 1,
                           .cfg_scale = 5.0, .sampler = SD_SAMPLER_EULER, .karras = SD_KARRAS_FROM_CONFIG,
                           .n_images = 1, .seeds = &seed};
    sd_txt2img_hooks h = {.on_conditioning = on_conditioning, .ctx = tr};
    sd_txt2img_result res;
    sd_error err = {0};
    cr_assert_eq(sd_pipeline_txt2img(p, &q, &h, &res, &err), 0, "%s", err.msg);
    sd_txt2img_result_free(&res);
}

static int all_zero(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

/* Absent -> zeros (context and pooled), "" -> the encoding of "", which the
 * encode_prompt reference has; in a batch, per image. */
Test(sdxl_pipeline, absent_and_empty_negative_differ) {
    sd_pipeline *p = load_tiny_sdxl();
    const size_t ctx = 77 * 40;
    trace a = {0}, e = {0};
    uncond_of(p, NULL, &a);
    uncond_of(p, "", &e);
    cr_expect(all_zero(a.context, ctx), "absent negative: context not zero");
    cr_expect(all_zero(a.text_embeds, 20), "absent negative: pooled not zero");
    st_file ref;
    tst_open_ref(&ref, "sdxl/refs/encode_prompt.safetensors");
    float *want = tst_ref_f32(&ref, "cat_neg_empty.negative_prompt_embeds", NULL);
    tst_check_close("\"\" negative = encoding of \"\"", e.context, want, ctx, 1e-4, 1e-5);
    free(want);
    want = tst_ref_f32(&ref, "cat_neg_empty.negative_pooled_prompt_embeds", NULL);
    tst_check_close("\"\" negative pooled", e.text_embeds, want, 20, 1e-4, 1e-5);
    free(want);
    st_close(&ref);

    /* a batch of two with NULL and "" negatives: rows [u0, u1, c0, c1] */
    trace b = {0};
    uint64_t seeds[2] = {3, 4};
    const char *prompts[2] = {"a cat", "a cat"}, *negs[2] = {NULL, ""};
    sd_txt2img_params q = {.prompt = "a cat", .width = 64, .height = 64, .steps = 1, .cfg_scale = 5.0,
                           .sampler = SD_SAMPLER_EULER, .karras = SD_KARRAS_FROM_CONFIG, .n_images = 2,
                           .seeds = seeds, .prompts = prompts, .negative_prompts = negs};
    sd_txt2img_hooks h = {.on_conditioning = on_conditioning, .ctx = &b};
    sd_txt2img_result res;
    sd_error err = {0};
    cr_assert_eq(sd_pipeline_txt2img(p, &q, &h, &res, &err), 0, "%s", err.msg);
    cr_assert_eq(b.rows, 4);
    cr_expect(all_zero(b.context, ctx) && all_zero(b.text_embeds, 20), "batch row 0 (absent) not zero");
    tst_check_close("batch row 1 (\"\")", b.context + ctx, e.context, ctx, 0, 0);
    tst_check_close("batch pooled row 1 (\"\")", b.text_embeds + 20, e.text_embeds, 20, 0, 0);
    sd_txt2img_result_free(&res);
    trace_free(&a);
    trace_free(&e);
    trace_free(&b);
    sd_pipeline_free(p);
}

/* A1111 syntax: an absent negative with a 2-chunk prompt is zeros of the
 * prompt's shape; a "" negative is padded with the empty chunk. */
Test(sdxl_pipeline, zero_negative_takes_the_prompt_shape) {
    sd_pipeline *p = load_tiny_sdxl();
    trace a = {0};
    uint64_t seed = 1;
    sd_txt2img_params q = {.prompt = "a cat BREAK a dog", .width = 64, .height = 64, .steps = 1, .cfg_scale = 5.0,
                           .sampler = SD_SAMPLER_EULER, .karras = SD_KARRAS_FROM_CONFIG, .syntax = SD_PROMPT_SYNTAX_A1111,
                           .n_images = 1, .seeds = &seed};
    sd_txt2img_hooks h = {.on_conditioning = on_conditioning, .ctx = &a};
    sd_txt2img_result res;
    sd_error err = {0};
    cr_assert_eq(sd_pipeline_txt2img(p, &q, &h, &res, &err), 0, "%s", err.msg);
    sd_txt2img_result_free(&res);
    cr_assert_eq(a.n_ctx, 154);
    cr_expect(all_zero(a.context, 154 * 40));
    cr_expect(!all_zero(a.context + 154 * 40, 154 * 40));
    trace_free(&a);
    sd_pipeline_free(p);
}

/* model_index.json force_zeros_for_empty_prompt false: absent = "" encoded. */
Test(sdxl_pipeline, force_zeros_false) {
    tst_require_fixture("sdxl/tiny-sdxl/model_index.json");
    char *dir = tst_tmpdir(), *src = tst_fixture_path("sdxl/tiny-sdxl");
    const char *parts[] = {"scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"};
    char a[4096], b[4096];
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        snprintf(a, sizeof a, "%s/%s", src, parts[i]);
        snprintf(b, sizeof b, "%s/%s", dir, parts[i]);
        cr_assert_eq(symlink(a, b), 0, "symlink %s", b);
    }
    snprintf(a, sizeof a, "%s/model_index.json", src);
    FILE *in = fopen(a, "r");
    cr_assert_not_null(in);
    char text[8192];
    size_t len = fread(text, 1, sizeof text - 1, in);
    fclose(in);
    text[len] = 0;
    char *at = strstr(text, "\"force_zeros_for_empty_prompt\": true");
    cr_assert_not_null(at, "model_index.json layout");
    snprintf(b, sizeof b, "%s/model_index.json", dir);
    FILE *out = fopen(b, "w");
    fwrite(text, 1, (size_t)(at - text), out);
    fprintf(out, "\"force_zeros_for_empty_prompt\": false%s", at + strlen("\"force_zeros_for_empty_prompt\": true"));
    fclose(out);

    sd_pipeline *p = load_model(dir);
    cr_expect_eq(sd_pipeline_zero_negative(p), 0);
    trace t = {0};
    uncond_of(p, NULL, &t);
    st_file ref;
    tst_open_ref(&ref, "sdxl/refs/encode_prompt.safetensors");
    float *want = tst_ref_f32(&ref, "cat_neg_empty.negative_prompt_embeds", NULL);
    tst_check_close("absent negative without force_zeros = \"\"", t.context, want, 77 * 40, 1e-4, 1e-5);
    free(want);
    st_close(&ref);
    trace_free(&t);
    sd_pipeline_free(p);
    free(src);
    free(dir);
}

Test(sdxl_pipeline, rejects_bad_micro_conditioning) {
    sd_pipeline *p = load_tiny_sdxl();
    sd_error err = {0};
    uint64_t seed = 1;
    sd_txt2img_result res;
    sd_txt2img_params q = {.prompt = "x", .width = 64, .height = 64, .steps = 1, .cfg_scale = 5.0,
                           .sampler = SD_SAMPLER_EULER, .n_images = 1, .seeds = &seed, .crop_top = -8};
    cr_expect_neq(sd_pipeline_txt2img(p, &q, NULL, &res, &err), 0);
    cr_expect(strstr(err.msg, "crop top") != NULL, "%s", err.msg);
    sd_pipeline_free(p);

    tst_require_fixture("tiny-sd15/model_index.json");
    char *path = tst_fixture_path("tiny-sd15");
    p = load_model(path);
    free(path);
    cr_expect_eq(sd_pipeline_is_sdxl(p), 0);
    q.crop_top = 0;
    q.original_width = 128;
    cr_expect_neq(sd_pipeline_txt2img(p, &q, NULL, &res, &err), 0);
    cr_expect(strstr(err.msg, "SDXL") != NULL, "%s", err.msg);
    sd_pipeline_free(p);
}
