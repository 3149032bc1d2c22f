/* moe_merge: SegMoE YAML reading (the fixture config, error cases, hostile
 * YAML) and the merge writer: with the gates taken from the SegMoE-made
 * fixture folder (a stand-in for the gate runs), the written UNet has
 * SegMoE's key set, base tensors bit-identical to the base, expert tensors
 * bit-identical to their sources; configs SegMoE's loader needs; failures
 * leave no output folder. */
#include <criterion/criterion.h>
#include <ftw.h>
#include <sys/stat.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/half.h"
#include "core/json.h"
#include "core/safetensors.h"
#include "moe_merge/merge_writer.h"
#include "moe_merge/segmoe_config.h"
#include "tests/support/test_support.h"

/* Removes a test's temporary folder. */
static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}
static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

#define MOE_YAML "moe/segmoe-2x2.yaml"
#define SEGMOE_UNET "moe/tiny-segmoe-2x2/unet/diffusion_pytorch_model.safetensors"
#define BASE_UNET "tiny-sd15/unet/diffusion_pytorch_model.safetensors"
#define EXPERT_UNET "moe/tiny-sd15-expert/unet/diffusion_pytorch_model.safetensors"

/* ------------------------------------------------------------------ helpers */

/* Parses YAML text with model paths relative to the fixtures' moe/ folder. */
static int parse_text(sd_segmoe_config *cfg, const char *text, sd_error *err) {
    tst_require_fixture("moe");
    char *dir = tst_fixture_path("moe");
    int rc = sd_segmoe_config_parse(cfg, text, strlen(text), "test.yaml", dir, err);
    free(dir);
    return rc;
}

/* Expects a parse failure whose message contains every needle. */
static void expect_error(const char *text, const char *needle1, const char *needle2) {
    sd_segmoe_config cfg;
    sd_error err = {0};
    int rc = parse_text(&cfg, text, &err);
    cr_assert_neq(rc, 0, "expected an error for:\n%s", text);
    cr_expect_not_null(strstr(err.msg, needle1), "message '%s' lacks '%s'", err.msg, needle1);
    if (needle2) cr_expect_not_null(strstr(err.msg, needle2), "message '%s' lacks '%s'", err.msg, needle2);
    cr_expect_null(cfg.experts, "config not left zeroed after an error");
}

#define VALID_EXPERTS                                                                      \
    "experts:\n"                                                                           \
    "  - source_model: ../tiny-sd15\n"                                                     \
    "    positive_prompt: \"a cat\"\n"                                                     \
    "    negative_prompt: \"blurry\"\n"                                                    \
    "  - source_model: tiny-sd15-expert\n"                                                 \
    "    positive_prompt: \"a dog\"\n"                                                     \
    "    negative_prompt: \"\"\n"

#define HEAD "base_model: ../tiny-sd15\ntype: sd\n"

/* --------------------------------------------------------------- YAML: fixture */

Test(segmoe_config, reads_fixture_yaml) {
    tst_require_fixture(MOE_YAML);
    char *path = tst_fixture_path(MOE_YAML);
    sd_segmoe_config cfg;
    sd_error err = {0};
    cr_assert_eq(sd_segmoe_config_load(&cfg, path, &err), 0, "%s", err.msg);
    cr_expect_str_eq(cfg.base_model, "../tiny-sd15");
    char *want_base = tst_fixture_path("tiny-sd15");
    char *want_x = tst_fixture_path("moe/tiny-sd15-expert");
    char rb[4096], rw[4096];
    cr_assert_not_null(realpath(cfg.base_path, rb));
    cr_assert_not_null(realpath(want_base, rw));
    cr_expect_str_eq(rb, rw);
    cr_expect_eq(cfg.num_experts, 2);
    cr_expect_eq(cfg.n_experts, 2);
    cr_expect_eq(cfg.num_experts_per_tok, 2);
    cr_expect_eq(cfg.moe_layers, SD_SEGMOE_LAYERS_ALL);
    cr_expect_eq(cfg.type, SD_SEGMOE_TYPE_SD);
    cr_expect_eq(cfg.init, SD_SEGMOE_INIT_HIDDEN);
    cr_expect_str_eq(cfg.experts[0].source_model, "../tiny-sd15");
    cr_expect_str_eq(cfg.experts[0].positive_prompt, "a photo of a cat, sharp focus, high detail");
    cr_expect_str_eq(cfg.experts[0].negative_prompt, "blurry, low quality");
    cr_expect_str_eq(cfg.experts[1].source_model, "tiny-sd15-expert");
    cr_expect_str_eq(cfg.experts[1].positive_prompt, "an oil painting of a dog in a garden, impressionism");
    cr_expect_str_eq(cfg.experts[1].negative_prompt, "photo, realistic");
    cr_assert_not_null(realpath(cfg.experts[1].path, rb));
    cr_assert_not_null(realpath(want_x, rw));
    cr_expect_str_eq(rb, rw);
    cr_expect_eq(cfg.n_warnings, 0, "unexpected warning: %s", cfg.n_warnings ? cfg.warnings[0] : "");
    /* the raw mapping is kept for segmoe_config: ints stay ints */
    const cJSON *ne = cJSON_GetObjectItemCaseSensitive(cfg.yaml, "num_experts");
    cr_expect(cJSON_IsNumber(ne) && ne->valuedouble == 2);
    sd_segmoe_config_free(&cfg);
    free(path), free(want_base), free(want_x);
}

