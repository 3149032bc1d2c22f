/* core/model, core/ldm_keymap, core/ldm_yaml, core/sha256 and `sdmoe info`:
 * diffusers folders and single-file checkpoints open, and the single file
 * binds bit-identical weights for every tensor of the folder. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/json.h"
#include "core/ldm_keymap.h"
#include "core/ldm_yaml.h"
#include "core/model.h"
#include "core/model_arch.h"
#include "core/sha256.h"
#include "tests/support/test_support.h"

/* ---- helpers ---- */

static char *strf(const char *fmt, const char *a, const char *b) {
    size_t n = strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 1;
    char *s = malloc(n);
    snprintf(s, n, fmt, a, b ? b : "");
    return s;
}

static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp, "cannot write %s", path);
    fputs(text, fp);
    fclose(fp);
}

static void sh(const char *cmd, const char *a, const char *b) {
    char *c = strf(cmd, a, b);
    cr_assert_eq(tst_run(c, NULL, NULL), 0, "command failed: %s", c);
    free(c);
}

static void open_ok(sd_model *m, const char *path, const sd_model_options *opt) {
    sd_error err = {0};
    int rc = sd_model_open(m, path, opt, &err);
    cr_assert_eq(rc, 0, "sd_model_open(%s): %s", path, err.msg);
}

/* Opening fails and the message contains every needle given. */
static void open_fails(const char *path, const sd_model_options *opt, const char *n1, const char *n2) {
    sd_model m;
    sd_error err = {0};
    cr_assert_neq(sd_model_open(&m, path, opt, &err), 0, "sd_model_open(%s) should fail", path);
    cr_assert(err.msg[0], "no message");
    cr_assert(strstr(err.msg, n1), "message '%s' lacks '%s'", err.msg, n1);
    if (n2) cr_assert(strstr(err.msg, n2), "message '%s' lacks '%s'", err.msg, n2);
    cr_assert_null(m.path, "a failed open must leave the model closed");
}

static int cfg_int(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    cr_assert(cJSON_IsNumber(v), "config key %s missing", key);
    return v->valueint;
}

static int cfg_list_at(const cJSON *cfg, const char *key, int i) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    cr_assert(cJSON_IsArray(v), "config key %s not a list", key);
    return cJSON_GetArrayItem(v, i)->valueint;
}

static int is_float(st_dtype d) { return d == ST_F32 || d == ST_F16 || d == ST_BF16; }

/* Every float tensor of the folder component bound by its diffusers name
 * through `single` gives the same f32 bytes; then both binders are complete. */
static int compare_component(sd_component *folder, sd_component *single) {
    sd_error err = {0};
    int compared = 0;
    for (int i = 0; i < sd_weights_file_count(folder->weights); i++) {
        const st_file *f = sd_weights_file(folder->weights, i);
        for (int k = 0; k < f->n_tensors; k++) {
            const st_tensor *t = &f->tensors[k];
            if (!is_float(t->dtype)) continue; /* position_ids: ignored by the model */
            cr_assert_leq(t->ndim, SD_TENSOR_MAX_DIMS);
            sd_tensor a, b;
            cr_assert_eq(sd_bind(&folder->binder, &a, t->name, t->ndim, t->shape, &err), 0, "%s", err.msg);
            cr_assert_eq(sd_bind(&single->binder, &b, t->name, t->ndim, t->shape, &err), 0, "%s: %s", t->name, err.msg);
            cr_assert_eq(a.numel, b.numel);
            cr_assert(memcmp(a.data, b.data, (size_t)a.numel * sizeof(float)) == 0, "%s: %s data differs", folder->name,
                      t->name);
            compared++;
        }
    }
    cr_assert_eq(sd_binder_check_complete(&single->binder, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&folder->binder, &err), 0, "%s", err.msg);
    return compared;
}

static void check_equivalence(sd_model *folder, sd_model *single) {
    int n = compare_component(&folder->unet, &single->unet);
    n += compare_component(&folder->vae, &single->vae);
    n += compare_component(&folder->text_encoder, &single->text_encoder);
    /* every tensor of the checkpoint (bar position_ids) was someone's */
    const st_file *f = sd_weights_file(single->shared, 0);
    cr_assert_eq(n, f->n_tensors - 1, "compared %d of %d checkpoint tensors", n, f->n_tensors);
}

/* A temporary pipeline folder whose parts are symlinks to tiny-sd15's, except `skip`. */
static char *fake_folder(const char *const *skip) {
    char *dir = tst_tmpdir();
    char *src = tst_fixture_path("tiny-sd15");
    static const char *const parts[] = {"model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae", NULL};
    for (int i = 0; parts[i]; i++) {
        int skipped = 0;
        for (int k = 0; skip && skip[k]; k++) skipped |= !strcmp(skip[k], parts[i]);
        if (skipped) continue;
        char *from = strf("%s/%s", src, parts[i]), *to = strf("%s/%s", dir, parts[i]);
        cr_assert_eq(symlink(from, to), 0);
        free(from);
        free(to);
    }
    free(src);
    return dir;
}

static void rm_rf(char *dir) {
    sh("rm -rf '%s'%s", dir, NULL);
    free(dir);
}

/* ---- diffusers folders ---- */

Test(model, folder_opens_with_configs) {
    tst_require_fixture("tiny-sd15/model_index.json");
    char *path = tst_fixture_path("tiny-sd15");
    sd_model m;
    open_ok(&m, path, NULL);
    cr_assert_eq(m.kind, SD_MODEL_DIFFUSERS);
    cr_assert_str_eq(m.name, "tiny-sd15");
    cr_assert(m.unet.present && m.vae.present && m.text_encoder.present);
    cr_assert(!m.text_encoder_2.present);
    cr_assert_not(m.is_segmoe);
    cr_assert_eq(cfg_int(m.unet.config, "norm_num_groups"), 16);
    cr_assert_eq(cfg_list_at(m.unet.config, "block_out_channels", 2), 64);
    cr_assert_eq(cfg_int(m.vae.config, "latent_channels"), 4);
    cr_assert_eq(cfg_int(m.text_encoder.config, "num_attention_heads"), 4);
    cr_assert(strstr(m.unet.config_path, "unet/config.json"));
    cr_assert_eq(m.unet.n_files, 1);
    cr_assert(strstr(m.unet.files[0], "unet/diffusion_pytorch_model.safetensors"));
    cr_assert(strstr(m.text_encoder.files[0], "text_encoder/model.safetensors"));
    cr_assert_str_eq(cJSON_GetObjectItem(m.scheduler_config, "_class_name")->valuestring, "PNDMScheduler");
    cr_assert(strstr(m.tokenizer_dir, "tiny-sd15/tokenizer"));
    cr_assert_null(m.tokenizer_2_dir);
    cr_assert_str_eq(cJSON_GetObjectItem(m.model_index, "_class_name")->valuestring, "StableDiffusionPipeline");
    /* binders are ready: prefix "" and identity names */
    sd_tensor t;
    sd_error err = {0};
    int64_t shape[4] = {32, 4, 3, 3};
    cr_assert_eq(sd_bind(&m.unet.binder, &t, "conv_in.weight", 4, shape, &err), 0, "%s", err.msg);
    /* parameter counts as refs/cases.json records them (model.param_counts; that file holds
     * Python's -Infinity, which is not JSON, so the numbers are repeated here) */
    static const int64_t counts[3] = {2446788, 1399879, 1634400};
    for (int i = 0; i < 3; i++) {
        sd_component *c = sd_model_component(&m, i);
        sd_component_stats st;
        sd_component_stats_get(c, &st);
        cr_assert_eq(st.n_params, counts[i], "%s: %lld parameters", c->name, (long long)st.n_params);
        cr_assert_gt(st.file_bytes, st.data_bytes);
    }
    sd_model_close(&m);
    free(path);
}

