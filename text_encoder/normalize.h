/* text_encoder/normalize — the text clean-up Hugging Face's slow
 * CLIPTokenizer applies before BPE (transformers' tokenization_clip.py with
 * ftfy installed, which is what StableDiffusionPipeline loads):
 *
 *     text = whitespace_clean(ftfy.fix_text(text)).lower()
 *
 * ftfy.fix_text (ftfy 6.x, default config) is reproduced step for step for
 * everything except its mojibake *detector*: fix_text works line by line
 * (a line = up to and including '\n'); HTML entities are decoded only until
 * a line containing '<' is seen; each line loops over
 *   unescape_html -> fix_encoding -> fix_c1_controls -> fix_latin_ligatures ->
 *   fix_character_width -> uncurl_quotes -> fix_line_breaks ->
 *   remove_terminal_escapes -> remove_control_chars -> NFC
 * until nothing changes.  fix_encoding here repairs UTF-8 that was decoded as
 * Latin-1 or (sloppy) Windows-1252, as a whole line when the whole line
 * re-encodes to valid UTF-8, otherwise sequence by sequence.  Where ftfy
 * consults its "badness" heuristic we require instead that the text contains
 * at least one complete UTF-8 multi-byte sequence spelt in Latin-1/cp1252
 * characters (e.g. "Ã©", "â€™") that decodes to an assigned, non-control,
 * non-combining character.  Not reproduced: repairs through other
 * single-byte code pages (cp1251/1250/1253/1254/1257, iso-8859-2, MacRoman,
 * cp437), restore_byte_a0, and CESU-8 ("utf-8-variants") decoding.
 *
 * whitespace_clean: runs of Unicode White_Space -> one ' ', then strip.
 * lower: Python's str.lower() (full mapping of U+0130, final-sigma rule).
 */
#ifndef SDMOE_TEXT_ENCODER_NORMALIZE_H
#define SDMOE_TEXT_ENCODER_NORMALIZE_H

#include <stddef.h>

#include "core/error.h"
#include "text_encoder/unicode.h"

/* Normalises the UTF-8 text[0..len) into out (cleared first).  Ill-formed
 * UTF-8 is replaced by U+FFFD (one per maximal ill-formed subsequence) and
 * counted in *n_invalid (optional).  Fails only when out of memory. */
int sd_clip_normalize(const char *text, size_t len, sd_utext *out, size_t *n_invalid,
                      sd_error *err);

/* The same, returning a malloc'd NUL-terminated UTF-8 string in *out. */
int sd_clip_normalize_utf8(const char *text, size_t len, char **out, size_t *n_invalid,
                           sd_error *err);

/* Only ftfy.fix_text (no whitespace clean-up, no lower-casing); in -> out. */
int sd_ftfy_fix_text(const sd_utext *in, sd_utext *out, sd_error *err);

#endif
