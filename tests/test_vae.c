/* vae: AutoencoderKL decode and encode against diffusers v0.27.2
 * (refs/vae.safetensors), final outputs and every block's intermediate,
 * through the diffusers folder and through the single-file checkpoint;
 * config defaults and refusals. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/kernels.h"
#include "core/ldm_keymap.h"
#include "core/model.h"
#include "tests/support/test_support.h"
#include "vae/vae.h"

#define VAE_ABS 2e-4
#define VAE_REL 1e-4

/* tst_check_close, logging the max error (visible with --verbose). */
static void check(const char *what, const float *got, const float *ref, size_t n, double abs, double rel) {
    double e = tst_check_close(what, got, ref, n, abs, rel);
    cr_log_info("%s: max|err| %.3g", what, e);
}

/* ------------------------------------------------------------ model setup */

typedef struct loaded {
    sd_weights *w;
    vae_model *vae;
    vae_config cfg;
    int via_model; /* opened through sd_model_open (m is then live) */
    sd_model m;
} loaded;

static void load_config(vae_config *cfg) {
    char *path = tst_fixture_path("tiny-sd15/vae/config.json");
    cJSON *json;
    sd_error err = {0};
    cr_assert_eq(sd_json_load(path, &json, &err), 0, "%s", err.msg);
    cr_assert_eq(vae_config_from_json(cfg, json, path, &err), 0, "%s", err.msg);
    cJSON_Delete(json);
    free(path);
}

/* single_file = 0: the diffusers folder; 1: tiny-sd15.safetensors (LDM names). */
static int load_vae(loaded *m, int single_file, int parts) {
    const char *rel = single_file ? "tiny-sd15.safetensors" : "tiny-sd15/vae/diffusion_pytorch_model.safetensors";
    if (!tst_require_fixture(rel) || !tst_require_fixture("refs/vae.safetensors")) return 0;
    load_config(&m->cfg);
    char *path = tst_fixture_path(rel);
    const char *paths[1] = {path};
    sd_error err = {0};
    cr_assert_eq(sd_weights_open(&m->w, paths, 1, &err), 0, "%s", err.msg);
    free(path);
    sd_binder b = {.w = m->w, .component = "vae", .prefix = ""};
    if (single_file) {
        ldm_vae_layout lay = {.n_levels = m->cfg.n_levels};
        cr_assert_eq(ldm_vae_map_fn(&lay, &b.map, &err), 0, "%s", err.msg);
        b.prefix = "first_stage_model.";
    }
    cr_assert_eq(vae_load(&m->vae, &m->cfg, &b, parts, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&b, &err), 0, "%s", err.msg);
    return 1;
}

/* The production path: sd_model_open on the single-file checkpoint with
 * the folder as --model-config (the weights cannot tell the 16 GroupNorm
 * groups: cases.json single_file.architecture_not_in_weights), and the
 * component's config and binder. */
static int load_vae_via_model(loaded *m) {
    if (!tst_require_fixture("tiny-sd15.safetensors") || !tst_require_fixture("refs/vae.safetensors")) return 0;
    char *path = tst_fixture_path("tiny-sd15.safetensors"), *assets = tst_source_path("assets");
    char *folder = tst_fixture_path("tiny-sd15");
    sd_model_options opt = {.assets_dir = assets, .model_config = folder};
    sd_error err = {0};
    cr_assert_eq(sd_model_open(&m->m, path, &opt, &err), 0, "%s", err.msg);
    m->via_model = 1;
    sd_component *c = &m->m.vae;
    cr_assert_eq(vae_config_from_json(&m->cfg, c->config, c->config_path, &err), 0, "%s", err.msg);
    cr_assert_float_eq(m->cfg.scaling_factor, 0.18215, 1e-9);
    cr_assert_eq(vae_load(&m->vae, &m->cfg, &c->binder, VAE_PART_ALL, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&c->binder, &err), 0, "%s", err.msg);
    free(path);
    free(assets);
    free(folder);
    return 1;
}

static void unload(loaded *m) {
    vae_free(m->vae);
    if (m->via_model) sd_model_close(&m->m);
    else sd_weights_free(m->w);
}

/* ------------------------------------------------------- intermediates */

#define MAX_TAPS 32

typedef struct taps {
    int n;
    char name[MAX_TAPS][64];
    float *nchw[MAX_TAPS];
    int64_t shape[MAX_TAPS][4];
} taps;

