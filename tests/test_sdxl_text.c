/* text_encoder/sdxl_conditioning: SDXL's two-encoder prompt encoding against
 * sdxl/refs/text_encoders.safetensors (ids, ids_2, prompt_embeds = cat of
 * both penultimate hidden states, pooled = te2 text_embeds) and
 * sdxl/refs/encode_prompt.safetensors (negative None -> zeros, "" ->
 * encoded); A1111 chunks (pooled from the first chunk, emphasis per
 * encoder), clip skip, and the time ids of sdxl/refs/time_ids.safetensors.
 * Tolerances: text 1e-4 abs / 1e-5 of max; ids and time ids exact. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/weights.h"
#include "text_encoder/sdxl_conditioning.h"
#include "tests/support/test_support.h"

#define TE_ABS 1e-4
#define TE_REL 1e-5
#define SEQ 77

typedef struct sdxl_text {
    sd_weights *w[2];
    sd_clip_text_config cfg[2];
    sd_sdxl_encoders e;
} sdxl_text;

static sd_clip_text *open_encoder(const char *folder, sd_weights **w, sd_clip_text_config *cfg) {
    char rel[256];
    snprintf(rel, sizeof rel, "sdxl/tiny-sdxl/%s/config.json", folder);
    char *config = tst_fixture_path(rel);
    snprintf(rel, sizeof rel, "sdxl/tiny-sdxl/%s/model.safetensors", folder);
    char *weights = tst_fixture_path(rel);
    sd_error err = {0};
    cJSON *j = NULL;
    cr_assert_eq(sd_json_load(config, &j, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_clip_text_config_read(j, config, cfg, &err), 0, "%s", err.msg);
    cJSON_Delete(j);
    const char *paths[1] = {weights};
    cr_assert_eq(sd_weights_open(w, paths, 1, &err), 0, "%s", err.msg);
    sd_binder b = {.w = *w, .component = folder, .prefix = ""};
    sd_clip_text *m = NULL;
    cr_assert_eq(sd_clip_text_load(&m, cfg, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&b, &err), 0, "%s", err.msg);
    free(config);
    free(weights);
    return m;
}

static sd_tokenizer *open_tok(const char *folder) {
    char rel[128];
    snprintf(rel, sizeof rel, "sdxl/tiny-sdxl/%s", folder);
    char *dir = tst_fixture_path(rel);
    sd_tokenizer *t = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_tokenizer_open(&t, dir, &err), 0, "%s", err.msg);
    free(dir);
    return t;
}

static void sdxl_open(sdxl_text *s) {
    tst_require_fixture("sdxl/tiny-sdxl/text_encoder_2/model.safetensors");
    memset(s, 0, sizeof *s);
    s->e.te1 = open_encoder("text_encoder", &s->w[0], &s->cfg[0]);
    s->e.te2 = open_encoder("text_encoder_2", &s->w[1], &s->cfg[1]);
    s->e.tok1 = open_tok("tokenizer");
    s->e.tok2 = open_tok("tokenizer_2");
    sd_error err = {0};
    cr_assert_eq(sd_sdxl_encoders_check(&s->e, &err), 0, "%s", err.msg);
}

static void sdxl_close(sdxl_text *s) {
    sd_clip_text_free(s->e.te1);
    sd_clip_text_free(s->e.te2);
    sd_tokenizer_free(s->e.tok1);
    sd_tokenizer_free(s->e.tok2);
    sd_weights_free(s->w[0]);
    sd_weights_free(s->w[1]);
}

static void check_ref(const st_file *ref, const char *name, const float *got, size_t n) {
    size_t rn;
    float *want = tst_ref_f32(ref, name, &rn);
    cr_assert_eq(rn, n, "%s: %zu values, the reference has %zu", name, n, rn);
    tst_check_close(name, got, want, n, TE_ABS, TE_REL);
    free(want);
}

static const cJSON *cases_of(const cJSON *root, const char *section) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, section), "cases");
    cr_assert(cJSON_IsArray(c), "cases.json: %s.cases missing", section);
    return c;
}

static const char *str_of(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ids and ids_2 of both syntaxes (one 77-token chunk for prompts up to 75
 * tokens) against the reference rows. */
