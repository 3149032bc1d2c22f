/* sampler/steps_alpha — the alpha-parameterised samplers of diffusers
 * v0.27.2: DDIM (scheduling_ddim.py, eta 0), PNDM (scheduling_pndm.py,
 * PLMS with or without the Runge-Kutta warm-up), DDPM (scheduling_ddpm.py)
 * and LCM (scheduling_lcm.py).  Timesteps are integers; the model input is
 * not scaled; init_noise_sigma is 1.
 *
 * Scalars are 0-dim float32 tensors in diffusers: each scalar expression is
 * evaluated in float, operation by operation, then applied elementwise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler/sched_internal.h"

static inline float clip(const sched_config *c, float v) {
    if (!c->clip_sample) return v;
    float r = c->clip_sample_range;
    return v < -r ? -r : (v > r ? r : v);
}

static int never_draws(const sd_scheduler *s, int call) {
    (void)s;
    (void)call;
    return 0;
}

/* alphas_cumprod at an integer timestep; below 0 gives `below`. */
static float alpha_at(const sd_scheduler *s, int t, float below) {
    if (t < 0) return below;
    return s->alphas_cumprod[t < s->T ? t : s->T - 1];
}

/* x0 and epsilon predictions from the model output (DDIM/DDPM/LCM). */
static inline void alpha_preds(sched_pred p, float sqrt_a, float sqrt_b, float x, float out, float *x0, float *e) {
    if (p == SCHED_PRED_EPSILON) {
        *x0 = (x - sqrt_b * out) / sqrt_a;
        *e = out;
    } else if (p == SCHED_PRED_SAMPLE) {
        *x0 = out;
        *e = (x - sqrt_a * out) / sqrt_b;
    } else {
        *x0 = sqrt_a * x - sqrt_b * out;
        *e = sqrt_a * out + sqrt_b * x;
    }
}

static int int_set_timesteps(sd_scheduler *s, sd_error *err) {
    int N = s->num_inference_steps;
    double *ts = malloc((size_t)N * sizeof *ts);
    if (!ts) return sd_fail(err, "scheduler: out of memory for %d timesteps", N);
    sched_int_timesteps(s, N, ts);
    for (int k = 0; k < N; k++) s->timesteps[k] = (float)ts[k];
    free(ts);
    s->n_calls = N;
    s->n_sigmas = 0;
    s->init_noise_sigma = 1.0f;
    return 0;
}

/* ---- DDIM ---- */

static void ddim_step(sd_scheduler *s, int call, const float *out, float *x, sd_rng *gen) {
    (void)gen;
    int t = (int)s->timesteps[call];
    int prev_t = t - s->T / s->num_inference_steps;
    float a = alpha_at(s, t, 1.0f), ap = alpha_at(s, prev_t, s->final_alpha_cumprod);
    float b = 1.0f - a;
    float sqrt_a = sqrtf(a), sqrt_b = sqrtf(b), sqrt_ap = sqrtf(ap);
    /* eta = 0: std_dev_t = 0, direction coefficient sqrt(1 - a_prev - 0) */
    float dir = sqrtf((1.0f - ap) - 0.0f);
    for (size_t i = 0; i < s->numel; i++) {
        float x0, e;
        alpha_preds(s->cfg.prediction, sqrt_a, sqrt_b, x[i], out[i], &x0, &e);
        x0 = clip(&s->cfg, x0);
        x[i] = sqrt_ap * x0 + dir * e;
    }
}

const sd_sampler_ops sched_ops_ddim = {
    .defaults = {0.0001, 0.02, "linear", SCHED_LEADING, 1, 1, 0},
    .keys = SCHED_KEY_CLIP | SCHED_KEY_ALPHA_ONE | SCHED_KEY_THRESHOLD | SCHED_KEY_ZERO_SNR,
    .sigma_based = 0,
    .n_history = 0,
    .set_timesteps = int_set_timesteps,
    .step = ddim_step,
    .draws_noise = never_draws,
};

/* ---- DDPM ---- */

static int ddpm_draws(const sd_scheduler *s, int call) { return s->timesteps[call] > 0.0f; }