static void tap_store(void *user, const char *name, const float *x, int64_t n, int64_t h, int64_t w, int64_t c) {
    taps *t = user;
    cr_assert_lt(t->n, MAX_TAPS);
    int i = t->n++;
    snprintf(t->name[i], sizeof t->name[i], "%s", name);
    t->nchw[i] = malloc((size_t)(n * c * h * w) * sizeof(float));
    sd_nhwc_to_nchw(x, n, h, w, c, t->nchw[i]);
    int64_t s[4] = {n, c, h, w};
    memcpy(t->shape[i], s, sizeof s);
}

static void taps_free(taps *t) {
    for (int i = 0; i < t->n; i++) free(t->nchw[i]);
}

/* Compares the tap `name` with the reference tensor `key`. */
static void check_tap(const st_file *ref, const taps *t, const char *name, const char *key) {
    for (int i = 0; i < t->n; i++) {
        if (strcmp(t->name[i], name)) continue;
        const st_tensor *rt = tst_ref_tensor(ref, key);
        cr_assert_eq(rt->ndim, 4, "%s", key);
        for (int d = 0; d < 4; d++)
            cr_assert_eq(rt->shape[d], t->shape[i][d], "%s: dim %d is %lld, reference %lld", key, d,
                         (long long)t->shape[i][d], (long long)rt->shape[d]);
        size_t numel;
        float *want = tst_ref_f32(ref, key, &numel);
        check(key, t->nchw[i], want, numel, VAE_ABS, VAE_REL);
        free(want);
        return;
    }
    cr_assert_fail("the VAE never reported intermediate '%s' (reference %s)", name, key);
}

/* Checks every intermediate that refs/cases.json lists for the case
 * (vae.<kind>[].intermediates: {module name: reference tensor}); returns
 * how many were checked. */
static int check_case_intermediates(const st_file *ref, const taps *t, const char *kind, const char *cs) {
    char *path = tst_fixture_path("refs/cases.json"), *text;
    size_t len;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(path, 64u << 20, &text, &len, &err), 0, "%s", err.msg);
    free(path);
    /* Python's json writes -Infinity (a scheduler setting); cJSON wants a number */
    for (char *p = text; (p = strstr(p, "Infinity")) != NULL; p += 8) memcpy(p, "1e999   ", 8);
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    cr_assert_not_null(root, "refs/cases.json does not parse");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "vae"), kind);
    int checked = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, list) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(c, "name");
        if (!cJSON_IsString(name) || strcmp(name->valuestring, cs)) continue;
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(c, "intermediates")) {
            cr_assert(cJSON_IsString(it), "cases.json: %s.intermediates.%s is not a string", cs, it->string);
            check_tap(ref, t, it->string, it->valuestring);
            checked++;
        }
    }
    cJSON_Delete(root);
    return checked;
}

/* ------------------------------------------------------------------ decode */

/* Decodes `<cs>.latents` [1, L, h, w], checks the image, the scaled input
 * and every named intermediate. */
static int decode_case(loaded *m, const char *cs) {
    st_file ref;
    tst_open_ref(&ref, "refs/vae.safetensors");
    char key[128];
    snprintf(key, sizeof key, "%s.latents", cs);
    const st_tensor *lt = tst_ref_tensor(&ref, key);
    float *lat = tst_ref_f32(&ref, key, NULL);
    int64_t h = lt->shape[2], w = lt->shape[3], ih, iw;
    cr_assert_eq(lt->shape[1], m->cfg.latent_channels);
    vae_decode_out_size(m->vae, h, w, &ih, &iw);
    size_t n_img = (size_t)(m->cfg.out_channels * ih * iw);
    float *img = malloc(n_img * sizeof(float));
    taps t = {0};
    vae_probe probe = {tap_store, &t};
    sd_error err = {0};
    cr_assert_eq(vae_decode_latents(m->vae, lat, 1, h, w, img, &probe, &err), 0, "%s", err.msg);

    snprintf(key, sizeof key, "%s.image", cs);
    size_t numel;
    float *want = tst_ref_f32(&ref, key, &numel);
    cr_assert_eq(numel, n_img, "%s: %zu values, reference %zu", key, n_img, numel);
    check(key, img, want, numel, VAE_ABS, VAE_REL);
    snprintf(key, sizeof key, "%s.decoder_input", cs);
    check_tap(&ref, &t, "decoder_input", key);
    int checked = check_case_intermediates(&ref, &t, "decode", cs);
    free(want);
    taps_free(&t);
    free(img);
    free(lat);
    st_close(&ref);
    return checked;
}

