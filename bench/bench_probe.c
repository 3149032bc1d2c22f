/* bench/bench_probe — the machine's fp32 limit (an FMA loop with the widest
 * vectors), one large SGEMM through sd_gemm, and the GEMM routing study
 * (OpenBLAS cblas_sgemm vs oneDNN dnnl_sgemm vs oneDNN matmul, plain and
 * with pre-packed weights) on the GEMM shapes an SD1.5 step makes
 * (contract in bench/bench.h). */
#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "core/kernels.h"

/* ------------------------------------------------------------ FMA peak */

/* 12 (AVX2: 16 ymm registers) / 24 (AVX-512: 32 zmm) independent FMA
 * chains: more than latency x FMA ports (4 x 2 on Zen 3/4/5 and Skylake-X),
 * so the loop is throughput bound.  acc = acc * m + k with m just below 1
 * converges to k / (1 - m): no overflow, no denormals. */
#define FMA_ACC256 12
#define FMA_ACC512 24

/* Named accumulators (an array would be kept on the stack by GCC): the
 * chains stay in registers and each iteration is only FMAs. */
#define FMA4(T, F, a, b, c, d) a = F(a, m, k), b = F(b, m, k), c = F(c, m, k), d = F(d, m, k)

__attribute__((target("avx2,fma"))) static float fma_loop_256(int64_t iters, float seed) {
    __m256 a0 = _mm256_set1_ps(seed), a1 = _mm256_set1_ps(seed + 0.01f), a2 = _mm256_set1_ps(seed + 0.02f);
    __m256 a3 = _mm256_set1_ps(seed + 0.03f), a4 = _mm256_set1_ps(seed + 0.04f), a5 = _mm256_set1_ps(seed + 0.05f);
    __m256 a6 = _mm256_set1_ps(seed + 0.06f), a7 = _mm256_set1_ps(seed + 0.07f), a8 = _mm256_set1_ps(seed + 0.08f);
    __m256 a9 = _mm256_set1_ps(seed + 0.09f), a10 = _mm256_set1_ps(seed + 0.1f), a11 = _mm256_set1_ps(seed + 0.11f);
    const __m256 m = _mm256_set1_ps(0.999999f), k = _mm256_set1_ps(1e-6f);
    for (int64_t it = 0; it < iters; it++) {
        FMA4(__m256, _mm256_fmadd_ps, a0, a1, a2, a3);
        FMA4(__m256, _mm256_fmadd_ps, a4, a5, a6, a7);
        FMA4(__m256, _mm256_fmadd_ps, a8, a9, a10, a11);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

__attribute__((target("avx512f"))) static float fma_loop_512(int64_t iters, float seed) {
#define Z(i) __m512 z##i = _mm512_set1_ps(seed + 0.01f * (float)(i))
    Z(0); Z(1); Z(2); Z(3); Z(4); Z(5); Z(6); Z(7); Z(8); Z(9); Z(10); Z(11);
    Z(12); Z(13); Z(14); Z(15); Z(16); Z(17); Z(18); Z(19); Z(20); Z(21); Z(22); Z(23);
#undef Z
    const __m512 m = _mm512_set1_ps(0.999999f), k = _mm512_set1_ps(1e-6f);
    for (int64_t it = 0; it < iters; it++) {
        FMA4(__m512, _mm512_fmadd_ps, z0, z1, z2, z3);
        FMA4(__m512, _mm512_fmadd_ps, z4, z5, z6, z7);
        FMA4(__m512, _mm512_fmadd_ps, z8, z9, z10, z11);
        FMA4(__m512, _mm512_fmadd_ps, z12, z13, z14, z15);
        FMA4(__m512, _mm512_fmadd_ps, z16, z17, z18, z19);
        FMA4(__m512, _mm512_fmadd_ps, z20, z21, z22, z23);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(z0, z1), _mm512_add_ps(z2, z3)),
                             _mm512_add_ps(_mm512_add_ps(z4, z5), _mm512_add_ps(z6, z7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(z8, z9), _mm512_add_ps(z10, z11)),
                                       _mm512_add_ps(_mm512_add_ps(z12, z13), _mm512_add_ps(z14, z15))));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(z16, z17), _mm512_add_ps(z18, z19)),
                                       _mm512_add_ps(_mm512_add_ps(z20, z21), _mm512_add_ps(z22, z23))));
    return _mm512_reduce_add_ps(s);
}

