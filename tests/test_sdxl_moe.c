/* SegMoE on SDXL (type: sdxl) against sdxl/moe (SegMoE's own merge of
 * segmoe-sdxl-2x1.yaml and references computed with the reloaded folder):
 *
 *   - the YAML and the plan: 175 MoE modules = every transformer block of
 *     down blocks 1-2 and up blocks 0-1 x 7, the same modules SegMoE hooked
 *     (cases.json -> gates.modules, with SegMoE's own key for each);
 *   - the merge with SegMoE's gates (a stand-in for the gate runs): the UNet
 *     file equals SegMoE's tensor for tensor, bit for bit; model_index.json,
 *     the DDPM scheduler config and unet/config.json equal SegMoE's; the
 *     components (both text encoders and tokenizers, VAE) are the base's;
 *     type / architecture mismatches fail with no folder left;
 *   - the SegMoE folder's UNet: t = 999, 500, 957.375 with the added
 *     conditioning (outputs and every module's expert), the 4 captured
 *     SparseMoeBlocks (inputs seen through the observe seam, routing and
 *     outputs of the layer bound alone);
 *   - the pipeline run ddpm_seed5_64x96 from the SegMoE folder;
 *   - gate initialisation (moe_merge/gate_init on both experts' SDXL
 *     pipelines, seed 1234): hidden means and gates against gates.safetensors,
 *     a merge with them against SegMoE's folder, its UNet's routing and the
 *     pipeline run from it.
 * Tolerances: sdxl/moe/README.md "Suggested tolerances". */
#include <criterion/criterion.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/image.h"
#include "core/json.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "moe_merge/gate_init.h"
#include "moe_merge/merge_writer.h"
#include "moe_merge/segmoe_config.h"
#include "sampler/pipeline.h"
#include "tests/support/test_support.h"
#include "unet/moe_layer.h"
#include "unet/unet.h"

#define YAML "sdxl/moe/segmoe-sdxl-2x1.yaml"
#define BASE_DIR "sdxl/tiny-sdxl"
#define EXPERT_DIR "sdxl/moe/tiny-sdxl-expert"
#define SEGMOE_DIR "sdxl/moe/tiny-segmoe-sdxl-2x1"
#define SEGMOE_UNET SEGMOE_DIR "/unet/diffusion_pytorch_model.safetensors"
#define BASE_UNET BASE_DIR "/unet/diffusion_pytorch_model.safetensors"
#define EXPERT_UNET EXPERT_DIR "/unet/diffusion_pytorch_model.safetensors"
#define CASES "sdxl/moe/refs/cases.json"
#define GATES_REF "sdxl/moe/refs/gates.safetensors"
#define LAYER_REF "sdxl/moe/refs/moe_layer.safetensors"
#define UNET_REF "sdxl/moe/refs/unet.safetensors"
#define UNET_IN "sdxl/refs/unet.safetensors" /* the batch inputs (not repeated in sdxl/moe/refs) */

/* sdxl/moe/README.md "Suggested tolerances" */
#define GATE_ABS 2e-5
#define MEAN_ABS 1e-4
#define MEAN_REL 1e-5
#define UNET_ABS 1e-4
#define UNET_REL 1e-4
#define LAT_ABS 2e-3
#define LAT_REL 5e-4
#define IMG_ABS 2e-3

