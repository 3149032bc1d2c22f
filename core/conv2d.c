/* core/conv2d — 2-D convolutions through oneDNN 2.6 on NHWC activations
 * (declared in core/kernels.h).
 *
 * Weights are reordered ONCE, at create time, into the format oneDNN's
 * convolution prefers for this machine (queried with format_tag::any) and
 * kept in that format; activations stay NHWC (oneDNN's preferred activation
 * layout for brgconv/jit convs), so no reorders happen between layers.  One
 * primitive per input shape / stride / accumulate mode is created on first
 * use and cached. */
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels.h"
#include "core/memory.h"
#include "core/weight_cache.h"
#include "core/weights.h"

/* ----------------------------------------------------- shared engine/stream */

static dnnl_engine_t g_engine;
static dnnl_stream_t g_stream;
static dnnl_status_t g_engine_status = dnnl_success;
static pthread_once_t g_engine_once = PTHREAD_ONCE_INIT;

static void engine_init(void) {
    g_engine_status = dnnl_engine_create(&g_engine, dnnl_cpu, 0);
    if (g_engine_status == dnnl_success)
        g_engine_status = dnnl_stream_create(&g_stream, g_engine, dnnl_stream_default_flags);
}

static int engine_get(sd_error *err) {
    pthread_once(&g_engine_once, engine_init);
    if (g_engine_status != dnnl_success)
        return sd_fail(err, "core/conv2d: oneDNN CPU engine creation failed (status %d)",
                       (int)g_engine_status);
    return 0;
}

/* ------------------------------------------------------------------ types */

/* One prepared primitive for one input geometry. */
typedef struct conv_entry {
    int64_t n, h, w, x_ld, y_ld;
    int blk_in, blk_out;               /* layouts (NHWC with x_ld / y_ld, NCHW, 8, 16) */
    int accumulate;
    dnnl_primitive_t prim;
    dnnl_memory_t src, dst, wei, bias; /* src/dst handles are set per call */
    int wei_index;                     /* which reordered weight copy it uses */
    /* When oneDNN has only its reference kernel for the requested layouts, the
     * primitive runs on internal layouts and the data is converted around it. */
    int run_in, run_out;               /* layouts the primitive runs on */
    float *tmp_in, *tmp_out;           /* converted input / output (owned), or NULL */
} conv_entry;

/* Weights in one oneDNN format (normally exactly one per conv). */
typedef struct conv_weights {
    dnnl_memory_desc_t md;
    dnnl_memory_t mem; /* a view of `own` (or, for copy 0 while loading, of the caller's weights) */
    void *own;         /* sd_big_alloc'd buffer of own_bytes, NULL for a view */
    size_t own_bytes;
} conv_weights;

/* A weights memory of format md on a buffer of our own (huge pages: see core/memory.h). */
static int weights_mem_alloc(conv_weights *w, const dnnl_memory_desc_t *md) {
    w->md = *md;
    w->own_bytes = dnnl_memory_desc_get_size(md);
    w->own = sd_big_alloc(w->own_bytes);
    if (!w->own) return -1;
    if (dnnl_memory_create(&w->mem, md, g_engine, w->own) != dnnl_success) {
        sd_big_free(w->own, w->own_bytes);
        w->own = NULL, w->mem = NULL;
        return -1;
    }
    return 0;
}

static void weights_mem_free(conv_weights *w) {
    if (w->mem) dnnl_memory_destroy(w->mem);
    sd_big_free(w->own, w->own_bytes);
    w->mem = NULL, w->own = NULL;
}

struct sd_conv2d {
    sd_conv2d_desc d;
    float *bias;                /* [c_out] copy, or NULL */
    conv_weights wts[4];
    int n_wts;
    conv_entry *entries;
    int n_entries, cap_entries;
};

#define CHECK(call, what)                                                                      \
    do {                                                                                       \
        dnnl_status_t st_ = (call);                                                            \
        if (st_ != dnnl_success)                                                               \
            return sd_fail(err, "core/conv2d: %s failed (oneDNN status %d) for conv %lldx%lldx%lldx%lld", \
                           what, (int)st_, (long long)c->d.c_out, (long long)c->d.c_in,        \
                           (long long)c->d.kh, (long long)c->d.kw);                            \
    } while (0)