static void check_ids(const sdxl_text *s, const st_file *ref, const char *name, const char *text) {
    sd_error err = {0};
    for (int e = 0; e < 2; e++) {
        char t[160];
        snprintf(t, sizeof t, e ? "%s.input_ids_2" : "%s.input_ids", name);
        int64_t *want = tst_ref_i64(ref, t, NULL);
        sd_prompt_chunks ch;
        cr_assert_eq(sd_prompt_chunks_build(e ? s->e.tok2 : s->e.tok1, text, SD_PROMPT_SYNTAX_PLAIN, &ch, &err), 0,
                     "%s", err.msg);
        cr_assert_eq(ch.n_chunks, 1);
        for (int i = 0; i < SEQ; i++) cr_expect_eq(ch.ids[i], want[i], "%s id %d: %d vs %lld", t, i, ch.ids[i],
                                                     (long long)want[i]);
        sd_prompt_chunks_free(&ch);
        free(want);
    }
}

/* Every text_encoders case: ids, prompt_embeds and pooled through
 * sd_sdxl_encode in plain syntax, and in a1111 syntax for prompts that fit
 * one chunk (no syntax characters: the same result). */
Test(sdxl_text, encode_all_text_encoder_cases) {
    sdxl_text s;
    sdxl_open(&s);
    cJSON *root = tst_load_json("sdxl/refs/cases.json");
    st_file ref;
    tst_open_ref(&ref, "sdxl/refs/text_encoders.safetensors");
    cr_expect_eq(sd_sdxl_context_dim(&s.e), 40);
    cr_expect_eq(sd_sdxl_pooled_dim(&s.e), 20);
    int n = 0;
    for (const cJSON *c = cases_of(root, "text_encoders")->child; c; c = c->next, n++) {
        const char *name = str_of(c, "name"), *text = str_of(c, "text");
        const cJSON *count = cJSON_GetObjectItemCaseSensitive(c, "untruncated_token_count");
        check_ids(&s, &ref, name, text);
        for (int syn = 0; syn < 2; syn++) {
            if (syn == 1 && count->valueint > 75) continue; /* a1111 makes chunks: below */
            sd_text_cond tc;
            sd_error err = {0};
            cr_assert_eq(sd_sdxl_encode(&s.e, text, syn ? SD_PROMPT_SYNTAX_A1111 : SD_PROMPT_SYNTAX_PLAIN, 0, &tc,
                                        &err), 0, "%s: %s", name, err.msg);
            cr_assert_eq(tc.n_chunks, 1);
            cr_assert_eq(tc.chunk_len, SEQ);
            cr_assert_eq(tc.hidden, 40);
            cr_assert_eq(tc.pooled_dim, 20);
            char t[160];
            snprintf(t, sizeof t, "%s.prompt_embeds", name);
            check_ref(&ref, t, tc.emb, (size_t)SEQ * 40);
            snprintf(t, sizeof t, "%s.te2.text_embeds", name);
            check_ref(&ref, t, tc.pooled, 20);
            cr_expect_eq(tc.n_tokens, count->valueint, "%s tokens", name);
            if (syn == 0) cr_expect_eq(tc.n_dropped, count->valueint > 75 ? count->valueint - 75 : 0);
            sd_text_cond_free(&tc);
        }
    }
    cr_expect_eq(n, 4);
    st_close(&ref);
    cJSON_Delete(root);
    sdxl_close(&s);
}

/* Clip skip: 0, 1 and 2 = the penultimate layer (SDXL's default); 3 =
 * hidden_states[-3] = layer 1 of both encoders; beyond L is an error. */
