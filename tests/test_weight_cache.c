/* core/weight_cache: prepared weights kept on disk between runs (issue 9's
 * start-up time).  The module on its own (round trip, identity, hostile or
 * stale files, the size limit), then through sd_pipeline_load: a load from a
 * filled cache maps every conv's prepared weights instead of reordering them
 * and gives the same bytes as a load without the cache. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/sha256.h"
#include "core/weight_cache.h"
#include "sampler/pipeline.h"
#include "tests/support/test_support.h"

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* A stand-in weight file (the cache only looks at its identity). */
static char *weight_file(const char *dir, const char *name) {
    char *path = sd_path_join(dir, name);
    write_bytes(path, name, strlen(name));
    return path;
}

static void set_mtime(const char *path, time_t sec) {
    struct timespec t[2] = {{.tv_sec = sec}, {.tv_sec = sec}};
    cr_assert_eq(utimensat(AT_FDCWD, path, t, 0), 0, "utimensat %s", path);
}

static sd_weight_cache *open_cache(const char *dir, const char *file, int64_t max_bytes) {
    sd_weight_cache_options o = {.dir = dir, .max_bytes = max_bytes};
    sd_weight_cache *c = NULL;
    sd_error err = {0};
    const char *files[1] = {file};
    cr_assert_eq(sd_weight_cache_open(&c, &o, "unet", files, NULL, 1, &err), 0, "%s", err.msg);
    cr_assert_not_null(c);
    return c;
}

static int count_cache_files(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        n += len > 5 && !strcmp(de->d_name + len - 5, ".sdwc");
    }
    closedir(d);
    return n;
}

/* Two entries of sizes that are not page multiples, written and found again. */
static void fill(sd_weight_cache *c, float *a, size_t na, float *b, size_t nb) {
    for (size_t i = 0; i < na; i++) a[i] = (float)i * 0.5f;
    for (size_t i = 0; i < nb; i++) b[i] = -(float)i;
    sd_error err = {0};
    cr_assert_eq(sd_weight_cache_add(c, "conv_b", b, nb * sizeof(float), &err), 0, "%s", err.msg);
    cr_assert_eq(sd_weight_cache_add(c, "conv_a", a, na * sizeof(float), &err), 0, "%s", err.msg);
    cr_assert_eq(sd_weight_cache_save(c, &err), 0, "%s", err.msg);
}

Test(weight_cache, round_trip) {
    char *dir = tst_tmpdir();
    char *wf = weight_file(dir, "w.safetensors");
    char *cdir = sd_path_join(dir, "cache/nested"); /* created on open */
    float a[1000], b[1500];
    sd_weight_cache *c = open_cache(cdir, wf, 0);
    cr_expect_null(sd_weight_cache_find(c, "conv_a", sizeof a), "an empty cache finds nothing");
    fill(c, a, 1000, b, 1500);
    sd_weight_cache_stats s;
    sd_weight_cache_get_stats(c, &s);
    cr_expect_eq(s.misses, 2);
    cr_expect_eq(s.added_bytes, (int64_t)(sizeof a + sizeof b));
    cr_expect_eq(s.saved, 1);
    sd_weight_cache_free(c);

    c = open_cache(cdir, wf, 0);
    const float *fa = sd_weight_cache_find(c, "conv_a", sizeof a), *fb = sd_weight_cache_find(c, "conv_b", sizeof b);
    cr_assert_not_null(fa);
    cr_assert_not_null(fb);
    cr_expect_eq((uintptr_t)fa % 4096, 0, "entries are page aligned");
    cr_expect_eq((uintptr_t)fb % 4096, 0);
    cr_expect_eq(memcmp(fa, a, sizeof a), 0);
    cr_expect_eq(memcmp(fb, b, sizeof b), 0);
    cr_expect_null(sd_weight_cache_find(c, "conv_a", sizeof a - 4), "another size is a miss");
    cr_expect_null(sd_weight_cache_find(c, "conv_c", 4), "an unknown key is a miss");
    sd_weight_cache_get_stats(c, &s);
    cr_expect_eq(s.hits, 2);
    cr_expect_eq(s.hit_bytes, (int64_t)(sizeof a + sizeof b));
    cr_expect_eq(s.ignored[0], 0);
    sd_weight_cache_free(c);
    cr_expect_eq(count_cache_files(cdir), 1);
    free(cdir), free(wf), free(dir);
}

