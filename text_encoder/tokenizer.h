/* text_encoder/tokenizer — Hugging Face's slow CLIPTokenizer
 * (transformers tokenization_clip.py, the one StableDiffusionPipeline
 * loads), read from a model's tokenizer/ folder.
 *
 * Files (in `dir`):
 *   vocab.json               {"token": id, ...}; must contain the special tokens
 *   merges.txt               "#version" line, then "a b" per line, by rank; as
 *                            HF's CLIPTokenizer only the first 48894 merges count
 *   tokenizer_config.json    optional: bos/eos/unk/pad_token (string or
 *   special_tokens_map.json    {"content": ...}; the map overrides the config),
 *                            model_max_length (default 77)
 * Defaults: bos <|startoftext|>, eos = unk = pad = <|endoftext|> (SD 1.x; SD 2.x
 * and SDXL's tokenizer_2 pad with "!" = id 0, which their files say).
 *
 * Tokenising: normalise (text_encoder/normalize.h), split with CLIP's
 * pattern (case-insensitive)
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * map each piece's UTF-8 bytes through GPT-2's byte->unicode table, mark the
 * last symbol with "</w>", merge adjacent pairs by lowest rank until none
 * applies, look the symbols up in the vocab (unknown -> unk).  Results per
 * piece are cached (a batch of prompts does not re-merge the same words).
 *
 * An sd_tokenizer is not thread-safe (the cache mutates): use one per thread.
 */
#ifndef SDMOE_TEXT_ENCODER_TOKENIZER_H
#define SDMOE_TEXT_ENCODER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct sd_tokenizer sd_tokenizer;

/* A growable list of token ids (zero-initialise; sd_ids_free releases). */
typedef struct sd_ids {
    int32_t *v;
    size_t n, cap;
    int oom;
} sd_ids;

void sd_ids_push(sd_ids *ids, int32_t id);
void sd_ids_free(sd_ids *ids);

/* Loads vocab.json + merges.txt (+ the optional json files) from dir. */
int sd_tokenizer_open(sd_tokenizer **out, const char *dir, sd_error *err);
void sd_tokenizer_free(sd_tokenizer *tok);

int sd_tokenizer_bos(const sd_tokenizer *tok);
int sd_tokenizer_eos(const sd_tokenizer *tok);
int sd_tokenizer_pad(const sd_tokenizer *tok);
int sd_tokenizer_unk(const sd_tokenizer *tok);
/* model_max_length: ids per encoded prompt, BOS and EOS included (77). */
int sd_tokenizer_max_length(const sd_tokenizer *tok);
/* 1 + the largest id in vocab.json. */
int sd_tokenizer_vocab_size(const sd_tokenizer *tok);
/* Id of a vocab entry (e.g. ",</w>"), or -1. */
int sd_tokenizer_token_id(const sd_tokenizer *tok, const char *token);
/* The vocab string of an id (byte-encoded, e.g. "photo</w>"), or NULL. */
const char *sd_tokenizer_token_str(const sd_tokenizer *tok, int id);
/* Entries in the per-piece BPE cache (for tests and diagnostics). */
size_t sd_tokenizer_cache_entries(const sd_tokenizer *tok);

/* Appends the ids of text[0..len) (no BOS/EOS, no truncation) to out, as
 * tokenizer(text, add_special_tokens=False).  *n_invalid (optional) gets the
 * number of ill-formed UTF-8 subsequences that were replaced by U+FFFD. */
int sd_tokenizer_tokenize(sd_tokenizer *tok, const char *text, size_t len, sd_ids *out,
                          size_t *n_invalid, sd_error *err);

/* tokenizer(text, padding="max_length", max_length, truncation=True):
 * ids[max_length] = [bos] + first (max_length-2) tokens + [eos] + pad...
 * *n_tokens (optional) = tokens before truncation; *n_dropped (optional) =
 * tokens cut off (diffusers' "The following part of your input was
 * truncated" warning); *n_invalid as above.  text is NUL-terminated. */
int sd_tokenizer_encode(sd_tokenizer *tok, const char *text, int32_t *ids, int *n_tokens,
                        int *n_dropped, size_t *n_invalid, sd_error *err);

#endif
