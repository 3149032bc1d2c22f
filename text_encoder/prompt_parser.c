/* A1111 parse_prompt_attention: a left-to-right scan with the alternatives of
 * its re_attention pattern, tried in its order at every position:
 *   \( \) \[ \] \\ \  (  [  :\s*([+-]?[.\d]+)\s*\)  )  ]  [^\\()\[\]:]+  :
 * Text runs are split at re_break = \s*\bBREAK\b\s* (Python `re`: \s and \w
 * are Unicode-aware). */
#include "text_encoder/prompt_parser.h"

#include <stdlib.h>
#include <string.h>

#include "text_encoder/unicode.h"

#define ROUND_MULTIPLIER 1.1
#define SQUARE_MULTIPLIER (1 / 1.1)

typedef struct piece_list {
    sd_prompt_piece *v;
    int n, cap;
    int oom;
} piece_list;

typedef struct int_stack {
    int *v;
    int n, cap;
    int oom;
} int_stack;

static void pieces_add(piece_list *l, const char *s, size_t len, double weight) {
    if (l->oom) return;
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 16;
        sd_prompt_piece *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) {
            l->oom = 1;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    char *t = malloc(len + 1);
    if (!t) {
        l->oom = 1;
        return;
    }
    memcpy(t, s, len);
    t[len] = 0;
    l->v[l->n++] = (sd_prompt_piece){t, weight, 0};
}