/* sd_preferred_layout: what a 64->64 3x3 convolution on 32x32 asks for with format "any". */
static int g_pref_layout = -1;
static pthread_once_t g_pref_once = PTHREAD_ONCE_INIT;

static void pref_layout_init(void) {
    g_pref_layout = SD_LAYOUT_NHWC;
    if (engine_get(NULL)) return;
    dnnl_memory_desc_t src, wei, dst;
    dnnl_dims_t adims = {1, 64, 32, 32}, wdims = {64, 64, 3, 3}, strides = {1, 1}, pad = {1, 1};
    dnnl_memory_desc_init_by_tag(&src, 4, adims, dnnl_f32, dnnl_format_tag_any);
    dnnl_memory_desc_init_by_tag(&dst, 4, adims, dnnl_f32, dnnl_format_tag_any);
    dnnl_memory_desc_init_by_tag(&wei, 4, wdims, dnnl_f32, dnnl_format_tag_any);
    dnnl_convolution_desc_t cd;
    dnnl_primitive_desc_t pd;
    if (dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &src, &wei, NULL,
                                           &dst, strides, pad, pad) != dnnl_success ||
        dnnl_primitive_desc_create(&pd, &cd, NULL, g_engine, NULL) != dnnl_success)
        return;
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_blocking_desc_t *bd = &md->format_desc.blocking;
    if (md->format_kind == dnnl_blocked && bd->inner_nblks == 1 && bd->inner_idxs[0] == 1 &&
        (bd->inner_blks[0] == 8 || bd->inner_blks[0] == 16))
        g_pref_layout = (int)bd->inner_blks[0];
    dnnl_primitive_desc_destroy(pd);
}

int sd_preferred_layout(void) {
    pthread_once(&g_pref_once, pref_layout_init);
    return g_pref_layout;
}

void sd_conv2d_out_size(const sd_conv2d *c, int64_t h, int64_t w, int64_t *oh, int64_t *ow) {
    *oh = (h + c->d.pad_t + c->d.pad_b - c->d.kh) / c->d.stride_h + 1;
    *ow = (w + c->d.pad_l + c->d.pad_r - c->d.kw) / c->d.stride_w + 1;
}

/* Activation descriptor [n, ch, h, w]: NHWC with pixel stride ld, NCHW, nChw8c or nChw16c. */
static void act_md(dnnl_memory_desc_t *md, int blk, int64_t n, int64_t ch, int64_t h, int64_t w, int64_t ld) {
    dnnl_dims_t dims = {n, ch, h, w};
    if (blk == SD_LAYOUT_NHWC) {
        dnnl_dims_t strides = {h * w * ld, 1, w * ld, ld};
        dnnl_memory_desc_init_by_strides(md, 4, dims, dnnl_f32, strides);
    } else {
        dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32,
                                     blk == SD_LAYOUT_NCHW ? dnnl_nchw : blk == 16 ? dnnl_nChw16c : dnnl_nChw8c);
    }
}

/* Builds the primitive descriptor for one geometry; weights format = any. */
static int conv_pd_create(sd_conv2d *c, dnnl_primitive_desc_t *pd, int blk_in, int blk_out, int64_t n, int64_t h,
                          int64_t w, int64_t x_ld, int64_t y_ld, int accumulate, sd_error *err) {
    int64_t oh, ow;
    sd_conv2d_out_size(c, h, w, &oh, &ow);
    dnnl_memory_desc_t src_md, dst_md, wei_md, bias_md;
    act_md(&src_md, blk_in, n, c->d.c_in, h, w, x_ld);
    act_md(&dst_md, blk_out, n, c->d.c_out, oh, ow, y_ld);
    dnnl_dims_t wdims = {c->d.c_out, c->d.c_in, c->d.kh, c->d.kw};
    CHECK(dnnl_memory_desc_init_by_tag(&wei_md, 4, wdims, dnnl_f32, dnnl_format_tag_any), "weights desc");
    dnnl_dims_t bdims = {c->d.c_out};
    CHECK(dnnl_memory_desc_init_by_tag(&bias_md, 1, bdims, dnnl_f32, dnnl_a), "bias desc");
    dnnl_dims_t strides = {c->d.stride_h, c->d.stride_w};
    dnnl_dims_t pad_l = {c->d.pad_t, c->d.pad_l}, pad_r = {c->d.pad_b, c->d.pad_r};
    dnnl_convolution_desc_t cd;
    CHECK(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct,
                                             &src_md, &wei_md, c->bias ? &bias_md : NULL, &dst_md,
                                             strides, pad_l, pad_r),
          "convolution desc");
    dnnl_primitive_attr_t attr;
    CHECK(dnnl_primitive_attr_create(&attr), "attr");
    if (accumulate) {
        dnnl_post_ops_t po;
        dnnl_post_ops_create(&po);
        dnnl_post_ops_append_sum(po, 1.0f);
        dnnl_primitive_attr_set_post_ops(attr, po);
        dnnl_post_ops_destroy(po);
    }
    dnnl_status_t st = dnnl_primitive_desc_create(pd, &cd, attr, g_engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    CHECK(st, "convolution primitive desc");
    return 0;
}

