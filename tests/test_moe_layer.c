/* unet/moe_layer: SegMoE's SparseMoeBlock against the reference cases
 * captured inside a real UNet call (refs/moe_layer.safetensors; experts
 * bound from the SegMoE-made folder), lazy expert conversion, and per-token
 * routing against expectations derived by hand on a small layer and from
 * the reference experts' outputs. */
#include <criterion/criterion.h>
#include <ftw.h>
#include <sys/stat.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "core/half.h"
#include "core/safetensors.h"
#include "core/weights.h"
#include "tests/support/test_support.h"

/* Removes a test's temporary folder. */
static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}
static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }
#include "unet/moe_layer.h"

#define REFS "moe/refs/moe_layer.safetensors"
#define SEGMOE_UNET "moe/tiny-segmoe-2x2/unet/diffusion_pytorch_model.safetensors"
/* fixtures/moe/README.md, "Suggested tolerances": MoE layer x / logits / weights / y */
#define TOL_ABS 1e-4
#define TOL_REL 1e-4

typedef struct layer_case {
    const char *name;   /* tensor-name prefix in the refs */
    const char *module; /* MoE module prefix in the folder */
    int ff;
    int top_k;
} layer_case;

/* cases.json -> moe_layer.cases */
static const layer_case cases[] = {
    {"k2.ff", "down_blocks.1.attentions.1.transformer_blocks.0.ff", 1, 2},
    {"k2.attn1_to_q", "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q", 0, 2},
    {"k2.attn2_to_q", "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q", 0, 2},
    {"k2.attn2_to_k", "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k", 0, 2},
    {"k1.ff", "down_blocks.1.attentions.1.transformer_blocks.0.ff", 1, 1},
    {"k1.attn1_to_q", "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q", 0, 1},
    {"k1.attn2_to_q", "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q", 0, 1},
    {"k1.attn2_to_k", "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k", 0, 1},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

typedef struct case_data {
    float *x, *logits, *sums, *weights, *expert_out, *y;
    int64_t *selected;
    int64_t n, in, out;
    int k, E;
} case_data;

static char *tname(const char *c, const char *leaf) {
    static char buf[8][160];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, 160, "%s.%s", c, leaf);
    return b;
}

static void case_load(const st_file *r, const layer_case *lc, case_data *d) {
    const st_tensor *x = tst_ref_tensor(r, tname(lc->name, "x"));
    const st_tensor *y = tst_ref_tensor(r, tname(lc->name, "y"));
    const st_tensor *l = tst_ref_tensor(r, tname(lc->name, "router_logits"));
    cr_assert_eq(x->ndim, 3);
    d->n = x->shape[0] * x->shape[1];
    d->in = x->shape[2];
    d->out = y->shape[2];
    d->E = (int)l->shape[1];
    d->x = tst_ref_f32(r, tname(lc->name, "x"), NULL);
    d->y = tst_ref_f32(r, tname(lc->name, "y"), NULL);
    d->logits = tst_ref_f32(r, tname(lc->name, "router_logits"), NULL);
    d->sums = tst_ref_f32(r, tname(lc->name, "column_sums"), NULL);
    d->weights = tst_ref_f32(r, tname(lc->name, "weights"), NULL);
    d->expert_out = tst_ref_f32(r, tname(lc->name, "expert_out"), NULL);
    size_t nk;
    d->selected = tst_ref_i64(r, tname(lc->name, "selected"), &nk);
    d->k = (int)nk;
    cr_assert_eq(d->k, lc->top_k);
}

static void case_free(case_data *d) {
    free(d->x), free(d->y), free(d->logits), free(d->sums), free(d->weights), free(d->expert_out);
    free(d->selected);
}

static sd_moe_layer *bind_case(sd_weights *w, const layer_case *lc, const case_data *d) {
    sd_binder b = {.w = w, .component = "unet", .prefix = "", .lazy = 1};
    sd_moe_layer *m = NULL;
    sd_error err = {0};
    int rc = lc->ff ? sd_moe_bind_ff(&m, &b, lc->module, d->E, lc->top_k, d->in, d->in * 4, &err)
                    : sd_moe_bind_proj(&m, &b, lc->module, d->E, lc->top_k, d->in, d->out, &err);
    cr_assert_eq(rc, 0, "%s: %s", lc->name, err.msg);
    return m;
}

