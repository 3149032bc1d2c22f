/* sampler/steps_sigma — the sigma-parameterised samplers of diffusers
 * v0.27.2: Euler (scheduling_euler_discrete.py), Euler a
 * (scheduling_euler_ancestral_discrete.py), LMS (scheduling_lms_discrete.py),
 * Heun (scheduling_heun_discrete.py) and DPM++ 2M
 * (scheduling_dpmsolver_multistep.py, dpmsolver++ / order 2 / midpoint).
 *
 * Scalars are 0-dim float32 tensors in diffusers: each scalar expression is
 * evaluated in float, operation by operation, then applied elementwise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler/sched_internal.h"

/* Predicted x0 of the k-diffusion samplers (Euler, Euler a, LMS, Heun). */
static inline float sigma_pred_x0(sched_pred p, float sigma, float x, float eps, float c_out, float c_in_sq) {
    if (p == SCHED_PRED_EPSILON) return x - sigma * eps;
    if (p == SCHED_PRED_V) return eps * c_out + x / c_in_sq; /* c_out = -sigma/sqrt(sigma^2+1), c_in_sq = sigma^2+1 */
    return eps;
}

static void v_scalars(float sigma, float *c_out, float *c_in_sq) {
    *c_in_sq = sigma * sigma + 1.0f;
    *c_out = -sigma / sqrtf(sigma * sigma + 1.0f);
}

static int never_draws(const sd_scheduler *s, int call) {
    (void)s;
    (void)call;
    return 0;
}

static int always_draws(const sd_scheduler *s, int call) {
    (void)s;
    (void)call;
    return 1;
}

/* ---- Euler ---- */

static int euler_set_timesteps(sd_scheduler *s, sd_error *err) {
    if (sched_sigma_schedule(s, 1, err)) return -1;
    /* timestep_type "continuous" with v_prediction: t = 0.25 * log(sigma) */
    if (s->cfg.continuous_timesteps)
        for (int i = 0; i < s->n_calls; i++) s->timesteps[i] = 0.25f * sched_torch_logf(s->sigmas[i]);
    s->init_noise_sigma = sched_sigma_init_noise(s);
    return 0;
}

/* s_churn = 0: gamma = 0, sigma_hat = sigma; the step still draws a randn
 * (unused), which the dispatcher does. */
static void euler_step(sd_scheduler *s, int call, const float *eps, float *x, sd_rng *gen) {
    (void)gen;
    float sigma = s->sigmas[call], sigma_hat = sigma;
    float dt = s->sigmas[call + 1] - sigma_hat, c_out, c_in_sq;
    v_scalars(sigma, &c_out, &c_in_sq);
    for (size_t i = 0; i < s->numel; i++) {
        float pred = sigma_pred_x0(s->cfg.prediction, sigma_hat, x[i], eps[i], c_out, c_in_sq);
        float derivative = (x[i] - pred) / sigma_hat;
        x[i] = x[i] + derivative * dt;
    }
}

const sd_sampler_ops sched_ops_euler = {
    .defaults = {0.0001, 0.02, "linear", SCHED_LINSPACE, 0, 0, 0},
    .keys = SCHED_KEY_KARRAS | SCHED_KEY_EULER | SCHED_KEY_ZERO_SNR,
    .sigma_based = 1,
    .n_history = 0,
    .set_timesteps = euler_set_timesteps,
    .step = euler_step,
    .draws_noise = always_draws,
};

/* ---- Euler a ---- */

static int sigma_family_set_timesteps(sd_scheduler *s, sd_error *err) {
    if (sched_sigma_schedule(s, 0, err)) return -1;
    s->init_noise_sigma = sched_sigma_init_noise(s);
    return 0;
}

