/* SDXL single-file checkpoints (Stability SGM layout): sdxl/tiny-sdxl is
 * written out as one .safetensors with SGM key names (core/safetensors
 * st_write; UNet/VAE through the LDM tables of core/ldm_keymap, the OpenCLIP
 * text_encoder_2 through an independent test-side inverse table: fused
 * in_proj = cat(q, k, v), text_projection transposed), then opened through
 * sd_model_open with a --model-config folder, an SGM yaml beside the file
 * and the SDXL defaults: every bound tensor of every component must be
 * bit-identical to the folder's.  Also: a UNet forward from the single file
 * against sdxl/refs/unet.safetensors, f16 fused / transposed tensors,
 * missing and mis-shaped keys named in errors, SGM yaml refusals, and
 * `sdmoe info`. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/half.h"
#include "core/json.h"
#include "core/ldm_keymap.h"
#include "core/ldm_yaml.h"
#include "core/model.h"
#include "core/model_arch.h"
#include "core/sgm_keymap.h"
#include "tests/support/test_support.h"
#include "text_encoder/clip_text.h"
#include "unet/unet.h"

#define UNET_ABS 1e-4
#define UNET_REL 1e-4

/* ---- small helpers ---- */

static char *strf2(const char *fmt, const char *a, const char *b) {
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

static void rm_rf(char *dir) {
    char *cmd = strf2("rm -rf '%s'%s", dir, NULL);
    cr_assert_eq(tst_run(cmd, NULL, NULL), 0);
    free(cmd);
    free(dir);
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

static const char *cfg_str(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    cr_assert(cJSON_IsString(v), "config key %s missing", key);
    return v->valuestring;
}

/* ---- writing tiny-sdxl as one SGM checkpoint ---- */

typedef struct ent {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    void *data;
} ent;

typedef struct ckpt {
    ent *e;
    int n, cap;
} ckpt;

typedef struct write_opts {
    const char *skip;       /* file key left out */
    int te2_f16;            /* text_encoder_2's fused in_proj and text_projection stored as F16 */
    int hf_projection;      /* text_projection stored in HF orientation [proj, hidden] (wrong) */
    int short_in_proj;      /* layer 0's in_proj_weight with only q and k (wrong) */
} write_opts;

static void add(ckpt *c, const write_opts *o, const char *name, st_dtype dt, int ndim, const int64_t *shape,
                const void *src, size_t nbytes) {
    if (o && o->skip && !strcmp(o->skip, name)) return;
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 256;
        c->e = realloc(c->e, (size_t)c->cap * sizeof *c->e);
    }
    ent *e = &c->e[c->n++];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->dtype = dt;
    e->ndim = ndim;
    if (ndim > 0) memcpy(e->shape, shape, (size_t)ndim * sizeof(int64_t));
    e->data = malloc(nbytes + 1);
    memcpy(e->data, src, nbytes);
}

/* f32 values as F16 bytes (a new buffer). */
static uint16_t *to_f16(const float *x, size_t n) {
    uint16_t *h = malloc(n * sizeof *h + 1);
    for (size_t i = 0; i < n; i++) h[i] = sd_f32_to_f16(x[i]);
    return h;
}

static void add_f32(ckpt *c, const write_opts *o, const char *name, int ndim, const int64_t *shape, const float *x,
                    int f16) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    if (!f16) {
        add(c, o, name, ST_F32, ndim, shape, x, n * sizeof(float));
        return;
    }
    uint16_t *h = to_f16(x, n);
    add(c, o, name, ST_F16, ndim, shape, h, n * sizeof *h);
    free(h);
}

static void add_tensor(ckpt *c, const write_opts *o, const char *name, const st_tensor *t) {
    add(c, o, name, t->dtype, t->ndim, t->shape, t->data, t->nbytes);
}

static const st_tensor *need(const st_file *f, const char *name) {
    const st_tensor *t = st_find(f, name);
    cr_assert_not_null(t, "%s: no tensor %s", f->path, name);
    cr_assert_eq(t->dtype, ST_F32, "%s: %s is not F32", f->path, name);
    return t;
}

/* The UNet and VAE by the LDM tables (the keymap is table-tested in
 * test_model.c; the SDXL-specific keys are spot-checked in keymap_sdxl). */
static void write_unet_vae(ckpt *c, const write_opts *o) {
    char *cpath = tst_fixture_path("sdxl/tiny-sdxl/unet/config.json");
    cJSON *cfg;
    sd_error err = {0};
    cr_assert_eq(sd_json_load(cpath, &cfg, &err), 0, "%s", err.msg);
    sd_unet_arch ua;
    cr_assert_eq(sd_unet_arch_from_config(cfg, cpath, &ua, &err), 0, "%s", err.msg);
    ldm_unet_layout ul;
    sd_unet_arch_layout(&ua, &ul);
    cJSON_Delete(cfg);
    free(cpath);
    st_file f;
    char key[512], full[600];
    tst_open_ref(&f, "sdxl/tiny-sdxl/unet/diffusion_pytorch_model.safetensors");
    for (int k = 0; k < f.n_tensors; k++) {
        const st_tensor *t = &f.tensors[k];
        cr_assert_eq(ldm_unet_key(&ul, t->name, key, sizeof key), 0, "unet: no LDM name for %s", t->name);
        snprintf(full, sizeof full, SGM_UNET_PREFIX "%s", key);
        add_tensor(c, o, full, t);
    }
    st_close(&f);
    ldm_vae_layout vl = {4};
    tst_open_ref(&f, "sdxl/tiny-sdxl/vae/diffusion_pytorch_model.safetensors");
    for (int k = 0; k < f.n_tensors; k++) {
        const st_tensor *t = &f.tensors[k];
        cr_assert_eq(ldm_vae_key(&vl, t->name, key, sizeof key), 0, "vae: no LDM name for %s", t->name);
        snprintf(full, sizeof full, SGM_VAE_PREFIX "%s", key);
        /* LDM files keep the mid-block attention projections as 1x1 convs */
        int conv = strstr(key, "mid.attn_1.") && t->ndim == 2;
        int64_t shape[4] = {t->shape[0], conv ? t->shape[1] : 0, 1, 1};
        if (conv) add(c, o, full, t->dtype, 4, shape, t->data, t->nbytes);
        else add_tensor(c, o, full, t);
    }
    st_close(&f);
}

/* text_encoder: HF names under conditioner.embedders.0.transformer., plus the
 * int64 position_ids buffer SDXL files carry. */