Test(weight_cache, a_changed_weight_file_gets_a_new_cache) {
    char *dir = tst_tmpdir();
    char *wf = weight_file(dir, "w.safetensors");
    float a[1000], b[10];
    sd_weight_cache *c = open_cache(dir, wf, 0);
    char *first = strdup(sd_weight_cache_path(c));
    fill(c, a, 1000, b, 10);
    sd_weight_cache_free(c);
    set_mtime(wf, 1000000000);
    c = open_cache(dir, wf, 0);
    cr_expect_str_neq(sd_weight_cache_path(c), first, "the modification time is part of the identity");
    cr_expect_null(sd_weight_cache_find(c, "conv_a", sizeof a), "nothing of the old file's cache is used");
    sd_weight_cache_free(c);
    free(first), free(wf), free(dir);
}

/* Rewrites the valid cache file at `path` with one corruption. */
typedef void (*corrupt_fn)(unsigned char *buf, size_t *n);
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static void c_garbage(unsigned char *buf, size_t *n) { memset(buf, 0x5a, *n); }
static void c_truncated(unsigned char *buf, size_t *n) { (void)buf, *n -= 100; }
static void c_short(unsigned char *buf, size_t *n) { (void)buf, *n = 40; }
static void c_version(unsigned char *buf, size_t *n) { (void)n, buf[8] = 9; }
static void c_identity(unsigned char *buf, size_t *n) { (void)n, buf[50] ^= 1; }
static void c_count(unsigned char *buf, size_t *n) { (void)n, memset(buf + 12, 0xff, 4); }
static void c_index(unsigned char *buf, size_t *n) { (void)n, put64(buf + 16, (uint64_t)1 << 62); }
/* first index entry: offset past the end, then a size that overflows, then an unaligned offset */
static void c_offset(unsigned char *buf, size_t *n) { put64(buf + 72, (uint64_t)*n + 4096); }
static void c_size(unsigned char *buf, size_t *n) { (void)n, put64(buf + 80, UINT64_MAX - 10); }
static void c_unaligned(unsigned char *buf, size_t *n) { uint64_t o; memcpy(&o, buf + 72, 8); (void)n, put64(buf + 72, o + 8); }
static void c_keylen(unsigned char *buf, size_t *n) { (void)n, memset(buf + 88, 0xff, 4); }
/* the two keys "conv_a" < "conv_b" swapped: out of order */
static void c_order(unsigned char *buf, size_t *n) { (void)n, buf[72 + 20 + 5] = 'z'; }