static void ddpm_step(sd_scheduler *s, int call, const float *out, float *x, sd_rng *gen) {
    (void)gen;
    int t = (int)s->timesteps[call];
    int prev_t = t - s->T / s->num_inference_steps;
    float a = alpha_at(s, t, 1.0f), ap = alpha_at(s, prev_t, 1.0f);
    float b = 1.0f - a, bp = 1.0f - ap;
    float ca = a / ap, cb = 1.0f - ca;
    float sqrt_a = sqrtf(a), sqrt_b = sqrtf(b);
    float c_x0 = (sqrtf(ap) * cb) / b, c_x = (sqrtf(ca) * bp) / b;
    /* _get_variance: (1 - a_prev) / (1 - a) * beta_t, clamped to >= 1e-20 */
    float var = ((1.0f - ap) / (1.0f - a)) * cb;
    var = var > 1e-20f ? var : 1e-20f;
    float noise_scale;
    if (s->cfg.variance == SCHED_VAR_FIXED_SMALL_LOG) noise_scale = sched_torch_expf(0.5f * sched_torch_logf(var));
    else if (s->cfg.variance == SCHED_VAR_FIXED_LARGE) noise_scale = sqrtf(cb);
    else noise_scale = sqrtf(var);
    int add_noise = t > 0;
    for (size_t i = 0; i < s->numel; i++) {
        float x0, e;
        alpha_preds(s->cfg.prediction, sqrt_a, sqrt_b, x[i], out[i], &x0, &e);
        x0 = clip(&s->cfg, x0);
        float prev = c_x0 * x0 + c_x * x[i];
        x[i] = add_noise ? prev + noise_scale * s->noise[i] : prev;
    }
}

const sd_sampler_ops sched_ops_ddpm = {
    .defaults = {0.0001, 0.02, "linear", SCHED_LEADING, 1, 0, 0},
    .keys = SCHED_KEY_CLIP | SCHED_KEY_VARIANCE | SCHED_KEY_THRESHOLD | SCHED_KEY_ZERO_SNR,
    .sigma_based = 0,
    .n_history = 0,
    .set_timesteps = int_set_timesteps,
    .step = ddpm_step,
    .draws_noise = ddpm_draws,
};

/* ---- PNDM ---- */

/* History: hist[0..3] the model outputs `ets`, newest first; hist[4] the
 * held sample (cur_sample); hist[5] the Runge-Kutta sum (cur_model_output). */
enum { PNDM_CUR_SAMPLE = 4, PNDM_RK_SUM = 5 };

static int pndm_set_timesteps(sd_scheduler *s, sd_error *err) {
    int N = s->num_inference_steps, T = s->T, ratio = T / N;
    double *asc = malloc((size_t)N * sizeof *asc);
    if (!asc) return sd_fail(err, "scheduler: out of memory for %d timesteps", N);
    for (int i = 0; i < N; i++) {
        if (s->cfg.spacing == SCHED_LINSPACE) asc[i] = sched_round(sched_np_linspace(T - 1, N, i));
        else if (s->cfg.spacing == SCHED_LEADING) asc[i] = (double)(i * ratio + s->cfg.steps_offset);
        else asc[i] = 0.0;
    }
    if (s->cfg.spacing == SCHED_TRAILING) {
        sched_int_timesteps(s, N, asc); /* descending: reverse */
        for (int i = 0; i < N / 2; i++) {
            double t = asc[i];
            asc[i] = asc[N - 1 - i];
            asc[N - 1 - i] = t;
        }
    }
    int n = 0;
    if (s->cfg.skip_prk_steps) {
        /* concatenate(ts[:-1], ts[-2:-1], ts[-1:])[::-1]: the second call repeats */
        s->timesteps[n++] = (float)asc[N - 1];
        if (N >= 2) s->timesteps[n++] = (float)asc[N - 2];
        for (int i = N - 2; i >= 0; i--) s->timesteps[n++] = (float)asc[i];
        s->n_prk = 0;
    } else {
        if (N < 4) {
            free(asc);
            return sd_fail(err, "scheduler pndm: the Runge-Kutta warm-up (skip_prk_steps false) needs >= 4 steps, "
                           "got %d", N);
        }
        /* prk = (ts[-4:].repeat(2) + tile([0, T//N//2], 4))[:-1].repeat(2)[1:-1][::-1] */
        double prk[8], rep[14];
        for (int j = 0; j < 8; j++) prk[j] = asc[N - 4 + j / 2] + ((j % 2) ? ratio / 2 : 0);
        for (int j = 0; j < 14; j++) rep[j] = prk[j / 2];
        for (int j = 12; j >= 1; j--) s->timesteps[n++] = (float)rep[j];
        s->n_prk = 12;
        for (int i = N - 4; i >= 0; i--) s->timesteps[n++] = (float)asc[i];
    }
    free(asc);
    s->n_calls = n;
    s->n_sigmas = 0;
    s->init_noise_sigma = 1.0f;
    return 0;
}

