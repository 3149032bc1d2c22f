/* `sdmoe generate` through the real executable: reference runs read back
 * from the PNG, the parameters chunk, determinism, and the error cases. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/image.h"
#include "core/json.h"
#include "core/sha256.h"
#include "tests/support/test_support.h"

static char *tmp_file(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Runs `sdmoe generate <args>`; returns the exit status. */
static int run_generate(const char *args, const char *err_path) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s generate -q -t 2 %s", tst_sdmoe_bin(), args);
    return tst_run(cmd, NULL, err_path);
}

static void compare_png_to_ref(const char *png, const char *ref_rel) {
    st_file ref;
    tst_open_ref(&ref, ref_rel);
    size_t n;
    int64_t *u8 = tst_ref_i64(&ref, "image_u8", &n);
    sd_image img;
    sd_png_info info;
    sd_error err = {0};
    cr_assert_eq(sd_png_read(png, &img, &info, &err), 0, "%s", err.msg);
    sd_png_info_free(&info);
    cr_assert_eq((size_t)img.width * img.height * 3, n, "image size");
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)img.rgb[i] - (int)u8[i]);
        cr_expect_leq(d, 1, "pixel value %zu differs by %d", i, d);
        off += d != 0;
    }
    cr_expect_leq(off * 100, n, "%zu of %zu values differ", off, n);
    sd_image_free(&img);
    free(u8);
    st_close(&ref);
}

Test(cli_generate, ddim_run_matches_reference_png, .timeout = 300) {
    tst_require_fixture("tiny-sd15/model_index.json");
    char *dir = tst_tmpdir(), *out = tmp_file(dir, "ddim.png"), *model = tst_fixture_path("tiny-sd15");
    char args[4096];
    snprintf(args, sizeof args,
             "-m %s -p 'a cozy cabin in a snowy forest, warm light' -n 'blurry, low quality' "
             "-W 96 -H 64 --steps 6 --sampler ddim -s 1234 -o %s", model, out);
    cr_assert_eq(run_generate(args, NULL), 0);
    compare_png_to_ref(out, "refs/pipeline/ddim_seed1234_64x96.safetensors");

    /* the A1111 parameters chunk, exactly */
    sd_png_info info;
    sd_error err = {0};
    cr_assert_eq(sd_png_read(out, NULL, &info, &err), 0, "%s", err.msg);
    const sd_png_text_chunk *t = sd_png_info_find(&info, "parameters");
    cr_assert_not_null(t);
    char *unet = tst_fixture_path("tiny-sd15/unet/diffusion_pytorch_model.safetensors");
    char hex[65];
    cr_assert_eq(sd_sha256_file(unet, hex, &err), 0);
    hex[10] = 0;
    char want[1024];
    snprintf(want, sizeof want,
             "a cozy cabin in a snowy forest, warm light\n"
             "Negative prompt: blurry, low quality\n"
             "Steps: 6, Sampler: DDIM, CFG scale: 7.5, Seed: 1234, Size: 96x64, Model hash: %s, "
             "Model: tiny-sd15, RNG: CPU, Version: sdmoe %s", hex, SDMOE_VERSION);
    cr_expect_str_eq(t->text, want);
    sd_png_info_free(&info);
    free(unet);
    free(out);
    free(model);
    free(dir);
}

Test(cli_generate, euler_a_single_file_matches_reference, .timeout = 300) {
    tst_require_fixture("tiny-sd15.safetensors");
    char *dir = tst_tmpdir(), *out = tmp_file(dir, "ea.png");
    char *ckpt = tst_fixture_path("tiny-sd15.safetensors"), *cfg = tst_fixture_path("tiny-sd15");
    char args[4096];
    snprintf(args, sizeof args,
             "-m %s --model-config %s -p 'portrait of a cat wearing a wizard hat' -n '' "
             "-W 64 -H 64 --steps 10 --sampler euler_a -s 7 -o %s", ckpt, cfg, out);
    cr_assert_eq(run_generate(args, NULL), 0);
    compare_png_to_ref(out, "refs/pipeline/euler_a_seed7_64x64.safetensors");
    free(out);
    free(ckpt);
    free(cfg);
    free(dir);
}

Test(cli_generate, same_settings_same_bytes, .timeout = 300) {
    tst_require_fixture("tiny-sd15/model_index.json");
    char *dir = tst_tmpdir(), *model = tst_fixture_path("tiny-sd15");
    char args[4096];
    snprintf(args, sizeof args, "-m %s -p 'a red fox' -W 64 -H 64 --steps 3 --sampler euler_a -s 5 -b 2 -o %s/img-%%d.png",
             model, dir);
    cr_assert_eq(run_generate(args, NULL), 0);
    char *a0 = tmp_file(dir, "img-0.png"), *a1 = tmp_file(dir, "img-1.png");
    char *b0 = tmp_file(dir, "b0.png");
    snprintf(args, sizeof args, "-m %s -p 'a red fox' -W 64 -H 64 --steps 3 --sampler euler_a -s 5 -o %s", model, b0);
    cr_assert_eq(run_generate(args, NULL), 0);
    char *x, *y, *z;
    size_t nx, ny, nz;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(a0, 1 << 24, &x, &nx, &err), 0);
    cr_assert_eq(sd_read_file(b0, 1 << 24, &y, &ny, &err), 0);
    cr_assert_eq(sd_read_file(a1, 1 << 24, &z, &nz, &err), 0);
    cr_expect(nx == ny && memcmp(x, y, nx) == 0, "two runs with the same settings differ");
    cr_expect(!(nx == nz && memcmp(x, z, nx) == 0), "batch image 1 (seed+1) equals image 0");
    free(x);
    free(y);
    free(z);
    free(a0);
    free(a1);
    free(b0);
    free(model);
    free(dir);
}