Test(weight_cache, damaged_files_are_ignored_then_replaced) {
    static const corrupt_fn cases[] = {c_garbage, c_truncated, c_short, c_version, c_identity, c_count,
                                       c_index, c_offset, c_size, c_unaligned, c_keylen, c_order};
    char *dir = tst_tmpdir();
    char *wf = weight_file(dir, "w.safetensors");
    float a[1000], b[10];
    sd_weight_cache *c = open_cache(dir, wf, 0);
    char *path = strdup(sd_weight_cache_path(c));
    fill(c, a, 1000, b, 10);
    sd_weight_cache_free(c);
    char *good;
    size_t good_n;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(path, (size_t)1 << 20, &good, &good_n, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char *buf = malloc(good_n);
        size_t n = good_n;
        memcpy(buf, good, n);
        cases[i](buf, &n);
        write_bytes(path, buf, n);
        free(buf);
        c = open_cache(dir, wf, 0);
        sd_weight_cache_stats s;
        sd_weight_cache_get_stats(c, &s);
        cr_expect_neq(s.ignored[0], 0, "case %zu: the damaged file is reported", i);
        cr_expect_null(sd_weight_cache_find(c, "conv_a", sizeof a), "case %zu: nothing is used from it", i);
        cr_expect_null(sd_weight_cache_find(c, "conv_b", sizeof b), "case %zu", i);
        fill(c, a, 1000, b, 10); /* the next save replaces it */
        sd_weight_cache_free(c);
        c = open_cache(dir, wf, 0);
        const float *fa = sd_weight_cache_find(c, "conv_a", sizeof a);
        cr_expect(fa && !memcmp(fa, a, sizeof a), "case %zu: rewritten", i);
        sd_weight_cache_free(c);
    }
    free(good), free(path), free(wf), free(dir);
}

Test(weight_cache, size_limit_removes_the_least_recently_used) {
    char *dir = tst_tmpdir();
    char *cdir = sd_path_join(dir, "cache");
    char *wf[3] = {weight_file(dir, "a.safetensors"), weight_file(dir, "b.safetensors"),
                   weight_file(dir, "c.safetensors")};
    float a[2048], b[10]; /* each cache file: 4 KB header + 8 KB + 4 KB-ish = 16 KB */
    char *paths[3];
    int64_t limit = 36 << 10; /* two files fit, not three */
    /* someone else's files in the folder, old and with our suffixes */
    cr_assert_eq(mkdir(cdir, 0755), 0);
    char *foreign[3] = {sd_path_join(cdir, "model.safetensors.sha256"), sd_path_join(cdir, "notes.sdwc"),
                        sd_path_join(cdir, "draft.txt.tmp-12")};
    for (int i = 0; i < 3; i++) {
        write_bytes(foreign[i], "x", 1);
        set_mtime(foreign[i], 100000000);
    }
    for (int i = 0; i < 3; i++) {
        sd_weight_cache *c = open_cache(cdir, wf[i], limit);
        paths[i] = strdup(sd_weight_cache_path(c));
        fill(c, a, 2048, b, 10);
        sd_weight_cache_free(c);
        if (i == 0) { /* a is used again after b is written: b becomes the oldest */
            set_mtime(paths[0], 1000000000);
        }
        if (i == 1) {
            set_mtime(paths[1], 900000000);
            c = open_cache(cdir, wf[0], limit); /* a hit refreshes a's time */
            cr_assert_not_null(sd_weight_cache_find(c, "conv_a", sizeof a));
            sd_error err = {0};
            cr_assert_eq(sd_weight_cache_save(c, &err), 0, "%s", err.msg);
            sd_weight_cache_free(c);
        }
    }
    cr_expect(sd_is_file(foreign[0]) && sd_is_file(foreign[1]) && sd_is_file(foreign[2]),
              "files the cache did not make are never removed");
    cr_expect(sd_is_file(paths[0]), "the recently used cache stays");
    cr_expect(!sd_is_file(paths[1]), "the least recently used cache is removed");
    cr_expect(sd_is_file(paths[2]), "the new cache is written");
    cr_expect_eq(count_cache_files(cdir), 3, "two caches and the foreign notes.sdwc");

    /* a cache larger than the limit is not written */
    char *big = weight_file(dir, "big.safetensors");
    sd_weight_cache *c = open_cache(cdir, big, 8 << 10);
    fill(c, a, 2048, b, 10);
    sd_weight_cache_stats s;
    sd_weight_cache_get_stats(c, &s);
    cr_expect_eq(s.saved, 0);
    cr_expect_neq(s.skipped[0], 0, "the reason is reported");
    cr_expect(!sd_is_file(sd_weight_cache_path(c)));
    sd_weight_cache_free(c);
    for (int i = 0; i < 3; i++) free(wf[i]), free(paths[i]), free(foreign[i]);
    free(big), free(cdir), free(dir);
}

