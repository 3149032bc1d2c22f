/* text_encoder/tokenizer + normalize: every public tokenizer case of
 * refs/cases.json (prompt bytes from its UTF-8 hex) gives the normalised
 * text, the BPE strings and the ids of refs/tokenizer.safetensors exactly;
 * the error paths report instead of crashing. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "text_encoder/normalize.h"
#include "text_encoder/tokenizer.h"
#include "tests/support/test_support.h"

static sd_tokenizer *open_fixture_tokenizer(void) {
    tst_require_fixture("tiny-sd15/tokenizer/vocab.json");
    char *dir = tst_fixture_path("tiny-sd15/tokenizer");
    sd_tokenizer *tok = NULL;
    sd_error err = {0};
    int rc = sd_tokenizer_open(&tok, dir, &err);
    free(dir);
    cr_assert_eq(rc, 0, "sd_tokenizer_open: %s", err.msg);
    return tok;
}

static cJSON *load_cases(void) { return tst_load_json("refs/cases.json"); }

static char *hex_to_bytes(const char *hex, size_t *len) {
    size_t n = strlen(hex) / 2;
    char *out = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    out[n] = 0;
    *len = n;
    return out;
}

static const char *str_of(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    cr_assert(cJSON_IsString(v), "cases.json: '%s' missing", key);
    return v->valuestring;
}

Test(tokenizer, special_tokens_and_sizes) {
    sd_tokenizer *tok = open_fixture_tokenizer();
    cr_expect_eq(sd_tokenizer_bos(tok), 49406);
    cr_expect_eq(sd_tokenizer_eos(tok), 49407);
    cr_expect_eq(sd_tokenizer_pad(tok), 49407);
    cr_expect_eq(sd_tokenizer_max_length(tok), 77);
    cr_expect_eq(sd_tokenizer_vocab_size(tok), 49408);
    cr_expect_eq(sd_tokenizer_token_id(tok, ",</w>"), 267);
    cr_expect_str_eq(sd_tokenizer_token_str(tok, 320), "a</w>");
    sd_tokenizer_free(tok);
}

/* Every case: normalised text, BPE strings, untruncated count, ids. */
Test(tokenizer, all_fixture_cases_exact) {
    cJSON *root = load_cases();
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "tokenizer"), "cases");
    cr_assert(cJSON_GetArraySize(cases) == 29, "expected 29 tokenizer cases");
    st_file ref;
    tst_open_ref(&ref, "refs/tokenizer.safetensors");
    sd_tokenizer *tok = open_fixture_tokenizer();
    int64_t *all = tst_ref_i64(&ref, "all.input_ids_int32", NULL);
    int row = 0;
    for (const cJSON *c = cases->child; c; c = c->next, row++) {
        const char *name = str_of(c, "name");
        size_t len;
        char *prompt = hex_to_bytes(str_of(c, "prompt_utf8_hex"), &len);
        sd_error err = {0};

        char *norm = NULL;
        size_t bad = 99;
        cr_assert_eq(sd_clip_normalize_utf8(prompt, len, &norm, &bad, &err), 0, "%s", err.msg);
        cr_expect_str_eq(norm, str_of(c, "normalized_text"), "case %s: normalised text", name);
        cr_expect_eq(bad, 0u);
        free(norm);

        sd_ids toks = {0};
        cr_assert_eq(sd_tokenizer_tokenize(tok, prompt, len, &toks, NULL, &err), 0, "%s", err.msg);
        const cJSON *bpe = cJSON_GetObjectItemCaseSensitive(c, "bpe_tokens");
        cr_expect_eq((int)toks.n, cJSON_GetArraySize(bpe), "case %s: token count", name);
        cr_expect_eq((int)toks.n,
                     cJSON_GetObjectItemCaseSensitive(c, "n_tokens_untruncated")->valueint);
        int k = 0;
        for (const cJSON *b = bpe->child; b && k < (int)toks.n; b = b->next, k++)
            cr_expect_str_eq(sd_tokenizer_token_str(tok, toks.v[k]), b->valuestring,
                             "case %s: BPE token %d", name, k);
        sd_ids_free(&toks);

        int32_t ids[77];
        int n_tokens = -1, n_dropped = -1;
        cr_assert_eq(sd_tokenizer_encode(tok, prompt, ids, &n_tokens, &n_dropped, NULL, &err), 0, "%s",
                     err.msg);
        char tname[128];
        snprintf(tname, sizeof tname, "%s.input_ids", name);
        size_t n;
        int64_t *want = tst_ref_i64(&ref, tname, &n);
        cr_assert_eq(n, 77u);
        for (int i = 0; i < 77; i++) {
            cr_expect_eq(ids[i], want[i], "case %s: id[%d] = %d, want %lld", name, i, ids[i],
                         (long long)want[i]);
            cr_expect_eq(all[row * 77 + i], want[i]);
        }
        int truncated = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "truncated"));
        cr_expect_eq(n_dropped > 0, truncated, "case %s: truncation flag", name);
        cr_expect_eq(n_dropped, n_tokens > 75 ? n_tokens - 75 : 0);
        free(want);
        free(prompt);
    }
    free(all);
    sd_tokenizer_free(tok);
    st_close(&ref);
    cJSON_Delete(root);
}

