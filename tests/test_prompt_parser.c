/* text_encoder/prompt_parser + the a1111 side of conditioning: expectations
 * derived by hand from A1111's rules (modules/prompt_parser.py
 * parse_prompt_attention, sd_hijack_clip tokenize_line / EmphasisOriginal),
 * since no reference tensors exist for them; plus plain == a1111 on the
 * fixture prompts without syntax. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/weights.h"
#include "text_encoder/clip_text.h"
#include "text_encoder/conditioning.h"
#include "text_encoder/prompt_parser.h"
#include "text_encoder/tokenizer.h"
#include "tests/support/test_support.h"

/* ------------------------------------------------------------ the parser */

typedef struct want_piece {
    const char *text;
    double weight;
    int is_break;
} want_piece;

static void expect_parse(const char *prompt, const want_piece *want, int n) {
    sd_prompt_parsed p;
    sd_error err = {0};
    cr_assert_eq(sd_prompt_parse_a1111(prompt, &p, &err), 0, "%s", err.msg);
    cr_expect_eq(p.n, n, "'%s': %d pieces, want %d", prompt, p.n, n);
    for (int i = 0; i < p.n && i < n; i++) {
        cr_expect_str_eq(p.pieces[i].text, want[i].text, "'%s' piece %d", prompt, i);
        cr_expect(p.pieces[i].weight == want[i].weight, "'%s' piece %d weight %.17g, want %.17g", prompt, i,
                  p.pieces[i].weight, want[i].weight);
        cr_expect_eq(p.pieces[i].is_break, want[i].is_break, "'%s' piece %d break flag", prompt, i);
    }
    sd_prompt_parsed_free(&p);
}

#define EXPECT(prompt, ...)                                                    \
    do {                                                                       \
        const want_piece w_[] = {__VA_ARGS__};                                 \
        expect_parse(prompt, w_, (int)(sizeof w_ / sizeof w_[0]));             \
    } while (0)

Test(prompt_parser, weights) {
    EXPECT("a (b) c", {"a ", 1.0, 0}, {"b", 1.1, 0}, {" c", 1.0, 0});
    EXPECT("[b]", {"b", 1.0 / 1.1, 0});
    EXPECT("(b:1.3)", {"b", 1.3, 0});
    EXPECT("( b : 0.5 )", {" b ", 0.5, 0});
    EXPECT("(b:-1)", {"b", -1.0, 0});
    EXPECT("(b:.5) (c:2.)", {"b", 0.5, 0}, {" ", 1.0, 0}, {"c", 2.0, 0});
    EXPECT("(b:+1.25)", {"b", 1.25, 0});
    EXPECT("plain text, no syntax", {"plain text, no syntax", 1.0, 0});
    EXPECT("", {"", 1.0, 0});
}

Test(prompt_parser, nesting_multiplies_in_closing_order) {
    EXPECT("((b))", {"b", 1.1 * 1.1, 0});
    EXPECT("(((b)))", {"b", 1.1 * 1.1 * 1.1, 0});
    EXPECT("((b:1.5))", {"b", 1.5 * 1.1, 0});
    EXPECT("[(b)]", {"b", 1.1 * (1.0 / 1.1), 0});
    EXPECT("(a [b] c)", {"a ", 1.1, 0}, {"b", (1.0 / 1.1) * 1.1, 0}, {" c", 1.1, 0});
    EXPECT("(a (b:2) c:0.5)", {"a ", 0.5, 0}, {"b", 2.0 * 0.5, 0}, {" c", 0.5, 0});
    /* equal neighbours merge: (a)(b) is one piece */
    EXPECT("(a)(b)", {"ab", 1.1, 0});
}

Test(prompt_parser, escapes_and_colons) {
    EXPECT("\\(b\\)", {"(b)", 1.0, 0});
    EXPECT("\\[b\\]", {"[b]", 1.0, 0});
    EXPECT("a \\\\ b", {"a \\ b", 1.0, 0});
    EXPECT("paths\\back", {"pathsback", 1.0, 0}); /* a lone backslash is dropped */
    EXPECT("(\\(b\\))", {"(b)", 1.1, 0});
    EXPECT("a:b", {"a:b", 1.0, 0});
    EXPECT("time 12:30", {"time 12:30", 1.0, 0});
}

