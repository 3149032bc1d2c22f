/* sampler: schedulers against diffusers v0.27.2 references.
 *
 *  - refs/schedulers.safetensors: betas, alphas_cumprod; for ddim, pndm,
 *    euler, euler_a, dpmpp_2m(_karras), lms, heun, lcm the n10/n25
 *    timesteps, sigmas and init_noise_sigma, and a 10-step trajectory with
 *    the fake model eps = 0.1*x_in + 0.05*sin(t/100) (model inputs,
 *    outputs, samples, the noises the step drew from manual_seed(8));
 *  - moe/refs/ddpm.safetensors: the same for DDPM;
 *  - every pipeline run of refs/, moe/refs/ and sdxl/refs/ replayed through
 *    the scheduler with the recorded guided UNet outputs (DDPM, leading
 *    Euler / Euler a from saved configs, Karras DPM++, Heun, PNDM, DDIM);
 *  - the sampler table, lookups and config errors.
 * Scheduler cases come from each cases.json; nothing is sized here. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/rng.h"
#include "sampler/sampler.h"
#include "sampler/scheduler.h"
#include "tests/support/test_support.h"

#define SCHED_REF "refs/schedulers.safetensors"
#define SD15_CONFIG "tiny-sd15/scheduler/scheduler_config.json"
#define TRAJ_TOL 1e-5

/* ---- helpers ---- */

/* cases.json files are written by Python's json, which spells non-finite
 * floats as bare -Infinity / Infinity / NaN: turn those tokens into null. */
static cJSON *load_cases(const char *rel) {
    char *path = tst_fixture_path(rel), *text;
    size_t len;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(path, 64u << 20, &text, &len, &err), 0, "%s", err.msg);
    static const char *const tokens[] = {"-Infinity", "Infinity", "NaN"};
    for (int k = 0; k < 3; k++) {
        size_t tl = strlen(tokens[k]);
        for (char *p = strstr(text, tokens[k]); p; p = strstr(p + tl, tokens[k])) {
            memset(p, ' ', tl);
            memcpy(p, "null", 4);
        }
    }
    cJSON *root = cJSON_Parse(text);
    cr_assert_not_null(root, "%s: not parseable", path);
    free(text);
    free(path);
    return root;
}

static cJSON *load_config(const char *rel) {
    char *path = tst_fixture_path(rel);
    cJSON *cfg;
    sd_error err = {0};
    cr_assert_eq(sd_json_load(path, &cfg, &err), 0, "%s", err.msg);
    free(path);
    return cfg;
}

static const cJSON *item(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    cr_assert_not_null(v, "cases.json: key '%s' missing", key);
    return v;
}

/* Builds a scheduler from a fixture scheduler name ("dpmpp_2m_karras", ...). */
static sd_scheduler *make_scheduler(const cJSON *cfg, const char *file, const char *name, int steps, size_t numel) {
    sd_sampler_id id;
    int karras;
    sd_error err = {0};
    cr_assert_eq(sd_sampler_lookup(name, &id, &karras, &err), 0, "%s", err.msg);
    sd_scheduler *s = NULL;
    cr_assert_eq(sd_scheduler_create(&s, cfg, file, id, karras, steps, numel, &err), 0, "%s: %s", name, err.msg);
    return s;
}

static size_t ref_numel(const st_file *f, const char *name) { return (size_t)tst_ref_tensor(f, name)->numel; }

/* |got - ref| <= tol * max(1, |ref|) for a scalar. */
static void check_scalar(const char *what, double got, double ref, double tol) {
    cr_expect(fabs(got - ref) <= tol * fmax(1.0, fabs(ref)), "%s: got %.9g, expected %.9g", what, got, ref);
}

/* The fixture's fake UNet: eps = 0.1 * x_in + 0.05 * sin(float32(t) / 100). */
static void fake_model(const float *x_in, float t, float *eps, size_t n) {
    float bias = 0.05f * sinf(t / 100.0f);
    for (size_t i = 0; i < n; i++) eps[i] = 0.1f * x_in[i] + bias;
}

/* ---- train tables ---- */