/* SSE fallback: two 4-lane multiply-adds per step (no FMA unit assumed). */
static float fma_loop_128(int64_t iters, float seed) {
    __m128 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm_set1_ps(seed + (float)i * 1e-3f);
    const __m128 b = _mm_set1_ps(0.999999f), c = _mm_set1_ps(1e-6f);
    for (int64_t it = 0; it < iters; it++)
        for (int i = 0; i < 8; i++) acc[i] = _mm_add_ps(_mm_mul_ps(acc[i], b), c);
    float out[4];
    _mm_storeu_ps(out, acc[0]);
    return out[0];
}

static double fma_flops_per_iter(int bits) {
    return bits == 512 ? FMA_ACC512 * 16 * 2.0 : bits == 256 ? FMA_ACC256 * 8 * 2.0 : 8 * 4 * 2.0;
}

static volatile float g_fma_sink;

/* Wall ms of `threads` threads each running iters. */
static double fma_run(int threads, int bits, int64_t iters) {
    double t0 = bench_now_ms();
    #pragma omp parallel num_threads(threads)
    {
        float seed = 0.5f + 0.01f * (float)omp_get_thread_num();
        float r = bits == 512 ? fma_loop_512(iters, seed) : bits == 256 ? fma_loop_256(iters, seed)
                                                                       : fma_loop_128(iters, seed);
        #pragma omp atomic
        g_fma_sink += r;
    }
    return bench_now_ms() - t0;
}

double bench_peak_gflops(int threads, int bits, double *median_gflops) {
    /* calibrate: about 250 ms per trial */
    int64_t iters = 1 << 20;
    double ms = fma_run(threads, bits, iters);
    while (ms < 20) iters *= 4, ms = fma_run(threads, bits, iters);
    iters = (int64_t)((double)iters * 250.0 / ms) + 1;
    double g[5], best = 0;
    for (int i = 0; i < 5; i++) {
        ms = fma_run(threads, bits, iters);
        g[i] = (double)iters * fma_flops_per_iter(bits) * threads / (ms * 1e6);
        if (g[i] > best) best = g[i];
    }
    if (median_gflops) *median_gflops = bench_median(g, 5);
    return best;
}

/* ---------------------------------------------------------------- SGEMM */

typedef struct sgemm_ctx {
    int64_t n;
    float *a, *b, *c;
} sgemm_ctx;

static int sgemm_call(void *p, sd_error *err) {
    (void)err;
    sgemm_ctx *s = p;
    sd_gemm(0, 0, s->n, s->n, s->n, 1.0f, s->a, s->n, s->b, s->n, 0.0f, s->c, s->n);
    return 0;
}

int bench_sgemm_gflops(int64_t n, int reps, bench_timing *t, double *gflops, sd_error *err) {
    sgemm_ctx s = {n, malloc((size_t)(n * n) * 4), malloc((size_t)(n * n) * 4), malloc((size_t)(n * n) * 4)};
    int rc = -1;
    if (!s.a || !s.b || !s.c) {
        sd_fail(err, "bench: out of memory for a %lld^3 SGEMM", (long long)n);
        goto out;
    }
    bench_fill_uniform(s.a, n * n, 1.0f, 1, 1);
    bench_fill_uniform(s.b, n * n, 1.0f, 1, 2);
    if (bench_time(t, 1, reps, sgemm_call, &s, err)) goto out;
    *gflops = 2.0 * (double)n * (double)n * (double)n / (t->ms * 1e6);
    rc = 0;
out:
    free(s.a);
    free(s.b);
    free(s.c);
    return rc;
}

/* ---------------------------------------------------------- GEMM study */

