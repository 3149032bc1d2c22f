/* The merged (SegMoE) UNet against moe/refs/unet.safetensors: loaded from
 * the SegMoE-made folder through core/model + sd_unet_config_parse +
 * sd_unet_load (lazy binder); batch-2 calls at t = 999, 500, 957.375 with
 * every module's expert selection (cases.json -> unet.routing), the
 * cond-only call (routing over the batch, not per image), the top-1 call
 * of moe/refs/moe_layer.safetensors, and unet/moe_stats (--moe-stats). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/json.h"
#include "core/model.h"
#include "tests/support/test_support.h"
#include "unet/moe_layer.h"
#include "unet/moe_stats.h"
#include "unet/unet.h"

#define SEGMOE_DIR "moe/tiny-segmoe-2x2"
#define UNET_REF "moe/refs/unet.safetensors"
#define CASES "moe/refs/cases.json"
/* moe/README.md "Suggested tolerances": merged UNet outputs */
#define UNET_ABS 1e-4
#define UNET_REL 1e-4

typedef struct moe_unet {
    sd_model m;
    sd_unet_config cfg;
    sd_unet *u;
} moe_unet;

static void open_moe_unet(moe_unet *mu) {
    char *dir = tst_fixture_path(SEGMOE_DIR);
    sd_error err = {0};
    cr_assert_eq(sd_model_open(&mu->m, dir, NULL, &err), 0, "%s", err.msg);
    free(dir);
    cr_assert(mu->m.is_segmoe, "segmoe_config not detected");
    sd_component *c = &mu->m.unet;
    cr_assert_eq(sd_unet_config_parse(&mu->cfg, c->config, c->config_path, &err), 0, "%s", err.msg);
    cr_assert(mu->cfg.moe_enabled);
    cr_expect_eq(mu->cfg.moe_num_experts, 2);
    cr_expect_eq(mu->cfg.moe_top_k, 2);
    c->binder.lazy = 1;
    cr_assert_eq(sd_unet_load(&mu->u, &mu->cfg, &c->binder, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&c->binder, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_moe_count(mu->u), 105, "15 transformer blocks x 7 MoE modules");
}

static void close_moe_unet(moe_unet *mu) {
    sd_unet_free(mu->u);
    sd_model_close(&mu->m);
}

static float ref_timestep(const st_file *f, const char *name) {
    const st_tensor *t = tst_ref_tensor(f, name);
    if (t->dtype == ST_F32) {
        float *v = tst_ref_f32(f, name, NULL), r = v[0];
        free(v);
        return r;
    }
    int64_t *v = tst_ref_i64(f, name, NULL);
    float r = (float)v[0];
    free(v);
    return r;
}

static cJSON *load_cases(void) {
    char *p = tst_fixture_path(CASES);
    cJSON *j;
    sd_error err = {0};
    cr_assert_eq(sd_json_load(p, &j, &err), 0, "%s", err.msg);
    free(p);
    return j;
}

/* Every MoE layer of the UNet, forward order. */
static int all_layers(sd_unet *u, sd_moe_layer **out, int cap) {
    int n = 0;
    for (int i = 0; i < sd_unet_tblock_count(u); i++) {
        sd_unet_tblock *b = sd_unet_tblock_at(u, i);
        sd_moe_layer *ms[7] = {b->attn1.to_q.moe, b->attn1.to_k.moe, b->attn1.to_v.moe, b->attn2.to_q.moe,
                               b->attn2.to_k.moe, b->attn2.to_v.moe, b->ff.moe};
        for (int k = 0; k < 7; k++)
            if (ms[k] && n < cap) out[n++] = ms[k];
    }
    return n;
}

/* The layer's last selection equals routing[name] (a JSON array). */
static void check_selection(sd_moe_layer *m, const cJSON *want, const char *what) {
    cr_assert(cJSON_IsArray(want), "%s: %s: no reference routing", what, sd_moe_name(m));
    int sel[8];
    int k = sd_moe_last_choice(m, sel, NULL);
    cr_assert_eq(k, cJSON_GetArraySize(want), "%s: %s: k", what, sd_moe_name(m));
    for (int i = 0; i < k; i++)
        cr_expect_eq(sel[i], cJSON_GetArrayItem(want, i)->valueint, "%s: %s: selection %d is expert %d, SegMoE's %d",
                     what, sd_moe_name(m), i, sel[i], cJSON_GetArrayItem(want, i)->valueint);
}

/* Runs the UNet on rows [row0, row0 + n) of the batch inputs. */
static float *run_unet(moe_unet *mu, const st_file *f, int64_t row0, int64_t n, float t) {
    const st_tensor *st = tst_ref_tensor(f, "batch.sample");
    const st_tensor *ct = tst_ref_tensor(f, "batch.encoder_hidden_states");
    int64_t c = st->shape[1], h = st->shape[2], w = st->shape[3], n_ctx = ct->shape[1], d = ct->shape[2];
    float *sample = tst_ref_f32(f, "batch.sample", NULL);
    float *ctx = tst_ref_f32(f, "batch.encoder_hidden_states", NULL);
    float *out = calloc((size_t)(n * c * h * w), sizeof(float));
    sd_error err = {0};
    cr_assert_eq(sd_unet_forward_ex(mu->u, sample + row0 * c * h * w, n, h, w, t, ctx + row0 * n_ctx * d, n_ctx,
                                    out, &err),
                 0, "%s", err.msg);
    free(sample), free(ctx);
    return out;
}

Test(moe_unet, batch2_timesteps_and_routing) {
    if (!tst_require_fixture(SEGMOE_DIR "/unet/config.json") || !tst_require_fixture(UNET_REF)) return;
    moe_unet mu;
    open_moe_unet(&mu);
    st_file f;
    tst_open_ref(&f, UNET_REF);
    cJSON *cases = load_cases();
    const cJSON *routing = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(cases, "unet"), "routing");
    sd_moe_layer *layers[128];
    int n_layers = all_layers(mu.u, layers, 128);
    cr_assert_eq(n_layers, 105);
    static const char *const names[] = {"t999", "t500", "t957.375"};
    for (int i = 0; i < 3; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s.timestep", names[i]);
        float t = ref_timestep(&f, name);
        float *out = run_unet(&mu, &f, 0, 2, t);
        size_t n;
        snprintf(name, sizeof name, "%s.out", names[i]);
        float *ref = tst_ref_f32(&f, name, &n);
        tst_check_close(name, out, ref, n, UNET_ABS, UNET_REL);
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(routing, names[i]);
        cr_assert_eq(cJSON_GetArraySize(r), 105);
        for (int l = 0; l < n_layers; l++)
            check_selection(layers[l], cJSON_GetObjectItemCaseSensitive(r, sd_moe_name(layers[l])), names[i]);
        free(out), free(ref);
    }
    cJSON_Delete(cases);
    st_close(&f);
    close_moe_unet(&mu);
}

