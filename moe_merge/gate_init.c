/* moe_merge/gate_init — SegMoE's `init: hidden` (see gate_init.h).
 *
 * One expert at a time: load its pipeline, hang a recorder on every covered
 * module's observe seam (unet/linear_layer.h), run the fixed txt2img recipe,
 * keep the per-module mean of the conditional half of the last call.  The
 * recorder reduces rows as they come, so nothing of size S x D is kept. */
#include "moe_merge/gate_init.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/unet.h"

/* What one module saw: the running result of its latest call. */
typedef struct recorder {
    struct expert_run *run;
    float *row;            /* hidden_mean[m] + e * dim: overwritten on every call */
    int64_t dim;
    int calls;
    int64_t bad_rows, bad_cols; /* first unusable call (odd row count / other width), or 0 */
} recorder;

typedef struct expert_run {
    const sd_gate_init_options *opt;
    int expert, n_experts;
    double *acc;           /* [max dim] shared: observers run one at a time */
    recorder *rec;         /* [n_modules] */
} expert_run;

/* segmoe/main.py lines 1300-1303: hidden_states[-1] (the cond half of
 * [uncond, cond]), mean over the sequence as sum / S. */
static void record_input(void *ctx, const float *x, int64_t n_rows, int64_t n_cols) {
    recorder *r = ctx;
    if (n_cols != r->dim || n_rows < 2 || n_rows % 2) {
        if (!r->bad_rows && !r->bad_cols) r->bad_rows = n_rows, r->bad_cols = n_cols;
        return;
    }
    const int64_t S = n_rows / 2, D = n_cols;
    double *acc = r->run->acc;
    for (int64_t c = 0; c < D; c++) acc[c] = 0.0;
    for (int64_t s = S; s < n_rows; s++) {
        const float *xr = x + s * D;
        for (int64_t c = 0; c < D; c++) acc[c] += xr[c];
    }
    for (int64_t c = 0; c < D; c++) r->row[c] = (float)(acc[c] / (double)S);
    r->calls++;
}

static void report(const expert_run *run, const char *stage, int done, int total) {
    const sd_gate_init_options *o = run->opt;
    if (o && o->on_progress) o->on_progress(o->progress_ctx, run->expert, run->n_experts, stage, done, total);
}

static void on_load_progress(void *ctx, const char *stage, int done, int total) {
    (void)stage;
    report(ctx, "load", done, total);
}

static void on_run_progress(void *ctx, const char *stage, int done, int total) { report(ctx, stage, done, total); }

/* ----------------------------------------------------------------- gate set */

void sd_gate_set_free(sd_gate_set *set) {
    if (!set) return;
    for (int m = 0; m < set->plan.n_modules; m++) {
        if (set->hidden_mean) free(set->hidden_mean[m]);
        if (set->gates) free(set->gates[m]);
    }
    free(set->hidden_mean);
    free(set->gates);
    sd_moe_plan_free(&set->plan);
    memset(set, 0, sizeof *set);
}

int sd_gate_set_find(const sd_gate_set *set, const char *module) {
    for (int m = 0; m < set->plan.n_modules; m++)
        if (!strcmp(set->plan.modules[m].name, module)) return m;
    return -1;
}

/* Takes expert 0's plan as the layout and allocates the result arrays. */
static int set_init(sd_gate_set *set, sd_moe_plan *plan, int E, sd_error *err) {
    set->plan = *plan;
    memset(plan, 0, sizeof *plan);
    set->n_experts = E;
    int n = set->plan.n_modules;
    set->hidden_mean = calloc((size_t)n, sizeof *set->hidden_mean);
    set->gates = calloc((size_t)n, sizeof *set->gates);
    if (!set->hidden_mean || !set->gates) return sd_fail(err, "out of memory");
    for (int m = 0; m < n; m++) {
        size_t cnt = (size_t)E * (size_t)set->plan.modules[m].in_dim;
        set->hidden_mean[m] = calloc(cnt, sizeof(float));
        set->gates[m] = calloc(cnt, sizeof(float));
        if (!set->hidden_mean[m] || !set->gates[m]) return sd_fail(err, "out of memory");
    }
    return 0;
}

/* Later experts must cover the same modules with the same widths. */
static int plan_matches(const sd_gate_set *set, const sd_moe_plan *plan, sd_error *err) {
    if (plan->n_modules != set->plan.n_modules)
        return sd_fail(err, "%d MoE-able modules where experts[0] has %d: the UNet architectures differ",
                       plan->n_modules, set->plan.n_modules);
    for (int m = 0; m < plan->n_modules; m++) {
        const sd_moe_module *a = &set->plan.modules[m], *b = &plan->modules[m];
        if (strcmp(a->name, b->name) || a->in_dim != b->in_dim)
            return sd_fail(err, "module '%s' (input width %lld) where experts[0] has '%s' (%lld): the UNet "
                                "architectures differ",
                           b->name, (long long)b->in_dim, a->name, (long long)a->in_dim);
    }
    return 0;
}

