/* Prompt -> context rows: diffusers' encode_prompt (plain) and
 * stable-diffusion-webui's sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase
 * (tokenize_line, process_tokens, EmphasisOriginal) for a1111. */
#include "text_encoder/conditioning.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "text_encoder/prompt_parser.h"

/* A1111 opts.comma_padding_backtrack (default 20). */
#define COMMA_BACKTRACK 20

const char *sd_prompt_syntax_name(sd_prompt_syntax s) { return s == SD_PROMPT_SYNTAX_PLAIN ? "plain" : "a1111"; }

int sd_prompt_syntax_parse(const char *name, sd_prompt_syntax *out, sd_error *err) {
    if (strcmp(name, "plain") == 0) *out = SD_PROMPT_SYNTAX_PLAIN;
    else if (strcmp(name, "a1111") == 0) *out = SD_PROMPT_SYNTAX_A1111;
    else return sd_fail(err, "prompt syntax '%s': expected 'plain' or 'a1111'", name);
    return 0;
}

/* ------------------------------------------------------------- chunking */

typedef struct chunk_builder {
    const sd_tokenizer *tok;
    sd_prompt_chunks *out;
    int cap;          /* chunks allocated in out */
    int body;         /* tokens per chunk between BOS and EOS (75) */
    int32_t *ids;     /* current chunk [body] */
    float *w;
    int n;
    int last_comma;   /* index in the current chunk of the last comma, or -1 */
    int oom;
} chunk_builder;

/* A1111 next_chunk: pad with EOS to `body`, frame with BOS/EOS, append; then
 * (process_tokens' id_pad rule) everything after the first EOS becomes pad. */
static void next_chunk(chunk_builder *b) {
    sd_prompt_chunks *o = b->out;
    const int L = o->chunk_len;
    if (o->n_chunks == b->cap) {
        int cap = b->cap ? b->cap * 2 : 4;
        int32_t *ids = realloc(o->ids, (size_t)cap * (size_t)L * sizeof *ids);
        if (ids) o->ids = ids;
        float *w = ids ? realloc(o->weights, (size_t)cap * (size_t)L * sizeof *w) : NULL;
        if (!w) {
            b->oom = 1;
            return;
        }
        o->weights = w;
        b->cap = cap;
    }
    int32_t *ids = o->ids + (size_t)o->n_chunks * (size_t)L;
    float *w = o->weights + (size_t)o->n_chunks * (size_t)L;
    const int eos = sd_tokenizer_eos(b->tok), pad = sd_tokenizer_pad(b->tok);
    ids[0] = sd_tokenizer_bos(b->tok);
    w[0] = 1.0f;
    for (int i = 0; i < b->body; i++) {
        ids[1 + i] = i < b->n ? b->ids[i] : eos;
        w[1 + i] = i < b->n ? b->w[i] : 1.0f;
    }
    ids[L - 1] = eos;
    w[L - 1] = 1.0f;
    int first_eos = 1;
    while (ids[first_eos] != eos) first_eos++;
    for (int i = first_eos + 1; i < L; i++) ids[i] = pad;
    o->n_chunks++;
    b->n = 0;
    b->last_comma = -1;
}

/* A1111 tokenize_line's loop body for one token of weight w. */
static void chunk_add_token(chunk_builder *b, int32_t token, float w, int comma) {
    if (token == comma) {
        b->last_comma = b->n;
    } else if (b->n == b->body && b->last_comma != -1 && b->n - b->last_comma <= COMMA_BACKTRACK) {
        /* Move the words after the last comma into the next chunk. */
        int at = b->last_comma + 1, k = b->n - at;
        int32_t *rid = malloc((size_t)(k + 1) * sizeof *rid);
        float *rw = malloc((size_t)(k + 1) * sizeof *rw);
        if (!rid || !rw) {
            free(rid);
            free(rw);
            b->oom = 1;
            return;
        }
        memcpy(rid, b->ids + at, (size_t)k * sizeof *rid);
        memcpy(rw, b->w + at, (size_t)k * sizeof *rw);
        b->n = at;
        next_chunk(b);
        memcpy(b->ids, rid, (size_t)k * sizeof *rid);
        memcpy(b->w, rw, (size_t)k * sizeof *rw);
        b->n = k;
        free(rid);
        free(rw);
    }
    if (b->n == b->body) next_chunk(b);
    b->ids[b->n] = token;
    b->w[b->n] = w;
    b->n++;
}