/* The cond row alone routes on its own column sums: SegMoE's cond_only case
 * (8 modules order their experts differently from the batch-2 call). */
Test(moe_unet, cond_only_call) {
    if (!tst_require_fixture(SEGMOE_DIR "/unet/config.json") || !tst_require_fixture(UNET_REF)) return;
    moe_unet mu;
    open_moe_unet(&mu);
    st_file f;
    tst_open_ref(&f, UNET_REF);
    float *out = run_unet(&mu, &f, 1, 1, ref_timestep(&f, "t500.timestep"));
    size_t n;
    float *ref = tst_ref_f32(&f, "cond_only.t500.out", &n);
    tst_check_close("cond_only.t500.out", out, ref, n, UNET_ABS, UNET_REL);
    cJSON *cases = load_cases();
    const cJSON *co = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(cases, "unet"), "cond_only");
    const cJSON *changed = cJSON_GetObjectItemCaseSensitive(co, "routing");
    const cJSON *batch = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(cases, "unet"), "routing"), "t500");
    sd_moe_layer *layers[128];
    int n_layers = all_layers(mu.u, layers, 128), n_other = 0;
    for (int l = 0; l < n_layers; l++) {
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(changed, sd_moe_name(layers[l]));
        if (want) n_other++;
        check_selection(layers[l], want ? want : cJSON_GetObjectItemCaseSensitive(batch, sd_moe_name(layers[l])),
                        "cond_only");
    }
    cr_expect_eq(n_other, 8);
    cJSON_Delete(cases);
    free(out), free(ref);
    st_close(&f);
    close_moe_unet(&mu);
}

/* Every layer at top-1: the whole-UNet output of moe_layer.safetensors' k1 call. */
Test(moe_unet, top1_everywhere) {
    if (!tst_require_fixture("moe/refs/moe_layer.safetensors")) return;
    moe_unet mu;
    open_moe_unet(&mu);
    sd_moe_layer *layers[128];
    int n_layers = all_layers(mu.u, layers, 128);
    sd_error err = {0};
    for (int l = 0; l < n_layers; l++) cr_assert_eq(sd_moe_set_top_k(layers[l], 1, &err), 0, "%s", err.msg);
    st_file f;
    tst_open_ref(&f, "moe/refs/moe_layer.safetensors");
    float *out = run_unet(&mu, &f, 0, 2, 500.0f);
    size_t n;
    float *ref = tst_ref_f32(&f, "k1.t500.out", &n);
    tst_check_close("k1.t500.out", out, ref, n, UNET_ABS, UNET_REL);
    free(out), free(ref);
    st_close(&f);
    close_moe_unet(&mu);
}

