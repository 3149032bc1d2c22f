/* bench — the internal contract of build/sdmoe-bench (the bench/ sources; not a
 * library: nothing outside bench/ includes this header).
 *
 * What the benchmark owns:
 *   bench_util.c       clock, medians, process CPU time, RSS / peak RSS
 *                      (VmHWM, reset through /proc/self/clear_refs), load
 *                      average, CPU identification, a counter-based RNG.
 *   bench_arch.c       SD1.5-shaped configs built as diffusers config.json
 *                      objects (cJSON), the tensor inventory each loader binds
 *                      (diffusers / SegMoE / HF names and shapes) and the list
 *                      of kernel calls one UNet / VAE forward makes, with the
 *                      analytic MAC counts of ../shared/docs/anchors.md §5.
 *   bench_weights.c    random weights written once per component to a
 *                      safetensors file (core/safetensors.h st_write), reused
 *                      by later runs, and loaded through the real loaders.
 *   bench_probe.c      the fp32 FMA peak, one large SGEMM through sd_gemm,
 *                      and the OpenBLAS vs oneDNN GEMM routing study.
 *   bench_breakdown.c  the per-operation breakdown: every distinct kernel
 *                      call of the UNet step replayed at its real shape
 *                      through core/kernels.h, timed, and scaled by how often
 *                      the step makes it.
 *   bench_startup.c    start to first sampling step through the real pipeline
 *                      (sd_pipeline_load on a diffusers folder of links to
 *                      the weight files), and the machine's anon first-touch
 *                      rate that bounds it.
 *   bench_main.c       flags, the run plan, the table and the --json object.
 */
#ifndef SDMOE_BENCH_BENCH_H
#define SDMOE_BENCH_BENCH_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "unet/unet.h"

/* ------------------------------------------------------------------ util */

double bench_now_ms(void);
/* User + system CPU time of the whole process, ms. */
double bench_cpu_ms(void);
/* Median of v[n] (v is reordered). */
double bench_median(double *v, int n);
/* A /proc/self/status field in kB ("VmHWM", "VmRSS"), -1 if unreadable. */
long bench_status_kb(const char *field);
/* Resets VmHWM to the current RSS (Linux clear_refs "5"); 0 on success. */
int bench_reset_hwm(void);
/* Fraction of the whole machine's CPU time that was idle over window_ms (/proc/stat). */
double bench_idle_fraction(double window_ms);
/* 1-, 5- and 15-minute load averages. */
void bench_loadavg(double out[3]);
/* "model name" of /proc/cpuinfo into buf. */
void bench_cpu_model(char *buf, size_t cap);
/* Reads the files once, page cache as it is: the floor for start-up time. */
double bench_read_files_ms(const char *const *paths, int n);
/* Widest FMA vectors usable here: 512 (AVX-512F), 256 (AVX2+FMA) or 128. */
int bench_vector_bits(void);

/* Counter-based uniform in [-1, 1): the same value for (seed, stream, i)
 * whatever the thread split. */
float bench_rand_uniform(uint64_t seed, uint64_t stream, uint64_t i);
void bench_fill_uniform(float *x, int64_t n, float scale, uint64_t seed, uint64_t stream);

/* Timing of one measured call: warm-up calls, then `reps` timed calls. */
typedef struct bench_timing {
    double ms;          /* median wall time */
    double min_ms, max_ms;
    double cpu_share;   /* CPU time / (wall time x threads) over the timed calls: < 0.9 = we were not alone */
    double cpu_ms;      /* process CPU time per timed call (all threads) */
    int reps;
    double samples[32];
} bench_timing;

typedef int (*bench_fn)(void *ctx, sd_error *err);
int bench_time(bench_timing *t, int warmup, int reps, bench_fn fn, void *ctx, sd_error *err);

/* ------------------------------------------------------------------ arch */

