/* core/infotext — A1111 "parameters" text; see infotext.h for the layout.
 * Matches stable-diffusion-webui modules/processing.py create_infotext() and
 * modules/infotext_utils.py quote(). */
#include "core/infotext.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- growable string ---- */

typedef struct strbuf {
    char *s;
    size_t len, cap;
    int oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_puts(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* ---- the ordered list ---- */

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void sd_infotext_init(sd_infotext *kv) { memset(kv, 0, sizeof *kv); }

void sd_infotext_free(sd_infotext *kv) {
    for (int i = 0; i < kv->n; i++) {
        free(kv->keys[i]);
        free(kv->values[i]);
    }
    free(kv->keys);
    free(kv->values);
    memset(kv, 0, sizeof *kv);
}

static int find_key(const sd_infotext *kv, const char *key) {
    for (int i = 0; i < kv->n; i++)
        if (strcmp(kv->keys[i], key) == 0) return i;
    return -1;
}

static int grow(sd_infotext *kv) {
    if (kv->n < kv->cap) return 0;
    int cap = kv->cap ? kv->cap * 2 : 16;
    char **k = realloc(kv->keys, (size_t)cap * sizeof *k);
    if (!k) return -1;
    kv->keys = k;
    char **v = realloc(kv->values, (size_t)cap * sizeof *v);
    if (!v) return -1;
    kv->values = v;
    kv->cap = cap;
    return 0;
}

int sd_infotext_add(sd_infotext *kv, const char *key, const char *value, sd_error *err) {
    if (!key || !*key) return sd_fail(err, "infotext: empty key");
    if (!value) return 0;
    char *v = dup_str(value);
    if (!v) return sd_fail(err, "infotext: %s: out of memory", key);
    int i = find_key(kv, key);
    if (i >= 0) {
        free(kv->values[i]);
        kv->values[i] = v;
        return 0;
    }
    char *k = dup_str(key);
    if (!k || grow(kv)) {
        free(k);
        free(v);
        return sd_fail(err, "infotext: %s: out of memory", key);
    }
    kv->keys[kv->n] = k;
    kv->values[kv->n] = v;
    kv->n++;
    return 0;
}

int sd_infotext_add_int(sd_infotext *kv, const char *key, int64_t value, sd_error *err) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, value);
    return sd_infotext_add(kv, key, buf, err);
}

int sd_infotext_add_float(sd_infotext *kv, const char *key, double value, sd_error *err) {
    char buf[40];
    sd_infotext_float_repr(value, buf, sizeof buf);
    return sd_infotext_add(kv, key, buf, err);
}

/* ---- Python repr(float) ----
 * CPython's float_repr_style 'short': the shortest digit string that reads
 * back to the same double, fixed notation when the decimal exponent is in
 * [-4, 16), else scientific with at least two exponent digits; fixed
 * notation always has a fractional part ("7.0"). */

/* Shortest round-trip digits of |v| (v finite, non-zero): digits[] without
 * the point, *exp10 = exponent of the first digit. */
static void shortest_digits(double v, char *digits, size_t cap, int *exp10) {
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v) break;
    }
    /* tmp = "d.ddde[+-]xx" */
    size_t k = 0;
    const char *p = tmp;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && k + 1 < cap) digits[k++] = *p;
    digits[k] = '\0';
    *exp10 = atoi(p + 1);
    while (k > 1 && digits[k - 1] == '0') digits[--k] = '\0';
}

void sd_infotext_float_repr(double v, char *buf, size_t cap) {
    if (isnan(v)) { snprintf(buf, cap, "nan"); return; }
    if (isinf(v)) { snprintf(buf, cap, v < 0 ? "-inf" : "inf"); return; }
    if (v == 0.0) { snprintf(buf, cap, signbit(v) ? "-0.0" : "0.0"); return; }
    char d[24], out[48];
    int e, n = 0;
    shortest_digits(fabs(v), d, sizeof d, &e);
    int nd = (int)strlen(d);
    if (v < 0) out[n++] = '-';
    if (e < -4 || e >= 16) {
        out[n++] = d[0];
        if (nd > 1) {
            out[n++] = '.';
            for (int i = 1; i < nd; i++) out[n++] = d[i];
        }
        n += snprintf(out + n, sizeof out - (size_t)n, "e%c%02d", e < 0 ? '-' : '+', abs(e));
    } else if (e < 0) {
        out[n++] = '0';
        out[n++] = '.';
        for (int i = -1; i > e; i--) out[n++] = '0';
        for (int i = 0; i < nd; i++) out[n++] = d[i];
        out[n] = '\0';
    } else {
        for (int i = 0; i <= e; i++) out[n++] = i < nd ? d[i] : '0';
        out[n++] = '.';
        if (nd > e + 1)
            for (int i = e + 1; i < nd; i++) out[n++] = d[i];
        else
            out[n++] = '0';
        out[n] = '\0';
    }
    snprintf(buf, cap, "%s", out);
}