Test(sdxl_text, clip_skip) {
    sdxl_text s;
    sdxl_open(&s);
    st_file ref;
    tst_open_ref(&ref, "sdxl/refs/text_encoders.safetensors");
    sd_error err = {0};
    for (int k = 0; k <= 2; k++) {
        sd_text_cond tc;
        cr_assert_eq(sd_sdxl_encode(&s.e, "a photo of a cat", SD_PROMPT_SYNTAX_PLAIN, k, &tc, &err), 0, "%s", err.msg);
        check_ref(&ref, "cat.prompt_embeds", tc.emb, (size_t)SEQ * 40);
        sd_text_cond_free(&tc);
    }
    sd_text_cond tc;
    cr_assert_eq(sd_sdxl_encode(&s.e, "a photo of a cat", SD_PROMPT_SYNTAX_PLAIN, 3, &tc, &err), 0, "%s", err.msg);
    float *h1 = tst_ref_f32(&ref, "cat.te1.hidden_states.1", NULL), *h2 = tst_ref_f32(&ref, "cat.te2.hidden_states.1", NULL);
    float *want = malloc((size_t)SEQ * 40 * sizeof *want);
    for (int r = 0; r < SEQ; r++) {
        memcpy(want + r * 40, h1 + r * 16, 16 * sizeof(float));
        memcpy(want + r * 40 + 16, h2 + r * 24, 24 * sizeof(float));
    }
    tst_check_close("clip skip 3 = cat(hidden_states.1)", tc.emb, want, (size_t)SEQ * 40, TE_ABS, TE_REL);
    check_ref(&ref, "cat.te2.text_embeds", tc.pooled, 20); /* pooled ignores clip skip */
    sd_text_cond_free(&tc);
    free(h1);
    free(h2);
    free(want);
    cr_expect_neq(sd_sdxl_encode(&s.e, "x", SD_PROMPT_SYNTAX_PLAIN, 4, &tc, &err), 0);
    cr_expect(strstr(err.msg, "clip skip 4") != NULL, "%s", err.msg);
    int layer;
    cr_expect_neq(sd_sdxl_clip_skip_layer(&s.cfg[0], -1, &layer, &err), 0);
    st_close(&ref);
    sdxl_close(&s);
}

/* StableDiffusionXLPipeline.encode_prompt: the positive embedding, and the
 * negative: None -> zeros (sd_sdxl_zero_cond), a string (also "") encoded. */
Test(sdxl_text, encode_prompt_cases) {
    sdxl_text s;
    sdxl_open(&s);
    cJSON *root = tst_load_json("sdxl/refs/cases.json");
    st_file ref;
    tst_open_ref(&ref, "sdxl/refs/encode_prompt.safetensors");
    int n = 0;
    for (const cJSON *c = cases_of(root, "encode_prompt")->child; c; c = c->next, n++) {
        const char *name = str_of(c, "name"), *prompt = str_of(c, "prompt"), *neg = str_of(c, "negative_prompt");
        const cJSON *zeros = cJSON_GetObjectItemCaseSensitive(c, "negative_is_zeros");
        cr_assert(prompt != NULL);
        cr_expect_eq(neg == NULL, cJSON_IsTrue(zeros), "%s: None <-> zeros", name);
        sd_error err = {0};
        sd_text_cond pos, negc;
        cr_assert_eq(sd_sdxl_encode(&s.e, prompt, SD_PROMPT_SYNTAX_PLAIN, 0, &pos, &err), 0, "%s", err.msg);
        if (neg)
            cr_assert_eq(sd_sdxl_encode(&s.e, neg, SD_PROMPT_SYNTAX_PLAIN, 0, &negc, &err), 0, "%s", err.msg);
        else
            cr_assert_eq(sd_sdxl_zero_cond(pos.n_chunks, pos.chunk_len, pos.hidden, pos.pooled_dim, &negc, &err), 0,
                         "%s", err.msg);
        char t[160];
        snprintf(t, sizeof t, "%s.prompt_embeds", name);
        check_ref(&ref, t, pos.emb, (size_t)SEQ * 40);
        snprintf(t, sizeof t, "%s.pooled_prompt_embeds", name);
        check_ref(&ref, t, pos.pooled, 20);
        snprintf(t, sizeof t, "%s.negative_prompt_embeds", name);
        check_ref(&ref, t, negc.emb, (size_t)SEQ * 40);
        snprintf(t, sizeof t, "%s.negative_pooled_prompt_embeds", name);
        check_ref(&ref, t, negc.pooled, 20);
        if (!neg) {
            float *r = tst_ref_f32(&ref, t, NULL);
            for (int i = 0; i < 20; i++) cr_expect_eq(r[i], 0.0f, "%s is zeros in the reference", t);
            free(r);
        }
        sd_text_cond_free(&pos);
        sd_text_cond_free(&negc);
    }
    cr_expect_eq(n, 4);
    st_close(&ref);
    cJSON_Delete(root);
    sdxl_close(&s);
}

