/* unet/moe_stats — per-call MoE routing statistics (see moe_stats.h). */
#include "unet/moe_stats.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "unet/moe_layer.h"

#define STATS_FORMAT "sdmoe-moe-stats"
#define STATS_FORMAT_VERSION 1

static const char *const KIND_NAMES[7] = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q",
                                          "attn2.to_k", "attn2.to_v", "ff"};

typedef struct stats_layer {
    sd_moe_layer *m;
    const char *kind;
} stats_layer;

typedef struct stats_call {
    int run, call;
    float timestep;
} stats_call;

typedef struct stats_run {
    char *label;
    int first_call;
} stats_run;

struct sd_moe_stats {
    int n_layers;
    stats_layer *layers;
    int n_experts;            /* max over layers */
    int n_calls, cap_calls;
    stats_call *calls;
    int *experts;             /* [cap_calls][n_layers][E]: selection order, -1 past k */
    float *weights;           /* same layout */
    int n_runs, cap_runs;
    stats_run *runs;
    int open_run;             /* a begin_run is waiting for its first record */
    int failed;               /* the hook adapter hit an error */
    sd_error hook_err;
};

int sd_moe_stats_layer_count(const sd_moe_stats *s) { return s->n_layers; }
int sd_moe_stats_call_count(const sd_moe_stats *s) { return s->n_calls; }

static int collect_layers(sd_moe_stats *s, sd_unet *u, sd_error *err) {
    int nt = sd_unet_tblock_count(u);
    for (int pass = 0; pass < 2; pass++) {
        int n = 0;
        for (int i = 0; i < nt; i++) {
            sd_unet_tblock *b = sd_unet_tblock_at(u, i);
            sd_moe_layer *ms[7] = {b->attn1.to_q.moe, b->attn1.to_k.moe, b->attn1.to_v.moe, b->attn2.to_q.moe,
                                   b->attn2.to_k.moe, b->attn2.to_v.moe, b->ff.moe};
            for (int k = 0; k < 7; k++) {
                if (!ms[k]) continue;
                if (pass) {
                    s->layers[n].m = ms[k];
                    s->layers[n].kind = KIND_NAMES[k];
                    int E = sd_moe_num_experts(ms[k]);
                    if (E > s->n_experts) s->n_experts = E;
                }
                n++;
            }
        }
        if (!pass) {
            if (!n) return sd_fail(err, "the model has no MoE layers: --moe-stats needs a SegMoE model");
            if (!(s->layers = calloc((size_t)n, sizeof *s->layers))) return sd_fail(err, "out of memory");
        }
        s->n_layers = n;
    }
    return 0;
}

