/* sampler/scheduler — a diffusers v0.27.2 scheduler, built from a
 * scheduler_config.json the way `XScheduler.from_config(config)` builds it,
 * then `set_timesteps(num_inference_steps)`.
 *
 * Owns: the train tables (betas, alphas_cumprod), the per-call timesteps and
 * sigmas, init_noise_sigma, and every buffer a step needs (noise, PNDM/LMS/
 * DPM++/Heun history), all sized once at creation for one latent of
 * `latent_numel` floats; step() never allocates.
 *
 * Each sampler keeps its diffusers class's own defaults for keys the config
 * lacks (timestep_spacing "leading" for DDIM/PNDM/DDPM/LCM, "linspace" for
 * Euler/Euler a/LMS/Heun/DPM++; steps_offset 0; clip_sample true for
 * DDIM/DDPM; ...), and keys listed in the config's `_use_default_values`
 * count as absent, as in diffusers.  Unsupported values (thresholding,
 * rescale_betas_zero_snr, learned variances, ...) are errors naming the
 * file and key.  The sampler's name fixes its algorithm: dpm++2m always runs
 * dpmsolver++ / solver_order 2 / midpoint whatever a DPMSolverMultistep
 * config's algorithm_type, solver_order and solver_type say, and DDIM runs
 * with eta 0.
 *
 * The loop (diffusers' StableDiffusionPipeline):
 *
 *     sd_scheduler *s;
 *     if (sd_scheduler_create(&s, cfg, path, SD_SAMPLER_EULER_A, SD_KARRAS_FROM_CONFIG,
 *                             steps, 4 * h * w, &err)) ...
 *     sd_rng_randn(&gen, x, n);  for (i) x[i] *= sd_scheduler_init_noise_sigma(s);
 *     for (int c = 0; c < sd_scheduler_num_calls(s); c++) {
 *         sd_scheduler_scale_model_input(s, c, x, x_in, n);
 *         eps = unet(x_in, sd_scheduler_timestep(s, c)) (+ guidance);
 *         if (sd_scheduler_step(s, c, eps, x, &gen, &err)) ...
 *     }
 *
 * Noise is drawn from the request's generator exactly when diffusers draws
 * it: Euler and Euler a one randn of the latent per call, DDPM per call with
 * t > 0, LCM per call but the last; DDIM (eta 0), PNDM, LMS, Heun, DPM++ 2M
 * draw nothing (gen may then be NULL).
 *
 * A scheduler is stateful (history, step counter): calls must come in order
 * 0 .. num_calls-1; sd_scheduler_reset starts a new image.  For a batch give
 * each image its own scheduler and generator, or create one for the whole
 * batch (latent_numel = batch * per-image) with one generator, which is
 * diffusers' single-generator batch.
 */
#ifndef SDMOE_SAMPLER_SCHEDULER_H
#define SDMOE_SAMPLER_SCHEDULER_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "core/error.h"
#include "core/rng.h"
#include "sampler/sampler.h"

typedef struct sd_scheduler sd_scheduler;

/* Builds the scheduler.  config: the parsed scheduler_config.json (not
 * kept); config_file: its path for messages; karras: SD_KARRAS_*;
 * num_inference_steps >= 1; latent_numel: floats per step() call. */
int sd_scheduler_create(sd_scheduler **out, const cJSON *config, const char *config_file, sd_sampler_id sampler,
                        int karras, int num_inference_steps, size_t latent_numel, sd_error *err);
void sd_scheduler_free(sd_scheduler *s);
/* Forgets the step history (as set_timesteps does) for the next image. */
void sd_scheduler_reset(sd_scheduler *s);

const sd_sampler_info *sd_scheduler_sampler(const sd_scheduler *s);
/* 1 if the Karras sigma schedule is in use. */
int sd_scheduler_karras(const sd_scheduler *s);
/* Number of UNet calls (PNDM N+1, Heun 2N-1, otherwise N). */
int sd_scheduler_num_calls(const sd_scheduler *s);
/* Timestep passed to the UNet at call c (integer-valued for DDIM, PNDM,
 * DDPM, LCM and DPM++; fractional float32 for Euler, Euler a, LMS, Heun). */
float sd_scheduler_timestep(const sd_scheduler *s, int call);
/* Standard deviation to multiply the initial noise by. */
float sd_scheduler_init_noise_sigma(const sd_scheduler *s);

/* scale_model_input: out[n] = x[n] scaled for call c (x / sqrt(sigma^2+1) for
 * Euler, Euler a, LMS, Heun; a copy otherwise).  out may equal x. */
void sd_scheduler_scale_model_input(const sd_scheduler *s, int call, const float *x, float *out, size_t n);

/* One scheduler step for call c: sample[latent_numel] is replaced by the
 * previous sample.  model_output[latent_numel] is the (guided) UNet output.
 * gen is used only by samplers that draw noise.  Errors: call out of order,
 * or a generator missing where one is needed. */
int sd_scheduler_step(sd_scheduler *s, int call, const float *model_output, float *sample, sd_rng *gen,
                      sd_error *err);

/* Tables, for tests and metadata (pointers owned by s). */
const float *sd_scheduler_timesteps(const sd_scheduler *s, int *n);      /* [num_calls] */
const float *sd_scheduler_sigmas(const sd_scheduler *s, int *n);         /* NULL for alpha-based samplers */
const float *sd_scheduler_betas(const sd_scheduler *s, int *n);          /* [num_train_timesteps] */
const float *sd_scheduler_alphas_cumprod(const sd_scheduler *s, int *n); /* [num_train_timesteps] */
/* The randn the last step drew ([latent_numel]), or NULL if the sampler never draws. */
const float *sd_scheduler_noise(const sd_scheduler *s);

/* Stable Diffusion 1.5's scheduler_config.json (PNDMScheduler,
 * scaled_linear 0.00085..0.012, 1000 steps, steps_offset 1, skip_prk_steps,
 * set_alpha_to_one false, clip_sample false), for single-file checkpoints.
 * Caller frees with cJSON_Delete; NULL only when out of memory. */
cJSON *sd_scheduler_default_config(void);

#endif
