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
#include "sampler/sampler.h"
#include "text_encoder/conditioning.h"
#include "unet/moe_layer.h"

typedef struct sd_pipeline sd_pipeline;

typedef struct sd_pipeline_options {
    const char *variant;          /* "fp16" or NULL */
    const char *model_config;     /* single files: LDM yaml or diffusers folder */
    const char *assets_dir;       /* NULL = default search */
    sd_moe_routing moe_routing;   /* SegMoE (default) or per-token */
    /* Optional progress for loading: stage label, done, total. */
    void (*on_progress)(void *ctx, const char *stage, int done, int total);
    void *progress_ctx;
} sd_pipeline_options;

int sd_pipeline_load(sd_pipeline **out, const char *model_path, const sd_pipeline_options *opt,
                     sd_error *err);
void sd_pipeline_free(sd_pipeline *p);

sd_model *sd_pipeline_model(sd_pipeline *p);
/* Image size the model was trained at (unet sample_size x VAE factor). */
void sd_pipeline_default_size(const sd_pipeline *p, int *width, int *height);
/* Pixels per latent (8 for SD). */
int sd_pipeline_vae_factor(const sd_pipeline *p);
/* The sampler matching the model's own scheduler config (_class_name). */
int sd_pipeline_default_sampler(const sd_pipeline *p, sd_sampler_id *id, sd_error *err);
/* The UNet, for MoE stats and hooks. */
struct sd_unet *sd_pipeline_unet(sd_pipeline *p);

typedef struct sd_txt2img_params {
    const char *prompt;           /* required */
    const char *negative_prompt;  /* NULL = absent (encoded as "") */
    int width, height;            /* pixels, multiples of the VAE factor */
    int steps;                    /* num_inference_steps */
    double cfg_scale;             /* guidance; <= 1 evaluates the cond half only */
    sd_sampler_id sampler;
    int karras;                   /* SD_KARRAS_* */
    int clip_skip;                /* 0 or 1 = last layer; A1111 numbering */
    sd_prompt_syntax syntax;
    int n_images;                 /* images in this call (>= 1) */
    const uint64_t *seeds;        /* [n_images]: the generator seed of each image */
    /* Optional per-image prompts (overrides prompt/negative_prompt when set). */
    const char *const *prompts;
    const char *const *negative_prompts;
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
