/* sampler/pipeline — text-to-image, exactly diffusers v0.27.2
 * StableDiffusionPipeline.__call__ (pipeline_stable_diffusion.py):
 *
 *   prompt / negative prompt ("" when absent) -> text encoder
 *   latents_i = randn(generator seeded seed_i) * init_noise_sigma
 *   per UNet call c: x = scale_model_input(latents, c); eps = UNet(cat([x]*2),
 *     t_c, cat([uncond, cond])) in ONE batched call (SegMoE's routing sees both
 *     halves); eps = eps_u + g * (eps_c - eps_u) (g <= 1: cond half only);
 *     latents = scheduler.step(eps, c, latents, generator_i)
 *   VAE decode (latents / scaling_factor) -> raw image [-1, 1]
 *
 * SDXL (the UNet has addition_embed_type "text_time"): diffusers'
 * StableDiffusionXLPipeline.__call__ — tokenizer_2 and text_encoder_2 load
 * too; prompts go through text_encoder/sdxl_conditioning.h (context = both
 * encoders' penultimate states, pooled = text_encoder_2's projection); an
 * absent negative prompt gives zeros (context and pooled) when model_index.json
 * says force_zeros_for_empty_prompt (absent = true, diffusers' default), an
 * explicit "" is encoded; the pooled embeddings [uncond x n, cond x n] and the
 * time ids [original h, w, crop top, left, target h, w] (the same for every
 * row) go to sd_unet_set_added_cond once per request.
 *
 * Several images go through one call: the UNet batch is [uncond x n, cond x n]
 * as diffusers orders it; each image keeps its own generator (seed_i) and
 * scheduler state, so image i equals what a single-image run with seed_i
 * gives (for dense models).
 *
 * Owns the loaded components (tokenizer, text encoder, UNet, VAE), the
 * scheduler config, a small cache of encoded prompts, and the per-request
 * buffers (sized once per request, never inside the step loop).
 */
#ifndef SDMOE_SAMPLER_PIPELINE_H
#define SDMOE_SAMPLER_PIPELINE_H

#include <stdint.h>

#include "core/error.h"
#include "core/model.h"
#include "core/weight_cache.h"
#include "sampler/sampler.h"
#include "text_encoder/conditioning.h"
#include "unet/moe_layer.h"

typedef struct sd_pipeline sd_pipeline;

typedef struct sd_pipeline_options {
    const char *variant;          /* "fp16" or NULL */
    const char *model_config;     /* single files: LDM yaml or diffusers folder */
    const char *assets_dir;       /* NULL = default search */
    sd_moe_routing moe_routing;   /* SegMoE (default) or per-token */
    /* Prepared weights kept on disk between runs (core/weight_cache.h): the
     * folder (NULL = $SDMOE_CACHE_DIR, $XDG_CACHE_HOME/sdmoe or ~/.cache/sdmoe;
     * "off" = no cache) and its size limit (0 = $SDMOE_CACHE_MAX_MB or 16 GiB).
     * The UNet and the VAE each get one cache file. */
    const char *weight_cache_dir;
    int64_t weight_cache_max_bytes;
    int weight_cache_read_only;   /* 1: use what the cache has, write nothing (one-off loads: merge's gate runs) */
    /* Optional progress for loading: stage label, done, total. */
    void (*on_progress)(void *ctx, const char *stage, int done, int total);
    /* Optional: one-line messages while loading, with progress_ctx: notices
     * (is_warning 0: a weight cache being written) and problems that do not
     * stop loading (is_warning 1: a weight cache that cannot be used or written). */
    void (*on_message)(void *ctx, int is_warning, const char *msg);
    void *progress_ctx;
} sd_pipeline_options;

int sd_pipeline_load(sd_pipeline **out, const char *model_path, const sd_pipeline_options *opt,
                     sd_error *err);
void sd_pipeline_free(sd_pipeline *p);
/* What the weight cache of "unet" or "vae" did while loading (zeros when off). */
void sd_pipeline_weight_cache_stats(const sd_pipeline *p, const char *component, sd_weight_cache_stats *s);