int sd_moe_stats_create(sd_moe_stats **out, sd_unet *u, sd_error *err) {
    *out = NULL;
    sd_moe_stats *s = calloc(1, sizeof *s);
    if (!s) return sd_fail(err, "out of memory");
    if (collect_layers(s, u, err)) {
        sd_moe_stats_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void sd_moe_stats_free(sd_moe_stats *s) {
    if (!s) return;
    for (int i = 0; i < s->n_runs; i++) free(s->runs[i].label);
    free(s->runs);
    free(s->layers);
    free(s->calls);
    free(s->experts);
    free(s->weights);
    free(s);
}

static int push_run(sd_moe_stats *s, const char *label, sd_error *err) {
    if (s->n_runs == s->cap_runs) {
        int nc = s->cap_runs ? 2 * s->cap_runs : 8;
        stats_run *r = realloc(s->runs, (size_t)nc * sizeof *r);
        if (!r) return sd_fail(err, "out of memory");
        s->runs = r;
        s->cap_runs = nc;
    }
    stats_run *r = &s->runs[s->n_runs];
    r->label = label ? strdup(label) : NULL;
    if (label && !r->label) return sd_fail(err, "out of memory");
    r->first_call = s->n_calls;
    s->n_runs++;
    return 0;
}

int sd_moe_stats_begin_run(sd_moe_stats *s, const char *label, sd_error *err) {
    if (push_run(s, label, err)) return -1;
    s->open_run = 1;
    return 0;
}

static int grow_calls(sd_moe_stats *s, sd_error *err) {
    if (s->n_calls < s->cap_calls) return 0;
    int nc = s->cap_calls ? 2 * s->cap_calls : 64;
    size_t per = (size_t)s->n_layers * (size_t)s->n_experts;
    stats_call *c = realloc(s->calls, (size_t)nc * sizeof *c);
    if (!c) return sd_fail(err, "out of memory");
    s->calls = c;
    int *e = realloc(s->experts, (size_t)nc * per * sizeof *e);
    if (!e) return sd_fail(err, "out of memory");
    s->experts = e;
    float *w = realloc(s->weights, (size_t)nc * per * sizeof *w);
    if (!w) return sd_fail(err, "out of memory");
    s->weights = w;
    s->cap_calls = nc;
    return 0;
}

int sd_moe_stats_record(sd_moe_stats *s, int call, float timestep, sd_error *err) {
    if ((call == 0 && !s->open_run) || s->n_runs == 0)
        if (push_run(s, NULL, err)) return -1;
    s->open_run = 0;
    if (grow_calls(s, err)) return -1;
    const size_t E = (size_t)s->n_experts;
    int *ex = s->experts + (size_t)s->n_calls * s->n_layers * E;
    float *wt = s->weights + (size_t)s->n_calls * s->n_layers * E;
    for (int l = 0; l < s->n_layers; l++) {
        int *el = ex + l * E;
        float *wl = wt + l * E;
        int k = sd_moe_last_choice(s->layers[l].m, el, wl);
        for (size_t i = (size_t)k; i < E; i++) el[i] = -1, wl[i] = 0.0f;
    }
    s->calls[s->n_calls++] = (stats_call){.run = s->n_runs - 1, .call = call, .timestep = timestep};
    return 0;
}

void sd_moe_stats_on_unet_call(void *ctx, int call, float timestep) {
    sd_moe_stats *s = ctx;
    if (!s->failed && sd_moe_stats_record(s, call, timestep, &s->hook_err)) s->failed = 1;
}

/* ------------------------------------------------------------------- JSON */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int need = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (need < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->n + (size_t)need < b->cap) {
            b->n += (size_t)need;
            return;
        }
        size_t nc = b->cap ? b->cap : 4096;
        while (nc <= b->n + (size_t)need) nc *= 2;
        char *q = realloc(b->p, nc);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = nc;
    }
}

/* A JSON string literal (escapes quotes, backslashes and control bytes). */
static void sb_string(sbuf *b, const char *s) {
    sb_printf(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            sb_printf(b, "\\%c", *c);
        else if (*c < 0x20)
            sb_printf(b, "\\u%04x", *c);
        else
            sb_printf(b, "%c", *c);
    }
    sb_printf(b, "\"");
}

static void sb_float(sbuf *b, double v) {
    if (isfinite(v))
        sb_printf(b, "%.6g", v);
    else
        sb_printf(b, "null");
}

static const char *routing_name(const sd_moe_stats *s) {
    sd_moe_routing r0 = sd_moe_get_routing(s->layers[0].m);
    for (int l = 1; l < s->n_layers; l++)
        if (sd_moe_get_routing(s->layers[l].m) != r0) return "mixed";
    return r0 == SD_MOE_ROUTING_PER_TOKEN ? "per-token" : "segmoe";
}