Test(prompt_parser, unbalanced_brackets_as_a1111) {
    EXPECT("(a", {"a", 1.1, 0});
    EXPECT("((a", {"a", 1.1 * 1.1, 0});
    EXPECT("[a", {"a", 1.0 / 1.1, 0});
    EXPECT("(a [b", {"a ", 1.1, 0}, {"b", 1.1 * (1.0 / 1.1), 0});
    EXPECT("a)", {"a)", 1.0, 0});
    EXPECT("a] b", {"a] b", 1.0, 0});
    EXPECT("a:1.2)", {"a:1.2)", 1.0, 0});
    EXPECT("x (a:1.2.3)", {"x ", 1.0, 0}, {"a:1.2.3)", 1.1, 0}); /* bad number: literal, ( left open */
}

Test(prompt_parser, breaks) {
    EXPECT("a BREAK b", {"a", 1.0, 0}, {"BREAK", -1.0, 1}, {"b", 1.0, 0});
    EXPECT("a,BREAK,b", {"a,", 1.0, 0}, {"BREAK", -1.0, 1}, {",b", 1.0, 0});
    EXPECT("BREAK", {"", 1.0, 0}, {"BREAK", -1.0, 1}, {"", 1.0, 0});
    EXPECT("aBREAK b", {"aBREAK b", 1.0, 0});
    EXPECT("a BREAKb", {"a BREAKb", 1.0, 0});
    EXPECT("a break b", {"a break b", 1.0, 0});
    EXPECT("a\tBREAK\n b", {"a", 1.0, 0}, {"BREAK", -1.0, 1}, {"b", 1.0, 0});
    /* inside brackets the marker is multiplied and becomes plain text */
    EXPECT("(a BREAK b)", {"a", 1.1, 0}, {"BREAK", -1.1, 0}, {"b", 1.1, 0});
}

/* ------------------------------------------------------- chunks and ids */

static sd_tokenizer *open_tokenizer(void) {
    tst_require_fixture("tiny-sd15/tokenizer/vocab.json");
    char *dir = tst_fixture_path("tiny-sd15/tokenizer");
    sd_tokenizer *tok = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_tokenizer_open(&tok, dir, &err), 0, "%s", err.msg);
    free(dir);
    return tok;
}

#define CAT 2368
#define DOG 1929
#define COMMA 267
#define BOS 49406
#define EOS 49407

static char *repeat_words(const char *first, int n1, const char *mid, const char *second, int n2) {
    size_t cap = (size_t)(n1 + n2) * 8 + 64;
    char *s = malloc(cap);
    s[0] = 0;
    for (int i = 0; i < n1; i++) strcat(strcat(s, first), " ");
    strcat(s, mid);
    for (int i = 0; i < n2; i++) strcat(strcat(s, " "), second);
    return s;
}

static sd_prompt_chunks build(sd_tokenizer *tok, const char *prompt, sd_prompt_syntax syntax) {
    sd_prompt_chunks ch;
    sd_error err = {0};
    cr_assert_eq(sd_prompt_chunks_build(tok, prompt, syntax, &ch, &err), 0, "%s", err.msg);
    cr_assert_eq(ch.chunk_len, 77);
    return ch;
}

/* Chunk c holds BOS, `n` copies of tokens per the callback..., EOS, pad. */
static void expect_chunk(const sd_prompt_chunks *ch, int c, const int32_t *body, int n) {
    const int32_t *ids = ch->ids + c * 77;
    cr_expect_eq(ids[0], BOS, "chunk %d: BOS", c);
    for (int i = 0; i < n; i++) cr_expect_eq(ids[1 + i], body[i], "chunk %d: token %d", c, i);
    for (int i = 1 + n; i < 77; i++) cr_expect_eq(ids[i], EOS, "chunk %d: EOS/pad at %d", c, i);
}