/* ---- quoting ---- */

/* A1111 quote(): values containing ',', '\n' or ':' become JSON strings. */
static int needs_quote(const char *v) { return strpbrk(v, ",\n:") != NULL; }

/* json.dumps(v, ensure_ascii=False): escapes '"', '\\' and U+0000..U+001F
 * ("\n" "\r" "\t" "\b" "\f" by name, others as \u00xx); all else verbatim. */
static void put_json_string(strbuf *b, const char *v) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                sb_puts(b, esc);
            } else {
                sb_put(b, (const char *)p, 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

/* ---- Python str.strip() ----
 * A code point is whitespace when its category is Zs or its bidi class is
 * WS, B or S (CPython's Py_UNICODE_ISSPACE). Invalid UTF-8 is never
 * whitespace. */
static int is_py_space(utf8proc_int32_t c) {
    const utf8proc_property_t *pr = utf8proc_get_property(c);
    return pr->category == UTF8PROC_CATEGORY_ZS || pr->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           pr->bidi_class == UTF8PROC_BIDI_CLASS_B || pr->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

static void py_strip(char *s) {
    size_t len = strlen(s), start = 0, end = len;
    while (start < len) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + start,
                                              (utf8proc_ssize_t)(len - start), &c);
        if (k <= 0 || !is_py_space(c)) break;
        start += (size_t)k;
    }
    while (end > start) {
        size_t b = end - 1; /* back to the lead byte of the last code point */
        while (b > start && ((unsigned char)s[b] & 0xC0) == 0x80 && end - b < 4) b--;
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + b,
                                              (utf8proc_ssize_t)(end - b), &c);
        if (k != (utf8proc_ssize_t)(end - b) || !is_py_space(c)) break;
        end = b;
    }
    memmove(s, s + start, end - start);
    s[end - start] = '\0';
}

/* ---- building ---- */

int sd_infotext_build(const char *prompt, const char *negative, const sd_infotext *kv,
                      char **out, sd_error *err) {
    *out = NULL;
    strbuf b = {0};
    sb_puts(&b, prompt ? prompt : "");
    if (negative && *negative) {
        sb_puts(&b, "\nNegative prompt: ");
        sb_puts(&b, negative);
    }
    sb_puts(&b, "\n");
    for (int i = 0; kv && i < kv->n; i++) {
        if (i) sb_puts(&b, ", ");
        sb_puts(&b, kv->keys[i]);
        /* A1111 writes a bare key when key == value (`k if k == v`). */
        if (strcmp(kv->keys[i], kv->values[i]) == 0) continue;
        sb_puts(&b, ": ");
        if (needs_quote(kv->values[i]))
            put_json_string(&b, kv->values[i]);
        else
            sb_puts(&b, kv->values[i]);
    }
    if (b.oom || !b.s) {
        free(b.s);
        return sd_fail(err, "infotext: out of memory");
    }
    py_strip(b.s);
    *out = b.s;
    return 0;
}

int sd_infotext_format(const sd_infotext_params *p, char **out, sd_error *err) {
    *out = NULL;
    sd_infotext kv;
    sd_infotext_init(&kv);
    char size[48];
    snprintf(size, sizeof size, "%dx%d", p->width, p->height);
    int rc = sd_infotext_add_int(&kv, "Steps", p->steps, err);
    rc = rc ? rc : sd_infotext_add(&kv, "Sampler", p->sampler, err);
    rc = rc ? rc : sd_infotext_add(&kv, "Schedule type", p->schedule_type, err);
    rc = rc ? rc : sd_infotext_add_float(&kv, "CFG scale", p->cfg_scale, err);
    rc = rc ? rc : sd_infotext_add_int(&kv, "Seed", p->seed, err);
    rc = rc ? rc : sd_infotext_add(&kv, "Size", size, err);
    rc = rc ? rc : sd_infotext_add(&kv, "Model hash", p->model_hash, err);
    rc = rc ? rc : sd_infotext_add(&kv, "Model", p->model, err);
    if (!rc && p->clip_skip > 1) rc = sd_infotext_add_int(&kv, "Clip skip", p->clip_skip, err);
    rc = rc ? rc : sd_infotext_add(&kv, "RNG", p->rng, err);
    for (int i = 0; !rc && p->extra && i < p->extra->n; i++)
        rc = sd_infotext_add(&kv, p->extra->keys[i], p->extra->values[i], err);
    rc = rc ? rc : sd_infotext_add(&kv, "Version", p->version, err);
    if (!rc) rc = sd_infotext_build(p->prompt, p->negative, &kv, out, err);
    sd_infotext_free(&kv);
    return rc;
}
