/* unet/moe_layer — SegMoE's SparseMoeBlock (see moe_layer.h).
 *
 * Numerics follow segmoe/main.py SparseMoeBlock.forward (commit 5fce953,
 * lines 44-79; ../shared/docs/segmoe.md section 4):
 *   L = X . G^T                         [N, E]   (router logits, no bias)
 *   s = sum_n L[n, :]                   [E]      (one score per expert per call)
 *   sel = topk(s, k), descending        ties -> lower expert index
 *   w[n, i] = softmax_i(L[n, sel_i])    float32
 *   Y = 0; Y += w[:, i] * expert_sel_i(X) for i in selection order.
 * The column sums are accumulated in double (SegMoE sums float32; only the
 * rounding differs, and ties are broken deterministically).  A NaN score
 * ranks below every number (torch.topk would rank it first).
 *
 * Per-token routing (opt-in, NOT SegMoE-identical): each row takes its own
 * top-k of L[n, :] with a softmax over those k logits (Mixtral's "softmax,
 * top-k, renormalise", which is the same value); the rows routed to an
 * expert are gathered so each expert runs one GEMM on them, and its output
 * is scattered back with the row's weight.  Contributions to a row are added
 * in expert-index order (not rank order), which only affects rounding.
 */
#include "unet/moe_layer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels.h"

enum { MOE_PROJ = 0, MOE_FF = 1 };
#define MOE_NAME_MAX 256
/* Scratch sub-buffers start on 16-float (64-byte) boundaries. */
#define MOE_ALIGN 16

struct sd_moe_layer {
    int kind;
    int n_experts;
    int top_k;
    sd_moe_routing routing;
    int64_t in_dim, out_dim, inner_dim; /* inner_dim: FF only */
    sd_tensor gate;                      /* [E, in] */
    sd_dense *proj;                      /* [E] projection experts */
    sd_geglu_ff *ff;                     /* [E] FF experts */
    char name[MOE_NAME_MAX];             /* the prefix, for messages */
    /* last call, for --moe-stats */
    int has_last;
    int last_k;
    int *last_sel;        /* [E] selection order (first last_k valid) */
    float *last_mean_w;   /* [E] mean weight over rows per selected expert */
    double *usage_w;      /* [E] per-expert weight sums (per-token stats) */
};

/* ------------------------------------------------------------------ binding */

static int64_t round_up(int64_t n) { return (n + MOE_ALIGN - 1) / MOE_ALIGN * MOE_ALIGN; }

static int moe_alloc(sd_moe_layer **out, int kind, const char *prefix, int n_experts, int top_k,
                     sd_error *err) {
    *out = NULL;
    if (n_experts < 1) return sd_fail(err, "%s: MoE layer needs at least one expert (got %d)", prefix, n_experts);
    if (top_k < 1 || top_k > n_experts)
        return sd_fail(err, "%s: num_experts_per_tok %d must be between 1 and the number of experts (%d)", prefix,
                       top_k, n_experts);
    sd_moe_layer *m = calloc(1, sizeof *m);
    if (!m) return sd_fail(err, "%s: out of memory", prefix);
    m->kind = kind;
    m->n_experts = n_experts;
    m->top_k = top_k;
    snprintf(m->name, sizeof m->name, "%s", prefix);
    m->last_sel = calloc((size_t)n_experts, sizeof(int));
    m->last_mean_w = calloc((size_t)n_experts, sizeof(float));
    m->usage_w = calloc((size_t)n_experts, sizeof(double));
    if (kind == MOE_PROJ)
        m->proj = calloc((size_t)n_experts, sizeof(sd_dense));
    else
        m->ff = calloc((size_t)n_experts, sizeof(sd_geglu_ff));
    if (!m->last_sel || !m->last_mean_w || !m->usage_w || (!m->proj && !m->ff)) {
        sd_moe_free(m);
        return sd_fail(err, "%s: out of memory", prefix);
    }
    *out = m;
    return 0;
}

static int bind_gate(sd_moe_layer *m, sd_binder *b, sd_error *err) {
    char name[MOE_NAME_MAX + 32];
    snprintf(name, sizeof name, "%s.gate.weight", m->name);
    int64_t shape[2] = {m->n_experts, m->in_dim};
    return sd_bind(b, &m->gate, name, 2, shape, err);
}

/* Binds "<P>.experts.<e>.<leaf>" lazily. */
static int bind_expert(sd_binder *lazy, const sd_moe_layer *m, int e, const char *leaf, sd_tensor *t, int ndim,
                       int64_t d0, int64_t d1, sd_error *err) {
    char name[MOE_NAME_MAX + 64];
    snprintf(name, sizeof name, "%s.experts.%d.%s", m->name, e, leaf);
    int64_t shape[2] = {d0, d1};
    return sd_bind(lazy, t, name, ndim, shape, err);
}