static void write_te1(ckpt *c, const write_opts *o) {
    st_file f;
    char full[600];
    tst_open_ref(&f, "sdxl/tiny-sdxl/text_encoder/model.safetensors");
    for (int k = 0; k < f.n_tensors; k++) {
        snprintf(full, sizeof full, SGM_CLIP_PREFIX "%s", f.tensors[k].name);
        add_tensor(c, o, full, &f.tensors[k]);
    }
    int64_t ids[77], shape[2] = {1, 77};
    for (int i = 0; i < 77; i++) ids[i] = i;
    add(c, o, SGM_CLIP_PREFIX "text_model.embeddings.position_ids", ST_I64, 2, shape, ids, sizeof ids);
    st_close(&f);
}

/* text_encoder_2 in OpenCLIP naming, written from a test-side table (the
 * inverse of diffusers' convert_open_clip_checkpoint). */
static void write_te2(ckpt *c, const write_opts *o) {
    static const struct {
        const char *hf, *oc;
    } fixed[] = {
        {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
        {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
        {"text_model.final_layer_norm.weight", "ln_final.weight"},
        {"text_model.final_layer_norm.bias", "ln_final.bias"},
    }, parts[] = {
        {"layer_norm1", "ln_1"}, {"layer_norm2", "ln_2"}, {"self_attn.out_proj", "attn.out_proj"},
        {"mlp.fc1", "mlp.c_fc"}, {"mlp.fc2", "mlp.c_proj"},
    };
    static const char *const leaves[2] = {"weight", "bias"}, *const qkv[3] = {"q_proj", "k_proj", "v_proj"};
    st_file f;
    char hf[256], oc[256];
    tst_open_ref(&f, "sdxl/tiny-sdxl/text_encoder_2/model.safetensors");
    int written = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++, written++) {
        snprintf(oc, sizeof oc, SGM_OPENCLIP_PREFIX "%s", fixed[i].oc);
        add_tensor(c, o, oc, need(&f, fixed[i].hf));
    }
    /* text_projection: HF Linear weight [proj, hidden] -> OpenCLIP P [hidden, proj] */
    const st_tensor *tp = need(&f, "text_projection.weight");
    int64_t P = tp->shape[0], H = tp->shape[1];
    const float *w = tp->data;
    float *tr = malloc((size_t)(P * H) * sizeof(float));
    for (int64_t i = 0; i < P; i++)
        for (int64_t j = 0; j < H; j++) tr[j * P + i] = w[i * H + j];
    int64_t pshape[2] = {H, P}, hfshape[2] = {P, H};
    add_f32(c, o, SGM_OPENCLIP_PREFIX "text_projection", 2, o->hf_projection ? hfshape : pshape,
            o->hf_projection ? w : tr, o->te2_f16);
    free(tr);
    written++;
    int layers = 0;
    for (;; layers++) {
        snprintf(hf, sizeof hf, "text_model.encoder.layers.%d.layer_norm1.weight", layers);
        if (!st_find(&f, hf)) break;
        for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++)
            for (int l = 0; l < 2; l++, written++) {
                snprintf(hf, sizeof hf, "text_model.encoder.layers.%d.%s.%s", layers, parts[p].hf, leaves[l]);
                snprintf(oc, sizeof oc, SGM_OPENCLIP_PREFIX "transformer.resblocks.%d.%s.%s", layers, parts[p].oc,
                         leaves[l]);
                add_tensor(c, o, oc, need(&f, hf));
            }
        for (int l = 0; l < 2; l++) { /* in_proj_weight [3H, H] / in_proj_bias [3H] = cat(q, k, v) */
            int nparts = o->short_in_proj && layers == 0 && l == 0 ? 2 : 3;
            const st_tensor *t[3];
            for (int q = 0; q < 3; q++, written++) {
                snprintf(hf, sizeof hf, "text_model.encoder.layers.%d.self_attn.%s.%s", layers, qkv[q], leaves[l]);
                t[q] = need(&f, hf);
            }
            size_t each = t[0]->numel;
            float *cat = malloc(3 * each * sizeof(float));
            for (int q = 0; q < 3; q++) memcpy(cat + (size_t)q * each, t[q]->data, each * sizeof(float));
            int64_t shape[2] = {nparts * t[0]->shape[0], l == 0 ? t[0]->shape[1] : 0};
            snprintf(oc, sizeof oc, SGM_OPENCLIP_PREFIX "transformer.resblocks.%d.attn.in_proj_%s", layers, leaves[l]);
            add_f32(c, o, oc, l == 0 ? 2 : 1, shape, cat, o->te2_f16);
            free(cat);
        }
    }
    cr_assert_eq(written, f.n_tensors, "text_encoder_2: the table covered %d of %d tensors", written, f.n_tensors);
    float logit_scale = 4.6052f;
    add(c, o, SGM_OPENCLIP_PREFIX "logit_scale", ST_F32, 0, NULL, &logit_scale, sizeof logit_scale);
    st_close(&f);
}

/* Writes tiny-sdxl as <dir>/<stem>.safetensors; returns the path. */
static char *write_sdxl_ckpt(const char *dir, const char *stem, const write_opts *opt) {
    write_opts none = {0};
    const write_opts *o = opt ? opt : &none;
    ckpt c = {0};
    write_unet_vae(&c, o);
    write_te1(&c, o);
    write_te2(&c, o);
    st_write_entry *e = calloc((size_t)c.n, sizeof *e);
    for (int i = 0; i < c.n; i++) {
        e[i] = (st_write_entry){c.e[i].name, c.e[i].dtype, c.e[i].ndim, {0}, c.e[i].data};
        memcpy(e[i].shape, c.e[i].shape, sizeof c.e[i].shape);
    }
    char *path = strf2("%s/%s.safetensors", dir, stem);
    sd_error err = {0};
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    cr_assert_eq(st_write(path, e, c.n, mk, mv, 1, &err), 0, "%s", err.msg);
    for (int i = 0; i < c.n; i++) free(c.e[i].name), free(c.e[i].data);
    free(c.e);
    free(e);
    return path;
}

/* ---- comparing with the folder ---- */

static int is_float(st_dtype d) { return d == ST_F32 || d == ST_F16 || d == ST_BF16; }

/* Every float tensor of the folder component, bound by its diffusers name
 * through both binders, gives the same f32 bytes (f16_names: those names'
 * expected values are the folder's rounded to f16); both binders complete. */