Test(prompt_chunks, exactly_75_and_76_tokens) {
    sd_tokenizer *tok = open_tokenizer();
    int32_t cats[80];
    for (int i = 0; i < 80; i++) cats[i] = CAT;
    char *p75 = repeat_words("cat", 75, "", "", 0), *p76 = repeat_words("cat", 76, "", "", 0);
    sd_prompt_chunks a = build(tok, p75, SD_PROMPT_SYNTAX_A1111);
    cr_expect_eq(a.n_chunks, 1);
    cr_expect_eq(a.n_tokens, 75);
    expect_chunk(&a, 0, cats, 75);
    sd_prompt_chunks b = build(tok, p76, SD_PROMPT_SYNTAX_A1111);
    cr_expect_eq(b.n_chunks, 2);
    cr_expect_eq(b.n_dropped, 0);
    expect_chunk(&b, 0, cats, 75);
    expect_chunk(&b, 1, cats, 1);
    /* plain cuts at 75 and reports the dropped token */
    sd_prompt_chunks c = build(tok, p76, SD_PROMPT_SYNTAX_PLAIN);
    cr_expect_eq(c.n_chunks, 1);
    cr_expect_eq(c.n_dropped, 1);
    cr_expect_eq(c.n_tokens, 76);
    expect_chunk(&c, 0, cats, 75);
    sd_prompt_chunks_free(&a);
    sd_prompt_chunks_free(&b);
    sd_prompt_chunks_free(&c);
    free(p75);
    free(p76);
    sd_tokenizer_free(tok);
}

/* 70 cats, a comma, 10 dogs: the 76th token finds the comma 5 tokens back
 * (<= 20): chunk 1 = 70 cats + comma, chunk 2 = the 10 dogs. */
Test(prompt_chunks, comma_back_off_within_20) {
    sd_tokenizer *tok = open_tokenizer();
    char *p = repeat_words("cat", 69, "cat,", "dog", 10);
    sd_prompt_chunks ch = build(tok, p, SD_PROMPT_SYNTAX_A1111);
    int32_t first[71], dogs[10];
    for (int i = 0; i < 70; i++) first[i] = CAT;
    first[70] = COMMA;
    for (int i = 0; i < 10; i++) dogs[i] = DOG;
    cr_assert_eq(ch.n_chunks, 2);
    cr_expect_eq(ch.n_tokens, 81);
    expect_chunk(&ch, 0, first, 71);
    expect_chunk(&ch, 1, dogs, 10);
    sd_prompt_chunks_free(&ch);
    free(p);
    sd_tokenizer_free(tok);
}

/* 50 cats, a comma, 30 dogs: the comma is 25 tokens back (> 20), so the
 * chunk is cut hard at 75: 50 cats + comma + 24 dogs, then 6 dogs. */
Test(prompt_chunks, comma_too_far_back_hard_cut) {
    sd_tokenizer *tok = open_tokenizer();
    char *p = repeat_words("cat", 49, "cat,", "dog", 30);
    sd_prompt_chunks ch = build(tok, p, SD_PROMPT_SYNTAX_A1111);
    int32_t first[75], dogs[6];
    for (int i = 0; i < 50; i++) first[i] = CAT;
    first[50] = COMMA;
    for (int i = 51; i < 75; i++) first[i] = DOG;
    for (int i = 0; i < 6; i++) dogs[i] = DOG;
    cr_assert_eq(ch.n_chunks, 2);
    expect_chunk(&ch, 0, first, 75);
    expect_chunk(&ch, 1, dogs, 6);
    sd_prompt_chunks_free(&ch);
    free(p);
    sd_tokenizer_free(tok);
}

