/* moe_merge/merge_writer — writes a SegMoE model folder (see merge_writer.h).
 *
 * Structure: plan (which modules become MoE) -> sources (base + expert UNet
 * files, checked for equal architecture) -> the list of output tensors
 * (base tensors kept, module params re-keyed per expert, gates) -> a
 * streaming safetensors writer that copies bytes straight from the source
 * mappings (converting in chunks only when the dtype changes) -> configs and
 * component copies -> rename of the temporary folder.
 */
#include "moe_merge/merge_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>

#include "core/fileio.h"
#include "core/half.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/weights.h"

/* The diffusers version whose formats the written configs follow. */
#define MERGE_DIFFUSERS_VERSION "0.27.2"
#define CONVERT_CHUNK ((size_t)1 << 20)

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ============================================================ UNet sources */

/* A model's UNet: its tensors by diffusers name, whatever the layout. */
typedef struct unet_src {
    sd_model m;
    int opened;
    char role[48];            /* "base_model", "experts[1]" */
    int n;
    char **names;             /* diffusers names, sorted */
    const st_tensor **t;      /* the stored tensor of each name */
} unet_src;

/* The stored tensor behind a diffusers UNet name, through the component's
 * binder (identity for folders, core/ldm_keymap's table for single files). */
static const st_tensor *unet_find(const sd_component *u, const char *name) {
    char mapped[512], key[640];
    int si = 0, sc = 0;
    if (u->binder.map) {
        if (u->binder.map(name, mapped, sizeof mapped, &si, &sc) || sc) return NULL;
    } else if ((size_t)snprintf(mapped, sizeof mapped, "%s", name) >= sizeof mapped) {
        return NULL;
    }
    if ((size_t)snprintf(key, sizeof key, "%s%s", u->binder.prefix ? u->binder.prefix : "", mapped) >= sizeof key)
        return NULL;
    return sd_weights_find(u->weights, key, NULL);
}

static const char *unet_label(const sd_component *u) { return u->n_files ? u->files[0] : "unet"; }

/* ==================================================================== plan */

static const char *const kind_suffix[SD_MOE_KIND_COUNT] = {
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v", "ff",
};

const char *sd_moe_kind_suffix(sd_moe_kind k) { return k >= 0 && k < SD_MOE_KIND_COUNT ? kind_suffix[k] : "?"; }

static int kind_enabled(sd_moe_kind k, sd_segmoe_layers layers) {
    return k == SD_MOE_FF ? sd_segmoe_layers_has_ff(layers) : sd_segmoe_layers_has_attn(layers);
}

static const st_tensor *find_2d(const sd_component *u, const char *module, const char *leaf, sd_error *err) {
    char key[320];
    snprintf(key, sizeof key, "%s.%s", module, leaf);
    const st_tensor *t = unet_find(u, key);
    if (!t) {
        sd_fail(err, "%s: missing UNet tensor '%s' (expected in an SD UNet's transformer block)", unet_label(u), key);
        return NULL;
    }
    if (t->ndim != 2) {
        char s[96];
        sd_shape_str(s, sizeof s, t->ndim, t->shape);
        sd_fail(err, "%s: UNet tensor '%s' has shape %s, expected 2 dims", unet_label(u), key, s);
        return NULL;
    }
    return t;
}

static int module_dims(const sd_component *u, sd_moe_module *m, sd_error *err) {
    if (m->kind == SD_MOE_FF) {
        const st_tensor *p = find_2d(u, m->name, "net.0.proj.weight", err);
        const st_tensor *o = p ? find_2d(u, m->name, "net.2.weight", err) : NULL;
        if (!o) return -1;
        m->in_dim = p->shape[1];
        m->inner_dim = p->shape[0] / 2;
        m->out_dim = o->shape[0];
        if (p->shape[0] % 2 || o->shape[1] != m->inner_dim || m->out_dim != m->in_dim)
            return sd_fail(err, "%s: %s: GEGLU shapes do not fit ([%lld, %lld] then [%lld, %lld])", unet_label(u),
                           m->name, (long long)p->shape[0], (long long)p->shape[1], (long long)o->shape[0],
                           (long long)o->shape[1]);
        return 0;
    }
    const st_tensor *w = find_2d(u, m->name, "weight", err);
    if (!w) return -1;
    m->out_dim = w->shape[0];
    m->in_dim = w->shape[1];
    return 0;
}

static int plan_add(sd_moe_plan *p, const sd_component *u, const char *block, sd_moe_kind kind, int *cap,
                    sd_error *err) {
    if (p->n_modules == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        sd_moe_module *g = realloc(p->modules, (size_t)nc * sizeof *g);
        if (!g) return sd_fail(err, "out of memory");
        p->modules = g;
        *cap = nc;
    }
    sd_moe_module *m = &p->modules[p->n_modules];
    memset(m, 0, sizeof *m);
    m->kind = kind;
    snprintf(m->name, sizeof m->name, "%s.%s", block, kind_suffix[kind]);
    if (module_dims(u, m, err)) return -1;
    p->n_modules++;
    return 0;
}

/* A transformer block exists if its first norm does. */
static int tblock_exists(const sd_component *u, const char *side, int i, int j, int k, char *blk, size_t cap) {
    char probe[256];
    snprintf(blk, cap, "%s_blocks.%d.attentions.%d.transformer_blocks.%d", side, i, j, k);
    snprintf(probe, sizeof probe, "%s.norm1.weight", blk);
    return unet_find(u, probe) != NULL;
}

static int plan_blocks(sd_moe_plan *p, const sd_component *u, const char *side, int start, int end,
                       sd_segmoe_layers layers, int *cap, sd_error *err) {
    char blk[160];
    for (int i = start; i < end; i++)
        for (int j = 0; tblock_exists(u, side, i, j, 0, blk, sizeof blk); j++)
            for (int k = 0; tblock_exists(u, side, i, j, k, blk, sizeof blk); k++)
                for (int kind = 0; kind < SD_MOE_KIND_COUNT; kind++)
                    if (kind_enabled((sd_moe_kind)kind, layers) && plan_add(p, u, blk, (sd_moe_kind)kind, cap, err))
                        return -1;
    return 0;
}