sd_model *sd_pipeline_model(sd_pipeline *p);
/* Image size the model was trained at (unet sample_size x VAE factor). */
void sd_pipeline_default_size(const sd_pipeline *p, int *width, int *height);
/* Pixels per latent (8 for SD). */
int sd_pipeline_vae_factor(const sd_pipeline *p);
/* The sampler matching the model's own scheduler config (_class_name). */
int sd_pipeline_default_sampler(const sd_pipeline *p, sd_sampler_id *id, sd_error *err);
/* 1 for SDXL models (UNet added conditioning "text_time"). */
int sd_pipeline_is_sdxl(const sd_pipeline *p);
/* 1 if an absent (NULL) negative prompt gives the zero embedding rather than
 * the encoding of "" (SDXL with force_zeros_for_empty_prompt). */
int sd_pipeline_zero_negative(const sd_pipeline *p);
/* The UNet, for MoE stats and hooks. */
struct sd_unet *sd_pipeline_unet(sd_pipeline *p);
struct vae_model *sd_pipeline_vae(sd_pipeline *p);
/* Bytes of the activation scratch the UNet and the VAE share (core/memory.h). */
size_t sd_pipeline_scratch_bytes(const sd_pipeline *p);

typedef struct sd_txt2img_params {
    const char *prompt;           /* required */
    const char *negative_prompt;  /* NULL = absent: encoded as "", or zeros when sd_pipeline_zero_negative */
    int width, height;            /* pixels, multiples of the VAE factor */
    int steps;                    /* num_inference_steps */
    double cfg_scale;             /* guidance; <= 1 evaluates the cond half only */
    sd_sampler_id sampler;
    int karras;                   /* SD_KARRAS_* */
    int clip_skip;                /* A1111 numbering; 0 = unset.  SD 1.x: 0 or 1 = last layer;
                                     SDXL: 0..2 = penultimate (sdxl_conditioning.h) */
    sd_prompt_syntax syntax;
    int n_images;                 /* images in this call (>= 1) */
    const uint64_t *seeds;        /* [n_images]: the generator seed of each image */
    /* Optional per-image prompts (overrides prompt/negative_prompt when set). */
    const char *const *prompts;
    const char *const *negative_prompts;
    /* SDXL micro-conditioning (time ids); must stay 0 for other models.
     * 0 = default: original and target size = the image size, crop 0, 0. */
    int original_width, original_height;
    int target_width, target_height;
    int crop_top, crop_left;      /* top-left corner of the crop, pixels (>= 0) */
    int vae_tile;                 /* > 0: tiled VAE decode with this latent tile (a multiple of 4,
                                     vae_decode_tiled; VAE_DEFAULT_TILE); 0 = the whole image at once */
} sd_txt2img_params;

typedef struct sd_txt2img_hooks {
    /* Progress: stage "encode" / "sample" / "decode", done out of total. */
    void (*on_progress)(void *ctx, const char *stage, int done, int total);
    /* After each UNet call c: image 0's scaled model input (one CFG half),
     * guided eps and latents after the step; and the initial latents with
     * call = -1 (model_input = noise, latents = initial latents). */
    void (*on_step)(void *ctx, int call, float timestep, const float *model_input,
                    const float *noise_pred, const float *latents, int64_t numel);
    /* After each UNet call, before the step (e.g. --moe-stats). */
    void (*on_unet_call)(void *ctx, int call, float timestep);
    /* Once per request, after encoding: what the UNet is conditioned on —
     * context [rows, n_ctx, hidden] (rows = [uncond x n, cond x n], or cond
     * only without CFG), and for SDXL text_embeds [rows, text_dim] and
     * time_ids [rows, n_time_ids] (NULL / 0 otherwise). */
    void (*on_conditioning)(void *ctx, const float *context, int rows, int64_t n_ctx, int64_t hidden,
                            const float *text_embeds, int text_dim, const float *time_ids, int n_time_ids);
    void *ctx;
} sd_txt2img_hooks;

typedef struct sd_txt2img_result {
    int n_images, width, height;
    float *vae_out;               /* [n, 3, H, W] raw decoder output (malloc'd) */
    float *latents;               /* [n, 4, h, w] final latents (malloc'd) */
    int prompt_tokens;            /* tokens in image 0's prompt */
    int dropped_tokens;           /* plain syntax: tokens cut off (prompt + negative) */
    size_t invalid_utf8;          /* ill-formed UTF-8 sequences replaced */
} sd_txt2img_result;

int sd_pipeline_txt2img(sd_pipeline *p, const sd_txt2img_params *params, const sd_txt2img_hooks *hooks,
                        sd_txt2img_result *result, sd_error *err);
void sd_txt2img_result_free(sd_txt2img_result *r);

#endif