static void stack_push(int_stack *s, int x) {
    if (s->oom) return;
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 16;
        int *v = realloc(s->v, (size_t)cap * sizeof *v);
        if (!v) {
            s->oom = 1;
            return;
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
}

/* multiply_range: every piece from `start` on gets weight *= m. */
static void multiply_range(piece_list *l, int start, double m) {
    for (int p = start; p < l->n; p++) l->v[p].weight *= m;
}

/* ------------------------------------------------------------ characters */

/* Code point at s[i] (ill-formed -> U+FFFD); *len its byte count. */
static uint32_t cp_at(const char *s, size_t n, size_t i, size_t *len) {
    int bad;
    return sd_utf8_next(s, n, i, len, &bad);
}

/* Code point ending just before s[i] (i > 0). */
static uint32_t cp_before(const char *s, size_t n, size_t i) {
    size_t j = i - 1;
    while (j > 0 && i - j < 4 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
    size_t len;
    uint32_t c = cp_at(s, n, j, &len);
    return j + len == i ? c : 0xFFFD;
}

static size_t skip_space(const char *s, size_t n, size_t i) {
    size_t len;
    while (i < n && sd_uc_is_py_space(cp_at(s, n, i, &len))) i += len;
    return i;
}

/* ---------------------------------------------------------------- BREAK */

/* Length of the re_break match \s*\bBREAK\b\s* starting exactly at i, or 0. */
static size_t break_match_at(const char *s, size_t n, size_t i) {
    size_t j = skip_space(s, n, i), len;
    if (n - j < 5 || memcmp(s + j, "BREAK", 5) != 0) return 0;
    if (j > 0 && sd_uc_is_py_word(cp_before(s, n, j))) return 0;
    if (j + 5 < n && sd_uc_is_py_word(cp_at(s, n, j + 5, &len))) return 0;
    return skip_space(s, n, j + 5) - i;
}

/* The A1111 "else" branch: a text run split at BREAKs; each split adds a
 * ("BREAK", -1) piece between the parts (empty parts included). */
static void add_text(piece_list *l, const char *s, size_t n) {
    size_t start = 0, len;
    for (size_t i = 0; i < n;) {
        size_t m = break_match_at(s, n, i);
        if (m) {
            pieces_add(l, s + start, i - start, 1.0);
            pieces_add(l, "BREAK", 5, -1.0);
            start = i = i + m;
            continue;
        }
        cp_at(s, n, i, &len);
        i += len;
    }
    pieces_add(l, s + start, n - start, 1.0);
}

/* --------------------------------------------------------------- weights */

/* Matches :\s*([+-]?[.\d]+)\s*\) at s[i] == ':'.  Returns the match length
 * (0 = no match); *ok = 1 and *w when Python's float() accepts the number. */
static size_t weight_close_at(const char *s, size_t n, size_t i, double *w, int *ok) {
    char num[64];
    size_t k = 0, len;
    int digits = 0, dots = 0;
    size_t j = skip_space(s, n, i + 1);
    if (j < n && (s[j] == '+' || s[j] == '-')) num[k++] = s[j++];
    while (j < n) {
        uint32_t c = cp_at(s, n, j, &len);
        int d = sd_uc_decimal_value(c);
        if (c != '.' && d < 0) break;
        if (k < sizeof num - 1) num[k++] = c == '.' ? '.' : (char)('0' + d);
        digits += d >= 0;
        dots += c == '.';
        j += len;
    }
    if (!digits && !dots) return 0;
    j = skip_space(s, n, j);
    if (j >= n || s[j] != ')') return 0;
    num[k] = 0;
    *ok = digits > 0 && dots <= 1 && k < sizeof num - 1;
    *w = *ok ? strtod(num, NULL) : 1.0;
    return j + 1 - i;
}

/* --------------------------------------------------------------- parsing */

static size_t text_run_end(const char *s, size_t n, size_t i) {
    while (i < n && !strchr("\\()[]:", s[i])) i++;
    return i;
}

static void merge_equal_weights(piece_list *l) {
    int i = 0;
    while (i + 1 < l->n && !l->oom) {
        if (l->v[i].weight != l->v[i + 1].weight) {
            i++;
            continue;
        }
        size_t a = strlen(l->v[i].text), b = strlen(l->v[i + 1].text);
        char *t = realloc(l->v[i].text, a + b + 1);
        if (!t) {
            l->oom = 1;
            return;
        }
        memcpy(t + a, l->v[i + 1].text, b + 1);
        l->v[i].text = t;
        free(l->v[i + 1].text);
        memmove(l->v + i + 1, l->v + i + 2, (size_t)(l->n - i - 2) * sizeof *l->v);
        l->n--;
    }
}

static void parse(const char *s, size_t n, piece_list *l, int_stack *round, int_stack *square) {
    for (size_t i = 0; i < n;) {
        char c = s[i];
        double w;
        int ok;
        size_t m;
        if (c == '\\') {
            int esc = i + 1 < n && strchr("()[]\\", s[i + 1]) && s[i + 1];
            pieces_add(l, s + i + 1, esc ? 1 : 0, 1.0);
            i += esc ? 2 : 1;
        } else if (c == '(' || c == '[') {
            stack_push(c == '(' ? round : square, l->n);
            i++;
        } else if (c == ':' && (m = weight_close_at(s, n, i, &w, &ok)) > 0) {
            if (round->n && ok) multiply_range(l, round->v[--round->n], w);
            else add_text(l, s + i, m);
            i += m;
        } else if (c == ')' && round->n) {
            multiply_range(l, round->v[--round->n], ROUND_MULTIPLIER);
            i++;
        } else if (c == ']' && square->n) {
            multiply_range(l, square->v[--square->n], SQUARE_MULTIPLIER);
            i++;
        } else if (c == ')' || c == ']' || c == ':') {
            add_text(l, s + i, 1);
            i++;
        } else {
            m = text_run_end(s, n, i);
            add_text(l, s + i, m - i);
            i = m;
        }
    }
    for (int k = 0; k < round->n; k++) multiply_range(l, round->v[k], ROUND_MULTIPLIER);
    for (int k = 0; k < square->n; k++) multiply_range(l, square->v[k], SQUARE_MULTIPLIER);
    if (l->n == 0) pieces_add(l, "", 0, 1.0);
    merge_equal_weights(l);
}

int sd_prompt_parse_a1111(const char *prompt, sd_prompt_parsed *out, sd_error *err) {
    piece_list l = {0};
    int_stack round = {0}, square = {0};
    out->pieces = NULL;
    out->n = 0;
    parse(prompt, strlen(prompt), &l, &round, &square);
    int oom = l.oom || round.oom || square.oom;
    free(round.v);
    free(square.v);
    if (oom) {
        sd_prompt_parsed tmp = {l.v, l.n};
        sd_prompt_parsed_free(&tmp);
        return sd_fail(err, "prompt parser: out of memory");
    }
    for (int i = 0; i < l.n; i++) l.v[i].is_break = l.v[i].weight == -1.0 && strcmp(l.v[i].text, "BREAK") == 0;
    out->pieces = l.v;
    out->n = l.n;
    return 0;
}

void sd_prompt_parsed_free(sd_prompt_parsed *p) {
    for (int i = 0; i < p->n; i++) free(p->pieces[i].text);
    free(p->pieces);
    p->pieces = NULL;
    p->n = 0;
}