int sd_moe_plan_build(sd_moe_plan *plan, const sd_component *unet, sd_segmoe_type type, sd_segmoe_layers layers,
                      sd_error *err) {
    memset(plan, 0, sizeof *plan);
    if (!unet->present || !unet->weights) return sd_fail(err, "model has no UNet");
    /* segmoe/main.py lines 209-222: SD down [0,3) up [1,4); SDXL down [1,3) up [0,2) */
    if (type == SD_SEGMOE_TYPE_SDXL) {
        plan->down_start = 1, plan->down_end = 3, plan->up_start = 0, plan->up_end = 2;
    } else {
        plan->down_start = 0, plan->down_end = 3, plan->up_start = 1, plan->up_end = 4;
    }
    int cap = 0;
    if (plan_blocks(plan, unet, "down", plan->down_start, plan->down_end, layers, &cap, err) ||
        plan_blocks(plan, unet, "up", plan->up_start, plan->up_end, layers, &cap, err)) {
        sd_moe_plan_free(plan);
        return -1;
    }
    if (!plan->n_modules) {
        int ds = plan->down_start, de = plan->down_end - 1, us = plan->up_start, ue = plan->up_end - 1;
        sd_moe_plan_free(plan);
        return sd_fail(err, "%s: no transformer blocks in down blocks %d..%d or up blocks %d..%d: not an SD UNet?",
                       unet_label(unet), ds, de, us, ue);
    }
    return 0;
}

void sd_moe_plan_free(sd_moe_plan *plan) {
    if (!plan) return;
    free(plan->modules);
    memset(plan, 0, sizeof *plan);
}

void sd_merge_random_gates(const sd_moe_plan *plan, int n_experts, uint64_t seed, float *const *gates) {
    sd_rng g;
    sd_rng_seed(&g, seed);
    for (int i = 0; i < plan->n_modules; i++) {
        const sd_moe_module *m = &plan->modules[i];
        size_t n = (size_t)n_experts * (size_t)m->in_dim;
        const float hi = (float)(1.0 / sqrt((double)m->in_dim)), lo = -hi;
        sd_rng_rand(&g, gates[i], n);
        for (size_t j = 0; j < n; j++) gates[i][j] = gates[i][j] * (hi - lo) + lo;
    }
}

/* ------------------------------------------------------- name enumeration */

static int src_add(unet_src *s, int *cap, const char *name, const st_tensor *t, sd_error *err) {
    if (s->n == *cap) {
        int nc = *cap ? *cap * 2 : 1024;
        char **nn = realloc(s->names, (size_t)nc * sizeof *nn);
        if (nn) s->names = nn;
        const st_tensor **nt = nn ? realloc(s->t, (size_t)nc * sizeof *nt) : NULL;
        if (!nt) return sd_fail(err, "out of memory");
        s->t = nt;
        *cap = nc;
    }
    if (!(s->names[s->n] = dup_str(name))) return sd_fail(err, "out of memory");
    s->t[s->n++] = t;
    return 0;
}

/* Diffusers folder: the file keys are the names (every shard). */
static int enumerate_keys(unet_src *s, int *cap, sd_error *err) {
    const sd_component *u = &s->m.unet;
    const char *prefix = u->binder.prefix ? u->binder.prefix : "";
    size_t pl = strlen(prefix);
    for (int f = 0; f < sd_weights_file_count(u->weights); f++) {
        const st_file *file = sd_weights_file(u->weights, f);
        for (int i = 0; i < file->n_tensors; i++)
            if (!strncmp(file->tensors[i].name, prefix, pl) &&
                src_add(s, cap, file->tensors[i].name + pl, &file->tensors[i], err))
                return -1;
    }
    return 0;
}

/* Tries "<stem>.<leaf>.{weight,bias}" for each leaf. */
static int try_leaves(unet_src *s, int *cap, const char *stem, const char *const *leaves, int n_leaves,
                      sd_error *err) {
    static const char *const params[] = {"weight", "bias"};
    char name[320];
    for (int l = 0; l < n_leaves; l++)
        for (int p = 0; p < 2; p++) {
            snprintf(name, sizeof name, "%s%s%s.%s", stem, *stem ? "." : "", leaves[l], params[p]);
            const st_tensor *t = unet_find(&s->m.unet, name);
            if (t && src_add(s, cap, name, t, err)) return -1;
        }
    return 0;
}

