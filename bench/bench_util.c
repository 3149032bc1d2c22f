/* bench/bench_util — clocks, medians, memory and machine facts for the
 * benchmark (contract in bench/bench.h). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench/bench.h"
#include "core/kernels.h"

double bench_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

double bench_cpu_ms(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return 0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(double *v, int n) {
    if (n < 1) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

long bench_status_kb(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    size_t len = strlen(field);
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, len) && line[len] == ':') {
            v = atol(line + len + 1);
            break;
        }
    fclose(f);
    return v;
}

int bench_reset_hwm(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int read_proc_stat(unsigned long long *idle, unsigned long long *total) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 4) return -1;
    *idle = v[3] + (n > 4 ? v[4] : 0), *total = 0;
    for (int i = 0; i < 8 && i < n; i++) *total += v[i]; /* guest times are already in user */
    return 0;
}

double bench_idle_fraction(double window_ms) {
    unsigned long long i0, t0, i1, t1;
    if (read_proc_stat(&i0, &t0)) return -1;
    struct timespec ts = {(time_t)(window_ms / 1000), (long)(fmod(window_ms, 1000.0) * 1e6)};
    nanosleep(&ts, NULL);
    if (read_proc_stat(&i1, &t1) || t1 <= t0) return -1;
    return (double)(i1 - i0) / (double)(t1 - t0);
}

void bench_loadavg(double out[3]) {
    out[0] = out[1] = out[2] = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f) return;
    if (fscanf(f, "%lf %lf %lf", &out[0], &out[1], &out[2]) != 3) out[0] = out[1] = out[2] = -1;
    fclose(f);
}

void bench_cpu_model(char *buf, size_t cap) {
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *v = strchr(line, ':');
            if (v) {
                v++;
                while (*v == ' ' || *v == '\t') v++;
                v[strcspn(v, "\n")] = 0;
                snprintf(buf, cap, "%s", v);
            }
            break;
        }
    fclose(f);
}

int bench_vector_bits(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 256;
    return 128;
}

/* splitmix64 finaliser: a good 64-bit mix of a counter. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float bench_rand_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
    uint64_t r = mix64(seed * 0x9e3779b97f4a7c15ull ^ mix64(stream + 0x632be59bd9b4e019ull) ^ (i * 0xd1b54a32d192ed03ull));
    return (float)((double)(r >> 40) * (1.0 / 8388608.0) - 1.0); /* 24 bits -> [-1, 1) */
}

void bench_fill_uniform(float *x, int64_t n, float scale, uint64_t seed, uint64_t stream) {
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) x[i] = scale * bench_rand_uniform(seed, stream, (uint64_t)i);
}

int bench_time(bench_timing *t, int warmup, int reps, bench_fn fn, void *ctx, sd_error *err) {
    memset(t, 0, sizeof *t);
    if (reps > (int)(sizeof t->samples / sizeof t->samples[0])) reps = (int)(sizeof t->samples / sizeof t->samples[0]);
    if (reps < 1) reps = 1;
    for (int i = 0; i < warmup; i++)
        if (fn(ctx, err)) return -1;
    double wall = 0, cpu0 = bench_cpu_ms();
    for (int i = 0; i < reps; i++) {
        double t0 = bench_now_ms();
        if (fn(ctx, err)) return -1;
        t->samples[i] = bench_now_ms() - t0;
        wall += t->samples[i];
    }
    double cpu = bench_cpu_ms() - cpu0;
    double tmp[32];
    memcpy(tmp, t->samples, sizeof(double) * (size_t)reps);
    t->reps = reps;
    t->ms = bench_median(tmp, reps);
    t->min_ms = tmp[0];
    t->max_ms = tmp[reps - 1];
    t->cpu_share = wall > 0 ? cpu / (wall * sd_get_threads()) : 0;
    t->cpu_ms = cpu / reps;
    return 0;
}

double bench_read_files_ms(const char *const *paths, int n) {
    static char buf[1 << 24];
    double t0 = bench_now_ms();
    for (int i = 0; i < n; i++) {
        FILE *f = fopen(paths[i], "rb");
        if (!f) continue;
        while (fread(buf, 1, sizeof buf, f) == sizeof buf) {
        }
        fclose(f);
    }
    return bench_now_ms() - t0;
}
