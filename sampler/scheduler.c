/* sampler/scheduler — config reading, train tables, and the common API;
 * the per-sampler schedules and steps live in steps_alpha.c / steps_sigma.c. */
#include "sampler/scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "sampler/sched_internal.h"

/* ---- config ---- */

/* diffusers' extract_init_dict drops the keys listed in `_use_default_values`
 * (they were class defaults of whoever saved the config), so the loading
 * class's own defaults apply to them.  Returns a copy without those keys. */
static cJSON *config_effective(const cJSON *config) {
    cJSON *dup = cJSON_Duplicate(config, 1);
    if (!dup) return NULL;
    const cJSON *used = cJSON_GetObjectItemCaseSensitive(dup, "_use_default_values");
    if (cJSON_IsArray(used)) {
        int n = cJSON_GetArraySize(used);
        for (int i = n - 1; i >= 0; i--) {
            const cJSON *k = cJSON_GetArrayItem(used, i);
            if (cJSON_IsString(k)) cJSON_DeleteItemFromObjectCaseSensitive(dup, k->valuestring);
        }
    }
    return dup;
}

/* Reads a string key that must be one of `values` (NULL-terminated); *out = index. */
static int read_choice(const cJSON *c, const char *file, const char *key, const char *def, const char *const *values,
                       int *out, sd_error *err) {
    char buf[64];
    if (sd_json_string(c, file, key, def, buf, sizeof buf, err)) return -1;
    for (int i = 0; values[i]; i++)
        if (!strcmp(buf, values[i])) {
            *out = i;
            return 0;
        }
    char list[256] = "";
    size_t len = 0;
    for (int i = 0; values[i]; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", values[i]);
    return sd_fail(err, "%s: key '%s': '%s' is not supported (expected one of %s)", file, key, buf, list);
}

/* A boolean key whose `true` this port does not implement. */
static int refuse_true(const cJSON *c, const char *file, const char *key, sd_error *err) {
    int v;
    if (sd_json_bool(c, file, key, 0, &v, err)) return -1;
    if (v) return sd_fail(err, "%s: key '%s': true is not supported (expected false)", file, key);
    return 0;
}

static int read_common(sd_scheduler *s, const cJSON *c, const char *file, sd_error *err) {
    static const char *const preds[] = {"epsilon", "v_prediction", "sample", NULL};
    static const char *const spacings[] = {"linspace", "leading", "trailing", NULL};
    static const char *const spacing_names[] = {"linspace", "leading", "trailing"};
    const sched_class_defaults *d = &s->info->ops->defaults;
    int pred, spacing;
    if (sd_json_int(c, file, "num_train_timesteps", 1000, &s->cfg.num_train_timesteps, err) ||
        read_choice(c, file, "prediction_type", "epsilon", preds, &pred, err) ||
        read_choice(c, file, "timestep_spacing", spacing_names[d->spacing], spacings, &spacing, err) ||
        sd_json_int(c, file, "steps_offset", 0, &s->cfg.steps_offset, err))
        return -1;
    if (s->cfg.num_train_timesteps < 2 || s->cfg.num_train_timesteps > 100000)
        return sd_fail(err, "%s: key 'num_train_timesteps': %d is out of range (expected 2..100000)", file,
                       s->cfg.num_train_timesteps);
    if (s->cfg.steps_offset < 0 || s->cfg.steps_offset >= s->cfg.num_train_timesteps)
        return sd_fail(err, "%s: key 'steps_offset': %d is out of range", file, s->cfg.steps_offset);
    s->cfg.prediction = (sched_pred)pred;
    s->cfg.spacing = (sched_spacing)spacing;
    if ((s->info->id == SD_SAMPLER_PNDM || s->info->id == SD_SAMPLER_EULER_A) && s->cfg.prediction == SCHED_PRED_SAMPLE)
        return sd_fail(err, "%s: key 'prediction_type': %s supports epsilon and v_prediction only", file,
                       s->info->class_name);
    return 0;
}

static int read_dpm_keys(sd_scheduler *s, const cJSON *c, const char *file, sd_error *err) {
    static const char *const finals[] = {"zero", "sigma_min", NULL};
    int final_type;
    if (sd_json_bool(c, file, "lower_order_final", 1, &s->cfg.lower_order_final, err) ||
        sd_json_bool(c, file, "euler_at_final", 0, &s->cfg.euler_at_final, err) ||
        read_choice(c, file, "final_sigmas_type", "zero", finals, &final_type, err) ||
        refuse_true(c, file, "use_lu_lambdas", err))
        return -1;
    s->cfg.final_sigma_min = final_type == 1;
    /* Python's json writes -Infinity for the default; absent or non-number = -inf. */
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(c, "lambda_min_clipped");
    s->cfg.lambda_min_clipped = cJSON_IsNumber(l) ? l->valuedouble : -INFINITY;
    /* only "learned"/"learned_range" change DPM-Solver (model outputs with
     * twice the channels); other values, e.g. a DDPM config's fixed_small, are inert */
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, "variance_type");
    if (cJSON_IsString(v) && !strncmp(v->valuestring, "learned", 7))
        return sd_fail(err, "%s: key 'variance_type': '%s' (learned variance) is not supported", file, v->valuestring);
    return 0;
}