#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Names of one down/up/mid block's resnets, attentions and samplers. */
static int try_block(unet_src *s, int *cap, const char *block, int n_layers, int depth, sd_error *err) {
    static const char *const resnet[] = {"norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut"};
    static const char *const attn[] = {"norm", "proj_in", "proj_out"};
    static const char *const tblock[] = {"norm1", "norm2", "norm3", "attn1.to_q", "attn1.to_k", "attn1.to_v",
                                         "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                                         "ff.net.0.proj", "ff.net.2"};
    static const char *const sampler[] = {"downsamplers.0.conv", "upsamplers.0.conv"};
    char stem[256];
    for (int j = 0; j < n_layers; j++) {
        snprintf(stem, sizeof stem, "%s.resnets.%d", block, j);
        if (try_leaves(s, cap, stem, resnet, N_OF(resnet), err)) return -1;
        snprintf(stem, sizeof stem, "%s.attentions.%d", block, j);
        if (try_leaves(s, cap, stem, attn, N_OF(attn), err)) return -1;
        for (int k = 0; k < depth; k++) {
            snprintf(stem, sizeof stem, "%s.attentions.%d.transformer_blocks.%d", block, j, k);
            if (try_leaves(s, cap, stem, tblock, N_OF(tblock), err)) return -1;
        }
    }
    return try_leaves(s, cap, block, sampler, N_OF(sampler), err);
}

/* Single file: every diffusers UNet name the architecture can have, kept
 * when the checkpoint holds it (generous bounds from the config; the
 * completeness check below catches any key no name reached). */
static int enumerate_mapped(unet_src *s, int *cap, sd_error *err) {
    static const char *const top[] = {"conv_in", "conv_out", "conv_norm_out", "time_embedding.linear_1",
                                      "time_embedding.linear_2", "add_embedding.linear_1", "add_embedding.linear_2"};
    sd_component *u = &s->m.unet;
    int ch[16], lay[16], dep[16], n_levels, n_lay, n_dep;
    if (sd_json_int_list(u->config, u->config_path, "block_out_channels", ch, 16, &n_levels, err) ||
        sd_json_int_list(u->config, u->config_path, "layers_per_block", lay, 16, &n_lay, err) ||
        sd_json_int_list(u->config, u->config_path, "transformer_layers_per_block", dep, 16, &n_dep, err))
        return -1;
    int layers = 2, depth = 1; /* diffusers defaults */
    for (int i = 0; i < n_lay; i++) layers = lay[i] > layers ? lay[i] : layers;
    for (int i = 0; i < n_dep; i++) depth = dep[i] > depth ? dep[i] : depth;
    char block[64];
    if (try_leaves(s, cap, "", top, N_OF(top), err)) return -1;
    for (int i = 0; i < n_levels; i++) {
        snprintf(block, sizeof block, "down_blocks.%d", i);
        if (try_block(s, cap, block, layers + 1, depth, err)) return -1;
        snprintf(block, sizeof block, "up_blocks.%d", i);
        if (try_block(s, cap, block, layers + 1, depth, err)) return -1;
    }
    if (try_block(s, cap, "mid_block", 2, depth, err)) return -1;
    for (int i = 0; i < s->n; i++) sd_binder_ignore(&u->binder, s->names[i]);
    return sd_binder_check_complete(&u->binder, err);
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorts names (and their tensors) and refuses duplicates (shards overlapping). */
static int src_sort(unet_src *s, sd_error *err) {
    const st_tensor **t = malloc(((size_t)s->n + 1) * sizeof *t);
    char **order = malloc(((size_t)s->n + 1) * sizeof *order);
    if (!t || !order) {
        free(t), free(order);
        return sd_fail(err, "out of memory");
    }
    /* sort pointers to names, then find each tensor again by name */
    memcpy(order, s->names, (size_t)s->n * sizeof *order);
    qsort(order, (size_t)s->n, sizeof *order, cmp_str_ptr);
    int rc = 0;
    for (int i = 0; i < s->n && !rc; i++) {
        if (i && !strcmp(order[i - 1], order[i]))
            rc = sd_fail(err, "%s: UNet tensor '%s' appears twice", unet_label(&s->m.unet), order[i]);
        t[i] = unet_find(&s->m.unet, order[i]);
    }
    free(s->names);
    free(s->t);
    s->names = order;
    s->t = t;
    return rc;
}

static void src_close(unet_src *s) {
    for (int i = 0; i < s->n; i++) free(s->names[i]);
    free(s->names);
    free(s->t);
    if (s->opened) sd_model_close(&s->m);
    memset(s, 0, sizeof *s);
}

static int src_open(unet_src *s, const char *path, const char *role, const sd_model_options *mopt, sd_error *err) {
    memset(s, 0, sizeof *s);
    snprintf(s->role, sizeof s->role, "%s", role);
    if (sd_model_open(&s->m, path, mopt, err)) return sd_error_prefix(err, "%s", role);
    s->opened = 1;
    if (s->m.is_segmoe)
        return sd_fail(err, "%s: %s is already a SegMoE model (its UNet config has segmoe_config); merging MoE models "
                            "is not supported",
                       path, role);
    if (!s->m.unet.present || !s->m.unet.weights) return sd_fail(err, "%s: %s has no UNet", path, role);
    int cap = 0;
    int rc = s->m.unet.binder.map ? enumerate_mapped(s, &cap, err) : enumerate_keys(s, &cap, err);
    if (!rc) rc = src_sort(s, err);
    if (rc) return sd_error_prefix(err, "%s", role);
    return 0;
}

/* Same tensor names and shapes as the base, in sorted order: names the first difference. */
static int check_same_arch(const unet_src *base, const unet_src *ex, sd_error *err) {
    const char *bp = base->m.path, *xp = ex->m.path;
    int i = 0, j = 0;
    while (i < base->n || j < ex->n) {
        int c = i >= base->n ? 1 : j >= ex->n ? -1 : strcmp(base->names[i], ex->names[j]);
        char sa[96], sb[96];
        if (c < 0) {
            sd_shape_str(sa, sizeof sa, base->t[i]->ndim, base->t[i]->shape);
            return sd_fail(err, "%s: %s's UNet architecture differs from the base: tensor '%s' (shape %s in the base %s) "
                                "is missing",
                           xp, ex->role, base->names[i], sa, bp);
        }
        if (c > 0) {
            sd_shape_str(sb, sizeof sb, ex->t[j]->ndim, ex->t[j]->shape);
            return sd_fail(err, "%s: %s's UNet architecture differs from the base: tensor '%s' (shape %s) is not in the "
                                "base %s",
                           xp, ex->role, ex->names[j], sb, bp);
        }
        const st_tensor *a = base->t[i], *b = ex->t[j];
        int same = a->ndim == b->ndim;
        for (int d = 0; same && d < a->ndim; d++) same = a->shape[d] == b->shape[d];
        if (!same) {
            sd_shape_str(sa, sizeof sa, a->ndim, a->shape);
            sd_shape_str(sb, sizeof sb, b->ndim, b->shape);
            return sd_fail(err, "%s: %s's UNet architecture differs from the base: tensor '%s' has shape %s, the base "
                                "(%s) has %s",
                           xp, ex->role, base->names[i], sb, bp, sa);
        }
        i++, j++;
    }
    return 0;
}

static int is_float(st_dtype d) { return d == ST_F32 || d == ST_F16 || d == ST_BF16 || d == ST_F64; }

static st_dtype dominant_dtype(const unet_src *s) {
    uint64_t count[ST_DTYPE_COUNT] = {0};
    for (int i = 0; i < s->n; i++)
        if (is_float(s->t[i]->dtype)) count[s->t[i]->dtype] += s->t[i]->numel;
    st_dtype best = ST_F32;
    for (int d = 0; d < ST_DTYPE_COUNT; d++)
        if (count[d] > count[best]) best = (st_dtype)d;
    return best == ST_F64 ? ST_F32 : best;
}

/* ========================================================= output tensors */

typedef struct out_tensor {
    char *name;
    const void *src;  /* into a mapping, or a gate buffer */
    st_dtype src_dtype;
    st_dtype dtype;   /* written */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t numel;
} out_tensor;

typedef struct out_list {
    out_tensor *t;
    int n, cap;
} out_list;

static int out_add(out_list *l, char *name, const void *src, st_dtype src_dtype, st_dtype target, int ndim,
                   const int64_t *shape, sd_error *err) {
    if (!name) return sd_fail(err, "out of memory");
    if (l->n == l->cap) {
        int nc = l->cap ? l->cap * 2 : 1024;
        out_tensor *g = realloc(l->t, (size_t)nc * sizeof *g);
        if (!g) {
            free(name);
            return sd_fail(err, "out of memory");
        }
        l->t = g;
        l->cap = nc;
    }
    out_tensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->src = src;
    t->src_dtype = src_dtype;
    t->dtype = is_float(src_dtype) ? target : src_dtype; /* integers are never converted */
    t->ndim = ndim;
    t->numel = 1;
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        t->numel *= (uint64_t)shape[d];
    }
    return 0;
}

static void out_free(out_list *l) {
    for (int i = 0; i < l->n; i++) free(l->t[i].name);
    free(l->t);
    memset(l, 0, sizeof *l);
}

static char *str_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_fmt(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n < 0 ? NULL : malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Module params: the base tensors named "<module>.<leaf>" (a contiguous run). */
/* Index of the first name >= key in a sorted list. */
static int lower_bound(char *const *names, int n, const char *key) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (strcmp(names[mid], key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Module params: the names "<module>.<leaf>" (a contiguous run when sorted). */
static int module_range(const unet_src *s, const char *module, int *lo, int *hi) {
    char pre[224];
    snprintf(pre, sizeof pre, "%s.", module);
    size_t pl = strlen(pre);
    *lo = *hi = lower_bound(s->names, s->n, pre);
    while (*hi < s->n && !strncmp(s->names[*hi], pre, pl)) (*hi)++;
    return *hi > *lo ? 0 : -1;
}

typedef struct merge_ctx {
    const sd_segmoe_config *cfg;
    const sd_merge_options *opt;
    unet_src base;
    unet_src *experts;     /* [E] */
    int n_open;            /* experts opened */
    sd_moe_plan plan;
    float **gates;         /* [n_modules] each [E, in] */
    st_dtype dtype;
    out_list out;
    char *tmp_dir;
} merge_ctx;

static int build_outputs(merge_ctx *c, sd_error *err) {
    const unet_src *b = &c->base;
    const int E = c->cfg->n_experts;
    unsigned char *replaced = calloc((size_t)b->n + 1, 1);
    if (!replaced) return sd_fail(err, "out of memory");
    int rc = 0;
    for (int m = 0; !rc && m < c->plan.n_modules; m++) {
        const sd_moe_module *mod = &c->plan.modules[m];
        int lo, hi;
        if (module_range(b, mod->name, &lo, &hi)) {
            rc = sd_fail(err, "%s: no UNet tensors under '%s.'", b->m.path, mod->name);
            break;
        }
        int64_t gshape[2] = {E, mod->in_dim};
        rc = out_add(&c->out, str_fmt("%s.gate.weight", mod->name), c->gates[m], ST_F32, c->dtype, 2, gshape, err);
        for (int i = lo; !rc && i < hi; i++) {
            replaced[i] = 1;
            const char *leaf = b->names[i] + strlen(mod->name) + 1;
            for (int e = 0; !rc && e < E; e++) {
                const unet_src *x = &c->experts[e];
                const st_tensor *src = x->t[lower_bound(x->names, x->n, b->names[i])]; /* present: arch checked */
                rc = out_add(&c->out, str_fmt("%s.experts.%d.%s", mod->name, e, leaf), src->data, src->dtype,
                             c->dtype, b->t[i]->ndim, b->t[i]->shape, err);
            }
        }
    }
    for (int i = 0; !rc && i < b->n; i++) {
        const st_tensor *t = b->t[i];
        if (!replaced[i])
            rc = out_add(&c->out, dup_str(b->names[i]), t->data, t->dtype, c->dtype, t->ndim, t->shape, err);
    }
    free(replaced);
    return rc;
}

/* ============================================ streaming safetensors writer */

static int cmp_out(const void *a, const void *b) {
    return strcmp(((const out_tensor *)a)->name, ((const out_tensor *)b)->name);
}

static char *build_header(out_list *l, size_t *len) {
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    char ver[16];
    snprintf(ver, sizeof ver, "%d", SD_MERGE_FORMAT_VERSION);
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddStringToObject(meta, "sdmoe_format", SD_MERGE_FORMAT);
    cJSON_AddStringToObject(meta, "sdmoe_format_version", ver);
    uint64_t off = 0;
    for (int i = 0; i < l->n; i++) {
        const out_tensor *t = &l->t[i];
        cJSON *o = cJSON_AddObjectToObject(root, t->name);
        cJSON_AddStringToObject(o, "dtype", st_dtype_name(t->dtype));
        cJSON *shape = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        uint64_t nb = t->numel * st_dtype_size(t->dtype);
        cJSON *offs = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    char *h = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (h) *len = strlen(h);
    return h;
}

static void to_f32(const void *src, st_dtype dt, uint64_t first, size_t n, float *dst) {
    switch (dt) {
    case ST_F16: sd_f16_to_f32_n((const uint16_t *)src + first, dst, n); break;
    case ST_BF16: sd_bf16_to_f32_n((const uint16_t *)src + first, dst, n); break;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, (const char *)src + (first + i) * 8, 8);
            dst[i] = (float)v;
        }
        break;
    default: memcpy(dst, (const float *)src + first, n * sizeof(float));
    }
}

/* Writes one tensor, copying bytes when the dtype is unchanged. */
static int write_tensor(FILE *fp, const out_tensor *t, float *buf, uint16_t *hbuf) {
    if (t->dtype == t->src_dtype) {
        size_t nb = (size_t)(t->numel * st_dtype_size(t->dtype));
        return nb == 0 || fwrite(t->src, 1, nb, fp) == nb ? 0 : -1;
    }
    for (uint64_t done = 0; done < t->numel;) {
        size_t n = (size_t)(t->numel - done < CONVERT_CHUNK ? t->numel - done : CONVERT_CHUNK);
        to_f32(t->src, t->src_dtype, done, n, buf);
        const void *w = buf;
        if (t->dtype == ST_F16) {
            sd_f32_to_f16_n(buf, hbuf, n);
            w = hbuf;
        } else if (t->dtype == ST_BF16) {
            sd_f32_to_bf16_n(buf, hbuf, n);
            w = hbuf;
        }
        size_t nb = n * st_dtype_size(t->dtype);
        if (fwrite(w, 1, nb, fp) != nb) return -1;
        done += n;
    }
    return 0;
}

static int write_unet_file(merge_ctx *c, const char *path, uint64_t *bytes, sd_error *err) {
    out_list *l = &c->out;
    qsort(l->t, (size_t)l->n, sizeof *l->t, cmp_out);
    for (int i = 1; i < l->n; i++)
        if (!strcmp(l->t[i - 1].name, l->t[i].name))
            return sd_fail(err, "%s: duplicate output tensor '%s' (the base already has MoE-style names?)", c->base.m.path,
                           l->t[i].name);
    size_t hlen = 0;
    char *hdr = build_header(l, &hlen);
    float *buf = malloc(CONVERT_CHUNK * sizeof(float));
    uint16_t *hbuf = malloc(CONVERT_CHUNK * sizeof(uint16_t));
    sd_atomic_file af = {0};
    int rc = !hdr || !buf || !hbuf ? sd_fail(err, "out of memory") : sd_atomic_open(&af, path, err);
    if (rc) {
        free(hdr), free(buf), free(hbuf);
        return -1;
    }
    size_t padded = (hlen + 7) & ~(size_t)7; /* 8-byte aligned data section */
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(lenbuf, 1, 8, af.fp) == 8 && fwrite(hdr, 1, hlen, af.fp) == hlen;
    for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', af.fp) != EOF;
    uint64_t total = 0, done = 0;
    for (int i = 0; i < l->n; i++) total += l->t[i].numel * st_dtype_size(l->t[i].dtype);
    for (int i = 0; ok && i < l->n; i++) {
        ok = !write_tensor(af.fp, &l->t[i], buf, hbuf);
        done += l->t[i].numel * st_dtype_size(l->t[i].dtype);
        if (c->opt->progress) c->opt->progress(c->opt->progress_ctx, "unet", done, total);
    }
    free(hdr), free(buf), free(hbuf);
    if (!ok) {
        int e = errno;
        sd_atomic_abort(&af);
        return sd_fail(err, "%s: write failed: %s", path, strerror(e));
    }
    *bytes = 8 + padded + total;
    return sd_atomic_commit(&af, err);
}

/* ================================================================ configs */

/* Sorts an object's keys recursively (diffusers writes json.dumps(sort_keys=True)). */
static void json_sort(cJSON *o) {
    if (!o) return;
    for (cJSON *c = o->child; c; c = c->next) json_sort(c);
    if (!cJSON_IsObject(o) || !o->child) return;
    cJSON *sorted = NULL;
    for (cJSON *c = o->child; c;) {
        cJSON *next = c->next;
        cJSON **pp = &sorted;
        while (*pp && strcmp((*pp)->string, c->string) <= 0) pp = &(*pp)->next;
        c->next = *pp;
        *pp = c;
        c = next;
    }
    cJSON *prev = NULL; /* cJSON keeps child->prev pointing at the last item */
    for (cJSON *c = sorted; c; c = c->next) {
        c->prev = prev;
        prev = c;
    }
    sorted->prev = prev;
    o->child = sorted;
}

static int write_json(const char *dir, const char *rel, cJSON *j, sd_error *err) {
    json_sort(j);
    char *text = cJSON_Print(j);
    char *path = sd_path_join(dir, rel);
    sd_atomic_file af = {0};
    int rc = -1;
    if (!text || !path)
        sd_fail(err, "out of memory");
    else if (!sd_atomic_open(&af, path, err)) {
        if (fputs(text, af.fp) < 0 || fputc('\n', af.fp) == EOF) {
            sd_atomic_abort(&af);
            sd_fail(err, "%s: write failed", path);
        } else {
            rc = sd_atomic_commit(&af, err);
        }
    }
    free(text);
    free(path);
    return rc;
}

static void set_item(cJSON *o, const char *key, cJSON *v) {
    if (cJSON_GetObjectItemCaseSensitive(o, key))
        cJSON_ReplaceItemInObjectCaseSensitive(o, key, v);
    else
        cJSON_AddItemToObject(o, key, v);
}

static cJSON *pair(const char *a, const char *b) {
    cJSON *arr = cJSON_CreateArray();
    cJSON_AddItemToArray(arr, a ? cJSON_CreateString(a) : cJSON_CreateNull());
    cJSON_AddItemToArray(arr, b ? cJSON_CreateString(b) : cJSON_CreateNull());
    return arr;
}

/* StableDiffusionXLPipeline.save_pretrained's model_index.json: the
 * components, force_zeros_for_empty_prompt (the base's, default true) and
 * the optional image_encoder / feature_extractor as null. */
static int write_model_index_sdxl(merge_ctx *c, sd_error *err) {
    const cJSON *base_idx = c->base.m.model_index;
    cJSON *j = cJSON_CreateObject();
    if (!j) return sd_fail(err, "out of memory");
    cJSON_AddStringToObject(j, "_class_name", "StableDiffusionXLPipeline");
    cJSON_AddStringToObject(j, "_diffusers_version", MERGE_DIFFUSERS_VERSION);
    cJSON_AddStringToObject(j, "_name_or_path", c->cfg->base_model);
    cJSON_AddItemToObject(j, "feature_extractor", pair(NULL, NULL));
    const cJSON *fz = cJSON_GetObjectItemCaseSensitive(base_idx, "force_zeros_for_empty_prompt");
    cJSON_AddBoolToObject(j, "force_zeros_for_empty_prompt", !cJSON_IsFalse(fz));
    cJSON_AddItemToObject(j, "image_encoder", pair(NULL, NULL));
    cJSON_AddItemToObject(j, "scheduler", pair("diffusers", "DDPMScheduler"));
    static const char *const comps[][3] = {{"text_encoder", "transformers", "CLIPTextModel"},
                                           {"text_encoder_2", "transformers", "CLIPTextModelWithProjection"},
                                           {"tokenizer", "transformers", "CLIPTokenizer"},
                                           {"tokenizer_2", "transformers", "CLIPTokenizer"},
                                           {"unet", "diffusers", "UNet2DConditionModel"},
                                           {"vae", "diffusers", "AutoencoderKL"}};
    for (int i = 0; i < 6; i++) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(base_idx, comps[i][0]);
        int keep = strcmp(comps[i][0], "unet") && cJSON_IsArray(b) && cJSON_GetArraySize(b) == 2;
        cJSON_AddItemToObject(j, comps[i][0], keep ? cJSON_Duplicate(b, 1) : pair(comps[i][1], comps[i][2]));
    }
    int rc = write_json(c->tmp_dir, "model_index.json", j, err);
    cJSON_Delete(j);
    return rc;
}

static int write_model_index(merge_ctx *c, sd_error *err) {
    if (c->cfg->type == SD_SEGMOE_TYPE_SDXL) return write_model_index_sdxl(c, err);
    const cJSON *base_idx = c->base.m.model_index;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "_class_name", "StableDiffusionPipeline");
    cJSON_AddStringToObject(j, "_diffusers_version", MERGE_DIFFUSERS_VERSION);
    cJSON_AddStringToObject(j, "_name_or_path", c->cfg->base_model);
    cJSON_AddItemToObject(j, "feature_extractor", pair(NULL, NULL));
    cJSON_AddItemToObject(j, "image_encoder", pair(NULL, NULL));
    cJSON_AddFalseToObject(j, "requires_safety_checker");
    cJSON_AddItemToObject(j, "safety_checker", pair(NULL, NULL));
    cJSON_AddItemToObject(j, "scheduler", pair("diffusers", "DDPMScheduler"));
    static const char *const comps[][3] = {{"text_encoder", "transformers", "CLIPTextModel"},
                                           {"tokenizer", "transformers", "CLIPTokenizer"},
                                           {"unet", "diffusers", "UNet2DConditionModel"},
                                           {"vae", "diffusers", "AutoencoderKL"}};
    for (int i = 0; i < 4; i++) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(base_idx, comps[i][0]);
        int keep = i != 2 && cJSON_IsArray(b) && cJSON_GetArraySize(b) == 2;
        cJSON_AddItemToObject(j, comps[i][0], keep ? cJSON_Duplicate(b, 1) : pair(comps[i][1], comps[i][2]));
    }
    int rc = write_json(c->tmp_dir, "model_index.json", j, err);
    cJSON_Delete(j);
    return rc;
}

