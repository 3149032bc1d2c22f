/* sampler/pipeline: the 7 public text-to-image runs of refs/pipeline, end to
 * end through the library: initial noise, every step's scaled model input,
 * guided eps and latents, the decoded image (float and 8-bit). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/image.h"
#include "sampler/pipeline.h"
#include "tests/support/test_support.h"
#include "unet/unet.h"
#include "vae/vae.h"

typedef struct run_case {
    const char *name;
    const char *sampler; /* sd_sampler_lookup name */
    uint64_t seed;
    int height, width, steps;
    const char *prompt, *negative;
} run_case;

static const run_case RUNS[] = {
    {"pndm_seed42_64x64", "pndm", 42, 64, 64, 8, "a photo of an astronaut riding a horse on mars", NULL},
    {"ddim_seed1234_64x96", "ddim", 1234, 64, 96, 6, "a cozy cabin in a snowy forest, warm light",
     "blurry, low quality"},
    {"euler_a_seed7_64x64", "euler_a", 7, 64, 64, 10, "portrait of a cat wearing a wizard hat", ""},
    {"dpmpp_2m_karras_seed2024_128x128", "dpm++2m_karras", 2024, 128, 128, 8, "a red sports car on a coastal road",
     "ugly, deformed"},
    {"euler_seed31337_96x64", "euler", 31337, 96, 64, 5, "isometric pixel art of a tiny island", NULL},
    {"dpmpp_2m_seed0_64x64", "dpm++2m", 0, 64, 64, 4, "", NULL},
    {"heun_seed99_64x64", "heun", 99, 64, 64, 4, "watercolor painting of a lighthouse", "text, watermark"},
};

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

static sd_pipeline *load_tiny(void) {
    tst_require_fixture("tiny-sd15/model_index.json");
    char *path = tst_fixture_path("tiny-sd15");
    sd_pipeline *p;
    sd_error err = {0};
    int rc = sd_pipeline_load(&p, path, NULL, &err);
    free(path);
    cr_assert_eq(rc, 0, "load: %s", err.msg);
    return p;
}

static void check_run(sd_pipeline *p, const run_case *rc, sd_prompt_syntax syntax) {
    char rel[256];
    snprintf(rel, sizeof rel, "refs/pipeline/%s.safetensors", rc->name);
    st_file ref;
    tst_open_ref(&ref, rel);
    const st_tensor *steps_t = tst_ref_tensor(&ref, "step_latents");
    trace tr = {.numel = 4 * (rc->height / 8) * (rc->width / 8), .n_calls = (int)steps_t->shape[0]};
    tr.noise = calloc(tr.numel, 4);
    tr.init = calloc(tr.numel, 4);
    tr.inputs = calloc(tr.numel * tr.n_calls, 4);
    tr.eps = calloc(tr.numel * tr.n_calls, 4);
    tr.latents = calloc(tr.numel * tr.n_calls, 4);

    sd_error err = {0};
    sd_txt2img_params q = {.prompt = rc->prompt, .negative_prompt = rc->negative, .width = rc->width,
                           .height = rc->height, .steps = rc->steps, .cfg_scale = 7.5, .syntax = syntax,
                           .n_images = 1, .seeds = &rc->seed};
    cr_assert_eq(sd_sampler_lookup(rc->sampler, &q.sampler, &q.karras, &err), 0, "%s", err.msg);
    sd_txt2img_hooks h = {.on_step = on_step, .ctx = &tr};
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
    free(tr.noise);
    free(tr.init);
    free(tr.inputs);
    free(tr.eps);
    free(tr.latents);
    st_close(&ref);
}

Test(pipeline, all_reference_runs_plain_syntax, .timeout = 300) {
    sd_pipeline *p = load_tiny();
    for (size_t i = 0; i < sizeof RUNS / sizeof RUNS[0]; i++) check_run(p, &RUNS[i], SD_PROMPT_SYNTAX_PLAIN);
    sd_pipeline_free(p);
}

/* Prompts without A1111 syntax and <= 75 tokens: a1111 mode must agree. */
Test(pipeline, reference_runs_a1111_syntax, .timeout = 300) {
    sd_pipeline *p = load_tiny();
    check_run(p, &RUNS[1], SD_PROMPT_SYNTAX_A1111);
    check_run(p, &RUNS[3], SD_PROMPT_SYNTAX_A1111);
    sd_pipeline_free(p);
}

