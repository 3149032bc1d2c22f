/* text_encoder/sdxl_conditioning — Stable Diffusion XL's conditioning
 * inputs: the two-encoder prompt embedding, the pooled text embedding and
 * the size/crop "time ids" (diffusers v0.27.2 StableDiffusionXLPipeline.
 * encode_prompt and _get_add_time_ids).
 *
 * Prompt (sd_sdxl_encode):
 *   ids   = tokenizer(prompt)    (pads with its pad token, 49407 for SDXL)
 *   ids_2 = tokenizer_2(prompt)  (SDXL's tokenizer_2 pads with "!" = id 0)
 *   emb    = cat(te1.hidden_states[l1], te2.hidden_states[l2]) along the
 *            features (text_encoder's first), no final_layer_norm
 *   pooled = te2's projected pooled output: text_projection(final_layer_norm(
 *            last layer)[EOS of ids_2]) — the final layer whatever clip skip.
 * Both prompt syntaxes as conditioning.h: plain is diffusers (77 tokens,
 * the rest dropped); a1111 is stable-diffusion-webui's SDXL path — each
 * 75-token chunk is built by both tokenizers (the same tokens, each with
 * its own padding) and encoded by both encoders, emphasis applied to each
 * encoder's output separately, the chunks concatenated along the tokens;
 * pooled comes from the FIRST chunk (sd_hijack_clip: zs[0].pooled).
 *
 * Clip skip (A1111 numbering, as everywhere in sdmoe): SDXL's default is
 * the penultimate layer, hidden_states[-2].  clip_skip 0, 1 and 2 all give
 * it (A1111 keeps SDXL's penultimate layer at its default clip skip 1, and
 * 2 is the penultimate layer by definition); k >= 3 gives hidden_states[-k]
 * = layer L+1-k, still without final_layer_norm, for BOTH encoders — which
 * is diffusers' clip_skip = k - 2 (it takes hidden_states[-(clip_skip+2)]).
 * (A1111 applies clip skip to CLIP-L only and only with its
 * sdxl_clip_l_skip option; sdmoe follows diffusers there.)  k must be <= L
 * of both encoders.
 *
 * Negative prompts: the zero embedding (force_zeros_for_empty_prompt with
 * no negative prompt) is sd_sdxl_zero_cond; an explicit "" is encoded like
 * any prompt.  That choice is the pipeline's.
 */
#ifndef SDMOE_TEXT_ENCODER_SDXL_CONDITIONING_H
#define SDMOE_TEXT_ENCODER_SDXL_CONDITIONING_H

#include "core/error.h"
#include "text_encoder/clip_text.h"
#include "text_encoder/conditioning.h"
#include "text_encoder/tokenizer.h"

/* The two tokenizer/encoder pairs (not owned). */
typedef struct sd_sdxl_encoders {
    sd_tokenizer *tok1, *tok2; /* tokenizer/, tokenizer_2/ */
    sd_clip_text *te1, *te2;   /* text_encoder (CLIPTextModel), text_encoder_2 (WithProjection) */
} sd_sdxl_encoders;

/* Checks that the pair fits together: te2 has a text_projection, both
 * tokenizers give the same ids per prompt (max_length) and fit both
 * encoders (vocabulary, positions). */
int sd_sdxl_encoders_check(const sd_sdxl_encoders *e, sd_error *err);

/* Hidden state index (0..L, no final norm) SDXL takes from an encoder of
 * `cfg` at A1111 clip skip `clip_skip` (see above).  Fails unless
 * 0 <= clip_skip <= L. */
int sd_sdxl_clip_skip_layer(const sd_clip_text_config *cfg, int clip_skip, int *layer, sd_error *err);

/* Context width (te1 hidden + te2 hidden) and pooled width (te2 projection_dim). */
int sd_sdxl_context_dim(const sd_sdxl_encoders *e);
int sd_sdxl_pooled_dim(const sd_sdxl_encoders *e);

/* Encodes `prompt` into out: emb [n_chunks * chunk_len, context_dim] and
 * pooled [pooled_dim] (both malloc'd; sd_text_cond_free). n_tokens,
 * n_dropped and n_invalid_utf8 come from tokenizer/. */
int sd_sdxl_encode(const sd_sdxl_encoders *e, const char *prompt, sd_prompt_syntax syntax, int clip_skip,
                   sd_text_cond *out, sd_error *err);

/* The all-zero negative embedding: n_chunks chunks of chunk_len x hidden
 * and pooled [pooled_dim] of zeros (diffusers' zeros_like(prompt_embeds)). */
int sd_sdxl_zero_cond(int n_chunks, int chunk_len, int hidden, int pooled_dim, sd_text_cond *out, sd_error *err);

/* Number of SDXL time ids. */
#define SD_SDXL_N_TIME_IDS 6

/* _get_add_time_ids: out = [original_h, original_w, crop_top, crop_left,
 * target_h, target_w] as float32 (height first). */
void sd_sdxl_time_ids(int original_h, int original_w, int crop_top, int crop_left, int target_h, int target_w,
                      float out[SD_SDXL_N_TIME_IDS]);

#endif