static sd_weights *open_folder_unet(const char *rel) {
    tst_require_fixture(rel);
    char *p = tst_fixture_path(rel);
    sd_weights *w;
    sd_error err = {0};
    const char *paths[1] = {p};
    cr_assert_eq(sd_weights_open(&w, paths, 1, &err), 0, "%s", err.msg);
    free(p);
    return w;
}

/* ------------------------------------------------------ reference cases */

Test(moe_layer, segmoe_reference_cases) {
    st_file r;
    tst_open_ref(&r, REFS);
    sd_weights *w = open_folder_unet(SEGMOE_UNET);
    for (int c = 0; c < N_CASES; c++) {
        const layer_case *lc = &cases[c];
        case_data d;
        case_load(&r, lc, &d);
        sd_moe_layer *m = bind_case(w, lc, &d);
        cr_expect_eq(sd_moe_num_experts(m), 2);
        cr_expect_eq(sd_moe_is_ff(m), lc->ff);
        cr_expect_eq(sd_moe_out_dim(m), d.out);
        sd_error err = {0};
        /* routing alone: logits, column sums, selection, weights */
        float *L = malloc((size_t)(d.n * d.E) * sizeof(float)), *W = malloc((size_t)(d.n * d.k) * sizeof(float));
        float sums[8];
        int sel[8];
        cr_assert_eq(sd_moe_route(m, d.x, d.n, L, sums, sel, W, &err), 0, "%s", err.msg);
        char what[128];
        snprintf(what, sizeof what, "%s router_logits", lc->name);
        tst_check_close(what, L, d.logits, (size_t)(d.n * d.E), TOL_ABS, TOL_REL);
        snprintf(what, sizeof what, "%s column_sums", lc->name);
        tst_check_close(what, sums, d.sums, (size_t)d.E, TOL_ABS, TOL_REL);
        for (int i = 0; i < d.k; i++)
            cr_expect_eq(sel[i], (int)d.selected[i], "%s: selected[%d] = %d, SegMoE chose %d", lc->name, i, sel[i],
                         (int)d.selected[i]);
        snprintf(what, sizeof what, "%s weights", lc->name);
        tst_check_close(what, W, d.weights, (size_t)(d.n * d.k), TOL_ABS, TOL_REL);
        /* the full forward */
        float *y = malloc((size_t)(d.n * d.out) * sizeof(float));
        float *scratch = malloc((size_t)sd_moe_scratch_floats(m, d.n) * sizeof(float));
        cr_assert_eq(sd_moe_forward(m, d.x, d.n, y, scratch, &err), 0, "%s", err.msg);
        snprintf(what, sizeof what, "%s y", lc->name);
        tst_check_close(what, y, d.y, (size_t)(d.n * d.out), TOL_ABS, TOL_REL);
        /* --moe-stats: the choice and mean weights of the last call */
        int ex[8];
        float mw[8];
        cr_assert_eq(sd_moe_last_choice(m, ex, mw), d.k);
        for (int i = 0; i < d.k; i++) {
            double mean = 0;
            for (int64_t n = 0; n < d.n; n++) mean += d.weights[n * d.k + i];
            mean /= (double)d.n;
            cr_expect_eq(ex[i], (int)d.selected[i], "%s: last choice", lc->name);
            cr_expect(fabs(mw[i] - mean) <= 1e-5, "%s: mean weight %g vs %g", lc->name, mw[i], mean);
        }
        free(L), free(W), free(y), free(scratch);
        sd_moe_free(m);
        case_free(&d);
    }
    sd_weights_free(w);
    st_close(&r);
}

/* sd_moe_set_top_k on a bound k=2 layer gives the k1 cases (as the refs did). */
Test(moe_layer, set_top_k_matches_k1_cases) {
    st_file r;
    tst_open_ref(&r, REFS);
    sd_weights *w = open_folder_unet(SEGMOE_UNET);
    for (int c = 4; c < N_CASES; c++) {
        layer_case lc = cases[c];
        case_data d;
        case_load(&r, &lc, &d);
        lc.top_k = 2;
        sd_moe_layer *m = bind_case(w, &lc, &d);
        sd_error err = {0};
        cr_expect_neq(sd_moe_set_top_k(m, 3, &err), 0, "k > E must be refused");
        cr_assert_eq(sd_moe_set_top_k(m, 1, &err), 0, "%s", err.msg);
        float *y = malloc((size_t)(d.n * d.out) * sizeof(float));
        float *scratch = malloc((size_t)sd_moe_scratch_floats(m, d.n) * sizeof(float));
        cr_assert_eq(sd_moe_forward(m, d.x, d.n, y, scratch, &err), 0, "%s", err.msg);
        tst_check_close(lc.name, y, d.y, (size_t)(d.n * d.out), TOL_ABS, TOL_REL);
        free(y), free(scratch);
        sd_moe_free(m);
        case_free(&d);
    }
    sd_weights_free(w);
    st_close(&r);
}

