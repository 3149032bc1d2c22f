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

/* ------------------------------------------------------------ tiled decode */

/* Torch's `a * (1 - y / e) + b * (y / e)` on float32 tensors: the weights are
 * Python floats rounded to float. */
static float blend(float a, float b, int64_t y, int64_t e) {
    double t = (double)y / (double)e;
    return a * (float)(1.0 - t) + b * (float)t;
}

/* diffusers v0.27.2 AutoencoderKL.tiled_decode written out as in
 * autoencoder_kl.py, batch 1: every tile z[:, :, i:i+T, j:j+T] (i, j in
 * range(0, size, int(T * 0.75))) decoded alone with the untiled decoder,
 * kept whole; then in raster order each tile is blended in place with the
 * finished tile above (blend_v: its last e = min(a.h, b.h, E) rows) and the
 * finished tile to the left (blend_h), E = int(S / 4), S = T * 8; the image
 * is the concatenation of the tiles' [:S - E, :S - E] crops. */
static float *tiled_reference(loaded *m, const float *lat, int64_t h, int64_t w, int T, int64_t *H, int64_t *W) {
    int64_t f, fw, L = m->cfg.latent_channels, C = m->cfg.out_channels;
    vae_decode_out_size(m->vae, 1, 1, &f, &fw);
    int64_t S = T * f, step = (int64_t)(T * 0.75), E = (int64_t)(S * 0.25), limit = S - E;
    int64_t nr = (h + step - 1) / step, nc = (w + step - 1) / step;
    float **tile = calloc((size_t)(nr * nc), sizeof *tile);
    int64_t *th = calloc((size_t)(nr * nc), sizeof *th), *tw = calloc((size_t)(nr * nc), sizeof *tw);
    sd_error err = {0};
    for (int64_t i = 0; i < nr; i++)
        for (int64_t j = 0; j < nc; j++) {
            int64_t k = i * nc + j, y0 = i * step, x0 = j * step;
            int64_t lh = h - y0 < T ? h - y0 : T, lw = w - x0 < T ? w - x0 : T;
            float *z = malloc((size_t)(L * lh * lw) * sizeof(float));
            for (int64_t c = 0; c < L; c++)
                for (int64_t y = 0; y < lh; y++)
                    for (int64_t x = 0; x < lw; x++) z[(c * lh + y) * lw + x] = lat[(c * h + y0 + y) * w + x0 + x];
            th[k] = lh * f, tw[k] = lw * f;
            tile[k] = malloc((size_t)(C * th[k] * tw[k]) * sizeof(float));
            cr_assert_eq(vae_decode_latents(m->vae, z, 1, lh, lw, tile[k], NULL, &err), 0, "%s", err.msg);
            free(z);
        }
    *H = h * f, *W = w * f;
    float *img = malloc((size_t)(C * *H * *W) * sizeof(float));
    int64_t oy = 0;
    for (int64_t i = 0; i < nr; i++) {
        int64_t ox = 0, rows_out = 0;
        for (int64_t j = 0; j < nc; j++) {
            int64_t k = i * nc + j, bh = th[k], bw = tw[k];
            float *b = tile[k];
            if (i > 0) { /* blend_v(rows[i - 1][j], tile) */
                const float *a = tile[k - nc];
                int64_t ah = th[k - nc], e = ah < bh ? ah : bh;
                if (E < e) e = E;
                for (int64_t c = 0; c < C; c++)
                    for (int64_t y = 0; y < e; y++)
                        for (int64_t x = 0; x < bw; x++)
                            b[(c * bh + y) * bw + x] = blend(a[(c * ah + ah - e + y) * bw + x], b[(c * bh + y) * bw + x], y, e);
            }
            if (j > 0) { /* blend_h(row[j - 1], tile) */
                const float *a = tile[k - 1];
                int64_t aw = tw[k - 1], e = aw < bw ? aw : bw;
                if (E < e) e = E;
                for (int64_t c = 0; c < C; c++)
                    for (int64_t y = 0; y < bh; y++)
                        for (int64_t x = 0; x < e; x++)
                            b[(c * bh + y) * bw + x] = blend(a[(c * bh + y) * aw + aw - e + x], b[(c * bh + y) * bw + x], x, e);
            }
            int64_t ch = bh < limit ? bh : limit, cw = bw < limit ? bw : limit; /* tile[:, :, :row_limit, :row_limit] */
            cr_assert_leq(oy + ch, *H);
            cr_assert_leq(ox + cw, *W);
            for (int64_t c = 0; c < C; c++)
                for (int64_t y = 0; y < ch; y++)
                    memcpy(img + (c * *H + oy + y) * *W + ox, b + (c * bh + y) * bw, (size_t)cw * sizeof(float));
            ox += cw, rows_out = ch;
        }
        cr_assert_eq(ox, *W, "the crops of tile row %lld cover %lld of %lld columns", (long long)i, (long long)ox,
                     (long long)*W);
        oy += rows_out;
    }
    cr_assert_eq(oy, *H, "the crops cover %lld of %lld rows", (long long)oy, (long long)*H);
    for (int64_t k = 0; k < nr * nc; k++) free(tile[k]);
    free(tile), free(th), free(tw);
    return img;
}