Test(weight_cache, off_means_no_cache) {
    char *dir = tst_tmpdir();
    char *wf = weight_file(dir, "w.safetensors");
    const char *files[1] = {wf};
    sd_weight_cache_options o = {.dir = "off"};
    sd_weight_cache *c = (sd_weight_cache *)1;
    sd_error err = {0};
    cr_assert_eq(sd_weight_cache_open(&c, &o, "unet", files, NULL, 1, &err), 0);
    cr_expect_null(c);
    float x = 1;
    cr_expect_eq(sd_weight_cache_add(c, "k", &x, 4, &err), 0);
    cr_expect_null(sd_weight_cache_find(c, "k", 4));
    cr_expect_eq(sd_weight_cache_save(c, &err), 0);
    free(wf), free(dir);
}

Test(weight_cache, unusable_folder_is_an_error_naming_it) {
    char *dir = tst_tmpdir();
    char *wf = weight_file(dir, "w.safetensors");
    const char *files[1] = {wf};
    sd_weight_cache_options o = {.dir = wf}; /* a file, not a folder */
    sd_weight_cache *c;
    sd_error err = {0};
    cr_expect_neq(sd_weight_cache_open(&c, &o, "unet", files, NULL, 1, &err), 0);
    cr_expect_null(c);
    cr_expect(strstr(err.msg, wf) != NULL, "message names the folder: %s", err.msg);
    const char *missing[1] = {"/nonexistent/w.safetensors"};
    o.dir = dir;
    cr_expect_neq(sd_weight_cache_open(&c, &o, "unet", missing, NULL, 1, &err), 0);
    cr_expect(strstr(err.msg, missing[0]) != NULL, "message names the weight file: %s", err.msg);
    free(wf), free(dir);
}

/* ------------------------------------------------------------ the pipeline */

static sd_pipeline *load(const char *rel, const char *cache_dir, const char *variant) {
    tst_require_fixture(rel);
    char *path = tst_fixture_path(rel);
    sd_pipeline_options o = {.variant = variant, .weight_cache_dir = cache_dir};
    sd_pipeline *p;
    sd_error err = {0};
    int rc = sd_pipeline_load(&p, path, &o, &err);
    free(path);
    cr_assert_eq(rc, 0, "load: %s", err.msg);
    return p;
}

static float *render(sd_pipeline *p, size_t *n) {
    uint64_t seed = 7;
    sd_txt2img_params q = {.prompt = "a lighthouse", .negative_prompt = "fog", .width = 64, .height = 64,
                           .steps = 3, .cfg_scale = 7.5, .sampler = SD_SAMPLER_EULER,
                           .karras = SD_KARRAS_FROM_CONFIG, .n_images = 1, .seeds = &seed};
    sd_txt2img_result r;
    sd_error err = {0};
    cr_assert_eq(sd_pipeline_txt2img(p, &q, NULL, &r, &err), 0, "%s", err.msg);
    *n = (size_t)3 * 64 * 64;
    float *out = malloc(*n * sizeof(float));
    memcpy(out, r.vae_out, *n * sizeof(float));
    sd_txt2img_result_free(&r);
    return out;
}

/* Off, then filling the cache, then from it: the same bytes each time, and
 * the filled load finds every prepared conv it added before. */
