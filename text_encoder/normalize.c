/* HF CLIPTokenizer normalisation: whitespace_clean(ftfy.fix_text(text)).lower().
 * Step names follow ftfy 6.x (ftfy/__init__.py fix_text / fix_and_explain,
 * ftfy/fixes.py, ftfy/chardata.py); see normalize.h for what is covered. */
#include "text_encoder/normalize.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "text_encoder/html_entities.h"

/* fix_text splits the text into pieces of at most this many characters. */
#define FTFY_MAX_DECODE_LENGTH 1000000u
/* fix_and_explain and fix_encoding loop "until nothing changes"; every step
 * shortens or canonicalises the text, so this bound is never reached on real
 * input — it only guarantees termination. */
#define FTFY_MAX_ROUNDS 64

/* -------------------------------------------------------- single-byte maps */

/* Windows-1252 bytes 0x80..0x9F; 0 = unassigned (the "sloppy" codec maps
 * those bytes to the C1 control of the same number). */
static const uint16_t k_cp1252_c1[32] = {
    0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0,      0x017D, 0,      0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178};

static uint32_t sloppy1252_decode(unsigned b) {
    if (b == 0x1A) return 0xFFFD; /* ftfy's sloppy codecs: byte 1A stands for U+FFFD */
    if (b >= 0x80 && b < 0xA0 && k_cp1252_c1[b - 0x80]) return k_cp1252_c1[b - 0x80];
    return b;
}

enum { ENC_LATIN1, ENC_SLOPPY1252 };

/* Byte of c in the encoding, or -1 if c has none. */
static int single_byte(uint32_t c, int enc) {
    if (enc == ENC_LATIN1) return c <= 0xFF ? (int)c : -1;
    if (c == 0xFFFD) return 0x1A;
    if (c == 0x1A) return -1;
    if (c < 0x80 || (c >= 0xA0 && c <= 0xFF)) return (int)c;
    for (int i = 0; i < 32; i++)
        if (k_cp1252_c1[i] == c || (!k_cp1252_c1[i] && c == 0x80u + (uint32_t)i)) return 0x80 + i;
    return -1;
}

/* Byte of c in Latin-1, else in sloppy cp1252 (how mojibake sequences are
 * read character by character). */
static int any_byte(uint32_t c) {
    int b = single_byte(c, ENC_LATIN1);
    return b >= 0 ? b : single_byte(c, ENC_SLOPPY1252);
}

/* ------------------------------------------------------------ UTF-8 checks */

/* Length of the well-formed UTF-8 sequence at b[0..n), or 0. */
static int utf8_valid_seq(const unsigned char *b, size_t n) {
    unsigned lo = 0x80, hi = 0xBF;
    int need;
    if (b[0] < 0x80) return 1;
    if (b[0] >= 0xC2 && b[0] <= 0xDF) need = 2;
    else if (b[0] >= 0xE0 && b[0] <= 0xEF) need = 3;
    else if (b[0] >= 0xF0 && b[0] <= 0xF4) need = 4;
    else return 0;
    if (b[0] == 0xE0) lo = 0xA0;
    if (b[0] == 0xED) hi = 0x9F;
    if (b[0] == 0xF0) lo = 0x90;
    if (b[0] == 0xF4) hi = 0x8F;
    if ((size_t)need > n) return 0;
    if (b[1] < lo || b[1] > hi) return 0;
    for (int k = 2; k < need; k++)
        if (b[k] < 0x80 || b[k] > 0xBF) return 0;
    return need;
}

/* Length (2..4) of a UTF-8 multi-byte sequence spelt as single-byte
 * characters starting at in[i], or 0.  *cp gets the decoded character. */
