/* text_encoder/clip_text + conditioning: every hidden state of every
 * refs/text_encoder.safetensors case, clip skip, the pipeline runs'
 * prompt_embeds (plain and a1111 syntax), the single-file checkpoint, the
 * SDXL text encoders (gelu, text_projection, pooled output, pad "!"), and
 * the error paths.  Tolerance: 1e-4 abs / 1e-5 of max (fixtures README). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/weights.h"
#include "text_encoder/clip_text.h"
#include "text_encoder/conditioning.h"
#include "text_encoder/tokenizer.h"
#include "tests/support/test_support.h"

#define TE_ABS 1e-4
#define TE_REL 1e-5

typedef struct te_fixture {
    sd_weights *w;
    sd_clip_text *model;
    sd_clip_text_config cfg;
} te_fixture;

/* Loads a text encoder folder (config.json + model.safetensors). */
static void te_open(te_fixture *f, const char *folder) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/model.safetensors", folder);
    tst_require_fixture(rel);
    char *weights = tst_fixture_path(rel);
    snprintf(rel, sizeof rel, "%s/config.json", folder);
    char *config = tst_fixture_path(rel);
    sd_error err = {0};
    cJSON *cfg = NULL;
    cr_assert_eq(sd_json_load(config, &cfg, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_clip_text_config_read(cfg, config, &f->cfg, &err), 0, "%s", err.msg);
    cJSON_Delete(cfg);
    const char *paths[1] = {weights};
    cr_assert_eq(sd_weights_open(&f->w, paths, 1, &err), 0, "%s", err.msg);
    sd_binder b = {.w = f->w, .component = "text_encoder", .prefix = ""};
    cr_assert_eq(sd_clip_text_load(&f->model, &f->cfg, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&b, &err), 0, "%s", err.msg);
    free(weights);
    free(config);
}

static void te_close(te_fixture *f) {
    sd_clip_text_free(f->model);
    sd_weights_free(f->w);
}

static sd_tokenizer *open_tokenizer(const char *folder) {
    char *dir = tst_fixture_path(folder);
    sd_tokenizer *tok = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_tokenizer_open(&tok, dir, &err), 0, "%s", err.msg);
    free(dir);
    return tok;
}

static cJSON *load_cases(const char *rel) { return tst_load_json(rel); }

static const cJSON *cases_of(const cJSON *root, const char *section) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, section), "cases");
    cr_assert(cJSON_IsArray(c), "cases.json: %s.cases missing", section);
    return c;
}