static void check_train_tables(const char *ref_file, const cJSON *cfg) {
    st_file f;
    tst_open_ref(&f, ref_file);
    sd_scheduler *s = make_scheduler(cfg, SD15_CONFIG, "pndm", 10, 16);
    const char *names[2] = {"betas", "alphas_cumprod"};
    int n;
    const float *got[2] = {sd_scheduler_betas(s, &n), sd_scheduler_alphas_cumprod(s, &n)};
    for (int k = 0; k < 2; k++) {
        size_t numel;
        float *ref = tst_ref_f32(&f, names[k], &numel);
        cr_assert_eq((size_t)n, numel, "%s: %d values, expected %zu", names[k], n, numel);
        tst_check_close(names[k], got[k], ref, numel, 1e-7, 1e-6);
        size_t differ = 0;
        for (size_t i = 0; i < numel; i++) differ += got[k][i] != ref[i];
        cr_expect_eq(differ, 0, "%s: %zu of %zu values not bit-exact", names[k], differ, numel);
        free(ref);
    }
    sd_scheduler_free(s);
    st_close(&f);
}

Test(schedulers, train_tables) {
    if (!tst_require_fixture(SCHED_REF)) return;
    cJSON *cfg = load_config(SD15_CONFIG);
    check_train_tables(SCHED_REF, cfg);
    check_train_tables("moe/refs/ddpm.safetensors", cfg);
    cJSON_Delete(cfg);
}

/* ---- n10 / n25 tables ---- */

static void check_tables(const st_file *f, const cJSON *cfg, const cJSON *sc) {
    const char *name = item(sc, "name")->valuestring;
    const cJSON *table;
    cJSON_ArrayForEach(table, item(sc, "tables")) {
        int steps = item(table, "num_inference_steps")->valueint;
        sd_scheduler *s = make_scheduler(cfg, SD15_CONFIG, name, steps, 16);
        char what[128];
        snprintf(what, sizeof what, "%s n%d init_noise_sigma", name, steps);
        check_scalar(what, sd_scheduler_init_noise_sigma(s), item(table, "init_noise_sigma")->valuedouble, 1e-6);

        const char *tname = item(table, "timesteps")->valuestring;
        size_t nt;
        float *ref_t = tst_ref_f32(f, tname, &nt);
        int n;
        const float *ts = sd_scheduler_timesteps(s, &n);
        cr_assert_eq((size_t)n, nt, "%s: %d timesteps, expected %zu", tname, n, nt);
        tst_check_close(tname, ts, ref_t, nt, 1e-3, 0.0);
        free(ref_t);

        const cJSON *sname = cJSON_GetObjectItemCaseSensitive(table, "sigmas");
        if (cJSON_IsString(sname)) {
            size_t ns;
            float *ref_s = tst_ref_f32(f, sname->valuestring, &ns);
            const float *sig = sd_scheduler_sigmas(s, &n);
            cr_assert_not_null(sig, "%s: no sigmas", name);
            cr_assert_eq((size_t)n, ns, "%s: %d sigmas, expected %zu", sname->valuestring, n, ns);
            tst_check_close(sname->valuestring, sig, ref_s, ns, 1e-5, 0.0);
            free(ref_s);
        }
        sd_scheduler_free(s);
    }
}

Test(schedulers, timesteps_sigmas_init_noise_sigma) {
    if (!tst_require_fixture(SCHED_REF)) return;
    cJSON *cases = load_cases("refs/cases.json");
    cJSON *cfg = load_config(SD15_CONFIG);
    st_file f;
    tst_open_ref(&f, SCHED_REF);
    const cJSON *sc;
    int count = 0;
    cJSON_ArrayForEach(sc, item(item(cases, "schedulers"), "schedulers")) {
        check_tables(&f, cfg, sc);
        count++;
    }
    cr_expect_geq(count, 9, "expected the 9 schedulers of the fixture, found %d", count);
    st_close(&f);

    cJSON *moe = load_cases("moe/refs/cases.json");
    tst_open_ref(&f, "moe/refs/ddpm.safetensors");
    cJSON_ArrayForEach(sc, item(item(moe, "ddpm"), "schedulers")) check_tables(&f, cfg, sc);
    st_close(&f);
    cJSON_Delete(moe);
    cJSON_Delete(cfg);
    cJSON_Delete(cases);
}

/* ---- fake-model trajectories ---- */

static int index_listed(const cJSON *list, int c) {
    const cJSON *v;
    cJSON_ArrayForEach(v, list) if (v->valueint == c) return 1;
    return 0;
}