static int mojibake_seq_at(const sd_utext *in, size_t i, uint32_t *cp) {
    unsigned char b[4];
    int k = 0;
    for (; k < 4 && i + (size_t)k < in->n; k++) {
        int x = any_byte(in->cp[i + (size_t)k]);
        if (x < 0) break;
        b[k] = (unsigned char)x;
    }
    if (k < 2 || b[0] < 0xC2) return 0;
    int len = utf8_valid_seq(b, (size_t)k);
    if (len < 2) return 0;
    sd_utext one = {0};
    sd_utf8_decode((const char *)b, (size_t)len, &one);
    *cp = one.n == 1 ? one.cp[0] : 0xFFFD;
    sd_utext_free(&one);
    /* A sequence that decodes to an unassigned code point, a control or a
     * combining mark is more likely real text (e.g. "ß²") than mojibake. */
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)*cp);
    if (cat == UTF8PROC_CATEGORY_CN || cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_MN ||
        cat == UTF8PROC_CATEGORY_MC || cat == UTF8PROC_CATEGORY_ME)
        return 0;
    return len;
}

/* Stand-in for ftfy's is_bad(): the text spells at least one UTF-8
 * multi-byte sequence in Latin-1 / cp1252 characters. */
static int looks_like_mojibake(const sd_utext *in) {
    uint32_t cp;
    for (size_t i = 0; i + 1 < in->n; i++)
        if (in->cp[i] >= 0x80 && mojibake_seq_at(in, i, &cp)) return 1;
    return 0;
}

/* --------------------------------------------------------------- encoding */

/* ftfy's replace_lossy_sequences (sloppy codecs only): a UTF-8 sequence
 * whose continuation bytes were lost (byte 1A) becomes one U+FFFD, as does
 * a lone 1A.  Rewrites bytes[0..*n) in place; the buffer must hold 3 * *n
 * bytes (each 1A may become EF BF BD).  Out of memory: left unchanged. */
static void replace_lossy_sequences(unsigned char *bytes, size_t *n) {
    static const unsigned char fffd[3] = {0xEF, 0xBF, 0xBD};
    unsigned char *out = malloc(*n * 3 + 1);
    if (!out) return;
    size_t o = 0, i = 0;
    while (i < *n) {
        unsigned b = bytes[i];
        int need = b >= 0xC2 && b <= 0xDF ? 2 : b >= 0xE0 && b <= 0xEF ? 3 : b >= 0xF0 && b <= 0xF4 ? 4 : 0;
        int lost = 0, ok = need && i + (size_t)need <= *n;
        for (int k = 1; ok && k < need; k++) {
            unsigned x = bytes[i + (size_t)k];
            lost |= x == 0x1A;
            ok = x == 0x1A || (x >= 0x80 && x <= 0xBF);
        }
        if ((ok && lost) || b == 0x1A) {
            memcpy(out + o, fffd, 3);
            o += 3;
            i += ok && lost ? (size_t)need : 1;
        } else {
            out[o++] = (unsigned char)b;
            i++;
        }
    }
    memcpy(bytes, out, o);
    *n = o;
    free(out);
}

/* Encodes the whole text in `enc`, decodes the bytes as UTF-8; 1 on
 * success (out = repaired text), 0 if either step fails. */
static int reencode_whole(const sd_utext *in, int enc, sd_utext *out) {
    unsigned char *bytes = malloc(in->n * 3 + 1);
    if (!bytes) {
        out->oom = 1;
        return 0;
    }
    size_t n = 0;
    for (size_t i = 0; i < in->n; i++) {
        int b = single_byte(in->cp[i], enc);
        if (b < 0) {
            free(bytes);
            return 0;
        }
        bytes[n++] = (unsigned char)b;
    }
    if (enc == ENC_SLOPPY1252) replace_lossy_sequences(bytes, &n);
    for (size_t i = 0; i < n;) {
        int len = utf8_valid_seq(bytes + i, n - i);
        if (!len) {
            free(bytes);
            return 0;
        }
        i += (size_t)len;
    }
    sd_utext_clear(out);
    sd_utf8_decode((const char *)bytes, n, out);
    free(bytes);
    return 1;
}