Test(model, segmoe_folder_is_recognised) {
    tst_require_fixture("moe/tiny-segmoe-2x2/model_index.json");
    char *path = tst_fixture_path("moe/tiny-segmoe-2x2");
    sd_model m;
    open_ok(&m, path, NULL);
    cr_assert(m.is_segmoe);
    cr_assert_str_eq(cJSON_GetObjectItem(m.scheduler_config, "_class_name")->valuestring, "DDPMScheduler");
    sd_model_close(&m);
    free(path);
}

Test(model, fp16_variant) {
    tst_require_fixture("tiny-sd15/unet/diffusion_pytorch_model.fp16.safetensors");
    char *path = tst_fixture_path("tiny-sd15");
    sd_model_options opt = {.variant = "fp16"};
    sd_model m, ref;
    open_ok(&m, path, &opt);
    open_ok(&ref, path, NULL);
    cr_assert(m.unet.variant_used);
    cr_assert(strstr(m.unet.files[0], "diffusion_pytorch_model.fp16.safetensors"));
    /* components without the variant fall back to their default file, as diffusers does */
    cr_assert_not(m.vae.variant_used);
    cr_assert(strstr(m.vae.files[0], "vae/diffusion_pytorch_model.safetensors"));
    sd_tensor a, b;
    sd_error err = {0};
    int64_t shape[2] = {128, 32};
    cr_assert_eq(sd_bind(&m.unet.binder, &a, "time_embedding.linear_1.weight", 2, shape, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_bind(&ref.unet.binder, &b, "time_embedding.linear_1.weight", 2, shape, &err), 0, "%s", err.msg);
    for (int i = 0; i < 128 * 32; i++)
        cr_assert(fabsf(a.data[i] - b.data[i]) <= 1e-3f * fabsf(b.data[i]) + 1e-6f, "[%d] %g vs %g", i, a.data[i],
                  b.data[i]);
    sd_model_close(&m);
    sd_model_close(&ref);
    sd_model_options bad = {.variant = "bf16"};
    open_fails(path, &bad, "variant 'bf16'", "no component");
    free(path);
}

Test(model, sharded_weights) {
    tst_require_fixture("tiny-sd15/unet/diffusion_pytorch_model.safetensors");
    static const char *const skip[] = {"unet", NULL};
    char *dir = fake_folder(skip);
    char *unet = strf("%s/unet", dir, NULL);
    cr_assert_eq(mkdir(unet, 0755), 0);
    char *ucfg = tst_fixture_path("tiny-sd15/unet/config.json");
    sh("cp '%s' '%s/'", ucfg, unet);
    free(ucfg);
    /* split the f32 UNet into two shards + index */
    st_file src;
    tst_open_ref(&src, "tiny-sd15/unet/diffusion_pytorch_model.safetensors");
    int n = src.n_tensors, half = n / 2;
    st_write_entry *e = calloc((size_t)n, sizeof *e);
    cJSON *index = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(index, "weight_map");
    for (int i = 0; i < n; i++) {
        const st_tensor *t = &src.tensors[i];
        e[i] = (st_write_entry){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        cJSON_AddStringToObject(wm, t->name, i < half ? "diffusion_pytorch_model-00001-of-00002.safetensors"
                                                      : "diffusion_pytorch_model-00002-of-00002.safetensors");
    }
    sd_error err = {0};
    char *s1 = strf("%s/%s", unet, "diffusion_pytorch_model-00001-of-00002.safetensors");
    char *s2 = strf("%s/%s", unet, "diffusion_pytorch_model-00002-of-00002.safetensors");
    cr_assert_eq(st_write(s1, e, half, NULL, NULL, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(st_write(s2, e + half, n - half, NULL, NULL, 0, &err), 0, "%s", err.msg);
    char *idx_path = strf("%s/%s", unet, "diffusion_pytorch_model.safetensors.index.json");
    char *text = cJSON_Print(index);
    write_text(idx_path, text);
    free(text);

    sd_model m, ref;
    open_ok(&m, dir, NULL);
    cr_assert_eq(m.unet.n_files, 2);
    char *ref_path = tst_fixture_path("tiny-sd15");
    open_ok(&ref, ref_path, NULL);
    compare_component(&ref.unet, &m.unet);
    sd_model_close(&m);
    sd_model_close(&ref);

    /* an index naming a tensor its shard lacks */
    cJSON_AddStringToObject(wm, "not.a.tensor", "diffusion_pytorch_model-00001-of-00002.safetensors");
    text = cJSON_Print(index);
    write_text(idx_path, text);
    free(text);
    open_fails(dir, NULL, "not.a.tensor", "index.json");
    /* a shard outside the folder */
    cJSON_ReplaceItemInObject(wm, "not.a.tensor", cJSON_CreateString("../x.safetensors"));
    text = cJSON_Print(index);
    write_text(idx_path, text);
    free(text);
    open_fails(dir, NULL, "weight_map", "file name of a shard");

    cJSON_Delete(index);
    free(e);
    st_close(&src);
    free(s1), free(s2), free(idx_path), free(unet), free(ref_path);
    rm_rf(dir);
}

Test(model, missing_component_and_files) {
    tst_require_fixture("tiny-sd15/model_index.json");
    static const char *const no_vae[] = {"vae", NULL};
    char *dir = fake_folder(no_vae);
    open_fails(dir, NULL, "vae", "missing component folder");
    /* vae folder with a config but no weights */
    char *vae = strf("%s/vae", dir, NULL);
    cr_assert_eq(mkdir(vae, 0755), 0);
    char *vcfg = tst_fixture_path("tiny-sd15/vae/config.json");
    sh("cp '%s' '%s/'", vcfg, vae);
    free(vcfg);
    open_fails(dir, NULL, "vae", "no weights");
    /* only a pickle */
    char *bin = strf("%s/%s", vae, "diffusion_pytorch_model.bin");
    write_text(bin, "not really a pickle");
    open_fails(dir, NULL, "diffusion_pytorch_model.bin", "convert");
    free(bin), free(vae);
    rm_rf(dir);

    /* model_index without a unet */
    static const char *const no_index[] = {"model_index.json", NULL};
    dir = fake_folder(no_index);
    char *idx = strf("%s/model_index.json", dir, NULL);
    write_text(idx, "{\"_class_name\": \"StableDiffusionPipeline\", \"vae\": [\"diffusers\", \"AutoencoderKL\"]}");
    open_fails(dir, NULL, "model_index.json", "'unet'");
    unlink(idx);
    open_fails(dir, NULL, "model_index.json missing", NULL);
    free(idx);
    rm_rf(dir);

    open_fails("/nonexistent/model", NULL, "/nonexistent/model", "no such");
}

Test(model, bad_configs_name_file_and_key) {
    tst_require_fixture("tiny-sd15/model_index.json");
    static const char *const no_unet[] = {"unet", NULL};
    char *dir = fake_folder(no_unet);
    char *unet = strf("%s/unet", dir, NULL), *cfg = strf("%s/unet/config.json", dir, NULL);
    cr_assert_eq(mkdir(unet, 0755), 0);
    char *w = tst_fixture_path("tiny-sd15/unet/diffusion_pytorch_model.safetensors");
    char *wl = strf("%s/%s", unet, "diffusion_pytorch_model.safetensors");
    cr_assert_eq(symlink(w, wl), 0);
    write_text(cfg, "{\"block_out_channels\": [32, 32, 64, 64], \"norm_num_groups\": ");
    open_fails(dir, NULL, "unet/config.json", "not valid JSON");
    write_text(cfg, "{\"block_out_channels\": \"wide\"}");
    open_fails(dir, NULL, "unet/config.json", "'block_out_channels'");
    write_text(cfg, "{\"block_out_channels\": [32, 32, 64, 64], \"norm_num_groups\": \"16\"}");
    open_fails(dir, NULL, "unet/config.json", "'norm_num_groups': expected an integer");
    write_text(cfg, "{\"block_out_channels\": [32, 64], \"down_block_types\": [\"DownBlock2D\"]}");
    open_fails(dir, NULL, "'down_block_types'", "expected 2");
    write_text(cfg, "{\"block_out_channels\": [32, 64], \"up_block_types\": [\"UpBlock2D\", \"KUpBlock2D\"]}");
    open_fails(dir, NULL, "'up_block_types'[1]", "KUpBlock2D");
    free(w), free(wl), free(unet), free(cfg);
    rm_rf(dir);
}

Test(model, shape_mismatch_names_tensor) {
    tst_require_fixture("tiny-sd15/model_index.json");
    char *path = tst_fixture_path("tiny-sd15");
    sd_model m;
    open_ok(&m, path, NULL);
    sd_tensor t;
    sd_error err = {0};
    int64_t shape[4] = {320, 4, 3, 3};
    cr_assert_neq(sd_bind(&m.unet.binder, &t, "conv_in.weight", 4, shape, &err), 0);
    cr_assert(strstr(err.msg, "diffusion_pytorch_model.safetensors") && strstr(err.msg, "conv_in.weight") &&
                  strstr(err.msg, "[32, 4, 3, 3]") && strstr(err.msg, "[320, 4, 3, 3]"),
              "%s", err.msg);
    sd_model_close(&m);
    free(path);
}

/* ---- single-file checkpoints ---- */

Test(model, single_file_with_model_config_folder_binds_like_folder) {
    tst_require_fixture("tiny-sd15.safetensors");
    char *ckpt = tst_fixture_path("tiny-sd15.safetensors"), *folder = tst_fixture_path("tiny-sd15");
    sd_model_options opt = {.model_config = folder};
    sd_model s, f;
    open_ok(&s, ckpt, &opt);
    open_ok(&f, folder, NULL);
    cr_assert_eq(s.kind, SD_MODEL_SINGLE_FILE);
    cr_assert_str_eq(s.name, "tiny-sd15");
    /* the folder's configs are used as they are: groups 16, text heads 4 */
    cr_assert_eq(cfg_int(s.unet.config, "norm_num_groups"), 16);
    cr_assert_eq(cfg_int(s.vae.config, "norm_num_groups"), 16);
    cr_assert_eq(cfg_int(s.text_encoder.config, "num_attention_heads"), 4);
    cr_assert(strstr(s.unet.config_path, "tiny-sd15/unet/config.json"));
    cr_assert(strstr(s.tokenizer_dir, "tiny-sd15/tokenizer"));
    cr_assert_str_eq(cJSON_GetObjectItem(s.scheduler_config, "_class_name")->valuestring, "PNDMScheduler");
    cr_assert_str_eq(s.unet.binder.prefix, "model.diffusion_model.");
    cr_assert_str_eq(s.vae.binder.prefix, "first_stage_model.");
    check_equivalence(&f, &s);
    sd_model_close(&s);
    sd_model_close(&f);
    free(ckpt), free(folder);
}

Test(model, single_file_with_yaml_beside_binds_like_folder) {
    tst_require_fixture("tiny-sd15.yaml");
    char *ckpt = tst_fixture_path("tiny-sd15.safetensors"), *folder = tst_fixture_path("tiny-sd15");
    sd_model_options opt = {.assets_dir = folder}; /* tokenizer/ lives there */
    sd_model s, f;
    open_ok(&s, ckpt, &opt); /* picks up tiny-sd15.yaml (same stem) */
    open_ok(&f, folder, NULL);
    cr_assert(strstr(s.arch_source, "tiny-sd15.yaml"), "%s", s.arch_source);
    cr_assert(strstr(s.unet.config_path, "tiny-sd15.yaml"));
    const cJSON *u = s.unet.config;
    cr_assert_eq(cfg_list_at(u, "block_out_channels", 0), 32);
    cr_assert_eq(cfg_list_at(u, "block_out_channels", 3), 64);
    cr_assert_eq(cfg_int(u, "layers_per_block"), 2);
    cr_assert_eq(cfg_int(u, "attention_head_dim"), 8);
    cr_assert_eq(cfg_int(u, "cross_attention_dim"), 32);
    cr_assert_eq(cfg_int(u, "norm_num_groups"), 32); /* an LDM yaml cannot say 16 */
    cr_assert_eq(cfg_int(u, "sample_size"), 16);
    const cJSON *down = cJSON_GetObjectItem(u, "down_block_types"), *up = cJSON_GetObjectItem(u, "up_block_types");
    cr_assert_str_eq(cJSON_GetArrayItem(down, 2)->valuestring, "CrossAttnDownBlock2D");
    cr_assert_str_eq(cJSON_GetArrayItem(down, 3)->valuestring, "DownBlock2D");
    cr_assert_str_eq(cJSON_GetArrayItem(up, 0)->valuestring, "UpBlock2D");
    cr_assert_str_eq(cJSON_GetArrayItem(up, 1)->valuestring, "CrossAttnUpBlock2D");
    cr_assert_eq(cfg_list_at(s.vae.config, "block_out_channels", 2), 64);
    cr_assert_float_eq(cJSON_GetObjectItem(s.vae.config, "scaling_factor")->valuedouble, 0.18215, 1e-12);
    /* CLIP sizes come from the weights */
    cr_assert_eq(cfg_int(s.text_encoder.config, "hidden_size"), 32);
    cr_assert_eq(cfg_int(s.text_encoder.config, "num_hidden_layers"), 4);
    cr_assert_eq(cfg_int(s.text_encoder.config, "intermediate_size"), 128);
    cr_assert_float_eq(cJSON_GetObjectItem(s.scheduler_config, "beta_end")->valuedouble, 0.012, 1e-12);
    cr_assert(strstr(s.tokenizer_dir, "tiny-sd15/tokenizer"));
    check_equivalence(&f, &s);
    sd_model_close(&s);
    sd_model_close(&f);
    free(ckpt), free(folder);
}

Test(model, single_file_without_config_reads_sizes_from_weights) {
    tst_require_fixture("tiny-sd15.safetensors");
    char *dir = tst_tmpdir(), *folder = tst_fixture_path("tiny-sd15");
    char *ckpt = strf("%s/%s", dir, "my-model.safetensors");
    char *src = tst_fixture_path("tiny-sd15.safetensors");
    cr_assert_eq(symlink(src, ckpt), 0);
    sd_model_options opt = {.assets_dir = folder};
    sd_model s, f;
    open_ok(&s, ckpt, &opt);
    open_ok(&f, folder, NULL);
    cr_assert_str_eq(s.name, "my-model");
    cr_assert(strstr(s.arch_source, "defaults"), "%s", s.arch_source);
    cr_assert_eq(cfg_list_at(s.unet.config, "block_out_channels", 1), 32);
    cr_assert_eq(cfg_int(s.unet.config, "cross_attention_dim"), 32);
    cr_assert_eq(cfg_list_at(s.vae.config, "block_out_channels", 0), 32);
    check_equivalence(&f, &s);
    sd_model_close(&s);
    sd_model_close(&f);
    free(ckpt), free(src), free(folder);
    rm_rf(dir);
}

Test(model, yaml_that_disagrees_with_weights) {
    tst_require_fixture("tiny-sd15.yaml");
    char *dir = tst_tmpdir(), *folder = tst_fixture_path("tiny-sd15");
    char *yaml_src = tst_fixture_path("tiny-sd15.yaml");
    char *yaml = strf("%s/%s", dir, "wrong.yaml");
    /* model_channels 32 -> 48 */
    sh("(sed 's/model_channels: 32/model_channels: 48/' '%s' > '%s')", yaml_src, yaml);
    char *ckpt = tst_fixture_path("tiny-sd15.safetensors");
    sd_model_options opt = {.model_config = yaml, .assets_dir = folder};
    open_fails(ckpt, &opt, "model.diffusion_model.input_blocks.1.0.in_layers.2.weight", "wrong.yaml says 48");
    /* attention on level 3 that the weights do not have */
    sh("(sed 's/attention_resolutions: \\[1, 2, 4\\]/attention_resolutions: [1, 2, 4, 8]/' '%s' > '%s')", yaml_src, yaml);
    open_fails(ckpt, &opt, "input_blocks.10.1.proj_in.weight", "CrossAttnDownBlock2D");
    /* a VAE with 3 levels */
    sh("(sed 's/ch_mult: \\[1, 1, 2, 2\\]/ch_mult: [1, 1, 2]/' '%s' > '%s')", yaml_src, yaml);
    open_fails(ckpt, &opt, "first_stage_model.encoder.down.3.block.0.conv1.weight", "3 levels");
    /* an SD 2.x yaml */
    sh("(sed 's/FrozenCLIPEmbedder/FrozenOpenCLIPEmbedder/' '%s' > '%s')", yaml_src, yaml);
    open_fails(ckpt, &opt, "SD 2.x", "not supported yet");
    free(yaml), free(yaml_src), free(ckpt), free(folder);
    rm_rf(dir);
}

/* Writes a small safetensors file with the given (name, shape) entries. */
static void write_ckpt(const char *path, const char *const *names, int n) {
    static float data[64];
    st_write_entry *e = calloc((size_t)n, sizeof *e);
    for (int i = 0; i < n; i++) e[i] = (st_write_entry){names[i], ST_F32, 1, {4}, data};
    sd_error err = {0};
    cr_assert_eq(st_write(path, e, n, NULL, NULL, 0, &err), 0, "%s", err.msg);
    free(e);
}

Test(model, single_file_refusals) {
    char *dir = tst_tmpdir();
    char *p = strf("%s/%s", dir, "model.ckpt");
    write_text(p, "PK\003\004 zip of pickles");
    open_fails(p, NULL, "model.ckpt", "convert it to safetensors");
    free(p);
    p = strf("%s/%s", dir, "renamed.safetensors");
    write_text(p, "\x80\x02}q\x00.");
    open_fails(p, NULL, "pickle", NULL);
    free(p);

    /* a real safetensors file whose header length starts with byte 0x80 is not taken for a pickle */
    p = strf("%s/%s", dir, "len80.safetensors");
    char blob[8 + 128 + 4] = {(char)0x80};
    int hl = snprintf(blob + 8, 129, "{\"model.diffusion_model.x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}");
    memset(blob + 8 + hl, ' ', (size_t)(128 - hl));
    FILE *fp = fopen(p, "wb");
    fwrite(blob, 1, sizeof blob, fp);
    fclose(fp);
    sd_model m;
    sd_error err = {0};
    cr_assert_neq(sd_model_open(&m, p, NULL, &err), 0);
    cr_assert(strstr(err.msg, "first_stage_model") && !strstr(err.msg, "pickle"), "%s", err.msg);
    free(p);

    static const char *const sd2[] = {"model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.x",
                                      "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"};
    p = strf("%s/%s", dir, "sd2.safetensors");
    write_ckpt(p, sd2, 3);
    open_fails(p, NULL, "SD 2.x", "not supported yet");
    free(p);
    /* SDXL files are read (tests/test_sdxl_single_file.c); a refiner is not */
    static const char *const sdxl[] = {"model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.x",
                                       "conditioner.embedders.0.model.transformer.resblocks.0.ln_1.weight"};
    p = strf("%s/%s", dir, "sdxl.safetensors");
    write_ckpt(p, sdxl, 3);
    open_fails(p, NULL, "SDXL refiner", "not supported");
    free(p);
    static const char *const diffusers_unet[] = {"conv_in.weight", "conv_out.weight"};
    p = strf("%s/%s", dir, "unet.safetensors");
    write_ckpt(p, diffusers_unet, 2);
    open_fails(p, NULL, "model.diffusion_model.", "not a CompVis/LDM");
    sd_model_options opt = {.variant = "fp16"};
    open_fails(p, &opt, "--variant", "diffusers folders");
    free(p);
    rm_rf(dir);
}

/* ---- keymap ---- */

static void unet_key_is(const ldm_unet_layout *lay, const char *name, const char *want) {
    char out[256];
    int rc = ldm_unet_key(lay, name, out, sizeof out);
    if (!want) {
        cr_assert_neq(rc, 0, "%s should have no counterpart, got %s", name, out);
        return;
    }
    cr_assert_eq(rc, 0, "%s: no counterpart", name);
    cr_assert_str_eq(out, want, "%s", name);
}

static void vae_key_is(const ldm_vae_layout *lay, const char *name, const char *want) {
    char out[256];
    int rc = ldm_vae_key(lay, name, out, sizeof out);
    if (!want) {
        cr_assert_neq(rc, 0, "%s should have no counterpart", name);
        return;
    }
    cr_assert_eq(rc, 0, "%s: no counterpart", name);
    cr_assert_str_eq(out, want, "%s", name);
}

/* SD 1.5 names as diffusers' convert_diffusers_to_original_stable_diffusion.py pairs them. */
Test(keymap, unet_sd15_layout) {
    ldm_unet_layout sd15 = {4, {2, 2, 2, 2}, {0, 1, 1, 1}};
    unet_key_is(&sd15, "conv_in.weight", "input_blocks.0.0.weight");
    unet_key_is(&sd15, "time_embedding.linear_2.bias", "time_embed.2.bias");
    unet_key_is(&sd15, "conv_norm_out.weight", "out.0.weight");
    unet_key_is(&sd15, "down_blocks.0.resnets.1.time_emb_proj.weight", "input_blocks.2.0.emb_layers.1.weight");
    unet_key_is(&sd15, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight");
    unet_key_is(&sd15, "down_blocks.2.downsamplers.0.conv.weight", "input_blocks.9.0.op.weight");
    unet_key_is(&sd15, "down_blocks.3.resnets.1.conv2.bias", "input_blocks.11.0.out_layers.3.bias");
    unet_key_is(&sd15, "down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight");
    unet_key_is(&sd15, "mid_block.resnets.1.norm1.weight", "middle_block.2.in_layers.0.weight");
    unet_key_is(&sd15, "mid_block.attentions.0.proj_out.bias", "middle_block.1.proj_out.bias");
    unet_key_is(&sd15, "up_blocks.0.resnets.2.conv1.weight", "output_blocks.2.0.in_layers.2.weight");
    unet_key_is(&sd15, "up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight");
    unet_key_is(&sd15, "up_blocks.1.upsamplers.0.conv.weight", "output_blocks.5.2.conv.weight");
    unet_key_is(&sd15, "up_blocks.3.attentions.2.norm.weight", "output_blocks.11.1.norm.weight");
    /* no counterpart */
    unet_key_is(&sd15, "down_blocks.3.downsamplers.0.conv.weight", NULL);
    unet_key_is(&sd15, "up_blocks.3.upsamplers.0.conv.weight", NULL);
    unet_key_is(&sd15, "down_blocks.0.resnets.2.conv1.weight", NULL);
    unet_key_is(&sd15, "up_blocks.0.attentions.0.norm.weight", NULL);
    unet_key_is(&sd15, "down_blocks.4.resnets.0.conv1.weight", NULL);
    unet_key_is(&sd15, "down_blocks.01.resnets.0.conv1.weight", NULL);
    unet_key_is(&sd15, "down_blocks.0.resnets.0.conv1", NULL);
    unet_key_is(&sd15, "class_embedding.linear_1.weight", NULL);
    unet_key_is(&sd15, "add_embedding.linear_1.weight", "label_emb.0.0.weight"); /* SDXL text_time */
    unet_key_is(&sd15, "conv_in.weight.extra", NULL);
}

Test(keymap, unet_other_layouts) {
    ldm_unet_layout three = {3, {3, 1, 2}, {0, 1, 1}};
    /* input: 0 conv_in | 1,2,3 level0 | 4 down | 5 level1 | 6 down | 7,8 level2 */
    unet_key_is(&three, "down_blocks.0.downsamplers.0.conv.weight", "input_blocks.4.0.op.weight");
    unet_key_is(&three, "down_blocks.1.resnets.0.conv1.weight", "input_blocks.5.0.in_layers.2.weight");
    unet_key_is(&three, "down_blocks.1.downsamplers.0.conv.bias", "input_blocks.6.0.op.bias");
    unet_key_is(&three, "down_blocks.2.attentions.1.proj_in.weight", "input_blocks.8.1.proj_in.weight");
    /* output: up0 = level2 (3 items) 0..2 | up1 = level1 (2 items) 3,4 | up2 = level0 (4 items) 5..8 */
    unet_key_is(&three, "up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight");
    unet_key_is(&three, "up_blocks.1.resnets.1.norm2.weight", "output_blocks.4.0.out_layers.0.weight");
    unet_key_is(&three, "up_blocks.1.upsamplers.0.conv.weight", "output_blocks.4.2.conv.weight");
    unet_key_is(&three, "up_blocks.2.attentions.3.proj_out.weight", "output_blocks.8.1.proj_out.weight");
    unet_key_is(&three, "up_blocks.2.resnets.4.conv1.weight", NULL);
}

/* For any layout every diffusers name maps to a distinct LDM key, and the
 * block indices fill input_blocks / output_blocks exactly as LDM's UNetModel
 * builds them. */
Test(keymap, unet_layouts_are_bijective) {
    static const ldm_unet_layout layouts[] = {
        {1, {1}, {0}}, {2, {1, 3}, {1, 0}}, {3, {3, 1, 2}, {0, 1, 1}}, {4, {2, 2, 2, 2}, {0, 1, 1, 1}},
        {5, {2, 3, 1, 2, 2}, {1, 0, 1, 0, 1}},
    };
    static const char *const parts[] = {"norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut"};
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; li++) {
        const ldm_unet_layout *lay = &layouts[li];
        int L = lay->n_levels, cap = 4096, n = 0;
        char (*keys)[96] = calloc((size_t)cap, 96), name[128];
        int max_in = 0, max_out = -1, idx;
#define ADD(...)                                                                         \
    do {                                                                                 \
        snprintf(name, sizeof name, __VA_ARGS__);                                        \
        cr_assert_eq(ldm_unet_key(lay, name, keys[n], 96), 0, "layout %zu: %s", li, name); \
        if (sscanf(keys[n], "input_blocks.%d.", &idx) == 1 && idx > max_in) max_in = idx; \
        if (sscanf(keys[n], "output_blocks.%d.", &idx) == 1 && idx > max_out) max_out = idx; \
        n++;                                                                             \
    } while (0)
        for (int i = 0; i < L; i++) {
            for (int j = 0; j < lay->layers[i]; j++) {
                for (int p = 0; p < 6; p++) ADD("down_blocks.%d.resnets.%d.%s.weight", i, j, parts[p]);
                ADD("down_blocks.%d.attentions.%d.proj_in.weight", i, j);
            }
            if (i < L - 1) ADD("down_blocks.%d.downsamplers.0.conv.weight", i);
            for (int j = 0; j <= lay->layers[L - 1 - i]; j++) {
                for (int p = 0; p < 6; p++) ADD("up_blocks.%d.resnets.%d.%s.weight", i, j, parts[p]);
                if (lay->up_attn[i]) ADD("up_blocks.%d.attentions.%d.proj_in.weight", i, j);
            }
            if (i < L - 1) ADD("up_blocks.%d.upsamplers.0.conv.weight", i);
        }
#undef ADD
        int n_in = 1, n_out = 0;
        for (int i = 0; i < L; i++) n_in += lay->layers[i] + (i < L - 1), n_out += lay->layers[i] + 1;
        cr_assert_eq(max_in, n_in - 1, "layout %zu: input_blocks end at %d, expected %d", li, max_in, n_in - 1);
        cr_assert_eq(max_out, n_out - 1, "layout %zu: output_blocks end at %d, expected %d", li, max_out, n_out - 1);
        for (int a = 0; a < n; a++)
            for (int b = a + 1; b < n; b++) cr_assert_str_neq(keys[a], keys[b], "layout %zu: two names map to %s", li, keys[a]);
        free(keys);
    }
}

Test(keymap, vae) {
    ldm_vae_layout four = {4};
    vae_key_is(&four, "encoder.conv_in.weight", "encoder.conv_in.weight");
    vae_key_is(&four, "encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.weight");
    vae_key_is(&four, "encoder.down_blocks.2.downsamplers.0.conv.bias", "encoder.down.2.downsample.conv.bias");
    vae_key_is(&four, "encoder.down_blocks.3.downsamplers.0.conv.bias", NULL);
    vae_key_is(&four, "encoder.mid_block.attentions.0.to_out.0.weight", "encoder.mid.attn_1.proj_out.weight");
    vae_key_is(&four, "decoder.mid_block.attentions.0.group_norm.bias", "decoder.mid.attn_1.norm.bias");
    vae_key_is(&four, "decoder.mid_block.attentions.0.query.weight", "decoder.mid.attn_1.q.weight");
    vae_key_is(&four, "decoder.mid_block.resnets.1.conv2.weight", "decoder.mid.block_2.conv2.weight");
    vae_key_is(&four, "decoder.up_blocks.0.resnets.2.conv1.weight", "decoder.up.3.block.2.conv1.weight");
    vae_key_is(&four, "decoder.up_blocks.2.upsamplers.0.conv.weight", "decoder.up.1.upsample.conv.weight");
    vae_key_is(&four, "decoder.up_blocks.3.upsamplers.0.conv.weight", NULL);
    vae_key_is(&four, "decoder.conv_norm_out.weight", "decoder.norm_out.weight");
    vae_key_is(&four, "post_quant_conv.bias", "post_quant_conv.bias");
    vae_key_is(&four, "decoder.down_blocks.0.resnets.0.conv1.weight", NULL);
    ldm_vae_layout two = {2};
    vae_key_is(&two, "decoder.up_blocks.0.resnets.0.norm1.weight", "decoder.up.1.block.0.norm1.weight");
}

Test(keymap, map_fns_are_interned) {
    ldm_unet_layout a = {4, {2, 2, 2, 2}, {0, 1, 1, 1}}, b = {4, {2, 2, 2, 2}, {0, 1, 1, 0}};
    sd_name_map_fn fa, fa2, fb;
    sd_error err = {0};
    cr_assert_eq(ldm_unet_map_fn(&a, &fa, &err), 0);
    cr_assert_eq(ldm_unet_map_fn(&a, &fa2, &err), 0);
    cr_assert_eq(ldm_unet_map_fn(&b, &fb, &err), 0);
    cr_assert(fa == fa2 && fa != fb);
    char out[128];
    int si = -1, sc = -1;
    cr_assert_eq(fa("up_blocks.0.upsamplers.0.conv.weight", out, sizeof out, &si, &sc), 0);
    cr_assert_str_eq(out, "output_blocks.2.1.conv.weight");
    cr_assert(si == 0 && sc == 0);
    cr_assert_eq(fb("up_blocks.3.attentions.0.norm.weight", out, sizeof out, &si, &sc), -1);
    ldm_unet_layout bad = {9, {0}, {0}};
    cr_assert_neq(ldm_unet_map_fn(&bad, &fa, &err), 0);
}

/* ---- LDM yaml ---- */

Test(ldm_yaml, scalars_lists_and_errors) {
    const char *text = "model:\n"
                       "  params:\n"
                       "    linear_start: 0.00085\n"
                       "    base_learning_rate: 1.0e-04\n"
                       "    timesteps: 1000\n"
                       "    use_ema: False\n"
                       "    flag: true\n"
                       "    nothing: ~\n"
                       "    empty:\n"
                       "    key: \"jpg\"\n"
                       "    quoted_number: '12'\n"
                       "    mult: [1, 2, 4]\n"
                       "    block:\n"
                       "      - 3\n"
                       "      - -7\n";
    cJSON *y;
    sd_error err = {0};
    cr_assert_eq(ldm_yaml_parse(text, strlen(text), "t.yaml", &y, &err), 0, "%s", err.msg);
    const cJSON *p = cJSON_GetObjectItem(cJSON_GetObjectItem(y, "model"), "params");
    cr_assert_float_eq(cJSON_GetObjectItem(p, "linear_start")->valuedouble, 0.00085, 1e-15);
    cr_assert_float_eq(cJSON_GetObjectItem(p, "base_learning_rate")->valuedouble, 1e-4, 1e-15);
    cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(p, "timesteps")));
    cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(p, "use_ema")));
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(p, "flag")));
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(p, "nothing")));
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(p, "empty")));
    cr_assert_str_eq(cJSON_GetObjectItem(p, "key")->valuestring, "jpg");
    cr_assert_str_eq(cJSON_GetObjectItem(p, "quoted_number")->valuestring, "12");
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(p, "mult")), 3);
    cr_assert_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(p, "block"), 1)->valueint, -7);
    int v;
    cr_assert_neq(sd_json_int(p, "t.yaml", "key", 0, &v, &err), 0); /* typed reads work on it */
    cJSON_Delete(y);

    const char *bad = "model:\n  params: [1, 2\n  x: 3\n";
    cr_assert_neq(ldm_yaml_parse(bad, strlen(bad), "bad.yaml", &y, &err), 0);
    cr_assert(strstr(err.msg, "bad.yaml: line"), "%s", err.msg);
    const char *list = "- 1\n- 2\n";
    cr_assert_neq(ldm_yaml_parse(list, strlen(list), "list.yaml", &y, &err), 0);
    cr_assert(strstr(err.msg, "mapping"), "%s", err.msg);
    /* alias expansion is bounded */
    const char *bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                       "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                       "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                       "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    cr_assert_neq(ldm_yaml_parse(bomb, strlen(bomb), "bomb.yaml", &y, &err), 0);
    cr_assert(strstr(err.msg, "nodes"), "%s", err.msg);
}