static void euler_a_step(sd_scheduler *s, int call, const float *eps, float *x, sd_rng *gen) {
    (void)gen;
    float sigma = s->sigmas[call], sigma_from = sigma, sigma_to = s->sigmas[call + 1];
    float st2 = sigma_to * sigma_to, sf2 = sigma_from * sigma_from;
    float sigma_up = sqrtf(st2 * (sf2 - st2) / sf2);
    float sigma_down = sqrtf(st2 - sigma_up * sigma_up);
    float dt = sigma_down - sigma, c_out, c_in_sq;
    v_scalars(sigma, &c_out, &c_in_sq);
    const float *noise = s->noise;
    for (size_t i = 0; i < s->numel; i++) {
        float pred = sigma_pred_x0(s->cfg.prediction, sigma, x[i], eps[i], c_out, c_in_sq);
        float derivative = (x[i] - pred) / sigma;
        float prev = x[i] + derivative * dt;
        x[i] = prev + noise[i] * sigma_up;
    }
}

const sd_sampler_ops sched_ops_euler_a = {
    .defaults = {0.0001, 0.02, "linear", SCHED_LINSPACE, 0, 0, 0},
    .keys = SCHED_KEY_ZERO_SNR,
    .sigma_based = 1,
    .n_history = 0,
    .set_timesteps = sigma_family_set_timesteps,
    .step = euler_a_step,
    .draws_noise = always_draws,
};

/* ---- LMS (order 4) ---- */

#define LMS_ORDER 4

/* hist[0..3] hold the derivatives, newest first. */
static void rotate_history(sd_scheduler *s, int n) {
    float *oldest = s->hist[n - 1];
    memmove(&s->hist[1], &s->hist[0], (size_t)(n - 1) * sizeof s->hist[0]);
    s->hist[0] = oldest;
}

static void lms_step(sd_scheduler *s, int call, const float *eps, float *x, sd_rng *gen) {
    (void)gen;
    float sigma = s->sigmas[call], c_out, c_in_sq;
    v_scalars(sigma, &c_out, &c_in_sq);
    rotate_history(s, LMS_ORDER);
    if (s->n_hist_used < LMS_ORDER) s->n_hist_used++;
    int order = call + 1 < LMS_ORDER ? call + 1 : LMS_ORDER;
    float coeff[LMS_ORDER];
    for (int k = 0; k < order; k++) coeff[k] = (float)sched_lms_coefficient(s->sigmas, order, call, k);
    for (size_t i = 0; i < s->numel; i++) {
        float pred = sigma_pred_x0(s->cfg.prediction, sigma, x[i], eps[i], c_out, c_in_sq);
        s->hist[0][i] = (x[i] - pred) / sigma;
        /* sum(coeff * derivative for newest first), then sample + sum */
        float acc = coeff[0] * s->hist[0][i];
        for (int k = 1; k < order; k++) acc = acc + coeff[k] * s->hist[k][i];
        x[i] = x[i] + acc;
    }
}

const sd_sampler_ops sched_ops_lms = {
    .defaults = {0.0001, 0.02, "linear", SCHED_LINSPACE, 0, 0, 0},
    .keys = SCHED_KEY_KARRAS,
    .sigma_based = 1,
    .n_history = LMS_ORDER,
    .set_timesteps = sigma_family_set_timesteps,
    .step = lms_step,
    .draws_noise = never_draws,
};

/* ---- Heun ---- */

/* Every sigma but the first and the final 0 twice, every timestep but the
 * first twice: 2N-1 UNet calls, odd calls being the corrector. */
static int heun_set_timesteps(sd_scheduler *s, sd_error *err) {
    if (sched_sigma_schedule(s, 0, err)) return -1;
    /* expand in place from the end (the tables have room for 2N+8) */
    int N = s->n_calls;
    s->sigmas[2 * N - 1] = s->sigmas[N];
    for (int i = N - 1; i >= 1; i--) {
        s->sigmas[2 * i - 1] = s->sigmas[2 * i] = s->sigmas[i];
        s->timesteps[2 * i - 1] = s->timesteps[2 * i] = s->timesteps[i];
    }
    s->n_sigmas = 2 * N;
    s->n_calls = 2 * N - 1;
    s->init_noise_sigma = sched_sigma_init_noise(s);
    return 0;
}

static inline float clip(const sched_config *c, float v) {
    if (!c->clip_sample) return v;
    float r = c->clip_sample_range;
    return v < -r ? -r : (v > r ? r : v);
}