/* C[M,N] = op(A) op(B), row-major, leading dims as the kernels use them. */
typedef struct gshape {
    const char *what;
    int ta, tb;
    int64_t M, N, K, lda, ldb, ldc;
    int per_thread; /* 1: attention tile, one GEMM per OpenMP thread at a time (as sd_attention) */
    int64_t count;  /* calls per 512^2 CFG step (batch 2); per-request ones say so in `what` */
} gshape;

/* Counts: 5 transformers at 64^2 (down 0 x2, up 3 x3), 5 at 32^2, 5 at 16^2,
 * 1 at 8^2 (mid); each has proj_in/out + (q,k,v,out of attn1) + (q,out of attn2)
 * = 8 square linears and the FF pair; heads 8, batch 2. */
static const gshape g_shapes[] = {
    {"linear 64^2 C320 (qkv/out/proj)", 0, 1, 8192, 320, 320, 0, 0, 0, 0, 40},
    {"linear 64^2 FF1 320->2560", 0, 1, 8192, 2560, 320, 0, 0, 0, 0, 5},
    {"linear 64^2 FF2 1280->320", 0, 1, 8192, 320, 1280, 0, 0, 0, 0, 5},
    {"linear 32^2 C640", 0, 1, 2048, 640, 640, 0, 0, 0, 0, 40},
    {"linear 32^2 FF1 640->5120", 0, 1, 2048, 5120, 640, 0, 0, 0, 0, 5},
    {"linear 32^2 FF2 2560->640", 0, 1, 2048, 640, 2560, 0, 0, 0, 0, 5},
    {"linear 16^2 C1280", 0, 1, 512, 1280, 1280, 0, 0, 0, 0, 40},
    {"linear 16^2 FF1 1280->10240", 0, 1, 512, 10240, 1280, 0, 0, 0, 0, 5},
    {"linear 16^2 FF2 5120->1280", 0, 1, 512, 1280, 5120, 0, 0, 0, 0, 5},
    {"linear 8^2 C1280 (mid)", 0, 1, 128, 1280, 1280, 0, 0, 0, 0, 8},
    {"linear 8^2 FF1 (mid)", 0, 1, 128, 10240, 1280, 0, 0, 0, 0, 1},
    {"linear 32^2 FF2 batch 1", 0, 1, 1024, 640, 2560, 0, 0, 0, 0, 0},
    {"ctx K/V 77x2 768->320 (per request)", 0, 1, 154, 320, 768, 0, 0, 0, 0, 10},
    {"ctx K/V 77x2 768->1280 (per request)", 0, 1, 154, 1280, 768, 0, 0, 0, 0, 12},
    {"time_emb_proj 1x1280->1280", 0, 1, 1, 1280, 1280, 0, 0, 0, 0, 22},
    {"CLIP qkv/out 77x2 768", 0, 1, 154, 768, 768, 0, 0, 0, 0, 0},
    {"CLIP fc1 77x2 768->3072", 0, 1, 154, 3072, 768, 0, 0, 0, 0, 0},
    {"self-attn scores 64^2 whole head (alt.)", 0, 1, 4096, 4096, 40, 320, 320, 4096, 0, 0},
    {"self-attn AV 64^2 whole head (alt.)", 0, 0, 4096, 40, 4096, 4096, 320, 320, 0, 0},
    {"self-attn scores 64^2 tile 64 rows", 0, 1, 64, 4096, 40, 320, 320, 4096, 1, 5120},
    {"self-attn AV 64^2 tile 64 rows", 0, 0, 64, 40, 4096, 4096, 320, 320, 1, 5120},
    {"self-attn scores 32^2 tile", 0, 1, 64, 1024, 80, 640, 640, 1024, 1, 1280},
    {"self-attn AV 32^2 tile", 0, 0, 64, 80, 1024, 1024, 640, 640, 1, 1280},
    {"self-attn scores 16^2 tile", 0, 1, 64, 256, 160, 1280, 1280, 256, 1, 320},
    {"self-attn AV 16^2 tile", 0, 0, 64, 160, 256, 256, 1280, 1280, 1, 320},
    {"cross-attn scores 64^2 tile (77 keys)", 0, 1, 64, 77, 40, 320, 320, 77, 1, 5120},
    {"cross-attn AV 64^2 tile (77 keys)", 0, 0, 64, 40, 77, 77, 320, 320, 1, 5120},
    {"VAE mid attn scores 64^2 (1 head, d512)", 0, 1, 4096, 4096, 512, 0, 0, 0, 0, 0},
    {"VAE mid attn AV 64^2", 0, 0, 4096, 512, 4096, 0, 0, 0, 0, 0},
    {"square 2048^3", 0, 0, 2048, 2048, 2048, 0, 0, 0, 0, 0},
};