/* --moe-stats: one record per UNet call, JSON with every layer's choice. */
Test(moe_unet, moe_stats_json) {
    if (!tst_require_fixture(SEGMOE_DIR "/unet/config.json") || !tst_require_fixture(UNET_REF)) return;
    moe_unet mu;
    open_moe_unet(&mu);
    sd_error err = {0};
    sd_moe_stats *st;
    cr_assert_eq(sd_moe_stats_create(&st, mu.u, &err), 0, "%s", err.msg);
    cr_expect_eq(sd_moe_stats_layer_count(st), 105);
    st_file f;
    tst_open_ref(&f, UNET_REF);
    cJSON *cases = load_cases();
    const cJSON *routing = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(cases, "unet"), "routing");
    static const char *const names[] = {"t999", "t500"};
    static const float ts[] = {999.0f, 500.0f};
    cr_assert_eq(sd_moe_stats_begin_run(st, "seed \"1\"", &err), 0);
    for (int i = 0; i < 2; i++) {
        free(run_unet(&mu, &f, 0, 2, ts[i]));
        sd_moe_stats_on_unet_call(st, i, ts[i]);
    }
    /* a second run: call 0 again starts it */
    free(run_unet(&mu, &f, 1, 1, 500.0f));
    cr_assert_eq(sd_moe_stats_record(st, 0, 500.0f, &err), 0, "%s", err.msg);
    cr_expect_eq(sd_moe_stats_call_count(st), 3);

    char *tmp = tst_tmpdir();
    char *path = sd_path_join(tmp, "stats.json");
    cr_assert_eq(sd_moe_stats_write(st, path, &err), 0, "%s", err.msg);
    cJSON *j;
    cr_assert_eq(sd_json_load(path, &j, &err), 0, "stats file is not valid JSON: %s", err.msg);
    cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(j, "format")->valuestring, "sdmoe-moe-stats");
    cr_expect_eq(cJSON_GetObjectItemCaseSensitive(j, "num_experts")->valueint, 2);
    cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(j, "routing")->valuestring, "segmoe");
    const cJSON *runs = cJSON_GetObjectItemCaseSensitive(j, "runs");
    cr_assert_eq(cJSON_GetArraySize(runs), 2);
    cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(runs, 0), "label")->valuestring, "seed \"1\"");
    cr_expect_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(runs, 0), "n_calls")->valueint, 2);
    cr_expect_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(runs, 1), "first_call")->valueint, 2);
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(j, "calls");
    cr_assert_eq(cJSON_GetArraySize(calls), 3);
    cr_expect_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(calls, 1), "timestep")->valuedouble, 500.0);
    cr_expect_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(calls, 2), "run")->valueint, 1);
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(j, "layers");
    cr_assert_eq(cJSON_GetArraySize(layers), 105);
    for (int l = 0; l < 105; l++) {
        const cJSON *L = cJSON_GetArrayItem(layers, l);
        const char *name = cJSON_GetObjectItemCaseSensitive(L, "name")->valuestring;
        const cJSON *ex = cJSON_GetObjectItemCaseSensitive(L, "experts");
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(L, "mean_weights");
        cr_assert_eq(cJSON_GetArraySize(ex), 3);
        for (int c = 0; c < 2; c++) {
            const cJSON *want = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(routing, names[c]), name);
            cr_assert(cJSON_Compare(cJSON_GetArrayItem(ex, c), want, 1), "%s call %d: experts differ from SegMoE's",
                      name, c);
            /* top-2 of 2: the mean weights of the two chosen experts sum to 1 */
            const cJSON *wc = cJSON_GetArrayItem(w, c);
            cr_assert_eq(cJSON_GetArraySize(wc), 2);
            double s = cJSON_GetArrayItem(wc, 0)->valuedouble + cJSON_GetArrayItem(wc, 1)->valuedouble;
            cr_expect(fabs(s - 1.0) < 1e-5, "%s: weights sum to %g", name, s);
        }
        const cJSON *times = cJSON_GetObjectItemCaseSensitive(L, "times_selected");
        cr_expect_eq(cJSON_GetArrayItem(times, 0)->valueint, 3);
        cr_expect_eq(cJSON_GetArrayItem(times, 1)->valueint, 3);
    }
    cJSON_Delete(j);
    unlink(path);
    rmdir(tmp);
    free(path), free(tmp);
    cJSON_Delete(cases);
    st_close(&f);
    sd_moe_stats_free(st);
    close_moe_unet(&mu);
}

/* A dense UNet has nothing to report. */
Test(moe_unet, moe_stats_refuses_dense_unet) {
    if (!tst_require_fixture("tiny-sd15/unet/config.json")) return;
    char *dir = tst_fixture_path("tiny-sd15");
    sd_model m;
    sd_unet_config cfg;
    sd_unet *u;
    sd_error err = {0};
    cr_assert_eq(sd_model_open(&m, dir, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_config_parse(&cfg, m.unet.config, m.unet.config_path, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_load(&u, &cfg, &m.unet.binder, &err), 0, "%s", err.msg);
    sd_moe_stats *st = NULL;
    cr_expect_neq(sd_moe_stats_create(&st, u, &err), 0);
    cr_expect_null(st);
    cr_expect(strstr(err.msg, "no MoE layers") != NULL, "%s", err.msg);
    sd_unet_free(u);
    sd_model_close(&m);
    free(dir);
}