static int compare_component(sd_component *folder, sd_component *single, int f16_fused, int lazy) {
    sd_error err = {0};
    int compared = 0;
    cr_assert(folder->present && single->present, "%s missing", folder->name);
    single->binder.lazy = lazy;
    for (int i = 0; i < sd_weights_file_count(folder->weights); i++) {
        const st_file *f = sd_weights_file(folder->weights, i);
        for (int k = 0; k < f->n_tensors; k++) {
            const st_tensor *t = &f->tensors[k];
            if (!is_float(t->dtype)) continue;
            sd_tensor a, b;
            cr_assert_eq(sd_bind(&folder->binder, &a, t->name, t->ndim, t->shape, &err), 0, "%s", err.msg);
            cr_assert_eq(sd_bind(&single->binder, &b, t->name, t->ndim, t->shape, &err), 0, "%s: %s", t->name, err.msg);
            const float *bd = sd_tensor_f32(&b, &err);
            cr_assert_not_null(bd, "%s: %s", t->name, err.msg);
            cr_assert_eq(a.numel, b.numel);
            /* text_encoder_2's q/k/v (the fused in_proj) and text_projection */
            int rounded = f16_fused && !strcmp(folder->name, "text_encoder_2") &&
                          ((strstr(t->name, "_proj.") && !strstr(t->name, "out_proj")) ||
                           !strcmp(t->name, "text_projection.weight"));
            if (rounded) {
                for (int64_t j = 0; j < a.numel; j++) {
                    float want = sd_f16_to_f32(sd_f32_to_f16(a.data[j]));
                    cr_assert(memcmp(&want, &bd[j], sizeof want) == 0, "%s: %s[%lld] %g, expected %g", folder->name,
                              t->name, (long long)j, bd[j], want);
                }
            } else {
                cr_assert(memcmp(a.data, bd, (size_t)a.numel * sizeof(float)) == 0, "%s: %s data differs",
                          folder->name, t->name);
            }
            compared++;
        }
    }
    cr_assert_eq(sd_binder_check_complete(&single->binder, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&folder->binder, &err), 0, "%s", err.msg);
    return compared;
}

static void check_equivalence(sd_model *folder, sd_model *single, int f16_fused, int lazy) {
    int n = 0;
    for (int i = 0; i < SD_MODEL_N_COMPONENTS; i++)
        n += compare_component(sd_model_component(folder, i), sd_model_component(single, i), f16_fused, lazy);
    /* every key of the checkpoint was someone's: all but position_ids and logit_scale were bound; the
     * 3 q/k/v weights and biases of each text_encoder_2 layer share one in_proj tensor */
    const st_file *f = sd_weights_file(single->shared, 0);
    int layers = cfg_int(single->text_encoder_2.config, "num_hidden_layers");
    cr_assert_eq(n, f->n_tensors - 2 + 4 * layers, "compared %d tensors, the checkpoint has %d", n, f->n_tensors);
}

static void open_ok(sd_model *m, const char *path, const sd_model_options *opt) {
    sd_error err = {0};
    cr_assert_eq(sd_model_open(m, path, opt, &err), 0, "sd_model_open(%s): %s", path, err.msg);
}

static void open_fails(const char *path, const sd_model_options *opt, const char *n1, const char *n2) {
    sd_model m;
    sd_error err = {0};
    cr_assert_neq(sd_model_open(&m, path, opt, &err), 0, "sd_model_open(%s) should fail", path);
    cr_assert(strstr(err.msg, n1), "message '%s' lacks '%s'", err.msg, n1);
    if (n2) cr_assert(strstr(err.msg, n2), "message '%s' lacks '%s'", err.msg, n2);
    cr_assert_null(m.path, "a failed open must leave the model closed");
}

/* ---- the tiny SGM yaml (what an sd_xl_base.yaml for tiny-sdxl would say) ---- */

/* tests/fuzz/seeds/sgm_tiny_sdxl.yaml: also a seed of the yaml fuzzer */
static const char *tiny_yaml_text(void) {
    static char text[8192];
    if (text[0]) return text;
    char *path = tst_source_path("tests/fuzz/seeds/sgm_tiny_sdxl.yaml");
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp, "cannot read %s", path);
    size_t n = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    cr_assert(n > 0 && n < sizeof text - 1, "%s: %zu bytes", path, n);
    text[n] = '\0';
    free(path);
    return text;
}

/* text with the first occurrence of `from` replaced by `to` (malloc'd). */
static char *replace_in(const char *text, const char *from, const char *to) {
    const char *p = strstr(text, from);
    cr_assert_not_null(p, "yaml has no '%s'", from);
    size_t n = strlen(text) - strlen(from) + strlen(to) + 1;
    char *s = malloc(n);
    snprintf(s, n, "%.*s%s%s", (int)(p - text), text, to, p + strlen(from));
    return s;
}

static char *yaml_with(const char *from, const char *to) { return replace_in(tiny_yaml_text(), from, to); }

#define REQUIRE_TINY_SDXL() \
    if (!tst_require_fixture("sdxl/tiny-sdxl/model_index.json")) return

/* ---- key maps ---- */

static void unet_key_is(const ldm_unet_layout *l, const char *name, const char *want) {
    char out[256];
    int rc = ldm_unet_key(l, name, out, sizeof out);
    if (!want) {
        cr_assert_neq(rc, 0, "%s should have no LDM name (got %s)", name, out);
        return;
    }
    cr_assert_eq(rc, 0, "%s: no LDM name", name);
    cr_assert_str_eq(out, want, "%s", name);
}

static void openclip_key_is(const char *name, const char *want, int si, int sc) {
    char out[256];
    int gi = -7, gc = -7;
    int rc = sgm_openclip_key(name, out, sizeof out, &gi, &gc);
    if (!want) {
        cr_assert_neq(rc, 0, "%s should have no OpenCLIP name (got %s)", name, out);
        return;
    }
    cr_assert_eq(rc, 0, "%s: no OpenCLIP name", name);
    cr_assert_str_eq(out, want, "%s", name);
    cr_assert(gi == si && gc == sc, "%s: slice %d of %d, expected %d of %d", name, gi, gc, si, sc);
}

/* SDXL base 1.0's UNet keys (3 levels, 2 layers, attention on levels 1-2;
 * depth 10 at level 2 only adds transformer_blocks.<k>). */