enum { GM_SDGEMM, GM_OPENBLAS, GM_DNNL_SGEMM, GM_MATMUL, GM_MATMUL_PACKED, GM_COUNT };
static const char *g_method_names[GM_COUNT] = {"sd_gemm", "openblas", "dnnl_sgemm", "dnnl_matmul",
                                               "dnnl_matmul_packed"};

typedef struct gbuf {
    const gshape *s;
    int64_t lda, ldb, ldc;
    float *a[64], *b[64], *c[64]; /* per thread for per_thread shapes, [0] otherwise */
    int nbuf;
    /* matmul primitive (whole-matrix shapes only) */
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    dnnl_primitive_t prim[2];
    dnnl_memory_t ma, mb[2], mc;
} gbuf;

static int64_t a_rows(const gshape *s) { return s->ta ? s->K : s->M; }
static int64_t b_rows(const gshape *s) { return s->tb ? s->N : s->K; }

static void g_openblas(const gshape *s, const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                       int64_t ldc) {
    cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans,
                (blasint)s->M, (blasint)s->N, (blasint)s->K, 1.0f, a, (blasint)lda, b, (blasint)ldb, 0.0f, c,
                (blasint)ldc);
}

static void g_dnnl(const gshape *s, const float *a, int64_t lda, const float *b, int64_t ldb, float *c,
                   int64_t ldc) {
    dnnl_sgemm(s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', s->M, s->N, s->K, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

/* Tiles per thread per parallel region: amortises the region's fork/join
 * as sd_attention does (it runs batch x heads x blocks tasks in one loop). */
#define TILE_BATCH 16

/* One call of method m; per_thread shapes: every thread runs TILE_BATCH
 * GEMMs on its own buffers inside one parallel region. */
static void g_call(gbuf *g, int m) {
    const gshape *s = g->s;
    if (s->per_thread) {
        #pragma omp parallel
        {
            int t = omp_get_thread_num();
            for (int r = 0; r < TILE_BATCH; r++) {
                if (m == GM_SDGEMM)
                    sd_gemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, g->a[t], g->lda, g->b[t], g->ldb, 0.0f, g->c[t],
                            g->ldc);
                else if (m == GM_OPENBLAS) g_openblas(s, g->a[t], g->lda, g->b[t], g->ldb, g->c[t], g->ldc);
                else g_dnnl(s, g->a[t], g->lda, g->b[t], g->ldb, g->c[t], g->ldc);
            }
        }
        return;
    }
    if (m == GM_SDGEMM)
        sd_gemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, g->a[0], g->lda, g->b[0], g->ldb, 0.0f, g->c[0], g->ldc);
    else if (m == GM_OPENBLAS) g_openblas(s, g->a[0], g->lda, g->b[0], g->ldb, g->c[0], g->ldc);
    else if (m == GM_DNNL_SGEMM) g_dnnl(s, g->a[0], g->lda, g->b[0], g->ldb, g->c[0], g->ldc);
    else {
        int k = m == GM_MATMUL_PACKED;
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, g->ma}, {DNNL_ARG_WEIGHTS, g->mb[k]}, {DNNL_ARG_DST, g->mc}};
        dnnl_primitive_execute(g->prim[k], g->stream, 3, args);
        dnnl_stream_wait(g->stream);
    }
}