Test(vae, decode_8x8_with_intermediates) {
    loaded m = {0};
    if (!load_vae(&m, 0, VAE_PART_DECODER)) return;
    cr_assert_eq(decode_case(&m, "decode_8x8"), m.cfg.n_levels + 4, "intermediates checked");
    unload(&m);
}

Test(vae, decode_8x12_non_square) {
    loaded m = {0};
    if (!load_vae(&m, 0, VAE_PART_DECODER)) return;
    decode_case(&m, "decode_8x12");
    unload(&m);
}

Test(vae, decode_through_single_file_checkpoint) {
    loaded m = {0};
    if (!load_vae_via_model(&m)) return;
    cr_assert_gt(decode_case(&m, "decode_8x8"), 0);
    unload(&m);
}

/* A batch of two decodes each item as if alone (the attention and the
 * norms must not mix items), and a smaller call after a larger one reuses
 * the workspace. */
Test(vae, decode_batch_of_two_matches_single) {
    loaded m = {0};
    if (!load_vae(&m, 0, VAE_PART_DECODER)) return;
    st_file ref;
    tst_open_ref(&ref, "refs/vae.safetensors");
    size_t nl, ni;
    float *lat = tst_ref_f32(&ref, "decode_8x8.latents", &nl);
    float *want = tst_ref_f32(&ref, "decode_8x8.image", &ni);
    float *two = malloc(2 * nl * sizeof(float)), *img = malloc(2 * ni * sizeof(float));
    for (size_t i = 0; i < nl; i++) {
        two[i] = -lat[i];
        two[nl + i] = lat[i];
    }
    sd_error err = {0};
    cr_assert_eq(vae_decode_latents(m.vae, two, 2, 8, 8, img, NULL, &err), 0, "%s", err.msg);
    check("batch item 1", img + ni, want, ni, VAE_ABS, VAE_REL);
    float *single = malloc(ni * sizeof(float));
    cr_assert_eq(vae_decode_latents(m.vae, two, 1, 8, 8, single, NULL, &err), 0, "%s", err.msg);
    check("batch item 0 vs alone", img, single, ni, 1e-5, 0);
    free(single);
    free(two);
    free(img);
    free(lat);
    free(want);
    st_close(&ref);
    unload(&m);
}

/* ------------------------------------------------------------------ encode */

static int encode_case(loaded *m, const char *cs) {
    st_file ref;
    tst_open_ref(&ref, "refs/vae.safetensors");
    char key[128];
    snprintf(key, sizeof key, "%s.image", cs);
    const st_tensor *it = tst_ref_tensor(&ref, key);
    float *image = tst_ref_f32(&ref, key, NULL);
    int64_t h = it->shape[2], w = it->shape[3], lh, lw;
    vae_encode_out_size(m->vae, h, w, &lh, &lw);
    size_t nl = (size_t)(m->cfg.latent_channels * lh * lw);
    float *out[3];
    for (int k = 0; k < 3; k++) out[k] = malloc(nl * sizeof(float));
    taps t = {0};
    vae_probe probe = {tap_store, &t};
    sd_error err = {0};
    cr_assert_eq(vae_encode_image(m->vae, image, 1, h, w, out[0], out[1], out[2], &probe, &err), 0, "%s",
                 err.msg);
    const char *names[3] = {"mean", "logvar", "std"};
    for (int k = 0; k < 3; k++) {
        snprintf(key, sizeof key, "%s.%s", cs, names[k]);
        size_t numel;
        float *want = tst_ref_f32(&ref, key, &numel);
        cr_assert_eq(numel, nl, "%s: %zu values, reference %zu", key, nl, numel);
        check(key, out[k], want, numel, VAE_ABS, VAE_REL);
        free(want);
    }
    /* the moments are quant_conv's output */
    snprintf(key, sizeof key, "%s.moments", cs);
    for (int i = 0; i < t.n; i++)
        if (!strcmp(t.name[i], "quant_conv")) {
            size_t numel;
            float *want = tst_ref_f32(&ref, key, &numel);
            check(key, t.nchw[i], want, numel, VAE_ABS, VAE_REL);
            free(want);
        }
    int checked = check_case_intermediates(&ref, &t, "encode", cs);
    taps_free(&t);
    for (int k = 0; k < 3; k++) free(out[k]);
    free(image);
    st_close(&ref);
    return checked;
}