/* DDPMScheduler.from_config(base scheduler config) as saved: the base's keys
 * plus DDPM's __init__ defaults (diffusers v0.27.2 scheduling_ddpm.py). */
static int write_scheduler(merge_ctx *c, sd_error *err) {
    const cJSON *base = c->base.m.scheduler_config;
    if (base && !cJSON_IsObject(base))
        return sd_fail(err, "%s: expected a JSON object", c->base.m.scheduler_config_path);
    cJSON *j = base ? cJSON_Duplicate(base, 1) : cJSON_CreateObject();
    if (!j) return sd_fail(err, "out of memory");
    set_item(j, "_class_name", cJSON_CreateString("DDPMScheduler"));
    set_item(j, "_diffusers_version", cJSON_CreateString(MERGE_DIFFUSERS_VERSION));
    const struct { const char *k; cJSON *(*mk)(void); double num; const char *str; } defs[] = {
        {"num_train_timesteps", NULL, 1000, NULL}, {"beta_start", NULL, 0.0001, NULL},
        {"beta_end", NULL, 0.02, NULL},            {"beta_schedule", NULL, 0, "linear"},
        {"trained_betas", cJSON_CreateNull, 0, NULL}, {"variance_type", NULL, 0, "fixed_small"},
        {"clip_sample", cJSON_CreateTrue, 0, NULL}, {"prediction_type", NULL, 0, "epsilon"},
        {"thresholding", cJSON_CreateFalse, 0, NULL}, {"dynamic_thresholding_ratio", NULL, 0.995, NULL},
        {"clip_sample_range", NULL, 1.0, NULL},    {"sample_max_value", NULL, 1.0, NULL},
        {"timestep_spacing", NULL, 0, "leading"},  {"steps_offset", NULL, 0, NULL},
        {"rescale_betas_zero_snr", cJSON_CreateFalse, 0, NULL},
    };
    for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
        if (cJSON_GetObjectItemCaseSensitive(j, defs[i].k)) continue;
        cJSON *v = defs[i].mk ? defs[i].mk() : defs[i].str ? cJSON_CreateString(defs[i].str)
                                                          : cJSON_CreateNumber(defs[i].num);
        cJSON_AddItemToObject(j, defs[i].k, v);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "_use_default_values");
    int rc = write_json(c->tmp_dir, "scheduler/scheduler_config.json", j, err);
    cJSON_Delete(j);
    return rc;
}

