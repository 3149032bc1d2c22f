/* unet: UNet2DConditionModel against diffusers v0.27.2 (refs/unet.safetensors):
 * every timestep case (batch 2, incl. the fractional 957.375), the f16-weights
 * case, and both block cases with every intermediate; through the diffusers
 * folder and through the single-file checkpoint; config defaults/refusals. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/kernels.h"
#include "core/ldm_keymap.h"
#include "tests/support/test_support.h"
#include "unet/unet.h"

#define UNET_ABS 1e-4
#define UNET_REL 1e-4

typedef struct loaded {
    sd_weights *w;
    sd_unet *u;
    sd_unet_config cfg;
} loaded;

static void load_config(sd_unet_config *cfg) {
    char *path = tst_fixture_path("tiny-sd15/unet/config.json");
    cJSON *json;
    sd_error err = {0};
    cr_assert_eq(sd_json_load(path, &json, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_config_parse(cfg, json, path, &err), 0, "%s", err.msg);
    cJSON_Delete(json);
    free(path);
}

/* rel: a diffusers weight file, or the single-file checkpoint (LDM names). */
static int load_unet(loaded *m, const char *rel) {
    if (!tst_require_fixture(rel) || !tst_require_fixture("refs/unet.safetensors")) return 0;
    load_config(&m->cfg);
    char *path = tst_fixture_path(rel);
    const char *paths[1] = {path};
    sd_error err = {0};
    cr_assert_eq(sd_weights_open(&m->w, paths, 1, &err), 0, "%s", err.msg);
    free(path);
    sd_binder b = {.w = m->w, .component = "unet", .prefix = ""};
    int single = strstr(rel, "tiny-sd15.safetensors") != NULL;
    if (single) {
        ldm_unet_layout lay = {.n_levels = m->cfg.n_levels};
        for (int i = 0; i < m->cfg.n_levels; i++) {
            lay.layers[i] = m->cfg.layers_per_block[i];
            lay.up_attn[i] = m->cfg.up_kind[i] == SD_UNET_BLOCK_CROSS_ATTN;
        }
        cr_assert_eq(ldm_unet_map_fn(&lay, &b.map, &err), 0, "%s", err.msg);
        b.prefix = "model.diffusion_model.";
    }
    cr_assert_eq(sd_unet_load(&m->u, &m->cfg, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&b, &err), 0, "%s", err.msg);
    return 1;
}