Test(prompt_chunks, break_and_empty) {
    sd_tokenizer *tok = open_tokenizer();
    int32_t cat[1] = {CAT}, dog[1] = {DOG};
    sd_prompt_chunks a = build(tok, "cat BREAK dog", SD_PROMPT_SYNTAX_A1111);
    cr_assert_eq(a.n_chunks, 2);
    expect_chunk(&a, 0, cat, 1);
    expect_chunk(&a, 1, dog, 1);
    sd_prompt_chunks b = build(tok, "", SD_PROMPT_SYNTAX_A1111);
    cr_assert_eq(b.n_chunks, 1);
    expect_chunk(&b, 0, NULL, 0);
    sd_prompt_chunks c = build(tok, "BREAK cat", SD_PROMPT_SYNTAX_A1111); /* BREAK first: an empty chunk */
    cr_assert_eq(c.n_chunks, 2);
    expect_chunk(&c, 0, NULL, 0);
    expect_chunk(&c, 1, cat, 1);
    sd_prompt_chunks d = build(tok, "cat BREAK", SD_PROMPT_SYNTAX_A1111); /* nothing after: no extra chunk */
    cr_assert_eq(d.n_chunks, 1);
    sd_prompt_chunks_free(&a);
    sd_prompt_chunks_free(&b);
    sd_prompt_chunks_free(&c);
    sd_prompt_chunks_free(&d);
    sd_tokenizer_free(tok);
}

Test(prompt_chunks, token_weights) {
    sd_tokenizer *tok = open_tokenizer();
    sd_prompt_chunks ch = build(tok, "a (cat:1.5) [dog]", SD_PROMPT_SYNTAX_A1111);
    cr_assert_eq(ch.n_chunks, 1);
    const int32_t body[3] = {320, CAT, DOG};
    expect_chunk(&ch, 0, body, 3);
    const float want[6] = {1.0f, 1.0f, 1.5f, (float)(1.0 / 1.1), 1.0f, 1.0f};
    for (int i = 0; i < 6; i++) cr_expect(ch.weights[i] == want[i], "weight %d = %g", i, ch.weights[i]);
    for (int i = 6; i < 77; i++) cr_expect(ch.weights[i] == 1.0f);
    sd_prompt_chunks_free(&ch);
    /* 100 x "cat," = 200 tokens.  Chunk 0 fills with 75 tokens (cat first);
     * token 76 is a comma, which never backs off, so chunk 1 starts with it;
     * when chunk 1 is full its last token is a comma: nothing moves (the
     * back-off relocates zero tokens); chunk 2 gets the last 50. */
    char *p = malloc(600);
    p[0] = 0;
    for (int i = 0; i < 100; i++) strcat(p, "cat, ");
    ch = build(tok, p, SD_PROMPT_SYNTAX_A1111);
    cr_expect_eq(ch.n_tokens, 200);
    cr_assert_eq(ch.n_chunks, 3);
    int32_t alt[200];
    for (int i = 0; i < 200; i++) alt[i] = i % 2 ? COMMA : CAT;
    expect_chunk(&ch, 0, alt, 75);
    expect_chunk(&ch, 1, alt + 75, 75);
    expect_chunk(&ch, 2, alt + 150, 50);
    free(p);
    sd_prompt_chunks_free(&ch);
    sd_tokenizer_free(tok);
}

/* ----------------------------------------------------------- embeddings */

typedef struct te_fixture {
    sd_weights *w;
    sd_clip_text *model;
    sd_tokenizer *tok;
} te_fixture;