Test(sdxl_single_file, keymap_sdxl) {
    ldm_unet_layout xl = {3, {2, 2, 2}, {1, 1, 0}};
    unet_key_is(&xl, "add_embedding.linear_1.weight", "label_emb.0.0.weight");
    unet_key_is(&xl, "add_embedding.linear_2.bias", "label_emb.0.2.bias");
    unet_key_is(&xl, "add_embedding.linear_3.bias", NULL);
    unet_key_is(&xl, "down_blocks.0.resnets.1.conv2.weight", "input_blocks.2.0.out_layers.3.weight");
    unet_key_is(&xl, "down_blocks.0.downsamplers.0.conv.weight", "input_blocks.3.0.op.weight");
    unet_key_is(&xl, "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k.weight",
                "input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight");
    unet_key_is(&xl, "down_blocks.1.downsamplers.0.conv.bias", "input_blocks.6.0.op.bias");
    unet_key_is(&xl, "down_blocks.2.resnets.0.conv_shortcut.weight", "input_blocks.7.0.skip_connection.weight");
    unet_key_is(&xl, "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj.weight",
                "input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.weight");
    unet_key_is(&xl, "down_blocks.2.downsamplers.0.conv.weight", NULL);
    unet_key_is(&xl, "mid_block.attentions.0.transformer_blocks.9.norm3.weight",
                "middle_block.1.transformer_blocks.9.norm3.weight");
    unet_key_is(&xl, "mid_block.resnets.1.time_emb_proj.weight", "middle_block.2.emb_layers.1.weight");
    unet_key_is(&xl, "up_blocks.0.attentions.2.proj_out.weight", "output_blocks.2.1.proj_out.weight");
    unet_key_is(&xl, "up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.2.conv.weight");
    unet_key_is(&xl, "up_blocks.1.resnets.0.norm1.bias", "output_blocks.3.0.in_layers.0.bias");
    unet_key_is(&xl, "up_blocks.1.upsamplers.0.conv.bias", "output_blocks.5.2.conv.bias");
    unet_key_is(&xl, "up_blocks.2.resnets.2.conv2.weight", "output_blocks.8.0.out_layers.3.weight");
    unet_key_is(&xl, "up_blocks.2.attentions.0.norm.weight", NULL);
    unet_key_is(&xl, "up_blocks.2.upsamplers.0.conv.weight", NULL);

    openclip_key_is("text_model.embeddings.token_embedding.weight", "token_embedding.weight", 0, 0);
    openclip_key_is("text_model.embeddings.position_embedding.weight", "positional_embedding", 0, 0);
    openclip_key_is("text_model.final_layer_norm.bias", "ln_final.bias", 0, 0);
    openclip_key_is("text_projection.weight", "text_projection", 0, SD_MAP_TRANSPOSED);
    openclip_key_is("text_model.encoder.layers.31.layer_norm1.weight", "transformer.resblocks.31.ln_1.weight", 0, 0);
    openclip_key_is("text_model.encoder.layers.0.layer_norm2.bias", "transformer.resblocks.0.ln_2.bias", 0, 0);
    openclip_key_is("text_model.encoder.layers.9.self_attn.q_proj.weight", "transformer.resblocks.9.attn.in_proj_weight",
                    0, 3);
    openclip_key_is("text_model.encoder.layers.9.self_attn.k_proj.bias", "transformer.resblocks.9.attn.in_proj_bias",
                    1, 3);
    openclip_key_is("text_model.encoder.layers.9.self_attn.v_proj.weight", "transformer.resblocks.9.attn.in_proj_weight",
                    2, 3);
    openclip_key_is("text_model.encoder.layers.9.self_attn.out_proj.weight",
                    "transformer.resblocks.9.attn.out_proj.weight", 0, 0);
    openclip_key_is("text_model.encoder.layers.2.mlp.fc1.bias", "transformer.resblocks.2.mlp.c_fc.bias", 0, 0);
    openclip_key_is("text_model.encoder.layers.2.mlp.fc2.weight", "transformer.resblocks.2.mlp.c_proj.weight", 0, 0);
    openclip_key_is("logit_scale", "logit_scale", 0, 0);
    openclip_key_is("text_model.embeddings.position_ids", NULL, 0, 0);
    openclip_key_is("text_model.encoder.layers.2.mlp.fc3.weight", NULL, 0, 0);
    openclip_key_is("text_model.encoder.layers.02.mlp.fc1.weight", NULL, 0, 0);
    openclip_key_is("text_model.encoder.layers.2.self_attn.q_proj.weight.x", NULL, 0, 0);
    openclip_key_is("text_model.encoder.layers.2.self_attn.q_proj", NULL, 0, 0);
    openclip_key_is("text_projection.bias", NULL, 0, 0);
}

/* ---- loading ---- */

Test(sdxl_single_file, model_config_folder_binds_bit_identical) {
    REQUIRE_TINY_SDXL();
    char *dir = tst_tmpdir(), *folder = tst_fixture_path("sdxl/tiny-sdxl");
    char *ckpt = write_sdxl_ckpt(dir, "tiny-sdxl", NULL);
    sd_model_options opt = {.model_config = folder};
    sd_model s, f;
    open_ok(&s, ckpt, &opt);
    open_ok(&f, folder, NULL);
    cr_assert_eq(s.kind, SD_MODEL_SINGLE_FILE);
    cr_assert_str_eq(s.name, "tiny-sdxl");
    cr_assert(s.text_encoder_2.present);
    cr_assert_str_eq(s.unet.binder.prefix, "model.diffusion_model.");
    cr_assert_str_eq(s.text_encoder.binder.prefix, "conditioner.embedders.0.transformer.");
    cr_assert_str_eq(s.text_encoder_2.binder.prefix, "conditioner.embedders.1.model.");
    cr_assert(strstr(s.text_encoder_2.config_path, "tiny-sdxl/text_encoder_2/config.json"));
    cr_assert(strstr(s.tokenizer_dir, "tiny-sdxl/tokenizer") && strstr(s.tokenizer_2_dir, "tiny-sdxl/tokenizer_2"));
    cr_assert_str_eq(cfg_str(s.scheduler_config, "_class_name"), "EulerDiscreteScheduler");
    cr_assert_str_eq(cfg_str(s.model_index, "_class_name"), "StableDiffusionXLPipeline");
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(s.model_index, "force_zeros_for_empty_prompt")));
    cr_assert_eq(cfg_int(s.unet.config, "norm_num_groups"), 8);
    check_equivalence(&f, &s, 0, 0);
    sd_model_close(&s);
    sd_model_close(&f);

    /* lazy binders convert (and transpose) on first use */
    open_ok(&s, ckpt, &opt);
    open_ok(&f, folder, NULL);
    check_equivalence(&f, &s, 0, 1);
    sd_model_close(&s);
    sd_model_close(&f);
    free(ckpt), free(folder);
    rm_rf(dir);
}