Test(segmoe_config, defaults) {
    sd_segmoe_config cfg;
    sd_error err = {0};
    cr_assert_eq(parse_text(&cfg, HEAD VALID_EXPERTS, &err), 0, "%s", err.msg);
    cr_expect_eq(cfg.num_experts_per_tok, 1);
    cr_expect_eq(cfg.moe_layers, SD_SEGMOE_LAYERS_ATTN); /* SegMoE's default */
    cr_expect_eq(cfg.init, SD_SEGMOE_INIT_HIDDEN);
    cr_expect_eq(cfg.num_experts, 2);
    cr_expect_str_eq(cfg.experts[1].negative_prompt, "");
    sd_segmoe_config_free(&cfg);
}

Test(segmoe_config, values_and_warnings) {
    sd_segmoe_config cfg;
    sd_error err = {0};
    const char *y = HEAD "moe_layers: ff\ninit: random\nnum_experts: 5\nnum_experts_per_tok: 2\nmy_note: yes\n"
                         "experts:\n"
                         "  - &x {source_model: ../tiny-sd15, positive_prompt: a cat, negative_prompt: blurry}\n"
                         "  - *x\n";
    cr_assert_eq(parse_text(&cfg, y, &err), 0, "%s", err.msg);
    cr_expect_eq(cfg.moe_layers, SD_SEGMOE_LAYERS_FF);
    cr_expect_eq(cfg.init, SD_SEGMOE_INIT_RANDOM);
    cr_expect_eq(cfg.num_experts, 2, "num_experts is the number of experts, as in SegMoE");
    cr_expect_str_eq(cfg.experts[1].positive_prompt, "a cat");
    int seen_dup = 0, seen_count = 0, seen_unknown = 0;
    for (int i = 0; i < cfg.n_warnings; i++) {
        seen_dup |= strstr(cfg.warnings[i], "experts[0] and experts[1]") != NULL;
        seen_count |= strstr(cfg.warnings[i], "num_experts") != NULL;
        seen_unknown |= strstr(cfg.warnings[i], "my_note") != NULL;
    }
    cr_expect(seen_dup, "no warning for an expert listed twice with the same prompts");
    cr_expect(seen_count, "no warning for num_experts != number of experts");
    cr_expect(seen_unknown, "no warning for an unknown key");
    /* YAML 1.1 plain-scalar resolution, as PyYAML's SafeLoader */
    cr_expect(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg.yaml, "my_note")));
    sd_segmoe_config_free(&cfg);
}