/* Stable Diffusion's own v1-inference.yaml gives SD 1.5's architecture. */
Test(ldm_yaml, v1_inference_is_sd15) {
    const char *text =
        "model:\n  base_learning_rate: 1.0e-04\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n"
        "    linear_start: 0.00085\n    linear_end: 0.0120\n    num_timesteps_cond: 1\n    log_every_t: 200\n"
        "    timesteps: 1000\n    first_stage_key: \"jpg\"\n    cond_stage_key: \"txt\"\n    image_size: 64\n"
        "    channels: 4\n    cond_stage_trainable: false   # comment\n    conditioning_key: crossattn\n"
        "    monitor: val/loss_simple_ema\n    scale_factor: 0.18215\n    use_ema: False\n\n"
        "    scheduler_config: # 10000 warmup steps\n      target: ldm.lr_scheduler.LambdaLinearScheduler\n"
        "      params:\n        warm_up_steps: [ 10000 ]\n        cycle_lengths: [ 10000000000000 ]\n"
        "        f_start: [ 1.e-6 ]\n        f_max: [ 1. ]\n        f_min: [ 1. ]\n\n"
        "    unet_config:\n      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n      params:\n"
        "        image_size: 32 # unused\n        in_channels: 4\n        out_channels: 4\n        model_channels: 320\n"
        "        attention_resolutions: [ 4, 2, 1 ]\n        num_res_blocks: 2\n        channel_mult: [ 1, 2, 4, 4 ]\n"
        "        num_heads: 8\n        use_spatial_transformer: True\n        transformer_depth: 1\n"
        "        context_dim: 768\n        use_checkpoint: True\n        legacy: False\n\n"
        "    first_stage_config:\n      target: ldm.models.autoencoder.AutoencoderKL\n      params:\n"
        "        embed_dim: 4\n        monitor: val/rec_loss\n        ddconfig:\n          double_z: true\n"
        "          z_channels: 4\n          resolution: 256\n          in_channels: 3\n          out_ch: 3\n"
        "          ch: 128\n          ch_mult:\n          - 1\n          - 2\n          - 4\n          - 4\n"
        "          num_res_blocks: 2\n          attn_resolutions: []\n          dropout: 0.0\n"
        "        lossconfig:\n          target: torch.nn.Identity\n\n"
        "    cond_stage_config:\n      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder\n";
    cJSON *y;
    sd_error err = {0};
    cr_assert_eq(ldm_yaml_parse(text, strlen(text), "v1-inference.yaml", &y, &err), 0, "%s", err.msg);
    sd_unet_arch u, ref_u;
    sd_vae_arch v, ref_v;
    sd_ldm_sched sch = {0.001, 0.02, 10, 0};
    sd_unet_arch_sd15(&u);
    sd_vae_arch_sd15(&v);
    u.channels[0] = 7; /* every value must come from the yaml */
    v.channels[0] = 7;
    sd_unet_arch_sd15(&ref_u);
    sd_vae_arch_sd15(&ref_v);
    cr_assert_eq(sd_arch_from_ldm_yaml(y, "v1-inference.yaml", &u, &v, &sch, &err), 0, "%s", err.msg);
    ref_v.sample_size = 256;
    cr_assert(memcmp(&u, &ref_u, sizeof u) == 0, "UNet architecture differs from SD 1.5");
    cr_assert(memcmp(&v, &ref_v, sizeof v) == 0, "VAE architecture differs from SD 1.5");
    cr_assert_float_eq(sch.beta_start, 0.00085, 1e-15);
    cr_assert_float_eq(sch.beta_end, 0.012, 1e-15);
    cr_assert_eq(sch.num_train_timesteps, 1000);
    /* the synthesised config reads back to the same architecture */
    cJSON *cfg = sd_unet_arch_to_config(&u);
    sd_unet_arch back;
    cr_assert_eq(sd_unet_arch_from_config(cfg, "synth", &back, &err), 0, "%s", err.msg);
    cr_assert(memcmp(&u, &back, sizeof u) == 0, "UNet config round trip");
    cJSON_Delete(cfg);
    cfg = sd_vae_arch_to_config(&v);
    sd_vae_arch vback;
    cr_assert_eq(sd_vae_arch_from_config(cfg, "synth", &vback, &err), 0, "%s", err.msg);
    cr_assert(memcmp(&v, &vback, sizeof v) == 0, "VAE config round trip");
    cJSON_Delete(cfg);
    cJSON_Delete(y);
}