Test(sdxl_single_file, f16_fused_and_transposed_tensors) {
    REQUIRE_TINY_SDXL();
    char *dir = tst_tmpdir(), *folder = tst_fixture_path("sdxl/tiny-sdxl");
    write_opts o = {.te2_f16 = 1};
    char *ckpt = write_sdxl_ckpt(dir, "half", &o);
    sd_model_options opt = {.model_config = folder};
    for (int lazy = 0; lazy < 2; lazy++) {
        sd_model s, f;
        open_ok(&s, ckpt, &opt);
        open_ok(&f, folder, NULL);
        check_equivalence(&f, &s, 1, lazy);
        sd_model_close(&s);
        sd_model_close(&f);
    }
    free(ckpt), free(folder);
    rm_rf(dir);
}

/* The UNet loaded from the single file reproduces diffusers' SDXL UNet. */
Test(sdxl_single_file, unet_forward_matches_reference) {
    REQUIRE_TINY_SDXL();
    if (!tst_require_fixture("sdxl/refs/unet.safetensors")) return;
    char *dir = tst_tmpdir(), *folder = tst_fixture_path("sdxl/tiny-sdxl");
    char *ckpt = write_sdxl_ckpt(dir, "tiny-sdxl", NULL);
    sd_model_options opt = {.model_config = folder};
    sd_model s;
    open_ok(&s, ckpt, &opt);
    sd_unet_config ucfg;
    sd_unet *u;
    sd_error err = {0};
    cr_assert_eq(sd_unet_config_parse(&ucfg, s.unet.config, s.unet.config_path, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_load(&u, &ucfg, &s.unet.binder, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_binder_check_complete(&s.unet.binder, &err), 0, "%s", err.msg);
    st_file rf;
    tst_open_ref(&rf, "sdxl/refs/unet.safetensors");
    const st_tensor *st = tst_ref_tensor(&rf, "batch.sample"), *ct = tst_ref_tensor(&rf, "batch.encoder_hidden_states");
    float *sample = tst_ref_f32(&rf, "batch.sample", NULL), *ctx = tst_ref_f32(&rf, "batch.encoder_hidden_states", NULL);
    float *text = tst_ref_f32(&rf, "batch.text_embeds", NULL), *ids = tst_ref_f32(&rf, "batch.time_ids", NULL);
    int64_t *t = tst_ref_i64(&rf, "t999.timestep", NULL);
    size_t numel;
    float *ref = tst_ref_f32(&rf, "t999.out", &numel), *out = calloc(numel, sizeof(float));
    int64_t n = st->shape[0];
    cr_assert_eq(sd_unet_set_added_cond(u, text, ids, n, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_unet_forward_ex(u, sample, n, st->shape[2], st->shape[3], (float)t[0], ctx, ct->shape[1], out, &err),
                 0, "%s", err.msg);
    double e = tst_check_close("single-file SDXL UNet t999.out", out, ref, numel, UNET_ABS, UNET_REL);
    cr_log_info("t999.out from the single file: max|err| %.3g", e);
    free(sample), free(ctx), free(text), free(ids), free(t), free(ref), free(out);
    st_close(&rf);
    sd_unet_free(u);
    sd_model_close(&s);
    free(ckpt), free(folder);
    rm_rf(dir);
}

Test(sdxl_single_file, sgm_yaml_beside_the_file) {
    REQUIRE_TINY_SDXL();
    char *dir = tst_tmpdir(), *folder = tst_fixture_path("sdxl/tiny-sdxl"), *assets = tst_source_path("assets");
    char *ckpt = write_sdxl_ckpt(dir, "my-xl", NULL);
    char *yaml = strf2("%s/%s", dir, "my-xl.yaml");
    write_text(yaml, tiny_yaml_text());
    sd_model_options opt = {.assets_dir = assets};
    sd_model s, f;
    open_ok(&s, ckpt, &opt);
    open_ok(&f, folder, NULL);
    cr_assert(strstr(s.arch_source, "SGM yaml") && strstr(s.arch_source, "my-xl.yaml"), "%s", s.arch_source);
    cr_assert(strstr(s.unet.config_path, "model.params.network_config"), "%s", s.unet.config_path);
    const cJSON *u = s.unet.config;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(cfg_list_at(u, "block_out_channels", i), 16 * (i + 1));
        cr_assert_eq(cfg_list_at(u, "attention_head_dim", i), 2 * (i + 1)); /* num_head_channels 8 */
        cr_assert_eq(cfg_list_at(u, "transformer_layers_per_block", i), i + 1);
    }
    cr_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(u, "down_block_types"), 0)->valuestring, "DownBlock2D");
    cr_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(u, "up_block_types"), 2)->valuestring, "UpBlock2D");
    cr_assert_eq(cfg_int(u, "cross_attention_dim"), 40);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(u, "use_linear_projection")));
    cr_assert_str_eq(cfg_str(u, "addition_embed_type"), "text_time");
    cr_assert_eq(cfg_int(u, "addition_time_embed_dim"), 8);
    cr_assert_eq(cfg_int(u, "projection_class_embeddings_input_dim"), 68);
    cr_assert_eq(cfg_int(u, "norm_num_groups"), 32); /* an SGM yaml cannot say 8 */
    cr_assert_eq(cfg_list_at(s.vae.config, "block_out_channels", 2), 32);
    cr_assert_float_eq(cJSON_GetObjectItem(s.vae.config, "scaling_factor")->valuedouble, 0.13025, 1e-12);
    /* text encoders: not known models, sizes from the weights */
    cr_assert_eq(cfg_int(s.text_encoder.config, "hidden_size"), 16);
    cr_assert_eq(cfg_int(s.text_encoder.config, "num_hidden_layers"), 3);
    cr_assert_eq(cfg_int(s.text_encoder_2.config, "hidden_size"), 24);
    cr_assert_eq(cfg_int(s.text_encoder_2.config, "intermediate_size"), 96);
    cr_assert_eq(cfg_int(s.text_encoder_2.config, "projection_dim"), 20);
    cr_assert_str_eq(cfg_str(s.text_encoder_2.config, "hidden_act"), "gelu");
    cr_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(s.text_encoder_2.config, "architectures"), 0)->valuestring,
                     "CLIPTextModelWithProjection");
    const cJSON *sch = s.scheduler_config;
    cr_assert_str_eq(cfg_str(sch, "_class_name"), "EulerDiscreteScheduler");
    cr_assert_str_eq(cfg_str(sch, "timestep_spacing"), "leading");
    cr_assert_str_eq(cfg_str(sch, "prediction_type"), "epsilon");
    cr_assert_float_eq(cJSON_GetObjectItem(sch, "beta_end")->valuedouble, 0.012, 1e-12);
    cr_assert(strstr(s.tokenizer_2_dir, "assets/tokenizer_2"), "%s", s.tokenizer_2_dir);
    check_equivalence(&f, &s, 0, 0);
    sd_model_close(&s);
    sd_model_close(&f);

    /* without conditioner_config: the time-id width comes from the weights ((68 - 20) / 6) */
    const char *c0 = strstr(tiny_yaml_text(), "    conditioner_config:\n"), *c1 = strstr(tiny_yaml_text(), "    first_stage_config:\n");
    cr_assert(c0 && c1 && c0 < c1);
    char *cut = malloc(strlen(tiny_yaml_text()) + 1);
    snprintf(cut, strlen(tiny_yaml_text()) + 1, "%.*s%s", (int)(c0 - tiny_yaml_text()), tiny_yaml_text(), c1);
    write_text(yaml, cut);
    free(cut);
    open_ok(&s, ckpt, &opt);
    cr_assert_eq(cfg_int(s.unet.config, "addition_time_embed_dim"), 8);
    cr_assert(strstr(s.arch_source, "text encoder sizes from the weights"), "%s", s.arch_source);
    sd_model_close(&s);

    /* v-prediction and other betas through the denoiser config */
    char *v2 = yaml_with("denoiser_scaling.EpsScaling\n", "denoiser_scaling.VScaling\n");
    char *v3 = replace_in(v2, "LegacyDDPMDiscretization\n",
                          "LegacyDDPMDiscretization\n          params:\n            linear_end: 0.02\n");
    write_text(yaml, v3);
    open_ok(&s, ckpt, &opt);
    cr_assert_str_eq(cfg_str(s.scheduler_config, "prediction_type"), "v_prediction");
    cr_assert_float_eq(cJSON_GetObjectItem(s.scheduler_config, "beta_end")->valuedouble, 0.02, 1e-12);
    sd_model_close(&s);
    free(v2), free(v3);
    free(ckpt), free(folder), free(assets), free(yaml);
    rm_rf(dir);
}