/* Per-token routing with k = 1 on real data: each row must equal the output
 * of its own argmax expert (from the k2 case's expert_out, which holds both
 * experts on all rows); with k = E = 2 it must equal SegMoE's y. */
Test(moe_layer, per_token_on_reference_layers) {
    st_file r;
    tst_open_ref(&r, REFS);
    sd_weights *w = open_folder_unet(SEGMOE_UNET);
    for (int c = 0; c < 4; c++) {
        const layer_case *lc = &cases[c];
        case_data d;
        case_load(&r, lc, &d);
        sd_moe_layer *m = bind_case(w, lc, &d);
        sd_moe_set_routing(m, SD_MOE_ROUTING_PER_TOKEN);
        cr_expect_eq(sd_moe_get_routing(m), SD_MOE_ROUTING_PER_TOKEN);
        sd_error err = {0};
        float *y = malloc((size_t)(d.n * d.out) * sizeof(float));
        float *want = malloc((size_t)(d.n * d.out) * sizeof(float));
        float *scratch = malloc((size_t)sd_moe_scratch_floats(m, d.n) * sizeof(float));
        cr_assert_eq(sd_moe_forward(m, d.x, d.n, y, scratch, &err), 0, "%s", err.msg);
        char what[128];
        snprintf(what, sizeof what, "%s per-token k=2", lc->name);
        tst_check_close(what, y, d.y, (size_t)(d.n * d.out), TOL_ABS, TOL_REL);
        cr_assert_eq(sd_moe_set_top_k(m, 1, &err), 0);
        cr_assert_eq(sd_moe_forward(m, d.x, d.n, y, scratch, &err), 0, "%s", err.msg);
        double used[2] = {0, 0};
        for (int64_t n = 0; n < d.n; n++) {
            int best = d.logits[n * 2 + 1] > d.logits[n * 2] ? 1 : 0;
            int slot = (int)d.selected[0] == best ? 0 : 1; /* expert_out is in selection order */
            memcpy(want + n * d.out, d.expert_out + (slot * d.n + n) * d.out, (size_t)d.out * sizeof(float));
            used[best] += 1;
        }
        snprintf(what, sizeof what, "%s per-token k=1", lc->name);
        tst_check_close(what, y, want, (size_t)(d.n * d.out), TOL_ABS, TOL_REL);
        int ex[2];
        float mw[2];
        cr_assert_eq(sd_moe_last_choice(m, ex, mw), 1);
        int most = used[1] > used[0] ? 1 : 0;
        cr_expect_eq(ex[0], most);
        cr_expect(fabs(mw[0] - used[most] / (double)d.n) < 1e-6);
        free(y), free(want), free(scratch);
        sd_moe_free(m);
        case_free(&d);
    }
    sd_weights_free(w);
    st_close(&r);
}

/* ------------------------------------------------------- lazy conversion */

/* Writes an f16 copy of a safetensors file into dir (all float tensors). */
static char *write_f16_copy(const char *src_rel, const char *dir) {
    st_file f;
    tst_open_ref(&f, src_rel);
    st_write_entry *e = calloc((size_t)f.n_tensors, sizeof *e);
    uint16_t **bufs = calloc((size_t)f.n_tensors, sizeof *bufs);
    sd_error err = {0};
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        cr_assert_eq(t->dtype, ST_F32);
        float *tmp = malloc(t->numel * sizeof(float) + 4);
        cr_assert_eq(st_tensor_to_f32(&f, t, tmp, &err), 0);
        bufs[i] = malloc(t->numel * 2 + 2);
        sd_f32_to_f16_n(tmp, bufs[i], t->numel);
        free(tmp);
        e[i] = (st_write_entry){.name = t->name, .dtype = ST_F16, .ndim = t->ndim, .data = bufs[i]};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
    }
    char *out = sd_path_join(dir, "unet_f16.safetensors");
    cr_assert_eq(st_write(out, e, f.n_tensors, NULL, NULL, 0, &err), 0, "%s", err.msg);
    for (int i = 0; i < f.n_tensors; i++) free(bufs[i]);
    free(bufs), free(e);
    st_close(&f);
    return out;
}