Test(ldm_yaml, fixture_file_loads) {
    tst_require_fixture("tiny-sd15.yaml");
    char *p = tst_fixture_path("tiny-sd15.yaml");
    cJSON *y;
    sd_error err = {0};
    cr_assert_eq(ldm_yaml_load(p, &y, &err), 0, "%s", err.msg);
    const cJSON *u = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(y, "model"), "params"), "unet_config"), "params");
    cr_assert_eq(cJSON_GetObjectItem(u, "model_channels")->valueint, 32);
    cr_assert_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(u, "attention_resolutions"), 2)->valueint, 4);
    cJSON_Delete(y);
    free(p);
    cr_assert_neq(ldm_yaml_load("/nonexistent.yaml", &y, &err), 0);
    cr_assert(strstr(err.msg, "/nonexistent.yaml"));
}

/* ---- hashing ---- */

static void sha256sum_of(const char *path, char hex[65]) {
    char *dir = tst_tmpdir();
    char *out = strf("%s/%s", dir, "sum.txt");
    char *cmd = strf("sha256sum '%s'%s", path, NULL);
    cr_assert_eq(tst_run(cmd, out, NULL), 0, "sha256sum failed");
    FILE *fp = fopen(out, "r");
    cr_assert_not_null(fp);
    cr_assert_eq(fscanf(fp, "%64s", hex), 1);
    fclose(fp);
    free(out), free(cmd);
    rm_rf(dir);
}