static const char *dtype_flag(st_dtype d) { return d == ST_F16 ? "f16" : d == ST_BF16 ? "bf16" : "f32"; }

static int write_unet_config(merge_ctx *c, sd_error *err) {
    const sd_component *u = &c->base.m.unet;
    if (!cJSON_IsObject(u->config)) return sd_fail(err, "%s: expected a JSON object", u->config_path);
    cJSON *j = cJSON_Duplicate(u->config, 1);
    int rc;
    /* diffusers records where the pipeline's UNet was loaded from */
    char *origin = str_fmt("%s/unet", c->cfg->base_model);
    if (origin) set_item(j, "_name_or_path", cJSON_CreateString(origin));
    free(origin);
    cJSON *s = cJSON_Duplicate(c->cfg->yaml, 1);
    set_item(s, "num_experts", cJSON_CreateNumber(c->cfg->n_experts));
    set_item(s, "num_experts_per_tok", cJSON_CreateNumber(c->cfg->num_experts_per_tok));
    set_item(s, "moe_layers", cJSON_CreateString(sd_segmoe_layers_name(c->cfg->moe_layers)));
    set_item(s, "type", cJSON_CreateString(sd_segmoe_type_name(c->cfg->type)));
    set_item(s, "down_idx_start", cJSON_CreateNumber(c->plan.down_start));
    set_item(s, "down_idx_end", cJSON_CreateNumber(c->plan.down_end));
    set_item(s, "up_idx_start", cJSON_CreateNumber(c->plan.up_start));
    set_item(s, "up_idx_end", cJSON_CreateNumber(c->plan.up_end));
    cJSON *ours = cJSON_CreateObject();
    cJSON_AddStringToObject(ours, "format", SD_MERGE_FORMAT);
    cJSON_AddNumberToObject(ours, "format_version", SD_MERGE_FORMAT_VERSION);
    cJSON_AddNumberToObject(ours, "seed", (double)c->opt->seed);
    cJSON_AddStringToObject(ours, "init", sd_segmoe_init_name(c->cfg->init));
    cJSON_AddStringToObject(ours, "dtype", dtype_flag(c->dtype));
    set_item(s, "sdmoe", ours);
    set_item(j, "segmoe_config", s);
    rc = write_json(c->tmp_dir, "unet/config.json", j, err);
    cJSON_Delete(j);
    return rc;
}