#define N_MODULES 175 /* sdxl/moe/README.md: 25 transformer blocks x 7 */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}
static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static const cJSON *jget(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static int bytes_equal(const st_tensor *a, const st_tensor *b) {
    if (!a || !b || a->dtype != b->dtype || a->ndim != b->ndim || a->nbytes != b->nbytes) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return memcmp(a->data, b->data, a->nbytes) == 0;
}

static int files_equal(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    sd_error err = {0};
    if (sd_read_file(a, 64u << 20, &x, &nx, &err)) return 0;
    if (sd_read_file(b, 64u << 20, &y, &ny, &err)) {
        free(x);
        return 0;
    }
    int eq = nx == ny && !memcmp(x, y, nx);
    free(x), free(y);
    return eq;
}

static void load_cfg(sd_segmoe_config *cfg) {
    tst_require_fixture(YAML);
    char *path = tst_fixture_path(YAML);
    sd_error err = {0};
    cr_assert_eq(sd_segmoe_config_load(cfg, path, &err), 0, "%s", err.msg);
    free(path);
}

/* SegMoE's hook key of a module (segmoe/main.py cast_hook): ff -> "d1a0t1",
 * attn1.to_q -> "sattnqd1a0t1", attn2.to_k -> "cattnkd1a0t1" (u for up blocks). */
static void segmoe_key(const char *name, char *out, size_t cap) {
    char side[8] = "", rest[64] = "";
    int i, j, k;
    cr_assert_eq(sscanf(name, "%7[a-z]_blocks.%d.attentions.%d.transformer_blocks.%d.%63s", side, &i, &j, &k, rest), 5,
                 "unexpected module name %s", name);
    char pos[32];
    snprintf(pos, sizeof pos, "%c%da%dt%d", side[0], i, j, k);
    if (!strcmp(rest, "ff"))
        snprintf(out, cap, "%s", pos);
    else
        snprintf(out, cap, "%sattn%c%s", rest[4] == '1' ? "s" : "c", rest[strlen(rest) - 1], pos);
}

/* ======================================================== config and plan */

Test(sdxl_moe_config, reads_fixture_yaml_and_default_type) {
    sd_segmoe_config cfg;
    load_cfg(&cfg);
    cr_expect_eq(cfg.type, SD_SEGMOE_TYPE_SDXL);
    cr_expect(cfg.type_given);
    cr_expect_eq(cfg.n_experts, 2);
    cr_expect_eq(cfg.num_experts_per_tok, 1);
    cr_expect_eq(cfg.moe_layers, SD_SEGMOE_LAYERS_ALL);
    cr_expect_str_eq(cfg.experts[1].source_model, "tiny-sdxl-expert");
    cr_expect_eq(cfg.n_warnings, 0, "unexpected warning: %s", cfg.n_warnings ? cfg.warnings[0] : "");
    sd_segmoe_config_free(&cfg);
    /* no `type`: SegMoE's default, sdxl */
    const char *y = "base_model: tiny-sdxl\nexperts:\n  - {source_model: tiny-sdxl, positive_prompt: a, "
                    "negative_prompt: b}\n";
    char *dir = tst_fixture_path("sdxl");
    sd_error err = {0};
    cr_assert_eq(sd_segmoe_config_parse(&cfg, y, strlen(y), "t.yaml", dir, &err), 0, "%s", err.msg);
    cr_expect_eq(cfg.type, SD_SEGMOE_TYPE_SDXL);
    cr_expect(!cfg.type_given);
    sd_segmoe_config_free(&cfg);
    free(dir);
}

/* The plan covers exactly the modules SegMoE hooked, in its ranges. */
Test(sdxl_moe_merge, plan_is_segmoes_module_set) {
    if (!tst_require_fixture(BASE_DIR "/model_index.json")) return;
    cJSON *cases = tst_load_json(CASES);
    const cJSON *mods = jget(jget(cases, "gates"), "modules");
    cr_assert_eq(cJSON_GetArraySize(mods), N_MODULES);
    char *dir = tst_fixture_path(BASE_DIR);
    sd_model m;
    sd_error err = {0};
    cr_assert_eq(sd_model_open(&m, dir, NULL, &err), 0, "%s", err.msg);
    cr_expect(sd_merge_model_is_sdxl(&m));
    sd_moe_plan plan;
    cr_assert_eq(sd_moe_plan_build(&plan, &m.unet, SD_SEGMOE_TYPE_SDXL, SD_SEGMOE_LAYERS_ALL, &err), 0, "%s", err.msg);
    cr_expect_eq(plan.down_start, 1);
    cr_expect_eq(plan.down_end, 3);
    cr_expect_eq(plan.up_start, 0);
    cr_expect_eq(plan.up_end, 2);
    cr_assert_eq(plan.n_modules, N_MODULES);
    const cJSON *ucfg = m.unet.config;
    const int ctx_dim = jget(ucfg, "cross_attention_dim")->valueint;
    int n_blocks = 0;
    for (int i = 0; i < plan.n_modules; i++) {
        const sd_moe_module *mod = &plan.modules[i];
        const cJSON *want = jget(mods, mod->name);
        cr_assert(cJSON_IsString(want), "%s is not one of SegMoE's MoE modules", mod->name);
        char key[64];
        segmoe_key(mod->name, key, sizeof key);
        cr_expect_str_eq(key, want->valuestring, "%s: SegMoE key", mod->name);
        cr_expect(!strstr(mod->name, "mid_block"));
        if (mod->kind == SD_MOE_ATTN2_K || mod->kind == SD_MOE_ATTN2_V)
            cr_expect_eq(mod->in_dim, ctx_dim, "%s: gate width", mod->name);
        else
            cr_expect_eq(mod->in_dim, mod->out_dim, "%s", mod->name);
        n_blocks += mod->kind == SD_MOE_FF;
    }
    cr_expect_eq(n_blocks, N_MODULES / 7);
    sd_moe_plan_free(&plan);
    /* moe_layers ff / attn split the same blocks */
    cr_assert_eq(sd_moe_plan_build(&plan, &m.unet, SD_SEGMOE_TYPE_SDXL, SD_SEGMOE_LAYERS_FF, &err), 0, "%s", err.msg);
    cr_expect_eq(plan.n_modules, N_MODULES / 7);
    sd_moe_plan_free(&plan);
    cr_assert_eq(sd_moe_plan_build(&plan, &m.unet, SD_SEGMOE_TYPE_SDXL, SD_SEGMOE_LAYERS_ATTN, &err), 0, "%s",
                 err.msg);
    cr_expect_eq(plan.n_modules, N_MODULES / 7 * 6);
    sd_moe_plan_free(&plan);
    sd_model_close(&m);
    free(dir);
    cJSON_Delete(cases);
}

/* ============================================================== the merge */

typedef struct gate_src {
    st_file f;
    int calls;
} gate_src;

/* Gates from SegMoE's folder: a stand-in for the gate runs. */
static int fixture_gates(void *ctx, const sd_moe_module *mod, int index, int n_experts, float *gate, sd_error *err) {
    gate_src *g = ctx;
    char key[256];
    snprintf(key, sizeof key, "%s.gate.weight", mod->name);
    const st_tensor *t = st_find(&g->f, key);
    if (!t) return sd_fail(err, "no gate '%s' in the fixture", key);
    if (t->ndim != 2 || t->shape[0] != n_experts || t->shape[1] != mod->in_dim)
        return sd_fail(err, "gate '%s' has an unexpected shape", key);
    cr_expect_eq(index, g->calls, "gates requested out of plan order");
    g->calls++;
    return st_tensor_to_f32(&g->f, t, gate, err);
}

/* Splits "<module>.experts.<e>.<leaf>" (0 if not an expert key). */
static int parse_expert_key(const char *name, char *module, size_t cap, int *e, const char **leaf) {
    const char *p = strstr(name, ".experts.");
    if (!p) return 0;
    snprintf(module, cap, "%.*s", (int)(p - name), name);
    char *end;
    *e = (int)strtol(p + 9, &end, 10);
    *leaf = end + 1;
    return 1;
}

/* Our merged UNet against SegMoE's: the same key set; every non-gate tensor
 * bit-identical (and to its source: the expert's or the base's); gates
 * bit-identical when `gates_exact`, else within the gate tolerance. */
static void check_unet_against_segmoe(const char *out, int gates_exact) {
    sd_error err = {0};
    char *our_path = sd_path_join(out, "unet/diffusion_pytorch_model.safetensors");
    st_file ours, segmoe, base, expert;
    cr_assert_eq(st_open(&ours, our_path, &err), 0, "%s", err.msg);
    tst_open_ref(&segmoe, SEGMOE_UNET);
    tst_open_ref(&base, BASE_UNET);
    tst_open_ref(&expert, EXPERT_UNET);
    const st_file *src[2] = {&base, &expert}; /* YAML order: ../tiny-sdxl, tiny-sdxl-expert */
    cr_expect_eq(ours.n_tensors, segmoe.n_tensors, "tensor count %d, SegMoE's %d", ours.n_tensors, segmoe.n_tensors);
    for (int i = 0; i < segmoe.n_tensors; i++)
        cr_expect_not_null(st_find(&ours, segmoe.tensors[i].name), "missing SegMoE tensor %s", segmoe.tensors[i].name);
    int n_gate = 0, n_expert = 0, n_base = 0;
    for (int i = 0; i < ours.n_tensors; i++) {
        const st_tensor *t = &ours.tensors[i];
        const st_tensor *s = st_find(&segmoe, t->name);
        cr_assert_not_null(s, "%s is not in SegMoE's file", t->name);
        char module[256];
        const char *leaf;
        int e;
        if (strstr(t->name, ".gate.weight")) {
            if (gates_exact) {
                cr_expect(bytes_equal(t, s), "%s: gate not SegMoE's bit for bit", t->name);
            } else {
                cr_assert(t->ndim == 2 && s->ndim == 2 && t->shape[0] == s->shape[0] && t->shape[1] == s->shape[1]);
                size_t n1, n2;
                float *a = tst_ref_f32(&ours, t->name, &n1), *b = tst_ref_f32(&segmoe, t->name, &n2);
                tst_check_close(t->name, a, b, n1, GATE_ABS, 0);
                free(a), free(b);
            }
            n_gate++;
        } else if (parse_expert_key(t->name, module, sizeof module, &e, &leaf)) {
            char key[400];
            snprintf(key, sizeof key, "%s.%s", module, leaf);
            cr_assert(e == 0 || e == 1, "%s: expert index", t->name);
            cr_expect(bytes_equal(t, st_find(src[e], key)), "%s: not bit-identical to expert %d's %s", t->name, e,
                      key);
            cr_expect(bytes_equal(t, s), "%s differs from SegMoE's", t->name);
            n_expert++;
        } else {
            cr_expect(bytes_equal(t, st_find(&base, t->name)), "%s: not bit-identical to the base", t->name);
            cr_expect(bytes_equal(t, s), "%s differs from SegMoE's", t->name);
            n_base++;
        }
    }
    cr_expect_eq(n_gate, N_MODULES);
    cr_expect_eq(n_expert, 2 * (N_MODULES / 7) * (6 + 4), "6 projections + 4 FF tensors per block and expert");
    cr_expect_eq(n_base, 590, "sdxl/moe/README.md: 590 ordinary tensors");
    st_close(&ours), st_close(&segmoe), st_close(&base), st_close(&expert);
    free(our_path);
}

/* A JSON file of ours equals SegMoE's (unet/config.json: without our own
 * segmoe_config.sdmoe block). */
static void check_json_equal(const char *out, const char *rel) {
    char *a_path = sd_path_join(out, rel);
    char fx[256];
    snprintf(fx, sizeof fx, SEGMOE_DIR "/%s", rel);
    char *b_path = tst_fixture_path(fx);
    cJSON *a, *b;
    sd_error err = {0};
    cr_assert_eq(sd_json_load(a_path, &a, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_json_load(b_path, &b, &err), 0, "%s", err.msg);
    cJSON *sc = cJSON_GetObjectItemCaseSensitive(a, "segmoe_config");
    if (sc) {
        cr_expect(cJSON_IsObject(jget(sc, "sdmoe")), "%s: no segmoe_config.sdmoe", rel);
        cJSON_DeleteItemFromObjectCaseSensitive(sc, "sdmoe");
    }
    char *ta = cJSON_PrintUnformatted(a), *tb = cJSON_PrintUnformatted(b);
    cr_expect(cJSON_Compare(a, b, 1), "%s differs from SegMoE's:\n ours   %s\n SegMoE %s", rel, ta, tb);
    free(ta), free(tb);
    cJSON_Delete(a), cJSON_Delete(b);
    free(a_path), free(b_path);
}

/* The configs SegMoE wrote; the components are byte copies of the base's. */
static void check_folder_files(const char *out) {
    check_json_equal(out, "model_index.json");
    check_json_equal(out, "scheduler/scheduler_config.json");
    check_json_equal(out, "unet/config.json");
    static const char *const files[] = {
        "text_encoder/config.json",          "text_encoder/model.safetensors",
        "text_encoder_2/config.json",        "text_encoder_2/model.safetensors",
        "tokenizer/vocab.json",              "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer_2/vocab.json",            "tokenizer_2/merges.txt",
        "tokenizer_2/special_tokens_map.json", "tokenizer_2/tokenizer_config.json",
        "vae/config.json",                   "vae/diffusion_pytorch_model.safetensors",
        NULL};
    for (int i = 0; files[i]; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, BASE_DIR "/%s", files[i]);
        char *x = sd_path_join(out, files[i]), *y = tst_fixture_path(rel);
        cr_expect(files_equal(x, y), "%s is not a byte copy of the base's", files[i]);
        free(x), free(y);
    }
}

Test(sdxl_moe_merge, fixture_gates_give_segmoes_folder, .timeout = 120) {
    if (!tst_require_fixture(SEGMOE_UNET) || !tst_require_fixture(EXPERT_UNET)) return;
    sd_segmoe_config cfg;
    load_cfg(&cfg);
    gate_src gs = {0};
    sd_error err = {0};
    tst_open_ref(&gs.f, SEGMOE_UNET);
    char *tmp = tst_tmpdir();
    char *out = sd_path_join(tmp, "merged");
    sd_merge_options opt = {.seed = 1234, .dtype = SD_MERGE_DTYPE_AUTO, .gates = fixture_gates, .gates_ctx = &gs};
    sd_merge_summary sum;
    cr_assert_eq(sd_merge_write(&cfg, out, &opt, &sum, &err), 0, "%s", err.msg);
    cr_expect_eq(sum.n_modules, N_MODULES);
    cr_expect_eq(gs.calls, N_MODULES);
    cr_expect_eq(sum.dtype, ST_F32);
    cr_expect_eq(sum.n_tensors, 1265, "sdxl/moe/README.md: 1265 tensors");
    cr_expect_eq(sum.n_params, 2516692, "sdxl/moe/README.md: 2 516 692 parameters");
    check_unet_against_segmoe(out, 1);
    check_folder_files(out);
    char tmpname[4096];
    snprintf(tmpname, sizeof tmpname, "%s.tmp-%ld", out, (long)getpid());
    cr_expect(!sd_is_dir(tmpname));
    st_close(&gs.f);
    sd_segmoe_config_free(&cfg);
    free(out), rm_tree(tmp), free(tmp);
}

/* Expects sd_merge_write to fail on a YAML (models relative to fixtures/)
 * with a message holding both needles, and nothing at the output. */
static void expect_merge_error(const char *yaml, const char *n1, const char *n2) {
    char *dir = tst_fixture_path(".");
    sd_segmoe_config cfg;
    sd_error err = {0};
    cr_assert_eq(sd_segmoe_config_parse(&cfg, yaml, strlen(yaml), "mismatch.yaml", dir, &err), 0, "%s", err.msg);
    cfg.init = SD_SEGMOE_INIT_RANDOM;
    char *tmp = tst_tmpdir();
    char *out = sd_path_join(tmp, "out");
    sd_merge_options opt = {.dtype = SD_MERGE_DTYPE_AUTO};
    cr_assert_neq(sd_merge_write(&cfg, out, &opt, NULL, &err), 0, "merge of\n%s\nsucceeded", yaml);
    cr_expect_not_null(strstr(err.msg, "mismatch.yaml"), "%s", err.msg);
    cr_expect_not_null(strstr(err.msg, n1), "message lacks '%s': %s", n1, err.msg);
    if (n2) cr_expect_not_null(strstr(err.msg, n2), "message lacks '%s': %s", n2, err.msg);
    cr_expect(!sd_is_dir(out) && !sd_is_file(out), "output left after a failed merge");
    sd_segmoe_config_free(&cfg);
    free(out), rm_tree(tmp), free(tmp), free(dir);
}

Test(sdxl_moe_merge, type_must_match_the_base) {
    if (!tst_require_fixture(BASE_DIR "/model_index.json") || !tst_require_fixture("tiny-sd15/model_index.json"))
        return;
    expect_merge_error("base_model: tiny-sd15\ntype: sdxl\nexperts:\n"
                       "  - {source_model: tiny-sd15, positive_prompt: a, negative_prompt: b}\n",
                       "type: sdxl", "not an SDXL model");
    expect_merge_error("base_model: tiny-sd15\nexperts:\n"
                       "  - {source_model: tiny-sd15, positive_prompt: a, negative_prompt: b}\n",
                       "SegMoE's default", "type: sd");
    expect_merge_error("base_model: sdxl/tiny-sdxl\ntype: sd\nexperts:\n"
                       "  - {source_model: sdxl/tiny-sdxl, positive_prompt: a, negative_prompt: b}\n",
                       "is an SDXL model", "type: sdxl");
}

/* ======================================================== the merged UNet */

typedef struct moe_unet {
    sd_model m;
    sd_unet_config cfg;
    sd_unet *u;
} moe_unet;

static void open_moe_unet(moe_unet *mu, const char *dir) {
    sd_error err = {0};
    cr_assert_eq(sd_model_open(&mu->m, dir, NULL, &err), 0, "%s", err.msg);
    cr_assert(mu->m.is_segmoe, "%s: segmoe_config not detected", dir);
    sd_component *c = &mu->m.unet;
    cr_assert_eq(sd_unet_config_parse(&mu->cfg, c->config, c->config_path, &err), 0, "%s", err.msg);
    cr_assert(mu->cfg.moe_enabled && mu->cfg.add_text_time);
    cr_expect_eq(mu->cfg.moe_num_experts, 2);
    cr_expect_eq(mu->cfg.moe_top_k, 1);
    cr_expect_eq(mu->cfg.moe_down_start, 1);
    cr_expect_eq(mu->cfg.moe_up_end, 2);
    c->binder.lazy = 1;
    cr_assert_eq(sd_unet_load(&mu->u, &mu->cfg, &c->binder, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&c->binder, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_moe_count(mu->u), N_MODULES, "MoE layers bound");
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

static void check_selection(sd_moe_layer *m, const cJSON *want, const char *what) {
    cr_assert(cJSON_IsArray(want), "%s: %s: no reference routing", what, sd_moe_name(m));
    int sel[8];
    int k = sd_moe_last_choice(m, sel, NULL);
    cr_assert_eq(k, cJSON_GetArraySize(want), "%s: %s: k", what, sd_moe_name(m));
    for (int i = 0; i < k; i++)
        cr_expect_eq(sel[i], cJSON_GetArrayItem(want, i)->valueint, "%s: %s: selection %d is expert %d, SegMoE's %d",
                     what, sd_moe_name(m), i, sel[i], cJSON_GetArrayItem(want, i)->valueint);
}

/* One module's input, captured through the observe seam at the t = 500 call. */
typedef struct capture {
    const char *name;   /* moe_layer.safetensors prefix */
    float *x;
    int64_t rows, cols;
    int calls;
} capture;

static void on_observe(void *ctx, const float *x, int64_t n_rows, int64_t n_cols) {
    capture *c = ctx;
    free(c->x);
    c->x = malloc((size_t)(n_rows * n_cols) * sizeof(float));
    memcpy(c->x, x, (size_t)(n_rows * n_cols) * sizeof(float));
    c->rows = n_rows, c->cols = n_cols;
    c->calls++;
}

/* cases.json -> layers: prefix and module of the 4 captured SparseMoeBlocks. */
static int layer_cases(const cJSON *cases, const char **names, const char **modules, int cap) {
    const cJSON *layers = jget(cases, "layers");
    int n = 0;
    for (const cJSON *l = layers ? layers->child : NULL; l && n < cap; l = l->next, n++) {
        names[n] = jget(l, "name")->valuestring;
        modules[n] = jget(l, "module")->valuestring;
    }
    return n;
}

/* The batch-2 calls at the reference timesteps: outputs and every module's
 * expert (cases.json -> routing); with `observe`, the inputs of the 4
 * captured modules at t = 500 against moe_layer.safetensors. */
static void check_unet_calls(moe_unet *mu, int observe) {
    st_file in, ref;
    tst_open_ref(&in, UNET_IN);
    tst_open_ref(&ref, UNET_REF);
    cJSON *cases = tst_load_json(CASES);
    const cJSON *routing = jget(cases, "routing");
    const st_tensor *st = tst_ref_tensor(&in, "batch.sample");
    const st_tensor *ct = tst_ref_tensor(&in, "batch.encoder_hidden_states");
    const int64_t n = st->shape[0], c = st->shape[1], h = st->shape[2], w = st->shape[3];
    float *sample = tst_ref_f32(&in, "batch.sample", NULL);
    float *ctx = tst_ref_f32(&in, "batch.encoder_hidden_states", NULL);
    float *text = tst_ref_f32(&in, "batch.text_embeds", NULL);
    float *tids = tst_ref_f32(&in, "batch.time_ids", NULL);
    sd_error err = {0};
    cr_assert_eq(sd_unet_set_added_cond(mu->u, text, tids, n, &err), 0, "%s", err.msg);
    sd_moe_layer *layers[N_MODULES + 8];
    int n_layers = all_layers(mu->u, layers, N_MODULES + 8);
    cr_assert_eq(n_layers, N_MODULES);

    const char *cnames[8], *cmods[8];
    int n_cap = layer_cases(cases, cnames, cmods, 8);
    capture caps[8] = {{0}};
    cr_assert_eq(n_cap, 4);
    static const char *const names[] = {"t999", "t500", "t957.375"};
    for (int i = 0; i < 3; i++) {
        const int t500 = !strcmp(names[i], "t500");
        for (int k = 0; observe && k < n_cap; k++) {
            caps[k].name = cnames[k];
            sd_proj *p = strstr(cmods[k], ".ff") ? NULL : sd_unet_find_proj(mu->u, cmods[k]);
            sd_ff *f = p ? NULL : sd_unet_find_ff(mu->u, cmods[k]);
            cr_assert(p || f, "no module %s", cmods[k]);
            if (p) p->observe = t500 ? on_observe : NULL, p->observe_ctx = &caps[k];
            if (f) f->observe = t500 ? on_observe : NULL, f->observe_ctx = &caps[k];
        }
        char name[64];
        snprintf(name, sizeof name, "%s.timestep", names[i]);
        float t = ref_timestep(&ref, name);
        float *out = calloc((size_t)(n * c * h * w), sizeof(float));
        cr_assert_eq(sd_unet_forward_ex(mu->u, sample, n, h, w, t, ctx, ct->shape[1], out, &err), 0, "%s", err.msg);
        size_t nr;
        snprintf(name, sizeof name, "%s.out", names[i]);
        float *r = tst_ref_f32(&ref, name, &nr);
        cr_assert_eq(nr, (size_t)(n * c * h * w));
        tst_check_close(name, out, r, nr, UNET_ABS, UNET_REL);
        const cJSON *rt = jget(routing, names[i]);
        cr_assert_eq(cJSON_GetArraySize(rt), N_MODULES);
        int n0 = 0;
        for (int l = 0; l < n_layers; l++) {
            check_selection(layers[l], jget(rt, sd_moe_name(layers[l])), names[i]);
            int sel;
            sd_moe_last_choice(layers[l], &sel, NULL);
            n0 += sel == 0;
        }
        if (t500) cr_expect_eq(n0, 118, "t500: modules on expert 0 (README: 118)");
        free(out), free(r);
    }
    if (observe) {
        st_file lr;
        tst_open_ref(&lr, LAYER_REF);
        for (int k = 0; k < n_cap; k++) {
            char tn[96];
            snprintf(tn, sizeof tn, "%s.x", caps[k].name);
            const st_tensor *xt = tst_ref_tensor(&lr, tn);
            cr_expect_eq(caps[k].calls, 1, "%s: observed %d calls at t = 500", cmods[k], caps[k].calls);
            cr_assert_eq(caps[k].rows, xt->shape[0] * xt->shape[1], "%s: rows", tn);
            cr_assert_eq(caps[k].cols, xt->shape[2], "%s: width", tn);
            size_t nx;
            float *x = tst_ref_f32(&lr, tn, &nx);
            tst_check_close(tn, caps[k].x, x, nx, UNET_ABS, UNET_REL);
            free(x);
            free(caps[k].x);
        }
        st_close(&lr);
    }
    free(sample), free(ctx), free(text), free(tids);
    cJSON_Delete(cases);
    st_close(&in), st_close(&ref);
}

Test(sdxl_moe_unet, segmoe_folder_calls_routing_and_layer_inputs, .timeout = 120) {
    if (!tst_require_fixture(SEGMOE_UNET) || !tst_require_fixture(UNET_REF) || !tst_require_fixture(UNET_IN)) return;
    moe_unet mu;
    char *dir = tst_fixture_path(SEGMOE_DIR);
    open_moe_unet(&mu, dir);
    check_unet_calls(&mu, 1);
    close_moe_unet(&mu);
    free(dir);
}

/* The 4 SparseMoeBlocks bound alone from the folder, on the captured inputs:
 * router logits, column sums, the top-1 choice, weights (exactly 1), y. */
Test(sdxl_moe_unet, reference_layers_alone) {
    if (!tst_require_fixture(SEGMOE_UNET) || !tst_require_fixture(LAYER_REF)) return;
    cJSON *cases = tst_load_json(CASES);
    const char *cnames[8], *cmods[8];
    int n_cap = layer_cases(cases, cnames, cmods, 8);
    cr_assert_eq(n_cap, 4);
    st_file r;
    tst_open_ref(&r, LAYER_REF);
    char *p = tst_fixture_path(SEGMOE_UNET);
    const char *paths[1] = {p};
    sd_weights *w;
    sd_error err = {0};
    cr_assert_eq(sd_weights_open(&w, paths, 1, &err), 0, "%s", err.msg);
    for (int c = 0; c < n_cap; c++) {
        char tn[8][96];
        static const char *const leaves[] = {"x", "router_logits", "column_sums", "selected", "weights", "expert_out", "y"};
        for (int i = 0; i < 7; i++) snprintf(tn[i], sizeof tn[i], "%s.%s", cnames[c], leaves[i]);
        const st_tensor *xt = tst_ref_tensor(&r, tn[0]), *yt = tst_ref_tensor(&r, tn[6]);
        const st_tensor *lt = tst_ref_tensor(&r, tn[1]);
        const int64_t n = xt->shape[0] * xt->shape[1], in = xt->shape[2], out = yt->shape[2];
        const int E = (int)lt->shape[1];
        const int ff = strstr(cmods[c], ".ff") != NULL;
        sd_binder b = {.w = w, .component = "unet", .prefix = "", .lazy = 1};
        sd_moe_layer *m = NULL;
        int rc = ff ? sd_moe_bind_ff(&m, &b, cmods[c], E, 1, in, in * 4, &err)
                    : sd_moe_bind_proj(&m, &b, cmods[c], E, 1, in, out, &err);
        cr_assert_eq(rc, 0, "%s: %s", cmods[c], err.msg);
        float *x = tst_ref_f32(&r, tn[0], NULL);
        float *L = malloc((size_t)(n * E) * sizeof(float)), *W = malloc((size_t)n * sizeof(float));
        float sums[8];
        int sel[8];
        cr_assert_eq(sd_moe_route(m, x, n, L, sums, sel, W, &err), 0, "%s", err.msg);
        size_t nr;
        float *ref = tst_ref_f32(&r, tn[1], &nr);
        tst_check_close(tn[1], L, ref, nr, UNET_ABS, UNET_REL);
        free(ref);
        ref = tst_ref_f32(&r, tn[2], &nr);
        tst_check_close(tn[2], sums, ref, nr, UNET_ABS, UNET_REL);
        free(ref);
        int64_t *want = tst_ref_i64(&r, tn[3], &nr);
        cr_assert_eq(nr, 1);
        cr_expect_eq(sel[0], (int)want[0], "%s: expert %d, SegMoE chose %d", cnames[c], sel[0], (int)want[0]);
        free(want);
        for (int64_t i = 0; i < n; i++) cr_expect_eq(W[i], 1.0f, "%s: top-1 weight %g", cnames[c], W[i]);
        float *y = malloc((size_t)(n * out) * sizeof(float));
        float *scratch = malloc((size_t)sd_moe_scratch_floats(m, n) * sizeof(float));
        cr_assert_eq(sd_moe_forward(m, x, n, y, scratch, &err), 0, "%s", err.msg);
        ref = tst_ref_f32(&r, tn[6], &nr);
        tst_check_close(tn[6], y, ref, nr, UNET_ABS, UNET_REL);
        free(ref);
        ref = tst_ref_f32(&r, tn[5], &nr); /* [1, N, out]: the selected expert on every row = y at top-1 */
        tst_check_close(tn[5], y, ref, nr, UNET_ABS, UNET_REL);
        free(ref);
        free(x), free(L), free(W), free(y), free(scratch);
        sd_moe_free(m);
    }
    sd_weights_free(w);
    free(p);
    st_close(&r);
    cJSON_Delete(cases);
}

/* ============================================================ pipeline run */

typedef struct trace {
    int64_t numel;
    int n_calls;
    float *noise, *init, *timesteps;
    float *inputs, *eps, *latents;
    float *context, *text_embeds, *time_ids;
    int rows;
} trace;

static float *dup_floats(const float *x, size_t n) {
    if (!x) return NULL;
    float *y = malloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

static void on_step(void *ctx, int call, float t, const float *in, const float *eps, const float *lat,
                    int64_t numel) {
    trace *tr = ctx;
    size_t bytes = (size_t)numel * sizeof(float);
    if (call < 0) {
        if (in) memcpy(tr->noise, in, bytes);
        if (lat) memcpy(tr->init, lat, bytes);
        return;
    }
    cr_assert_lt(call, tr->n_calls, "more UNet calls than the reference");
    tr->timesteps[call] = t;
    memcpy(tr->inputs + call * numel, in, bytes);
    memcpy(tr->eps + call * numel, eps, bytes);
    memcpy(tr->latents + call * numel, lat, bytes);
}

static void on_conditioning(void *ctx, const float *context, int rows, int64_t n_ctx, int64_t hidden,
                            const float *text_embeds, int text_dim, const float *time_ids, int n_time_ids) {
    trace *tr = ctx;
    tr->rows = rows;
    free(tr->context), free(tr->text_embeds), free(tr->time_ids);
    tr->context = dup_floats(context, (size_t)rows * n_ctx * hidden);
    tr->text_embeds = dup_floats(text_embeds, (size_t)rows * text_dim);
    tr->time_ids = dup_floats(time_ids, (size_t)rows * n_time_ids);
}

static int json_int_at(const cJSON *arr, int i) { return cJSON_GetArrayItem(arr, i)->valueint; }

/* cases.json -> pipeline (ddpm_seed5_64x96) through sampler/pipeline. */
static void check_pipeline_run(const char *model_dir, const char *label) {
    cJSON *cases = tst_load_json(CASES);
    const cJSON *pc = jget(cases, "pipeline");
    char rel[256];
    snprintf(rel, sizeof rel, "sdxl/moe/refs/%s", jget(pc, "file")->valuestring);
    if (!tst_require_fixture(rel)) {
        cJSON_Delete(cases);
        return;
    }
    sd_pipeline *p;
    sd_error err = {0};
    cr_assert_eq(sd_pipeline_load(&p, model_dir, NULL, &err), 0, "%s: %s", label, err.msg);
    cr_assert(sd_pipeline_is_sdxl(p));
    cr_assert_eq(sd_unet_moe_count(sd_pipeline_unet(p)), N_MODULES);
    sd_sampler_id id = SD_SAMPLER_COUNT;
    cr_assert_eq(sd_pipeline_default_sampler(p, &id, &err), 0, "%s", err.msg);
    cr_expect_eq(id, SD_SAMPLER_DDPM, "%s: a SegMoE folder's scheduler is DDPM", label);
    cr_assert_str_eq(jget(pc, "scheduler")->valuestring, "ddpm");
    st_file ref;
    tst_open_ref(&ref, rel);
    const int width = jget(pc, "width")->valueint, height = jget(pc, "height")->valueint;
    const uint64_t seed = (uint64_t)jget(pc, "seed")->valuedouble;
    const cJSON *orig = jget(pc, "original_size"), *crop = jget(pc, "crops_coords_top_left");
    cr_assert(cJSON_IsNull(jget(pc, "negative_prompt")));
    const int f = sd_pipeline_vae_factor(p);
    trace tr = {.numel = 4 * (height / f) * (width / f), .n_calls = jget(pc, "num_inference_steps")->valueint};
    tr.noise = calloc(tr.numel, 4);
    tr.init = calloc(tr.numel, 4);
    tr.timesteps = calloc(tr.n_calls, 4);
    tr.inputs = calloc(tr.numel * tr.n_calls, 4);
    tr.eps = calloc(tr.numel * tr.n_calls, 4);
    tr.latents = calloc(tr.numel * tr.n_calls, 4);
    sd_txt2img_params q = {.prompt = jget(pc, "prompt")->valuestring, .negative_prompt = NULL, .width = width,
                           .height = height, .steps = tr.n_calls, .cfg_scale = jget(pc, "guidance_scale")->valuedouble,
                           .sampler = SD_SAMPLER_DDPM, .karras = SD_KARRAS_FROM_CONFIG,
                           .syntax = SD_PROMPT_SYNTAX_PLAIN, .n_images = 1, .seeds = &seed,
                           .original_height = json_int_at(orig, 0), .original_width = json_int_at(orig, 1),
                           .crop_top = json_int_at(crop, 0), .crop_left = json_int_at(crop, 1)};
    sd_txt2img_hooks h = {.on_step = on_step, .on_conditioning = on_conditioning, .ctx = &tr};
    sd_txt2img_result res;
    cr_assert_eq(sd_pipeline_txt2img(p, &q, &h, &res, &err), 0, "%s: %s", label, err.msg);

    char what[200];
    float *r;
    size_t n;
#define CMP_REF(tname, got, abs_tol, rel_tol)                      \
    r = tst_ref_f32(&ref, tname, &n);                             \
    snprintf(what, sizeof what, "%s: %s", label, tname);          \
    tst_check_close(what, got, r, n, abs_tol, rel_tol);          \
    free(r);
    cr_assert_eq(tr.rows, 2);
    CMP_REF("prompt_embeds", tr.context, 1e-4, 1e-5); /* uncond rows: zeros */
    CMP_REF("add_text_embeds", tr.text_embeds, 1e-4, 1e-5);
    r = tst_ref_f32(&ref, "add_time_ids", &n);
    for (size_t i = 0; i < n; i++) cr_expect_eq(tr.time_ids[i], r[i], "%s: time id %zu: %g vs %g", label, i,
                                                 tr.time_ids[i], r[i]);
    free(r);
    int64_t *ts = tst_ref_i64(&ref, "timesteps", &n);
    cr_assert_eq(n, (size_t)tr.n_calls);
    for (size_t i = 0; i < n; i++) cr_expect_eq(tr.timesteps[i], (float)ts[i], "%s: timestep %zu", label, i);
    free(ts);
    CMP_REF("noise", tr.noise, 1e-5, 0);
    CMP_REF("init_latents", tr.init, 1e-4, 1e-5);
    CMP_REF("step_model_inputs", tr.inputs, LAT_ABS, LAT_REL);
    CMP_REF("step_noise_pred", tr.eps, LAT_ABS, LAT_REL);
    CMP_REF("step_latents", tr.latents, LAT_ABS, LAT_REL);
    CMP_REF("final_latents", res.latents, LAT_ABS, LAT_REL);
    CMP_REF("vae_out", res.vae_out, IMG_ABS, 0);
    size_t img_n = (size_t)3 * width * height;
    float *unit = malloc(img_n * 4);
    sd_image_denormalize(res.vae_out, unit, img_n);
    CMP_REF("image", unit, IMG_ABS, 0);
#undef CMP_REF
    sd_image img;
    cr_assert_eq(sd_image_from_vae(res.vae_out, width, height, &img, &err), 0, "%s", err.msg);
    int64_t *u8 = tst_ref_i64(&ref, "image_u8", &n);
    cr_assert_eq(n, img_n);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)img.rgb[i] - (int)u8[i]);
        cr_expect_leq(d, 1, "%s: pixel value %zu differs by %d", label, i, d);
        off += d != 0;
    }
    cr_expect_leq(off * 100, n, "%s: %zu of %zu pixel values differ", label, off, n);
    free(u8);
    sd_image_free(&img);
    free(unit);
    sd_txt2img_result_free(&res);
    free(tr.noise), free(tr.init), free(tr.timesteps), free(tr.inputs), free(tr.eps), free(tr.latents);
    free(tr.context), free(tr.text_embeds), free(tr.time_ids);
    st_close(&ref);
    sd_pipeline_free(p);
    cJSON_Delete(cases);
}

Test(sdxl_moe_pipeline, segmoe_folder_reference_run, .timeout = 300) {
    if (!tst_require_fixture(SEGMOE_DIR "/model_index.json")) return;
    char *dir = tst_fixture_path(SEGMOE_DIR);
    check_pipeline_run(dir, "SegMoE folder");
    free(dir);
}

/* ===================================================== gate initialisation */

/* The gate run's recipe through sampler/pipeline (what gate_init asks of it):
 * expert e's conditioning (negative encoded, default time ids), its first
 * and last UNet inputs, against gates.safetensors -> gate_run.e<e>.*. */
typedef struct gate_trace {
    int64_t numel;
    int calls;
    float *first, *last;
    float *context, *text_embeds, *time_ids;
    int rows;
} gate_trace;

static void gate_on_step(void *ctx, int call, float t, const float *in, const float *eps, const float *lat,
                         int64_t numel) {
    (void)t, (void)eps, (void)lat;
    gate_trace *g = ctx;
    if (call < 0) return;
    if (call == 0) memcpy(g->first, in, (size_t)numel * sizeof(float));
    memcpy(g->last, in, (size_t)numel * sizeof(float));
    g->calls = call + 1;
}

static void gate_on_conditioning(void *ctx, const float *context, int rows, int64_t n_ctx, int64_t hidden,
                                 const float *text_embeds, int text_dim, const float *time_ids, int n_time_ids) {
    gate_trace *g = ctx;
    g->rows = rows;
    g->context = dup_floats(context, (size_t)rows * n_ctx * hidden);
    g->text_embeds = dup_floats(text_embeds, (size_t)rows * text_dim);
    g->time_ids = dup_floats(time_ids, (size_t)rows * n_time_ids);
}

Test(sdxl_moe_gates, gate_run_recipe_inputs, .timeout = 120) {
    if (!tst_require_fixture(GATES_REF) || !tst_require_fixture(EXPERT_DIR "/model_index.json")) return;
    sd_segmoe_config cfg;
    load_cfg(&cfg);
    cJSON *cases = tst_load_json(CASES);
    const cJSON *runs = jget(jget(cases, "gates"), "gate_runs");
    cr_assert_eq(cJSON_GetArraySize(runs), cfg.n_experts);
    st_file ref;
    tst_open_ref(&ref, GATES_REF);
    for (int e = 0; e < cfg.n_experts; e++) {
        const cJSON *gr = cJSON_GetArrayItem(runs, e);
        cr_assert_str_eq(jget(gr, "positive")->valuestring, cfg.experts[e].positive_prompt);
        cr_assert_str_eq(jget(gr, "negative")->valuestring, cfg.experts[e].negative_prompt);
        uint64_t seed = (uint64_t)jget(gr, "seed")->valuedouble;
        cr_assert_eq(seed, 1234u + (unsigned)e);
        sd_pipeline *p;
        sd_error err = {0};
        cr_assert_eq(sd_pipeline_load(&p, cfg.experts[e].path, NULL, &err), 0, "%s", err.msg);
        int w, h;
        sd_pipeline_default_size(p, &w, &h);
        const int f = sd_pipeline_vae_factor(p);
        gate_trace g = {.numel = 4 * (int64_t)(w / f) * (h / f)};
        g.first = calloc((size_t)g.numel, 4);
        g.last = calloc((size_t)g.numel, 4);
        /* gate_init's run_txt2img */
        sd_txt2img_params q = {.prompt = cfg.experts[e].positive_prompt,
                               .negative_prompt = cfg.experts[e].negative_prompt, .width = w, .height = h,
                               .steps = SD_GATE_INIT_STEPS, .cfg_scale = sd_gate_init_guidance(cfg.type),
                               .sampler = SD_SAMPLER_DDPM, .karras = SD_KARRAS_FROM_CONFIG, .clip_skip = 1,
                               .syntax = SD_PROMPT_SYNTAX_PLAIN, .n_images = 1, .seeds = &seed};
        cr_expect_eq(q.cfg_scale, 5.0, "SDXL's default guidance");
        sd_txt2img_hooks hk = {.on_step = gate_on_step, .on_conditioning = gate_on_conditioning, .ctx = &g};
        sd_txt2img_result res;
        cr_assert_eq(sd_pipeline_txt2img(p, &q, &hk, &res, &err), 0, "%s", err.msg);
        sd_txt2img_result_free(&res);
        cr_expect_eq(g.calls, cJSON_GetArraySize(jget(gr, "timesteps")));
        char tn[96], what[128];
        size_t n;
        float *r;
#define CMP_GR(leaf, got, n_got, abs_tol, rel_tol)                       \
    snprintf(tn, sizeof tn, "gate_run.e%d.%s", e, leaf);                 \
    r = tst_ref_f32(&ref, tn, &n);                                       \
    cr_assert_eq(n, (size_t)(n_got), "%s: size", tn);                    \
    snprintf(what, sizeof what, "%s", tn);                               \
    tst_check_close(what, got, r, n, abs_tol, rel_tol);                  \
    free(r);
        cr_assert_eq(g.rows, 2);
        CMP_GR("prompt_embeds", g.context, 2 * 77 * 40, 1e-4, 1e-5);
        CMP_GR("add_text_embeds", g.text_embeds, 2 * 20, 1e-4, 1e-5);
        CMP_GR("add_time_ids", g.time_ids, 12, 0, 0);
        /* the UNet input is cat([latents] * 2): both halves equal our one-image input */
        float *two = malloc((size_t)g.numel * 2 * sizeof(float));
        memcpy(two, g.first, (size_t)g.numel * sizeof(float));
        memcpy(two + g.numel, g.first, (size_t)g.numel * sizeof(float));
        CMP_GR("first_unet_input", two, 2 * g.numel, 1e-4, 1e-5);
        memcpy(two, g.last, (size_t)g.numel * sizeof(float));
        memcpy(two + g.numel, g.last, (size_t)g.numel * sizeof(float));
        CMP_GR("last_unet_input", two, 2 * g.numel, LAT_ABS, LAT_REL);
#undef CMP_GR
        free(two), free(g.first), free(g.last), free(g.context), free(g.text_embeds), free(g.time_ids);
        sd_pipeline_free(p);
    }
    st_close(&ref);
    cJSON_Delete(cases);
    sd_segmoe_config_free(&cfg);
}

/* hidden_mean and gate of every module against SegMoE's; the gate-sharing
 * facts of sdxl/moe/README.md (attn1 q/k/v alike within a block, attn2 k/v
 * alike everywhere) hold exactly. */
static void check_gates(const sd_gate_set *set) {
    st_file ref;
    tst_open_ref(&ref, GATES_REF);
    cr_assert_eq(set->n_experts, 2);
    cr_assert_eq(set->plan.n_modules, N_MODULES);
    const float *kv0 = NULL;
    int64_t kv_dim = 0;
    for (int m = 0; m < set->plan.n_modules; m++) {
        const sd_moe_module *mod = &set->plan.modules[m];
        const size_t cnt = (size_t)2 * (size_t)mod->in_dim;
        char name[320];
        size_t n;
        snprintf(name, sizeof name, "%s.hidden_mean", mod->name);
        float *h = tst_ref_f32(&ref, name, &n);
        cr_assert_eq(n, cnt, "%s size", name);
        tst_check_close(name, set->hidden_mean[m], h, n, MEAN_ABS, MEAN_REL);
        free(h);
        snprintf(name, sizeof name, "%s.gate", mod->name);
        float *g = tst_ref_f32(&ref, name, &n);
        tst_check_close(name, set->gates[m], g, n, GATE_ABS, 0);
        free(g);
        if (mod->kind == SD_MOE_ATTN1_K || mod->kind == SD_MOE_ATTN1_V)
            cr_expect(!memcmp(set->gates[m], set->gates[m - (mod->kind - SD_MOE_ATTN1_Q)], cnt * sizeof(float)),
                      "%s: attn1 gates differ within the block", mod->name);
        if (mod->kind == SD_MOE_ATTN2_K || mod->kind == SD_MOE_ATTN2_V) {
            if (!kv0) kv0 = set->gates[m], kv_dim = mod->in_dim;
            cr_assert_eq(mod->in_dim, kv_dim);
            cr_expect(!memcmp(set->gates[m], kv0, cnt * sizeof(float)), "%s: attn2 k/v gate differs from the first",
                      mod->name);
        }
    }
    st_close(&ref);
}

/* Gate init against SegMoE's gates; a merge with them (the same computed
 * set) against SegMoE's folder; its UNet's routing and the pipeline run. */
Test(sdxl_moe_gates, own_merge_gates_routing_and_run, .timeout = 600) {
    if (!tst_require_fixture(GATES_REF) || !tst_require_fixture(EXPERT_DIR "/model_index.json")) return;
    sd_segmoe_config cfg;
    load_cfg(&cfg);
    cJSON *cases = tst_load_json(CASES);
    const uint64_t seed = (uint64_t)jget(cases, "gate_seed")->valuedouble;
    cJSON_Delete(cases);
    sd_error err = {0};
    sd_gate_init_options gopt = {.seed = seed};
    sd_gate_init gi;
    sd_gate_init_begin(&gi, &cfg, &gopt);
    cr_assert_eq(sd_gate_set_compute(&gi.set, &cfg, &gi.opt, &err), 0, "%s", err.msg);
    gi.computed = 1;
    check_gates(&gi.set);

    char *tmp = tst_tmpdir();
    char *out = sd_path_join(tmp, "merged");
    sd_merge_options mo = {.seed = seed, .dtype = SD_MERGE_DTYPE_AUTO, .gates = sd_gate_init_merge_fn,
                           .gates_ctx = &gi};
    sd_merge_summary sum;
    cr_assert_eq(sd_merge_write(&cfg, out, &mo, &sum, &err), 0, "%s", err.msg);
    sd_gate_init_end(&gi);
    cr_expect_eq(sum.n_modules, N_MODULES);
    check_unet_against_segmoe(out, 0);
    check_folder_files(out);

    moe_unet mu;
    open_moe_unet(&mu, out);
    check_unet_calls(&mu, 0);
    close_moe_unet(&mu);
    check_pipeline_run(out, "own merge");

    sd_segmoe_config_free(&cfg);
    free(out), rm_tree(tmp), free(tmp);
}

/* ================================================================== CLI */

static char *read_text(const char *path) {
    char *s = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(path, 1 << 20, &s, NULL, &err), 0, "%s", err.msg);
    return s;
}