static void te_open(te_fixture *f) {
    tst_require_fixture("tiny-sd15/text_encoder/model.safetensors");
    char *weights = tst_fixture_path("tiny-sd15/text_encoder/model.safetensors");
    char *config = tst_fixture_path("tiny-sd15/text_encoder/config.json");
    sd_error err = {0};
    cJSON *cfg = NULL;
    sd_clip_text_config c;
    cr_assert_eq(sd_json_load(config, &cfg, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_clip_text_config_read(cfg, config, &c, &err), 0, "%s", err.msg);
    cJSON_Delete(cfg);
    const char *paths[1] = {weights};
    cr_assert_eq(sd_weights_open(&f->w, paths, 1, &err), 0, "%s", err.msg);
    sd_binder b = {.w = f->w, .component = "text_encoder", .prefix = ""};
    cr_assert_eq(sd_clip_text_load(&f->model, &c, &b, &err), 0, "%s", err.msg);
    f->tok = open_tokenizer();
    free(weights);
    free(config);
}

static void te_close(te_fixture *f) {
    sd_clip_text_free(f->model);
    sd_weights_free(f->w);
    sd_tokenizer_free(f->tok);
}

static sd_text_cond encode(te_fixture *f, const char *prompt, sd_prompt_syntax syntax, int clip_skip) {
    sd_text_cond tc;
    sd_error err = {0};
    cr_assert_eq(sd_conditioning_encode(f->tok, f->model, prompt, syntax, clip_skip, &tc, &err), 0, "%s",
                 err.msg);
    return tc;
}

static cJSON *load_cases(void) { return tst_load_json("refs/cases.json"); }

/* Every fixture prompt (tokenizer and pipeline cases) without A1111 syntax
 * and <= 75 tokens: same ids and bit-identical embeddings in both modes, at
 * clip skip 1 (and 2 for the pipeline prompts). */
Test(prompt_embeddings, plain_equals_a1111_without_syntax) {
    cJSON *root = load_cases();
    te_fixture f;
    te_open(&f);
    int compared = 0;
    static const char *const sections[] = {"tokenizer", "pipelines"};
    static const char *const keys[] = {"prompt", "negative_prompt"};
    for (int s = 0; s < 2; s++) {
        const cJSON *cases = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, sections[s]), "cases");
        for (const cJSON *c = cases->child; c; c = c->next)
            for (int k = 0; k < 2; k++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, keys[k]);
                if (!cJSON_IsString(v)) continue;
                const char *prompt = v->valuestring;
                if (strpbrk(prompt, "()[]\\") || strstr(prompt, "BREAK")) continue;
                sd_prompt_chunks plain = build(f.tok, prompt, SD_PROMPT_SYNTAX_PLAIN);
                if (plain.n_tokens > 75) {
                    sd_prompt_chunks_free(&plain);
                    continue;
                }
                sd_prompt_chunks a = build(f.tok, prompt, SD_PROMPT_SYNTAX_A1111);
                cr_assert_eq(a.n_chunks, 1, "'%s'", prompt);
                cr_expect_eq(memcmp(a.ids, plain.ids, 77 * sizeof *a.ids), 0, "'%s': ids differ", prompt);
                for (int skip = 1; skip <= (s == 1 ? 2 : 1); skip++) {
                    sd_text_cond x = encode(&f, prompt, SD_PROMPT_SYNTAX_PLAIN, skip);
                    sd_text_cond y = encode(&f, prompt, SD_PROMPT_SYNTAX_A1111, skip);
                    cr_expect_eq(memcmp(x.emb, y.emb, 77 * 32 * sizeof *x.emb), 0, "'%s' clip skip %d", prompt,
                                 skip);
                    sd_text_cond_free(&x);
                    sd_text_cond_free(&y);
                }
                sd_prompt_chunks_free(&a);
                sd_prompt_chunks_free(&plain);
                compared++;
            }
    }
    cr_expect_geq(compared, 30, "only %d prompts compared", compared);
    te_close(&f);
    cJSON_Delete(root);
}

/* "a (cat:1.5) dog": the plain embedding of "a cat dog", row of "cat"
 * times 1.5, then everything times mean(before) / mean(after). */
