/* `sdmoe generate` / `sdmoe batch` on the tiny SDXL fixture: the PNGs equal
 * the sdxl/refs/pipeline runs (defaults, --original-size + --crop-top-left,
 * an explicit -n ""), the infotext carries the SDXL size keys, an absent
 * negative prompt and -n "" give different images, and the flag errors. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/image.h"
#include "tests/support/test_support.h"

static char *tmp_file(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int run_cmd(const char *cmd, const char *args, const char *err_path) {
    char line[8192];
    snprintf(line, sizeof line, "%s %s -q -t 2 %s", tst_sdmoe_bin(), cmd, args);
    return tst_run(line, NULL, err_path);
}

static char *read_text(const char *path) {
    char *text = NULL;
    sd_error err = {0};
    if (sd_read_file(path, 1 << 20, &text, NULL, &err)) return strdup("");
    return text;
}

/* The PNG's pixels against a reference run's image_u8 (<= 1 level on <= 1 %). */
static void compare_png_to_ref(const char *png, const char *run) {
    char rel[256];
    if (strchr(run, '/')) snprintf(rel, sizeof rel, "%s", run);
    else snprintf(rel, sizeof rel, "sdxl/refs/pipeline/%s.safetensors", run);
    st_file ref;
    tst_open_ref(&ref, rel);
    size_t n;
    int64_t *u8 = tst_ref_i64(&ref, "image_u8", &n);
    sd_image img;
    sd_png_info info;
    sd_error err = {0};
    cr_assert_eq(sd_png_read(png, &img, &info, &err), 0, "%s", err.msg);
    sd_png_info_free(&info);
    cr_assert_eq((size_t)img.width * img.height * 3, n, "%s: image size", run);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)img.rgb[i] - (int)u8[i]);
        cr_expect_leq(d, 1, "%s: pixel value %zu differs by %d", run, i, d);
        off += d != 0;
    }
    cr_expect_leq(off * 100, n, "%s: %zu of %zu values differ", run, off, n);
    sd_image_free(&img);
    free(u8);
    st_close(&ref);
}

/* The "parameters" text of a PNG (malloc'd). */
static char *png_parameters(const char *png) {
    sd_png_info info;
    sd_error err = {0};
    cr_assert_eq(sd_png_read(png, NULL, &info, &err), 0, "%s", err.msg);
    const sd_png_text_chunk *t = sd_png_info_find(&info, "parameters");
    cr_assert_not_null(t, "%s: no parameters chunk", png);
    char *s = strdup(t->text);
    sd_png_info_free(&info);
    return s;
}

