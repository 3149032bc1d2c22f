/* sdxl_unet: the SDXL-layout UNet2DConditionModel (addition_embed_type
 * "text_time", transformer_layers_per_block [1, 2, 3], heads per level, linear
 * proj_in/out, a plain first down block) against diffusers v0.27.2
 * (sdxl/refs/unet.safetensors): batch 2 at t = 999, 801 and 957.375 with
 * per-row pooled embeddings and time ids, and the 8x12 block case with every
 * intermediate (time_proj, add_time_proj, add_embedding, emb, ... conv_out);
 * plus the time-id sinusoids of sdxl/refs/time_ids.safetensors and the
 * refusals (forward without added conditioning, a bad config). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/kernels.h"
#include "tests/support/test_support.h"
#include "unet/unet.h"

#define UNET_ABS 1e-4
#define UNET_REL 1e-4
#define TIME_PROJ_ABS 1e-5

typedef struct loaded {
    sd_weights *w;
    sd_unet *u;
    sd_unet_config cfg;
} loaded;

static int load_sdxl_unet(loaded *m) {
    if (!tst_require_fixture("sdxl/tiny-sdxl/unet/diffusion_pytorch_model.safetensors") ||
        !tst_require_fixture("sdxl/refs/unet.safetensors"))
        return 0;
    char *cpath = tst_fixture_path("sdxl/tiny-sdxl/unet/config.json");
    cJSON *json;
    sd_error err = {0};
    cr_assert_eq(sd_json_load(cpath, &json, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_config_parse(&m->cfg, json, cpath, &err), 0, "%s", err.msg);
    cJSON_Delete(json);
    free(cpath);
    char *path = tst_fixture_path("sdxl/tiny-sdxl/unet/diffusion_pytorch_model.safetensors");
    const char *paths[1] = {path};
    cr_assert_eq(sd_weights_open(&m->w, paths, 1, &err), 0, "%s", err.msg);
    free(path);
    sd_binder b = {.w = m->w, .component = "unet", .prefix = ""};
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

static float *ref_named(const st_file *f, const char *prefix, const char *what, const st_tensor **t) {
    char name[128];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    if (t) *t = tst_ref_tensor(f, name);
    return tst_ref_f32(f, name, NULL);
}

/* Runs `case_name` with the inputs `inputs`.{sample, encoder_hidden_states,
 * text_embeds, time_ids} and compares with <case>.out; then again from the
 * cached context and added conditioning (the same bytes). */
static void check_case(loaded *m, const st_file *f, const char *inputs, const char *case_name) {
    const st_tensor *st, *ct, *tt, *it;
    float *sample = ref_named(f, inputs, "sample", &st);
    float *ctx = ref_named(f, inputs, "encoder_hidden_states", &ct);
    float *text = ref_named(f, inputs, "text_embeds", &tt);
    float *ids = ref_named(f, inputs, "time_ids", &it);
    int64_t n = st->shape[0], h = st->shape[2], w = st->shape[3];
    cr_assert_eq(tt->shape[1], m->cfg.add_text_dim, "pooled width from the config");
    cr_assert_eq(it->shape[1], m->cfg.add_n_time_ids, "time ids per row");
    char name[128];
    snprintf(name, sizeof name, "%s.timestep", case_name);
    float t = ref_timestep(f, name);
    snprintf(name, sizeof name, "%s.out", case_name);
    size_t numel;
    float *ref = tst_ref_f32(f, name, &numel);
    float *out = calloc(numel, sizeof(float)), *out2 = calloc(numel, sizeof(float));
    sd_error err = {0};
    cr_assert_eq(sd_unet_set_added_cond(m->u, text, ids, n, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_forward_ex(m->u, sample, n, h, w, t, ctx, ct->shape[1], out, &err), 0, "%s", err.msg);
    double e = tst_check_close(name, out, ref, numel, UNET_ABS, UNET_REL);
    cr_log_info("%s: max|err| %.3g", name, e);
    cr_assert_eq(sd_unet_forward(m->u, sample, n, h, w, t, NULL, out2, &err), 0, "%s", err.msg);
    cr_assert(memcmp(out, out2, numel * sizeof(float)) == 0, "%s: cached run differs", name);
    free(sample), free(ctx), free(text), free(ids), free(ref), free(out), free(out2);
}

Test(sdxl_unet, config_reads_the_sdxl_structure) {
    loaded m;
    if (!load_sdxl_unet(&m)) return;
    const sd_unet_config *c = &m.cfg;
    cr_assert_eq(c->add_text_time, 1);
    cr_assert_eq(c->addition_time_embed_dim, 8);
    cr_assert_eq(c->add_embed_in, 68);
    cr_assert_eq(c->add_text_dim, 20); /* 68 - 6 * 8 */
    int depth[3] = {1, 2, 3}, heads[3] = {2, 4, 6};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(c->transformer_layers[i], depth[i]);
        cr_assert_eq(c->up_transformer_layers[i], depth[2 - i]);
        cr_assert_eq(c->heads[i], heads[i]);
    }
    /* README table: down 1 has 2 attentions of 2 blocks, up 0 3 attentions of 3 blocks */
    sd_unet_block *d1 = sd_unet_down_block(m.u, 1), *u0 = sd_unet_up_block(m.u, 0), *mid = sd_unet_mid_block(m.u);
    cr_assert_eq(sd_unet_down_block(m.u, 0)->n_attn, 0);
    cr_assert_eq(d1->n_attn, 2);
    cr_assert_eq(d1->attn[0].n_blocks, 2);
    cr_assert_eq(d1->attn[0].blocks[0].attn1.heads, 4);
    cr_assert_eq(u0->n_attn, 3);
    cr_assert_eq(u0->attn[2].n_blocks, 3);
    cr_assert_eq(u0->attn[2].blocks[0].attn1.heads, 6);
    cr_assert_eq(mid->attn[0].n_blocks, 3);
    cr_assert_eq(sd_unet_tblock_count(m.u), 2 * 2 + 2 * 3 + 3 + 3 * 3 + 3 * 2);
    unload(&m);
}