/* hist[0] = first-order derivative, hist[1] = the sample it started from. */
static void heun_step(sd_scheduler *s, int call, const float *eps, float *x, sd_rng *gen) {
    (void)gen;
    float c_out, c_in_sq;
    if (!s->have_first) {
        float sigma_hat = s->sigmas[call], sigma_next = s->sigmas[call + 1];
        float dt = sigma_next - sigma_hat;
        v_scalars(sigma_hat, &c_out, &c_in_sq);
        for (size_t i = 0; i < s->numel; i++) {
            float pred = clip(&s->cfg, sigma_pred_x0(s->cfg.prediction, sigma_hat, x[i], eps[i], c_out, c_in_sq));
            float derivative = (x[i] - pred) / sigma_hat;
            s->hist[0][i] = derivative;
            s->hist[1][i] = x[i];
            x[i] = x[i] + derivative * dt;
        }
        s->heun_dt = dt;
        s->have_first = 1;
        return;
    }
    float sigma_next = s->sigmas[call], dt = s->heun_dt;
    v_scalars(sigma_next, &c_out, &c_in_sq);
    for (size_t i = 0; i < s->numel; i++) {
        float pred = clip(&s->cfg, sigma_pred_x0(s->cfg.prediction, sigma_next, x[i], eps[i], c_out, c_in_sq));
        float derivative = (x[i] - pred) / sigma_next;
        derivative = (s->hist[0][i] + derivative) / 2.0f;
        x[i] = s->hist[1][i] + derivative * dt;
    }
    s->have_first = 0;
}

const sd_sampler_ops sched_ops_heun = {
    .defaults = {0.00085, 0.012, "linear", SCHED_LINSPACE, 0, 0, 0},
    .keys = SCHED_KEY_KARRAS | SCHED_KEY_CLIP,
    .sigma_based = 1,
    .n_history = 2,
    .set_timesteps = heun_set_timesteps,
    .step = heun_step,
    .draws_noise = never_draws,
};

/* ---- DPM++ 2M ---- */

/* First index of the ascending (flipped) lambda table >= lmin, torch.searchsorted. */
static int dpm_clipped_index(const sd_scheduler *s, double lmin) {
    if (isinf(lmin) && lmin < 0) return 0;
    int n = 0;
    for (int i = s->T - 1; i >= 0; i--) {
        float ac = s->alphas_cumprod[i];
        float lambda = sched_torch_logf(sqrtf(ac)) - sched_torch_logf(sqrtf(1.0f - ac));
        if ((double)lambda < lmin) n++;
        else break;
    }
    return n;
}

static int dpm_set_timesteps(sd_scheduler *s, sd_error *err) {
    int N = s->num_inference_steps, T = s->T, count = N;
    int last = T - dpm_clipped_index(s, s->cfg.lambda_min_clipped);
    double *ts = malloc((size_t)(N + 2) * sizeof *ts), *sig = malloc((size_t)(N + 2) * sizeof *sig);
    float *log_sigmas = s->cfg.karras ? malloc((size_t)T * sizeof *log_sigmas) : NULL;
    if (!ts || !sig || (s->cfg.karras && !log_sigmas)) {
        free(ts);
        free(sig);
        free(log_sigmas);
        return sd_fail(err, "scheduler: out of memory building %d sigmas", N);
    }
    if (s->cfg.spacing == SCHED_LINSPACE) {
        /* linspace(0, last-1, N+1).round()[::-1][:-1] */
        for (int k = 0; k < N; k++) ts[k] = sched_round(sched_np_linspace(last - 1, N + 1, N - k));
    } else if (s->cfg.spacing == SCHED_LEADING) {
        int ratio = last / (N + 1);
        for (int k = 0; k < N; k++) ts[k] = (double)((N - k) * ratio + s->cfg.steps_offset);
    } else {
        /* arange(last, 0, -T/N).round() - 1: ceil(last / (T/N)) values */
        double ratio = (double)T / N;
        count = (int)ceil(last / ratio);
        if (count > N + 1) count = N + 1;
        for (int k = 0; k < count; k++) {
            double delta = ((double)last - ratio) - last;
            ts[k] = sched_round(k == 0 ? last : last + k * delta) - 1.0;
        }
    }
    if (s->cfg.karras) {
        sched_karras(s->sigma_table[0], s->sigma_table[T - 1], N, sig);
        sched_log_sigmas(s, log_sigmas);
        for (int k = 0; k < N; k++) ts[k] = sched_round(sched_sigma_to_t(sig[k], log_sigmas, T));
        count = N;
    } else {
        for (int k = 0; k < count; k++) sig[k] = sched_interp(ts[k], s->sigma_table, T);
    }
    for (int k = 0; k < count; k++) {
        s->timesteps[k] = (float)ts[k];
        s->sigmas[k] = (float)sig[k];
    }
    s->sigmas[count] = s->cfg.final_sigma_min ? s->sigma_table[0] : 0.0f;
    s->n_sigmas = count + 1;
    s->n_calls = count;
    s->init_noise_sigma = 1.0f;
    free(ts);
    free(sig);
    free(log_sigmas);
    return 0;
}