/* --vae-tiling at a size larger than one tile (40x36 latents, tiles of
 * VAE_DEFAULT_TILE = 32): another image (the tiles are blended), the same
 * parameters chunk (A1111 does not record VAE tiling; its "Tiling" key is the
 * seamless-texture option, not this). */
Test(cli_generate, vae_tiling_flag, .timeout = 300) {
    tst_require_fixture("tiny-sd15/model_index.json");
    char *dir = tst_tmpdir(), *model = tst_fixture_path("tiny-sd15");
    char *a = tmp_file(dir, "whole.png"), *b = tmp_file(dir, "tiled.png");
    char args[4096];
    const char *common = "-p 'a lighthouse' -W 320 -H 288 --steps 2 --sampler euler -s 3";
    snprintf(args, sizeof args, "-m %s %s -o %s", model, common, a);
    cr_assert_eq(run_generate(args, NULL), 0);
    snprintf(args, sizeof args, "-m %s %s --vae-tiling -o %s", model, common, b);
    cr_assert_eq(run_generate(args, NULL), 0);
    sd_image ia, ib;
    sd_png_info pa, pb;
    sd_error err = {0};
    cr_assert_eq(sd_png_read(a, &ia, &pa, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_png_read(b, &ib, &pb, &err), 0, "%s", err.msg);
    cr_assert(ia.width == 320 && ia.height == 288 && ib.width == 320 && ib.height == 288);
    cr_expect_neq(memcmp(ia.rgb, ib.rgb, (size_t)320 * 288 * 3), 0, "--vae-tiling gave the untiled image");
    const sd_png_text_chunk *ta = sd_png_info_find(&pa, "parameters"), *tb = sd_png_info_find(&pb, "parameters");
    cr_assert(ta && tb);
    cr_expect_str_eq(tb->text, ta->text);
    sd_image_free(&ia), sd_image_free(&ib);
    sd_png_info_free(&pa), sd_png_info_free(&pb);
    free(a), free(b), free(model), free(dir);
}

/* Each bad input: exit non-zero, one "sdmoe:" line naming the problem, no file. */
static void expect_error(const char *args_fmt, const char *needle) {
    char *dir = tst_tmpdir(), *out = tmp_file(dir, "never.png"), *errp = tmp_file(dir, "stderr.txt");
    char *model = tst_fixture_path("tiny-sd15");
    char args[4096];
    snprintf(args, sizeof args, args_fmt, model, out);
    int st = run_generate(args, errp);
    cr_expect(st != 0 && st < 128, "status %d for: %s", st, args);
    char *text;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(errp, 1 << 20, &text, NULL, &err), 0);
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

Test(cli_generate, error_unknown_sampler) {
    tst_require_fixture("tiny-sd15/model_index.json");
    expect_error("-m %s -p x --sampler foo -o %s", "euler_a");
}
Test(cli_generate, error_size_not_multiple_of_8) {
    tst_require_fixture("tiny-sd15/model_index.json");
    expect_error("-m %s -p x -W 100 -o %s", "multiple of 8");
}
Test(cli_generate, error_steps_zero) {
    tst_require_fixture("tiny-sd15/model_index.json");
    expect_error("-m %s -p x --steps 0 -o %s", "--steps");
}
Test(cli_generate, error_missing_model) {
    expect_error("-m %s/does-not-exist -p x -o %s", "does-not-exist");
}
Test(cli_generate, error_unwritable_output) {
    tst_require_fixture("tiny-sd15/model_index.json");
    expect_error("-m %s -p x --steps 1 -o /nonexistent-dir/%s", "cannot write");
}
Test(cli_generate, error_unknown_flag) {
    expect_error("-m %s --frobnicate -o %s", "unknown option");
}

/* --moe-stats on the SegMoE fixture folder: one entry per MoE layer (105 =
 * 15 transformer blocks x 7 modules) with one choice per UNet call. */
Test(cli_generate, moe_stats_json, .timeout = 300) {
    tst_require_fixture("moe/tiny-segmoe-2x2/model_index.json");
    char *dir = tst_tmpdir(), *out = tmp_file(dir, "moe.png"), *stats = tmp_file(dir, "stats.json");
    char *model = tst_fixture_path("moe/tiny-segmoe-2x2");
    char args[4096];
    snprintf(args, sizeof args, "-m %s -p 'a cat' -s 3 --steps 3 -W 64 -H 64 --moe-stats %s -o %s", model, stats, out);
    cr_assert_eq(run_generate(args, NULL), 0);
    cJSON *root = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_json_load(stats, &root, &err), 0, "%s", err.msg);
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    cr_assert_eq(cJSON_GetArraySize(layers), 105);
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(root, "calls");
    cr_expect_eq(cJSON_GetArraySize(calls), 3);
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(layers->child, "experts");
    cr_expect_eq(cJSON_GetArraySize(ex), 3);
    cr_expect_eq(cJSON_GetArraySize(ex->child), 2, "top-2: two experts per call");
    cJSON_Delete(root);
    /* per-token routing runs and differs from nothing else: just succeeds */
    snprintf(args, sizeof args, "-m %s -p 'a cat' -s 3 --steps 2 -W 64 -H 64 --moe-routing per-token -o %s", model, out);
    cr_expect_eq(run_generate(args, NULL), 0);
    free(model);
    free(stats);
    free(out);
    free(dir);
}