Test(moe_layer, only_chosen_experts_are_converted) {
    tst_require_fixture(SEGMOE_UNET);
    char *tmp = tst_tmpdir();
    char *path = write_f16_copy(SEGMOE_UNET, tmp);
    sd_weights *w;
    sd_error err = {0};
    const char *paths[1] = {path};
    cr_assert_eq(sd_weights_open(&w, paths, 1, &err), 0, "%s", err.msg);
    st_file r;
    tst_open_ref(&r, REFS);
    const layer_case *lc = &cases[5]; /* k1.attn1_to_q: SegMoE picks expert 1 */
    case_data d;
    case_load(&r, lc, &d);
    /* a non-lazy binder: the MoE layer still binds its experts lazily */
    sd_binder b = {.w = w, .component = "unet", .prefix = "", .lazy = 0};
    sd_moe_layer *m;
    cr_assert_eq(sd_moe_bind_proj(&m, &b, lc->module, 2, 1, d.in, d.out, &err), 0, "%s", err.msg);
    cr_expect(!sd_moe_expert_ready(m, 0) && !sd_moe_expert_ready(m, 1), "experts converted at bind time");
    float *y = malloc((size_t)(d.n * d.out) * sizeof(float));
    float *scratch = malloc((size_t)sd_moe_scratch_floats(m, d.n) * sizeof(float));
    cr_assert_eq(sd_moe_forward(m, d.x, d.n, y, scratch, &err), 0, "%s", err.msg);
    cr_expect(sd_moe_expert_ready(m, 1), "the chosen expert was not converted");
    cr_expect(!sd_moe_expert_ready(m, 0), "an expert that was not chosen was converted");
    /* f16 weights: same routing, output within f16 rounding of the reference */
    int ex;
    cr_assert_eq(sd_moe_last_choice(m, &ex, NULL), 1);
    cr_expect_eq(ex, 1);
    tst_check_close("k1.attn1_to_q from f16 weights", y, d.y, (size_t)(d.n * d.out), 2e-2, 2e-3);
    free(y), free(scratch);
    sd_moe_free(m);
    case_free(&d);
    st_close(&r);
    sd_weights_free(w);
    remove(path);
    free(path), rm_tree(tmp), free(tmp);
}

Test(moe_layer, bind_errors) {
    sd_weights *w = open_folder_unet(SEGMOE_UNET);
    sd_binder b = {.w = w, .component = "unet", .prefix = "", .lazy = 1};
    sd_moe_layer *m = NULL;
    sd_error err = {0};
    const char *mod = "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q";
    cr_expect_neq(sd_moe_bind_proj(&m, &b, mod, 2, 3, 64, 64, &err), 0, "top_k > E accepted");
    cr_expect_not_null(strstr(err.msg, "between 1 and"), "%s", err.msg);
    cr_expect_neq(sd_moe_bind_proj(&m, &b, mod, 3, 1, 64, 64, &err), 0, "wrong expert count accepted");
    cr_expect_not_null(strstr(err.msg, "gate.weight"), "%s", err.msg);
    cr_expect_neq(sd_moe_bind_proj(&m, &b, mod, 2, 1, 64, 32, &err), 0, "wrong shape accepted");
    cr_expect_not_null(strstr(err.msg, "experts.0.weight"), "%s", err.msg);
    cr_expect_null(m);
    sd_weights_free(w);
}

/* -------------------------------------------- hand-derived small layer */

/* A 3-expert projection layer 2 -> 2 (f16 file, values exact in f16):
 *   gate rows  g0 = [1, 0], g1 = [0, 1], g2 = [-1, -1]
 *   experts    W0 = I, W1 = 2 I, W2 = [[0, 1], [1, 0]] (swap)
 * rows x0 = [2, 0], x1 = [0, 3], x2 = [-1, -1], x3 = [1, 1]. */
#define SMALL_PREFIX "blk.attn1.to_q"
static const float small_x[4][2] = {{2, 0}, {0, 3}, {-1, -1}, {1, 1}};