static int chunks_a1111(sd_tokenizer *tok, const char *prompt, sd_prompt_chunks *out, sd_error *err) {
    sd_prompt_parsed parsed;
    if (sd_prompt_parse_a1111(prompt, &parsed, err)) return -1;
    chunk_builder b = {tok, out, 0, out->chunk_len - 2, NULL, NULL, 0, -1, 0};
    b.ids = malloc((size_t)b.body * sizeof *b.ids);
    b.w = malloc((size_t)b.body * sizeof *b.w);
    int rc = (!b.ids || !b.w) ? sd_fail(err, "prompt: out of memory") : 0;
    const int comma = sd_tokenizer_token_id(tok, ",</w>");
    for (int p = 0; p < parsed.n && !rc && !b.oom; p++) {
        const sd_prompt_piece *piece = &parsed.pieces[p];
        if (piece->is_break) {
            next_chunk(&b);
            continue;
        }
        sd_ids toks = {0};
        size_t bad = 0;
        rc = sd_tokenizer_tokenize(tok, piece->text, strlen(piece->text), &toks, &bad, err);
        out->n_invalid_utf8 += bad;
        for (size_t i = 0; i < toks.n && !rc && !b.oom; i++)
            chunk_add_token(&b, toks.v[i], (float)piece->weight, comma);
        out->n_tokens += (int)toks.n;
        sd_ids_free(&toks);
    }
    if (!rc && !b.oom && (b.n > 0 || out->n_chunks == 0)) next_chunk(&b);
    if (!rc && b.oom) rc = sd_fail(err, "prompt: out of memory");
    free(b.ids);
    free(b.w);
    sd_prompt_parsed_free(&parsed);
    return rc;
}

static int chunks_plain(sd_tokenizer *tok, const char *prompt, sd_prompt_chunks *out, sd_error *err) {
    const int L = out->chunk_len;
    out->ids = malloc((size_t)L * sizeof *out->ids);
    out->weights = malloc((size_t)L * sizeof *out->weights);
    if (!out->ids || !out->weights) return sd_fail(err, "prompt: out of memory");
    if (sd_tokenizer_encode(tok, prompt, out->ids, &out->n_tokens, &out->n_dropped, &out->n_invalid_utf8, err))
        return -1;
    for (int i = 0; i < L; i++) out->weights[i] = 1.0f;
    out->n_chunks = 1;
    return 0;
}

int sd_prompt_chunks_build(sd_tokenizer *tok, const char *prompt, sd_prompt_syntax syntax,
                           sd_prompt_chunks *out, sd_error *err) {
    memset(out, 0, sizeof *out);
    out->chunk_len = sd_tokenizer_max_length(tok);
    int rc = syntax == SD_PROMPT_SYNTAX_PLAIN ? chunks_plain(tok, prompt, out, err)
                                              : chunks_a1111(tok, prompt, out, err);
    if (rc) sd_prompt_chunks_free(out);
    return rc;
}

void sd_prompt_chunks_free(sd_prompt_chunks *c) {
    free(c->ids);
    free(c->weights);
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------- encoding */

/* A1111 EmphasisOriginal on one chunk z [rows, hidden] (float32 like torch;
 * the means are accumulated in double). */
static void emphasis_original(float *z, const float *w, int rows, int hidden) {
    int any = 0;
    for (int r = 0; r < rows; r++) any |= w[r] != 1.0f;
    if (!any) return; /* z * 1 and a ratio of exactly 1 change nothing */
    const size_t n = (size_t)rows * (size_t)hidden;
    double before = 0, after = 0;
    for (size_t i = 0; i < n; i++) before += z[i];
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < hidden; j++) {
            float *x = &z[(size_t)r * (size_t)hidden + (size_t)j];
            *x *= w[r];
            after += *x;
        }
    float ratio = (float)(before / (double)n) / (float)(after / (double)n);
    /* A mean of 0 after weighting (e.g. every token at weight 0) would give
     * inf/NaN in A1111; we keep the weighted values instead. */
    if (!isfinite(ratio)) return;
    for (size_t i = 0; i < n; i++) z[i] *= ratio;
}