Test(sha256, buffer_and_file) {
    char hex[65], ref[65];
    sd_error err = {0};
    cr_assert_eq(sd_sha256_buffer("abc", 3, hex, &err), 0);
    cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    cr_assert_eq(sd_sha256_buffer(NULL, 0, hex, &err), 0);
    cr_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    char *dir = tst_tmpdir(), *p = strf("%s/%s", dir, "data.bin");
    FILE *fp = fopen(p, "wb");
    for (int i = 0; i < 3000000; i++) fputc((int)(((unsigned)i * 7919u) & 255u), fp); /* crosses the 1 MB read size */
    fclose(fp);
    cr_assert_eq(sd_sha256_file(p, hex, &err), 0, "%s", err.msg);
    sha256sum_of(p, ref);
    cr_assert_str_eq(hex, ref);
    cr_assert_neq(sd_sha256_file("/nonexistent", hex, &err), 0);
    cr_assert(strstr(err.msg, "/nonexistent"));
    free(p);
    rm_rf(dir);
}

Test(sha256, model_hash) {
    tst_require_fixture("tiny-sd15/unet/diffusion_pytorch_model.safetensors");
    char *folder = tst_fixture_path("tiny-sd15"), *unet = tst_fixture_path("tiny-sd15/unet/diffusion_pytorch_model.safetensors");
    char ref[65], h[11];
    sd_model m;
    sd_error err = {0};
    open_ok(&m, folder, NULL);
    cr_assert_eq(sd_model_hash(&m, h, &err), 0, "%s", err.msg);
    sha256sum_of(unet, ref);
    ref[10] = '\0';
    cr_assert_str_eq(h, ref);
    sd_model_close(&m);
    free(folder), free(unet);
}