static const char *str_of(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void check_ref(const st_file *ref, const char *name, const float *got, size_t n) {
    size_t rn;
    float *want = tst_ref_f32(ref, name, &rn);
    cr_assert_eq(rn, n, "%s: %zu values, reference has %zu", name, n, rn);
    tst_check_close(name, got, want, n, TE_ABS, TE_REL);
    free(want);
}

Test(text_encoder, config_read) {
    te_fixture f;
    te_open(&f, "tiny-sd15/text_encoder");
    cr_expect_eq(f.cfg.hidden_size, 32);
    cr_expect_eq(f.cfg.num_heads, 4);
    cr_expect_eq(f.cfg.num_layers, 4);
    cr_expect_eq(f.cfg.intermediate_size, 128);
    cr_expect_eq(f.cfg.max_positions, 77);
    cr_expect_eq(f.cfg.act, SD_CLIP_ACT_QUICK_GELU);
    cr_expect_eq(sd_clip_text_has_projection(f.model), 0);
    te_close(&f);
}

/* Every case: ids from our tokenizer, every hidden state, last hidden state,
 * penultimate (A1111 clip skip 2 input), clip skip 1 and 2. */
Test(text_encoder, all_cases_all_hidden_states) {
    cJSON *root = load_cases("refs/cases.json");
    st_file ref;
    tst_open_ref(&ref, "refs/text_encoder.safetensors");
    te_fixture f;
    te_open(&f, "tiny-sd15/text_encoder");
    sd_tokenizer *tok = open_tokenizer("tiny-sd15/tokenizer");
    const int H = f.cfg.hidden_size, L = f.cfg.num_layers;
    const size_t plane = 77 * (size_t)H;
    float *all = malloc((size_t)(L + 1) * plane * sizeof *all), *out = malloc(plane * sizeof *out);
    int ncases = 0;
    for (const cJSON *c = cases_of(root, "text_encoder")->child; c; c = c->next, ncases++) {
        const char *name = str_of(c, "name");
        char t[160];
        sd_error err = {0};
        int32_t ids[77];
        cr_assert_eq(sd_tokenizer_encode(tok, str_of(c, "prompt"), ids, NULL, NULL, NULL, &err), 0);
        snprintf(t, sizeof t, "%s.input_ids", name);
        int64_t *want_ids = tst_ref_i64(&ref, t, NULL);
        for (int i = 0; i < 77; i++) cr_expect_eq(ids[i], want_ids[i], "%s: id %d", name, i);
        free(want_ids);

        sd_clip_text_request req = {.all_hidden = all, .hidden = out, .layer = L, .final_norm = 1};
        cr_assert_eq(sd_clip_text_forward(f.model, ids, 1, 77, &req, &err), 0, "%s", err.msg);
        for (int l = 0; l <= L; l++) {
            snprintf(t, sizeof t, "%s.hidden_states.%d", name, l);
            check_ref(&ref, t, all + (size_t)l * plane, plane);
        }
        snprintf(t, sizeof t, "%s.last_hidden_state", name);
        check_ref(&ref, t, out, plane);
        snprintf(t, sizeof t, "%s.penultimate_hidden_state", name);
        check_ref(&ref, t, all + (size_t)(L - 1) * plane, plane);

        for (int skip = 1; skip <= 2; skip++) {
            int layer, norm;
            cr_assert_eq(sd_clip_skip_layer(&f.cfg, skip, &layer, &norm, &err), 0);
            sd_clip_text_request r2 = {.hidden = out, .layer = layer, .final_norm = norm};
            cr_assert_eq(sd_clip_text_forward(f.model, ids, 1, 77, &r2, &err), 0, "%s", err.msg);
            snprintf(t, sizeof t, skip == 1 ? "%s.last_hidden_state" : "%s.penultimate_after_final_layer_norm",
                     name);
            check_ref(&ref, t, out, plane);
        }
    }
    cr_expect_eq(ncases, 4);
    free(all);
    free(out);
    sd_tokenizer_free(tok);
    te_close(&f);
    st_close(&ref);
    cJSON_Delete(root);
}

/* A batch of rows gives each row's single result. */
Test(text_encoder, batched_equals_single) {
    st_file ref;
    tst_open_ref(&ref, "refs/text_encoder.safetensors");
    te_fixture f;
    te_open(&f, "tiny-sd15/text_encoder");
    static const char *names[] = {"cat", "empty", "long_truncated", "unicode"};
    int32_t ids[4 * 77];
    for (int b = 0; b < 4; b++) {
        char t[96];
        snprintf(t, sizeof t, "%s.input_ids", names[b]);
        int64_t *v = tst_ref_i64(&ref, t, NULL);
        for (int i = 0; i < 77; i++) ids[b * 77 + i] = (int32_t)v[i];
        free(v);
    }
    const size_t plane = 77 * 32;
    float *out = malloc(4 * plane * sizeof *out);
    sd_error err = {0};
    sd_clip_text_request req = {.hidden = out, .layer = 4, .final_norm = 1};
    cr_assert_eq(sd_clip_text_forward(f.model, ids, 4, 77, &req, &err), 0, "%s", err.msg);
    for (int b = 0; b < 4; b++) {
        char t[96];
        snprintf(t, sizeof t, "%s.last_hidden_state", names[b]);
        check_ref(&ref, t, out + b * plane, plane);
    }
    free(out);
    te_close(&f);
    st_close(&ref);
}

/* The pipeline runs: prompt_embeds = [uncond, cond], negative "" when None. */
static void check_pipeline_embeds(sd_prompt_syntax syntax) {
    cJSON *root = load_cases("refs/cases.json");
    te_fixture f;
    te_open(&f, "tiny-sd15/text_encoder");
    sd_tokenizer *tok = open_tokenizer("tiny-sd15/tokenizer");
    int runs = 0;
    for (const cJSON *c = cases_of(root, "pipelines")->child; c; c = c->next, runs++) {
        char rel[256];
        snprintf(rel, sizeof rel, "refs/%s", str_of(c, "file"));
        st_file ref;
        tst_open_ref(&ref, rel);
        const char *texts[2] = {str_of(c, "negative_prompt") ? str_of(c, "negative_prompt") : "",
                                str_of(c, "prompt")};
        const char *id_names[2] = {"uncond_input_ids", "cond_input_ids"};
        size_t n;
        float *want = tst_ref_f32(&ref, "prompt_embeds", &n);
        cr_assert_eq(n, 2 * 77 * 32u);
        for (int row = 0; row < 2; row++) {
            sd_text_cond tc;
            sd_error err = {0};
            cr_assert_eq(sd_conditioning_encode(tok, f.model, texts[row], syntax, 1, &tc, &err), 0, "%s", err.msg);
            cr_assert_eq(tc.n_chunks, 1);
            cr_expect_eq(tc.n_dropped, 0);
            sd_prompt_chunks ch;
            cr_assert_eq(sd_prompt_chunks_build(tok, texts[row], syntax, &ch, &err), 0);
            int64_t *ids = tst_ref_i64(&ref, id_names[row], NULL);
            for (int i = 0; i < 77; i++) cr_expect_eq(ch.ids[i], ids[i], "%s %s id %d", rel, id_names[row], i);
            free(ids);
            sd_prompt_chunks_free(&ch);
            char what[300];
            snprintf(what, sizeof what, "%s prompt_embeds[%d] (%s)", rel, row, sd_prompt_syntax_name(syntax));
            tst_check_close(what, tc.emb, want + (size_t)row * 77 * 32, 77 * 32, TE_ABS, TE_REL);
            sd_text_cond_free(&tc);
        }
        free(want);
        st_close(&ref);
    }
    cr_expect_eq(runs, 7);
    sd_tokenizer_free(tok);
    te_close(&f);
    cJSON_Delete(root);
}

Test(text_encoder, pipeline_prompt_embeds_plain) { check_pipeline_embeds(SD_PROMPT_SYNTAX_PLAIN); }
Test(text_encoder, pipeline_prompt_embeds_a1111) { check_pipeline_embeds(SD_PROMPT_SYNTAX_A1111); }

/* The same text model from the single-file checkpoint (HF names under
 * cond_stage_model.transformer.) gives the same result. */
Test(text_encoder, single_file_checkpoint) {
    tst_require_fixture("tiny-sd15.safetensors");
    char *path = tst_fixture_path("tiny-sd15.safetensors");
    const char *paths[1] = {path};
    sd_weights *w = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_weights_open(&w, paths, 1, &err), 0, "%s", err.msg);
    te_fixture f;
    te_open(&f, "tiny-sd15/text_encoder");
    sd_binder b = {.w = w, .component = "text_encoder", .prefix = "cond_stage_model.transformer."};
    sd_clip_text *m = NULL;
    cr_assert_eq(sd_clip_text_load(&m, &f.cfg, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&b, &err), 0, "%s", err.msg);
    st_file ref;
    tst_open_ref(&ref, "refs/text_encoder.safetensors");
    int64_t *v = tst_ref_i64(&ref, "cat.input_ids", NULL);
    int32_t ids[77];
    for (int i = 0; i < 77; i++) ids[i] = (int32_t)v[i];
    float out[77 * 32];
    sd_clip_text_request req = {.hidden = out, .layer = 4, .final_norm = 1};
    cr_assert_eq(sd_clip_text_forward(m, ids, 1, 77, &req, &err), 0, "%s", err.msg);
    check_ref(&ref, "cat.last_hidden_state", out, 77 * 32);
    free(v);
    st_close(&ref);
    sd_clip_text_free(m);
    te_close(&f);
    sd_weights_free(w);
    free(path);
}