/* The shipped copy in assets/tokenizer is the same tokenizer. */
Test(tokenizer, assets_copy_matches_fixture) {
    char *dir = tst_source_path("assets/tokenizer");
    sd_tokenizer *a = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_tokenizer_open(&a, dir, &err), 0, "%s", err.msg);
    free(dir);
    sd_tokenizer *b = open_fixture_tokenizer();
    const char *prompt = "masterpiece, best quality, (extremely detailed:1.2), café 🐱";
    int32_t x[77], y[77];
    cr_assert_eq(sd_tokenizer_encode(a, prompt, x, NULL, NULL, NULL, &err), 0);
    cr_assert_eq(sd_tokenizer_encode(b, prompt, y, NULL, NULL, NULL, &err), 0);
    cr_expect_eq(memcmp(x, y, sizeof x), 0);
    sd_tokenizer_free(a);
    sd_tokenizer_free(b);
}

/* A piece seen once is merged once; the cached result is identical. */
Test(tokenizer, bpe_cache_reuses_pieces) {
    sd_tokenizer *tok = open_fixture_tokenizer();
    sd_ids a = {0}, b = {0};
    sd_error err = {0};
    const char *p = "astronaut astronaut riding riding";
    cr_assert_eq(sd_tokenizer_tokenize(tok, p, strlen(p), &a, NULL, &err), 0);
    cr_expect_eq(sd_tokenizer_cache_entries(tok), 2u);
    cr_assert_eq(sd_tokenizer_tokenize(tok, p, strlen(p), &b, NULL, &err), 0);
    cr_expect_eq(sd_tokenizer_cache_entries(tok), 2u);
    cr_assert_eq(a.n, 4u);
    cr_expect_eq(a.v[0], 18376);
    cr_expect_eq(a.v[1], 18376);
    cr_expect_eq(a.v[2], 6765);
    cr_expect_eq(memcmp(a.v, b.v, a.n * sizeof *a.v), 0);
    sd_ids_free(&a);
    sd_ids_free(&b);
    sd_tokenizer_free(tok);
}

/* Hand-derived expectations for normalisation steps the fixtures touch only
 * lightly (ftfy + whitespace_clean + str.lower()). */
Test(tokenizer, normalisation_rules) {
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"fish &amp;amp; chips", "fish & chips"},
        {"a <b> &amp; c", "a <b> &amp; c"},              /* '<' disables entities */
        {"line one &amp;\n<i> &amp;\n&amp;", "line one & <i> &amp; &amp;"}, /* per line, sticky */
        {"&#65;&#x42;&#X43; &#59; &#xZZ;", "abc &#59; &#xzz;"},
        {"&EACUTE;T&Eacute;", "\xc3\xa9t\xc3\xa9"},
        {"\xef\xbc\xa1\xe3\x80\x80\xef\xbd\x82", "a b"},        /* fullwidth, ideographic space */
        {"\xc5\x89 \xef\xac\x85", "'n \xc5\xbft"},                /* ŉ -> ʼn -> 'n; ﬅ -> ſt */
        {"\xe2\x80\x98q\xe2\x80\x99 \xe2\x80\x9cq\xe2\x80\x9d", "'q' \"q\""},
        {"a\x1b[31mred\x1b[0m b", "ared b"},
        {"x\x01y\x7fz\xef\xbb\xbf", "xyz"},
        {"c\xc2\x93q\xc2\x94", "c\"q\""},                        /* C1 controls as cp1252 */
        {"\xce\xa3\xce\x91\xce\xa3 \xce\xa3", "\xcf\x83\xce\xb1\xcf\x82 \xcf\x83"}, /* final sigma */
        {"\xc4\xb0", "i\xcc\x87"},                                    /* İ -> i + U+0307 */
        {"e\xcc\x81", "\xc3\xa9"},                                    /* NFC */
        {" \t\xe2\x80\x83" "a \xc2\xa0\n b  ", "a b"},
        {"don\xc3\xa2\xe2\x82\xac\xe2\x84\xa2t", "don't"},           /* donâ€™t */
        {"\xc3\x83\xc2\xa9t\xc3\x83\xc2\xa9 \xf0\x9f\x90\xb1", "\xc3\xa9t\xc3\xa9 \xf0\x9f\x90\xb1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL;
        sd_error err = {0};
        cr_assert_eq(sd_clip_normalize_utf8(cases[i].in, strlen(cases[i].in), &out, NULL, &err), 0);
        cr_expect_str_eq(out, cases[i].out, "normalise case %zu", i);
        free(out);
    }
}