/* Returns the index of a weights copy in format `md`, reordering if new. */
static int conv_weights_get(sd_conv2d *c, const dnnl_memory_desc_t *md, int *index, sd_error *err) {
    for (int i = 0; i < c->n_wts; i++)
        if (dnnl_memory_desc_equal(&c->wts[i].md, md)) {
            *index = i;
            return 0;
        }
    if (c->n_wts == (int)(sizeof c->wts / sizeof c->wts[0]))
        return sd_fail(err, "core/conv2d: too many weight formats for one convolution");
    conv_weights *nw = &c->wts[c->n_wts];
    if (weights_mem_alloc(nw, md)) return sd_fail(err, "core/conv2d: out of memory for the weights");
    const conv_weights *from = &c->wts[0];
    dnnl_primitive_desc_t rpd;
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, &from->md, g_engine, md, g_engine, NULL),
          "weights reorder desc");
    dnnl_primitive_t r;
    dnnl_status_t st = dnnl_primitive_create(&r, rpd);
    dnnl_primitive_desc_destroy(rpd);
    CHECK(st, "weights reorder");
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from->mem}, {DNNL_ARG_TO, nw->mem}};
    st = dnnl_primitive_execute(r, g_stream, 2, args);
    if (st == dnnl_success) st = dnnl_stream_wait(g_stream);
    dnnl_primitive_destroy(r);
    CHECK(st, "weights reorder execute");
    *index = c->n_wts++;
    return 0;
}

static int pd_is_reference(dnnl_primitive_desc_t pd) {
    const char *impl = NULL;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl) return 0;
    return strncmp(impl, "ref", 3) == 0;
}

/* Creates the primitive descriptor for e, avoiding oneDNN's reference kernel
 * (100x slower) by trying other layouts: the requested ones, the preferred
 * blocked layout on both sides, NCHW in (oneDNN's first-layer path for few
 * input channels), NHWC on both sides.  Sets e->run_in / e->run_out. */
static int conv_pd_pick(sd_conv2d *c, conv_entry *e, dnnl_primitive_desc_t *pd, sd_error *err) {
    int pref = sd_preferred_layout();
    int dense = e->x_ld == c->d.c_in && e->y_ld == c->d.c_out; /* conversions need unstrided data */
    int cand[4][2] = {{e->blk_in, e->blk_out}, {pref, pref}, {SD_LAYOUT_NCHW, pref}, {SD_LAYOUT_NHWC, SD_LAYOUT_NHWC}};
    int n_cand = dense ? 4 : 1;
    for (int i = 0; i < n_cand; i++) {
        int in = cand[i][0], out = cand[i][1];
        int acc = e->accumulate && out == e->blk_out;
        if (conv_pd_create(c, pd, in, out, e->n, e->h, e->w, in == e->blk_in ? e->x_ld : c->d.c_in,
                           out == e->blk_out ? e->y_ld : c->d.c_out, acc, err)) {
            if (i == 0) return -1;
            continue;
        }
        if (i + 1 < n_cand && pd_is_reference(*pd)) {
            dnnl_primitive_desc_destroy(*pd);
            continue;
        }
        e->run_in = in, e->run_out = out;
        return 0;
    }
    /* every alternative was a reference kernel: run the requested layouts */
    e->run_in = e->blk_in, e->run_out = e->blk_out;
    return conv_pd_create(c, pd, e->blk_in, e->blk_out, e->n, e->h, e->w, e->x_ld, e->y_ld, e->accumulate, err);
}