/* ================================================= component folder copies */

static int copy_file(const char *src, const char *dst, sd_error *err) {
    int in = open(src, O_RDONLY);
    if (in < 0) return sd_fail(err, "%s: cannot read: %s", src, strerror(errno));
    const size_t cap = (size_t)1 << 20;
    char *buf = malloc(cap);
    sd_atomic_file af;
    if (!buf || sd_atomic_open(&af, dst, err)) {
        close(in);
        free(buf);
        return buf ? -1 : sd_fail(err, "out of memory");
    }
    ssize_t n;
    int ok = 1;
    while (ok && (n = read(in, buf, cap)) > 0) ok = fwrite(buf, 1, (size_t)n, af.fp) == (size_t)n;
    if (n < 0) ok = 0;
    close(in);
    free(buf);
    if (!ok) {
        sd_atomic_abort(&af);
        return sd_fail(err, "%s: copy to %s failed", src, dst);
    }
    return sd_atomic_commit(&af, err);
}

static int is_weights_name(const char *n) {
    static const char *const ext[] = {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".h5",
                                      ".pb", NULL};
    size_t nl = strlen(n);
    for (int i = 0; ext[i]; i++) {
        size_t el = strlen(ext[i]);
        if (nl >= el && !strcmp(n + nl - el, ext[i])) return 1;
    }
    return 0;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Copies the regular non-weights files of src_dir (configs, tokenizer
 * files, a shard index) and then the given weight files into tmp/<comp>/. */
static int copy_component(merge_ctx *c, const char *comp, const char *src_dir, char *const *files, int n_files,
                          sd_error *err) {
    char *dst_dir = sd_path_join(c->tmp_dir, comp);
    int rc = 0;
    DIR *d = NULL;
    if (!dst_dir)
        rc = sd_fail(err, "out of memory");
    else if (!(d = opendir(src_dir)))
        rc = sd_fail(err, "%s: cannot read the base model's %s folder: %s", src_dir, comp, strerror(errno));
    else if (mkdir(dst_dir, 0755))
        rc = sd_fail(err, "%s: cannot create: %s", dst_dir, strerror(errno));
    for (struct dirent *de; !rc && (de = readdir(d));) {
        if (de->d_name[0] == '.' || is_weights_name(de->d_name)) continue;
        char *s = sd_path_join(src_dir, de->d_name), *t = sd_path_join(dst_dir, de->d_name);
        if (!s || !t)
            rc = sd_fail(err, "out of memory");
        else if (sd_is_file(s))
            rc = copy_file(s, t, err);
        free(s), free(t);
    }
    if (d) closedir(d);
    for (int i = 0; !rc && i < n_files; i++) {
        char *t = sd_path_join(dst_dir, base_name(files[i]));
        rc = t ? copy_file(files[i], t, err) : sd_fail(err, "out of memory");
        free(t);
    }
    free(dst_dir);
    return rc;
}

/* The folder of a component (its config.json's folder). */
static char *component_dir(const sd_component *comp) {
    const char *slash = strrchr(comp->config_path, '/');
    return slash ? strndup(comp->config_path, (size_t)(slash - comp->config_path)) : dup_str(".");
}

static int copy_components(merge_ctx *c, sd_error *err) {
    sd_model *m = &c->base.m;
    const int sdxl = c->cfg->type == SD_SEGMOE_TYPE_SDXL;
    const sd_component *comps[3] = {&m->text_encoder, &m->vae, &m->text_encoder_2};
    int rc = 0;
    for (int i = 0; !rc && i < (sdxl ? 3 : 2); i++) {
        if (!comps[i]->present) return sd_fail(err, "%s: the base model has no %s", m->path, comps[i]->name);
        char *dir = component_dir(comps[i]);
        rc = dir ? copy_component(c, comps[i]->name, dir, comps[i]->files, comps[i]->n_files, err)
                 : sd_fail(err, "out of memory");
        free(dir);
    }
    if (!rc) rc = copy_component(c, "tokenizer", m->tokenizer_dir, NULL, 0, err);
    if (!rc && sdxl) {
        if (!m->tokenizer_2_dir) return sd_fail(err, "%s: the base model has no tokenizer_2", m->path);
        rc = copy_component(c, "tokenizer_2", m->tokenizer_2_dir, NULL, 0, err);
    }
    return rc;
}

/* ============================================================== temp folder */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static int dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int empty = 1;
    for (struct dirent *de; empty && (de = readdir(d));)
        empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
    closedir(d);
    return empty;
}