Test(segmoe_config, yaml_scalars_and_merge_keys) {
    const char *y = "a: 0x1f\nb: 017\nc: 1_000\nd: 1.5\ne: 1e5\nf: ~\ng: Off\nh: '12'\ni: -.5\nj: 1.0e+3\n"
                    "base: &b {k: 1, l: 2}\nm:\n  <<: *b\n  k: 3\n";
    cJSON *j;
    sd_error err = {0};
    cr_assert_eq(sd_yaml_to_json(y, strlen(y), "t.yaml", &j, NULL, NULL, &err), 0, "%s", err.msg);
    cr_expect_eq(cJSON_GetObjectItem(j, "a")->valuedouble, 31);
    cr_expect_eq(cJSON_GetObjectItem(j, "b")->valuedouble, 15);
    cr_expect_eq(cJSON_GetObjectItem(j, "c")->valuedouble, 1000);
    cr_expect_eq(cJSON_GetObjectItem(j, "d")->valuedouble, 1.5);
    cr_expect(cJSON_IsString(cJSON_GetObjectItem(j, "e")), "PyYAML reads 1e5 as a string");
    cr_expect(cJSON_IsNull(cJSON_GetObjectItem(j, "f")));
    cr_expect(cJSON_IsFalse(cJSON_GetObjectItem(j, "g")));
    cr_expect(cJSON_IsString(cJSON_GetObjectItem(j, "h")));
    cr_expect_eq(cJSON_GetObjectItem(j, "i")->valuedouble, -0.5);
    cr_expect_eq(cJSON_GetObjectItem(j, "j")->valuedouble, 1000);
    cJSON *m = cJSON_GetObjectItem(j, "m");
    cr_expect_eq(cJSON_GetObjectItem(m, "k")->valuedouble, 3, "explicit keys win over '<<'");
    cr_expect_eq(cJSON_GetObjectItem(m, "l")->valuedouble, 2);
    cJSON_Delete(j);
}

/* ---------------------------------------------------------------- YAML: errors */

Test(segmoe_config, schema_errors) {
    expect_error(HEAD "moe_layers: al\n" VALID_EXPERTS, "moe_layers", "'al'");
    expect_error(HEAD "num_experts_per_tok: 0\n" VALID_EXPERTS, "num_experts_per_tok", "between 1 and");
    expect_error(HEAD "num_experts_per_tok: 3\n" VALID_EXPERTS, "num_experts_per_tok", "(2)");
    expect_error(HEAD "num_experts_per_tok: two\n" VALID_EXPERTS, "num_experts_per_tok", "integer");
    expect_error(HEAD "init: sometimes\n" VALID_EXPERTS, "init", "'sometimes'");
    /* type: sdxl (also the default) is read; the merge checks it against the base (test_sdxl_moe.c) */
    expect_error("base_model: ../tiny-sd15\ntype: sd3\n" VALID_EXPERTS, "type", "'sd3'");
    expect_error(HEAD "loras:\n  - source_model: x.safetensors\n" VALID_EXPERTS, "loras", "not supported yet");
    expect_error(HEAD "experts:\n  - source_model: ../tiny-sd15\n    positive_prompt: a\n    negative_prompt: b\n"
                      "    loras: [{source_model: l.safetensors}]\n",
                 "experts[0].loras", "not supported yet");
    expect_error(HEAD "experts:\n  - source_model: ../tiny-sd15\n    positive_prompt: a cat\n",
                 "experts[0].negative_prompt", "missing");
    expect_error(HEAD "experts:\n  - source_model: ../tiny-sd15\n    negative_prompt: a cat\n",
                 "experts[0].positive_prompt", "missing");
    expect_error(HEAD "experts:\n  - source_model: ../tiny-sd15\n    positive_prompt: 12\n    negative_prompt: b\n",
                 "positive_prompt", "expected a string");
    expect_error(HEAD "experts: []\n", "experts", "empty");
    expect_error(HEAD, "experts", "missing");
    expect_error("type: sd\n" VALID_EXPERTS, "base_model", "missing");
    expect_error("- a\n- b\n", "top level", "mapping");
}

Test(segmoe_config, model_reference_errors) {
    expect_error("base_model: no-such-model\ntype: sd\n" VALID_EXPERTS, "base_model", "not found");
    expect_error("base_model: runwayml/stable-diffusion-v1-5\ntype: sd\n" VALID_EXPERTS, "Hub id",
                 "download it first");
    expect_error("base_model: \"Lykon/dreamshaper-8 \"\ntype: sd\n" VALID_EXPERTS, "stray space", "download it first");
    expect_error("base_model: https://civitai.com/api/download/models/1\ntype: sd\n" VALID_EXPERTS, "URL",
                 "download it first");
    expect_error(HEAD "experts:\n  - source_model: missing-expert\n    positive_prompt: a\n    negative_prompt: b\n",
                 "experts[0].source_model", "not found");
}