/* _get_prev_sample (formula (9) of the PNDM paper) on element i. */
typedef struct pndm_coeffs {
    float sample_coeff, diff, denom, sqrt_a, sqrt_b;
} pndm_coeffs;

static pndm_coeffs pndm_prev_coeffs(const sd_scheduler *s, int t, int prev_t) {
    float a = alpha_at(s, t, 1.0f), ap = alpha_at(s, prev_t, s->final_alpha_cumprod);
    float b = 1.0f - a, bp = 1.0f - ap;
    pndm_coeffs c;
    c.sample_coeff = sqrtf(ap / a);
    c.denom = a * sqrtf(bp) + sqrtf(a * b * ap);
    c.diff = ap - a;
    c.sqrt_a = sqrtf(a);
    c.sqrt_b = sqrtf(b);
    return c;
}

static inline float pndm_prev(const pndm_coeffs *c, sched_pred p, float sample, float mo) {
    if (p == SCHED_PRED_V) mo = c->sqrt_a * mo + c->sqrt_b * sample;
    return c->sample_coeff * sample - (c->diff * mo) / c->denom;
}

static void pndm_push_ets(sd_scheduler *s, const float *out) {
    float *oldest = s->hist[3];
    memmove(&s->hist[1], &s->hist[0], 3 * sizeof s->hist[0]);
    s->hist[0] = oldest;
    memcpy(s->hist[0], out, s->numel * sizeof(float));
    if (s->n_hist_used < 4) s->n_hist_used++;
}

static void pndm_step_prk(sd_scheduler *s, int counter, const float *out, float *x) {
    int T = s->T, N = s->num_inference_steps;
    int diff_to_prev = (counter % 2) ? 0 : T / N / 2;
    int prev_t = (int)s->timesteps[counter] - diff_to_prev;
    int t = (int)s->timesteps[counter / 4 * 4];
    pndm_coeffs c = pndm_prev_coeffs(s, t, prev_t);
    float *sum = s->hist[PNDM_RK_SUM], *cur = s->hist[PNDM_CUR_SAMPLE];
    const float sixth = (float)(1.0 / 6.0), third = (float)(1.0 / 3.0);
    int phase = counter % 4;
    if (phase == 0) {
        pndm_push_ets(s, out);
        memcpy(cur, x, s->numel * sizeof(float));
        s->have_first = 1;
    }
    for (size_t i = 0; i < s->numel; i++) {
        float mo = out[i];
        if (phase == 0) sum[i] = sixth * out[i]; /* 0 + 1/6 * model_output */
        else if (phase < 3) sum[i] = sum[i] + third * out[i];
        else mo = sum[i] + sixth * out[i];
        x[i] = pndm_prev(&c, s->cfg.prediction, cur[i], mo);
    }
}

static void pndm_step_plms(sd_scheduler *s, int counter, const float *out, float *x) {
    int step = s->T / s->num_inference_steps;
    int t = (int)s->timesteps[counter], prev_t = t - step;
    if (counter != 1) {
        pndm_push_ets(s, out);
    } else {
        prev_t = t;
        t = t + step;
    }
    pndm_coeffs c = pndm_prev_coeffs(s, t, prev_t);
    const float *e1 = s->hist[0], *e2 = s->hist[1], *e3 = s->hist[2], *e4 = s->hist[3];
    float *cur = s->hist[PNDM_CUR_SAMPLE];
    int n = s->n_hist_used;
    if (n == 1 && counter == 0) {
        memcpy(cur, x, s->numel * sizeof(float));
        s->have_first = 1;
    }
    const float k24 = (float)(1.0 / 24.0);
    for (size_t i = 0; i < s->numel; i++) {
        float mo, sample = x[i];
        if (n == 1 && counter == 0) {
            mo = out[i];
        } else if (n == 1 && counter == 1) {
            mo = (out[i] + e1[i]) / 2.0f;
            sample = cur[i];
        } else if (n == 2) {
            mo = (3.0f * e1[i] - e2[i]) / 2.0f;
        } else if (n == 3) {
            mo = ((23.0f * e1[i] - 16.0f * e2[i]) + 5.0f * e3[i]) / 12.0f;
        } else {
            mo = k24 * (((55.0f * e1[i] - 59.0f * e2[i]) + 37.0f * e3[i]) - 9.0f * e4[i]);
        }
        x[i] = pndm_prev(&c, s->cfg.prediction, sample, mo);
    }
    if (n == 1 && counter == 1) s->have_first = 0;
}

