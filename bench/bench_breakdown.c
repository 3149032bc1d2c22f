/* bench/bench_breakdown — where a UNet step's time goes, by replaying its
 * kernel calls (contract in bench/bench.h).
 *
 * Method: core/kernels.h has no timing counters, so every distinct kernel
 * call of the step (bench_arch.c lists them with their real shapes and how
 * often the step makes each) is run on its own through the same public
 * kernel API the UNet uses, on random data of that shape: one warm-up call
 * (creates the oneDNN primitive, faults the buffers in), then the fastest of
 * `reps` calls (9 or 31 for short calls): on a shared machine the minimum is
 * the uncontended cost.  Category time = sum of count x that time.  What this
 * misses — cache effects between neighbouring layers, allocation or layout
 * work the UNet does outside these kernels, and any fusion the UNet does
 * that the list does not — shows up as the difference between the replayed
 * total and the fastest measured step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "core/kernels.h"

/* Activation layout of the replay: the UNet keeps its activations in
 * sd_preferred_layout() (oneDNN's blocked nChw8c on AVX2, NHWC on AVX-512);
 * token rows (attention, linears) are NHWC.  Kernels without a layout API
 * (an older core/kernels.h) replay in NHWC. */
#ifdef SD_LAYOUT_NHWC
#define BENCH_LAYOUTS 1
static int act_layout(void) { return sd_preferred_layout(); }
static int64_t act_floats(int blk, int64_t n, int64_t c, int64_t hw) { return sd_layout_floats(blk, n, c, hw); }
#else
#define BENCH_LAYOUTS 0
static int act_layout(void) { return 0; }
static int64_t act_floats(int blk, int64_t n, int64_t c, int64_t hw) { return (void)blk, n * c * hw; }
#endif

typedef struct replay {
    bench_op *op;
    int blk;
    float *x, *y, *w, *b, *g, *k, *v, *s;
    sd_conv2d *conv;
} replay;

static float *rnd(int64_t n, uint64_t stream) {
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (p) bench_fill_uniform(p, n, 1.0f, 99, stream);
    return p;
}

static void replay_free(replay *r) {
    free(r->x), free(r->y), free(r->w), free(r->b), free(r->g), free(r->k), free(r->v), free(r->s);
    sd_conv2d_free(r->conv);
    r->x = r->y = r->w = r->b = r->g = r->k = r->v = r->s = NULL;
    r->conv = NULL;
}

static int replay_setup(replay *r, sd_error *err) {
    const int64_t *a = r->op->a;
    int blk = r->blk;
    switch (r->op->kind) {
    case BOP_CONV: {
        int64_t pad = a[5] / 2, oh = (a[1] + 2 * pad - a[5]) / a[6] + 1, ow = (a[2] + 2 * pad - a[5]) / a[6] + 1;
        sd_conv2d_desc d = {a[3], a[4], a[5], a[5], a[6], a[6], pad, pad, pad, pad};
        int64_t nw = a[4] * a[3] * a[5] * a[5];
        float *wt = rnd(nw, 1);
        r->b = rnd(a[4], 2);
        if (!wt || !r->b) return free(wt), sd_fail(err, "bench: out of memory");
        float sc = (float)(1.0 / sqrt((double)(a[3] * a[5] * a[5])));
        for (int64_t i = 0; i < nw; i++) wt[i] *= sc;
        int rc = sd_conv2d_create(&r->conv, &d, wt, r->b, err);
        free(wt);
        if (rc) return -1;
        r->x = rnd(act_floats(blk, a[0], a[3], a[1] * a[2]) + a[0] * a[3] * a[1] * a[2], 3);
        r->y = rnd(act_floats(blk, a[0], a[4], oh * ow), 4);
        break;
    }
    case BOP_LINEAR:
        r->x = rnd(a[0] * a[1], 5), r->w = rnd(a[2] * a[1], 6), r->b = rnd(a[2], 7), r->y = rnd(a[0] * a[2], 8);
        break;
    case BOP_ATTN: {
        int64_t C = a[3] * a[4];
        r->x = rnd(a[0] * a[1] * C, 9), r->k = rnd(a[0] * a[2] * C, 10), r->v = rnd(a[0] * a[2] * C, 11);
        r->y = rnd(a[0] * a[1] * C, 12), r->s = rnd(sd_attention_scratch_floats(a[1], a[2], a[4]), 13);
        break;
    }
    case BOP_GN:
        r->x = rnd(act_floats(blk, a[0], a[2], a[1]), 14), r->y = rnd(act_floats(blk, a[0], a[2], a[1]) + a[0] * a[1] * a[2], 15);
        r->g = rnd(a[2], 16), r->b = rnd(a[2], 17);
        break;
    case BOP_LN: r->x = rnd(a[0] * a[1], 18), r->y = rnd(a[0] * a[1], 19), r->g = rnd(a[1], 20), r->b = rnd(a[1], 21); break;
    case BOP_GEGLU: r->x = rnd(a[0] * 2 * a[1], 22); break;
    case BOP_ADD:
    case BOP_COPY:
    case BOP_SILU: r->x = rnd(a[0], 23), r->y = rnd(a[0], 24); break;
    case BOP_BIAS: r->x = rnd(act_floats(blk, a[0], a[2], a[1]), 25), r->b = rnd(a[2], 26); break;
    case BOP_CONCAT:
        r->x = rnd(act_floats(blk, a[0], a[2], a[1]), 27), r->k = rnd(act_floats(blk, a[0], a[3], a[1]), 28);
        r->y = rnd(act_floats(blk, a[0], a[2] + a[3], a[1]), 29);
        break;
    case BOP_UPSAMPLE:
        r->x = rnd(act_floats(blk, a[0], a[3], a[1] * a[2]), 30), r->y = rnd(act_floats(blk, a[0], a[3], 4 * a[1] * a[2]), 31);
        break;
    case BOP_LAYOUT:
    case BOP_TOKENS_ADD: {
        int64_t hw = r->op->kind == BOP_LAYOUT ? a[2] * a[3] : a[2], c = a[1];
        r->x = rnd(act_floats(blk, a[0], c, hw) + a[0] * c * hw, 32), r->y = rnd(act_floats(blk, a[0], c, hw) + a[0] * c * hw, 33);
        break;
    }
    default: return sd_fail(err, "bench: unknown op kind %d", (int)r->op->kind);
    }
    if (!r->x) return sd_fail(err, "bench: out of memory for a replay buffer");
    return 0;
}