Test(segmoe_config, hostile_yaml) {
    /* billion laughs: 9 levels of 9 aliases = 9^9 nodes if expanded */
    char bomb[4096];
    int k = snprintf(bomb, sizeof bomb, "a0: &a0 [x]\n");
    for (int i = 1; i <= 9; i++)
        k += snprintf(bomb + k, sizeof bomb - (size_t)k, "a%d: &a%d [*a%d,*a%d,*a%d,*a%d,*a%d,*a%d,*a%d,*a%d,*a%d]\n",
                      i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    expect_error(bomb, "alias bomb", NULL);
    /* nesting */
    char deep[512] = "";
    for (int i = 0; i < 100; i++) strcat(deep, "[");
    for (int i = 0; i < 100; i++) strcat(deep, "]");
    expect_error(deep, "nesting deeper", NULL);
    /* size */
    size_t big = SD_SEGMOE_MAX_BYTES + 16;
    char *huge = malloc(big + 1);
    memset(huge, '#', big);
    huge[big] = 0;
    expect_error(huge, "limit", NULL);
    free(huge);
    expect_error("a: 1\n---\nb: 2\n", "more than one YAML document", NULL);
    expect_error("a: *nowhere\n", "nowhere", NULL);
    expect_error("a: !!python/object:os.system x\n", "unsupported YAML tag", NULL);
    expect_error("a: [1, 2\n", "syntax error", "line");
    expect_error("", "empty document", NULL);
}

/* ------------------------------------------------------------------- merge */

typedef struct gate_src {
    st_file f;
    int calls;
} gate_src;

/* Gates from the SegMoE-made folder: a stand-in for the gate runs. */
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

static int bytes_equal(const st_tensor *a, const st_tensor *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim || a->nbytes != b->nbytes) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return memcmp(a->data, b->data, a->nbytes) == 0;
}

static int files_equal(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    sd_error err = {0};
    if (sd_read_file(a, 64u << 20, &x, &nx, &err) || sd_read_file(b, 64u << 20, &y, &ny, &err)) return 0;
    int eq = nx == ny && !memcmp(x, y, nx);
    free(x), free(y);
    return eq;
}

static void load_fixture_cfg(sd_segmoe_config *cfg) {
    tst_require_fixture(MOE_YAML);
    char *path = tst_fixture_path(MOE_YAML);
    sd_error err = {0};
    cr_assert_eq(sd_segmoe_config_load(cfg, path, &err), 0, "%s", err.msg);
    free(path);
}

/* Splits "<module>.experts.<e>.<leaf>" -> module, e, leaf (0 if not an expert key). */
static int parse_expert_key(const char *name, char *module, size_t cap, int *e, const char **leaf) {
    const char *p = strstr(name, ".experts.");
    if (!p) return 0;
    snprintf(module, cap, "%.*s", (int)(p - name), name);
    char *end;
    *e = (int)strtol(p + 9, &end, 10);
    *leaf = end + 1;
    return 1;
}

/* The merged UNet file: SegMoE's key set, shapes and dtype; gates equal to
 * SegMoE's, expert tensors bit-identical to their source UNets, all other
 * tensors bit-identical to the base. */
