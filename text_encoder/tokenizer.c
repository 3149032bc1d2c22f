/* HF slow CLIPTokenizer: vocab/merges loading, CLIP's pre-tokeniser, byte-level
 * BPE with "</w>" and a per-piece cache (transformers tokenization_clip.py). */
#include "text_encoder/tokenizer.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "text_encoder/normalize.h"

/* HF: merges.txt lines [1 : 49152 - 256 - 2 + 1] — CLIP's merge budget. */
#define CLIP_MAX_MERGES (49152 - 256 - 2)
#define DEFAULT_MAX_LENGTH 77
/* The cache is dropped and restarted when it holds this many pieces. */
#define BPE_CACHE_MAX_ENTRIES 65536
#define VOCAB_MAX_ID (1 << 24)

/* ------------------------------------------------------------- string table */

/* Interned byte strings -> int32 value, open addressing on FNV-1a. */
typedef struct strtab {
    char *pool;
    size_t pool_n, pool_cap;
    uint32_t *off, *len;
    int32_t *val;
    size_t n, cap;
    int32_t *slots; /* entry index or -1 */
    size_t nslots;  /* power of two */
} strtab;

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static void strtab_free(strtab *t) {
    free(t->pool);
    free(t->off);
    free(t->len);
    free(t->val);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

static const char *strtab_str(const strtab *t, int32_t e) { return t->pool + t->off[e]; }

static int32_t strtab_find(const strtab *t, const char *s, size_t n) {
    if (!t->nslots) return -1;
    for (size_t i = fnv1a(s, n) & (t->nslots - 1);; i = (i + 1) & (t->nslots - 1)) {
        int32_t e = t->slots[i];
        if (e < 0) return -1;
        if (t->len[e] == n && memcmp(t->pool + t->off[e], s, n) == 0) return e;
    }
}

static int strtab_rehash(strtab *t, size_t nslots) {
    int32_t *slots = malloc(nslots * sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < nslots; i++) slots[i] = -1;
    for (size_t e = 0; e < t->n; e++) {
        size_t i = fnv1a(t->pool + t->off[e], t->len[e]) & (nslots - 1);
        while (slots[i] >= 0) i = (i + 1) & (nslots - 1);
        slots[i] = (int32_t)e;
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = nslots;
    return 0;
}

/* Returns p grown to hold `need` elements of `elem` bytes (*cap updated), or
 * NULL when out of memory (p is then still valid and unchanged). */
static void *grow_to(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    void *q = realloc(p, c * elem);
    if (q) *cap = c;
    return q;
}

/* Finds or adds s; a new entry gets `val`.  Returns the entry, -1 on OOM. */
static int32_t strtab_intern(strtab *t, const char *s, size_t n, int32_t val) {
    int32_t e = strtab_find(t, s, n);
    if (e >= 0) return e;
    if ((t->n + 1) * 2 > t->nslots && strtab_rehash(t, t->nslots ? t->nslots * 2 : 1024)) return -1;
    char *pool = grow_to(t->pool, &t->pool_cap, t->pool_n + n + 1, 1);
    if (!pool) return -1;
    t->pool = pool;
    if (t->n + 1 > t->cap) {
        size_t c1 = t->cap, c2 = t->cap, c3 = t->cap;
        uint32_t *off = grow_to(t->off, &c1, t->n + 1, sizeof *t->off);
        if (off) t->off = off;
        uint32_t *len = off ? grow_to(t->len, &c2, t->n + 1, sizeof *t->len) : NULL;
        if (len) t->len = len;
        int32_t *val = len ? grow_to(t->val, &c3, t->n + 1, sizeof *t->val) : NULL;
        if (!val) return -1;
        t->val = val;
        t->cap = c1;
    }
    memcpy(t->pool + t->pool_n, s, n);
    t->pool[t->pool_n + n] = 0;
    e = (int32_t)t->n++;
    t->off[e] = (uint32_t)t->pool_n;
    t->len[e] = (uint32_t)n;
    t->val[e] = val;
    t->pool_n += n + 1;
    size_t i = fnv1a(s, n) & (t->nslots - 1);
    while (t->slots[i] >= 0) i = (i + 1) & (t->nslots - 1);
    t->slots[i] = e;
    return e;
}

static void strtab_reset(strtab *t) {
    t->n = 0;
    t->pool_n = 0;
    for (size_t i = 0; i < t->nslots; i++) t->slots[i] = -1;
}

/* ---------------------------------------------------------------- pair map */

/* (left symbol, right symbol) -> merge rank and merged symbol. */
typedef struct merge_slot {
    uint64_t key; /* UINT64_MAX = empty */
    int32_t rank, result;
} merge_slot;

typedef struct merge_map {
    merge_slot *slots;
    size_t nslots, n;
} merge_map;

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static size_t pair_hash(uint64_t k) { return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 17); }

static const merge_slot *merge_find(const merge_map *m, int32_t a, int32_t b) {
    uint64_t k = pair_key(a, b);
    for (size_t i = pair_hash(k) & (m->nslots - 1);; i = (i + 1) & (m->nslots - 1)) {
        if (m->slots[i].key == k) return &m->slots[i];
        if (m->slots[i].key == UINT64_MAX) return NULL;
    }
}

static int merge_init(merge_map *m, size_t expected) {
    m->nslots = 1024;
    while (m->nslots < expected * 2) m->nslots *= 2;
    m->slots = malloc(m->nslots * sizeof *m->slots);
    if (!m->slots) return -1;
    for (size_t i = 0; i < m->nslots; i++) m->slots[i].key = UINT64_MAX;
    return 0;
}

/* Inserts or overwrites (HF builds a dict: a repeated pair keeps the last rank). */
static void merge_put(merge_map *m, int32_t a, int32_t b, int32_t rank, int32_t result) {
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k) & (m->nslots - 1);
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != k) i = (i + 1) & (m->nslots - 1);
    if (m->slots[i].key == UINT64_MAX) m->n++;
    m->slots[i] = (merge_slot){k, rank, result};
}