/* ftfy decode_inconsistent_utf8: repair each embedded mojibake sequence. */
static int decode_inconsistent_utf8(const sd_utext *in, sd_utext *out) {
    int changed = 0;
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n;) {
        uint32_t cp;
        int len = in->cp[i] >= 0x80 ? mojibake_seq_at(in, i, &cp) : 0;
        if (len && (size_t)len < in->n) {
            sd_utext_push(out, cp);
            i += (size_t)len;
            changed = 1;
        } else {
            sd_utext_push(out, in->cp[i++]);
        }
    }
    return changed;
}

static int is_ascii(const sd_utext *t) {
    for (size_t i = 0; i < t->n; i++)
        if (t->cp[i] >= 0x80) return 0;
    return 1;
}

/* ftfy _fix_encoding_one_step (restricted, see normalize.h): 1 if changed. */
static int fix_encoding_one_step(const sd_utext *in, sd_utext *out) {
    if (in->n == 0 || is_ascii(in) || !looks_like_mojibake(in)) return 0;
    if (reencode_whole(in, ENC_LATIN1, out)) return 1;
    if (reencode_whole(in, ENC_SLOPPY1252, out)) return 1;
    return decode_inconsistent_utf8(in, out);
}

static void fix_encoding(sd_utext *text, sd_utext *tmp) {
    for (int round = 0; round < FTFY_MAX_ROUNDS; round++) {
        if (!fix_encoding_one_step(text, tmp) || sd_utext_equal(text, tmp)) return;
        sd_utext_swap(text, tmp);
    }
}

/* ------------------------------------------------------------ unescape_html */

static int is_ascii_alnum(uint32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int hex_value(uint32_t c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

/* html.unescape of "&#<body>;" (body = what lies between "&#" and ";"), as
 * ftfy keeps it: only if the whole reference is consumed.  Returns the
 * number of code points produced (0 or 1), or -1 to keep the text as is. */
static int numeric_reference(const uint32_t *body, size_t n, uint32_t *cp) {
    int hex = body[0] == 'x' || body[0] == 'X';
    size_t start = hex ? 1 : 0;
    if (start >= n) return -1;
    uint64_t num = 0;
    for (size_t i = start; i < n; i++) {
        int v = hex ? hex_value(body[i]) : (body[i] >= '0' && body[i] <= '9' ? (int)(body[i] - '0') : -1);
        if (v < 0) return -1;
        num = num * (hex ? 16u : 10u) + (uint64_t)v;
        if (num > 0x7FFFFFFFu) num = 0x7FFFFFFFu; /* any value > U+10FFFF behaves the same */
    }
    int got = sd_html_charref(num, cp);
    /* ftfy keeps the reference when the result still contains ';'. */
    return got == 1 && *cp == ';' ? -1 : got;
}

/* ftfy unescape_html: HTML_ENTITY_RE = &#?[0-9A-Za-z]{1,24}; replaced by
 * the entity table or Python's html.unescape for numeric references. */
static void unescape_html(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n;) {
        if (in->cp[i] == '&') {
            size_t j = i + 1;
            int numeric = j < in->n && in->cp[j] == '#';
            if (numeric) j++;
            size_t body = j;
            while (j < in->n && j - body < 24 && is_ascii_alnum(in->cp[j])) j++;
            if (j > body && j < in->n && in->cp[j] == ';') {
                char name[32];
                size_t len = j + 1 - i;
                for (size_t k = 0; k < len; k++) name[k] = (char)in->cp[i + k];
                const char *rep = numeric ? NULL : sd_html_entity_lookup(name, len);
                uint32_t cp;
                int got = numeric ? numeric_reference(in->cp + body, j - body, &cp) : -1;
                if (rep) {
                    sd_utext_append_utf8(out, rep, strlen(rep));
                    i = j + 1;
                    continue;
                }
                if (got >= 0) {
                    if (got) sd_utext_push(out, cp);
                    i = j + 1;
                    continue;
                }
            }
        }
        sd_utext_push(out, in->cp[i++]);
    }
}

/* ------------------------------------------------- the per-character fixers */

/* ftfy fix_c1_controls: C1 controls read as their cp1252 characters. */
static void fix_c1_controls(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->cp[i];
        sd_utext_push(out, c >= 0x80 && c < 0xA0 ? sloppy1252_decode(c) : c);
    }
}