int sd_moe_bind_proj(sd_moe_layer **out, sd_binder *b, const char *prefix, int n_experts, int top_k,
                     int64_t in_dim, int64_t out_dim, sd_error *err) {
    sd_moe_layer *m;
    if (moe_alloc(&m, MOE_PROJ, prefix, n_experts, top_k, err)) return -1;
    m->in_dim = in_dim;
    m->out_dim = out_dim;
    sd_binder lazy = *b; /* experts stay mapped until chosen, whatever the caller's binder says */
    lazy.lazy = 1;
    int rc = bind_gate(m, b, err);
    for (int e = 0; !rc && e < n_experts; e++)
        rc = bind_expert(&lazy, m, e, "weight", &m->proj[e].w, 2, out_dim, in_dim, err);
    if (rc) {
        sd_moe_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

int sd_moe_bind_ff(sd_moe_layer **out, sd_binder *b, const char *prefix, int n_experts, int top_k,
                   int64_t dim, int64_t inner_dim, sd_error *err) {
    sd_moe_layer *m;
    if (moe_alloc(&m, MOE_FF, prefix, n_experts, top_k, err)) return -1;
    m->in_dim = m->out_dim = dim;
    m->inner_dim = inner_dim;
    sd_binder lazy = *b;
    lazy.lazy = 1;
    int rc = bind_gate(m, b, err);
    for (int e = 0; !rc && e < n_experts; e++) {
        sd_geglu_ff *f = &m->ff[e];
        rc = bind_expert(&lazy, m, e, "net.0.proj.weight", &f->proj.w, 2, 2 * inner_dim, dim, err);
        if (!rc) rc = bind_expert(&lazy, m, e, "net.0.proj.bias", &f->proj.b, 1, 2 * inner_dim, 0, err);
        if (!rc) rc = bind_expert(&lazy, m, e, "net.2.weight", &f->out.w, 2, dim, inner_dim, err);
        if (!rc) rc = bind_expert(&lazy, m, e, "net.2.bias", &f->out.b, 1, dim, 0, err);
    }
    if (rc) {
        sd_moe_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void sd_moe_free(sd_moe_layer *m) {
    if (!m) return;
    free(m->proj);
    free(m->ff);
    free(m->last_sel);
    free(m->last_mean_w);
    free(m->usage_w);
    free(m);
}

/* ---------------------------------------------------------------- accessors */

void sd_moe_set_routing(sd_moe_layer *m, sd_moe_routing routing) { m->routing = routing; }
sd_moe_routing sd_moe_get_routing(const sd_moe_layer *m) { return m->routing; }
int sd_moe_num_experts(const sd_moe_layer *m) { return m->n_experts; }
int sd_moe_top_k(const sd_moe_layer *m) { return m->top_k; }
int64_t sd_moe_in_dim(const sd_moe_layer *m) { return m->in_dim; }
int64_t sd_moe_out_dim(const sd_moe_layer *m) { return m->out_dim; }
int sd_moe_is_ff(const sd_moe_layer *m) { return m->kind == MOE_FF; }
const char *sd_moe_name(const sd_moe_layer *m) { return m->name; }

int sd_moe_set_top_k(sd_moe_layer *m, int top_k, sd_error *err) {
    if (top_k < 1 || top_k > m->n_experts)
        return sd_fail(err, "%s: top-k %d must be between 1 and the number of experts (%d)", m->name, top_k,
                       m->n_experts);
    m->top_k = top_k;
    return 0;
}

int sd_moe_expert_ready(const sd_moe_layer *m, int e) {
    if (e < 0 || e >= m->n_experts) return 0;
    if (m->kind == MOE_PROJ) return sd_tensor_ready(&m->proj[e].w);
    const sd_geglu_ff *f = &m->ff[e];
    return sd_tensor_ready(&f->proj.w) && sd_tensor_ready(&f->proj.b) && sd_tensor_ready(&f->out.w) &&
           sd_tensor_ready(&f->out.b);
}

/* ------------------------------------------------------------------ scratch */

/* Per-expert compute scratch for n rows (the GEGLU hidden [n, 2*inner]). */
static int64_t expert_scratch(const sd_moe_layer *m, int64_t n) {
    return m->kind == MOE_FF ? round_up(n * 2 * m->inner_dim) : 0;
}

/* Layout (each part aligned):
 *   logits [N, E] | weights [N, k] | expert out [N, out] | expert scratch
 *   per-token only: routes (int) [N, k] | row list (int) [N] | gathered x [N, in]
 * The size covers both routing modes, so set_routing never needs more. */
int64_t sd_moe_scratch_floats(const sd_moe_layer *m, int64_t n_rows) {
    int64_t n = n_rows, E = m->n_experts, k = m->n_experts; /* k may be raised up to E */
    int64_t common = round_up(n * E) + round_up(n * k) + round_up(n * m->out_dim) + expert_scratch(m, n);
    return common + round_up(n * k) + round_up(n) + round_up(n * m->in_dim);
}

/* ------------------------------------------------------------------ routing */

/* Top-k of v[E] in descending order; ties -> lower index; NaN ranks last. */
static void topk_desc(const double *v, int E, int k, int *sel) {
    for (int i = 0; i < k; i++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < i; j++) taken |= sel[j] == e;
            if (taken) continue;
            if (best < 0) {
                best = e;
                continue;
            }
            /* strictly greater wins, so an equal later index never replaces an earlier one */
            if (isnan(v[best]) ? !isnan(v[e]) : v[e] > v[best]) best = e;
        }
        sel[i] = best;
    }
}

/* softmax over L[sel_0..k-1] of one row into w[k], float32 as SegMoE. */
static void softmax_sel(const float *L, const int *sel, int k, float *w) {
    float mx = L[sel[0]];
    for (int i = 1; i < k; i++) mx = L[sel[i]] > mx ? L[sel[i]] : mx;
    float sum = 0.0f;
    for (int i = 0; i < k; i++) {
        w[i] = expf(L[sel[i]] - mx);
        sum += w[i];
    }
    for (int i = 0; i < k; i++) w[i] /= sum;
}

/* Makes every tensor of expert e f32-ready (lazy conversion on first use). */
static int expert_prepare(sd_moe_layer *m, int e, sd_error *err) {
    sd_tensor *ts[4];
    int n = 0;
    if (m->kind == MOE_PROJ) {
        ts[n++] = &m->proj[e].w;
        if (m->proj[e].b.owner) ts[n++] = &m->proj[e].b;
    } else {
        ts[n++] = &m->ff[e].proj.w;
        ts[n++] = &m->ff[e].proj.b;
        ts[n++] = &m->ff[e].out.w;
        ts[n++] = &m->ff[e].out.b;
    }
    for (int i = 0; i < n; i++)
        if (!sd_tensor_f32(ts[i], err)) return sd_error_prefix(err, "%s: expert %d", m->name, e);
    return 0;
}

static void expert_run(const sd_moe_layer *m, int e, const float *x, int64_t n, float *y, float *scratch) {
    if (m->kind == MOE_PROJ)
        sd_dense_forward(&m->proj[e], x, n, y);
    else
        sd_geglu_ff_forward(&m->ff[e], x, n, y, scratch);
}

static int router_logits(sd_moe_layer *m, const float *x, int64_t n, float *L, sd_error *err) {
    const float *G = sd_tensor_f32(&m->gate, err);
    if (!G) return sd_error_prefix(err, "%s: gate", m->name);
    sd_gemm(0, 1, n, m->n_experts, m->in_dim, 1.0f, x, m->in_dim, G, m->in_dim, 0.0f, L, m->n_experts);
    return 0;
}

/* ------------------------------------------------------------ SegMoE forward */

/* SegMoE's routing of one call: logits L [n, E] already computed -> column
 * sums, top-k selection, per-row softmax weights W [n, k]. */
static void route_segmoe(const sd_moe_layer *m, const float *L, int64_t n, double *sums, int *sel, float *W) {
    const int E = m->n_experts, k = m->top_k;
    for (int e = 0; e < E; e++) sums[e] = 0.0;
    for (int64_t r = 0; r < n; r++)
        for (int e = 0; e < E; e++) sums[e] += L[r * E + e];
    topk_desc(sums, E, k, sel);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) softmax_sel(L + r * E, sel, k, W + r * k);
}

static int forward_segmoe(sd_moe_layer *m, const float *x, int64_t n, float *y, float *L, float *W, float *eo,
                          float *es, sd_error *err) {
    const int E = m->n_experts, k = m->top_k;
    const int64_t out = m->out_dim;
    double s[E];
    int sel[E];
    route_segmoe(m, L, n, s, sel, W);
    for (int i = 0; i < k; i++)
        if (expert_prepare(m, sel[i], err)) return -1;
    for (int i = 0; i < k; i++) {
        expert_run(m, sel[i], x, n, eo, es);
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            const float w = W[r * k + i];
            float *yr = y + r * out;
            const float *er = eo + r * out;
            if (i == 0)
                for (int64_t j = 0; j < out; j++) yr[j] = 0.0f + w * er[j];
            else
                for (int64_t j = 0; j < out; j++) yr[j] += w * er[j];
        }
    }
    /* stats: selection order and mean weight per selected expert */
    m->last_k = k;
    for (int i = 0; i < k; i++) {
        double acc = 0.0;
        for (int64_t r = 0; r < n; r++) acc += W[r * k + i];
        m->last_sel[i] = sel[i];
        m->last_mean_w[i] = n ? (float)(acc / (double)n) : 0.0f;
    }
    return 0;
}