/* Hangs a recorder on every module of the set's plan in the expert's UNet. */
static int attach(sd_unet *u, const sd_gate_set *set, expert_run *run, sd_error *err) {
    for (int m = 0; m < set->plan.n_modules; m++) {
        const sd_moe_module *mod = &set->plan.modules[m];
        recorder *r = &run->rec[m];
        r->run = run;
        r->dim = mod->in_dim;
        r->row = set->hidden_mean[m] + (size_t)run->expert * (size_t)mod->in_dim;
        if (mod->kind == SD_MOE_FF) {
            sd_ff *f = sd_unet_find_ff(u, mod->name);
            if (!f) return sd_fail(err, "the UNet has no feed-forward '%s'", mod->name);
            f->observe = record_input;
            f->observe_ctx = r;
        } else {
            sd_proj *p = sd_unet_find_proj(u, mod->name);
            if (!p) return sd_fail(err, "the UNet has no projection '%s'", mod->name);
            p->observe = record_input;
            p->observe_ctx = r;
        }
    }
    return 0;
}

static int check_recorders(const sd_gate_set *set, const expert_run *run, sd_error *err) {
    for (int m = 0; m < set->plan.n_modules; m++) {
        const recorder *r = &run->rec[m];
        const char *name = set->plan.modules[m].name;
        if (r->bad_rows || r->bad_cols)
            return sd_fail(err, "module '%s' saw %lld rows of width %lld, expected an even number of rows (uncond "
                                "and cond halves) of width %lld",
                           name, (long long)r->bad_rows, (long long)r->bad_cols, (long long)r->dim);
        if (!r->calls)
            return sd_fail(err, "module '%s' was never called", name);
    }
    return 0;
}

double sd_gate_init_guidance(sd_segmoe_type type) {
    return type == SD_SEGMOE_TYPE_SDXL ? SD_GATE_INIT_GUIDANCE_SDXL : SD_GATE_INIT_GUIDANCE;
}

/* The fixed recipe on the loaded expert pipeline. */
static int run_txt2img(sd_pipeline *p, const sd_segmoe_config *cfg, const sd_segmoe_expert *x, expert_run *run,
                       sd_error *err) {
    sd_txt2img_params q = {0};
    uint64_t seed = run->opt->seed + (uint64_t)run->expert;
    q.prompt = x->positive_prompt;
    q.negative_prompt = x->negative_prompt;
    sd_pipeline_default_size(p, &q.width, &q.height);
    q.steps = SD_GATE_INIT_STEPS;
    q.cfg_scale = sd_gate_init_guidance(cfg->type);
    q.sampler = SD_SAMPLER_DDPM; /* DDPMScheduler.from_config(expert's scheduler config) */
    q.karras = SD_KARRAS_FROM_CONFIG;
    q.clip_skip = 1; /* SD 1.x: the last layer; SDXL: the penultimate (sdxl_conditioning.h) */
    q.syntax = SD_PROMPT_SYNTAX_PLAIN;
    q.n_images = 1;
    q.seeds = &seed;
    sd_txt2img_hooks h = {.on_progress = on_run_progress, .ctx = run};
    sd_txt2img_result res;
    int rc = sd_pipeline_txt2img(p, &q, &h, &res, err);
    if (!rc) sd_txt2img_result_free(&res);
    return rc;
}