int sd_merge_check_output(const char *out_dir, sd_error *err) {
    struct stat st;
    if (!out_dir || !*out_dir) return sd_fail(err, "merge: no output folder given");
    if (lstat(out_dir, &st) == 0 && !(S_ISDIR(st.st_mode) && dir_is_empty(out_dir)))
        return sd_fail(err, "%s: already exists (give a new folder; nothing is overwritten)", out_dir);
    return 0;
}

static int make_tmp_dir(merge_ctx *c, const char *out_dir, sd_error *err) {
    if (sd_merge_check_output(out_dir, err)) return -1;
    size_t n = strlen(out_dir);
    while (n > 1 && out_dir[n - 1] == '/') n--;
    size_t cap = n + 32;
    if (!(c->tmp_dir = malloc(cap))) return sd_fail(err, "out of memory");
    snprintf(c->tmp_dir, cap, "%.*s.tmp-%ld", (int)n, out_dir, (long)getpid());
    remove_tree(c->tmp_dir); /* a leftover of an earlier crashed run with our pid */
    if (mkdir(c->tmp_dir, 0755)) {
        int e = errno;
        free(c->tmp_dir);
        c->tmp_dir = NULL;
        return sd_fail(err, "%.*s: cannot create the output folder: %s", (int)n, out_dir, strerror(e));
    }
    static const char *const subs[] = {"scheduler", "unet", NULL};
    for (int i = 0; subs[i]; i++) {
        char *p = sd_path_join(c->tmp_dir, subs[i]);
        int bad = !p || mkdir(p, 0755);
        free(p);
        if (bad) return sd_fail(err, "%s: cannot create %s/", c->tmp_dir, subs[i]);
    }
    return 0;
}

/* ================================================================== driver */

static int open_sources(merge_ctx *c, sd_error *err) {
    const sd_segmoe_config *cfg = c->cfg;
    const sd_model_options *mopt = c->opt->model;
    if (src_open(&c->base, cfg->base_path, "base_model", mopt, err)) return -1;
    if (c->base.m.kind != SD_MODEL_DIFFUSERS)
        return sd_fail(err, "%s: base_model: a single-file checkpoint cannot be the base yet (its VAE and text encoder "
                            "are copied as diffusers folders); give a diffusers folder (experts may be single files)",
                       cfg->base_path);
    if (!(c->experts = calloc((size_t)cfg->n_experts, sizeof *c->experts))) return sd_fail(err, "out of memory");
    for (int e = 0; e < cfg->n_experts; e++) {
        char role[48];
        snprintf(role, sizeof role, "experts[%d]", e);
        c->n_open = e + 1;
        if (src_open(&c->experts[e], cfg->experts[e].path, role, mopt, err)) return -1;
        if (check_same_arch(&c->base, &c->experts[e], err)) return -1;
    }
    return 0;
}