/* `sdmoe merge segmoe-sdxl-2x1.yaml OUT --seed 1234`: gate runs on both
 * SDXL experts, the summary, and SegMoE's folder (gates within tolerance,
 * everything else bit for bit). */
Test(sdxl_moe_cli, merge_fixture_yaml, .timeout = 300) {
    if (!tst_require_fixture(YAML) || !tst_require_fixture(SEGMOE_UNET) || !tst_require_fixture(EXPERT_UNET)) return;
    cJSON *cases = tst_load_json(CASES);
    const unsigned long long seed = (unsigned long long)jget(cases, "gate_seed")->valuedouble;
    cJSON_Delete(cases);
    char *tmp = tst_tmpdir();
    char *yaml = tst_fixture_path(YAML);
    char out[4096], so[4096], se[4096], cmd[16384];
    snprintf(out, sizeof out, "%s/merged", tmp);
    snprintf(so, sizeof so, "%s/stdout", tmp);
    snprintf(se, sizeof se, "%s/stderr", tmp);
    snprintf(cmd, sizeof cmd, "'%s' merge '%s' '%s' --seed %llu -q", tst_sdmoe_bin(), yaml, out, seed);
    int rc = tst_run(cmd, so, se);
    char *err = read_text(se), *std = read_text(so);
    cr_assert_eq(rc, 0, "merge failed (%d): %s", rc, err);
    cr_expect_eq(err[0], '\0', "unexpected stderr: %s", err);
    cr_expect(strstr(std, "2 (top-1 per layer call), init hidden, seed 1234"), "%s", std);
    cr_expect(strstr(std, "175 MoE layers (moe_layers all)"), "%s", std);
    cr_expect(strstr(std, "2,516,692 UNet parameters in 1,265 tensors"), "%s", std);
    cr_expect(strstr(std, "F32"), "%s", std);
    free(err), free(std);
    check_unet_against_segmoe(out, 0);
    check_folder_files(out);
    rm_tree(tmp);
    free(tmp), free(yaml);
}