Test(sdxl_unet, timesteps_batch2) {
    loaded m;
    if (!load_sdxl_unet(&m)) return;
    st_file f;
    tst_open_ref(&f, "sdxl/refs/unet.safetensors");
    static const char *cases[] = {"t999", "t801", "t957.375"};
    for (int i = 0; i < 3; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s.out", cases[i]);
        if (!st_find(&f, name)) cr_assert_fail("fixture has no %s", name);
        check_case(&m, &f, "batch", cases[i]);
    }
    st_close(&f);
    unload(&m);
}

/* Intermediates (NHWC from the capture) against the NCHW references. */
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
    double abs_tol = !strcmp(name, "time_proj") || !strcmp(name, "add_time_proj") ? TIME_PROJ_ABS : UNET_ABS;
    double rel_tol = abs_tol == TIME_PROJ_ABS ? 0 : UNET_REL;
    double e = tst_check_close(full, got, ref, numel, abs_tol, rel_tol);
    cr_log_info("%s: max|err| %.3g", full, e);
    free(got), free(ref);
    cc->seen++;
}

Test(sdxl_unet, blocks_8x12_every_intermediate) {
    loaded m;
    if (!load_sdxl_unet(&m)) return;
    st_file f;
    tst_open_ref(&f, "sdxl/refs/unet.safetensors");
    const char *cs = "blocks_8x12";
    cap_ctx cc = {&f, cs, 0};
    sd_unet_set_capture(m.u, on_capture, &cc);
    check_case(&m, &f, cs, cs);
    static const char *inputs[] = {"sample", "encoder_hidden_states", "text_embeds", "time_ids", "timestep", "out"};
    int expected = 0;
    size_t plen = strlen(cs);
    for (int i = 0; i < f.n_tensors; i++) {
        const char *nm = f.tensors[i].name;
        if (strncmp(nm, cs, plen) || nm[plen] != '.') continue;
        int is_input = 0;
        for (size_t k = 0; k < sizeof inputs / sizeof inputs[0]; k++) is_input |= !strcmp(nm + plen + 1, inputs[k]);
        expected += !is_input;
    }
    /* set_added_cond's 3 captures run once; the forward's run twice */
    cr_assert_eq(cc.seen, 2 * expected - 3, "%d intermediates checked, fixture has %d", cc.seen, expected);
    st_close(&f);
    unload(&m);
}

/* refs/time_ids.safetensors: add_time_proj of the pipeline's time ids, by way
 * of the UNet's capture of set_added_cond. */
typedef struct proj_ctx {
    float *got;
    size_t n;
} proj_ctx;