/* Matmul primitives: [0] B as stored (strided), [1] B reordered once into
 * the layout the primitive prefers (weights packed at load time). */
static int g_matmul_make(gbuf *g, sd_error *err) {
    const gshape *s = g->s;
    dnnl_memory_desc_t amd, bmd, bany, cmd;
    dnnl_dims_t ad = {s->M, s->K}, bd = {s->K, s->N}, cd = {s->M, s->N};
    dnnl_dims_t as = {s->ta ? 1 : g->lda, s->ta ? g->lda : 1}, bs = {s->tb ? 1 : g->ldb, s->tb ? g->ldb : 1};
    dnnl_dims_t cs = {g->ldc, 1};
    if (dnnl_memory_desc_init_by_strides(&amd, 2, ad, dnnl_f32, as) ||
        dnnl_memory_desc_init_by_strides(&bmd, 2, bd, dnnl_f32, bs) ||
        dnnl_memory_desc_init_by_tag(&bany, 2, bd, dnnl_f32, dnnl_format_tag_any) ||
        dnnl_memory_desc_init_by_strides(&cmd, 2, cd, dnnl_f32, cs))
        return sd_fail(err, "bench: oneDNN memory descriptors for %s", s->what);
    if (dnnl_memory_create(&g->ma, &amd, g->eng, g->a[0]) || dnnl_memory_create(&g->mb[0], &bmd, g->eng, g->b[0]) ||
        dnnl_memory_create(&g->mc, &cmd, g->eng, g->c[0]))
        return sd_fail(err, "bench: oneDNN memories for %s", s->what);
    for (int k = 0; k < 2; k++) {
        dnnl_matmul_desc_t md;
        dnnl_primitive_desc_t pd;
        if (dnnl_matmul_desc_init(&md, &amd, k ? &bany : &bmd, NULL, &cmd) ||
            dnnl_primitive_desc_create(&pd, &md, NULL, g->eng, NULL))
            return sd_fail(err, "bench: oneDNN matmul for %s", s->what);
        if (k) {
            const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
            dnnl_primitive_desc_t rpd;
            dnnl_primitive_t r;
            if (dnnl_memory_create(&g->mb[1], want, g->eng, DNNL_MEMORY_ALLOCATE) ||
                dnnl_reorder_primitive_desc_create(&rpd, &bmd, g->eng, want, g->eng, NULL) ||
                dnnl_primitive_create(&r, rpd)) {
                dnnl_primitive_desc_destroy(pd);
                return sd_fail(err, "bench: oneDNN weight reorder for %s", s->what);
            }
            dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, g->mb[0]}, {DNNL_ARG_TO, g->mb[1]}};
            dnnl_primitive_execute(r, g->stream, 2, args);
            dnnl_stream_wait(g->stream);
            dnnl_primitive_destroy(r);
            dnnl_primitive_desc_destroy(rpd);
        }
        int bad = dnnl_primitive_create(&g->prim[k], pd) != dnnl_success;
        dnnl_primitive_desc_destroy(pd);
        if (bad) return sd_fail(err, "bench: oneDNN matmul primitive for %s", s->what);
    }
    return 0;
}

static void g_free(gbuf *g) {
    for (int i = 0; i < g->nbuf; i++) free(g->a[i]), free(g->b[i]), free(g->c[i]);
    for (int k = 0; k < 2; k++) {
        if (g->prim[k]) dnnl_primitive_destroy(g->prim[k]);
        if (g->mb[k]) dnnl_memory_destroy(g->mb[k]);
    }
    if (g->ma) dnnl_memory_destroy(g->ma);
    if (g->mc) dnnl_memory_destroy(g->mc);
}

/* ms of one call: warm-up 1, then calls until >= 5 and >= 100 ms; the
 * minimum (on a shared machine the median of a sub-millisecond call mostly
 * measures the scheduler; the minimum is the uncontended cost).  Tiles:
 * per GEMM-row of T concurrent GEMMs. */