/* ftfy chardata.LIGATURES. */
static const struct {
    uint32_t c;
    const char *rep;
} k_ligatures[] = {
    {0x0132, "IJ"}, {0x0133, "ij"},           {0x0149, "\xca\xbcn"}, {0x01F1, "DZ"},
    {0x01F2, "Dz"}, {0x01F3, "dz"},           {0x01C4, "D\xc5\xbd"}, {0x01C5, "D\xc5\xbe"},
    {0x01C6, "d\xc5\xbe"}, {0x01C7, "LJ"},    {0x01C8, "Lj"},        {0x01C9, "lj"},
    {0x01CA, "NJ"}, {0x01CB, "Nj"},           {0x01CC, "nj"},        {0xFB00, "ff"},
    {0xFB01, "fi"}, {0xFB02, "fl"},           {0xFB03, "ffi"},       {0xFB04, "ffl"},
    {0xFB05, "\xc5\xbft"}, {0xFB06, "st"},
};

static void fix_latin_ligatures(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->cp[i];
        const char *rep = NULL;
        if ((c >= 0x0132 && c <= 0x01F3) || (c >= 0xFB00 && c <= 0xFB06))
            for (size_t k = 0; k < sizeof k_ligatures / sizeof k_ligatures[0]; k++)
                if (k_ligatures[k].c == c) rep = k_ligatures[k].rep;
        if (rep) sd_utext_append_utf8(out, rep, strlen(rep));
        else sd_utext_push(out, c);
    }
}

/* NFKC of one character appended to out (utf8proc). */
static void push_nfkc(sd_utext *out, uint32_t c) {
    char buf[4];
    int n = sd_utf8_put(c, buf);
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)buf, n, &dst,
                                        UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    if (len < 0) sd_utext_push(out, c);
    else sd_utext_append_utf8(out, (const char *)dst, (size_t)len);
    free(dst);
}

/* ftfy fix_character_width: U+3000 -> ' ', U+FF01..U+FFEF -> NFKC form. */
static void fix_character_width(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->cp[i];
        if (c == 0x3000) sd_utext_push(out, ' ');
        else if (c >= 0xFF01 && c <= 0xFFEF) push_nfkc(out, c);
        else sd_utext_push(out, c);
    }
}

/* ftfy uncurl_quotes: [\u02bc\u2018-\u201b] -> ', [\u201c-\u201f] -> ". */
static void uncurl_quotes(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->cp[i];
        if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
        else if (c >= 0x201C && c <= 0x201F) c = '"';
        sd_utext_push(out, c);
    }
}

/* ftfy fix_line_breaks: \r\n, \r, U+2028, U+2029, U+0085 -> \n. */
static void fix_line_breaks(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->cp[i];
        if (c == '\r' && i + 1 < in->n && in->cp[i + 1] == '\n') continue;
        if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
        sd_utext_push(out, c);
    }
}

/* ftfy remove_terminal_escapes: ANSI_RE = \033\[((?:\d|;)*)([a-zA-Z]). */
static void remove_terminal_escapes(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n;) {
        if (in->cp[i] == 0x1B && i + 1 < in->n && in->cp[i + 1] == '[') {
            size_t j = i + 2;
            while (j < in->n && (in->cp[j] == ';' || sd_uc_decimal_value(in->cp[j]) >= 0)) j++;
            uint32_t c = j < in->n ? in->cp[j] : 0;
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
                i = j + 1;
                continue;
            }
        }
        sd_utext_push(out, in->cp[i++]);
    }
}