static void unload(loaded *m) {
    sd_unet_free(m->u);
    sd_weights_free(m->w);
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

/* Runs `case_name` (sample/context from `inputs`) and compares with <case>.out. */
static void check_case(loaded *m, const st_file *f, const char *inputs, const char *case_name) {
    char name[128];
    snprintf(name, sizeof name, "%s.sample", inputs);
    const st_tensor *st = tst_ref_tensor(f, name);
    int64_t n = st->shape[0], h = st->shape[2], w = st->shape[3];
    float *sample = tst_ref_f32(f, name, NULL);
    snprintf(name, sizeof name, "%s.encoder_hidden_states", inputs);
    const st_tensor *ct = tst_ref_tensor(f, name);
    float *ctx = tst_ref_f32(f, name, NULL);
    snprintf(name, sizeof name, "%s.timestep", case_name);
    float t = ref_timestep(f, name);
    snprintf(name, sizeof name, "%s.out", case_name);
    size_t numel;
    float *ref = tst_ref_f32(f, name, &numel);
    float *out = calloc(numel, sizeof(float));
    sd_error err = {0};
    cr_assert_eq(sd_unet_forward_ex(m->u, sample, n, h, w, t, ctx, ct->shape[1], out, &err), 0, "%s", err.msg);
    double e = tst_check_close(name, out, ref, numel, UNET_ABS, UNET_REL);
    cr_log_info("%s: max|err| %.3g", name, e);
    /* again from the cached context: the same bytes */
    float *out2 = calloc(numel, sizeof(float));
    cr_assert_eq(sd_unet_forward(m->u, sample, n, h, w, t, NULL, out2, &err), 0, "%s", err.msg);
    cr_assert(memcmp(out, out2, numel * sizeof(float)) == 0, "%s: cached-context run differs", name);
    free(sample), free(ctx), free(ref), free(out), free(out2);
}

Test(unet, timesteps_batch2) {
    loaded m;
    if (!load_unet(&m, "tiny-sd15/unet/diffusion_pytorch_model.safetensors")) return;
    st_file f;
    tst_open_ref(&f, "refs/unet.safetensors");
    static const char *cases[] = {"t999", "t500", "t1", "t957_375"};
    for (int i = 0; i < 4; i++) check_case(&m, &f, "batch", cases[i]);
    st_close(&f);
    unload(&m);
}

Test(unet, fp16_weights) {
    loaded m;
    if (!load_unet(&m, "tiny-sd15/unet/diffusion_pytorch_model.fp16.safetensors")) return;
    st_file f;
    tst_open_ref(&f, "refs/unet.safetensors");
    check_case(&m, &f, "batch", "fp16w");
    st_close(&f);
    unload(&m);
}

Test(unet, single_file_checkpoint) {
    loaded m;
    if (!load_unet(&m, "tiny-sd15.safetensors")) return;
    st_file f;
    tst_open_ref(&f, "refs/unet.safetensors");
    check_case(&m, &f, "batch", "t957_375");
    check_case(&m, &f, "blocks_8x12", "blocks_8x12");
    st_close(&f);
    unload(&m);
}

/* Intermediates: each captured tensor (NHWC) is converted to NCHW and compared. */
typedef struct cap_ctx {
    const st_file *f;
    const char *prefix;
    int seen;
} cap_ctx;

static void on_capture(void *vctx, const char *name, const float *x, int64_t n, int64_t h, int64_t w, int64_t c) {
    cap_ctx *cc = vctx;
    char full[160];
    snprintf(full, sizeof full, "%s.%s", cc->prefix, name);
    const st_tensor *t = st_find(cc->f, full);
    cr_assert_not_null(t, "capture %s has no reference tensor", full);
    size_t numel = (size_t)(n * h * w * c);
    cr_assert_eq(t->numel, numel, "%s: %zu values, reference has %llu", full, numel, (unsigned long long)t->numel);
    float *got = malloc(numel * sizeof(float));
    sd_nhwc_to_nchw(x, n, h, w, c, got);
    float *ref = tst_ref_f32(cc->f, full, NULL);
    double e = tst_check_close(full, got, ref, numel, UNET_ABS, UNET_REL);
    cr_log_info("%s: max|err| %.3g", full, e);
    free(got), free(ref);
    cc->seen++;
}

static void check_blocks(const char *case_name) {
    loaded m;
    if (!load_unet(&m, "tiny-sd15/unet/diffusion_pytorch_model.safetensors")) return;
    st_file f;
    tst_open_ref(&f, "refs/unet.safetensors");
    cap_ctx cc = {&f, case_name, 0};
    sd_unet_set_capture(m.u, on_capture, &cc);
    check_case(&m, &f, case_name, case_name);
    /* every "<case>.<intermediate>" tensor of the fixture was produced */
    int expected = 0;
    size_t plen = strlen(case_name);
    for (int i = 0; i < f.n_tensors; i++) {
        const char *nm = f.tensors[i].name;
        if (strncmp(nm, case_name, plen) || nm[plen] != '.') continue;
        const char *rest = nm + plen + 1;
        if (strcmp(rest, "sample") && strcmp(rest, "encoder_hidden_states") && strcmp(rest, "timestep") &&
            strcmp(rest, "out"))
            expected++;
    }
    cr_assert_eq(cc.seen, 2 * expected, "%s: %d intermediates checked, fixture has %d (x2 runs)", case_name, cc.seen,
                 expected);
    st_close(&f);
    unload(&m);
}

Test(unet, blocks_16x16) { check_blocks("blocks_16x16"); }

/* Every activation layout gives the fixture's result (the default one is
 * whatever oneDNN prefers on the machine). */
Test(unet, activation_layouts) {
    loaded m;
    if (!load_unet(&m, "tiny-sd15/unet/diffusion_pytorch_model.safetensors")) return;
    st_file f;
    tst_open_ref(&f, "refs/unet.safetensors");
    static const int lays[] = {SD_LAYOUT_NHWC, 8, 16};
    sd_error err = {0};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(sd_unet_set_layout(m.u, lays[i], &err), 0, "%s", err.msg);
        check_case(&m, &f, "blocks_8x12", "blocks_8x12");
    }
    cr_assert_neq(sd_unet_set_layout(m.u, 3, &err), 0);
    st_close(&f);
    unload(&m);
}