static void on_add_time_proj(void *vctx, const char *name, const float *x, int64_t n, int64_t h, int64_t w,
                             int64_t c) {
    proj_ctx *pc = vctx;
    if (strcmp(name, "add_time_proj") != 0) return;
    pc->n = (size_t)(n * h * w * c);
    pc->got = malloc(pc->n * sizeof(float));
    memcpy(pc->got, x, pc->n * sizeof(float));
}

Test(sdxl_unet, time_id_sinusoids) {
    loaded m;
    if (!load_sdxl_unet(&m)) return;
    if (!tst_require_fixture("sdxl/refs/time_ids.safetensors")) return;
    st_file f;
    tst_open_ref(&f, "sdxl/refs/time_ids.safetensors");
    static const char *cases[] = {"default_64x64", "default_64x96", "sdxl_1024", "orig_crop_target"};
    float text[20] = {0};
    cr_assert_eq(m.cfg.add_text_dim, 20);
    for (int i = 0; i < 4; i++) {
        const st_tensor *t;
        float *ids = ref_named(&f, cases[i], "time_ids", &t);
        size_t numel;
        char name[96];
        snprintf(name, sizeof name, "%s.add_time_proj", cases[i]);
        float *ref = tst_ref_f32(&f, name, &numel);
        proj_ctx pc = {0};
        sd_unet_set_capture(m.u, on_add_time_proj, &pc);
        sd_error err = {0};
        cr_assert_eq(sd_unet_set_added_cond(m.u, text, ids, 1, &err), 0, "%s", err.msg);
        cr_assert_eq(pc.n, numel, "%s: %zu values", name, pc.n);
        tst_check_close(name, pc.got, ref, numel, TIME_PROJ_ABS, 0);
        free(pc.got), free(ids), free(ref);
    }
    st_close(&f);
    unload(&m);
}

Test(sdxl_unet, forward_without_added_cond_is_an_error) {
    loaded m;
    if (!load_sdxl_unet(&m)) return;
    float sample[4 * 8 * 8] = {0}, ctx[77 * 40] = {0}, out[4 * 8 * 8];
    sd_error err = {0};
    cr_assert_eq(sd_unet_forward(m.u, sample, 1, 8, 8, 10.0f, ctx, out, &err), -1);
    cr_assert(strstr(err.msg, "added conditioning"), "%s", err.msg);
    /* a batch of another size than the one set is refused too */
    float text[2 * 20] = {0}, ids[2 * 6] = {64, 64, 0, 0, 64, 64, 64, 64, 0, 0, 64, 64};
    cr_assert_eq(sd_unet_set_added_cond(m.u, text, ids, 2, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_forward(m.u, sample, 1, 8, 8, 10.0f, ctx, out, &err), -1);
    unload(&m);
}

static int parse_json_text(const char *text, sd_unet_config *cfg, sd_error *err) {
    cJSON *j = cJSON_Parse(text);
    cr_assert_not_null(j);
    int rc = sd_unet_config_parse(cfg, j, "unet/config.json", err);
    cJSON_Delete(j);
    return rc;
}

Test(sdxl_unet, config_refusals_name_the_key) {
    sd_unet_config cfg;
    sd_error err = {0};
    cr_assert_eq(parse_json_text("{\"addition_embed_type\": \"image\"}", &cfg, &err), -1);
    cr_assert(strstr(err.msg, "addition_embed_type"), "%s", err.msg);
    cr_assert_eq(parse_json_text("{\"addition_embed_type\": \"text_time\", \"addition_time_embed_dim\": 256}", &cfg,
                                 &err), -1);
    cr_assert(strstr(err.msg, "projection_class_embeddings_input_dim"), "%s", err.msg);
    cr_assert_eq(parse_json_text("{\"addition_embed_type\": \"text_time\", \"addition_time_embed_dim\": 256, "
                                 "\"projection_class_embeddings_input_dim\": 1536}", &cfg, &err), -1);
    cr_assert(strstr(err.msg, "projection_class_embeddings_input_dim"), "%s", err.msg);
    cr_assert_eq(parse_json_text("{\"projection_class_embeddings_input_dim\": 2816}", &cfg, &err), -1);
    /* SDXL base 1.0's values */
    cr_assert_eq(parse_json_text("{\"addition_embed_type\": \"text_time\", \"addition_time_embed_dim\": 256, "
                                 "\"projection_class_embeddings_input_dim\": 2816}", &cfg, &err), 0, "%s", err.msg);
    cr_assert_eq(cfg.add_text_dim, 1280);
}