/* -------------------------------------------------------------- tokenizer */

struct sd_tokenizer {
    strtab syms;          /* every symbol string; val = vocab id or -1 */
    int32_t *id_sym;      /* vocab id -> symbol, -1 for holes */
    int vocab_size;
    merge_map merges;
    int32_t byte_sym[256];   /* byte -> symbol of its byte-encoder character */
    int32_t byte_sym_w[256]; /* the same + "</w>" */
    int bos, eos, pad, unk, max_length;
    char special[2][32];     /* "<|startoftext|>", "<|endoftext|>" (HF's bpe cache) */
    strtab cache;            /* piece bytes -> index into cache_spans */
    int32_t *cache_ids;
    size_t cache_ids_n, cache_ids_cap;
    uint32_t (*cache_spans)[2]; /* [offset, count] into cache_ids */
    size_t cache_spans_cap;
};

void sd_ids_push(sd_ids *ids, int32_t id) {
    if (ids->oom) return;
    int32_t *v = grow_to(ids->v, &ids->cap, ids->n + 1, sizeof *ids->v);
    if (!v) {
        ids->oom = 1;
        return;
    }
    ids->v = v;
    ids->v[ids->n++] = id;
}

void sd_ids_free(sd_ids *ids) {
    free(ids->v);
    memset(ids, 0, sizeof *ids);
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 bytes to U+0100.. in byte order. */
static uint32_t byte_to_unicode(unsigned b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    unsigned n = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return 256 + n;
}

static int load_vocab(sd_tokenizer *t, const char *path, sd_error *err) {
    cJSON *root;
    if (sd_json_load(path, &root, err)) return -1;
    int max_id = -1, rc = 0;
    for (const cJSON *e = root->child; e && !rc; e = e->next) {
        double d = e->valuedouble;
        if (!cJSON_IsNumber(e) || d != floor(d) || d < 0 || d >= VOCAB_MAX_ID) {
            rc = sd_fail(err, "%s: entry '%s': expected a non-negative integer id", path, e->string);
            break;
        }
        int32_t s = strtab_intern(&t->syms, e->string, strlen(e->string), (int32_t)d);
        if (s < 0) rc = sd_fail(err, "%s: out of memory", path);
        else t->syms.val[s] = (int32_t)d; /* a repeated key keeps its last id, as json.load */
        if ((int)d > max_id) max_id = (int)d;
    }
    cJSON_Delete(root);
    if (rc) return rc;
    if (max_id < 0) return sd_fail(err, "%s: the vocabulary is empty", path);
    t->vocab_size = max_id + 1;
    t->id_sym = malloc((size_t)t->vocab_size * sizeof *t->id_sym);
    if (!t->id_sym) return sd_fail(err, "%s: out of memory", path);
    for (int i = 0; i < t->vocab_size; i++) t->id_sym[i] = -1;
    for (size_t s = 0; s < t->syms.n; s++)
        if (t->id_sym[t->syms.val[s]] < 0) t->id_sym[t->syms.val[s]] = (int32_t)s;
    return 0;
}

/* Interns the 512 initial BPE symbols (vocab id or -1 when absent). */
static int intern_byte_symbols(sd_tokenizer *t) {
    for (unsigned b = 0; b < 256; b++) {
        char buf[8];
        int n = sd_utf8_put(byte_to_unicode(b), buf);
        memcpy(buf + n, "</w>", 4);
        t->byte_sym[b] = strtab_intern(&t->syms, buf, (size_t)n, -1);
        t->byte_sym_w[b] = strtab_intern(&t->syms, buf, (size_t)n + 4, -1);
        if (t->byte_sym[b] < 0 || t->byte_sym_w[b] < 0) return -1;
    }
    return 0;
}

static int is_field_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

/* One merges.txt line: exactly two whitespace-separated symbols. */
static int parse_merge_line(sd_tokenizer *t, char *line, int rank, const char *path, int lineno,
                            sd_error *err) {
    char *f[3] = {0};
    size_t fl[3] = {0};
    int nf = 0;
    for (char *p = line; *p;) {
        while (*p && is_field_space(*p)) p++;
        if (!*p) break;
        char *s = p;
        while (*p && !is_field_space(*p)) p++;
        if (nf < 3) {
            f[nf] = s;
            fl[nf] = (size_t)(p - s);
        }
        nf++;
    }
    if (nf != 2)
        return sd_fail(err, "%s: line %d: expected two space-separated symbols, found %d", path, lineno,
                       nf);
    char joined[1024];
    if (fl[0] + fl[1] >= sizeof joined) return sd_fail(err, "%s: line %d: symbol too long", path, lineno);
    memcpy(joined, f[0], fl[0]);
    memcpy(joined + fl[0], f[1], fl[1]);
    int32_t a = strtab_intern(&t->syms, f[0], fl[0], -1);
    int32_t b = a < 0 ? -1 : strtab_intern(&t->syms, f[1], fl[1], -1);
    int32_t r = b < 0 ? -1 : strtab_intern(&t->syms, joined, fl[0] + fl[1], -1);
    if (r < 0) return sd_fail(err, "%s: out of memory", path);
    merge_put(&t->merges, a, b, rank, r);
    return 0;
}

static int load_merges(sd_tokenizer *t, const char *path, sd_error *err) {
    char *text;
    size_t len;
    if (sd_read_file(path, 256u << 20, &text, &len, err)) return -1;
    if (merge_init(&t->merges, CLIP_MAX_MERGES)) {
        free(text);
        return sd_fail(err, "%s: out of memory", path);
    }
    /* HF: read().strip().split("\n")[1:48895] — the first line is the header. */
    char *p = text, *end = text + len;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\n' || end[-1] == '\t' || end[-1] == '\r')) end--;
    *end = 0;
    int lineno = 0, rank = 0, rc = 0;
    while (p < end && rank < CLIP_MAX_MERGES && !rc) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *stop = nl ? nl : end;
        *stop = 0;
        if (lineno > 0) rc = parse_merge_line(t, p, rank++, path, lineno + 1, err);
        lineno++;
        p = stop + 1;
    }
    free(text);
    if (!rc && lineno == 0) rc = sd_fail(err, "%s: empty file (expected a '#version' line and merges)", path);
    return rc;
}