static char *write_small_layer(const char *dir) {
    static const float gate[6] = {1, 0, 0, 1, -1, -1};
    static const float w0[4] = {1, 0, 0, 1}, w1[4] = {2, 0, 0, 2}, w2[4] = {0, 1, 1, 0};
    static uint16_t h[4][6];
    const float *src[4] = {gate, w0, w1, w2};
    for (int t = 0; t < 4; t++) sd_f32_to_f16_n(src[t], h[t], t ? 4 : 6);
    st_write_entry e[4] = {
        {.name = SMALL_PREFIX ".gate.weight", .dtype = ST_F16, .ndim = 2, .shape = {3, 2}, .data = h[0]},
        {.name = SMALL_PREFIX ".experts.0.weight", .dtype = ST_F16, .ndim = 2, .shape = {2, 2}, .data = h[1]},
        {.name = SMALL_PREFIX ".experts.1.weight", .dtype = ST_F16, .ndim = 2, .shape = {2, 2}, .data = h[2]},
        {.name = SMALL_PREFIX ".experts.2.weight", .dtype = ST_F16, .ndim = 2, .shape = {2, 2}, .data = h[3]},
    };
    char *path = sd_path_join(dir, "small.safetensors");
    sd_error err = {0};
    cr_assert_eq(st_write(path, e, 4, NULL, NULL, 0, &err), 0, "%s", err.msg);
    return path;
}

/* expert e applied to x */
static void small_expert(int e, const float *x, float *y) {
    const float scale = e == 1 ? 2.0f : 1.0f;
    const int swap = e == 2;
    y[0] = scale * x[swap ? 1 : 0];
    y[1] = scale * x[swap ? 0 : 1];
}

/* w_a = softmax over (la, lb) for the first */
static float sm(float la, float lb) { return 1.0f / (1.0f + expf(lb - la)); }

typedef struct small_layer {
    char *dir, *path;
    sd_weights *w;
    sd_moe_layer *m;
} small_layer;

static void small_open(small_layer *s, int k) {
    s->dir = tst_tmpdir();
    s->path = write_small_layer(s->dir);
    sd_error err = {0};
    const char *paths[1] = {s->path};
    cr_assert_eq(sd_weights_open(&s->w, paths, 1, &err), 0, "%s", err.msg);
    sd_binder b = {.w = s->w, .component = "unet", .prefix = "", .lazy = 1};
    cr_assert_eq(sd_moe_bind_proj(&s->m, &b, SMALL_PREFIX, 3, k, 2, 2, &err), 0, "%s", err.msg);
    sd_moe_set_routing(s->m, SD_MOE_ROUTING_PER_TOKEN);
}

static void small_close(small_layer *s) {
    sd_moe_free(s->m);
    sd_weights_free(s->w);
    remove(s->path);
    rm_tree(s->dir);
    free(s->path), free(s->dir);
}

static void small_run(small_layer *s, const float *x, int n, float *y) {
    float *scratch = malloc((size_t)sd_moe_scratch_floats(s->m, n) * sizeof(float));
    sd_error err = {0};
    cr_assert_eq(sd_moe_forward(s->m, x, n, y, scratch, &err), 0, "%s", err.msg);
    free(scratch);
}

