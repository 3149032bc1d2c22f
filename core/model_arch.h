/* core/model_arch — the architecture of the SD 1.x and SDXL components as
 * plain structs, and every way to obtain one (internal to core/model*):
 *
 *   - from a diffusers config.json (diffusers v0.27.2 / transformers
 *     defaults for absent keys; wrong types are errors naming file and key),
 *   - from an LDM yaml (diffusers' single_file_utils create_unet_diffusers_config /
 *     create_vae_diffusers_config rules),
 *   - from an SGM yaml (sgm.models.diffusion.DiffusionEngine: network_config,
 *     first_stage_config, conditioner_config, denoiser_config; SDXL base 1.0's
 *     sd_xl_base.yaml layout),
 *   - SD 1.5 defaults, SDXL base 1.0 defaults,
 *   - from the tensor shapes of a single-file checkpoint (what weights can
 *     tell: channels, levels, layers, attention placement, context width,
 *     transformer depth, projection kind, added-conditioning width; not
 *     heads, groups or activations),
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
    /* SDXL added conditioning (addition_embed_type "text_time"); 0 = none */
    int text_time;
    int addition_time_embed_dim;  /* sinusoid width per time id (SDXL: 256) */
    int add_embed_in;             /* projection_class_embeddings_input_dim (SDXL: 2816 = 1280 + 6 x 256) */
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
    int with_projection;          /* CLIPTextModelWithProjection (SDXL's text_encoder_2) */
} sd_clip_arch;

/* The number of SDXL time ids (original size, crop top-left, target size). */
#define SD_ARCH_SDXL_TIME_IDS 6

/* Scheduler facts an LDM yaml states. */
typedef struct sd_ldm_sched {
    double beta_start, beta_end;
    int num_train_timesteps;
    int v_prediction;
} sd_ldm_sched;

void sd_unet_arch_sd15(sd_unet_arch *a);
void sd_vae_arch_sd15(sd_vae_arch *a);
void sd_clip_arch_sd15(sd_clip_arch *a);
/* stabilityai/stable-diffusion-xl-base-1.0: UNet, VAE, text_encoder_2
 * (OpenCLIP ViT-bigG-14); its text_encoder is CLIP ViT-L/14 = sd_clip_arch_sd15. */
void sd_unet_arch_sdxl(sd_unet_arch *a);
void sd_vae_arch_sdxl(sd_vae_arch *a);
void sd_clip_arch_sdxl_g(sd_clip_arch *a);

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

/* What an SGM yaml says about the text encoders: a named model (FrozenCLIPEmbedder
 * version, FrozenOpenCLIPEmbedder2 arch) whose sizes are known fills the arch
 * and sets known = 1; an unknown name leaves the sizes to the weights. */
typedef struct sd_sgm_text {
    sd_clip_arch te1, te2;
    int te1_known, te2_known;
    char te1_name[64], te2_name[64];
    int time_embed_dim_stated;    /* 1 if the yaml's ConcatTimestepEmbedderND gave the outdim */
} sd_sgm_text;

/* 1 if the yaml is an SGM DiffusionEngine config (model.target names
 * DiffusionEngine, or model.params.network_config exists). */
int sd_yaml_is_sgm(const cJSON *yaml);

/* Reads an SGM (SDXL base style) yaml over the SDXL defaults in *unet, *vae,
 * *sched, *text: network_config (model_channels, channel_mult, num_res_blocks,
 * attention_resolutions, transformer_depth, num_head_channels / num_heads,
 * context_dim, use_linear_in_transformer, num_classes "sequential" +
 * adm_in_channels), first_stage_config.params.ddconfig, scale_factor,
 * conditioner_config.params.emb_models (FrozenCLIPEmbedder,
 * FrozenOpenCLIPEmbedder2, 3 x ConcatTimestepEmbedderND: outdim =
 * addition_time_embed_dim), denoiser_config (num_idx, EpsScaling / VScaling,
 * LegacyDDPMDiscretization linear_start / linear_end).  Other SGM models
 * (refiner, EDM, class-conditioned) are refused naming the key. */
int sd_arch_from_sgm_yaml(const cJSON *yaml, const char *file, sd_unet_arch *unet, sd_vae_arch *vae,
                          sd_sgm_text *text, sd_ldm_sched *sched, sd_error *err);

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
/* The same for an OpenCLIP text transformer (SDXL's conditioner.embedders.1.model.):
 * token_embedding, positional_embedding, transformer.resblocks.<i>.mlp.c_fc,
 * the number of resblocks, in_proj [3 x hidden, hidden], text_projection
 * [hidden, projection_dim] (sets with_projection). */
int sd_openclip_arch_from_weights(const sd_weights *w, const char *prefix, const char *ckpt, const sd_clip_arch *want,
                                  const char *source, sd_clip_arch *a, sd_error *err);

#endif