/* Reads a special-token entry: a string or {"content": "..."}. */
static int read_token_entry(const cJSON *obj, const char *file, const char *key, char *buf,
                            size_t cap, sd_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= cap)
        return sd_fail(err, "%s: key '%s': expected a token string or {\"content\": string}", file, key);
    snprintf(buf, cap, "%s", v->valuestring);
    return 0;
}

typedef struct special_names {
    char bos[128], eos[128], unk[128], pad[128];
    double max_length;
} special_names;

static int read_config_json(const char *dir, const char *name, special_names *sn, sd_error *err) {
    char *path = sd_path_join(dir, name);
    if (!path) return sd_fail(err, "out of memory");
    int rc = 0;
    if (sd_is_file(path)) {
        cJSON *root;
        rc = sd_json_load(path, &root, err);
        if (!rc) {
            rc = read_token_entry(root, path, "bos_token", sn->bos, sizeof sn->bos, err) ||
                 read_token_entry(root, path, "eos_token", sn->eos, sizeof sn->eos, err) ||
                 read_token_entry(root, path, "unk_token", sn->unk, sizeof sn->unk, err) ||
                 read_token_entry(root, path, "pad_token", sn->pad, sizeof sn->pad, err);
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model_max_length");
            if (!rc && cJSON_IsNumber(m)) sn->max_length = m->valuedouble;
            cJSON_Delete(root);
        }
    }
    free(path);
    return rc ? -1 : 0;
}

