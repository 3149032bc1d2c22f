/* sdmoe-fuzz-libs: core
 *
 * Fuzzes core/weight_cache's reading of a cache file (header, index bounds,
 * key order, entry offsets and sizes): the input becomes the cache file of a
 * fixed stand-in weight file, with the 32 identity bytes at offset 40
 * replaced by the right ones so that inputs get past the identity check.  On
 * any file it accepts, every entry it hands out must lie inside the file. */
#include <limits.h>
#include <sys/stat.h>

#include "core/weight_cache.h"
#include "tests/fuzz/fuzz_common.h"

#define IDENTITY_AT 40
#define IDENTITY_LEN 32

static char g_dir[PATH_MAX], g_weights[PATH_MAX], g_cache[PATH_MAX];
static unsigned char g_identity[IDENTITY_LEN];

static sd_weight_cache *cache_open(void) {
    const char *files[1] = {g_weights};
    sd_weight_cache_options o = {.dir = g_dir};
    sd_weight_cache *c = NULL;
    sd_error err = {0};
    if (sd_weight_cache_open(&c, &o, "unet", files, NULL, 1, &err) || !c) abort();
    return c;
}

static void cleanup(void) {
    unlink(g_cache);
    unlink(g_weights);
    rmdir(g_dir);
}

/* A temp folder, a weight file, and one valid cache file to learn the identity from. */
static void setup(void) {
    snprintf(g_dir, sizeof g_dir, "%s/sdmoe-fuzz-wc-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_dir)) abort();
    atexit(cleanup);
    snprintf(g_weights, sizeof g_weights, "%s/w.safetensors", g_dir);
    FILE *f = fopen(g_weights, "wb");
    if (!f || fputs("weights", f) < 0 || fclose(f)) abort();
    sd_weight_cache *c = cache_open();
    snprintf(g_cache, sizeof g_cache, "%s", sd_weight_cache_path(c));
    static const float v[4] = {1, 2, 3, 4};
    sd_error err = {0};
    if (sd_weight_cache_add(c, "k", v, sizeof v, &err) || sd_weight_cache_save(c, &err)) abort();
    sd_weight_cache_free(c);
    f = fopen(g_cache, "rb");
    if (!f || fseek(f, IDENTITY_AT, SEEK_SET) || fread(g_identity, 1, IDENTITY_LEN, f) != IDENTITY_LEN) abort();
    fclose(f);
}

static void touch_entry(sd_weight_cache *c, const char *key, size_t bytes) {
    const unsigned char *p = sd_weight_cache_find(c, key, bytes);
    if (!p) return;
    FUZZ_ASSERT((uintptr_t)p % 64 == 0);
    unsigned sum = 0;
    for (size_t i = 0; i < bytes; i++) sum += p[i]; /* ASan / valgrind: inside the mapping */
    (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) setup(), ready = 1;
    unsigned char *buf = malloc(size + 1);
    FUZZ_ASSERT(buf != NULL);
    memcpy(buf, data, size);
    if (size >= IDENTITY_AT + IDENTITY_LEN) memcpy(buf + IDENTITY_AT, g_identity, IDENTITY_LEN);
    FILE *f = fopen(g_cache, "wb");
    FUZZ_ASSERT(f != NULL);
    FUZZ_ASSERT(fwrite(buf, 1, size, f) == size);
    fclose(f);
    free(buf);
    sd_weight_cache *c = cache_open();
    static const size_t sizes[] = {0, 1, 4, 16, 4096, 65536};
    static const char *const keys[] = {"k", "a", "conv_in.weight|x", ""};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) touch_entry(c, keys[k], sizes[s]);
    sd_weight_cache_stats st;
    sd_weight_cache_get_stats(c, &st);
    FUZZ_ASSERT(st.hits >= 0 && st.misses == 0);
    sd_weight_cache_free(c);
    return 0;
}