#if BENCH_LAYOUTS
/* Layout-dependent elementwise ops in a channel-blocked layout (unet/unet_forward.c). */
static int replay_blocked(replay *r) {
    const int64_t *a = r->op->a;
    int blk = r->blk;
    switch (r->op->kind) {
    case BOP_BIAS: sd_add_channel_vec(r->x, blk, a[0], a[2], a[1], r->b); break;
    case BOP_CONCAT: sd_concat_channels_ex(r->x, a[2], r->k, a[3], blk, a[0], a[1], r->y); break;
    case BOP_UPSAMPLE: sd_upsample_nearest_ex(r->x, blk, a[0], a[3], a[1], a[2], r->y, 2 * a[1], 2 * a[2]); break;
    case BOP_LAYOUT: /* in: conv_in reads the NCHW sample directly; out: back to NCHW */
        if (a[4]) sd_layout_convert(r->x, blk, r->y, SD_LAYOUT_NCHW, a[0], a[1], a[2] * a[3], 0);
        break;
    case BOP_TOKENS_ADD: sd_layout_convert(r->x, SD_LAYOUT_NHWC, r->y, blk, a[0], a[1], a[2], 1); break;
    default: break;
    }
    return 0;
}
#endif

/* The same ops on NHWC activations (vae/vae_forward.c; unet/ on AVX-512). */
static int replay_nhwc(replay *r) {
    const int64_t *a = r->op->a;
    switch (r->op->kind) {
    case BOP_BIAS: sd_add_bias(r->x, a[0] * a[1], a[2], r->b); break;
    case BOP_CONCAT: sd_concat_channels(r->x, a[2], r->k, a[3], a[0] * a[1], r->y); break;
    case BOP_UPSAMPLE: sd_upsample_nearest(r->x, a[0], a[1], a[2], a[3], r->y, 2 * a[1], 2 * a[2], a[3]); break;
    case BOP_LAYOUT:
        if (a[4] == 0) sd_nchw_to_nhwc(r->x, a[0], a[1], a[2], a[3], r->y);
        else sd_nhwc_to_nchw(r->x, a[0], a[2], a[3], a[1], r->y);
        break;
    default: break; /* BOP_TOKENS_ADD: proj_out accumulated straight into NHWC */
    }
    return 0;
}