static double g_time(gbuf *g, int m) {
    g_call(g, m);
    double best = 1e30, spent = 0;
    for (int n = 0; n < 200 && (n < 5 || spent < 100); n++) {
        double t0 = bench_now_ms();
        g_call(g, m);
        double dt = bench_now_ms() - t0;
        spent += dt;
        if (dt < best) best = dt;
    }
    return g->s->per_thread ? best / TILE_BATCH : best;
}

static double g_maxdiff(const gbuf *g, const float *ref, int64_t n) {
    double d = 0;
    for (int64_t r = 0; r < g->s->M; r++)
        for (int64_t j = 0; j < g->s->N; j++) {
            double x = fabs((double)g->c[0][r * g->ldc + j] - (double)ref[r * g->s->N + j]);
            if (x > d) d = x;
        }
    (void)n;
    return d;
}

int bench_gemm_study(int threads, cJSON *json, int print, sd_error *err) {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    if (dnnl_engine_create(&eng, dnnl_cpu, 0) || dnnl_stream_create(&stream, eng, dnnl_stream_default_flags))
        return sd_fail(err, "bench: oneDNN engine");
    cJSON *arr = json ? cJSON_AddArrayToObject(json, "gemm_study") : NULL;
    if (print) {
        printf("\nGEMM routing study (%d threads; best-of-N ms per call, GFLOP/s in brackets; 1xT = attention tiles, "
               "one GEMM per thread at once as in sd_attention, ms per tile row)\n", threads);
        printf("%-40s %6s %5s %5s %5s %4s | %-15s %-15s %-15s %-15s %-15s | %s\n", "shape", "calls", "M", "N", "K",
               "T", "sd_gemm", "openblas", "dnnl_sgemm", "dnnl_matmul", "matmul_packed", "best library");
    }
    double tot[GM_COUNT] = {0}, tot_best = 0;
    int n_shapes = (int)(sizeof g_shapes / sizeof g_shapes[0]);
    for (int i = 0; i < n_shapes; i++) {
        const gshape *s = &g_shapes[i];
        gbuf g = {.s = s, .eng = eng, .stream = stream};
        g.lda = s->lda ? s->lda : (s->ta ? s->M : s->K);
        g.ldb = s->ldb ? s->ldb : (s->tb ? s->K : s->N);
        g.ldc = s->ldc ? s->ldc : s->N;
        g.nbuf = s->per_thread ? threads : 1;
        if (g.nbuf > 64) g.nbuf = 64;
        for (int t = 0; t < g.nbuf; t++) {
            g.a[t] = malloc((size_t)(a_rows(s) * g.lda) * 4);
            g.b[t] = malloc((size_t)(b_rows(s) * g.ldb) * 4);
            g.c[t] = malloc((size_t)(s->M * g.ldc) * 4);
            if (!g.a[t] || !g.b[t] || !g.c[t]) {
                g.nbuf = t + 1;
                g_free(&g);
                return sd_fail(err, "bench: out of memory for GEMM %s", s->what);
            }
            bench_fill_uniform(g.a[t], a_rows(s) * g.lda, 1.0f, 7, (uint64_t)(3 * i));
            bench_fill_uniform(g.b[t], b_rows(s) * g.ldb, 1.0f, 7, (uint64_t)(3 * i + 1));
            memset(g.c[t], 0, (size_t)(s->M * g.ldc) * 4);
        }
        if (!s->per_thread && g_matmul_make(&g, err)) {
            g_free(&g);
            return -1;
        }
        /* reference result (OpenBLAS) to check every method's operands */
        float *ref = malloc((size_t)(s->M * s->N) * 4);
        if (!ref) {
            g_free(&g);
            return sd_fail(err, "bench: out of memory");
        }
        if (!s->per_thread) {
            g_call(&g, GM_OPENBLAS);
            for (int64_t r = 0; r < s->M; r++) memcpy(ref + r * s->N, g.c[0] + r * g.ldc, (size_t)s->N * 4);
        }
        double ms[GM_COUNT], flop = 2.0 * (double)s->M * (double)s->N * (double)s->K * g.nbuf;
        double tol = 1e-3 * sqrt((double)s->K) + 1e-3;
        int best = -1;
        for (int m = 0; m < GM_COUNT; m++) {
            ms[m] = -1;
            if (s->per_thread && m >= GM_MATMUL) continue;
            ms[m] = g_time(&g, m);
            if (!s->per_thread && g_maxdiff(&g, ref, 0) > tol) {
                free(ref);
                g_free(&g);
                return sd_fail(err, "bench: GEMM study: %s gives a different result for %s", g_method_names[m],
                               s->what);
            }
            if (m > GM_SDGEMM && (best < 0 || ms[m] < ms[best])) best = m;
        }
        free(ref);
        /* a tile row times T GEMMs running at once */
        double calls = s->per_thread ? (double)s->count / g.nbuf : (double)s->count;
        for (int m = 0; m < GM_COUNT; m++)
            if (ms[m] >= 0) tot[m] += ms[m] * calls;
        tot_best += ms[best] * calls;
        if (print) {
            printf("%-40s %6lld %5lld %5lld %5lld %4s |", s->what, (long long)s->count, (long long)s->M,
                   (long long)s->N, (long long)s->K, s->per_thread ? "1xT" : "T");
            for (int m = 0; m < GM_COUNT; m++) {
                char cell[32] = "-";
                if (ms[m] >= 0) snprintf(cell, sizeof cell, "%.3f [%.0f]", ms[m], flop / (ms[m] * 1e6));
                printf(" %-15s", cell);
            }
            printf(" | %s\n", g_method_names[best]);
        }
        if (arr) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "shape", s->what);
            cJSON_AddNumberToObject(o, "M", (double)s->M);
            cJSON_AddNumberToObject(o, "N", (double)s->N);
            cJSON_AddNumberToObject(o, "K", (double)s->K);
            cJSON_AddNumberToObject(o, "trans_a", s->ta);
            cJSON_AddNumberToObject(o, "trans_b", s->tb);
            cJSON_AddNumberToObject(o, "lda", (double)g.lda);
            cJSON_AddNumberToObject(o, "ldb", (double)g.ldb);
            cJSON_AddNumberToObject(o, "per_thread_tile", s->per_thread);
            cJSON_AddNumberToObject(o, "calls_per_512_step", (double)s->count);
            cJSON *mo = cJSON_AddObjectToObject(o, "ms");
            cJSON *go = cJSON_AddObjectToObject(o, "gflops");
            for (int m = 0; m < GM_COUNT; m++)
                if (ms[m] >= 0) {
                    cJSON_AddNumberToObject(mo, g_method_names[m], ms[m]);
                    cJSON_AddNumberToObject(go, g_method_names[m], flop / (ms[m] * 1e6));
                }
            cJSON_AddStringToObject(o, "best", g_method_names[best]);
            cJSON_AddItemToArray(arr, o);
        }
        g_free(&g);
    }
    if (print) {
        printf("GEMM time per 512^2 step over the counted shapes (ms): sd_gemm %.0f, openblas %.0f, dnnl_sgemm %.0f, "
               "best library per shape %.0f\n", tot[GM_SDGEMM], tot[GM_OPENBLAS], tot[GM_DNNL_SGEMM], tot_best);
        printf("(matmul columns exclude the per-thread tiles; calls_per_step counts per-request context K/V once)\n");
    }
    if (json) {
        cJSON *t = cJSON_AddObjectToObject(json, "gemm_study_step_ms");
        cJSON_AddNumberToObject(t, "sd_gemm", tot[GM_SDGEMM]);
        cJSON_AddNumberToObject(t, "openblas", tot[GM_OPENBLAS]);
        cJSON_AddNumberToObject(t, "dnnl_sgemm", tot[GM_DNNL_SGEMM]);
        cJSON_AddNumberToObject(t, "best_library_per_shape", tot_best);
    }
    dnnl_stream_destroy(stream);
    dnnl_engine_destroy(eng);
    return 0;
}