static void run_trajectory(const st_file *f, const cJSON *cfg, const cJSON *sc) {
    const char *name = item(sc, "name")->valuestring;
    const cJSON *tr = item(sc, "trajectory");
    int steps = item(tr, "num_inference_steps")->valueint;
    size_t n = ref_numel(f, item(tr, "init_noise")->valuestring);
    sd_scheduler *s = make_scheduler(cfg, SD15_CONFIG, name, steps, n);
    int calls = sd_scheduler_num_calls(s);
    float *x = malloc(n * sizeof *x), *x_in = malloc(n * sizeof *x_in), *eps = malloc(n * sizeof *eps);
    float *ref_noise = tst_ref_f32(f, item(tr, "init_noise")->valuestring, NULL);
    float *ref_lat = tst_ref_f32(f, item(tr, "init_latents")->valuestring, NULL);
    size_t total;
    float *ref_in = tst_ref_f32(f, item(tr, "model_inputs")->valuestring, &total);
    float *ref_out = tst_ref_f32(f, item(tr, "model_outputs")->valuestring, NULL);
    float *ref_x = tst_ref_f32(f, item(tr, "samples_after_step")->valuestring, NULL);
    float *ref_ts = tst_ref_f32(f, item(tr, "timesteps")->valuestring, NULL);
    cr_assert_eq(total, (size_t)calls * n, "%s: %d model calls, reference has %zu", name, calls, total / n);
    const cJSON *noises = cJSON_GetObjectItemCaseSensitive(tr, "noises");
    const cJSON *noise_idx = cJSON_GetObjectItemCaseSensitive(tr, "noise_step_indices");
    float *ref_nz = cJSON_IsString(noises) ? tst_ref_f32(f, noises->valuestring, NULL) : NULL;

    sd_rng init, gen;
    sd_rng_seed(&init, (uint64_t)item(tr, "init_noise_seed")->valueint);
    sd_rng_randn(&init, x, n);
    char what[128];
    snprintf(what, sizeof what, "%s init_noise", name);
    tst_check_close(what, x, ref_noise, n, 1e-5, 0.0);
    float sigma0 = sd_scheduler_init_noise_sigma(s);
    for (size_t i = 0; i < n; i++) x[i] = x[i] * sigma0;
    snprintf(what, sizeof what, "%s init_latents", name);
    tst_check_close(what, x, ref_lat, n, TRAJ_TOL, TRAJ_TOL);
    const cJSON *gseed = cJSON_GetObjectItemCaseSensitive(tr, "step_generator_seed");
    sd_rng_seed(&gen, cJSON_IsNumber(gseed) ? (uint64_t)gseed->valueint : 8);

    int drawn = 0;
    for (int c = 0; c < calls; c++) {
        float t = sd_scheduler_timestep(s, c);
        snprintf(what, sizeof what, "%s call %d timestep", name, c);
        check_scalar(what, t, ref_ts[c], 1e-6);
        sd_scheduler_scale_model_input(s, c, x, x_in, n);
        snprintf(what, sizeof what, "%s call %d model_input", name, c);
        tst_check_close(what, x_in, ref_in + (size_t)c * n, n, TRAJ_TOL, TRAJ_TOL);
        fake_model(x_in, t, eps, n);
        snprintf(what, sizeof what, "%s call %d model_output", name, c);
        tst_check_close(what, eps, ref_out + (size_t)c * n, n, TRAJ_TOL, TRAJ_TOL);
        sd_error err = {0};
        cr_assert_eq(sd_scheduler_step(s, c, eps, x, &gen, &err), 0, "%s", err.msg);
        if (ref_nz && index_listed(noise_idx, c)) {
            snprintf(what, sizeof what, "%s call %d noise", name, c);
            cr_assert_not_null(sd_scheduler_noise(s), "%s: drew no noise", name);
            tst_check_close(what, sd_scheduler_noise(s), ref_nz + (size_t)drawn * n, n, 1e-5, 0.0);
            drawn++;
        }
        snprintf(what, sizeof what, "%s call %d sample", name, c);
        tst_check_close(what, x, ref_x + (size_t)c * n, n, TRAJ_TOL, TRAJ_TOL);
    }
    free(ref_nz);
    free(ref_ts);
    free(ref_x);
    free(ref_out);
    free(ref_in);
    free(ref_lat);
    free(ref_noise);
    free(eps);
    free(x_in);
    free(x);
    sd_scheduler_free(s);
}

Test(schedulers, fake_model_trajectories) {
    if (!tst_require_fixture(SCHED_REF)) return;
    cJSON *cases = load_cases("refs/cases.json");
    cJSON *cfg = load_config(SD15_CONFIG);
    st_file f;
    tst_open_ref(&f, SCHED_REF);
    const cJSON *sc;
    cJSON_ArrayForEach(sc, item(item(cases, "schedulers"), "schedulers")) run_trajectory(&f, cfg, sc);
    st_close(&f);
    cJSON_Delete(cases);
    cJSON_Delete(cfg);
}