/* One call, as unet/unet_forward.c (or vae/vae_forward.c in NHWC) makes it. */
static int replay_call(void *p, sd_error *err) {
    replay *r = p;
    const int64_t *a = r->op->a;
    int blk = r->blk;
    switch (r->op->kind) {
    case BOP_CONV:
#if BENCH_LAYOUTS
        if (blk != 0 && a[3] < 8) /* conv_in reads the NCHW sample directly */
            return sd_conv2d_forward_layout(r->conv, r->x, SD_LAYOUT_NCHW, a[0], a[1], a[2], r->y, blk, (int)a[7], err);
        if (blk != 0) return sd_conv2d_forward_blk(r->conv, r->x, blk, a[0], a[1], a[2], r->y, (int)a[7], err);
#endif
        return sd_conv2d_forward_ex(r->conv, r->x, a[3], a[0], a[1], a[2], r->y, a[4], (int)a[7], err);
    case BOP_LINEAR: {
        /* proj_out accumulates into NHWC activations; in a blocked layout it is a plain
         * linear followed by BOP_TOKENS_ADD */
        int acc = a[5] && blk != 0 ? 0 : (int)a[4];
        sd_linear_ex(r->x, a[1], r->w, a[3] ? r->b : NULL, a[0], a[1], a[2], r->y, a[2], acc);
        return 0;
    }
    case BOP_ATTN: {
        int64_t C = a[3] * a[4];
        sd_attention(r->x, C, r->k, C, r->v, C, a[0], a[1], a[2], (int)a[3], a[4], (float)(1.0 / sqrt((double)a[4])),
                     0, r->y, C, r->s);
        return 0;
    }
    case BOP_GN:
#if BENCH_LAYOUTS
        if (blk != 0) {
            sd_group_norm_ex(r->x, blk, r->y, a[5] ? SD_LAYOUT_NHWC : blk, a[0], a[1], a[2], (int)a[3], 1e-5f, r->g,
                             r->b, (int)a[4]);
            return 0;
        }
#endif
        sd_group_norm(r->x, a[0], a[1], a[2], (int)a[3], 1e-5f, r->g, r->b, r->y, (int)a[4]);
        return 0;
    case BOP_LN: sd_layer_norm(r->x, a[0], a[1], r->g, r->b, 1e-5f, r->y); return 0;
    case BOP_GEGLU:
        /* in place, as unet/linear_layer.c calls it (values stay finite: |h * gelu(g)| <= 1) */
        sd_geglu(r->x, a[0], a[1], r->x);
        return 0;
    case BOP_ADD: sd_add(r->y, r->x, r->y, a[0]); return 0;
    case BOP_COPY: memcpy(r->y, r->x, (size_t)a[0] * sizeof(float)); return 0;
    case BOP_SILU: sd_silu(r->x, r->y, a[0]); return 0;
    case BOP_BIAS:
    case BOP_CONCAT:
    case BOP_UPSAMPLE:
    case BOP_LAYOUT:
    case BOP_TOKENS_ADD:
#if BENCH_LAYOUTS
        if (blk != 0) return replay_blocked(r);
#endif
        return replay_nhwc(r);
    default: return sd_fail(err, "bench: unknown op kind %d", (int)r->op->kind);
    }
}

int bench_replay_layout(void) { return act_layout(); }

int bench_replay(bench_oplist *ops, int layout, unsigned cat_mask, int reps, double *total_ms, double *cpu_share,
                 sd_error *err) {
    *total_ms = 0;
    double wall0 = bench_now_ms(), cpu0 = bench_cpu_ms();
    for (int i = 0; i < ops->n; i++) {
        bench_op *op = &ops->ops[i];
        op->ms = 0;
        if (op->per_request || !(cat_mask & (1u << bench_op_category(op->kind)))) continue;
        replay r = {.op = op, .blk = layout};
        if (replay_setup(&r, err)) {
            replay_free(&r);
            return -1;
        }
        /* a first timing decides how many calls make a stable median */
        bench_timing t;
        if (bench_time(&t, 1, 1, replay_call, &r, err)) {
            replay_free(&r);
            return -1;
        }
        int n = reps;
        if (t.ms < 20 && n < 9) n = 9;
        if (t.ms < 2) n = 31;
        if (bench_time(&t, 0, n, replay_call, &r, err)) {
            replay_free(&r);
            return -1;
        }
        op->ms = t.min_ms;
        *total_ms += t.min_ms * (double)op->count;
        replay_free(&r);
    }
    double wall = bench_now_ms() - wall0;
    if (cpu_share) *cpu_share = wall > 0 ? (bench_cpu_ms() - cpu0) / (wall * sd_get_threads()) : 0;
    return 0;
}
