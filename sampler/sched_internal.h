/* sampler/sched_internal — what the scheduler files share (not a public
 * contract): the scheduler struct, the private part of a sampler table row
 * (class defaults, which config keys the class reads, step functions), and
 * the schedule helpers of schedule.c.
 *
 * Float discipline: every table diffusers builds in numpy float64 is built
 * here in double and rounded to float32 where diffusers casts; every step
 * runs in float32 with torch's operation order (0-dim tensor arithmetic on
 * the scalars, then elementwise), so trajectories match to rounding. */
#ifndef SDMOE_SAMPLER_SCHED_INTERNAL_H
#define SDMOE_SAMPLER_SCHED_INTERNAL_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "core/error.h"
#include "core/rng.h"
#include "sampler/sampler.h"
#include "sampler/scheduler.h"

typedef enum sched_pred { SCHED_PRED_EPSILON, SCHED_PRED_V, SCHED_PRED_SAMPLE } sched_pred;
typedef enum sched_spacing { SCHED_LINSPACE, SCHED_LEADING, SCHED_TRAILING } sched_spacing;
typedef enum sched_variance { SCHED_VAR_FIXED_SMALL, SCHED_VAR_FIXED_SMALL_LOG, SCHED_VAR_FIXED_LARGE } sched_variance;

/* Config keys a class reads beyond the common ones (num_train_timesteps,
 * beta_start/end/schedule, trained_betas, prediction_type,
 * timestep_spacing, steps_offset). */
enum {
    SCHED_KEY_CLIP = 1 << 0,          /* clip_sample, clip_sample_range */
    SCHED_KEY_ALPHA_ONE = 1 << 1,     /* set_alpha_to_one */
    SCHED_KEY_KARRAS = 1 << 2,        /* use_karras_sigmas */
    SCHED_KEY_THRESHOLD = 1 << 3,     /* thresholding (refused when true) */
    SCHED_KEY_ZERO_SNR = 1 << 4,      /* rescale_betas_zero_snr (refused when true) */
    SCHED_KEY_PRK = 1 << 5,           /* skip_prk_steps */
    SCHED_KEY_VARIANCE = 1 << 6,      /* variance_type (DDPM) */
    SCHED_KEY_EULER = 1 << 7,         /* interpolation_type, timestep_type, sigma_min/max */
    SCHED_KEY_DPM = 1 << 8,           /* lower_order_final, euler_at_final, final_sigmas_type, ... */
    SCHED_KEY_LCM = 1 << 9,           /* original_inference_steps, timestep_scaling */
};

/* A diffusers class's __init__ defaults that from_config keeps. */
typedef struct sched_class_defaults {
    double beta_start, beta_end;
    const char *beta_schedule;
    sched_spacing spacing;
    int clip_sample;
    int set_alpha_to_one;
    int skip_prk_steps;
} sched_class_defaults;

typedef struct sched_config {
    int num_train_timesteps;
    sched_pred prediction;
    sched_spacing spacing;
    int steps_offset;
    int clip_sample;
    float clip_sample_range;
    int set_alpha_to_one;
    int skip_prk_steps;
    sched_variance variance;
    int karras;
    int continuous_timesteps;   /* Euler timestep_type "continuous" */
    double sigma_min, sigma_max;       /* Euler karras bounds; NAN = from the schedule */
    int lower_order_final, euler_at_final, final_sigma_min;
    double lambda_min_clipped;
    int original_inference_steps;
    float timestep_scaling;
} sched_config;

typedef struct sd_sampler_ops {
    sched_class_defaults defaults;
    unsigned keys;       /* SCHED_KEY_* */
    int sigma_based;     /* scale_model_input divides by sqrt(sigma^2 + 1) */
    int n_history;       /* latent-sized history buffers the step keeps */
    /* Fills s->timesteps, s->n_calls, s->sigmas/n_sigmas, s->init_noise_sigma
     * (tables are allocated by the caller with room for 2N+8 entries). */
    int (*set_timesteps)(sd_scheduler *s, sd_error *err);
    /* One step for call c; s->noise is ready when the sampler draws. */
    void (*step)(sd_scheduler *s, int call, const float *eps, float *x, sd_rng *gen);
    /* 1 if call c draws a randn of the latent. */
    int (*draws_noise)(const sd_scheduler *s, int call);
} sd_sampler_ops;