/* The latents of the 8x12 decode case, cropped to h x w (h <= 8, w <= 12). */
static float *case_latents(loaded *m, int64_t h, int64_t w) {
    st_file ref;
    tst_open_ref(&ref, "refs/vae.safetensors");
    const st_tensor *lt = tst_ref_tensor(&ref, "decode_8x12.latents");
    int64_t rh = lt->shape[2], rw = lt->shape[3], L = m->cfg.latent_channels;
    cr_assert(h <= rh && w <= rw);
    float *all = tst_ref_f32(&ref, "decode_8x12.latents", NULL), *lat = malloc((size_t)(L * h * w) * sizeof(float));
    for (int64_t c = 0; c < L; c++)
        for (int64_t y = 0; y < h; y++) memcpy(lat + (c * h + y) * w, all + (c * rh + y) * rw, (size_t)w * sizeof(float));
    free(all);
    st_close(&ref);
    return lat;
}

/* A tile that covers the whole latent is the untiled decode, byte for byte. */
Test(vae, tiled_decode_one_tile_is_untiled) {
    loaded m = {0};
    if (!load_vae(&m, 0, VAE_PART_DECODER)) return;
    int64_t h = 8, w = 12, H, W;
    float *lat = case_latents(&m, h, w);
    vae_decode_out_size(m.vae, h, w, &H, &W);
    size_t ni = (size_t)(m.cfg.out_channels * H * W);
    float *want = malloc(ni * sizeof(float)), *got = malloc(ni * sizeof(float));
    sd_error err = {0};
    cr_assert_eq(vae_decode_latents(m.vae, lat, 1, h, w, want, NULL, &err), 0, "%s", err.msg);
    int tiles[2] = {12, 64};
    for (int i = 0; i < 2; i++) {
        memset(got, 0, ni * sizeof(float));
        cr_assert_eq(vae_decode_tiled(m.vae, lat, 1, h, w, tiles[i], got, &err), 0, "%s", err.msg);
        cr_assert_eq(memcmp(got, want, ni * sizeof(float)), 0, "tile %d differs from the untiled decode", tiles[i]);
    }
    free(want), free(got), free(lat);
    unload(&m);
}

/* Small tiles give diffusers' blend of the separately decoded tiles: 8x12
 * latents in 4x4 tiles (3 x 4 tiles, the last row and column clipped) and
 * 7x9 in 8x8 tiles (the first tile row is clipped by the bottom edge, so the
 * blend_v rows do not sit over the same image rows: diffusers' formula as it
 * is); a batch of two decodes each item as alone. */