static void check_unet_against_segmoe(const char *out, const st_file *segmoe) {
    sd_error err = {0};
    char *our_path = sd_path_join(out, "unet/diffusion_pytorch_model.safetensors");
    st_file ours, base, expert;
    cr_assert_eq(st_open(&ours, our_path, &err), 0, "%s", err.msg);
    tst_open_ref(&base, BASE_UNET);
    tst_open_ref(&expert, EXPERT_UNET);
    const st_file *src[2] = {&base, &expert};

    /* key set equal to SegMoE's (both sorted), same shapes and dtype */
    cr_assert_eq(ours.n_tensors, segmoe->n_tensors, "tensor count %d vs SegMoE's %d", ours.n_tensors, segmoe->n_tensors);
    for (int i = 0; i < ours.n_tensors; i++) {
        const st_tensor *a = &ours.tensors[i], *b = &segmoe->tensors[i];
        cr_assert_str_eq(a->name, b->name);
        cr_expect_eq(a->dtype, b->dtype, "%s dtype", a->name);
        cr_expect_eq(a->ndim, b->ndim);
        cr_expect_eq(a->nbytes, b->nbytes, "%s size", a->name);
    }
    /* provenance: bit-identical copies */
    int n_gate = 0, n_expert = 0, n_base = 0;
    for (int i = 0; i < ours.n_tensors; i++) {
        const st_tensor *t = &ours.tensors[i];
        char module[256];
        int e;
        const char *leaf;
        if (strstr(t->name, ".gate.weight")) {
            cr_expect(bytes_equal(t, st_find(segmoe, t->name)), "%s: gate not copied exactly", t->name);
            n_gate++;
        } else if (parse_expert_key(t->name, module, sizeof module, &e, &leaf)) {
            char key[400];
            snprintf(key, sizeof key, "%s.%s", module, leaf);
            cr_assert(e == 0 || e == 1);
            const st_tensor *s = st_find(src[e], key);
            cr_assert_not_null(s, "%s: no source tensor %s", t->name, key);
            cr_expect(bytes_equal(t, s), "%s: not bit-identical to expert %d's %s", t->name, e, key);
            cr_expect(bytes_equal(t, st_find(segmoe, t->name)), "%s differs from SegMoE's", t->name);
            n_expert++;
        } else {
            const st_tensor *s = st_find(&base, t->name);
            cr_assert_not_null(s, "%s: not in the base", t->name);
            cr_expect(bytes_equal(t, s), "%s: not bit-identical to the base", t->name);
            n_base++;
        }
    }
    cr_expect_eq(n_gate, 105);
    cr_expect_eq(n_expert, 2 * 15 * (6 + 4));
    cr_expect(n_base > 0);
    const char *fmt = st_metadata(&ours, "sdmoe_format");
    cr_expect(fmt && !strcmp(fmt, "segmoe"));
    cr_expect_not_null(st_metadata(&ours, "sdmoe_format_version"));
    st_close(&ours), st_close(&base), st_close(&expert);
    free(our_path);
}

Test(moe_merge, fixture_merge_matches_segmoe_folder, .timeout = 120) {
    tst_require_fixture(SEGMOE_UNET);
    sd_segmoe_config cfg;
    load_fixture_cfg(&cfg);
    gate_src gs = {0};
    sd_error err = {0};
    char *segmoe_path = tst_fixture_path(SEGMOE_UNET);
    cr_assert_eq(st_open(&gs.f, segmoe_path, &err), 0, "%s", err.msg);

    char *tmp = tst_tmpdir();
    char *out = sd_path_join(tmp, "merged");
    sd_merge_options opt = {.seed = 0, .dtype = SD_MERGE_DTYPE_AUTO, .gates = fixture_gates, .gates_ctx = &gs};
    sd_merge_summary sum;
    cr_assert_eq(sd_merge_write(&cfg, out, &opt, &sum, &err), 0, "%s", err.msg);
    cr_expect_eq(sum.n_modules, 105, "15 transformer blocks x 7 modules");
    cr_expect_eq(gs.calls, 105);
    cr_expect_eq(sum.dtype, ST_F32, "default dtype = the base UNet file's (f32)");
    cr_expect_eq(sum.n_params, 2993348, "parameter count of SegMoE's folder");

    check_unet_against_segmoe(out, &gs.f);

    /* configs */
    char *p = sd_path_join(out, "unet/config.json");
    cJSON *uc;
    cr_assert_eq(sd_json_load(p, &uc, &err), 0, "%s", err.msg);
    free(p);
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(uc, "segmoe_config");
    cr_assert_not_null(sc);
    static const struct { const char *k; int v; } ints[] = {
        {"num_experts", 2}, {"num_experts_per_tok", 2}, {"down_idx_start", 0},
        {"down_idx_end", 3}, {"up_idx_start", 1},       {"up_idx_end", 4}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(sc, ints[i].k);
        cr_expect(cJSON_IsNumber(v) && v->valuedouble == ints[i].v, "segmoe_config.%s", ints[i].k);
    }
    cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(sc, "moe_layers")->valuestring, "all");
    cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(sc, "type")->valuestring, "sd");
    cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(sc, "base_model")->valuestring, "../tiny-sd15");
    const cJSON *ours_cfg = cJSON_GetObjectItemCaseSensitive(sc, "sdmoe");
    cr_expect(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(ours_cfg, "seed")));
    cr_expect(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(ours_cfg, "format_version")));
    cr_expect_eq(cJSON_GetObjectItemCaseSensitive(uc, "cross_attention_dim")->valuedouble, 32);
    /* the experts list equals SegMoE's saved one */
    char *fp = tst_fixture_path("moe/tiny-segmoe-2x2/unet/config.json");
    cJSON *fc;
    cr_assert_eq(sd_json_load(fp, &fc, &err), 0, "%s", err.msg);
    free(fp);
    cr_expect(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(sc, "experts"),
                            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(fc, "segmoe_config"),
                                                             "experts"),
                            1));
    cJSON_Delete(fc);
    cJSON_Delete(uc);
    /* scheduler: exactly what SegMoE saved */
    p = sd_path_join(out, "scheduler/scheduler_config.json");
    fp = tst_fixture_path("moe/tiny-segmoe-2x2/scheduler/scheduler_config.json");
    cJSON *a, *b;
    cr_assert_eq(sd_json_load(p, &a, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_json_load(fp, &b, &err), 0, "%s", err.msg);
    cr_expect(cJSON_Compare(a, b, 1), "scheduler config differs from SegMoE's");
    cJSON_Delete(a), cJSON_Delete(b), free(p), free(fp);
    /* model index */
    p = sd_path_join(out, "model_index.json");
    cr_assert_eq(sd_json_load(p, &a, &err), 0, "%s", err.msg);
    cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(a, "_class_name")->valuestring, "StableDiffusionPipeline");
    cr_expect(cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(a, "safety_checker"), 0)));
    cr_expect(cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(a, "feature_extractor"), 0)));
    cr_expect_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(a, "scheduler"), 1)->valuestring,
                     "DDPMScheduler");
    cJSON_Delete(a), free(p);
    /* components: byte copies of the base */
    static const char *const files[] = {"text_encoder/config.json", "text_encoder/model.safetensors",
                                        "tokenizer/vocab.json",     "tokenizer/merges.txt",
                                        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
                                        "vae/config.json",          "vae/diffusion_pytorch_model.safetensors", NULL};
    for (int i = 0; files[i]; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "tiny-sd15/%s", files[i]);
        char *x = sd_path_join(out, files[i]), *y = tst_fixture_path(rel);
        cr_expect(files_equal(x, y), "%s is not a byte copy of the base's", files[i]);
        free(x), free(y);
    }
    /* no temporary folder left behind */
    char tmpname[4096];
    snprintf(tmpname, sizeof tmpname, "%s.tmp-%ld", out, (long)getpid());
    cr_expect(!sd_is_dir(tmpname));

    st_close(&gs.f);
    sd_segmoe_config_free(&cfg);
    free(segmoe_path), free(out), rm_tree(tmp), free(tmp);
}