static int read_euler_keys(sched_config *g, const cJSON *c, const char *file, sd_error *err) {
    static const char *const interps[] = {"linear", NULL};
    static const char *const types[] = {"discrete", "continuous", NULL};
    int interp, type;
    if (read_choice(c, file, "interpolation_type", "linear", interps, &interp, err) ||
        read_choice(c, file, "timestep_type", "discrete", types, &type, err) ||
        sd_json_float(c, file, "sigma_min", NAN, &g->sigma_min, err) ||
        sd_json_float(c, file, "sigma_max", NAN, &g->sigma_max, err))
        return -1;
    g->continuous_timesteps = type == 1 && g->prediction == SCHED_PRED_V;
    return 0;
}

static int read_lcm_keys(sched_config *g, const cJSON *c, const char *file, sd_error *err) {
    double scaling;
    if (sd_json_int(c, file, "original_inference_steps", 50, &g->original_inference_steps, err) ||
        sd_json_float(c, file, "timestep_scaling", 10.0, &scaling, err))
        return -1;
    g->timestep_scaling = (float)scaling;
    if (g->original_inference_steps < 1 || g->original_inference_steps > g->num_train_timesteps)
        return sd_fail(err, "%s: key 'original_inference_steps': %d is out of range (expected 1..%d)", file,
                       g->original_inference_steps, g->num_train_timesteps);
    return 0;
}

/* karras: SD_KARRAS_FROM_CONFIG follows use_karras_sigmas (absent for
 * classes without a Karras schedule, where from_config drops the key). */
static int read_karras(sd_scheduler *s, const cJSON *c, const char *file, int karras, sd_error *err) {
    s->cfg.karras = 0;
    if (s->info->ops->keys & SCHED_KEY_KARRAS) {
        int from_config;
        if (sd_json_bool(c, file, "use_karras_sigmas", 0, &from_config, err)) return -1;
        s->cfg.karras = karras == SD_KARRAS_FROM_CONFIG ? from_config : karras == SD_KARRAS_ON;
    } else if (karras == SD_KARRAS_ON) {
        return sd_fail(err, "sampler %s has no Karras schedule (samplers with one: euler, lms, heun, dpm++2m)",
                       s->info->name);
    }
    return 0;
}

