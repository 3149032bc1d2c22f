/* core/gemm — thread control and the single place that routes GEMMs to
 * OpenBLAS or oneDNN (declared in core/kernels.h).
 *
 * Routing, measured on the 2-core Zen 3 (AVX2, no AVX-512) build machine,
 * single thread, SD 1.5 shapes (rows x out x in):
 *     8192x320x320  OpenBLAS 68.0  dnnl_sgemm 68.2 GFLOP/s
 *     8192x2560x320          72.5             69.9
 *     8192x320x1280          62.4             67.0
 *     2048x5120x640          73.4             74.4
 *     512x1280x1280          74.1             72.8
 *     154x320x768            65.8             70.2
 * i.e. equal within noise, while mixing the two thread pools (OpenBLAS's
 * pthreads and OpenMP, on which oneDNN runs) makes idle workers of one spin on
 * the cores the other needs.  So every GEMM goes to dnnl_sgemm: one pool.
 * Inside an OpenMP parallel region (attention tiles) dnnl_sgemm runs on the
 * calling thread.  OpenBLAS stays selectable here (sd_gemm_use_openblas) for
 * machines where it wins; it must then never be entered from several OpenMP
 * threads at once. */
#include <cblas.h>
#include <ctype.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/kernels.h"

static int g_threads = 0;

int sd_default_threads(void) {
    cpu_set_t set;
    int cpus = 0, cores = 0;
    /* unique (package, core) pairs among the CPUs this process may use */
    long keys[1024];
    if (sched_getaffinity(0, sizeof set, &set) != 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (int)n : 1;
    }
    for (int cpu = 0; cpu < CPU_SETSIZE && cores < 1024; cpu++) {
        if (!CPU_ISSET(cpu, &set)) continue;
        cpus++;
        char path[128];
        long core = cpu, pkg = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fscanf(f, "%ld", &core) != 1) core = cpu;
            fclose(f);
        }
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        f = fopen(path, "r");
        if (f) {
            if (fscanf(f, "%ld", &pkg) != 1) pkg = 0;
            fclose(f);
        }
        long key = pkg * 100000 + core;
        int seen = 0;
        for (int i = 0; i < cores; i++) seen |= keys[i] == key;
        if (!seen) keys[cores++] = key;
    }
    if (cores < 1) cores = cpus;
    return cores > 0 ? cores : 1;
}

void sd_set_threads(int n) {
    if (n < 1) n = 1;
    g_threads = n;
    omp_set_num_threads(n); /* oneDNN's CPU engine runs on OpenMP here */
    openblas_set_num_threads(n);
}

int sd_get_threads(void) {
    if (g_threads < 1) {
        /* honour OMP_NUM_THREADS when nothing was set explicitly */
        int n = omp_get_max_threads();
        g_threads = n > 0 ? n : sd_default_threads();
    }
    return g_threads;
}

/* 1 to send this shape to OpenBLAS (see the measurements above). */
static int sd_gemm_use_openblas(int64_t M, int64_t N, int64_t K) {
    (void)M, (void)N, (void)K;
    return 0;
}

void sd_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
             const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
             float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (omp_in_parallel() || !sd_gemm_use_openblas(M, N, K)) {
        dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                   beta, C, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (blasint)M, (blasint)N, (blasint)K, alpha,
                A, (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
}

void sd_linear_ex(const float *x, int64_t ldx, const float *W, const float *b, int64_t n,
                  int64_t in, int64_t out, float *y, int64_t ldy, int accumulate) {
    if (n <= 0 || out <= 0) return;
    if (b && !accumulate) {
        /* preload the bias so the GEMM adds into it (beta = 1) */
        #pragma omp parallel for schedule(static) if (n * out > 65536)
        for (int64_t r = 0; r < n; r++) memcpy(y + r * ldy, b, (size_t)out * sizeof(float));
        sd_gemm(0, 1, n, out, in, 1.0f, x, ldx, W, in, 1.0f, y, ldy);
        return;
    }
    sd_gemm(0, 1, n, out, in, 1.0f, x, ldx, W, in, accumulate ? 1.0f : 0.0f, y, ldy);
    if (b) {
        #pragma omp parallel for schedule(static) if (n * out > 65536)
        for (int64_t r = 0; r < n; r++) {
            float *yr = y + r * ldy;
            for (int64_t j = 0; j < out; j++) yr[j] += b[j];
        }
    }
}

void sd_linear(const float *x, const float *W, const float *b, int64_t n, int64_t in,
               int64_t out, float *y) {
    sd_linear_ex(x, in, W, b, n, in, out, y, out, 0);
}