/* SDXL's two encoders: tokenizer_2 pads with "!" (0), text_encoder_2 uses
 * exact GELU and text_projection; pooled = projection of the final-normed
 * EOS row; te1's pooler_output has no projection. */
Test(text_encoder, sdxl_encoders_and_pooled) {
    cJSON *root = load_cases("sdxl/refs/cases.json");
    st_file ref;
    tst_open_ref(&ref, "sdxl/refs/text_encoders.safetensors");
    te_fixture te1, te2;
    te_open(&te1, "sdxl/tiny-sdxl/text_encoder");
    te_open(&te2, "sdxl/tiny-sdxl/text_encoder_2");
    cr_expect_eq(te2.cfg.act, SD_CLIP_ACT_GELU);
    cr_expect_eq(sd_clip_text_has_projection(te2.model), 1);
    sd_tokenizer *tok1 = open_tokenizer("sdxl/tiny-sdxl/tokenizer");
    sd_tokenizer *tok2 = open_tokenizer("sdxl/tiny-sdxl/tokenizer_2");
    cr_expect_eq(sd_tokenizer_pad(tok2), 0);
    int ncases = 0;
    for (const cJSON *c = cases_of(root, "text_encoders")->child; c; c = c->next, ncases++) {
        const char *name = str_of(c, "name");
        char t[160];
        sd_error err = {0};
        int32_t ids[2][77];
        cr_assert_eq(sd_tokenizer_encode(tok1, str_of(c, "text"), ids[0], NULL, NULL, NULL, &err), 0);
        cr_assert_eq(sd_tokenizer_encode(tok2, str_of(c, "text"), ids[1], NULL, NULL, NULL, &err), 0);
        for (int e = 0; e < 2; e++) {
            snprintf(t, sizeof t, e ? "%s.input_ids_2" : "%s.input_ids", name);
            int64_t *want = tst_ref_i64(&ref, t, NULL);
            for (int i = 0; i < 77; i++) cr_expect_eq(ids[e][i], want[i], "%s id %d", t, i);
            free(want);
            te_fixture *f = e ? &te2 : &te1;
            const int H = f->cfg.hidden_size, L = f->cfg.num_layers;
            const size_t plane = 77 * (size_t)H;
            float *all = malloc((size_t)(L + 1) * plane * sizeof *all), *last = malloc(plane * sizeof *last);
            float pooled[64];
            sd_clip_text_request req = {.all_hidden = all, .hidden = last, .layer = L, .final_norm = 1,
                                        .pooled = pooled};
            cr_assert_eq(sd_clip_text_forward(f->model, ids[e], 1, 77, &req, &err), 0, "%s", err.msg);
            for (int l = 0; l <= L; l++) {
                snprintf(t, sizeof t, "%s.te%d.hidden_states.%d", name, e + 1, l);
                check_ref(&ref, t, all + (size_t)l * plane, plane);
            }
            snprintf(t, sizeof t, "%s.te%d.last_hidden_state", name, e + 1);
            check_ref(&ref, t, last, plane);
            snprintf(t, sizeof t, e ? "%s.te2.text_embeds" : "%s.te1.pooler_output", name);
            check_ref(&ref, t, pooled, e ? (size_t)f->cfg.projection_dim : (size_t)H);
            free(all);
            free(last);
        }
    }
    cr_expect_eq(ncases, 4);
    sd_tokenizer_free(tok1);
    sd_tokenizer_free(tok2);
    te_close(&te1);
    te_close(&te2);
    st_close(&ref);
    cJSON_Delete(root);
}