static int read_class_keys(sd_scheduler *s, const cJSON *c, const char *file, int karras, sd_error *err) {
    const sd_sampler_ops *ops = s->info->ops;
    const sched_class_defaults *d = &ops->defaults;
    sched_config *g = &s->cfg;
    unsigned k = ops->keys;
    double range = 1.0;
    g->clip_sample = 0;
    g->set_alpha_to_one = d->set_alpha_to_one;
    g->skip_prk_steps = d->skip_prk_steps;
    g->sigma_min = g->sigma_max = NAN;
    g->original_inference_steps = 50;
    g->timestep_scaling = 10.0f;
    if ((k & SCHED_KEY_CLIP) && (sd_json_bool(c, file, "clip_sample", d->clip_sample, &g->clip_sample, err) ||
                                 sd_json_float(c, file, "clip_sample_range", 1.0, &range, err)))
        return -1;
    g->clip_sample_range = (float)range;
    if ((k & SCHED_KEY_ALPHA_ONE) &&
        sd_json_bool(c, file, "set_alpha_to_one", d->set_alpha_to_one, &g->set_alpha_to_one, err))
        return -1;
    if ((k & SCHED_KEY_PRK) && sd_json_bool(c, file, "skip_prk_steps", d->skip_prk_steps, &g->skip_prk_steps, err))
        return -1;
    if ((k & SCHED_KEY_THRESHOLD) && refuse_true(c, file, "thresholding", err)) return -1;
    if ((k & SCHED_KEY_ZERO_SNR) && refuse_true(c, file, "rescale_betas_zero_snr", err)) return -1;
    if (k & SCHED_KEY_VARIANCE) {
        static const char *const vars[] = {"fixed_small", "fixed_small_log", "fixed_large", NULL};
        int v;
        if (read_choice(c, file, "variance_type", "fixed_small", vars, &v, err)) return -1;
        g->variance = (sched_variance)v;
    }
    if ((k & SCHED_KEY_EULER) && read_euler_keys(g, c, file, err)) return -1;
    if ((k & SCHED_KEY_DPM) && read_dpm_keys(s, c, file, err)) return -1;
    if ((k & SCHED_KEY_LCM) && read_lcm_keys(g, c, file, err)) return -1;
    return read_karras(s, c, file, karras, err);
}

/* ---- train tables (diffusers __init__) ---- */

/* betas_for_alpha_bar with the cosine transform (squaredcos_cap_v2), in
 * Python float64, then torch.tensor(..., float32). */
static void betas_cosine(int T, float *betas) {
    for (int i = 0; i < T; i++) {
        double t1 = (double)i / T, t2 = (double)(i + 1) / T;
        double a1 = cos((t1 + 0.008) / 1.008 * M_PI / 2), a2 = cos((t2 + 0.008) / 1.008 * M_PI / 2);
        double b = 1.0 - (a2 * a2) / (a1 * a1);
        betas[i] = (float)(b < 0.999 ? b : 0.999);
    }
}

static int make_betas(sd_scheduler *s, const cJSON *c, const char *file, sd_error *err) {
    const sched_class_defaults *d = &s->info->ops->defaults;
    static const char *const kinds[] = {"linear", "scaled_linear", "squaredcos_cap_v2", NULL};
    double b0, b1;
    int kind, T = s->T;
    const cJSON *trained = cJSON_GetObjectItemCaseSensitive(c, "trained_betas");
    if (cJSON_IsArray(trained)) {
        if (cJSON_GetArraySize(trained) != T)
            return sd_fail(err, "%s: key 'trained_betas': %d values, expected num_train_timesteps = %d", file,
                           cJSON_GetArraySize(trained), T);
        for (int i = 0; i < T; i++) {
            const cJSON *v = cJSON_GetArrayItem(trained, i);
            if (!cJSON_IsNumber(v)) return sd_fail(err, "%s: key 'trained_betas': entry %d is not a number", file, i);
            s->betas[i] = (float)v->valuedouble;
        }
        return 0;
    }
    if (trained && !cJSON_IsNull(trained))
        return sd_fail(err, "%s: key 'trained_betas': expected a list of numbers or null", file);
    if (sd_json_float(c, file, "beta_start", d->beta_start, &b0, err) ||
        sd_json_float(c, file, "beta_end", d->beta_end, &b1, err) ||
        read_choice(c, file, "beta_schedule", d->beta_schedule, kinds, &kind, err))
        return -1;
    if (!(b0 > 0 && b1 > 0 && b0 < 1 && b1 < 1))
        return sd_fail(err, "%s: keys 'beta_start'/'beta_end': expected values in (0, 1), got %g and %g", file, b0, b1);
    if (kind == 0) {
        sched_torch_linspace_f32((float)b0, (float)b1, T, s->betas);
    } else if (kind == 1) {
        /* torch.linspace(beta_start**0.5, beta_end**0.5, T, float32) ** 2 */
        sched_torch_linspace_f32((float)sqrt(b0), (float)sqrt(b1), T, s->betas);
        for (int i = 0; i < T; i++) s->betas[i] = s->betas[i] * s->betas[i];
    } else {
        betas_cosine(T, s->betas);
    }
    return 0;
}