int sd_conditioning_encode_chunks(sd_clip_text *model, const sd_prompt_chunks *chunks, int layer,
                                  int final_norm, float *emb, sd_error *err) {
    return sd_conditioning_encode_chunks_pooled(model, chunks, layer, final_norm, emb, NULL, err);
}

int sd_conditioning_encode_chunks_pooled(sd_clip_text *model, const sd_prompt_chunks *chunks, int layer,
                                         int final_norm, float *emb, float *pooled, sd_error *err) {
    sd_clip_text_request req = {.hidden = emb, .layer = layer, .final_norm = final_norm, .pooled = pooled};
    if (sd_clip_text_forward(model, chunks->ids, chunks->n_chunks, chunks->chunk_len, &req, err)) return -1;
    const int H = sd_clip_text_get_config(model)->hidden_size;
    for (int c = 0; c < chunks->n_chunks; c++)
        emphasis_original(emb + (size_t)c * (size_t)chunks->chunk_len * (size_t)H,
                          chunks->weights + (size_t)c * (size_t)chunks->chunk_len, chunks->chunk_len, H);
    return 0;
}

int sd_conditioning_encode(sd_tokenizer *tok, sd_clip_text *model, const char *prompt,
                           sd_prompt_syntax syntax, int clip_skip, sd_text_cond *out, sd_error *err) {
    memset(out, 0, sizeof *out);
    const sd_clip_text_config *cfg = sd_clip_text_get_config(model);
    int layer, final_norm;
    if (sd_clip_skip_layer(cfg, clip_skip, &layer, &final_norm, err)) return -1;
    sd_prompt_chunks ch;
    if (sd_prompt_chunks_build(tok, prompt, syntax, &ch, err)) return -1;
    size_t rows = (size_t)ch.n_chunks * (size_t)ch.chunk_len;
    out->emb = malloc(rows * (size_t)cfg->hidden_size * sizeof *out->emb);
    int rc = out->emb ? sd_conditioning_encode_chunks(model, &ch, layer, final_norm, out->emb, err)
                      : sd_fail(err, "prompt: out of memory for %d chunks", ch.n_chunks);
    out->n_chunks = ch.n_chunks;
    out->chunk_len = ch.chunk_len;
    out->hidden = cfg->hidden_size;
    out->n_tokens = ch.n_tokens;
    out->n_dropped = ch.n_dropped;
    out->n_invalid_utf8 = ch.n_invalid_utf8;
    sd_prompt_chunks_free(&ch);
    if (rc) sd_text_cond_free(out);
    return rc;
}

void sd_text_cond_free(sd_text_cond *c) {
    free(c->emb);
    free(c->pooled);
    memset(c, 0, sizeof *c);
}

int sd_conditioning_pad(sd_text_cond *c, int n_chunks, const sd_text_cond *empty, sd_error *err) {
    if (n_chunks <= c->n_chunks) return 0;
    if (empty->n_chunks < 1 || empty->chunk_len != c->chunk_len || empty->hidden != c->hidden)
        return sd_fail(err, "conditioning padding: the empty-prompt embedding has %d chunks of %d x %d, need 1+ of %d x %d",
                       empty->n_chunks, empty->chunk_len, empty->hidden, c->chunk_len, c->hidden);
    const size_t chunk = (size_t)c->chunk_len * (size_t)c->hidden;
    float *emb = realloc(c->emb, (size_t)n_chunks * chunk * sizeof *emb);
    if (!emb) return sd_fail(err, "conditioning padding: out of memory");
    for (int k = c->n_chunks; k < n_chunks; k++) memcpy(emb + (size_t)k * chunk, empty->emb, chunk * sizeof *emb);
    c->emb = emb;
    c->n_chunks = n_chunks;
    return 0;
}

int sd_conditioning_pad_pair(sd_text_cond *a, sd_text_cond *b, const sd_text_cond *empty, sd_error *err) {
    int n = a->n_chunks > b->n_chunks ? a->n_chunks : b->n_chunks;
    return sd_conditioning_pad(a, n, empty, err) || sd_conditioning_pad(b, n, empty, err) ? -1 : 0;
}