/* Kernel calls, as the forward passes make them (core/kernels.h). */
typedef enum bench_op_kind {
    BOP_CONV,     /* n, h_in, w_in, c_in, c_out, k, stride, accumulate */
    BOP_LINEAR,   /* rows, in, out, bias, accumulate, into_act (proj_out: result lands in the activation) */
    BOP_ATTN,     /* batch, nq, nk, heads, head_dim */
    BOP_GN,       /* n, hw, c, groups, silu, tokens_out (1: writes NHWC token rows for a transformer) */
    BOP_LN,       /* rows, d */
    BOP_GEGLU,    /* rows, inner */
    BOP_ADD,      /* floats (y = a + b) */
    BOP_BIAS,     /* n, hw, c (x += one vector per channel: the resnet's time embedding) */
    BOP_CONCAT,   /* n, hw, ca, cb */
    BOP_UPSAMPLE, /* n, h, w, c (nearest x2) */
    BOP_COPY,     /* floats (memcpy) */
    BOP_LAYOUT,   /* n, c, h, w, dir (0: NCHW -> activation layout, 1: back) */
    BOP_SILU,     /* floats */
    BOP_TOKENS_ADD, /* n, c, hw: NHWC token rows added into the activation layout (proj_out) */
    BOP_KIND_COUNT
} bench_op_kind;

typedef enum bench_op_cat { BCAT_CONV, BCAT_LINEAR, BCAT_ATTN, BCAT_NORM, BCAT_ELEM, BCAT_COUNT } bench_op_cat;

typedef struct bench_op {
    bench_op_kind kind;
    int64_t a[8];
    int64_t count;     /* calls per forward */
    int per_request;   /* 1: done once per request (attn2 K/V of the context), not per step */
    double ms;         /* replay: median time of one call */
} bench_op;

typedef struct bench_oplist {
    bench_op *ops;
    int n, cap;
} bench_oplist;

void bench_oplist_free(bench_oplist *l);
bench_op_cat bench_op_category(bench_op_kind k);
const char *bench_cat_name(bench_op_cat c);
/* MACs of one call (conv k2*Ci*Co*oh*ow*n, linear rows*in*out, attention
 * 2*b*nq*nk*heads*dh; 0 for the rest, as anchors.md counts). */
double bench_op_macs(const bench_op *op);
/* "conv3x3 2x64x64 320->320" style label. */
void bench_op_label(const bench_op *op, char *buf, size_t cap);

/* One tensor of a component file. */
typedef enum bench_init { BI_WEIGHT, BI_BIAS, BI_ONES, BI_ZEROS, BI_EMBED } bench_init;
typedef struct bench_tensor {
    char name[192];
    int ndim;
    int64_t shape[4];
    int64_t numel;
    bench_init init;
} bench_tensor;

typedef struct bench_inventory {
    bench_tensor *t;
    int n, cap;
    int64_t params;
} bench_inventory;

void bench_inventory_free(bench_inventory *inv);

/* SD1.5 diffusers config objects (caller frees with cJSON_Delete).
 * moe_experts > 0 adds "segmoe_config" {num_experts, num_experts_per_tok
 * moe_top_k, moe_layers "all", down 0..3, up 1..4}. */
cJSON *bench_unet_config_json(int moe_experts, int moe_top_k);
cJSON *bench_vae_config_json(void);
/* SDXL base 1.0's UNet config (text_time conditioning, depths 1/2/10). */
cJSON *bench_sdxl_unet_config_json(void);
cJSON *bench_clip_config_json(void);

/* Tensor inventory of a parsed UNet config (SegMoE key names where
 * cfg->moe_enabled) and, when ops != NULL, the kernel calls of one forward
 * of n latents of h x w with n_ctx context tokens.  moe_macs (optional)
 * gets the MACs of that forward with only top-k experts computed. */
int bench_unet_arch(const sd_unet_config *cfg, bench_inventory *inv, bench_oplist *ops, int64_t n,
                    int64_t h, int64_t w, int64_t n_ctx, double *moe_macs, sd_error *err);
/* VAE: the whole AutoencoderKL inventory; ops = one decode of n latents h x w. */
int bench_vae_arch(const cJSON *cfg, bench_inventory *inv, bench_oplist *ops, int64_t n, int64_t h,
                   int64_t w, sd_error *err);
/* CLIP text model: inventory; ops = one forward of n sequences of seq tokens. */
int bench_clip_arch(const cJSON *cfg, bench_inventory *inv, bench_oplist *ops, int64_t n, int64_t seq,
                    sd_error *err);
/* Sum of MACs (per_request ops included when with_request). */
double bench_oplist_macs(const bench_oplist *l, int with_request);
double bench_oplist_cat_macs(const bench_oplist *l, bench_op_cat c, int with_request);

/* --------------------------------------------------------------- weights */

typedef enum bench_dtype { BENCH_F32, BENCH_F16 } bench_dtype;