static int special_id(sd_tokenizer *t, const char *token, const char *what, const char *dir,
                      int *out, sd_error *err) {
    *out = sd_tokenizer_token_id(t, token);
    if (*out < 0)
        return sd_fail(err, "%s/vocab.json: has no entry for the %s '%s' (is this a CLIP tokenizer?)", dir,
                       what, token);
    return 0;
}

static int load_specials(sd_tokenizer *t, const char *dir, sd_error *err) {
    special_names sn = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", 0};
    /* transformers: special_tokens_map.json overrides tokenizer_config.json. */
    if (read_config_json(dir, "tokenizer_config.json", &sn, err) ||
        read_config_json(dir, "special_tokens_map.json", &sn, err))
        return -1;
    t->max_length = DEFAULT_MAX_LENGTH;
    if (sn.max_length >= 3 && sn.max_length <= 1e6) t->max_length = (int)sn.max_length;
    snprintf(t->special[0], sizeof t->special[0], "<|startoftext|>");
    snprintf(t->special[1], sizeof t->special[1], "<|endoftext|>");
    return special_id(t, sn.bos, "bos_token", dir, &t->bos, err) ||
                   special_id(t, sn.eos, "eos_token", dir, &t->eos, err) ||
                   special_id(t, sn.unk, "unk_token", dir, &t->unk, err) ||
                   special_id(t, sn.pad, "pad_token", dir, &t->pad, err)
               ? -1
               : 0;
}