/* ---- errors ---- */

static int config_error(const char *json, char *msg, size_t cap) {
    cJSON *cfg = cJSON_Parse(json);
    sd_clip_text_config c;
    sd_error err = {0};
    int rc = sd_clip_text_config_read(cfg, "config.json", &c, &err);
    snprintf(msg, cap, "%s", err.msg);
    cJSON_Delete(cfg);
    return rc;
}

Test(text_encoder_errors, bad_configs) {
    char msg[SD_ERROR_MSG_MAX];
    cr_expect_neq(config_error("{\"hidden_act\": \"relu\"}", msg, sizeof msg), 0);
    cr_expect(strstr(msg, "hidden_act") != NULL, "%s", msg);
    cr_expect_neq(config_error("{\"hidden_size\": 30, \"num_attention_heads\": 4}", msg, sizeof msg), 0);
    cr_expect(strstr(msg, "divisible") != NULL, "%s", msg);
    cr_expect_neq(config_error("{\"num_hidden_layers\": 0}", msg, sizeof msg), 0);
    cr_expect(strstr(msg, "num_hidden_layers") != NULL, "%s", msg);
    cr_expect_neq(config_error("{\"hidden_size\": \"big\"}", msg, sizeof msg), 0);
    cr_expect_eq(config_error("{}", msg, sizeof msg), 0); /* transformers' defaults */
}

/* A config that does not match the weights fails at load naming the tensor. */
Test(text_encoder_errors, shape_mismatch_and_bad_requests) {
    te_fixture f;
    te_open(&f, "tiny-sd15/text_encoder");
    sd_clip_text_config wrong = f.cfg;
    wrong.intermediate_size = 64;
    sd_binder b = {.w = f.w, .component = "text_encoder", .prefix = ""};
    sd_clip_text *m = NULL;
    sd_error err = {0};
    cr_expect_neq(sd_clip_text_load(&m, &wrong, &b, &err), 0);
    cr_expect_null(m);
    cr_expect(strstr(err.msg, "mlp.fc1.weight") != NULL, "%s", err.msg);

    int32_t ids[78] = {49406, 320, 49407};
    float out[78 * 32];
    sd_clip_text_request req = {.hidden = out, .layer = 4, .final_norm = 1};
    cr_expect_neq(sd_clip_text_forward(f.model, ids, 1, 78, &req, &err), 0); /* > max positions */
    ids[1] = 49408;
    cr_expect_neq(sd_clip_text_forward(f.model, ids, 1, 77, &req, &err), 0);
    cr_expect(strstr(err.msg, "outside the vocabulary") != NULL, "%s", err.msg);
    ids[1] = 320;
    req.layer = 5;
    cr_expect_neq(sd_clip_text_forward(f.model, ids, 1, 77, &req, &err), 0);
    int layer, norm;
    cr_expect_neq(sd_clip_skip_layer(&f.cfg, 0, &layer, &norm, &err), 0);
    cr_expect_neq(sd_clip_skip_layer(&f.cfg, 5, &layer, &norm, &err), 0);
    cr_expect_eq(sd_clip_skip_layer(&f.cfg, 4, &layer, &norm, &err), 0);
    cr_expect_eq(layer, 1);
    te_close(&f);
}