Test(vae, encode_64x64_with_intermediates) {
    loaded m = {0};
    if (!load_vae(&m, 0, VAE_PART_ENCODER)) return;
    cr_assert_eq(encode_case(&m, "encode_64x64"), m.cfg.n_levels + 4, "intermediates checked");
    unload(&m);
}

Test(vae, encode_64x96_non_square) {
    loaded m = {0};
    if (!load_vae(&m, 0, VAE_PART_ENCODER)) return;
    encode_case(&m, "encode_64x96");
    unload(&m);
}

Test(vae, encode_through_single_file_checkpoint) {
    loaded m = {0};
    if (!load_vae(&m, 1, VAE_PART_ALL)) return;
    cr_assert_gt(encode_case(&m, "encode_64x64"), 0);
    unload(&m);
}

Test(vae, missing_half_is_an_error) {
    loaded m = {0};
    if (!load_vae(&m, 0, VAE_PART_DECODER)) return;
    float img[3 * 16 * 16] = {0}, mean[4 * 2 * 2];
    sd_error err = {0};
    cr_assert_neq(vae_encode_image(m.vae, img, 1, 16, 16, mean, NULL, NULL, NULL, &err), 0);
    cr_assert(strstr(err.msg, "encoder") != NULL, "%s", err.msg);
    unload(&m);
}

/* ------------------------------------------------------------------ config */

static int config_from(const char *text, vae_config *cfg, sd_error *err) {
    cJSON *json = cJSON_Parse(text);
    cr_assert_not_null(json);
    int rc = vae_config_from_json(cfg, json, "config.json", err);
    cJSON_Delete(json);
    return rc;
}

Test(vae, config_fixture_values) {
    if (!tst_require_fixture("tiny-sd15/vae/config.json")) return;
    vae_config c;
    load_config(&c);
    cr_assert_eq(c.n_levels, 4);
    int want[4] = {32, 32, 64, 64};
    for (int i = 0; i < 4; i++) cr_assert_eq(c.block_out_channels[i], want[i]);
    cr_assert_eq(c.layers_per_block, 2);
    cr_assert_eq(c.norm_num_groups, 16);
    cr_assert_eq(c.latent_channels, 4);
    cr_assert_eq(c.mid_block_add_attention, 1);
    cr_assert_float_eq(c.scaling_factor, 0.18215, 1e-12);
}

Test(vae, config_diffusers_defaults) {
    vae_config c;
    sd_error err = {0};
    cr_assert_eq(config_from("{}", &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.n_levels, 1);
    cr_assert_eq(c.block_out_channels[0], 64);
    cr_assert_eq(c.layers_per_block, 1);
    cr_assert_eq(c.norm_num_groups, 32);
    cr_assert_eq(c.latent_channels, 4);
    cr_assert_eq(c.in_channels, 3);
    cr_assert_eq(c.out_channels, 3);
    cr_assert_float_eq(c.scaling_factor, 0.18215, 1e-12);
}

Test(vae, config_refusals_name_the_key) {
    vae_config c;
    struct {
        const char *json, *key;
    } bad[] = {
        {"{\"block_out_channels\": [32, 48], \"norm_num_groups\": 32,"
         " \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],"
         " \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}",
         "block_out_channels[1]"},
        {"{\"block_out_channels\": [64, 64], \"down_block_types\": [\"DownEncoderBlock2D\"],"
         " \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}",
         "down_block_types"},
        {"{\"up_block_types\": [\"AttnUpDecoderBlock2D\"]}", "up_block_types"},
        {"{\"act_fn\": \"gelu\"}", "act_fn"},
        {"{\"layers_per_block\": \"two\"}", "layers_per_block"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sd_error err = {0};
        cr_assert_neq(config_from(bad[i].json, &c, &err), 0, "case %zu accepted", i);
        cr_assert(strstr(err.msg, bad[i].key) != NULL, "case %zu: '%s' does not name %s", i, err.msg, bad[i].key);
    }
}