int sd_tokenizer_open(sd_tokenizer **out, const char *dir, sd_error *err) {
    *out = NULL;
    if (!sd_is_dir(dir)) return sd_fail(err, "%s: tokenizer folder not found", dir);
    sd_tokenizer *t = calloc(1, sizeof *t);
    char *vocab = sd_path_join(dir, "vocab.json"), *merges = sd_path_join(dir, "merges.txt");
    int rc = (!t || !vocab || !merges) ? sd_fail(err, "out of memory") : 0;
    if (!rc && !sd_is_file(vocab)) rc = sd_fail(err, "%s: missing (a CLIP tokenizer needs vocab.json)", vocab);
    if (!rc && !sd_is_file(merges)) rc = sd_fail(err, "%s: missing (a CLIP tokenizer needs merges.txt)", merges);
    if (!rc) rc = load_vocab(t, vocab, err);
    if (!rc && intern_byte_symbols(t)) rc = sd_fail(err, "out of memory");
    if (!rc) rc = load_merges(t, merges, err);
    if (!rc) rc = load_specials(t, dir, err);
    free(vocab);
    free(merges);
    if (rc) {
        sd_tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void sd_tokenizer_free(sd_tokenizer *t) {
    if (!t) return;
    strtab_free(&t->syms);
    strtab_free(&t->cache);
    free(t->id_sym);
    free(t->merges.slots);
    free(t->cache_ids);
    free(t->cache_spans);
    free(t);
}

int sd_tokenizer_bos(const sd_tokenizer *t) { return t->bos; }
int sd_tokenizer_eos(const sd_tokenizer *t) { return t->eos; }
int sd_tokenizer_pad(const sd_tokenizer *t) { return t->pad; }
int sd_tokenizer_unk(const sd_tokenizer *t) { return t->unk; }
int sd_tokenizer_max_length(const sd_tokenizer *t) { return t->max_length; }
int sd_tokenizer_vocab_size(const sd_tokenizer *t) { return t->vocab_size; }
size_t sd_tokenizer_cache_entries(const sd_tokenizer *t) { return t->cache.n; }

int sd_tokenizer_token_id(const sd_tokenizer *t, const char *token) {
    int32_t s = strtab_find(&t->syms, token, strlen(token));
    return s < 0 ? -1 : t->syms.val[s];
}

const char *sd_tokenizer_token_str(const sd_tokenizer *t, int id) {
    if (id < 0 || id >= t->vocab_size || t->id_sym[id] < 0) return NULL;
    return strtab_str(&t->syms, t->id_sym[id]);
}

/* -------------------------------------------------------------------- BPE */

/* CLIPTokenizer.bpe on one piece's bytes: word = byte symbols with "</w>"
 * on the last; repeatedly merge every occurrence (left to right) of the
 * lowest-ranked adjacent pair. Appends vocab ids (unk for unknown symbols). */
static void bpe_piece(const sd_tokenizer *t, const unsigned char *b, size_t n, sd_ids *out) {
    int32_t stack_word[64], *word = n <= 64 ? stack_word : malloc(n * sizeof *word);
    if (!word) {
        out->oom = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) word[i] = i + 1 == n ? t->byte_sym_w[b[i]] : t->byte_sym[b[i]];
    size_t len = n;
    for (;;) {
        const merge_slot *best = NULL;
        for (size_t i = 0; i + 1 < len; i++) {
            const merge_slot *m = merge_find(&t->merges, word[i], word[i + 1]);
            if (m && (!best || m->rank < best->rank)) best = m;
        }
        if (!best) break;
        int32_t first = (int32_t)(best->key >> 32), second = (int32_t)(uint32_t)best->key;
        size_t o = 0;
        for (size_t i = 0; i < len;) {
            if (i + 1 < len && word[i] == first && word[i + 1] == second) {
                word[o++] = best->result;
                i += 2;
            } else {
                word[o++] = word[i++];
            }
        }
        len = o;
    }
    for (size_t i = 0; i < len; i++) {
        int32_t id = t->syms.val[word[i]];
        sd_ids_push(out, id >= 0 ? id : t->unk);
    }
    if (word != stack_word) free(word);
}

/* Ids of one piece through the cache. */
static void encode_piece(sd_tokenizer *t, const unsigned char *b, size_t n, sd_ids *out) {
    int32_t e = strtab_find(&t->cache, (const char *)b, n);
    if (e >= 0) {
        uint32_t off = t->cache_spans[t->cache.val[e]][0], cnt = t->cache_spans[t->cache.val[e]][1];
        for (uint32_t i = 0; i < cnt; i++) sd_ids_push(out, t->cache_ids[off + i]);
        return;
    }
    size_t start = out->n;
    bpe_piece(t, b, n, out);
    if (out->oom) return;
    if (t->cache.n >= BPE_CACHE_MAX_ENTRIES) {
        strtab_reset(&t->cache);
        t->cache_ids_n = 0;
    }
    size_t cnt = out->n - start;
    int32_t *cids = grow_to(t->cache_ids, &t->cache_ids_cap, t->cache_ids_n + cnt, sizeof *t->cache_ids);
    if (!cids) return; /* no room to cache: still correct, just not cached */
    t->cache_ids = cids;
    uint32_t(*spans)[2] = grow_to(t->cache_spans, &t->cache_spans_cap, t->cache.n + 1, sizeof *spans);
    if (!spans) return;
    t->cache_spans = spans;
    int32_t slot = (int32_t)t->cache.n;
    if (strtab_intern(&t->cache, (const char *)b, n, slot) != slot) return;
    memcpy(t->cache_ids + t->cache_ids_n, out->v + start, cnt * sizeof *out->v);
    t->cache_spans[slot][0] = (uint32_t)t->cache_ids_n;
    t->cache_spans[slot][1] = (uint32_t)cnt;
    t->cache_ids_n += cnt;
}

/* ----------------------------------------------------------- pre-tokeniser */

/* Pattern character match under the `regex` module's IGNORECASE: the text is
 * already lower-cased, and 's' also matches U+017F (long s, folds to 's'). */
static int ci_eq(uint32_t c, char p) {
    if (c == (uint32_t)p || (c >= 'A' && c <= 'Z' && c + 32 == (uint32_t)p)) return 1;
    return p == 's' && c == 0x17F;
}

static size_t match_literal(const sd_utext *s, size_t pos, const char *lit) {
    size_t n = strlen(lit);
    if (pos + n > s->n) return 0;
    for (size_t i = 0; i < n; i++)
        if (!ci_eq(s->cp[pos + i], lit[i])) return 0;
    return n;
}

/* Length of the piece the CLIP pattern matches at pos (0 = whitespace, skip);
 * *special = 1 when it is one of the two special-token alternatives. */
static size_t next_piece(const sd_utext *s, size_t pos, int *special) {
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    size_t n;
    *special = 0;
    if ((n = match_literal(s, pos, "<|startoftext|>")) || (n = match_literal(s, pos, "<|endoftext|>"))) {
        *special = 1;
        return n;
    }
    for (size_t k = 0; k < sizeof contractions / sizeof contractions[0]; k++)
        if ((n = match_literal(s, pos, contractions[k]))) return n;
    uint32_t c = s->cp[pos];
    if (sd_uc_is_letter(c)) {
        for (n = 1; pos + n < s->n && sd_uc_is_letter(s->cp[pos + n]);) n++;
        return n;
    }
    if (sd_uc_is_number(c)) return 1;
    if (sd_uc_is_regex_space(c)) return 0;
    for (n = 1; pos + n < s->n; n++) {
        uint32_t d = s->cp[pos + n];
        if (sd_uc_is_regex_space(d) || sd_uc_is_letter(d) || sd_uc_is_number(d)) break;
    }
    return n;
}

int sd_tokenizer_tokenize(sd_tokenizer *t, const char *text, size_t len, sd_ids *out,
                          size_t *n_invalid, sd_error *err) {
    sd_utext norm = {0};
    if (sd_clip_normalize(text, len, &norm, n_invalid, err)) {
        sd_utext_free(&norm);
        return -1;
    }
    char *bytes = malloc(4 * norm.n + 1);
    if (!bytes) {
        sd_utext_free(&norm);
        return sd_fail(err, "tokenizer: out of memory");
    }
    for (size_t pos = 0; pos < norm.n;) {
        int special;
        size_t n = next_piece(&norm, pos, &special);
        if (n == 0) {
            pos++;
            continue;
        }
        size_t nb = 0;
        for (size_t i = 0; i < n; i++) nb += (size_t)sd_utf8_put(norm.cp[pos + i], bytes + nb);
        bytes[nb] = 0;
        /* HF's bpe cache starts with the two special strings, mapped to themselves. */
        if (special && (strcmp(bytes, t->special[0]) == 0 || strcmp(bytes, t->special[1]) == 0)) {
            int id = sd_tokenizer_token_id(t, bytes);
            sd_ids_push(out, id >= 0 ? id : t->unk);
        } else {
            encode_piece(t, (const unsigned char *)bytes, nb, out);
        }
        pos += n;
    }
    free(bytes);
    sd_utext_free(&norm);
    return out->oom ? sd_fail(err, "tokenizer: out of memory") : 0;
}

int sd_tokenizer_encode(sd_tokenizer *t, const char *text, int32_t *ids, int *n_tokens,
                        int *n_dropped, size_t *n_invalid, sd_error *err) {
    sd_ids toks = {0};
    if (sd_tokenizer_tokenize(t, text, strlen(text), &toks, n_invalid, err)) {
        sd_ids_free(&toks);
        return -1;
    }
    size_t keep = toks.n < (size_t)t->max_length - 2 ? toks.n : (size_t)t->max_length - 2;
    int k = 0;
    ids[k++] = t->bos;
    for (size_t i = 0; i < keep; i++) ids[k++] = toks.v[i];
    ids[k++] = t->eos;
    while (k < t->max_length) ids[k++] = t->pad;
    if (n_tokens) *n_tokens = (int)toks.n;
    if (n_dropped) *n_dropped = (int)(toks.n - keep);
    sd_ids_free(&toks);
    return 0;
}
