/* core/model_arch — the architecture of the SD 1.x components as plain
 * structs, and every way to obtain one (internal to core/model*):
 *
 *   - from a diffusers config.json (diffusers v0.27.2 / transformers
 *     defaults for absent keys; wrong types are errors naming file and key),
 *   - from an LDM yaml (diffusers' single_file_utils create_unet_diffusers_config /
 *     create_vae_diffusers_config rules),
 *   - SD 1.5 defaults,
 *   - from the tensor shapes of a single-file checkpoint (what weights can
 *     tell: channels, levels, layers, attention placement, context width,
 *     transformer depth, projection kind; not heads, groups or activations),
 *
 * and back to a diffusers-style cJSON config, so the component modules read
 * one config format whatever the checkpoint was.
 */
#ifndef SDMOE_CORE_MODEL_ARCH_H
#define SDMOE_CORE_MODEL_ARCH_H

#include <cjson/cJSON.h>

#include "core/error.h"
#include "core/ldm_keymap.h"
#include "core/weights.h"

#define ARCH_MAX LDM_MAX_LEVELS

typedef struct sd_unet_arch {
    int n_levels;
    int channels[ARCH_MAX];   /* block_out_channels */
    int layers[ARCH_MAX];     /* layers_per_block, per down block */
    int down_attn[ARCH_MAX];  /* 1 = CrossAttnDownBlock2D, 0 = DownBlock2D */
    int up_attn[ARCH_MAX];    /* up-block order: 1 = CrossAttnUpBlock2D */
    int depth[ARCH_MAX];      /* transformer_layers_per_block, per down block */
    int heads[ARCH_MAX];      /* attention_head_dim as diffusers uses it (= heads for SD 1.x) */
    int heads_is_list;        /* write attention_head_dim as a list */
    int in_channels, out_channels;
    int cross_attention_dim;
    int norm_num_groups;
    double norm_eps;
    int use_linear_projection;
    int sample_size;
} sd_unet_arch;

typedef struct sd_vae_arch {
    int n_levels;
    int channels[ARCH_MAX];
    int layers;
    int in_channels, out_channels, latent_channels;
    int norm_num_groups;
    double scaling_factor;
    int sample_size;
} sd_vae_arch;

typedef struct sd_clip_arch {
    int vocab_size, hidden_size, intermediate_size, num_layers, num_heads, max_positions, projection_dim;
    char hidden_act[32];
    double layer_norm_eps;
} sd_clip_arch;

/* Scheduler facts an LDM yaml states. */
typedef struct sd_ldm_sched {
    double beta_start, beta_end;
    int num_train_timesteps;
    int v_prediction;
} sd_ldm_sched;

void sd_unet_arch_sd15(sd_unet_arch *a);
void sd_vae_arch_sd15(sd_vae_arch *a);
void sd_clip_arch_sd15(sd_clip_arch *a);

int sd_unet_arch_from_config(const cJSON *cfg, const char *file, sd_unet_arch *a, sd_error *err);
int sd_vae_arch_from_config(const cJSON *cfg, const char *file, sd_vae_arch *a, sd_error *err);
int sd_clip_arch_from_config(const cJSON *cfg, const char *file, sd_clip_arch *a, sd_error *err);

/* New diffusers-style config objects (NULL only when out of memory). */
cJSON *sd_unet_arch_to_config(const sd_unet_arch *a);
cJSON *sd_vae_arch_to_config(const sd_vae_arch *a);
cJSON *sd_clip_arch_to_config(const sd_clip_arch *a);

/* Reads model.params.{unet_config,first_stage_config,...} of an LDM yaml
 * (already converted to cJSON by core/ldm_yaml) over the SD 1.5 defaults in
 * *unet, *vae, *sched.  SD 2.x / SDXL / unCLIP configs are refused. */
int sd_arch_from_ldm_yaml(const cJSON *yaml, const char *file, sd_unet_arch *unet, sd_vae_arch *vae,
                          sd_ldm_sched *sched, sd_error *err);

/* The names a layout depends on. */
void sd_unet_arch_layout(const sd_unet_arch *a, ldm_unet_layout *lay);

/* Reads the architecture facts of the LDM-named tensors under `prefix` of w.
 * `want` = NULL: infer only, overwriting the structural fields of *a.
 * `want` != NULL: compare with it, failing at the first disagreement with a
 * message naming the checkpoint, the tensor, its shape and what `source`
 * gives (also on success *a gets the facts merged over *want).
 * `ckpt` names the checkpoint in messages. */
int sd_unet_arch_from_weights(const sd_weights *w, const char *prefix, const char *ckpt, const sd_unet_arch *want,
                              const char *source, sd_unet_arch *a, sd_error *err);
int sd_vae_arch_from_weights(const sd_weights *w, const char *prefix, const char *ckpt, const sd_vae_arch *want,
                             const char *source, sd_vae_arch *a, sd_error *err);
/* `prefix` ends where the HF CLIPTextModel names begin ("...transformer."
 * followed by "text_model.", or directly "embeddings." for old files). */
int sd_clip_arch_from_weights(const sd_weights *w, const char *prefix, const char *ckpt, const sd_clip_arch *want,
                              const char *source, sd_clip_arch *a, sd_error *err);

#endif