static int run_expert(sd_gate_set *set, const sd_segmoe_config *cfg, const sd_gate_init_options *opt, int e,
                      sd_error *err) {
    const sd_segmoe_expert *x = &cfg->experts[e];
    expert_run run = {.opt = opt, .expert = e, .n_experts = cfg->n_experts};
    sd_pipeline_options po = {0};
    if (opt->pipeline) po = *opt->pipeline;
    po.on_progress = on_load_progress;
    po.progress_ctx = &run;
    po.weight_cache_read_only = 1; /* a one-off run per expert: maps what earlier runs cached, adds nothing */
    sd_pipeline *p = NULL;
    sd_moe_plan plan = {0};
    int rc = sd_pipeline_load(&p, x->path, &po, err);
    if (!rc) {
        char role[32];
        snprintf(role, sizeof role, "experts[%d]", e);
        rc = sd_merge_check_type(cfg, sd_pipeline_model(p), role, err);
    }
    if (!rc) rc = sd_moe_plan_build(&plan, &sd_pipeline_model(p)->unet, cfg->type, SD_SEGMOE_LAYERS_ALL, err);
    if (!rc) rc = e == 0 ? set_init(set, &plan, cfg->n_experts, err) : plan_matches(set, &plan, err);
    if (!rc) {
        int64_t max_dim = 1;
        for (int m = 0; m < set->plan.n_modules; m++)
            if (set->plan.modules[m].in_dim > max_dim) max_dim = set->plan.modules[m].in_dim;
        run.acc = malloc((size_t)max_dim * sizeof(double));
        run.rec = calloc((size_t)set->plan.n_modules, sizeof *run.rec);
        if (!run.acc || !run.rec) rc = sd_fail(err, "out of memory");
    }
    if (!rc) rc = attach(sd_pipeline_unet(p), set, &run, err);
    if (!rc) rc = run_txt2img(p, cfg, x, &run, err);
    if (!rc) rc = check_recorders(set, &run, err);
    sd_moe_plan_free(&plan);
    free(run.acc);
    free(run.rec);
    sd_pipeline_free(p);
    if (rc)
        sd_error_prefix(err, "%s: experts[%d] (%s): gate run", cfg->yaml_path ? cfg->yaml_path : "merge", e, x->path);
    return rc;
}

/* segmoe/main.py lines 1335-1337: g = h / max(||h||_2, 1e-8). */
static void normalise(sd_gate_set *set) {
    for (int m = 0; m < set->plan.n_modules; m++) {
        const int64_t D = set->plan.modules[m].in_dim;
        for (int e = 0; e < set->n_experts; e++) {
            const float *h = set->hidden_mean[m] + (size_t)e * (size_t)D;
            float *g = set->gates[m] + (size_t)e * (size_t)D;
            double ss = 0.0;
            for (int64_t c = 0; c < D; c++) ss += (double)h[c] * h[c];
            float norm = (float)sqrt(ss);
            if (norm < 1e-8f) norm = 1e-8f;
            for (int64_t c = 0; c < D; c++) g[c] = h[c] / norm;
        }
    }
}

int sd_gate_set_compute(sd_gate_set *set, const sd_segmoe_config *cfg, const sd_gate_init_options *opt,
                        sd_error *err) {
    memset(set, 0, sizeof *set);
    sd_gate_init_options none = {0};
    if (!opt) opt = &none;
    if (cfg->n_experts < 1) return sd_fail(err, "%s: experts: no experts to run", cfg->yaml_path);
    for (int e = 0; e < cfg->n_experts; e++)
        if (run_expert(set, cfg, opt, e, err)) {
            sd_gate_set_free(set);
            return -1;
        }
    normalise(set);
    return 0;
}

/* ------------------------------------------------------------ merge adapter */

void sd_gate_init_begin(sd_gate_init *gi, const sd_segmoe_config *cfg, const sd_gate_init_options *opt) {
    memset(gi, 0, sizeof *gi);
    gi->cfg = cfg;
    if (opt) gi->opt = *opt;
}

int sd_gate_init_merge_fn(void *ctx, const sd_moe_module *mod, int index, int n_experts, float *gate,
                          sd_error *err) {
    sd_gate_init *gi = ctx;
    if (!gi->computed) {
        if (sd_gate_set_compute(&gi->set, gi->cfg, &gi->opt, err)) return -1;
        gi->computed = 1;
    }
    const sd_gate_set *s = &gi->set;
    int m = index >= 0 && index < s->plan.n_modules && !strcmp(s->plan.modules[index].name, mod->name)
                ? index
                : sd_gate_set_find(s, mod->name);
    if (m < 0) return sd_fail(err, "%s: no gate was recorded for module '%s'", gi->cfg->yaml_path, mod->name);
    if (n_experts != s->n_experts || mod->in_dim != s->plan.modules[m].in_dim)
        return sd_fail(err, "%s: gate of '%s': %d experts x %lld requested, %d x %lld recorded", gi->cfg->yaml_path,
                       mod->name, n_experts, (long long)mod->in_dim, s->n_experts,
                       (long long)s->plan.modules[m].in_dim);
    memcpy(gate, s->gates[m], (size_t)n_experts * (size_t)mod->in_dim * sizeof(float));
    return 0;
}

void sd_gate_init_end(sd_gate_init *gi) {
    if (!gi) return;
    sd_gate_set_free(&gi->set);
    memset(gi, 0, sizeof *gi);
}
