/* text_encoder/clip_text — Hugging Face CLIPTextModel and
 * CLIPTextModelWithProjection (transformers modeling_clip.py), the text
 * encoders of SD 1.x/2.x and SDXL, on CPU in float32.
 *
 * Architecture (every size from text_encoder/config.json):
 *   h0 = token_embedding[ids] + position_embedding[0..seq)
 *   layer l: h += out_proj(attn(layer_norm1(h)))      (causal: token i sees j <= i,
 *            h += fc2(act(fc1(layer_norm2(h)))))       q scaled by head_dim^-0.5)
 *   hidden_states[0] = h0, hidden_states[l] = output of layer l (l = 1..L)
 *   last_hidden_state = final_layer_norm(hidden_states[L])
 *   pooled = last_hidden_state at the EOS position (config eos_token_id == 2:
 *            the first position of the largest id, HF's legacy argmax; else the
 *            first position of eos_token_id), times text_projection.weight^T
 *            when the checkpoint has one (CLIPTextModelWithProjection).
 * act = quick_gelu x*sigmoid(1.702x) or gelu (exact erf).  No padding mask
 * (SD's pipelines pass none).  GEMMs, LayerNorm, activations and attention
 * run on core/kernels.
 *
 * Weights are bound by their HF names (text_model.embeddings.token_embedding.
 * weight, text_model.encoder.layers.<i>.self_attn.q_proj.weight, ...,
 * text_model.final_layer_norm.*, text_projection.weight) through an
 * sd_binder; text_model.embeddings.position_ids is ignored.  The model keeps
 * pointers into the binder's sd_weights, which must outlive it.
 */
#ifndef SDMOE_TEXT_ENCODER_CLIP_TEXT_H
#define SDMOE_TEXT_ENCODER_CLIP_TEXT_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "core/error.h"
#include "core/weights.h"

typedef enum sd_clip_act { SD_CLIP_ACT_QUICK_GELU, SD_CLIP_ACT_GELU } sd_clip_act;

typedef struct sd_clip_text_config {
    int vocab_size;        /* vocab_size (49408) */
    int hidden_size;       /* hidden_size (768 for SD 1.x) */
    int num_heads;         /* num_attention_heads */
    int num_layers;        /* num_hidden_layers */
    int intermediate_size; /* intermediate_size */
    int max_positions;     /* max_position_embeddings (77) */
    double eps;            /* layer_norm_eps */
    sd_clip_act act;       /* hidden_act: "quick_gelu" | "gelu" */
    int eos_token_id;      /* eos_token_id (selects the pooling rule) */
    int projection_dim;    /* projection_dim (used when text_projection exists) */
} sd_clip_text_config;

typedef struct sd_clip_text sd_clip_text;

/* Reads a CLIPTextConfig (transformers' defaults for absent keys) and checks
 * it: positive sizes, hidden_size divisible by the heads, a known hidden_act.
 * `file` names the source in messages. */
int sd_clip_text_config_read(const cJSON *cfg, const char *file, sd_clip_text_config *out,
                             sd_error *err);

/* Binds every tensor (shapes from cfg); text_projection.weight [projection_dim,
 * hidden] is bound when present.  Does not call sd_binder_check_complete (the
 * caller may share the binder). */
int sd_clip_text_load(sd_clip_text **out, const sd_clip_text_config *cfg, sd_binder *b,
                      sd_error *err);
void sd_clip_text_free(sd_clip_text *m);

const sd_clip_text_config *sd_clip_text_get_config(const sd_clip_text *m);
/* 1 if the checkpoint had text_projection.weight. */
int sd_clip_text_has_projection(const sd_clip_text *m);

/* What one forward call returns; unused outputs stay NULL. */
typedef struct sd_clip_text_request {
    /* hidden [n, seq, hidden_size] = hidden_states[layer] (0..L), with
     * final_layer_norm applied when final_norm = 1.  layer L + final_norm =
     * last_hidden_state. */
    float *hidden;
    int layer;
    int final_norm;
    /* all_hidden [(L+1), n, seq, hidden_size]: every hidden state, no norm. */
    float *all_hidden;
    /* pooled [n, projection_dim] with a projection, else [n, hidden_size]. */
    float *pooled;
} sd_clip_text_request;

/* Runs the encoder on ids [n, seq] (seq <= max_positions, every id <
 * vocab_size), computing only the layers the request needs. */
int sd_clip_text_forward(sd_clip_text *m, const int32_t *ids, int n, int seq,
                         const sd_clip_text_request *req, sd_error *err);

/* A1111's CLIP skip (opts.CLIP_stop_at_last_layers): 1 = last_hidden_state;
 * k >= 2 = final_layer_norm(hidden_states[L + 1 - k]).  Fails unless
 * 1 <= clip_skip <= L. */
int sd_clip_skip_layer(const sd_clip_text_config *cfg, int clip_skip, int *layer, int *final_norm,
                       sd_error *err);

#endif