Test(sdxl_single_file, defaults_read_sizes_from_weights) {
    REQUIRE_TINY_SDXL();
    char *dir = tst_tmpdir(), *folder = tst_fixture_path("sdxl/tiny-sdxl"), *assets = tst_source_path("assets");
    char *ckpt = write_sdxl_ckpt(dir, "plain", NULL);
    sd_model_options opt = {.assets_dir = assets};
    sd_model s, f;
    open_ok(&s, ckpt, &opt);
    open_ok(&f, folder, NULL);
    cr_assert(strstr(s.arch_source, "SDXL base 1.0 defaults"), "%s", s.arch_source);
    cr_assert_eq(cfg_list_at(s.unet.config, "block_out_channels", 2), 48);
    cr_assert_eq(cfg_list_at(s.unet.config, "transformer_layers_per_block", 2), 3);
    /* (68 inputs - 20 pooled) / 6 time ids */
    cr_assert_eq(cfg_int(s.unet.config, "addition_time_embed_dim"), 8);
    cr_assert_float_eq(cJSON_GetObjectItem(s.vae.config, "scaling_factor")->valuedouble, 0.13025, 1e-12);
    cr_assert_eq(cfg_int(s.text_encoder_2.config, "num_hidden_layers"), 3);
    cr_assert_str_eq(cfg_str(s.scheduler_config, "_class_name"), "EulerDiscreteScheduler");
    cr_assert_eq(cfg_int(s.scheduler_config, "steps_offset"), 1);
    check_equivalence(&f, &s, 0, 0);
    sd_model_close(&s);
    sd_model_close(&f);
    free(ckpt), free(folder), free(assets);
    rm_rf(dir);
}

/* sd_xl_base.yaml (Stability generative-models configs/inference) gives SDXL base 1.0. */
Test(sdxl_single_file, sd_xl_base_yaml_is_sdxl_base) {
    const char *text =
        "model:\n  target: sgm.models.diffusion.DiffusionEngine\n  params:\n    scale_factor: 0.13025\n"
        "    disable_first_stage_autocast: True\n\n    denoiser_config:\n"
        "      target: sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser\n      params:\n        num_idx: 1000\n\n"
        "        scaling_config:\n          target: sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling\n"
        "        discretization_config:\n"
        "          target: sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization\n\n"
        "    network_config:\n      target: sgm.modules.diffusionmodules.openaimodel.UNetModel\n      params:\n"
        "        adm_in_channels: 2816\n        num_classes: sequential\n        use_checkpoint: True\n"
        "        in_channels: 4\n        out_channels: 4\n        model_channels: 320\n"
        "        attention_resolutions: [4, 2]\n        num_res_blocks: 2\n        channel_mult: [1, 2, 4]\n"
        "        num_head_channels: 64\n        use_linear_in_transformer: True\n"
        "        transformer_depth: [1, 2, 10]\n        context_dim: 2048\n"
        "        spatial_transformer_attn_type: softmax-xformers\n\n"
        "    conditioner_config:\n      target: sgm.modules.GeneralConditioner\n      params:\n        emb_models:\n"
        "          - is_trainable: False\n            input_key: txt\n"
        "            target: sgm.modules.encoders.modules.FrozenCLIPEmbedder\n            params:\n"
        "              layer: hidden\n              layer_idx: 11\n\n"
        "          - is_trainable: False\n            input_key: txt\n"
        "            target: sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2\n            params:\n"
        "              arch: ViT-bigG-14\n              version: laion2b_s39b_b160k\n              freeze: True\n"
        "              layer: penultimate\n              always_return_pooled: True\n              legacy: False\n\n"
        "          - is_trainable: False\n            input_key: original_size_as_tuple\n"
        "            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND\n            params:\n"
        "              outdim: 256\n\n"
        "          - is_trainable: False\n            input_key: crop_coords_top_left\n"
        "            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND\n            params:\n"
        "              outdim: 256\n\n"
        "          - is_trainable: False\n            input_key: target_size_as_tuple\n"
        "            target: sgm.modules.encoders.modules.ConcatTimestepEmbedderND\n            params:\n"
        "              outdim: 256\n\n"
        "    first_stage_config:\n      target: sgm.models.autoencoder.AutoencoderKLInferenceWrapper\n"
        "      params:\n        embed_dim: 4\n        monitor: val/rec_loss\n        ddconfig:\n"
        "          attn_type: vanilla-xformers\n          double_z: true\n          z_channels: 4\n"
        "          resolution: 256\n          in_channels: 3\n          out_ch: 3\n          ch: 128\n"
        "          ch_mult: [1, 2, 4, 4]\n          num_res_blocks: 2\n          attn_resolutions: []\n"
        "          dropout: 0.0\n        lossconfig:\n          target: torch.nn.Identity\n";
    cJSON *y;
    sd_error err = {0};
    cr_assert_eq(ldm_yaml_parse(text, strlen(text), "sd_xl_base.yaml", &y, &err), 0, "%s", err.msg);
    cr_assert(sd_yaml_is_sgm(y));
    sd_unet_arch u, ref_u;
    sd_vae_arch v, ref_v;
    sd_sgm_text t;
    sd_clip_arch ref_l, ref_g;
    sd_ldm_sched sch = {0.001, 0.02, 10, 1};
    memset(&t, 0, sizeof t);
    sd_unet_arch_sdxl(&u); /* what the yaml states must come from it */
    sd_vae_arch_sdxl(&v);
    u.channels[0] = 7, u.depth[2] = 1, u.heads[1] = 3, u.heads_is_list = 0, u.cross_attention_dim = 1;
    u.down_attn[0] = 1, u.up_attn[2] = 1, u.use_linear_projection = 0, u.text_time = 0, u.add_embed_in = 5;
    u.addition_time_embed_dim = 3, u.in_channels = 9;
    v.channels[0] = 7, v.scaling_factor = 0.5, v.latent_channels = 16;
    sd_unet_arch_sdxl(&ref_u);
    sd_vae_arch_sdxl(&ref_v);
    sd_clip_arch_sd15(&ref_l);
    sd_clip_arch_sdxl_g(&ref_g);
    cr_assert_eq(sd_arch_from_sgm_yaml(y, "sd_xl_base.yaml", &u, &v, &t, &sch, &err), 0, "%s", err.msg);
    ref_v.sample_size = 256;
    cr_assert(memcmp(&u, &ref_u, sizeof u) == 0, "UNet architecture differs from SDXL base 1.0");
    cr_assert(memcmp(&v, &ref_v, sizeof v) == 0, "VAE architecture differs from SDXL base 1.0");
    cr_assert(t.te1_known && t.te2_known && t.time_embed_dim_stated);
    cr_assert(memcmp(&t.te1, &ref_l, sizeof ref_l) == 0, "text_encoder differs from CLIP ViT-L/14");
    cr_assert(memcmp(&t.te2, &ref_g, sizeof ref_g) == 0, "text_encoder_2 differs from OpenCLIP ViT-bigG-14");
    /* EpsScaling, LegacyDDPMDiscretization's own betas */
    cr_assert(sch.v_prediction == 0 && sch.beta_start == 0.00085 && sch.beta_end == 0.012 &&
                  sch.num_train_timesteps == 1000,
              "scheduler: %g %g %d %d", sch.beta_start, sch.beta_end, sch.num_train_timesteps, sch.v_prediction);
    cJSON_Delete(y);
}