/* ftfy chardata.CONTROL_CHARS. */
static int is_removed_control(uint32_t c) {
    return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
           (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

static void remove_control_chars(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n; i++)
        if (!is_removed_control(in->cp[i])) sd_utext_push(out, in->cp[i]);
}

/* unicodedata.normalize("NFC", text) via utf8proc.  -1 on failure. */
static int nfc(const sd_utext *in, sd_utext *out) {
    size_t len;
    char *s = sd_utf8_encode(in->cp, in->n, &len);
    if (!s) return -1;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &dst,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    free(s);
    if (n < 0) return -1;
    sd_utext_clear(out);
    sd_utext_append_utf8(out, (const char *)dst, (size_t)n);
    free(dst);
    return 0;
}

/* ------------------------------------------------------------------ fix_text */

typedef void (*fixer_fn)(const sd_utext *in, sd_utext *out);

/* ftfy fix_and_explain on one segment (text is replaced in place). */
static int fix_segment(sd_utext *text, int unescape, sd_utext *orig, sd_utext *tmp) {
    /* ftfy's order (fix_surrogates omitted: decoded UTF-8 has no surrogates). */
    static const fixer_fn fixers[] = {fix_c1_controls,     fix_latin_ligatures,
                                      fix_character_width, uncurl_quotes,
                                      fix_line_breaks,     remove_terminal_escapes,
                                      remove_control_chars};
    for (int round = 0; round < FTFY_MAX_ROUNDS; round++) {
        sd_utext_clear(orig);
        sd_utext_append(orig, text->cp, text->n);
        if (unescape) {
            unescape_html(text, tmp);
            sd_utext_swap(text, tmp);
        }
        fix_encoding(text, tmp);
        for (size_t k = 0; k < sizeof fixers / sizeof fixers[0]; k++) {
            fixers[k](text, tmp);
            sd_utext_swap(text, tmp);
        }
        if (nfc(text, tmp)) return -1;
        sd_utext_swap(text, tmp);
        if (text->oom || tmp->oom || orig->oom) return -1;
        if (sd_utext_equal(text, orig)) break;
    }
    return 0;
}

int sd_ftfy_fix_text(const sd_utext *in, sd_utext *out, sd_error *err) {
    sd_utext seg = {0}, orig = {0}, tmp = {0};
    int unescape = 1, rc = 0;
    sd_utext_clear(out);
    for (size_t pos = 0; pos < in->n && rc == 0;) {
        size_t end = pos;
        while (end < in->n && in->cp[end] != '\n') end++;
        end = end < in->n ? end + 1 : end; /* the segment keeps its '\n' */
        if (end - pos > FTFY_MAX_DECODE_LENGTH) end = pos + FTFY_MAX_DECODE_LENGTH;
        sd_utext_clear(&seg);
        sd_utext_append(&seg, in->cp + pos, end - pos);
        /* unescape_html="auto": off for this and every later segment once a
         * segment contains '<' (fix_text replaces its config). */
        for (size_t i = 0; i < seg.n && unescape; i++)
            if (seg.cp[i] == '<') unescape = 0;
        rc = fix_segment(&seg, unescape, &orig, &tmp);
        sd_utext_append(out, seg.cp, seg.n);
        pos = end;
    }
    if (out->oom || seg.oom) rc = -1;
    sd_utext_free(&seg);
    sd_utext_free(&orig);
    sd_utext_free(&tmp);
    return rc ? sd_fail(err, "text normalisation: out of memory") : 0;
}

/* ------------------------------------------------- whitespace_clean, lower */

/* whitespace_clean: re.sub(r"\s+", " ") with the `regex` module's \s, strip(). */
static void whitespace_clean(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n;) {
        if (sd_uc_is_regex_space(in->cp[i])) {
            while (i < in->n && sd_uc_is_regex_space(in->cp[i])) i++;
            sd_utext_push(out, ' ');
        } else {
            sd_utext_push(out, in->cp[i++]);
        }
    }
    size_t a = 0, b = out->n;
    while (a < b && sd_uc_is_py_space(out->cp[a])) a++;
    while (b > a && sd_uc_is_py_space(out->cp[b - 1])) b--;
    if (a) memmove(out->cp, out->cp + a, (b - a) * sizeof *out->cp);
    out->n = b - a;
}