/* Ill-formed UTF-8 becomes U+FFFD (one per maximal subpart) and is counted. */
Test(tokenizer, invalid_utf8_replaced_and_reported) {
    static const struct {
        const char *in;
        const char *out;
        size_t bad;
    } cases[] = {
        {"a\xff" "b", "a\xef\xbf\xbd" "b", 1},
        {"\xe2\x82" "x", "\xef\xbf\xbd" "x", 1},         /* truncated 3-byte sequence */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 3}, /* surrogate: 3 subparts */
        {"\xf0\x9f\x90", "\xef\xbf\xbd", 1},
        {"ok", "ok", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL;
        size_t bad = 99;
        sd_error err = {0};
        cr_assert_eq(sd_clip_normalize_utf8(cases[i].in, strlen(cases[i].in), &out, &bad, &err), 0);
        cr_expect_str_eq(out, cases[i].out, "case %zu", i);
        cr_expect_eq(bad, cases[i].bad, "case %zu: %zu replacements", i, bad);
        free(out);
    }
    sd_tokenizer *tok = open_fixture_tokenizer();
    int32_t ids[77];
    size_t bad = 0;
    sd_error err = {0};
    cr_assert_eq(sd_tokenizer_encode(tok, "cat\xc3(", ids, NULL, NULL, &bad, &err), 0);
    cr_expect_eq(bad, 1u);
    cr_expect_eq(ids[1], 2368); /* cat</w> */
    sd_tokenizer_free(tok);
}

/* Special-token strings in the text map to their ids (HF's bpe cache). */
Test(tokenizer, special_strings_in_text) {
    sd_tokenizer *tok = open_fixture_tokenizer();
    sd_ids ids = {0};
    sd_error err = {0};
    const char *p = "a<|endoftext|>b <|STARTOFTEXT|>";
    cr_assert_eq(sd_tokenizer_tokenize(tok, p, strlen(p), &ids, NULL, &err), 0);
    cr_assert_eq(ids.n, 4u);
    cr_expect_eq(ids.v[1], 49407);
    cr_expect_eq(ids.v[3], 49406);
    sd_ids_free(&ids);
    sd_tokenizer_free(tok);
}

/* ---- error paths ---- */

static char *make_dir(void) { return tst_tmpdir(); }

static void write_text(const char *dir, const char *name, const char *text) {
    char *p = sd_path_join(dir, name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    free(p);
}

static void expect_open_fails(const char *dir, const char *needle) {
    sd_tokenizer *tok = NULL;
    sd_error err = {0};
    cr_expect_neq(sd_tokenizer_open(&tok, dir, &err), 0);
    cr_expect_null(tok);
    cr_expect(strstr(err.msg, needle) != NULL, "message '%s' should mention '%s'", err.msg, needle);
}

Test(tokenizer_errors, missing_folder_and_files) {
    expect_open_fails("/nonexistent/tokenizer", "not found");
    char *dir = make_dir();
    expect_open_fails(dir, "vocab.json");
    write_text(dir, "vocab.json", "{\"a\": 0}");
    expect_open_fails(dir, "merges.txt");
    free(dir);
}

Test(tokenizer_errors, malformed_files) {
    char *dir = make_dir();
    write_text(dir, "merges.txt", "#version: 0.2\na b\n");
    write_text(dir, "vocab.json", "{\"a\": 0,");
    expect_open_fails(dir, "not valid JSON");
    write_text(dir, "vocab.json", "{\"a\": \"zero\"}");
    expect_open_fails(dir, "expected a non-negative integer id");
    write_text(dir, "vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    expect_open_fails(dir, "<|startoftext|>"); /* no special tokens */
    write_text(dir, "vocab.json",
               "{\"a\": 0, \"b\": 1, \"ab\": 2, \"<|startoftext|>\": 3, \"<|endoftext|>\": 4}");
    write_text(dir, "merges.txt", "#version: 0.2\na b c\n");
    expect_open_fails(dir, "line 2: expected two");
    write_text(dir, "merges.txt", "");
    expect_open_fails(dir, "empty");
    write_text(dir, "merges.txt", "#version: 0.2\na b\n");
    write_text(dir, "special_tokens_map.json", "{\"pad_token\": \"<pad>\"}");
    expect_open_fails(dir, "pad_token");
    write_text(dir, "special_tokens_map.json", "{\"pad_token\": {\"content\": \"a\"}}");
    sd_tokenizer *tok = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_tokenizer_open(&tok, dir, &err), 0, "%s", err.msg);
    cr_expect_eq(sd_tokenizer_pad(tok), 0);
    sd_tokenizer_free(tok);
    free(dir);
}
