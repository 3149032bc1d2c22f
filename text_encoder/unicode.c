#include "text_encoder/unicode.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---------------------------------------------------------------- sd_utext */

static int utext_reserve(sd_utext *t, size_t need) {
    if (t->oom) return -1;
    if (need <= t->cap) return 0;
    size_t cap = t->cap ? t->cap : 64;
    while (cap < need) cap *= 2;
    uint32_t *p = realloc(t->cp, cap * sizeof *p);
    if (!p) {
        t->oom = 1;
        return -1;
    }
    t->cp = p;
    t->cap = cap;
    return 0;
}

void sd_utext_free(sd_utext *t) {
    free(t->cp);
    memset(t, 0, sizeof *t);
}

void sd_utext_clear(sd_utext *t) { t->n = 0; }

void sd_utext_push(sd_utext *t, uint32_t c) {
    if (utext_reserve(t, t->n + 1)) return;
    t->cp[t->n++] = c;
}

void sd_utext_append(sd_utext *t, const uint32_t *c, size_t n) {
    if (!n || utext_reserve(t, t->n + n)) return;
    memcpy(t->cp + t->n, c, n * sizeof *c);
    t->n += n;
}

void sd_utext_append_utf8(sd_utext *t, const char *s, size_t len) { sd_utf8_decode(s, len, t); }

int sd_utext_equal(const sd_utext *a, const sd_utext *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->cp, b->cp, a->n * sizeof *a->cp) == 0);
}

void sd_utext_swap(sd_utext *a, sd_utext *b) {
    sd_utext tmp = *a;
    *a = *b;
    *b = tmp;
}

/* -------------------------------------------------------------------- UTF-8 */

/* Bounds of the second byte after lead byte b (Unicode Table 3-7), or 0 if b
 * cannot start a multi-byte sequence. */
static int utf8_second_range(unsigned b, unsigned *lo, unsigned *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b == 0xE0) *lo = 0xA0;
    if (b == 0xED) *hi = 0x9F;
    if (b >= 0xE0 && b <= 0xEF) return 3;
    if (b == 0xF0) *lo = 0x90;
    if (b == 0xF4) *hi = 0x8F;
    if (b >= 0xF0 && b <= 0xF4) return 4;
    return 0;
}

uint32_t sd_utf8_next(const char *s, size_t len, size_t i, size_t *n, int *bad) {
    const unsigned char *p = (const unsigned char *)s;
    unsigned b = p[i];
    *bad = 0;
    *n = 1;
    if (b < 0x80) return b;
    unsigned lo, hi;
    int need = utf8_second_range(b, &lo, &hi);
    /* The maximal subpart: lead byte plus every continuation byte that is
     * still valid at its position; it is replaced by one U+FFFD. */
    size_t k = 1;
    uint32_t c = need == 2 ? (b & 0x1F) : need == 3 ? (b & 0x0F) : (b & 0x07);
    while (need && (int)k < need && i + k < len) {
        unsigned x = p[i + k];
        unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (x < l || x > h) break;
        c = (c << 6) | (x & 0x3F);
        k++;
    }
    *n = k;
    if (need && (int)k == need) return c;
    *bad = 1;
    return 0xFFFD;
}

size_t sd_utf8_decode(const char *s, size_t len, sd_utext *out) {
    size_t i = 0, bad = 0, n;
    while (i < len) {
        int b;
        sd_utext_push(out, sd_utf8_next(s, len, i, &n, &b));
        bad += (size_t)b;
        i += n;
    }
    return bad;
}

int sd_utf8_put(uint32_t c, char *buf) {
    unsigned char *o = (unsigned char *)buf;
    if (c < 0x80) {
        o[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (unsigned char)(0xC0 | (c >> 6));
        o[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (c >> 12));
        o[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (c >> 18));
    o[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

char *sd_utf8_encode(const uint32_t *cp, size_t n, size_t *len) {
    char *out = malloc(4 * n + 1);
    if (!out) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)sd_utf8_put(cp[i], out + k);
    out[k] = 0;
    if (len) *len = k;
    return out;
}

/* ---------------------------------------------------------------- classes */

static utf8proc_category_t category(uint32_t c) {
    return c > 0x10FFFF ? UTF8PROC_CATEGORY_CN : utf8proc_category((utf8proc_int32_t)c);
}

int sd_uc_is_letter(uint32_t c) {
    utf8proc_category_t k = category(c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

int sd_uc_is_number(uint32_t c) {
    utf8proc_category_t k = category(c);
    return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

int sd_uc_is_regex_space(uint32_t c) {
    /* The Unicode White_Space property (stable since Unicode 6.3). */
    if ((c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680) return 1;
    if ((c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F) return 1;
    return c == 0x205F || c == 0x3000;
}

int sd_uc_is_py_space(uint32_t c) {
    /* CPython's definition: bidirectional class WS, B or S, or category Zs. */
    if (c > 0x10FFFF) return 0;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

int sd_uc_is_py_word(uint32_t c) { return c == '_' || sd_uc_is_letter(c) || sd_uc_is_number(c); }

int sd_uc_decimal_value(uint32_t c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (category(c) != UTF8PROC_CATEGORY_ND) return -1;
    /* Nd characters come in contiguous runs of ten, 0..9 (a Unicode
     * stability guarantee); adjacent runs are multiples of ten long. */
    uint32_t start = c;
    while (start > 0 && category(start - 1) == UTF8PROC_CATEGORY_ND) start--;
    return (int)((c - start) % 10);
}
