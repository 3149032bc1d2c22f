/* text_encoder/conditioning — prompt string -> UNet context, the one call the
 * pipeline makes for the prompt and for the negative prompt.
 *
 *   plain  (--prompt-syntax plain): diffusers v0.27.2 StableDiffusionPipeline.
 *          encode_prompt: tokenizer(prompt, padding="max_length", max_length=77,
 *          truncation=True) -> one chunk; tokens past 75 are dropped and
 *          counted in n_dropped (diffusers logs them as truncated).
 *   a1111  (--prompt-syntax a1111, the default): stable-diffusion-webui's
 *          FrozenCLIPEmbedderWithCustomWords: prompt_parser.h pieces, each
 *          tokenised separately, packed into chunks of 75 tokens (+BOS/EOS,
 *          padded with EOS, then pad after the first EOS).  When a chunk is full
 *          and a comma (",</w>") lies within the last 20 tokens, the tokens
 *          after that comma move to the next chunk.  BREAK closes the chunk.
 *          Chunks are encoded separately and concatenated along the tokens;
 *          emphasis is applied per chunk the "Original" way: z *= weight of
 *          each token, then z *= mean(z before) / mean(z after).
 * A prompt without syntax and <= 75 tokens gives the same ids and the same
 * embedding in both modes.
 *
 * clip_skip has A1111's meaning (clip_text.h sd_clip_skip_layer): 1 = last
 * layer (last_hidden_state), 2 = penultimate layer + final_layer_norm, ...
 *
 * Uncond/cond of different chunk counts: A1111 ("pad_cond_uncond") appends
 * the empty prompt's embedding to the shorter one: sd_conditioning_pad_pair.
 */
#ifndef SDMOE_TEXT_ENCODER_CONDITIONING_H
#define SDMOE_TEXT_ENCODER_CONDITIONING_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "text_encoder/clip_text.h"
#include "text_encoder/tokenizer.h"

typedef enum sd_prompt_syntax { SD_PROMPT_SYNTAX_PLAIN, SD_PROMPT_SYNTAX_A1111 } sd_prompt_syntax;

/* "plain" / "a1111". */
const char *sd_prompt_syntax_name(sd_prompt_syntax s);
/* Parses a name; fails naming the accepted values. */
int sd_prompt_syntax_parse(const char *name, sd_prompt_syntax *out, sd_error *err);

/* Token chunks of one prompt. */
typedef struct sd_prompt_chunks {
    int n_chunks;
    int chunk_len;    /* ids per chunk, BOS and EOS included (tokenizer max_length, 77) */
    int32_t *ids;     /* [n_chunks, chunk_len] */
    float *weights;   /* [n_chunks, chunk_len] emphasis multipliers (1 on BOS/EOS/pad) */
    int n_tokens;     /* prompt tokens, BOS/EOS excluded (A1111's token count) */
    int n_dropped;    /* plain: tokens cut off after the first chunk_len - 2; a1111: 0 */
    size_t n_invalid_utf8; /* ill-formed UTF-8 subsequences replaced by U+FFFD */
} sd_prompt_chunks;

int sd_prompt_chunks_build(sd_tokenizer *tok, const char *prompt, sd_prompt_syntax syntax,
                           sd_prompt_chunks *out, sd_error *err);
void sd_prompt_chunks_free(sd_prompt_chunks *c);

/* Encodes every chunk (one batched forward) into emb [n_chunks * chunk_len,
 * hidden]: hidden state `layer` (+ final_layer_norm if final_norm), then the
 * emphasis where a chunk has a weight != 1. */
int sd_conditioning_encode_chunks(sd_clip_text *model, const sd_prompt_chunks *chunks, int layer,
                                  int final_norm, float *emb, sd_error *err);
/* The same, and (pooled != NULL) every chunk's pooled output [n_chunks,
 * projection_dim or hidden] (clip_text.h: final_layer_norm of the last layer
 * at the EOS, projected when the model has a projection; no emphasis), from
 * the same forward pass. */
int sd_conditioning_encode_chunks_pooled(sd_clip_text *model, const sd_prompt_chunks *chunks, int layer,
                                         int final_norm, float *emb, float *pooled, sd_error *err);

/* The embedding of one prompt. */
typedef struct sd_text_cond {
    float *emb;       /* [n_chunks * chunk_len, hidden] (the UNet's context rows) */
    int n_chunks, chunk_len, hidden;
    float *pooled;    /* [pooled_dim]: SDXL's pooled text embedding (sdxl_conditioning.h); NULL for SD 1.x */
    int pooled_dim;
    int n_tokens, n_dropped;
    size_t n_invalid_utf8;
} sd_text_cond;

/* Tokenise + encode `prompt` (NUL-terminated UTF-8; ill-formed bytes are
 * replaced and counted, not refused). */
int sd_conditioning_encode(sd_tokenizer *tok, sd_clip_text *model, const char *prompt,
                           sd_prompt_syntax syntax, int clip_skip, sd_text_cond *out, sd_error *err);
void sd_text_cond_free(sd_text_cond *c);

/* Appends copies of empty's first chunk (the empty prompt's embedding, made
 * with the same model and clip skip) until c has n_chunks chunks. */
int sd_conditioning_pad(sd_text_cond *c, int n_chunks, const sd_text_cond *empty, sd_error *err);
/* Pads the shorter of a and b to the other's chunk count (A1111 pad_cond_uncond). */
int sd_conditioning_pad_pair(sd_text_cond *a, sd_text_cond *b, const sd_text_cond *empty,
                             sd_error *err);

#endif