Test(schedulers, ddpm_trajectory) {
    if (!tst_require_fixture("moe/refs/ddpm.safetensors")) return;
    cJSON *cases = load_cases("moe/refs/cases.json");
    cJSON *cfg = load_config(SD15_CONFIG);
    st_file f;
    tst_open_ref(&f, "moe/refs/ddpm.safetensors");
    const cJSON *sc;
    cJSON_ArrayForEach(sc, item(item(cases, "ddpm"), "schedulers")) run_trajectory(&f, cfg, sc);
    st_close(&f);
    cJSON_Delete(cases);
    cJSON_Delete(cfg);
}

/* ---- pipeline replays ---- */

/* Replays one recorded pipeline run: the initial draw from the run's seed,
 * then per UNet call the scaled input and the step on the recorded guided
 * eps; the generator stream continues from the initial draw. */
static void replay_run(const char *dir, const cJSON *run, const cJSON *cfg, const char *cfg_file) {
    const char *name = item(run, "name")->valuestring;
    char rel[256];
    snprintf(rel, sizeof rel, "%s/%s", dir, item(run, "file")->valuestring);
    st_file f;
    tst_open_ref(&f, rel);
    size_t n = ref_numel(&f, "noise");
    sd_scheduler *s = make_scheduler(cfg, cfg_file, item(run, "scheduler")->valuestring,
                                     item(run, "num_inference_steps")->valueint, n);
    char what[160];
    snprintf(what, sizeof what, "%s init_noise_sigma", name);
    check_scalar(what, sd_scheduler_init_noise_sigma(s), item(run, "init_noise_sigma")->valuedouble, 1e-6);
    size_t nt;
    float *ref_ts = tst_ref_f32(&f, "timesteps", &nt);
    int calls = sd_scheduler_num_calls(s);
    cr_assert_eq((size_t)calls, nt, "%s: %d calls, reference %zu", name, calls, nt);
    snprintf(what, sizeof what, "%s timesteps", name);
    tst_check_close(what, sd_scheduler_timesteps(s, NULL), ref_ts, nt, 1e-3, 0.0);

    float *x = malloc(n * sizeof *x), *x_in = malloc(n * sizeof *x_in);
    float *ref_noise = tst_ref_f32(&f, "noise", NULL), *ref_lat = tst_ref_f32(&f, "init_latents", NULL);
    float *ref_in = tst_ref_f32(&f, "step_model_inputs", NULL), *ref_eps = tst_ref_f32(&f, "step_noise_pred", NULL);
    float *ref_x = tst_ref_f32(&f, "step_latents", NULL);
    const st_tensor *nz = st_find(&f, "step_scheduler_noises");
    float *ref_nz = nz ? tst_ref_f32(&f, "step_scheduler_noises", NULL) : NULL;
    sd_rng gen;
    sd_rng_seed(&gen, (uint64_t)item(run, "seed")->valuedouble);
    sd_rng_randn(&gen, x, n);
    snprintf(what, sizeof what, "%s noise", name);
    tst_check_close(what, x, ref_noise, n, 1e-5, 0.0);
    float sigma0 = sd_scheduler_init_noise_sigma(s);
    for (size_t i = 0; i < n; i++) x[i] = x[i] * sigma0;
    snprintf(what, sizeof what, "%s init_latents", name);
    tst_check_close(what, x, ref_lat, n, TRAJ_TOL, TRAJ_TOL);
    int drawn = 0;
    for (int c = 0; c < calls; c++) {
        sd_scheduler_scale_model_input(s, c, x, x_in, n);
        snprintf(what, sizeof what, "%s call %d model_input", name, c);
        tst_check_close(what, x_in, ref_in + (size_t)c * n, n, TRAJ_TOL, TRAJ_TOL);
        sd_error err = {0};
        cr_assert_eq(sd_scheduler_step(s, c, ref_eps + (size_t)c * n, x, &gen, &err), 0, "%s", err.msg);
        if (ref_nz && sd_scheduler_noise(s) && (size_t)drawn < nz->numel / n) {
            snprintf(what, sizeof what, "%s call %d scheduler noise", name, c);
            tst_check_close(what, sd_scheduler_noise(s), ref_nz + (size_t)drawn * n, n, 1e-5, 0.0);
            drawn++;
        }
        snprintf(what, sizeof what, "%s call %d latents", name, c);
        tst_check_close(what, x, ref_x + (size_t)c * n, n, TRAJ_TOL, TRAJ_TOL);
    }
    if (ref_nz) cr_expect_eq((size_t)drawn * n, nz->numel, "%s: %d scheduler noises drawn", name, drawn);
    free(ref_nz);
    free(ref_x);
    free(ref_eps);
    free(ref_in);
    free(ref_lat);
    free(ref_noise);
    free(ref_ts);
    free(x_in);
    free(x);
    sd_scheduler_free(s);
    st_close(&f);
}