/* --------------------------------------------------------- per-token forward */

static int forward_per_token(sd_moe_layer *m, const float *x, int64_t n, float *y, float *L, float *W,
                             float *eo, float *es, int *routes, int *rows, float *xg, sd_error *err) {
    const int E = m->n_experts, k = m->top_k;
    const int64_t in = m->in_dim, out = m->out_dim;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
        double v[E];
        for (int e = 0; e < E; e++) v[e] = L[r * E + e];
        topk_desc(v, E, k, routes + r * k);
        softmax_sel(L + r * E, routes + r * k, k, W + r * k);
    }
    memset(y, 0, (size_t)(n * out) * sizeof(float));
    for (int e = 0; e < E; e++) m->usage_w[e] = 0.0;
    for (int e = 0; e < E; e++) {
        int64_t cnt = 0;
        for (int64_t r = 0; r < n; r++)
            for (int i = 0; i < k; i++)
                if (routes[r * k + i] == e) {
                    rows[cnt] = (int)(r * k + i); /* route slot: row = slot / k */
                    cnt++;
                    m->usage_w[e] += W[r * k + i];
                }
        if (!cnt) continue; /* untouched experts stay unconverted */
        if (expert_prepare(m, e, err)) return -1;
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < cnt; j++) memcpy(xg + j * in, x + (int64_t)(rows[j] / k) * in, (size_t)in * sizeof(float));
        expert_run(m, e, xg, cnt, eo, es);
        /* each row appears at most once per expert, so the scatter has no write conflicts */
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < cnt; j++) {
            const float w = W[rows[j]];
            float *yr = y + (int64_t)(rows[j] / k) * out;
            const float *er = eo + j * out;
            for (int64_t c = 0; c < out; c++) yr[c] += w * er[c];
        }
    }
    /* stats: the k experts carrying the most weight, mean over all rows */
    double tmp[E];
    int sel[E];
    for (int e = 0; e < E; e++) tmp[e] = m->usage_w[e];
    topk_desc(tmp, E, k, sel);
    m->last_k = k;
    for (int i = 0; i < k; i++) {
        m->last_sel[i] = sel[i];
        m->last_mean_w[i] = n ? (float)(tmp[sel[i]] / (double)n) : 0.0f;
    }
    return 0;
}