Test(moe_merge, dtype_f16_and_random_gates, .timeout = 120) {
    sd_segmoe_config cfg;
    load_fixture_cfg(&cfg);
    cfg.init = SD_SEGMOE_INIT_RANDOM;
    cfg.moe_layers = SD_SEGMOE_LAYERS_FF;
    char *tmp = tst_tmpdir();
    char *out = sd_path_join(tmp, "m16");
    char *out2 = sd_path_join(tmp, "m16b");
    sd_error err = {0};
    sd_merge_options opt = {.seed = 7, .dtype = ST_F16};
    sd_merge_summary sum;
    cr_assert_eq(sd_merge_write(&cfg, out, &opt, &sum, &err), 0, "%s", err.msg);
    cr_expect_eq(sum.n_modules, 15);
    cr_expect_eq(sum.dtype, ST_F16);
    cr_assert_eq(sd_merge_write(&cfg, out2, &opt, NULL, &err), 0, "%s", err.msg);
    char *a = sd_path_join(out, "unet/diffusion_pytorch_model.safetensors");
    char *b = sd_path_join(out2, "unet/diffusion_pytorch_model.safetensors");
    cr_expect(files_equal(a, b), "same seed, different output");
    st_file f, base;
    cr_assert_eq(st_open(&f, a, &err), 0, "%s", err.msg);
    tst_open_ref(&base, BASE_UNET);
    /* FF only: attention projections keep their plain names */
    cr_expect_not_null(st_find(&f, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"));
    cr_expect_null(st_find(&f, "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight"));
    cr_expect_not_null(st_find(&f, "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"));
    /* f32 -> f16 conversion of an expert tensor */
    const st_tensor *t = st_find(&f, "up_blocks.3.attentions.2.transformer_blocks.0.ff.experts.0.net.2.weight");
    const st_tensor *s = st_find(&base, "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2.weight");
    cr_assert(t && s && t->dtype == ST_F16);
    float *x = malloc(t->numel * 4), *y = malloc(s->numel * 4);
    cr_assert_eq(st_tensor_to_f32(&f, t, x, &err), 0);
    cr_assert_eq(st_tensor_to_f32(&base, s, y, &err), 0);
    for (uint64_t i = 0; i < t->numel; i++) cr_assert_eq(x[i], sd_f16_to_f32(sd_f32_to_f16(y[i])), "at %lu", (unsigned long)i);
    /* random gates: U(-1/sqrt(D), 1/sqrt(D)), not all equal */
    const st_tensor *g = st_find(&f, "down_blocks.1.attentions.1.transformer_blocks.0.ff.gate.weight");
    cr_assert(g && g->shape[0] == 2 && g->shape[1] == 32);
    float gv[64];
    cr_assert_eq(st_tensor_to_f32(&f, g, gv, &err), 0);
    float bound = 1.0f / sqrtf(32.0f) + 1e-3f;
    int distinct = 0;
    for (int i = 0; i < 64; i++) {
        cr_expect(fabsf(gv[i]) <= bound, "gate value %g out of range", gv[i]);
        distinct += gv[i] != gv[0];
    }
    cr_expect(distinct > 50);
    free(x), free(y);
    st_close(&f), st_close(&base);
    sd_segmoe_config_free(&cfg);
    free(a), free(b), free(out), free(out2), rm_tree(tmp), free(tmp);
}

/* Writes a copy of the expert folder whose UNet has one tensor reshaped. */
static char *make_bad_expert(const char *tmp) {
    char *dir = sd_path_join(tmp, "bad-expert");
    char *unet_dir = sd_path_join(dir, "unet");
    cr_assert_eq(mkdir(dir, 0755), 0);
    cr_assert_eq(mkdir(unet_dir, 0755), 0);
    /* everything but the UNet weights links to the real expert folder */
    static const char *const links[] = {"model_index.json", "scheduler", "text_encoder", "tokenizer", "vae",
                                        "unet/config.json", NULL};
    for (int i = 0; links[i]; i++) {
        char rel[128];
        snprintf(rel, sizeof rel, "moe/tiny-sd15-expert/%s", links[i]);
        char *from = tst_fixture_path(rel), *to = sd_path_join(dir, links[i]);
        cr_assert_eq(symlink(from, to), 0, "symlink %s", to);
        free(from), free(to);
    }
    st_file src;
    tst_open_ref(&src, EXPERT_UNET);
    st_write_entry *e = calloc((size_t)src.n_tensors, sizeof *e);
    for (int i = 0; i < src.n_tensors; i++) {
        const st_tensor *t = &src.tensors[i];
        e[i] = (st_write_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        if (!strcmp(t->name, "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight")) {
            e[i].shape[0] = t->shape[1]; /* [64, 32] -> [32, 64]: same bytes, other shape */
            e[i].shape[1] = t->shape[0];
        }
    }
    char *path = sd_path_join(unet_dir, "diffusion_pytorch_model.safetensors");
    sd_error err = {0};
    cr_assert_eq(st_write(path, e, src.n_tensors, NULL, NULL, 0, &err), 0, "%s", err.msg);
    free(e), free(path), free(unet_dir);
    st_close(&src);
    return dir;
}

Test(moe_merge, failures_leave_no_folder, .timeout = 120) {
    sd_segmoe_config cfg;
    load_fixture_cfg(&cfg);
    cfg.init = SD_SEGMOE_INIT_RANDOM;
    char *tmp = tst_tmpdir();
    sd_error err = {0};
    sd_merge_options opt = {.dtype = SD_MERGE_DTYPE_AUTO};

    /* an expert with a different architecture */
    char *bad = make_bad_expert(tmp);
    char *saved = cfg.experts[1].path;
    cfg.experts[1].path = bad;
    char *out = sd_path_join(tmp, "out");
    cr_assert_neq(sd_merge_write(&cfg, out, &opt, NULL, &err), 0);
    cr_expect_not_null(strstr(err.msg, "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight"), "%s",
                       err.msg);
    cr_expect_not_null(strstr(err.msg, "[32, 64]"), "%s", err.msg);
    cr_expect_not_null(strstr(err.msg, "[64, 32]"), "%s", err.msg);
    cr_expect(!sd_is_dir(out) && !sd_is_file(out), "output exists after a failed merge");
    cfg.experts[1].path = saved;

    /* init: hidden without gates */
    cfg.init = SD_SEGMOE_INIT_HIDDEN;
    sd_error_clear(&err);
    cr_assert_neq(sd_merge_write(&cfg, out, &opt, NULL, &err), 0);
    cr_expect_not_null(strstr(err.msg, "gate"), "%s", err.msg);
    cr_expect(!sd_is_dir(out));
    cfg.init = SD_SEGMOE_INIT_RANDOM;

    /* an existing non-empty output folder is never overwritten */
    cr_assert_eq(mkdir(out, 0755), 0);
    char *keep = sd_path_join(out, "keep.txt");
    FILE *fp = fopen(keep, "w");
    fputs("x", fp);
    fclose(fp);
    sd_error_clear(&err);
    cr_assert_neq(sd_merge_write(&cfg, out, &opt, NULL, &err), 0);
    cr_expect_not_null(strstr(err.msg, "already exists"), "%s", err.msg);
    cr_expect(sd_is_file(keep));
    char *unet_cfg = sd_path_join(out, "unet");
    cr_expect(!sd_is_dir(unet_cfg));

    /* a gate provider that fails half way */
    char *out2 = sd_path_join(tmp, "out2");
    cfg.init = SD_SEGMOE_INIT_HIDDEN;
    gate_src gs = {0};
    tst_open_ref(&gs.f, BASE_UNET); /* has no gate tensors -> the callback errors */
    sd_merge_options opt2 = {.dtype = SD_MERGE_DTYPE_AUTO, .gates = fixture_gates, .gates_ctx = &gs};
    sd_error_clear(&err);
    cr_assert_neq(sd_merge_write(&cfg, out2, &opt2, NULL, &err), 0);
    cr_expect_not_null(strstr(err.msg, "no gate"), "%s", err.msg);
    cr_expect(!sd_is_dir(out2));
    st_close(&gs.f);

    sd_segmoe_config_free(&cfg);
    free(bad), free(out), free(out2), free(keep), free(unet_cfg), rm_tree(tmp), free(tmp);
}

/* An expert given as a single-file LDM checkpoint (the tiny-sd15 weights,
 * with tiny-sd15.yaml beside it) gives the same merged UNet as the folder. */
Test(moe_merge, single_file_expert, .timeout = 120) {
    tst_require_fixture("tiny-sd15.safetensors");
    tst_require_fixture(SEGMOE_UNET);
    sd_segmoe_config cfg;
    load_fixture_cfg(&cfg);
    char *saved = cfg.experts[0].path;
    cfg.experts[0].path = tst_fixture_path("tiny-sd15.safetensors");
    gate_src gs = {0};
    sd_error err = {0};
    char *segmoe_path = tst_fixture_path(SEGMOE_UNET);
    cr_assert_eq(st_open(&gs.f, segmoe_path, &err), 0, "%s", err.msg);
    char *assets = tst_source_path("assets");
    sd_model_options mopt = {.assets_dir = assets};
    char *tmp = tst_tmpdir();
    char *out = sd_path_join(tmp, "merged-single");
    sd_merge_options opt = {.dtype = SD_MERGE_DTYPE_AUTO, .gates = fixture_gates, .gates_ctx = &gs, .model = &mopt};
    cr_assert_eq(sd_merge_write(&cfg, out, &opt, NULL, &err), 0, "%s", err.msg);
    check_unet_against_segmoe(out, &gs.f);
    /* the base as a single file is refused clearly, leaving nothing behind */
    char *saved_base = cfg.base_path;
    cfg.base_path = cfg.experts[0].path;
    char *out2 = sd_path_join(tmp, "merged-single-base");
    sd_error_clear(&err);
    cr_assert_neq(sd_merge_write(&cfg, out2, &opt, NULL, &err), 0);
    cr_expect_not_null(strstr(err.msg, "single-file"), "%s", err.msg);
    cr_expect(!sd_is_dir(out2));
    cfg.base_path = saved_base;
    free(cfg.experts[0].path);
    cfg.experts[0].path = saved;
    st_close(&gs.f);
    sd_segmoe_config_free(&cfg);
    free(segmoe_path), free(assets), free(out), free(out2), rm_tree(tmp), free(tmp);
}