Test(unet, blocks_8x12) { check_blocks("blocks_8x12"); }

Test(unet, config_defaults_and_refusals) {
    sd_unet_config c;
    sd_error err = {0};
    cJSON *j = cJSON_Parse("{}");
    cr_assert_eq(sd_unet_config_parse(&c, j, "config.json", &err), 0, "%s", err.msg);
    cr_assert_eq(c.n_levels, 4);
    cr_assert_eq(c.block_out_channels[2], 1280);
    cr_assert_eq(c.heads[0], 8);
    cr_assert_eq(c.cross_attention_dim[3], 1280);
    cr_assert_eq(c.norm_num_groups, 32);
    cr_assert_eq(c.time_embed_dim, 1280);
    cr_assert_eq(c.down_kind[3], SD_UNET_BLOCK_PLAIN);
    cr_assert_eq(c.up_kind[0], SD_UNET_BLOCK_PLAIN);
    cr_assert_eq(c.mid_block, 1);
    cr_assert_eq(c.moe_enabled, 0);
    cJSON_Delete(j);
    /* SD 2.x style: head counts as a list, linear projections, 1024-d context */
    j = cJSON_Parse("{\"attention_head_dim\": [5, 10, 20, 20], \"use_linear_projection\": true,"
                    "\"cross_attention_dim\": 1024, \"transformer_layers_per_block\": [1, 2, 3, 4]}");
    cr_assert_eq(sd_unet_config_parse(&c, j, "config.json", &err), 0, "%s", err.msg);
    cr_assert_eq(c.heads[1], 10);
    cr_assert_eq(c.use_linear_projection, 1);
    cr_assert_eq(c.up_transformer_layers[0], 4);
    cr_assert_eq(c.up_transformer_layers[3], 1);
    cJSON_Delete(j);
    static const char *bad[] = {"{\"addition_embed_type\": \"text_time\"}", "{\"act_fn\": \"gelu\"}",
                                "{\"block_out_channels\": [32, 64], \"down_block_types\": [\"DownBlock2D\"]}",
                                "{\"attention_head_dim\": [8, 8]}", "{\"norm_num_groups\": 7}",
                                "{\"only_cross_attention\": true}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = cJSON_Parse(bad[i]);
        cr_assert_neq(sd_unet_config_parse(&c, j, "config.json", &err), 0, "accepted %s", bad[i]);
        cr_assert(strstr(err.msg, "config.json") != NULL, "message lacks the file: %s", err.msg);
        cJSON_Delete(j);
    }
    j = cJSON_Parse("{\"segmoe_config\": {\"num_experts\": 4, \"num_experts_per_tok\": 2, \"moe_layers\": \"all\","
                    "\"down_idx_start\": 0, \"down_idx_end\": 3, \"up_idx_start\": 1, \"up_idx_end\": 4}}");
    cr_assert_eq(sd_unet_config_parse(&c, j, "config.json", &err), 0, "%s", err.msg);
    cr_assert(c.moe_enabled && c.moe_ff && c.moe_attn && c.moe_top_k == 2 && c.moe_up_end == 4);
    cJSON_Delete(j);
}