static void make_alphas(sd_scheduler *s) {
    /* torch.cumprod on CPU accumulates in double (acc_type) and stores float. */
    double acc = 1.0;
    for (int i = 0; i < s->T; i++) {
        float alpha = 1.0f - s->betas[i];
        acc *= alpha;
        s->alphas_cumprod[i] = (float)acc;
        float ac = s->alphas_cumprod[i];
        s->sigma_table[i] = sqrtf((1.0f - ac) / ac);
    }
    s->final_alpha_cumprod = s->cfg.set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
}

/* ---- lifecycle ---- */

static int alloc_buffers(sd_scheduler *s, sd_error *err) {
    int T = s->T, cap = 2 * s->num_inference_steps + 8;
    s->betas = malloc((size_t)T * sizeof(float));
    s->alphas_cumprod = malloc((size_t)T * sizeof(float));
    s->sigma_table = malloc((size_t)T * sizeof(float));
    s->timesteps = calloc((size_t)cap, sizeof(float));
    s->sigmas = calloc((size_t)cap, sizeof(float));
    if (!s->betas || !s->alphas_cumprod || !s->sigma_table || !s->timesteps || !s->sigmas)
        return sd_fail(err, "scheduler: out of memory for %d train timesteps", T);
    return 0;
}

static int alloc_latent_buffers(sd_scheduler *s, sd_error *err) {
    int draws = 0;
    for (int c = 0; c < s->n_calls && !draws; c++) draws = s->info->ops->draws_noise(s, c);
    if (draws && !(s->noise = malloc(s->numel * sizeof(float))))
        return sd_fail(err, "scheduler: out of memory for a %zu-value noise buffer", s->numel);
    for (int h = 0; h < s->info->ops->n_history; h++)
        if (!(s->hist[h] = calloc(s->numel, sizeof(float))))
            return sd_fail(err, "scheduler: out of memory for %d history buffers of %zu values",
                           s->info->ops->n_history, s->numel);
    return 0;
}

static int scheduler_build(sd_scheduler *s, const cJSON *cfg, const char *file, int karras, sd_error *err) {
    if (read_common(s, cfg, file, err) || read_class_keys(s, cfg, file, karras, err)) return -1;
    s->T = s->cfg.num_train_timesteps;
    if (s->num_inference_steps > s->T)
        return sd_fail(err, "%s: %d inference steps is more than num_train_timesteps = %d", file,
                       s->num_inference_steps, s->T);
    if (alloc_buffers(s, err) || make_betas(s, cfg, file, err)) return -1;
    make_alphas(s);
    if (s->info->ops->set_timesteps(s, err)) return -1;
    return alloc_latent_buffers(s, err);
}