/* Unicode "Cased" (approximated by having a case mapping or being Lt). */
static int is_cased(uint32_t c) {
    if (c > 0x10FFFF) return 0;
    return utf8proc_islower((utf8proc_int32_t)c) || utf8proc_isupper((utf8proc_int32_t)c) ||
           utf8proc_category((utf8proc_int32_t)c) == UTF8PROC_CATEGORY_LT;
}

/* Unicode "Case_Ignorable": Mn, Me, Cf, Lm, Sk, and the Word_Break
 * MidLetter / MidNumLet / Single_Quote characters. */
static int is_case_ignorable(uint32_t c) {
    static const uint32_t mid[] = {'\'', '.', ':', 0xB7, 0x387, 0x55F, 0x5F4, 0x2018, 0x2019,
                                   0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
    for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++)
        if (c == mid[i]) return 1;
    if (c > 0x10FFFF) return 0;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_ME || k == UTF8PROC_CATEGORY_CF ||
           k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_SK;
}

/* CPython handle_capital_sigma: Σ is final after a cased letter (skipping
 * case-ignorables) when no cased letter follows (same skipping). */
static int final_sigma(const sd_utext *t, size_t i) {
    size_t j = i;
    while (j > 0 && is_case_ignorable(t->cp[j - 1])) j--;
    if (j == 0 || !is_cased(t->cp[j - 1])) return 0;
    j = i + 1;
    while (j < t->n && is_case_ignorable(t->cp[j])) j++;
    return j == t->n || !is_cased(t->cp[j]);
}

/* Python str.lower(). */
static void py_lower(const sd_utext *in, sd_utext *out) {
    sd_utext_clear(out);
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->cp[i];
        if (c == 0x130) { /* SpecialCasing: İ -> i + COMBINING DOT ABOVE */
            sd_utext_push(out, 'i');
            sd_utext_push(out, 0x307);
        } else if (c == 0x3A3) {
            sd_utext_push(out, final_sigma(in, i) ? 0x3C2 : 0x3C3);
        } else {
            sd_utext_push(out, c <= 0x10FFFF ? (uint32_t)utf8proc_tolower((utf8proc_int32_t)c) : c);
        }
    }
}

int sd_clip_normalize(const char *text, size_t len, sd_utext *out, size_t *n_invalid,
                      sd_error *err) {
    sd_utext raw = {0}, fixed = {0};
    size_t bad = sd_utf8_decode(text, len, &raw);
    if (n_invalid) *n_invalid = bad;
    int rc = raw.oom ? sd_fail(err, "text normalisation: out of memory") : 0;
    if (!rc) rc = sd_ftfy_fix_text(&raw, &fixed, err);
    if (!rc) {
        whitespace_clean(&fixed, &raw);
        py_lower(&raw, out);
        if (raw.oom || out->oom) rc = sd_fail(err, "text normalisation: out of memory");
    }
    sd_utext_free(&raw);
    sd_utext_free(&fixed);
    return rc;
}

int sd_clip_normalize_utf8(const char *text, size_t len, char **out, size_t *n_invalid,
                           sd_error *err) {
    sd_utext t = {0};
    *out = NULL;
    if (sd_clip_normalize(text, len, &t, n_invalid, err)) {
        sd_utext_free(&t);
        return -1;
    }
    *out = sd_utf8_encode(t.cp, t.n, NULL);
    sd_utext_free(&t);
    return *out ? 0 : sd_fail(err, "text normalisation: out of memory");
}
