/* bench/bench_weights — random SD1.5-shaped weights in safetensors files
 * (contract in bench/bench.h).
 *
 * Each component is written once (core/safetensors.h st_write: temporary
 * file + rename, so a crash never leaves a half file) with a metadata tag
 * naming this generator version, the seed and the dtype; a later run that
 * finds the same tag reuses the file.  Values: linear/conv weights uniform
 * with std 1/sqrt(fan_in) (activations stay O(1) through the network, so
 * no NaN/Inf/denormal path changes the timing), biases ±0.02, norm gamma 1
 * and beta 0, embeddings std 0.02 as CLIP's initialiser. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench/bench.h"
#include "core/half.h"
#include "core/safetensors.h"

#define BENCH_WEIGHTS_VERSION "sdmoe-bench-weights-1"

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static float init_scale(const bench_tensor *t) {
    switch (t->init) {
    case BI_WEIGHT: {
        int64_t fan_in = t->shape[0] > 0 ? t->numel / t->shape[0] : 1;
        return (float)(sqrt(3.0) / sqrt((double)(fan_in > 0 ? fan_in : 1)));
    }
    case BI_BIAS: return 0.02f;
    case BI_EMBED: return (float)(0.02 * sqrt(3.0));
    default: return 0.0f;
    }
}

/* Fills one tensor's bytes (dt) deterministically from (seed, name). */
static void fill_tensor(const bench_tensor *t, bench_dtype dt, void *dst, uint64_t seed) {
    uint64_t stream = fnv1a64(t->name);
    float scale = init_scale(t), base = t->init == BI_ONES ? 1.0f : 0.0f;
    int64_t n = t->numel;
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        float v = base + (scale != 0.0f ? scale * bench_rand_uniform(seed, stream, (uint64_t)i) : 0.0f);
        if (dt == BENCH_F16) ((uint16_t *)dst)[i] = sd_f32_to_f16(v);
        else ((float *)dst)[i] = v;
    }
}

static int mkdirs(const char *dir, sd_error *err) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return sd_fail(err, "bench: mkdir %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) return sd_fail(err, "bench: mkdir %s: %s", buf, strerror(errno));
    return 0;
}

static int64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (int64_t)st.st_size;
}

int bench_weights_ensure(const char *dir, const char *file, const bench_inventory *inv, bench_dtype dt,
                         uint64_t seed, int force, int *written, int64_t *bytes, double *write_ms,
                         sd_error *err) {
    char path[1024], tag[256];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(tag, sizeof tag, "%s seed=%llu dtype=%s tensors=%d params=%lld", BENCH_WEIGHTS_VERSION,
             (unsigned long long)seed, dt == BENCH_F16 ? "F16" : "F32", inv->n, (long long)inv->params);
    *written = 0, *write_ms = 0;
    if (!force) {
        st_file f;
        sd_error ignore = {0};
        if (st_open(&f, path, &ignore) == 0) {
            const char *have = st_metadata(&f, "sdmoe_bench");
            int same = have && !strcmp(have, tag);
            st_close(&f);
            if (same) {
                *bytes = file_size(path);
                return 0;
            }
        }
    }
    if (mkdirs(dir, err)) return -1;
    double t0 = bench_now_ms();
    size_t esz = dt == BENCH_F16 ? 2 : 4, total = (size_t)inv->params * esz;
    unsigned char *data = malloc(total ? total : 1);
    st_write_entry *e = calloc((size_t)inv->n, sizeof *e);
    if (!data || !e) {
        free(data);
        free(e);
        return sd_fail(err, "bench: out of memory for %zu MB of random %s weights", total >> 20, file);
    }
    size_t off = 0;
    for (int i = 0; i < inv->n; i++) {
        const bench_tensor *t = &inv->t[i];
        fill_tensor(t, dt, data + off, seed);
        e[i].name = t->name;
        e[i].dtype = dt == BENCH_F16 ? ST_F16 : ST_F32;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        e[i].data = data + off;
        off += (size_t)t->numel * esz;
    }
    const char *keys[2] = {"sdmoe_bench", "format"}, *vals[2] = {tag, "pt"};
    int rc = st_write(path, e, inv->n, keys, vals, 2, err);
    free(data);
    free(e);
    if (rc) return -1;
    *written = 1;
    *write_ms = bench_now_ms() - t0;
    *bytes = file_size(path);
    return 0;
}
