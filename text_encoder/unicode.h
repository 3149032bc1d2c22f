/* text_encoder/unicode — code-point strings and the character classes the
 * tokenizer and the prompt parser need, on top of utf8proc.
 *
 * Text inside text_encoder/ is handled as arrays of Unicode scalar values
 * (sd_utext).  Input bytes are decoded as Python's bytes.decode("utf-8",
 * "replace") does: each maximal ill-formed subsequence becomes one U+FFFD, so
 * the caller can report that the prompt was not valid UTF-8.
 *
 * The classes mirror the regular expressions of the Python code we match:
 *   sd_uc_is_letter / sd_uc_is_number: \p{L}, \p{N} (general category L*, N*)
 *   sd_uc_is_regex_space: \s of the `regex` module = Unicode White_Space
 *   sd_uc_is_py_space: \s of Python's `re` / str.isspace() (adds U+1C..U+1F)
 *   sd_uc_is_py_word: \w of Python's `re` (letters, numbers, underscore)
 */
#ifndef SDMOE_TEXT_ENCODER_UNICODE_H
#define SDMOE_TEXT_ENCODER_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* A growable code-point string.  Appends never fail loudly: on allocation
 * failure `oom` is set and further appends are dropped; check it once at the
 * end of a pass.  Zero-initialise before first use; sd_utext_free releases. */
typedef struct sd_utext {
    uint32_t *cp;
    size_t n, cap;
    int oom;
} sd_utext;

void sd_utext_free(sd_utext *t);
void sd_utext_clear(sd_utext *t);
void sd_utext_push(sd_utext *t, uint32_t c);
void sd_utext_append(sd_utext *t, const uint32_t *c, size_t n);
/* Appends the code points of a valid UTF-8 string of len bytes. */
void sd_utext_append_utf8(sd_utext *t, const char *s, size_t len);
/* 1 if a and b hold the same code points. */
int sd_utext_equal(const sd_utext *a, const sd_utext *b);
/* Swaps the contents of a and b (cheap "b becomes the new a"). */
void sd_utext_swap(sd_utext *a, sd_utext *b);

/* Decodes s[0..len) and appends to out; returns the number of U+FFFD
 * substitutions made for ill-formed input (0 = valid UTF-8). */
size_t sd_utf8_decode(const char *s, size_t len, sd_utext *out);
/* Decodes the character at s[i] (i < len): returns it and its byte count in
 * *n; an ill-formed subsequence gives U+FFFD, *n = its length, *bad = 1. */
uint32_t sd_utf8_next(const char *s, size_t len, size_t i, size_t *n, int *bad);
/* Encodes c (a scalar value) into buf (>= 4 bytes); returns the byte count. */
int sd_utf8_put(uint32_t c, char *buf);
/* Encodes cp[0..n) as a NUL-terminated malloc'd UTF-8 string (NULL on OOM);
 * *len (optional) gets the byte count. */
char *sd_utf8_encode(const uint32_t *cp, size_t n, size_t *len);

int sd_uc_is_letter(uint32_t c);
int sd_uc_is_number(uint32_t c);
int sd_uc_is_regex_space(uint32_t c);
int sd_uc_is_py_space(uint32_t c);
int sd_uc_is_py_word(uint32_t c);
/* Value 0..9 of a decimal digit (general category Nd, any script), else -1. */
int sd_uc_decimal_value(uint32_t c);

#endif