/* _sigma_to_alpha_sigma_t: alpha = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha */
static void dpm_alpha_sigma(float sigma, float *alpha_t, float *sigma_t) {
    *alpha_t = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sigma_t = sigma * *alpha_t;
}

static float dpm_lambda(float sigma, float *alpha_t, float *sigma_t) {
    dpm_alpha_sigma(sigma, alpha_t, sigma_t);
    return sched_torch_logf(*alpha_t) - sched_torch_logf(*sigma_t);
}

/* hist[0] = x0 prediction of this call, hist[1] = of the previous call. */
static void dpm_step(sd_scheduler *s, int call, const float *eps, float *x, sd_rng *gen) {
    (void)gen;
    int N = s->n_calls;
    int lower_order_final = call == N - 1 && (s->cfg.euler_at_final || (s->cfg.lower_order_final && N < 15) ||
                                              !s->cfg.final_sigma_min);
    int first_order = s->n_hist_used < 1 || lower_order_final;
    /* convert_model_output (dpmsolver++): x0 prediction at sigmas[call] */
    float a0, s0;
    dpm_alpha_sigma(s->sigmas[call], &a0, &s0);
    rotate_history(s, 2);
    float at, st, as0, ss0, as1, ss1;
    float lambda_t = dpm_lambda(s->sigmas[call + 1], &at, &st);
    float lambda_s0 = dpm_lambda(s->sigmas[call], &as0, &ss0);
    float h = lambda_t - lambda_s0;
    float ratio = st / ss0, b = at * (sched_torch_expf(-h) - 1.0f);
    float half_b = 0.5f * b, inv_r0 = 0.0f;
    if (!first_order) {
        float lambda_s1 = dpm_lambda(s->sigmas[call - 1], &as1, &ss1);
        float r0 = (lambda_s0 - lambda_s1) / h;
        inv_r0 = 1.0f / r0;
    }
    for (size_t i = 0; i < s->numel; i++) {
        float x0;
        if (s->cfg.prediction == SCHED_PRED_EPSILON) x0 = (x[i] - s0 * eps[i]) / a0;
        else if (s->cfg.prediction == SCHED_PRED_V) x0 = a0 * x[i] - s0 * eps[i];
        else x0 = eps[i];
        s->hist[0][i] = x0;
        if (first_order) {
            x[i] = ratio * x[i] - b * x0;
        } else {
            float d1 = inv_r0 * (x0 - s->hist[1][i]);
            x[i] = (ratio * x[i] - b * x0) - half_b * d1;
        }
    }
    if (s->n_hist_used < 2) s->n_hist_used++;
}

const sd_sampler_ops sched_ops_dpmpp_2m = {
    .defaults = {0.0001, 0.02, "linear", SCHED_LINSPACE, 0, 0, 0},
    .keys = SCHED_KEY_KARRAS | SCHED_KEY_DPM | SCHED_KEY_THRESHOLD | SCHED_KEY_ZERO_SNR,
    .sigma_based = 0,
    .n_history = 2,
    .set_timesteps = dpm_set_timesteps,
    .step = dpm_step,
    .draws_noise = never_draws,
};