Test(cli_generate, moe_stats_refused_for_dense_model) {
    tst_require_fixture("tiny-sd15/model_index.json");
    expect_error("-m %s -p x --steps 1 --moe-stats /tmp/never-stats.json -o %s", "not a mixture-of-experts");
}

static int count_files(const char *dir, const char *suffix) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "ls -1 %s 2>/dev/null | grep -c '%s$'", dir, suffix);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    int n = -1;
    cr_assert_eq(fscanf(p, "%d", &n), 1);
    pclose(p);
    return n;
}

static char *read_text(const char *path) {
    char *s = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(path, 1 << 20, &s, NULL, &err), 0, "%s", err.msg);
    return s;
}

/* --weight-cache DIR: the first run writes a cache file per component, the
 * second maps them without a word about the cache; the PNGs are the same
 * bytes as with --no-weight-cache.  An unusable folder is a warning naming
 * it, not a failure. */
Test(cli_generate, weight_cache_flags, .timeout = 300) {
    tst_require_fixture("tiny-sd15/model_index.json");
    char *dir = tst_tmpdir(), *model = tst_fixture_path("tiny-sd15");
    char *cache = tmp_file(dir, "cache"), *log = tmp_file(dir, "stderr.txt");
    const char *common = "-p 'a red fox' -W 64 -H 64 --steps 2 --sampler euler -s 9";
    char args[4096], *png[4];
    for (int i = 0; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "img%d.png", i);
        png[i] = tmp_file(dir, name);
    }
    char cmd[8192], *env_cache = tmp_file(dir, "env-cache");
    snprintf(cmd, sizeof cmd, "SDMOE_CACHE_DIR=%s %s generate -q -t 2 -m %s %s --no-weight-cache -o %s", env_cache,
             tst_sdmoe_bin(), model, common, png[0]);
    cr_assert_eq(tst_run(cmd, NULL, NULL), 0);
    cr_expect_eq(count_files(env_cache, ".sdwc"), 0, "--no-weight-cache writes no cache");
    free(env_cache);
    snprintf(args, sizeof args, "-m %s %s --weight-cache %s -o %s", model, common, cache, png[1]);
    cr_assert_eq(run_generate(args, NULL), 0);
    cr_expect_eq(count_files(cache, ".sdwc"), 2, "one cache file for the UNet, one for the VAE");
    /* without -q the second run reports nothing about the cache: it only maps it */
    snprintf(cmd, sizeof cmd, "%s generate -t 2 -m %s %s --weight-cache %s -o %s", tst_sdmoe_bin(), model, common,
             cache, png[2]);
    cr_assert_eq(tst_run(cmd, NULL, log), 0);
    char *text = read_text(log);
    cr_expect(strstr(text, "weight cache") == NULL, "a filled cache is not rewritten: %s", text);
    free(text);
    /* a file where the folder should be: a warning naming it, and the image all the same */
    snprintf(cmd, sizeof cmd, "%s generate -t 2 -m %s %s --weight-cache %s -o %s", tst_sdmoe_bin(), model, common,
             log, png[3]);
    cr_assert_eq(tst_run(cmd, NULL, log), 0);
    text = read_text(log);
    cr_expect(strstr(text, "warning: weight cache not used") != NULL && strstr(text, "stderr.txt") != NULL,
              "the warning names the folder: %s", text);
    free(text);
    char *ref, *got;
    size_t nref, ngot;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(png[0], 1 << 24, &ref, &nref, &err), 0);
    for (int i = 1; i < 4; i++) {
        cr_assert_eq(sd_read_file(png[i], 1 << 24, &got, &ngot, &err), 0);
        cr_expect(nref == ngot && !memcmp(ref, got, nref), "image %d differs from the uncached one", i);
        free(got);
    }
    free(ref);
    for (int i = 0; i < 4; i++) free(png[i]);
    free(cache), free(log), free(model), free(dir);
}