Test(prompt_embeddings, emphasis_original_by_hand) {
    te_fixture f;
    te_open(&f);
    sd_text_cond plain = encode(&f, "a cat dog", SD_PROMPT_SYNTAX_PLAIN, 1);
    sd_text_cond got = encode(&f, "a (cat:1.5) dog", SD_PROMPT_SYNTAX_A1111, 1);
    const int H = 32;
    float *want = malloc(77 * H * sizeof *want);
    double before = 0, after = 0;
    for (int i = 0; i < 77 * H; i++) before += plain.emb[i];
    for (int r = 0; r < 77; r++)
        for (int j = 0; j < H; j++) {
            want[r * H + j] = plain.emb[r * H + j] * (r == 2 ? 1.5f : 1.0f);
            after += want[r * H + j];
        }
    float ratio = (float)(before / (77.0 * H)) / (float)(after / (77.0 * H));
    cr_expect(fabsf(ratio - 1.0f) > 1e-4f, "the test needs a ratio != 1 (got %g)", ratio);
    for (int i = 0; i < 77 * H; i++) want[i] *= ratio;
    tst_check_close("emphasis", got.emb, want, 77 * H, 1e-6, 0);
    /* the mean is restored */
    double mean_got = 0;
    for (int i = 0; i < 77 * H; i++) mean_got += got.emb[i];
    cr_expect(fabs(mean_got - before) < 1e-3, "mean %g vs %g", mean_got, before);
    free(want);
    sd_text_cond_free(&plain);
    sd_text_cond_free(&got);
    te_close(&f);
}

/* Chunks are encoded separately and concatenated: chunk 2 of "cat BREAK dog"
 * equals the plain embedding of "dog"; the pair padding appends the empty
 * prompt's embedding to the shorter side. */
Test(prompt_embeddings, chunks_concatenated_and_padded) {
    te_fixture f;
    te_open(&f);
    for (int skip = 1; skip <= 2; skip++) {
        sd_text_cond two = encode(&f, "cat BREAK dog", SD_PROMPT_SYNTAX_A1111, skip);
        sd_text_cond cat = encode(&f, "cat", SD_PROMPT_SYNTAX_PLAIN, skip);
        sd_text_cond dog = encode(&f, "dog", SD_PROMPT_SYNTAX_PLAIN, skip);
        sd_text_cond empty = encode(&f, "", SD_PROMPT_SYNTAX_A1111, skip);
        cr_assert_eq(two.n_chunks, 2);
        /* batched vs single GEMMs may sum in another order: float noise only */
        tst_check_close("chunk 1", two.emb, cat.emb, 77 * 32, 1e-5, 0);
        tst_check_close("chunk 2", two.emb + 77 * 32, dog.emb, 77 * 32, 1e-5, 0);
        sd_error err = {0};
        cr_assert_eq(sd_conditioning_pad_pair(&dog, &two, &empty, &err), 0, "%s", err.msg);
        cr_assert_eq(dog.n_chunks, 2);
        cr_assert_eq(two.n_chunks, 2);
        cr_expect_eq(memcmp(dog.emb + 77 * 32, empty.emb, 77 * 32 * sizeof(float)), 0);
        sd_text_cond_free(&two);
        sd_text_cond_free(&cat);
        sd_text_cond_free(&dog);
        sd_text_cond_free(&empty);
    }
    te_close(&f);
}

/* Ill-formed UTF-8 is replaced and reported in both modes; bad settings fail. */
Test(prompt_embeddings, invalid_utf8_and_bad_settings) {
    te_fixture f;
    te_open(&f);
    for (int s = 0; s < 2; s++) {
        sd_text_cond tc = encode(&f, "a (c\xff" "at:1.2) dog", (sd_prompt_syntax)s, 1);
        cr_expect_eq(tc.n_invalid_utf8, 1u, "syntax %d", s);
        sd_text_cond_free(&tc);
    }
    sd_text_cond tc;
    sd_error err = {0};
    cr_expect_neq(sd_conditioning_encode(f.tok, f.model, "cat", SD_PROMPT_SYNTAX_A1111, 0, &tc, &err), 0);
    cr_expect_neq(sd_conditioning_encode(f.tok, f.model, "cat", SD_PROMPT_SYNTAX_A1111, 5, &tc, &err), 0);
    sd_prompt_syntax syn;
    cr_expect_eq(sd_prompt_syntax_parse("plain", &syn, &err), 0);
    cr_expect_eq(syn, SD_PROMPT_SYNTAX_PLAIN);
    cr_expect_neq(sd_prompt_syntax_parse("comfy", &syn, &err), 0);
    cr_expect(strstr(err.msg, "a1111") != NULL);
    te_close(&f);
}