static void replay_all(const char *dir, const char *config_rel) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/cases.json", dir);
    if (!tst_require_fixture(rel)) return;
    cJSON *cases = load_cases(rel);
    cJSON *cfg = load_config(config_rel);
    char *cfg_path = tst_fixture_path(config_rel);
    const cJSON *run;
    cJSON_ArrayForEach(run, item(item(cases, "pipelines"), "cases")) replay_run(dir, run, cfg, cfg_path);
    free(cfg_path);
    cJSON_Delete(cfg);
    cJSON_Delete(cases);
}

Test(schedulers, replay_sd15_pipelines) { replay_all("refs", SD15_CONFIG); }
Test(schedulers, replay_segmoe_pipelines) {
    replay_all("moe/refs", "moe/tiny-segmoe-2x2/scheduler/scheduler_config.json");
}
Test(schedulers, replay_sdxl_pipelines) { replay_all("sdxl/refs", "sdxl/tiny-sdxl/scheduler/scheduler_config.json"); }

/* ---- the table and the config rules ---- */

Test(samplers, lookup_names_aliases_and_karras) {
    sd_sampler_id id;
    int karras;
    sd_error err = {0};
    static const struct { const char *name; sd_sampler_id id; int karras; } ok[] = {
        {"ddim", SD_SAMPLER_DDIM, SD_KARRAS_FROM_CONFIG},
        {"PLMS", SD_SAMPLER_PNDM, SD_KARRAS_FROM_CONFIG},
        {"euler_ancestral", SD_SAMPLER_EULER_A, SD_KARRAS_FROM_CONFIG},
        {"Euler a", SD_SAMPLER_EULER_A, SD_KARRAS_FROM_CONFIG},
        {"dpmpp_2m", SD_SAMPLER_DPMPP_2M, SD_KARRAS_FROM_CONFIG},
        {"dpmpp_2m_karras", SD_SAMPLER_DPMPP_2M, SD_KARRAS_ON},
        {"DPM++ 2M Karras", SD_SAMPLER_DPMPP_2M, SD_KARRAS_ON},
        {"lms", SD_SAMPLER_LMS, SD_KARRAS_FROM_CONFIG},
        {"heun", SD_SAMPLER_HEUN, SD_KARRAS_FROM_CONFIG},
        {"lcm", SD_SAMPLER_LCM, SD_KARRAS_FROM_CONFIG},
        {"ddpm", SD_SAMPLER_DDPM, SD_KARRAS_FROM_CONFIG},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        cr_assert_eq(sd_sampler_lookup(ok[i].name, &id, &karras, &err), 0, "%s: %s", ok[i].name, err.msg);
        cr_expect_eq(id, ok[i].id, "%s", ok[i].name);
        cr_expect_eq(karras, ok[i].karras, "%s", ok[i].name);
    }
    cr_expect_neq(sd_sampler_lookup("euler_a_karras", &id, &karras, &err), 0);
    cr_expect_neq(sd_sampler_lookup("dpm++3m", &id, &karras, &err), 0);
    cr_expect(strstr(err.msg, "dpm++3m") && strstr(err.msg, "euler_a") && strstr(err.msg, "lcm"), "%s", err.msg);

    int count;
    const sd_sampler_info *rows = sd_sampler_list(&count);
    cr_assert_eq(count, SD_SAMPLER_COUNT);
    for (int i = 0; i < count; i++) {
        cr_expect_eq(rows[i].id, (sd_sampler_id)i);
        cr_assert_eq(sd_sampler_lookup(rows[i].name, &id, &karras, &err), 0, "%s", err.msg);
        cr_expect_eq(id, rows[i].id);
        cr_assert_eq(sd_sampler_from_class(rows[i].class_name, &id, &err), 0, "%s", err.msg);
        cr_expect_eq(id, rows[i].id);
    }
    char buf[64];
    cr_expect_str_eq(sd_sampler_display(SD_SAMPLER_DPMPP_2M, 1, buf, sizeof buf), "DPM++ 2M Karras");
    cr_expect_str_eq(sd_sampler_display(SD_SAMPLER_EULER_A, SD_KARRAS_FROM_CONFIG, buf, sizeof buf), "Euler a");
    cr_expect_str_eq(sd_sampler_display(SD_SAMPLER_PNDM, 0, buf, sizeof buf), "PLMS");
    cr_expect_neq(sd_sampler_from_class("UniPCMultistepScheduler", &id, &err), 0);
    cr_expect(strstr(err.msg, "UniPCMultistepScheduler") != NULL, "%s", err.msg);
}