static void json_runs_calls(const sd_moe_stats *s, sbuf *b) {
    sb_printf(b, "  \"runs\": [");
    for (int r = 0; r < s->n_runs; r++) {
        int end = r + 1 < s->n_runs ? s->runs[r + 1].first_call : s->n_calls;
        sb_printf(b, "%s\n    {\"label\": ", r ? "," : "");
        if (s->runs[r].label)
            sb_string(b, s->runs[r].label);
        else
            sb_printf(b, "null");
        sb_printf(b, ", \"first_call\": %d, \"n_calls\": %d}", s->runs[r].first_call, end - s->runs[r].first_call);
    }
    sb_printf(b, "%s],\n  \"calls\": [", s->n_runs ? "\n  " : "");
    for (int c = 0; c < s->n_calls; c++) {
        sb_printf(b, "%s\n    {\"run\": %d, \"call\": %d, \"timestep\": ", c ? "," : "", s->calls[c].run,
                  s->calls[c].call);
        sb_float(b, s->calls[c].timestep);
        sb_printf(b, "}");
    }
    sb_printf(b, "%s],\n", s->n_calls ? "\n  " : "");
}

static void json_layer(const sd_moe_stats *s, int l, sbuf *b, long *count) {
    const size_t E = (size_t)s->n_experts;
    const stats_layer *L = &s->layers[l];
    sb_printf(b, "    {\"name\": ");
    sb_string(b, sd_moe_name(L->m));
    sb_printf(b, ", \"kind\": \"%s\", \"top_k\": %d,\n     \"experts\": [", L->kind, sd_moe_top_k(L->m));
    for (size_t e = 0; e < E; e++) count[e] = 0;
    for (int c = 0; c < s->n_calls; c++) {
        const int *ex = s->experts + ((size_t)c * s->n_layers + l) * E;
        sb_printf(b, "%s[", c ? ", " : "");
        for (size_t i = 0; i < E && ex[i] >= 0; i++) {
            sb_printf(b, "%s%d", i ? ", " : "", ex[i]);
            count[ex[i]]++;
        }
        sb_printf(b, "]");
    }
    sb_printf(b, "],\n     \"mean_weights\": [");
    for (int c = 0; c < s->n_calls; c++) {
        const size_t off = ((size_t)c * s->n_layers + l) * E;
        sb_printf(b, "%s[", c ? ", " : "");
        for (size_t i = 0; i < E && s->experts[off + i] >= 0; i++) {
            if (i) sb_printf(b, ", ");
            sb_float(b, s->weights[off + i]);
        }
        sb_printf(b, "]");
    }
    sb_printf(b, "],\n     \"times_selected\": [");
    for (size_t e = 0; e < (size_t)sd_moe_num_experts(L->m); e++) sb_printf(b, "%s%ld", e ? ", " : "", count[e]);
    sb_printf(b, "]}");
}

char *sd_moe_stats_json(const sd_moe_stats *s, sd_error *err) {
    if (s->failed) {
        if (err) *err = s->hook_err;
        return NULL;
    }
    sbuf b = {0};
    long *count = calloc((size_t)s->n_experts + 1, sizeof *count);
    if (!count) {
        sd_fail(err, "out of memory");
        return NULL;
    }
    sb_printf(&b, "{\n  \"format\": \"%s\",\n  \"format_version\": %d,\n  \"num_experts\": %d,\n  \"routing\": \"%s\",\n",
              STATS_FORMAT, STATS_FORMAT_VERSION, s->n_experts, routing_name(s));
    json_runs_calls(s, &b);
    sb_printf(&b, "  \"layers\": [\n");
    for (int l = 0; l < s->n_layers; l++) {
        json_layer(s, l, &b, count);
        sb_printf(&b, "%s\n", l + 1 < s->n_layers ? "," : "");
    }
    sb_printf(&b, "  ]\n}\n");
    free(count);
    if (b.oom) {
        free(b.p);
        sd_fail(err, "out of memory");
        return NULL;
    }
    return b.p;
}

int sd_moe_stats_write(const sd_moe_stats *s, const char *path, sd_error *err) {
    char *text = sd_moe_stats_json(s, err);
    if (!text) return -1;
    sd_atomic_file af;
    if (sd_atomic_open(&af, path, err)) {
        free(text);
        return -1;
    }
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, af.fp) == n;
    free(text);
    if (!ok) {
        sd_atomic_abort(&af);
        return sd_fail(err, "%s: write failed", path);
    }
    return sd_atomic_commit(&af, err);
}