#define SCHED_MAX_HISTORY 6

struct sd_scheduler {
    const sd_sampler_info *info;
    sched_config cfg;
    int T;                      /* num_train_timesteps */
    float *betas, *alphas_cumprod;
    float final_alpha_cumprod;  /* alphas_cumprod[0] or 1 (set_alpha_to_one) */
    float *sigma_table;         /* sqrt((1-ac)/ac) in float32, [T] */

    int num_inference_steps;
    int n_calls;
    float *timesteps;           /* [n_calls] */
    int n_prk;                  /* PNDM Runge-Kutta warm-up calls */
    float *sigmas;              /* [n_sigmas] or NULL */
    int n_sigmas;
    float init_noise_sigma;

    size_t numel;
    float *noise;               /* [numel] when the sampler draws */
    float *hist[SCHED_MAX_HISTORY];

    /* running state, cleared by reset */
    int next_call;
    int n_hist_used;            /* PNDM ets / LMS derivatives / DPM outputs held */
    int have_first;             /* Heun: first-order half done; PNDM: cur_sample held */
    float heun_dt;
};

/* ---- schedule.c ---- */

/* torch.linspace(start, end, n, dtype=float32) as PyTorch 1.13's AVX2 CPU
 * kernel computes it. */
void sched_torch_linspace_f32(float start, float end, int n, float *out);
/* numpy.interp(x, arange(n), fp) for one x (float64). */
double sched_interp(double x, const float *fp, int n);
/* np.linspace(0, stop, n)[i] (float64). */
double sched_np_linspace(double stop, int n, int i);
/* numpy round-half-even. */
double sched_round(double x);
/* Euler-family float timesteps for the spacing, descending: out[N]. */
void sched_float_timesteps(const sd_scheduler *s, int N, double *out);
/* Integer timesteps (DDIM, DDPM) for the spacing, descending: out[N]. */
void sched_int_timesteps(const sd_scheduler *s, int N, double *out);
/* Karras sigmas (rho 7) from sigma_max down to sigma_min: out[N] (float64). */
void sched_karras(double sigma_min, double sigma_max, int N, double *out);
/* diffusers' _sigma_to_t: fractional timestep of sigma on the log-sigma table. */
double sched_sigma_to_t(double sigma, const float *log_sigmas, int T);
/* log of the float32 sigma table, rounded to float32 as numpy does. */
void sched_log_sigmas(const sd_scheduler *s, float *out);
/* Integral over [sigmas[t], sigmas[t+1]] of the Lagrange basis polynomial
 * `current` over sigmas[t], sigmas[t-1], ..., sigmas[t-order+1] (LMS), as
 * scipy.integrate.quad returns it for diffusers' float32 integrand. */
double sched_lms_coefficient(const float *sigmas, int order, int t, int current);
/* Sigma-family tables: interpolated (or Karras) sigmas at float timesteps,
 * then a final 0; fills s->timesteps[N], s->sigmas[N+1]. */
int sched_sigma_schedule(sd_scheduler *s, int allow_karras_bounds, sd_error *err);
/* init_noise_sigma of the sigma family: max sigma, or sqrt(max^2+1) unless
 * the spacing is linspace/trailing. */
float sched_sigma_init_noise(const sd_scheduler *s);

/* ---- torch_math.c: torch.log / torch.exp on float32 (SLEEF u10, AVX2) ---- */
float sched_torch_logf(float x);
float sched_torch_expf(float x);

/* ---- step families ---- */
extern const sd_sampler_ops sched_ops_ddim, sched_ops_pndm, sched_ops_ddpm, sched_ops_lcm;
extern const sd_sampler_ops sched_ops_euler, sched_ops_euler_a, sched_ops_lms, sched_ops_heun, sched_ops_dpmpp_2m;

#endif