static int conv_entry_create(sd_conv2d *c, conv_entry *e, sd_error *err) {
    dnnl_primitive_desc_t pd;
    if (conv_pd_pick(c, e, &pd, err)) return -1;
    int64_t oh, ow;
    sd_conv2d_out_size(c, e->h, e->w, &oh, &ow);
    if (e->run_in != e->blk_in)
        e->tmp_in = malloc((size_t)sd_layout_floats(e->run_in, e->n, c->d.c_in, e->h * e->w) * sizeof(float));
    if (e->run_out != e->blk_out)
        e->tmp_out = malloc((size_t)sd_layout_floats(e->run_out, e->n, c->d.c_out, oh * ow) * sizeof(float));
    if ((e->run_in != e->blk_in && !e->tmp_in) || (e->run_out != e->blk_out && !e->tmp_out)) {
        dnnl_primitive_desc_destroy(pd);
        return sd_fail(err, "core/conv2d: out of memory");
    }
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *dmd = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    int rc = conv_weights_get(c, wmd, &e->wei_index, err);
    dnnl_status_t st = dnnl_success;
    if (!rc) st = dnnl_memory_create(&e->src, smd, g_engine, DNNL_MEMORY_NONE);
    if (!rc && st == dnnl_success) st = dnnl_memory_create(&e->dst, dmd, g_engine, DNNL_MEMORY_NONE);
    if (!rc && st == dnnl_success) st = dnnl_primitive_create(&e->prim, pd);
    dnnl_primitive_desc_destroy(pd);
    if (rc) return rc;
    CHECK(st, "convolution primitive");
    e->wei = c->wts[e->wei_index].mem;
    return 0;
}

/* A conv with validated sizes and its bias copied; weights not yet prepared. */
static int conv_alloc(sd_conv2d **out, const sd_conv2d_desc *d, const float *bias, sd_error *err) {
    *out = NULL;
    if (engine_get(err)) return -1;
    if (d->c_in < 1 || d->c_out < 1 || d->kh < 1 || d->kw < 1 || d->stride_h < 1 || d->stride_w < 1)
        return sd_fail(err, "core/conv2d: invalid convolution %lldx%lldx%lldx%lld stride %lld",
                       (long long)d->c_out, (long long)d->c_in, (long long)d->kh, (long long)d->kw,
                       (long long)d->stride_h);
    sd_conv2d *c = calloc(1, sizeof *c);
    if (!c) return sd_fail(err, "core/conv2d: out of memory");
    c->d = *d;
    if (bias) {
        c->bias = malloc((size_t)d->c_out * sizeof(float));
        if (!c->bias) {
            free(c);
            return sd_fail(err, "core/conv2d: out of memory");
        }
        memcpy(c->bias, bias, (size_t)d->c_out * sizeof(float));
    }
    *out = c;
    return 0;
}

/* The weights format oneDNN prefers for this conv, asked with a nominal
 * 64x64 input (the format depends on the ISA and the channels, not the size). */
static int conv_preferred_weights_md(sd_conv2d *c, dnnl_memory_desc_t *pref, sd_error *err) {
    int64_t nh = 64 > c->d.kh ? 64 : c->d.kh, nw = 64 > c->d.kw ? 64 : c->d.kw;
    dnnl_primitive_desc_t pd;
    if (conv_pd_create(c, &pd, sd_preferred_layout(), sd_preferred_layout(), 1, nh, nw, c->d.c_in, c->d.c_out, 0,
                       err))
        return -1;
    *pref = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    return 0;
}

/* Makes copy 0 the weights in format `pref`, reordered from PyTorch's oihw
 * `weight` into a buffer of our own. */