int sd_moe_forward(sd_moe_layer *m, const float *x, int64_t n_rows, float *y, float *scratch, sd_error *err) {
    if (n_rows < 0) return sd_fail(err, "%s: negative row count", m->name);
    if (n_rows > INT32_MAX / (m->n_experts + 1))
        return sd_fail(err, "%s: %lld rows is too many for one MoE call", m->name, (long long)n_rows);
    const int64_t n = n_rows, E = m->n_experts;
    float *L = scratch;
    float *W = L + round_up(n * E);
    float *eo = W + round_up(n * E);
    float *es = eo + round_up(n * m->out_dim);
    float *tail = es + expert_scratch(m, n);
    if (n == 0) return 0;
    if (router_logits(m, x, n, L, err)) return -1;
    int rc;
    if (m->routing == SD_MOE_ROUTING_PER_TOKEN) {
        int *routes = (int *)tail;
        int *rows = (int *)(tail + round_up(n * E));
        float *xg = tail + round_up(n * E) + round_up(n);
        rc = forward_per_token(m, x, n, y, L, W, eo, es, routes, rows, xg, err);
    } else {
        rc = forward_segmoe(m, x, n, y, L, W, eo, es, err);
    }
    if (!rc) m->has_last = 1;
    return rc;
}

int sd_moe_route(sd_moe_layer *m, const float *x, int64_t n_rows, float *logits, float *col_sums, int *selected,
                 float *weights, sd_error *err) {
    const int E = m->n_experts;
    if (n_rows < 1) return sd_fail(err, "%s: routing needs at least one row", m->name);
    if (router_logits(m, x, n_rows, logits, err)) return -1;
    double s[E];
    route_segmoe(m, logits, n_rows, s, selected, weights);
    if (col_sums)
        for (int e = 0; e < E; e++) col_sums[e] = (float)s[e];
    return 0;
}

int sd_moe_last_choice(const sd_moe_layer *m, int *experts, float *mean_weights) {
    if (!m->has_last) return 0;
    for (int i = 0; i < m->last_k; i++) {
        if (experts) experts[i] = m->last_sel[i];
        if (mean_weights) mean_weights[i] = m->last_mean_w[i];
    }
    return m->last_k;
}