/* Writes `inv` with random values to dir/<file> unless a file written by
 * this benchmark version with the same seed and dtype is already there.
 * *written = 1 when it wrote; *bytes = file size. */
int bench_weights_ensure(const char *dir, const char *file, const bench_inventory *inv, bench_dtype dt,
                         uint64_t seed, int force, int *written, int64_t *bytes, double *write_ms,
                         sd_error *err);

/* ----------------------------------------------------------------- probes */

/* fp32 FMA peak of `threads` threads with the widest vectors (best of 5). */
double bench_peak_gflops(int threads, int vector_bits, double *median_gflops);
/* n x n x n SGEMM through sd_gemm: GFLOP/s of the median of reps. */
int bench_sgemm_gflops(int64_t n, int reps, bench_timing *t, double *gflops, sd_error *err);
/* OpenBLAS vs oneDNN on SD's GEMM shapes; adds "gemm_study" to json (may
 * be NULL) and prints a table when print. */
int bench_gemm_study(int threads, cJSON *json, int print, sd_error *err);

/* ------------------------------------------------------------------- SDXL */

/* One SDXL-shaped UNet CFG step (batch 2, 128x128 latent = 1024^2, 77
 * context tokens of 2048, pooled 1280 + 6 time ids) with random f32 weights
 * written once to dir/sdxl_unet_f32.safetensors (~10 GB).  Prints a summary
 * when print; adds "sdxl" {...} to json when json != NULL. */
int bench_sdxl_step(const char *dir, int fresh, int warmup, int reps, double peak_gflops, int print, cJSON *json,
                    sd_error *err);

/* ---------------------------------------------------------------- startup */

typedef struct bench_startup_in {
    const char *folder;        /* created: a diffusers folder of links and config.json files */
    const char *unet_file, *vae_file, *clip_file, *tokenizer_dir;
    int cold;                  /* drop the page cache (root) before the read and before the start */
} bench_startup_in;

typedef struct bench_startup_run {
    double load_ms;            /* sd_pipeline_load */
    double first_step_ms;      /* start -> the sampler starts step 1 of a 512^2 request */
    double step_ms;            /* that first step (a CFG UNet call) */
    double second_step_ms;     /* the next one: the steady step time */
    double overhead_ms;        /* end of step 1 - second_step_ms: start-up including what step 1 faults in */
    double rss_first_step_mb, peak_rss_mb;
    double cache_hit_mb;       /* prepared conv weights mapped from the weight cache */
    double cache_written_mb;   /* ... and written to it */
} bench_startup_run;

typedef struct bench_startup_out {
    double read_ms;            /* reading the three files once, page cache as it is */
    double anon_first_touch_gbps; /* 512 MB of fresh anonymous memory faulted in (memory.c's way) */
    bench_startup_run uncached;   /* weight cache off */
    bench_startup_run first;      /* empty weight cache: the first run, which fills it */
    bench_startup_run cached;     /* weight cache filled: every later run */
} bench_startup_out;

/* Opens the SD1.5-shaped files through sd_pipeline_load as `sdmoe generate`
 * does and runs a 512^2, 2-step Euler request,
 * three times: weight cache off, empty (in <folder>/weight-cache), filled. */
int bench_startup(const bench_startup_in *in, bench_startup_out *out, sd_error *err);
/* GB/s of faulting in `bytes` of fresh anonymous memory: on VMs whose host
 * reclaims freed guest memory this, not the copy, bounds model loading. */
double bench_anon_first_touch_gbps(size_t bytes);

/* -------------------------------------------------------------- breakdown */

/* Replays the per-step ops of `ops` whose category is in cat_mask (bit
 * 1 << bench_op_cat) through core/kernels.h with activations in `layout`
 * (0 = NHWC as vae/ runs, or bench_replay_layout() as unet/ runs): sets
 * op->ms to the fastest of reps calls after a warm-up.  *total_ms = sum of
 * count x ms over the replayed ops; *cpu_share (may be NULL) = process CPU
 * time / (wall x threads) over the whole replay (< 0.9: the machine was busy). */
int bench_replay(bench_oplist *ops, int layout, unsigned cat_mask, int reps, double *total_ms, double *cpu_share,
                 sd_error *err);
/* The layout the UNet keeps its activations in: sd_preferred_layout()
 * (8 = nChw8c on AVX2, 0 = NHWC on AVX-512), 0 without a layout API. */
int bench_replay_layout(void);

#endif