static int same_file(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(a, 1 << 24, &x, &nx, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_read_file(b, 1 << 24, &y, &ny, &err), 0, "%s", err.msg);
    int same = nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

/* euler_seed42_64x64 with every default: size (sample_size x 8 = 64), the
 * model's own scheduler (Euler), no negative prompt (zeros), time ids. */
Test(sdxl_cli, euler_run_defaults_match_reference, .timeout = 300) {
    tst_require_fixture("sdxl/tiny-sdxl/model_index.json");
    char *dir = tst_tmpdir(), *out = tmp_file(dir, "euler.png"), *empty = tmp_file(dir, "euler-empty-neg.png");
    char *model = tst_fixture_path("sdxl/tiny-sdxl"), *errp = tmp_file(dir, "stderr.txt");
    char args[4096];
    snprintf(args, sizeof args,
             "-m %s -p 'a photo of an astronaut riding a horse on mars' --steps 6 --cfg-scale 5 -s 42 -o %s", model,
             out);
    cr_assert_eq(run_cmd("generate", args, errp), 0, "%s", read_text(errp));
    compare_png_to_ref(out, "euler_seed42_64x64");
    char *text = png_parameters(out);
    cr_expect(strstr(text, "Size: 64x64, ") != NULL, "%s", text);
    cr_expect(strstr(text, "Original size: 64x64, Target size: 64x64, Crop top: 0, Crop left: 0") != NULL, "%s", text);
    cr_expect(strstr(text, "Negative prompt") == NULL && strstr(text, "Empty negative") == NULL, "%s", text);
    free(text);

    /* the same with -n "": the encoding of "" instead of zeros */
    snprintf(args, sizeof args,
             "-m %s -p 'a photo of an astronaut riding a horse on mars' -n '' --steps 6 --cfg-scale 5 -s 42 -o %s",
             model, empty);
    cr_assert_eq(run_cmd("generate", args, errp), 0, "%s", read_text(errp));
    cr_expect(!same_file(out, empty), "absent and -n \"\" gave the same PNG");
    text = png_parameters(empty);
    cr_expect(strstr(text, "Empty negative: encoded") != NULL, "%s", text);
    free(text);
    free(errp);
    free(model);
    free(empty);
    free(out);
    free(dir);
}

/* euler_a_seed1234_64x96: --original-size 192x128 (W x H) and
 * --crop-top-left 8,16; target defaults to the image size. */
Test(sdxl_cli, euler_a_original_size_and_crop, .timeout = 300) {
    tst_require_fixture("sdxl/tiny-sdxl/model_index.json");
    char *dir = tst_tmpdir(), *out = tmp_file(dir, "ea.png"), *errp = tmp_file(dir, "stderr.txt");
    char *model = tst_fixture_path("sdxl/tiny-sdxl");
    char args[4096];
    snprintf(args, sizeof args,
             "-m %s -p 'an oil painting of a dog in a garden, impressionism' -n 'blurry, low quality' -W 96 -H 64 "
             "--steps 5 --sampler euler_a --cfg-scale 7 -s 1234 --original-size 192x128 --crop-top-left 8,16 -o %s",
             model, out);
    cr_assert_eq(run_cmd("generate", args, errp), 0, "%s", read_text(errp));
    compare_png_to_ref(out, "euler_a_seed1234_64x96");
    char *text = png_parameters(out);
    cr_expect(strstr(text, "Original size: 192x128, Target size: 96x64, Crop top: 8, Crop left: 16") != NULL, "%s",
              text);
    free(text);
    /* --target-size equal to the image size changes nothing */
    char *again = tmp_file(dir, "ea2.png");
    snprintf(args, sizeof args,
             "-m %s -p 'an oil painting of a dog in a garden, impressionism' -n 'blurry, low quality' -W 96 -H 64 "
             "--steps 5 --sampler euler_a --cfg-scale 7 -s 1234 --original-size 192x128 --crop-top-left 8,16 "
             "--target-size 96x64 -o %s", model, again);
    cr_assert_eq(run_cmd("generate", args, errp), 0, "%s", read_text(errp));
    cr_expect(same_file(out, again), "--target-size = the image size changed the PNG");
    free(again);
    free(errp);
    free(model);
    free(out);
    free(dir);
}

/* dpmpp_2m_karras_seed7_96x64: an explicit "" negative is encoded. */
Test(sdxl_cli, dpmpp_explicit_empty_negative, .timeout = 300) {
    tst_require_fixture("sdxl/tiny-sdxl/model_index.json");
    char *dir = tst_tmpdir(), *out = tmp_file(dir, "dpm.png"), *errp = tmp_file(dir, "stderr.txt");
    char *model = tst_fixture_path("sdxl/tiny-sdxl");
    char args[4096];
    snprintf(args, sizeof args,
             "-m %s -p 'a lighthouse at dusk, dramatic sky' -n '' -W 64 -H 96 --steps 6 --sampler dpm++2m "
             "--scheduler karras --cfg-scale 5 -s 7 -o %s", model, out);
    cr_assert_eq(run_cmd("generate", args, errp), 0, "%s", read_text(errp));
    compare_png_to_ref(out, "dpmpp_2m_karras_seed7_96x64");
    free(errp);
    free(model);
    free(out);
    free(dir);
}

/* batch: a JSON Lines job with negative null (zeros) and one with ""
 * (encoded); the first equals the euler reference, the two differ, and the
 * infotext has the size keys. */
Test(sdxl_cli, batch_null_and_empty_negatives, .timeout = 300) {
    tst_require_fixture("sdxl/tiny-sdxl/model_index.json");
    char *dir = tst_tmpdir(), *jobs = tmp_file(dir, "jobs.jsonl"), *outdir = tmp_file(dir, "out");
    char *errp = tmp_file(dir, "stderr.txt"), *model = tst_fixture_path("sdxl/tiny-sdxl");
    FILE *f = fopen(jobs, "w");
    cr_assert_not_null(f);
    fprintf(f, "{\"prompt\": \"a photo of an astronaut riding a horse on mars\", \"negative_prompt\": null, "
               "\"seed\": 42, \"name\": \"none\"}\n"
               "{\"prompt\": \"a photo of an astronaut riding a horse on mars\", \"negative_prompt\": \"\", "
               "\"seed\": 42, \"name\": \"empty\"}\n");
    fclose(f);
    char args[4096];
    snprintf(args, sizeof args, "-m %s --jobs %s -o %s --steps 6 --cfg-scale 5 --batch-size 2", model, jobs, outdir);
    cr_assert_eq(run_cmd("batch", args, errp), 0, "%s", read_text(errp));
    char *a = tmp_file(outdir, "none-00.png"), *b = tmp_file(outdir, "empty-00.png");
    compare_png_to_ref(a, "euler_seed42_64x64");
    cr_expect(!same_file(a, b), "negative null and \"\" gave the same PNG");
    char *text = png_parameters(a);
    cr_expect(strstr(text, "Original size: 64x64, Target size: 64x64, Crop top: 0, Crop left: 0") != NULL, "%s", text);
    free(text);
    text = png_parameters(b);
    cr_expect(strstr(text, "Empty negative: encoded") != NULL, "%s", text);
    free(text);
    free(a);
    free(b);
    free(errp);
    free(model);
    free(outdir);
    free(jobs);
    free(dir);
}

/* The SegMoE SDXL folder (sdxl/moe) through the same path: its DDPM run,
 * negative None (zeros), original size (128, 192). */
Test(sdxl_cli, segmoe_sdxl_folder_matches_reference, .timeout = 300) {
    tst_require_fixture("sdxl/moe/tiny-segmoe-sdxl-2x1/model_index.json");
    char *dir = tst_tmpdir(), *out = tmp_file(dir, "moe.png"), *errp = tmp_file(dir, "stderr.txt");
    char *model = tst_fixture_path("sdxl/moe/tiny-segmoe-sdxl-2x1");
    char args[4096];
    snprintf(args, sizeof args,
             "-m %s -p 'a cat sitting in a garden, oil painting' -W 96 -H 64 --steps 8 --cfg-scale 5 -s 5 "
             "--original-size 192x128 -o %s", model, out);
    cr_assert_eq(run_cmd("generate", args, errp), 0, "%s", read_text(errp));
    compare_png_to_ref(out, "sdxl/moe/refs/pipeline/ddpm_seed5_64x96.safetensors");
    char *text = png_parameters(out);
    cr_expect(strstr(text, "MoE: 2 experts top-1") != NULL, "%s", text);
    free(text);
    free(errp);
    free(model);
    free(out);
    free(dir);
}

/* Each bad input: non-zero exit, one "sdmoe:" line naming the problem. */
static void expect_error(const char *model_rel, const char *extra, const char *needle) {
    char *dir = tst_tmpdir(), *out = tmp_file(dir, "never.png"), *errp = tmp_file(dir, "stderr.txt");
    char *model = tst_fixture_path(model_rel);
    char args[4096];
    snprintf(args, sizeof args, "-m %s -p x --steps 1 %s -o %s", model, extra, out);
    int st = run_cmd("generate", args, errp);
    cr_expect(st != 0 && st < 128, "status %d for: %s", st, args);
    char *text = read_text(errp);
    cr_expect(strncmp(text, "sdmoe: ", 7) == 0, "stderr: %s", text);
    cr_expect(strstr(text, needle) != NULL, "expected '%s' in: %s", needle, text);
    char *nl = strchr(text, '\n');
    cr_expect(nl && nl[1] == 0, "expected exactly one line: %s", text);
    cr_expect(access(out, F_OK) != 0, "an output file was left behind");
    free(text);
    free(model);
    free(out);
    free(errp);
    free(dir);
}

Test(sdxl_cli, flag_errors) {
    tst_require_fixture("sdxl/tiny-sdxl/model_index.json");
    expect_error("sdxl/tiny-sdxl", "--original-size 1024", "--original-size: '1024' is not WIDTHxHEIGHT");
    expect_error("sdxl/tiny-sdxl", "--target-size 0x64", "--target-size");
    expect_error("sdxl/tiny-sdxl", "--target-size 64x64x2", "--target-size");
    expect_error("sdxl/tiny-sdxl", "--crop-top-left -8,0", "--crop-top-left: '-8,0' is not TOP,LEFT");
    expect_error("sdxl/tiny-sdxl", "--crop-top-left 8", "--crop-top-left");
}

Test(sdxl_cli, micro_flags_refused_for_sd15) {
    tst_require_fixture("tiny-sd15/model_index.json");
    expect_error("tiny-sd15", "--original-size 1024x1024", "SDXL models only");
    expect_error("tiny-sd15", "--crop-top-left 0,0", "SDXL models only");
}