int sd_merge_model_is_sdxl(const sd_model *m) {
    const cJSON *t = m->unet.present ? cJSON_GetObjectItemCaseSensitive(m->unet.config, "addition_embed_type") : NULL;
    return cJSON_IsString(t) && !strcmp(t->valuestring, "text_time");
}

int sd_merge_check_type(const sd_segmoe_config *cfg, const sd_model *m, const char *role, sd_error *err) {
    const int sdxl = sd_merge_model_is_sdxl(m);
    if (cfg->type == SD_SEGMOE_TYPE_SDXL && !sdxl)
        return sd_fail(err, "%s: type: sdxl%s, but %s %s is not an SDXL model (its UNet config has no "
                            "addition_embed_type \"text_time\"); set `type: sd` for SD 1.x models",
                       cfg->yaml_path, cfg->type_given ? "" : " (SegMoE's default when `type` is absent)", role,
                       m->path);
    if (cfg->type == SD_SEGMOE_TYPE_SD && sdxl)
        return sd_fail(err, "%s: type: sd, but %s %s is an SDXL model (its UNet has addition_embed_type "
                            "\"text_time\"); set `type: sdxl`",
                       cfg->yaml_path, role, m->path);
    return 0;
}

static int fetch_gates(merge_ctx *c, sd_error *err) {
    const int E = c->cfg->n_experts;
    if (!(c->gates = calloc((size_t)c->plan.n_modules + 1, sizeof *c->gates))) return sd_fail(err, "out of memory");
    for (int m = 0; m < c->plan.n_modules; m++)
        if (!(c->gates[m] = calloc((size_t)E * (size_t)c->plan.modules[m].in_dim, sizeof(float))))
            return sd_fail(err, "out of memory");
    if (c->cfg->init == SD_SEGMOE_INIT_RANDOM) {
        sd_merge_random_gates(&c->plan, E, c->opt->seed, c->gates);
        return 0;
    }
    if (!c->opt->gates) return sd_fail(err, "%s: init: hidden needs gate values, but none were provided", c->cfg->yaml_path);
    for (int m = 0; m < c->plan.n_modules; m++) {
        if (c->opt->gates(c->opt->gates_ctx, &c->plan.modules[m], m, E, c->gates[m], err)) return -1;
        size_t n = (size_t)E * (size_t)c->plan.modules[m].in_dim;
        for (size_t i = 0; i < n; i++)
            if (!isfinite(c->gates[m][i]))
                return sd_fail(err, "%s: gate of expert %zu is not finite", c->plan.modules[m].name,
                               i / (size_t)c->plan.modules[m].in_dim);
    }
    return 0;
}

static void merge_free(merge_ctx *c) {
    out_free(&c->out);
    if (c->gates)
        for (int m = 0; m < c->plan.n_modules; m++) free(c->gates[m]);
    free(c->gates);
    sd_moe_plan_free(&c->plan);
    for (int e = 0; e < c->n_open; e++) src_close(&c->experts[e]);
    free(c->experts);
    src_close(&c->base);
    free(c->tmp_dir);
}

static int write_folder(merge_ctx *c, const char *out_dir, sd_merge_summary *sum, sd_error *err) {
    char *unet_path = sd_path_join(c->tmp_dir, "unet/diffusion_pytorch_model.safetensors");
    uint64_t bytes = 0;
    int rc = unet_path ? 0 : sd_fail(err, "out of memory");
    if (!rc) rc = write_unet_file(c, unet_path, &bytes, err);
    free(unet_path);
    if (!rc) rc = write_unet_config(c, err);
    if (!rc) rc = write_model_index(c, err);
    if (!rc) rc = write_scheduler(c, err);
    if (!rc) rc = copy_components(c, err);
    if (!rc && rename(c->tmp_dir, out_dir))
        rc = sd_fail(err, "%s: cannot move the finished model into place: %s", out_dir, strerror(errno));
    if (rc) return -1;
    char *d = dup_str(out_dir);
    if (d) {
        char *slash = strrchr(d, '/');
        if (slash && slash != d) *slash = 0;
        sd_fsync_dir(slash ? d : ".");
        free(d);
    }
    if (sum) {
        memset(sum, 0, sizeof *sum);
        sum->n_experts = c->cfg->n_experts;
        sum->top_k = c->cfg->num_experts_per_tok;
        sum->n_modules = c->plan.n_modules;
        sum->n_tensors = c->out.n;
        for (int i = 0; i < c->out.n; i++) sum->n_params += (int64_t)c->out.t[i].numel;
        sum->unet_bytes = bytes;
        sum->dtype = c->dtype;
    }
    return 0;
}

int sd_merge_write(const sd_segmoe_config *cfg, const char *out_dir, const sd_merge_options *opt,
                   sd_merge_summary *summary, sd_error *err) {
    merge_ctx c = {.cfg = cfg, .opt = opt};
    if (opt->dtype != SD_MERGE_DTYPE_AUTO && opt->dtype != ST_F32 && opt->dtype != ST_F16 && opt->dtype != ST_BF16)
        return sd_fail(err, "merge: output dtype must be f32, f16 or bf16");
    int rc = sd_merge_check_output(out_dir, err);
    if (!rc) rc = open_sources(&c, err);
    if (!rc) rc = sd_merge_check_type(cfg, &c.base.m, "base_model", err);
    if (!rc) rc = sd_moe_plan_build(&c.plan, &c.base.m.unet, cfg->type, cfg->moe_layers, err);
    if (!rc) {
        c.dtype = opt->dtype == SD_MERGE_DTYPE_AUTO ? dominant_dtype(&c.base) : (st_dtype)opt->dtype;
        rc = fetch_gates(&c, err);
    }
    if (!rc) rc = build_outputs(&c, err);
    if (!rc) rc = make_tmp_dir(&c, out_dir, err);
    if (!rc) rc = write_folder(&c, out_dir, summary, err);
    if (rc && c.tmp_dir) remove_tree(c.tmp_dir);
    merge_free(&c);
    return rc;
}