/* ---- sdmoe info ---- */

static int run_info(char **argv, int argc, const char *out_path) {
    fflush(stdout);
    int saved = dup(1);
    FILE *fp = freopen(out_path, "w", stdout);
    cr_assert_not_null(fp);
    int rc = cli_info(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    return rc;
}

static char *slurp(const char *path) {
    char *buf = calloc(1, 1 << 16);
    FILE *fp = fopen(path, "r");
    cr_assert_not_null(fp);
    size_t n = fread(buf, 1, (1 << 16) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

Test(info, describes_folder_single_file_and_moe) {
    tst_require_fixture("moe/tiny-segmoe-2x2/model_index.json");
    char *dir = tst_tmpdir(), *out = strf("%s/%s", dir, "out.txt");
    char *folder = tst_fixture_path("tiny-sd15"), *ckpt = tst_fixture_path("tiny-sd15.safetensors");
    char *moe = tst_fixture_path("moe/tiny-segmoe-2x2");

    char *a1[] = {"info", "-m", folder, "--variant", "fp16", NULL};
    cr_assert_eq(run_info(a1, 5, out), 0);
    char *text = slurp(out);
    cr_assert(strstr(text, "diffusers folder") && strstr(text, "unet: UNet2DConditionModel") &&
                  strstr(text, "diffusion_pytorch_model.fp16.safetensors") && strstr(text, "F16 ") &&
                  strstr(text, "norm_num_groups 16") && strstr(text, "scheduler: PNDMScheduler") &&
                  strstr(text, "hash "),
              "%s", text);
    free(text);

    char *a2[] = {"info", "-m", ckpt, "--model-config", folder, "--no-hash", NULL};
    cr_assert_eq(run_info(a2, 6, out), 0);
    text = slurp(out);
    cr_assert(strstr(text, "single-file checkpoint") && strstr(text, "model.diffusion_model.") &&
                  strstr(text, "text_encoder: CLIPTextModel"),
              "%s", text);
    free(text);

    char *a3[] = {"info", "-m", moe, "--no-hash", NULL};
    cr_assert_eq(run_info(a3, 4, out), 0);
    text = slurp(out);
    cr_assert(strstr(text, "SegMoE") && strstr(text, "num_experts 2") && strstr(text, "gate tensors in the UNet weights: 105") &&
                  strstr(text, "down_blocks 0..2, up_blocks 1..3") && strstr(text, "scheduler: DDPMScheduler"),
              "%s", text);
    free(text);

    char *a4[] = {"info", "-m", "/nonexistent", NULL};
    cr_assert_eq(run_info(a4, 3, out), 1);
    char *a5[] = {"info", NULL};
    cr_assert_eq(run_info(a5, 1, out), 1);
    char *a6[] = {"info", "--help", NULL};
    cr_assert_eq(run_info(a6, 2, out), 0);
    text = slurp(out);
    cr_assert(strstr(text, "usage: sdmoe info"));
    free(text);
    free(out), free(folder), free(ckpt), free(moe);
    rm_rf(dir);
}