static void check_model(const char *rel, const char *variant) {
    char *dir = tst_tmpdir();
    size_t n;
    sd_pipeline *p = load(rel, "off", variant);
    float *ref = render(p, &n);
    sd_pipeline_free(p);

    p = load(rel, dir, variant);
    sd_weight_cache_stats first[2], second[2];
    sd_pipeline_weight_cache_stats(p, "unet", &first[0]);
    sd_pipeline_weight_cache_stats(p, "vae", &first[1]);
    float *img = render(p, &n);
    cr_expect_eq(memcmp(img, ref, n * sizeof(float)), 0, "%s: filling the cache changes nothing", rel);
    free(img);
    sd_pipeline_free(p);

    p = load(rel, dir, variant);
    sd_pipeline_weight_cache_stats(p, "unet", &second[0]);
    sd_pipeline_weight_cache_stats(p, "vae", &second[1]);
    img = render(p, &n);
    cr_expect_eq(memcmp(img, ref, n * sizeof(float)), 0, "%s: the cached load gives the same bytes", rel);
    free(img);
    sd_pipeline_free(p);
    for (int i = 0; i < 2; i++) {
        const char *comp = i ? "vae" : "unet";
        cr_expect_gt(first[i].misses, 2, "%s %s: the first load prepares the convs", rel, comp);
        cr_expect_eq(first[i].hits, 0);
        cr_expect_eq(first[i].saved, 1, "%s %s: and writes them", rel, comp);
        cr_expect_eq(second[i].hits, first[i].misses, "%s %s: the second load finds every one", rel, comp);
        cr_expect_eq(second[i].hit_bytes, first[i].added_bytes);
        cr_expect_eq(second[i].misses, 0, "%s %s: and prepares none", rel, comp);
    }
    cr_expect_eq(count_cache_files(dir), 2, "one cache file per component");
    free(ref), free(dir);
}

Test(weight_cache, pipeline_diffusers_folder, .timeout = 300) { check_model("tiny-sd15", NULL); }

/* f16 files: the conv weights are converted only on a miss */
Test(weight_cache, pipeline_fp16_variant, .timeout = 300) { check_model("tiny-sd15", "fp16"); }

/* one checkpoint holds both components: two caches of the same file */
Test(weight_cache, pipeline_single_file, .timeout = 300) { check_model("tiny-sd15.safetensors", NULL); }

/* ------------------------------------------------------------ file hashes */

static char *only_file_with_suffix(const char *dir, const char *suffix) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    char *found = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name), k = strlen(suffix);
        if (len > k && !strcmp(de->d_name + len - k, suffix)) {
            cr_assert_null(found, "more than one *%s in %s", suffix, dir);
            found = sd_path_join(dir, de->d_name);
        }
    }
    closedir(d);
    cr_assert_not_null(found, "no *%s in %s", suffix, dir);
    return found;
}