/* Two images in one batched call equal two single-image runs. */
Test(pipeline, batched_images_equal_single_runs, .timeout = 300) {
    sd_pipeline *p = load_tiny();
    sd_error err = {0};
    uint64_t seeds[2] = {11, 12};
    sd_txt2img_params q = {.prompt = "a lighthouse", .negative_prompt = "fog", .width = 64, .height = 64,
                           .steps = 4, .cfg_scale = 7.5, .sampler = SD_SAMPLER_EULER_A,
                           .karras = SD_KARRAS_FROM_CONFIG, .n_images = 2, .seeds = seeds};
    sd_txt2img_result both, one;
    cr_assert_eq(sd_pipeline_txt2img(p, &q, NULL, &both, &err), 0, "%s", err.msg);
    size_t img = (size_t)3 * 64 * 64;
    for (int i = 0; i < 2; i++) {
        q.n_images = 1;
        q.seeds = &seeds[i];
        cr_assert_eq(sd_pipeline_txt2img(p, &q, NULL, &one, &err), 0, "%s", err.msg);
        tst_check_close("batched vs single image", both.vae_out + i * img, one.vae_out, img, 1e-4, 0);
        sd_txt2img_result_free(&one);
    }
    sd_txt2img_result_free(&both);
    sd_pipeline_free(p);
}

/* The UNet and the VAE run in one shared scratch (peak RSS = weights + the
 * larger workspace, issue 9); the VAE's decode scribbling over it must not
 * change the next request. */
Test(pipeline, unet_and_vae_share_one_scratch, .timeout = 300) {
    sd_pipeline *p = load_tiny();
    sd_error err = {0};
    uint64_t seed = 5;
    sd_txt2img_params q = {.prompt = "a lighthouse", .negative_prompt = "fog", .width = 64, .height = 96,
                           .steps = 2, .cfg_scale = 7.5, .sampler = SD_SAMPLER_EULER,
                           .karras = SD_KARRAS_FROM_CONFIG, .n_images = 1, .seeds = &seed};
    sd_txt2img_result a, b;
    cr_assert_eq(sd_pipeline_txt2img(p, &q, NULL, &a, &err), 0, "%s", err.msg);
    size_t ub = sd_unet_workspace_bytes(sd_pipeline_unet(p));
    size_t vb = vae_workspace_bytes(sd_pipeline_vae(p));
    size_t sb = sd_pipeline_scratch_bytes(p), larger = ub > vb ? ub : vb;
    cr_assert(ub > 0 && vb > 0, "unet %zu, vae %zu bytes", ub, vb);
    /* the VAE pads each of its 6 buffers to 64 bytes inside the scratch */
    cr_expect(sb >= larger && sb <= larger + 6 * 64, "scratch %zu bytes, unet %zu, vae %zu", sb, ub, vb);
    cr_assert_eq(sd_pipeline_txt2img(p, &q, NULL, &b, &err), 0, "%s", err.msg);
    cr_expect_eq(memcmp(a.vae_out, b.vae_out, (size_t)3 * 64 * 96 * sizeof(float)), 0,
                 "second run after the VAE used the scratch differs");
    sd_txt2img_result_free(&a);
    sd_txt2img_result_free(&b);
    sd_pipeline_free(p);
}

Test(pipeline, rejects_bad_sizes_and_steps) {
    sd_pipeline *p = load_tiny();
    sd_error err = {0};
    uint64_t seed = 1;
    sd_txt2img_result res;
    sd_txt2img_params q = {.prompt = "x", .width = 60, .height = 64, .steps = 4, .cfg_scale = 7.5,
                           .sampler = SD_SAMPLER_DDIM, .n_images = 1, .seeds = &seed};
    cr_expect_neq(sd_pipeline_txt2img(p, &q, NULL, &res, &err), 0);
    cr_expect(strstr(err.msg, "multiples of 8") != NULL, "%s", err.msg);
    q.width = 64;
    q.steps = 0;
    cr_expect_neq(sd_pipeline_txt2img(p, &q, NULL, &res, &err), 0);
    cr_expect(strstr(err.msg, "steps") != NULL, "%s", err.msg);
    sd_pipeline_free(p);
}