Test(sdxl_single_file, sgm_yaml_refusals) {
    REQUIRE_TINY_SDXL();
    char *dir = tst_tmpdir(), *assets = tst_source_path("assets");
    char *ckpt = write_sdxl_ckpt(dir, "x", NULL);
    char *yaml = strf2("%s/%s", dir, "other.yaml");
    sd_model_options opt = {.model_config = yaml, .assets_dir = assets};
    static const struct {
        const char *from, *to, *n1, *n2;
    } cases[] = {
        {"model_channels: 16", "model_channels: 24", "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
         "other.yaml says 24"},
        {"transformer_depth: [1, 2, 3]", "transformer_depth: [1, 2, 4]", "input_blocks.7.1.transformer_blocks.3",
         "transformer_layers_per_block[2]"},
        {"adm_in_channels: 68", "adm_in_channels: 70", "label_emb.0.0.weight", "projection_class_embeddings_input_dim"},
        {"outdim: 8\n          - is", "outdim: 16\n          - is", "emb_models[3]", "outdim"},
        {"num_classes: sequential", "num_classes: 1000", "num_classes", "not supported"},
        {"layer: penultimate", "layer: last", "penultimate", NULL},
        {"crop_coords_top_left", "aesthetic_score", "input_key", "crop_coords_top_left"},
        {"ConcatTimestepEmbedderND\n            params:\n              outdim: 8\n    first",
         "ConcatTimestepEmbedderND\n            params:\n              outdim: 8\n          - target: x.Y\n    first",
         "emb_models", "refiner"},
        {"denoiser_scaling.EpsScaling", "denoiser_scaling.EDMScaling", "EDMScaling", "not supported"},
        {"ch_mult: [1, 1, 2, 2]", "ch_mult: [1, 1, 2]", "first_stage_model.encoder.down.3.block.0.conv1.weight",
         "3 levels"},
        {"channel_mult: [1, 2, 3]", "channel_mult: \"wide\"", "channel_mult", "integers"},
        {"context_dim: 40", "context_dim: [40, 40]", "context_dim", "integer"},
        {"num_head_channels: 8", "num_head_channels: 7", "num_head_channels", "does not divide"},
        {"network_config:", "unet_config:", "model.params.unet_config", "LDM section"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *text = yaml_with(cases[i].from, cases[i].to);
        write_text(yaml, text);
        free(text);
        open_fails(ckpt, &opt, cases[i].n1, cases[i].n2);
    }
    /* an LDM yaml for the SDXL checkpoint, the tiny SDXL yaml for an SD 1.x one */
    if (tst_require_fixture("tiny-sd15.safetensors")) {
        char *ldm = tst_fixture_path("tiny-sd15.yaml");
        sd_model_options lo = {.model_config = ldm, .assets_dir = assets};
        open_fails(ckpt, &lo, "LDM (SD 1.x) yaml", "sd_xl_base.yaml");
        free(ldm);
        write_text(yaml, tiny_yaml_text());
        char *sd15 = tst_fixture_path("tiny-sd15.safetensors");
        open_fails(sd15, &opt, "SDXL (sgm DiffusionEngine) config", "other.yaml");
        free(sd15);
    }
    free(ckpt), free(yaml), free(assets);
    rm_rf(dir);
}

Test(sdxl_single_file, missing_or_misshaped_keys_are_named) {
    REQUIRE_TINY_SDXL();
    char *dir = tst_tmpdir(), *folder = tst_fixture_path("sdxl/tiny-sdxl");
    sd_model_options opt = {.model_config = folder};
    sd_error err = {0};
    sd_model s;

    /* a tensor only binding needs: the text encoder load names it */
    write_opts o1 = {.skip = SGM_OPENCLIP_PREFIX "transformer.resblocks.1.ln_2.bias"};
    char *p = write_sdxl_ckpt(dir, "no_ln", &o1);
    open_ok(&s, p, &opt);
    sd_clip_text_config cc;
    sd_clip_text *te;
    cr_assert_eq(sd_clip_text_config_read(s.text_encoder_2.config, s.text_encoder_2.config_path, &cc, &err), 0);
    cr_assert_neq(sd_clip_text_load(&te, &cc, &s.text_encoder_2.binder, &err), 0);
    cr_assert(strstr(err.msg, "missing tensor 'conditioner.embedders.1.model.transformer.resblocks.1.ln_2.bias'"), "%s",
              err.msg);
    sd_model_close(&s);
    free(p);

    /* the same for the UNet */
    write_opts o2 = {.skip = SGM_UNET_PREFIX "label_emb.0.2.weight"};
    p = write_sdxl_ckpt(dir, "no_label_emb2", &o2);
    open_ok(&s, p, &opt);
    sd_unet_config uc;
    sd_unet *u;
    cr_assert_eq(sd_unet_config_parse(&uc, s.unet.config, s.unet.config_path, &err), 0, "%s", err.msg);
    cr_assert_neq(sd_unet_load(&u, &uc, &s.unet.binder, &err), 0);
    cr_assert(strstr(err.msg, "model.diffusion_model.label_emb.0.2.weight"), "%s", err.msg);
    sd_model_close(&s);
    free(p);

    /* facts the architecture needs fail at open, naming the key */
    write_opts o3 = {.skip = SGM_UNET_PREFIX "label_emb.0.0.weight"};
    p = write_sdxl_ckpt(dir, "no_label_emb", &o3);
    open_fails(p, &opt, "model.diffusion_model.label_emb.0.0.weight", "text_time");
    sd_model_options none = {.assets_dir = folder};
    open_fails(p, &none, "model.diffusion_model.label_emb.0.0.weight", "added conditioning");
    free(p);
    write_opts o4 = {.skip = SGM_OPENCLIP_PREFIX "transformer.resblocks.2.attn.in_proj_weight"};
    p = write_sdxl_ckpt(dir, "two_layers", &o4);
    open_fails(p, &opt, "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight",
               "num_hidden_layers");
    free(p);
    write_opts o5 = {.short_in_proj = 1};
    p = write_sdxl_ckpt(dir, "short", &o5);
    open_fails(p, &opt, "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "[48, 24]");
    free(p);
    write_opts o6 = {.hf_projection = 1};
    p = write_sdxl_ckpt(dir, "hf_projection", &o6);
    open_fails(p, &opt, "conditioner.embedders.1.model.text_projection", "[20, 24]");
    free(p);
    write_opts o7 = {.skip = SGM_OPENCLIP_PREFIX "text_projection"};
    p = write_sdxl_ckpt(dir, "no_projection", &o7);
    open_fails(p, &opt, "conditioner.embedders.1.model.text_projection", "missing");
    free(p);

    /* a transposed bind with the wrong shape names the key and both orientations */
    p = write_sdxl_ckpt(dir, "ok", NULL);
    open_ok(&s, p, &opt);
    sd_tensor t;
    int64_t shape[2] = {21, 24};
    cr_assert_neq(sd_bind(&s.text_encoder_2.binder, &t, "text_projection.weight", 2, shape, &err), 0);
    cr_assert(strstr(err.msg, "'conditioner.embedders.1.model.text_projection' has shape [24, 20], expected [24, 21]"),
              "%s", err.msg);
    int64_t qshape[2] = {24, 24}, bad[2] = {25, 24};
    cr_assert_eq(sd_bind(&s.text_encoder_2.binder, &t, "text_model.encoder.layers.0.self_attn.v_proj.weight", 2, qshape,
                         &err), 0, "%s", err.msg);
    cr_assert_neq(sd_bind(&s.text_encoder_2.binder, &t, "text_model.encoder.layers.0.self_attn.v_proj.weight", 2, bad,
                          &err), 0);
    cr_assert(strstr(err.msg, "in_proj_weight' has shape [72, 24], expected [25, 24] (as a row slice"), "%s", err.msg);
    sd_model_close(&s);
    free(p);

    /* an SDXL file missing a whole text encoder, a refiner */
    static const char *const only_te1[] = {"model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.x",
                                           "conditioner.embedders.0.transformer.text_model.x"};
    static const char *const refiner[] = {"model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.x",
                                          "conditioner.embedders.0.model.transformer.resblocks.0.ln_1.weight"};
    const char *const *lists[2] = {only_te1, refiner};
    const char *want[2][2] = {{"conditioner.embedders.1.model.", "text_encoder_2"}, {"refiner", "not supported"}};
    for (int i = 0; i < 2; i++) {
        static float data[4];
        st_write_entry e[3];
        for (int k = 0; k < 3; k++) e[k] = (st_write_entry){lists[i][k], ST_F32, 1, {4}, data};
        char *q = strf2("%s/%s", dir, i ? "refiner.safetensors" : "only_te1.safetensors");
        cr_assert_eq(st_write(q, e, 3, NULL, NULL, 0, &err), 0, "%s", err.msg);
        open_fails(q, NULL, want[i][0], want[i][1]);
        free(q);
    }
    free(folder);
    rm_rf(dir);
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

Test(sdxl_single_file, info_reports_sdxl) {
    REQUIRE_TINY_SDXL();
    char *dir = tst_tmpdir(), *folder = tst_fixture_path("sdxl/tiny-sdxl");
    char *ckpt = write_sdxl_ckpt(dir, "tiny-sdxl", NULL);
    char *out = strf2("%s/%s", dir, "out.txt");
    char *argv[] = {"info", "-m", ckpt, "--model-config", folder, "--no-hash", NULL};
    cr_assert_eq(run_info(argv, 6, out), 0);
    FILE *fp = fopen(out, "r");
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, fp);
    text[n] = '\0';
    fclose(fp);
    cr_assert(strstr(text, "single-file checkpoint (SGM keys), SDXL") && strstr(text, "StableDiffusionXLPipeline") &&
                  strstr(text, "components  unet vae text_encoder text_encoder_2") &&
                  strstr(text, "text_encoder_2: CLIPTextModelWithProjection") &&
                  strstr(text, "'conditioner.embedders.1.model.'") && strstr(text, "OpenCLIP names") &&
                  strstr(text, "addition_embed_type \"text_time\"") && strstr(text, "EulerDiscreteScheduler") &&
                  strstr(text, "tokenizer_2"),
              "%s", text);
    free(ckpt), free(folder), free(out);
    rm_rf(dir);
}