/* A type that does not fit the base: one line naming the YAML, status 1,
 * nothing written, before any gate run. */
Test(sdxl_moe_cli, type_sd_on_sdxl_base_fails_cleanly) {
    if (!tst_require_fixture(BASE_DIR "/model_index.json")) return;
    const char *fx = tst_fixtures_dir();
    char *tmp = tst_tmpdir();
    char yaml[4096], path[4096], out[4096], so[4096], se[4096], cmd[16384];
    snprintf(yaml, sizeof yaml,
             "base_model: %1$s/sdxl/tiny-sdxl\ntype: sd\nexperts:\n"
             "  - {source_model: %1$s/sdxl/tiny-sdxl, positive_prompt: \"a cat\", negative_prompt: \"blur\"}\n",
             fx);
    snprintf(path, sizeof path, "%s/wrong_type.yaml", tmp);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(yaml, f);
    fclose(f);
    snprintf(out, sizeof out, "%s/merged", tmp);
    snprintf(so, sizeof so, "%s/stdout", tmp);
    snprintf(se, sizeof se, "%s/stderr", tmp);
    snprintf(cmd, sizeof cmd, "'%s' merge '%s' '%s' -q", tst_sdmoe_bin(), path, out);
    int rc = tst_run(cmd, so, se);
    char *err = read_text(se);
    cr_expect_eq(rc, 1, "exit status %d (%s)", rc, err);
    size_t len = strlen(err);
    cr_expect(!strncmp(err, "sdmoe: ", 7) && len && err[len - 1] == '\n' && !memchr(err, '\n', len - 1),
              "not one 'sdmoe: ' line: %s", err);
    cr_expect(strstr(err, "wrong_type.yaml") && strstr(err, "type: sd") && strstr(err, "is an SDXL model"), "%s", err);
    cr_expect(!sd_is_dir(out), "output folder left behind");
    free(err);
    rm_tree(tmp);
    free(tmp);
}