int sd_scheduler_create(sd_scheduler **out, const cJSON *config, const char *config_file, sd_sampler_id sampler,
                        int karras, int num_inference_steps, size_t latent_numel, sd_error *err) {
    *out = NULL;
    const char *file = config_file ? config_file : "scheduler_config.json";
    const sd_sampler_info *info = sd_sampler_get(sampler);
    if (!info) return sd_fail(err, "scheduler: unknown sampler id %d", (int)sampler);
    if (!cJSON_IsObject(config)) return sd_fail(err, "%s: expected a JSON object", file);
    if (num_inference_steps < 1)
        return sd_fail(err, "scheduler: %d inference steps (expected >= 1)", num_inference_steps);
    if (latent_numel == 0) return sd_fail(err, "scheduler: empty latent");
    sd_scheduler *s = calloc(1, sizeof *s);
    cJSON *cfg = config_effective(config);
    if (!s || !cfg) {
        free(s);
        cJSON_Delete(cfg);
        return sd_fail(err, "scheduler: out of memory");
    }
    s->info = info;
    s->num_inference_steps = num_inference_steps;
    s->numel = latent_numel;
    int rc = scheduler_build(s, cfg, file, karras, err);
    cJSON_Delete(cfg);
    if (rc) {
        sd_scheduler_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void sd_scheduler_free(sd_scheduler *s) {
    if (!s) return;
    free(s->betas);
    free(s->alphas_cumprod);
    free(s->sigma_table);
    free(s->timesteps);
    free(s->sigmas);
    free(s->noise);
    for (int h = 0; h < SCHED_MAX_HISTORY; h++) free(s->hist[h]);
    free(s);
}

void sd_scheduler_reset(sd_scheduler *s) {
    s->next_call = 0;
    s->n_hist_used = 0;
    s->have_first = 0;
    s->heun_dt = 0.0f;
}

/* ---- accessors ---- */

const sd_sampler_info *sd_scheduler_sampler(const sd_scheduler *s) { return s->info; }
int sd_scheduler_karras(const sd_scheduler *s) { return s->cfg.karras; }
int sd_scheduler_num_calls(const sd_scheduler *s) { return s->n_calls; }
float sd_scheduler_init_noise_sigma(const sd_scheduler *s) { return s->init_noise_sigma; }

float sd_scheduler_timestep(const sd_scheduler *s, int call) {
    return (call >= 0 && call < s->n_calls) ? s->timesteps[call] : NAN;
}

const float *sd_scheduler_timesteps(const sd_scheduler *s, int *n) {
    if (n) *n = s->n_calls;
    return s->timesteps;
}

const float *sd_scheduler_sigmas(const sd_scheduler *s, int *n) {
    if (n) *n = s->n_sigmas;
    return s->n_sigmas ? s->sigmas : NULL;
}

const float *sd_scheduler_betas(const sd_scheduler *s, int *n) {
    if (n) *n = s->T;
    return s->betas;
}

const float *sd_scheduler_alphas_cumprod(const sd_scheduler *s, int *n) {
    if (n) *n = s->T;
    return s->alphas_cumprod;
}

/* ---- the loop ---- */

void sd_scheduler_scale_model_input(const sd_scheduler *s, int call, const float *x, float *out, size_t n) {
    if (!s->info->ops->sigma_based || call < 0 || call >= s->n_calls) {
        if (out != x) memmove(out, x, n * sizeof(float));
        return;
    }
    /* sample / ((sigma**2 + 1) ** 0.5) on float32 0-dim tensors */
    float sigma = s->sigmas[call];
    float denom = sqrtf(sigma * sigma + 1.0f);
    for (size_t i = 0; i < n; i++) out[i] = x[i] / denom;
}

int sd_scheduler_step(sd_scheduler *s, int call, const float *model_output, float *sample, sd_rng *gen,
                      sd_error *err) {
    if (call != s->next_call || call >= s->n_calls)
        return sd_fail(err, "scheduler %s: step for call %d, expected call %d of %d (steps must run in order; "
                       "sd_scheduler_reset starts over)", s->info->name, call, s->next_call, s->n_calls);
    if (s->info->ops->draws_noise(s, call)) {
        if (!gen)
            return sd_fail(err, "scheduler %s: call %d draws noise but no generator was given", s->info->name, call);
        sd_rng_randn(gen, s->noise, s->numel);
    }
    s->info->ops->step(s, call, model_output, sample, gen);
    s->next_call++;
    return 0;
}

const float *sd_scheduler_noise(const sd_scheduler *s) { return s->noise; }

cJSON *sd_scheduler_default_config(void) {
    static const char sd15[] =
        "{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": \"0.6.0\", \"beta_end\": 0.012,"
        " \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false,"
        " \"num_train_timesteps\": 1000, \"set_alpha_to_one\": false, \"skip_prk_steps\": true,"
        " \"steps_offset\": 1, \"trained_betas\": null}";
    return cJSON_Parse(sd15);
}