Test(moe_layer, per_token_top2_by_hand) {
    small_layer s;
    small_open(&s, 2);
    float y[8];
    small_run(&s, &small_x[0][0], 4, y);
    /* logits: x0 [2, 0, -2] -> {0, 1}; x1 [0, 3, -3] -> {1, 0};
     *         x2 [-1, -1, 2] -> {2, 0} (tie 0/1 -> lower index); x3 [1, 1, -2] -> {0, 1}, 0.5 each */
    const struct { int a, b; float la, lb; } route[4] = {{0, 1, 2, 0}, {1, 0, 3, 0}, {2, 0, 2, -1}, {0, 1, 1, 1}};
    float want[8];
    for (int n = 0; n < 4; n++) {
        float ya[2], yb[2];
        float wa = sm(route[n].la, route[n].lb), wb = 1.0f - wa;
        small_expert(route[n].a, small_x[n], ya);
        small_expert(route[n].b, small_x[n], yb);
        for (int j = 0; j < 2; j++) want[n * 2 + j] = wa * ya[j] + wb * yb[j];
    }
    for (int i = 0; i < 8; i++) cr_expect(fabsf(y[i] - want[i]) <= 1e-6f, "y[%d] = %g, want %g", i, y[i], want[i]);
    /* row x3 by hand: 0.5 * x + 0.5 * 2x = 1.5 x */
    cr_expect(fabsf(y[6] - 1.5f) < 1e-6f && fabsf(y[7] - 1.5f) < 1e-6f);
    /* stats: expert weight totals e0 = w(x0) + w(x1) + w(x2) + 0.5, e1 = ..., e2 = w(x2) */
    double t0 = sm(2, 0) + (1 - sm(3, 0)) + (1 - sm(2, -1)) + 0.5, t1 = (1 - sm(2, 0)) + sm(3, 0) + 0.5;
    int ex[2];
    float mw[2];
    cr_assert_eq(sd_moe_last_choice(s.m, ex, mw), 2);
    cr_expect_eq(ex[0], t0 >= t1 ? 0 : 1);
    cr_expect(fabs(mw[0] - fmax(t0, t1) / 4) < 1e-6, "mean weight %g", mw[0]);
    small_close(&s);
}

Test(moe_layer, per_token_top1_touches_only_used_experts) {
    small_layer s;
    small_open(&s, 1);
    /* rows x0 and x3 only: both route to expert 0 (x3 is a 0/1 tie -> lower index) */
    float x[4] = {small_x[0][0], small_x[0][1], small_x[3][0], small_x[3][1]}, y[4];
    small_run(&s, x, 2, y);
    for (int i = 0; i < 4; i++) cr_expect_eq(y[i], x[i], "top-1 weight must be exactly 1 and expert 0 = I");
    cr_expect(sd_moe_expert_ready(s.m, 0));
    cr_expect(!sd_moe_expert_ready(s.m, 1) && !sd_moe_expert_ready(s.m, 2), "unused experts were converted");
    /* all four rows: x1 -> expert 1, x2 -> expert 2 */
    float y4[8];
    small_run(&s, &small_x[0][0], 4, y4);
    const float want[8] = {2, 0, 0, 6, -1, -1, 1, 1};
    for (int i = 0; i < 8; i++) cr_expect_eq(y4[i], want[i], "y[%d] = %g, want %g", i, y4[i], want[i]);
    small_close(&s);
}

Test(moe_layer, segmoe_routing_by_hand) {
    small_layer s;
    small_open(&s, 2);
    sd_moe_set_routing(s.m, SD_MOE_ROUTING_SEGMOE);
    /* column sums over the 4 rows: [2+0-1+1, 0+3-1+1, -2-3+2-2] = [2, 3, -5] -> selection [1, 0] */
    float L[12], sums[3], W[8];
    int sel[2];
    sd_error err = {0};
    cr_assert_eq(sd_moe_route(s.m, &small_x[0][0], 4, L, sums, sel, W, &err), 0, "%s", err.msg);
    cr_expect(sums[0] == 2 && sums[1] == 3 && sums[2] == -5);
    cr_expect(sel[0] == 1 && sel[1] == 0);
    float y[8];
    small_run(&s, &small_x[0][0], 4, y);
    for (int n = 0; n < 4; n++) {
        float w1 = sm(L[n * 3 + 1], L[n * 3 + 0]);
        cr_expect(fabsf(W[n * 2] - w1) < 1e-6f);
        for (int j = 0; j < 2; j++) {
            float want = w1 * 2 * small_x[n][j] + (1 - w1) * small_x[n][j];
            cr_expect(fabsf(y[n * 2 + j] - want) <= 1e-6f, "row %d: %g vs %g", n, y[n * 2 + j], want);
        }
    }
    cr_expect(!sd_moe_expert_ready(s.m, 2), "expert 2 was not chosen but got converted");
    /* ties in the column sums go to the lower index: rows x0 + x1' with sums [2, 2, ...] */
    float xt[4] = {2, 0, 0, 2};
    cr_assert_eq(sd_moe_set_top_k(s.m, 1, &err), 0);
    cr_assert_eq(sd_moe_route(s.m, xt, 2, L, sums, sel, W, &err), 0);
    cr_expect(sums[0] == 2 && sums[1] == 2);
    cr_expect_eq(sel[0], 0);
    cr_expect_eq(W[0], 1.0f);
    small_close(&s);
}