static void pndm_step(sd_scheduler *s, int call, const float *out, float *x, sd_rng *gen) {
    (void)gen;
    if (call < s->n_prk) pndm_step_prk(s, call, out, x);
    else pndm_step_plms(s, call, out, x);
}

const sd_sampler_ops sched_ops_pndm = {
    .defaults = {0.0001, 0.02, "linear", SCHED_LEADING, 0, 0, 0},
    .keys = SCHED_KEY_ALPHA_ONE | SCHED_KEY_PRK,
    .sigma_based = 0,
    .n_history = 6,
    .set_timesteps = pndm_set_timesteps,
    .step = pndm_step,
    .draws_noise = never_draws,
};

/* ---- LCM ---- */

static int lcm_set_timesteps(sd_scheduler *s, sd_error *err) {
    int N = s->num_inference_steps, orig = s->cfg.original_inference_steps, T = s->T;
    if (N > orig)
        return sd_fail(err, "scheduler lcm: %d steps is more than original_inference_steps = %d", N, orig);
    int k = T / orig;
    /* lcm_origin_timesteps = [1..orig] * k - 1, reversed; pick floor(linspace(0, orig, N, endpoint=False)) */
    for (int i = 0; i < N; i++) {
        int idx = (int)floor((double)i * ((double)orig / N));
        s->timesteps[i] = (float)((orig - idx) * k - 1);
    }
    s->n_calls = N;
    s->n_sigmas = 0;
    s->init_noise_sigma = 1.0f;
    return 0;
}

static int lcm_draws(const sd_scheduler *s, int call) { return call != s->num_inference_steps - 1; }

static void lcm_step(sd_scheduler *s, int call, const float *out, float *x, sd_rng *gen) {
    (void)gen;
    int t = (int)s->timesteps[call];
    int prev_t = call + 1 < s->n_calls ? (int)s->timesteps[call + 1] : t;
    float a = alpha_at(s, t, 1.0f), ap = alpha_at(s, prev_t, s->final_alpha_cumprod);
    float b = 1.0f - a, bp = 1.0f - ap;
    /* get_scalings_for_boundary_condition_discrete, sigma_data = 0.5 */
    float scaled = (float)t * s->cfg.timestep_scaling;
    float c_skip = (1.0f / (scaled * scaled + 0.25f)) * 0.25f;
    float c_out = scaled / sqrtf(scaled * scaled + 0.25f);
    float sqrt_a = sqrtf(a), sqrt_b = sqrtf(b), sqrt_ap = sqrtf(ap), sqrt_bp = sqrtf(bp);
    int last = !lcm_draws(s, call);
    for (size_t i = 0; i < s->numel; i++) {
        float x0, e;
        alpha_preds(s->cfg.prediction, sqrt_a, sqrt_b, x[i], out[i], &x0, &e);
        x0 = clip(&s->cfg, x0);
        float denoised = c_out * x0 + c_skip * x[i];
        x[i] = last ? denoised : sqrt_ap * denoised + sqrt_bp * s->noise[i];
    }
}

const sd_sampler_ops sched_ops_lcm = {
    .defaults = {0.00085, 0.012, "scaled_linear", SCHED_LEADING, 0, 1, 0},
    .keys = SCHED_KEY_CLIP | SCHED_KEY_ALPHA_ONE | SCHED_KEY_THRESHOLD | SCHED_KEY_ZERO_SNR | SCHED_KEY_LCM,
    .sigma_based = 0,
    .n_history = 0,
    .set_timesteps = lcm_set_timesteps,
    .step = lcm_step,
    .draws_noise = lcm_draws,
};