Test(vae, tiled_decode_matches_diffusers_blend) {
    loaded m = {0};
    if (!load_vae(&m, 0, VAE_PART_DECODER)) return;
    struct {
        int64_t h, w;
        int tile;
    } cases[2] = {{8, 12, 4}, {7, 9, 8}};
    sd_error err = {0};
    for (int c = 0; c < 2; c++) {
        int64_t h = cases[c].h, w = cases[c].w, H, W;
        float *lat = case_latents(&m, h, w);
        float *want = tiled_reference(&m, lat, h, w, cases[c].tile, &H, &W);
        size_t ni = (size_t)(m.cfg.out_channels * H * W), nl = (size_t)(m.cfg.latent_channels * h * w);
        float *got = malloc(2 * ni * sizeof(float)), *two = malloc(2 * nl * sizeof(float));
        cr_assert_eq(vae_decode_tiled(m.vae, lat, 1, h, w, cases[c].tile, got, &err), 0, "%s", err.msg);
        char what[64];
        snprintf(what, sizeof what, "tiled %lldx%lld tile %d", (long long)h, (long long)w, cases[c].tile);
        check(what, got, want, ni, 1e-6, 0);
        /* the blend did something: tiled is not the untiled decode */
        cr_assert_eq(vae_decode_latents(m.vae, lat, 1, h, w, got + ni, NULL, &err), 0, "%s", err.msg);
        double diff = 0;
        for (size_t i = 0; i < ni; i++) diff = fmax(diff, fabs((double)got[i] - got[ni + i]));
        cr_assert_gt(diff, 1e-3, "%s: equal to the untiled decode", what);
        for (size_t i = 0; i < nl; i++) two[i] = -lat[i], two[nl + i] = lat[i];
        cr_assert_eq(vae_decode_tiled(m.vae, two, 2, h, w, cases[c].tile, got, &err), 0, "%s", err.msg);
        check("tiled batch item 1", got + ni, want, ni, 1e-5, 0);
        free(want), free(got), free(two), free(lat);
    }
    unload(&m);
}

/* The tiled decode's peak buffers (workspace + tile buffers) are those of
 * one tile: smaller than a whole-image decode's; tile sizes that are not a
 * multiple of 4 are refused. */
Test(vae, tiled_decode_workspace_and_refusals) {
    loaded a = {0}, b = {0};
    if (!load_vae(&a, 0, VAE_PART_DECODER) || !load_vae(&b, 0, VAE_PART_DECODER)) return;
    int64_t h = 8, w = 12, H, W;
    float *lat = case_latents(&a, h, w);
    vae_decode_out_size(a.vae, h, w, &H, &W);
    float *img = malloc((size_t)(a.cfg.out_channels * H * W) * sizeof(float));
    sd_error err = {0};
    cr_assert_eq(vae_workspace_bytes(a.vae), 0);
    cr_assert_eq(vae_decode_latents(a.vae, lat, 1, h, w, img, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(vae_decode_tiled(b.vae, lat, 1, h, w, 4, img, &err), 0, "%s", err.msg);
    size_t whole = vae_workspace_bytes(a.vae), tiled = vae_workspace_bytes(b.vae);
    cr_log_info("workspace: whole image %zu bytes, 4x4 tiles %zu bytes", whole, tiled);
    cr_assert_lt(tiled, whole / 2, "tiled %zu bytes, whole image %zu", tiled, whole);
    int bad[3] = {0, 6, -4};
    for (int i = 0; i < 3; i++) {
        cr_assert_neq(vae_decode_tiled(b.vae, lat, 1, h, w, bad[i], img, &err), 0, "tile %d accepted", bad[i]);
        cr_assert(strstr(err.msg, "multiple of 4") != NULL, "%s", err.msg);
    }
    free(img), free(lat);
    unload(&a), unload(&b);
}

/* ----------------------------------------------------------------- layouts */

/* Every activation layout (NHWC and oneDNN's blocked nChw8c / nChw16c, the
 * default being sd_preferred_layout()) gives the fixtures' results and
 * intermediates, decode and encode, including the non-square cases. */
Test(vae, activation_layouts) {
    loaded m = {0};
    if (!load_vae(&m, 0, VAE_PART_ALL)) return;
    cr_assert_eq(vae_get_layout(m.vae), sd_preferred_layout());
    int lays[3] = {SD_LAYOUT_NHWC, 8, 16};
    sd_error err = {0};
    for (int i = 0; i < 3; i++) {
        cr_log_info("layout %d", lays[i]);
        cr_assert_eq(vae_set_layout(m.vae, lays[i], &err), 0, "%s", err.msg);
        cr_assert_eq(vae_get_layout(m.vae), lays[i]);
        cr_assert_eq(decode_case(&m, "decode_8x8"), m.cfg.n_levels + 4, "intermediates checked");
        decode_case(&m, "decode_8x12");
        cr_assert_eq(encode_case(&m, "encode_64x64"), m.cfg.n_levels + 4, "intermediates checked");
        encode_case(&m, "encode_64x96");
    }
    cr_assert_neq(vae_set_layout(m.vae, SD_LAYOUT_NCHW, &err), 0);
    cr_assert(strstr(err.msg, "layout") != NULL, "%s", err.msg);
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