static int conv_weights_prepare(sd_conv2d *c, const float *weight, const dnnl_memory_desc_t *pref, sd_error *err) {
    /* copy 0: a view of the caller's weights, replaced below by the preferred
     * format (no intermediate copy: first-touch page faults dominate loading on VMs) */
    dnnl_dims_t wdims = {c->d.c_out, c->d.c_in, c->d.kh, c->d.kw};
    dnnl_memory_desc_init_by_tag(&c->wts[0].md, 4, wdims, dnnl_f32, dnnl_oihw);
    if (dnnl_memory_create(&c->wts[0].mem, &c->wts[0].md, g_engine, (void *)weight) != dnnl_success) {
        c->wts[0].mem = NULL;
        return sd_fail(err, "core/conv2d: out of memory for weights");
    }
    c->n_wts = 1;
    int idx;
    if (conv_weights_get(c, pref, &idx, err)) return -1;
    dnnl_memory_t view = c->wts[0].mem;
    if (idx != 0) { /* the preferred copy becomes the only one */
        c->wts[0] = c->wts[idx];
    } else if (weights_mem_alloc(&c->wts[0], &c->wts[0].md) == 0) { /* oihw is preferred: own a copy */
        memcpy(c->wts[0].own, weight, (size_t)(c->d.c_out * c->d.c_in * c->d.kh * c->d.kw) * sizeof(float));
    } else {
        c->wts[0].mem = NULL;
    }
    dnnl_memory_destroy(view);
    c->n_wts = c->wts[0].mem ? 1 : 0;
    return c->n_wts ? 0 : sd_fail(err, "core/conv2d: out of memory for weights");
}