/* A1111 chunks of a 120-token prompt: both tokenizers chunk alike (ids_2 =
 * ids with 0 after the first EOS); every chunk's rows are cat(te1, te2
 * penultimate) of that chunk's ids; pooled is te2's of the FIRST chunk. */
Test(sdxl_text, a1111_long_prompt_chunks) {
    sdxl_text s;
    sdxl_open(&s);
    cJSON *root = tst_load_json("sdxl/refs/cases.json");
    const char *text = NULL;
    for (const cJSON *c = cases_of(root, "text_encoders")->child; c; c = c->next)
        if (!strcmp(str_of(c, "name"), "long_over_77")) text = str_of(c, "text");
    cr_assert(text != NULL);
    sd_error err = {0};
    sd_prompt_chunks c1, c2;
    cr_assert_eq(sd_prompt_chunks_build(s.e.tok1, text, SD_PROMPT_SYNTAX_A1111, &c1, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_prompt_chunks_build(s.e.tok2, text, SD_PROMPT_SYNTAX_A1111, &c2, &err), 0, "%s", err.msg);
    cr_assert_eq(c1.n_chunks, 2);
    cr_assert_eq(c2.n_chunks, 2);
    for (int k = 0; k < 2; k++) {
        int eos_seen = 0;
        for (int i = 0; i < SEQ; i++) {
            int32_t a = c1.ids[k * SEQ + i], b = c2.ids[k * SEQ + i];
            cr_expect_eq(b, eos_seen ? 0 : a, "chunk %d id %d", k, i);
            eos_seen |= a == 49407;
        }
    }
    sd_text_cond tc;
    cr_assert_eq(sd_sdxl_encode(&s.e, text, SD_PROMPT_SYNTAX_A1111, 0, &tc, &err), 0, "%s", err.msg);
    cr_assert_eq(tc.n_chunks, 2);
    cr_expect_eq(tc.n_tokens, 120);
    cr_expect_eq(tc.n_dropped, 0);
    float h1[SEQ * 16], h2[SEQ * 24], pooled[20], want[SEQ * 40];
    for (int k = 0; k < 2; k++) {
        sd_clip_text_request r1 = {.hidden = h1, .layer = 2}, r2 = {.hidden = h2, .layer = 2, .pooled = pooled};
        cr_assert_eq(sd_clip_text_forward(s.e.te1, c1.ids + k * SEQ, 1, SEQ, &r1, &err), 0, "%s", err.msg);
        cr_assert_eq(sd_clip_text_forward(s.e.te2, c2.ids + k * SEQ, 1, SEQ, &r2, &err), 0, "%s", err.msg);
        for (int r = 0; r < SEQ; r++) {
            memcpy(want + r * 40, h1 + r * 16, 16 * sizeof(float));
            memcpy(want + r * 40 + 16, h2 + r * 24, 24 * sizeof(float));
        }
        char what[64];
        snprintf(what, sizeof what, "a1111 chunk %d", k);
        tst_check_close(what, tc.emb + (size_t)k * SEQ * 40, want, (size_t)SEQ * 40, 1e-5, 0);
        if (k == 0) tst_check_close("a1111 pooled = first chunk's", tc.pooled, pooled, 20, 1e-6, 0);
    }
    sd_text_cond_free(&tc);
    sd_prompt_chunks_free(&c1);
    sd_prompt_chunks_free(&c2);
    cJSON_Delete(root);
    sdxl_close(&s);
}

/* Emphasis is applied to each encoder's output separately (A1111 runs one
 * FrozenCLIPEmbedderWithCustomWords per encoder): each part keeps its own
 * mean; the pooled embedding is not weighted. */
Test(sdxl_text, a1111_emphasis_per_encoder) {
    sdxl_text s;
    sdxl_open(&s);
    sd_error err = {0};
    sd_text_cond plain, weighted;
    cr_assert_eq(sd_sdxl_encode(&s.e, "a photo of a cat", SD_PROMPT_SYNTAX_A1111, 0, &plain, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_sdxl_encode(&s.e, "a photo of a (cat:1.5)", SD_PROMPT_SYNTAX_A1111, 0, &weighted, &err), 0, "%s",
                 err.msg);
    tst_check_close("pooled unweighted", weighted.pooled, plain.pooled, 20, 1e-6, 0);
    double m[2][2] = {{0}}, mag[2] = {0}; /* [plain|weighted][te1|te2] */
    double maxdiff = 0;
    for (int r = 0; r < SEQ; r++)
        for (int j = 0; j < 40; j++) {
            m[0][j >= 16] += plain.emb[r * 40 + j];
            m[1][j >= 16] += weighted.emb[r * 40 + j];
            mag[j >= 16] += fabs(plain.emb[r * 40 + j]);
            maxdiff = fmax(maxdiff, fabs(plain.emb[r * 40 + j] - weighted.emb[r * 40 + j]));
        }
    cr_expect_gt(maxdiff, 1e-2, "emphasis changed nothing");
    for (int e = 0; e < 2; e++)
        cr_expect(fabs(m[0][e] - m[1][e]) <= 1e-5 * mag[e], "encoder %d: sum %.7g before, %.7g after", e + 1,
                  m[0][e], m[1][e]);
    sd_text_cond_free(&plain);
    sd_text_cond_free(&weighted);
    sdxl_close(&s);
}

/* _get_add_time_ids for every time_ids case: exact. */
Test(sdxl_text, time_ids) {
    cJSON *root = tst_load_json("sdxl/refs/cases.json");
    st_file ref;
    tst_open_ref(&ref, "sdxl/refs/time_ids.safetensors");
    int n = 0;
    for (const cJSON *c = cases_of(root, "time_ids")->child; c; c = c->next, n++) {
        const char *name = str_of(c, "name");
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(c, "original_size");
        const cJSON *cr = cJSON_GetObjectItemCaseSensitive(c, "crops_coords_top_left");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "target_size");
        float got[SD_SDXL_N_TIME_IDS];
        sd_sdxl_time_ids(cJSON_GetArrayItem(o, 0)->valueint, cJSON_GetArrayItem(o, 1)->valueint,
                         cJSON_GetArrayItem(cr, 0)->valueint, cJSON_GetArrayItem(cr, 1)->valueint,
                         cJSON_GetArrayItem(t, 0)->valueint, cJSON_GetArrayItem(t, 1)->valueint, got);
        char tn[128];
        snprintf(tn, sizeof tn, "%s.time_ids", name);
        size_t rn;
        float *want = tst_ref_f32(&ref, tn, &rn);
        cr_assert_eq(rn, SD_SDXL_N_TIME_IDS);
        for (int i = 0; i < SD_SDXL_N_TIME_IDS; i++) cr_expect_eq(got[i], want[i], "%s[%d]: %g vs %g", tn, i, got[i], want[i]);
        free(want);
    }
    cr_expect_eq(n, 4);
    st_close(&ref);
    cJSON_Delete(root);
}

Test(sdxl_text, errors) {
    sdxl_text s;
    sdxl_open(&s);
    sd_error err = {0};
    sd_sdxl_encoders swapped = {s.e.tok1, s.e.tok2, s.e.te2, s.e.te1}; /* te2 slot has no projection */
    sd_text_cond tc;
    cr_expect_neq(sd_sdxl_encode(&swapped, "x", SD_PROMPT_SYNTAX_PLAIN, 0, &tc, &err), 0);
    cr_expect(strstr(err.msg, "text_projection") != NULL, "%s", err.msg);
    sd_sdxl_encoders missing = {s.e.tok1, NULL, s.e.te1, s.e.te2};
    cr_expect_neq(sd_sdxl_encoders_check(&missing, &err), 0);
    cr_expect(strstr(err.msg, "tokenizer_2") != NULL, "%s", err.msg);
    cr_expect_neq(sd_sdxl_zero_cond(0, 77, 40, 20, &tc, &err), 0);
    sdxl_close(&s);
}