/* The built-in SD 1.5 config gives the fixture's PNDM schedule. */
Test(schedulers, default_config_is_sd15) {
    cJSON *def = sd_scheduler_default_config();
    cr_assert_not_null(def);
    sd_scheduler *s = make_scheduler(def, "(built-in)", "pndm", 8, 16);
    static const float want[] = {876, 751, 751, 626, 501, 376, 251, 126, 1};
    int n;
    const float *ts = sd_scheduler_timesteps(s, &n);
    cr_assert_eq(n, 9);
    for (int i = 0; i < n; i++) cr_expect_eq(ts[i], want[i], "call %d: %g", i, ts[i]);
    sd_scheduler_free(s);
    cJSON_Delete(def);
}

/* Keys listed in _use_default_values fall back to the loading class's own
 * defaults (diffusers' extract_init_dict). */
Test(schedulers, use_default_values_drops_keys) {
    cJSON *cfg = cJSON_Parse("{\"_class_name\": \"DDIMScheduler\", \"beta_schedule\": \"scaled_linear\","
                             " \"beta_start\": 0.00085, \"beta_end\": 0.012, \"steps_offset\": 1,"
                             " \"timestep_spacing\": \"leading\", \"_use_default_values\": [\"timestep_spacing\"]}");
    sd_scheduler *s = make_scheduler(cfg, "cfg.json", "euler", 10, 16);
    cr_expect_eq(sd_scheduler_timestep(s, 0), 999.0f); /* linspace, not leading (901) */
    cr_expect_eq(sd_scheduler_timestep(s, 9), 0.0f);
    sd_scheduler_free(s);
    cJSON_Delete(cfg);
}

Test(schedulers, config_and_call_errors) {
    sd_error err = {0};
    sd_scheduler *s = NULL;
    cJSON *cfg = cJSON_Parse("{\"timestep_spacing\": \"sideways\"}");
    cr_expect_neq(sd_scheduler_create(&s, cfg, "x/scheduler_config.json", SD_SAMPLER_DDIM, SD_KARRAS_FROM_CONFIG, 10,
                                      16, &err), 0);
    cr_expect(strstr(err.msg, "x/scheduler_config.json") && strstr(err.msg, "timestep_spacing") &&
              strstr(err.msg, "sideways"), "%s", err.msg);
    cJSON_Delete(cfg);

    cfg = cJSON_Parse("{\"thresholding\": true}");
    cr_expect_neq(sd_scheduler_create(&s, cfg, "t.json", SD_SAMPLER_DDIM, SD_KARRAS_FROM_CONFIG, 10, 16, &err), 0);
    cr_expect(strstr(err.msg, "thresholding") != NULL, "%s", err.msg);
    cr_expect_neq(sd_scheduler_create(&s, cfg, "t.json", SD_SAMPLER_EULER_A, SD_KARRAS_ON, 10, 16, &err), 0);
    cr_expect(strstr(err.msg, "Karras") != NULL, "%s", err.msg);
    cJSON_Delete(cfg);

    cfg = sd_scheduler_default_config();
    cr_expect_neq(sd_scheduler_create(&s, cfg, "d.json", SD_SAMPLER_LCM, SD_KARRAS_FROM_CONFIG, 60, 16, &err), 0);
    cr_assert_eq(sd_scheduler_create(&s, cfg, "d.json", SD_SAMPLER_EULER_A, SD_KARRAS_FROM_CONFIG, 4, 16, &err), 0,
                 "%s", err.msg);
    float x[16] = {0}, eps[16] = {0};
    cr_expect_neq(sd_scheduler_step(s, 1, eps, x, NULL, &err), 0); /* out of order */
    cr_expect_neq(sd_scheduler_step(s, 0, eps, x, NULL, &err), 0); /* Euler a needs a generator */
    cr_expect(strstr(err.msg, "generator") != NULL, "%s", err.msg);
    sd_scheduler_free(s);
    cJSON_Delete(cfg);
}