int sd_conv2d_create(sd_conv2d **out, const sd_conv2d_desc *d, const float *weight,
                     const float *bias, sd_error *err) {
    sd_conv2d *c;
    dnnl_memory_desc_t pref;
    if (conv_alloc(&c, d, bias, err)) return -1;
    if (conv_preferred_weights_md(c, &pref, err) || conv_weights_prepare(c, weight, &pref, err)) {
        sd_conv2d_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

/* 64-bit FNV-1a over n bytes, continuing from h. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* The cache key of weights `name` in format md: the name, where its data sits
 * in the weight file (so a different name map over the same file cannot hit),
 * the oneDNN version (its reorders make the bytes) and a fingerprint of every
 * field that decides the layout (the memory desc struct itself has padding). */
static int weights_cache_key(char *key, size_t cap, const char *name, const sd_tensor *w,
                             const dnnl_memory_desc_t *md) {
    uint64_t h = 14695981039346656037ull;
    const dnnl_blocking_desc_t *bd = &md->format_desc.blocking;
    int nd = md->ndims;
    h = fnv1a(h, &md->ndims, sizeof md->ndims);
    h = fnv1a(h, md->dims, (size_t)nd * sizeof md->dims[0]);
    h = fnv1a(h, &md->data_type, sizeof md->data_type);
    h = fnv1a(h, md->padded_dims, (size_t)nd * sizeof md->padded_dims[0]);
    h = fnv1a(h, md->padded_offsets, (size_t)nd * sizeof md->padded_offsets[0]);
    h = fnv1a(h, &md->offset0, sizeof md->offset0);
    h = fnv1a(h, &md->format_kind, sizeof md->format_kind);
    h = fnv1a(h, bd->strides, (size_t)nd * sizeof bd->strides[0]);
    h = fnv1a(h, &bd->inner_nblks, sizeof bd->inner_nblks);
    h = fnv1a(h, bd->inner_blks, (size_t)bd->inner_nblks * sizeof bd->inner_blks[0]);
    h = fnv1a(h, bd->inner_idxs, (size_t)bd->inner_nblks * sizeof bd->inner_idxs[0]);
    h = fnv1a(h, &md->extra.flags, sizeof md->extra.flags);
    const dnnl_version_t *v = dnnl_version();
    long long at = w->file && w->src ? (long long)((const char *)w->src->data - (const char *)w->file->map) : -1;
    int n = snprintf(key, cap, "%s|%lld+%lld %s%s|onednn %d.%d.%d %s|%016llx", name, at, (long long)w->src_offset,
                     w->src ? st_dtype_name(w->src->dtype) : "?", w->transposed ? " T" : "", v->major, v->minor,
                     v->patch, v->hash, (unsigned long long)h);
    return n > 0 && (size_t)n < cap ? 0 : -1; /* a cut key could match another format: not cached */
}

/* Copy 0 as a view of cached bytes in format md (owned by the cache). */
static int conv_weights_map(sd_conv2d *c, const dnnl_memory_desc_t *md, const void *data, sd_error *err) {
    c->wts[0].md = *md;
    c->wts[0].own = NULL, c->wts[0].own_bytes = 0;
    if (dnnl_memory_create(&c->wts[0].mem, md, g_engine, (void *)data) != dnnl_success) {
        c->wts[0].mem = NULL;
        return sd_fail(err, "core/conv2d: out of memory for weights");
    }
    c->n_wts = 1;
    return 0;
}

/* Takes the prepared weights from the cache, or prepares them from the
 * tensor (converting it if lazy) and adds them to the cache. */
static int conv_weights_from_tensor(sd_conv2d *c, sd_tensor *weight, sd_weight_cache *cache, const char *name,
                                    sd_error *err) {
    dnnl_memory_desc_t pref;
    if (conv_preferred_weights_md(c, &pref, err)) return -1;
    char key[1024];
    if (weights_cache_key(key, sizeof key, name, weight, &pref)) cache = NULL;
    size_t bytes = dnnl_memory_desc_get_size(&pref);
    const void *hit = sd_weight_cache_find(cache, key, bytes);
    if (hit) return conv_weights_map(c, &pref, hit, err);
    const float *w = sd_tensor_f32(weight, err);
    if (!w || conv_weights_prepare(c, w, &pref, err)) return -1;
    sd_tensor_release_pages(weight); /* the conv holds its own copy: drop the mapped f32 pages */
    sd_weight_cache_add(cache, key, c->wts[0].own, c->wts[0].own_bytes, NULL); /* not cached is only slower */
    return 0;
}

int sd_conv2d_create_bound(sd_conv2d **out, const sd_conv2d_desc *d, sd_tensor *weight, const float *bias,
                           sd_weight_cache *cache, const char *name, sd_error *err) {
    sd_conv2d *c;
    if (conv_alloc(&c, d, bias, err)) return -1;
    if (weight->numel != d->c_out * d->c_in * d->kh * d->kw) {
        sd_conv2d_free(c);
        return sd_fail(err, "core/conv2d: %s: %lld weights for a %lldx%lldx%lldx%lld convolution", name,
                       (long long)weight->numel, (long long)d->c_out, (long long)d->c_in, (long long)d->kh,
                       (long long)d->kw);
    }
    if (conv_weights_from_tensor(c, weight, cache, name, err)) {
        sd_conv2d_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void sd_conv2d_free(sd_conv2d *c) {
    if (!c) return;
    for (int i = 0; i < c->n_entries; i++) {
        conv_entry *e = &c->entries[i];
        if (e->prim) dnnl_primitive_destroy(e->prim);
        if (e->src) dnnl_memory_destroy(e->src);
        if (e->dst) dnnl_memory_destroy(e->dst);
        if (e->bias) dnnl_memory_destroy(e->bias);
        free(e->tmp_in);
        free(e->tmp_out);
    }
    free(c->entries);
    for (int i = 0; i < c->n_wts; i++)
        weights_mem_free(&c->wts[i]);
    free(c->bias);
    free(c);
}

static int conv_entry_find(sd_conv2d *c, int blk_in, int blk_out, int64_t n, int64_t h, int64_t w, int64_t x_ld,
                           int64_t y_ld, int accumulate, conv_entry **out, sd_error *err) {
    for (int i = 0; i < c->n_entries; i++) {
        conv_entry *e = &c->entries[i];
        if (e->blk_in == blk_in && e->blk_out == blk_out && e->n == n && e->h == h && e->w == w && e->x_ld == x_ld && e->y_ld == y_ld &&
            e->accumulate == accumulate) {
            *out = e;
            return 0;
        }
    }
    if (c->n_entries == c->cap_entries) {
        int cap = c->cap_entries ? 2 * c->cap_entries : 4;
        conv_entry *ne = realloc(c->entries, (size_t)cap * sizeof *ne);
        if (!ne) return sd_fail(err, "core/conv2d: out of memory");
        c->entries = ne;
        c->cap_entries = cap;
    }
    conv_entry *e = &c->entries[c->n_entries];
    memset(e, 0, sizeof *e);
    e->blk_in = blk_in, e->blk_out = blk_out, e->n = n, e->h = h, e->w = w, e->x_ld = x_ld, e->y_ld = y_ld, e->accumulate = accumulate;
    if (conv_entry_create(c, e, err)) {
        if (e->src) dnnl_memory_destroy(e->src);
        if (e->dst) dnnl_memory_destroy(e->dst);
        free(e->tmp_in);
        free(e->tmp_out);
        return -1;
    }
    if (c->bias) {
        dnnl_memory_desc_t bmd;
        dnnl_dims_t bdims = {c->d.c_out};
        dnnl_memory_desc_init_by_tag(&bmd, 1, bdims, dnnl_f32, dnnl_a);
        CHECK(dnnl_memory_create(&e->bias, &bmd, g_engine, c->bias), "bias memory");
    }
    c->n_entries++;
    *out = e;
    return 0;
}

static int layout_ok(int blk) { return blk == SD_LAYOUT_NHWC || blk == SD_LAYOUT_NCHW || blk == 8 || blk == 16; }

static int conv_run(sd_conv2d *c, int blk_in, int blk_out, const float *x, int64_t x_ld, int64_t n, int64_t h,
                    int64_t w, float *y, int64_t y_ld, int accumulate, sd_error *err) {
    int64_t oh, ow;
    sd_conv2d_out_size(c, h, w, &oh, &ow);
    if (n < 1 || oh < 1 || ow < 1 || x_ld < c->d.c_in || y_ld < c->d.c_out || !layout_ok(blk_in) ||
        !layout_ok(blk_out))
        return sd_fail(err, "core/conv2d: bad input geometry n=%lld h=%lld w=%lld x_ld=%lld y_ld=%lld layouts %d/%d",
                       (long long)n, (long long)h, (long long)w, (long long)x_ld, (long long)y_ld, blk_in, blk_out);
    conv_entry *e;
    if (conv_entry_find(c, blk_in, blk_out, n, h, w, x_ld, y_ld, accumulate ? 1 : 0, &e, err)) return -1;
    const float *src = x;
    float *dst = e->tmp_out ? e->tmp_out : y;
    if (e->tmp_in) {
        sd_layout_convert(x, e->blk_in, e->tmp_in, e->run_in, n, c->d.c_in, h * w, 0);
        src = e->tmp_in;
    }
    dnnl_memory_set_data_handle(e->src, (void *)src);
    dnnl_memory_set_data_handle(e->dst, dst);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->wei},
                               {DNNL_ARG_DST, e->dst}, {DNNL_ARG_BIAS, e->bias}};
    CHECK(dnnl_primitive_execute(e->prim, g_stream, c->bias ? 4 : 3, args), "convolution execute");
    CHECK(dnnl_stream_wait(g_stream), "stream wait");
    if (e->tmp_out) sd_layout_convert(e->tmp_out, e->run_out, y, e->blk_out, n, c->d.c_out, oh * ow, accumulate);
    return 0;
}

int sd_conv2d_forward_ex(sd_conv2d *c, const float *x, int64_t x_ld, int64_t n, int64_t h,
                         int64_t w, float *y, int64_t y_ld, int accumulate, sd_error *err) {
    return conv_run(c, SD_LAYOUT_NHWC, SD_LAYOUT_NHWC, x, x_ld, n, h, w, y, y_ld, accumulate, err);
}

int sd_conv2d_forward_blk(sd_conv2d *c, const float *x, int blk, int64_t n, int64_t h, int64_t w,
                          float *y, int accumulate, sd_error *err) {
    return conv_run(c, blk, blk, x, c->d.c_in, n, h, w, y, c->d.c_out, accumulate, err);
}

int sd_conv2d_forward_layout(sd_conv2d *c, const float *x, int blk_in, int64_t n, int64_t h, int64_t w,
                             float *y, int blk_out, int accumulate, sd_error *err) {
    return conv_run(c, blk_in, blk_out, x, c->d.c_in, n, h, w, y, c->d.c_out, accumulate, err);
}

int sd_conv2d_forward(sd_conv2d *c, const float *x, int64_t n, int64_t h, int64_t w, float *y,
                      sd_error *err) {
    return sd_conv2d_forward_ex(c, x, c->d.c_in, n, h, w, y, c->d.c_out, 0, err);
}