/* The model hash's SHA-256 is computed once per file version, then read back. */
Test(weight_cache, file_hash_is_kept_per_file_version) {
    char *dir = tst_tmpdir();
    char *wf = weight_file(dir, "model.safetensors");
    char *cdir = sd_path_join(dir, "cache");
    sd_weight_cache_options o = {.dir = cdir};
    char want[65], got[65];
    sd_error err = {0};
    cr_assert_eq(sd_sha256_file(wf, want, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_weight_cache_file_sha256(&o, wf, got, &err), 0, "%s", err.msg);
    cr_expect_str_eq(got, want, "first call: computed");
    char *kept = only_file_with_suffix(cdir, ".sha256");
    /* a stored value is what later calls return (proves it is read, not recomputed) */
    const char *planted = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    write_bytes(kept, planted, strlen(planted));
    cr_assert_eq(sd_weight_cache_file_sha256(&o, wf, got, &err), 0, "%s", err.msg);
    cr_expect_eq(strncmp(got, planted, 64), 0, "second call: read back, got %s", got);
    /* damaged: recomputed and rewritten */
    write_bytes(kept, "not a hash", 10);
    cr_assert_eq(sd_weight_cache_file_sha256(&o, wf, got, &err), 0, "%s", err.msg);
    cr_expect_str_eq(got, want);
    /* another version of the file: its own entry */
    write_bytes(wf, "other bytes", 11);
    set_mtime(wf, 1000000000);
    cr_assert_eq(sd_sha256_file(wf, want, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_weight_cache_file_sha256(&o, wf, got, &err), 0, "%s", err.msg);
    cr_expect_str_eq(got, want, "a changed file is hashed again");
    /* off: computed; a missing file is an error naming it */
    o.dir = "off";
    cr_assert_eq(sd_weight_cache_file_sha256(&o, wf, got, &err), 0, "%s", err.msg);
    cr_expect_str_eq(got, want);
    char *missing = sd_path_join(dir, "missing.safetensors");
    o.dir = cdir;
    cr_expect_neq(sd_weight_cache_file_sha256(&o, missing, got, &err), 0);
    cr_expect(strstr(err.msg, "missing.safetensors") != NULL, "%s", err.msg);
    free(missing), free(kept), free(cdir), free(wf), free(dir);
}

/* A save keeps what this load used and what it added; entries nobody asked
 * for (another oneDNN version's, a renamed tensor's) are dropped. */
Test(weight_cache, a_save_drops_unused_entries) {
    char *dir = tst_tmpdir();
    char *wf = weight_file(dir, "w.safetensors");
    float a[1000], b[10], c3[300];
    for (int i = 0; i < 300; i++) c3[i] = (float)i;
    sd_weight_cache *c = open_cache(dir, wf, 0);
    fill(c, a, 1000, b, 10);
    sd_weight_cache_free(c);
    c = open_cache(dir, wf, 0);
    cr_assert_not_null(sd_weight_cache_find(c, "conv_a", sizeof a));
    sd_error err = {0};
    cr_assert_eq(sd_weight_cache_add(c, "conv_c", c3, sizeof c3, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_weight_cache_save(c, &err), 0, "%s", err.msg);
    sd_weight_cache_free(c);
    c = open_cache(dir, wf, 0);
    const float *fa = sd_weight_cache_find(c, "conv_a", sizeof a), *fc = sd_weight_cache_find(c, "conv_c", sizeof c3);
    cr_expect(fa && !memcmp(fa, a, sizeof a), "the used entry is kept");
    cr_expect(fc && !memcmp(fc, c3, sizeof c3), "the added entry is written");
    cr_expect_null(sd_weight_cache_find(c, "conv_b", sizeof b), "the unused entry is dropped");
    sd_weight_cache_free(c);
    free(wf), free(dir);
}

/* read-only (merge's gate runs): an empty cache stays empty; a filled one is used */
Test(weight_cache, pipeline_read_only_writes_nothing, .timeout = 300) {
    tst_require_fixture("tiny-sd15/model_index.json");
    char *dir = tst_tmpdir(), *path = tst_fixture_path("tiny-sd15");
    sd_pipeline_options o = {.weight_cache_dir = dir, .weight_cache_read_only = 1};
    sd_pipeline *p;
    sd_error err = {0};
    cr_assert_eq(sd_pipeline_load(&p, path, &o, &err), 0, "%s", err.msg);
    sd_weight_cache_stats s;
    sd_pipeline_weight_cache_stats(p, "unet", &s);
    cr_expect_gt(s.misses, 0);
    cr_expect_eq(s.saved, 0);
    sd_pipeline_free(p);
    cr_expect_eq(count_cache_files(dir), 0, "read-only wrote a cache file");
    o.weight_cache_read_only = 0;
    cr_assert_eq(sd_pipeline_load(&p, path, &o, &err), 0, "%s", err.msg);
    sd_pipeline_free(p);
    o.weight_cache_read_only = 1;
    cr_assert_eq(sd_pipeline_load(&p, path, &o, &err), 0, "%s", err.msg);
    sd_pipeline_weight_cache_stats(p, "unet", &s);
    cr_expect_gt(s.hits, 0, "read-only still maps a filled cache");
    cr_expect_eq(s.misses, 0);
    sd_pipeline_free(p);
    free(path), free(dir);
}
