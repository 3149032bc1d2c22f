/* text_encoder/prompt_parser — AUTOMATIC1111's prompt attention syntax
 * (stable-diffusion-webui modules/prompt_parser.py, parse_prompt_attention):
 * splits a prompt into text pieces with emphasis weights and BREAK markers.
 *
 *   (text)        weight x 1.1        ((text)) x 1.21, nesting multiplies
 *   [text]        weight / 1.1 (x 1/1.1)
 *   (text:1.3)    weight x 1.3        (number: [+-]?[.0-9]+, spaces allowed
 *                                      around it; any decimal digit counts)
 *   \( \) \[ \]   literal brackets; \\ a literal backslash; any other
 *                 backslash is dropped
 *   BREAK         (upper case, a whole word, with the surrounding
 *                 whitespace) starts a new 75-token chunk
 * Unbalanced brackets as A1111: an unclosed ( or [ applies its factor to
 * the end of the prompt; a stray ) or ] and a ":1.3)" with no open ( are
 * literal text.  Adjacent pieces of equal weight are merged.  A BREAK inside
 * brackets gets multiplied too and then is only the word "BREAK" with that
 * (negative) weight — A1111 behaves the same way.
 * Differences: a weight Python's float() rejects (e.g. "1.2.3"), on which
 * A1111 stops with an error, is kept as literal text; weights are parsed
 * with the C locale's strtod.  Prompt editing ([a:b:0.5], [a|b]) and
 * composable " AND " are not part of this syntax layer.
 */
#ifndef SDMOE_TEXT_ENCODER_PROMPT_PARSER_H
#define SDMOE_TEXT_ENCODER_PROMPT_PARSER_H

#include "core/error.h"

typedef struct sd_prompt_piece {
    char *text;    /* UTF-8 bytes of the prompt (escapes resolved), NUL-terminated */
    double weight; /* product of the enclosing brackets' factors (A1111 in double) */
    int is_break;  /* text == "BREAK" && weight == -1: a chunk break, not text */
} sd_prompt_piece;

typedef struct sd_prompt_parsed {
    sd_prompt_piece *pieces;
    int n;
} sd_prompt_parsed;

/* Parses a NUL-terminated prompt (any bytes; ill-formed UTF-8 is passed
 * through to the tokenizer).  Always yields at least one piece ("" for an
 * empty prompt).  Fails only when out of memory. */
int sd_prompt_parse_a1111(const char *prompt, sd_prompt_parsed *out, sd_error *err);
void sd_prompt_parsed_free(sd_prompt_parsed *p);

#endif
