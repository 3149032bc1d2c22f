/* sdmoe-fuzz-libs: cli
 *
 * Fuzzes `sdmoe batch`'s inputs: cli/batch_jobs batch_jobs_read (JSON Lines
 * or plain text jobs files: per-line JSON, types, ranges, sampler names,
 * duplicate names, size limits) and batch_jobs_sanitize_name on every name;
 * and cli/batch_manifest batch_manifest_load on the same bytes as a
 * DIR/manifest.jsonl (a resumed run reads what is in its output folder). */
#include <sys/stat.h>

#include "cli/batch_jobs.h"
#include "cli/batch_manifest.h"
#include "tests/fuzz/fuzz_common.h"

static char dir[256], manifest[320];

static void cleanup(void) {
    unlink(manifest);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/sdmoe-fuzz-jobs-%ld", base, (long)getpid());
    if (mkdir(dir, 0700) != 0) {
        perror(dir);
        exit(1);
    }
    snprintf(manifest, sizeof manifest, "%s/manifest.jsonl", dir);
    atexit(cleanup);
    return 0;
}

static void check_stem(const char *stem) {
    FUZZ_ASSERT(stem[0] != '\0' && stem[0] != '.');
    FUZZ_ASSERT(strlen(stem) <= BATCH_JOBS_MAX_NAME);
    FUZZ_ASSERT(strchr(stem, '/') == NULL && strstr(stem, "..") == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *in = fmemopen((void *)data, size, "rb");
    if (!in) in = fopen("/dev/null", "rb"); /* fmemopen refuses size 0 on old glibc */
    FUZZ_ASSERT(in != NULL);
    batch_jobs jobs;
    memset(&jobs, 0, sizeof jobs);
    sd_error err = {0};
    if (batch_jobs_read(in, &jobs, &err) == 0) {
        int prev = 0;
        for (int i = 0; i < jobs.n_jobs; i++) {
            const batch_job *j = &jobs.jobs[i];
            FUZZ_ASSERT(j->prompt != NULL && j->line > prev);
            prev = j->line;
            check_stem(j->stem);
            FUZZ_ASSERT(j->count >= 0 && j->count <= BATCH_JOBS_MAX_COUNT);
            FUZZ_ASSERT(j->width >= 0 && j->height >= 0 && j->steps >= 0);
        }
        for (int i = 0; i < jobs.n_issues; i++) FUZZ_ASSERT(memchr(jobs.issues[i].msg, 0, sizeof jobs.issues[i].msg));
        batch_jobs_free(&jobs);
    } else {
        FUZZ_CHECK_ERROR(err);
    }
    fclose(in);

    char *name = fuzz_strndup(data, size < 4096 ? size : 4096);
    char stem[BATCH_JOBS_MAX_NAME + 1];
    if (batch_jobs_sanitize_name(name, stem, sizeof stem) == 0) check_stem(stem);
    free(name);

    FILE *m = fopen(manifest, "wb");
    FUZZ_ASSERT(m != NULL);
    FUZZ_ASSERT(size == 0 || fwrite(data, 1, size, m) == size);
    fclose(m);
    batch_manifest bm;
    memset(&bm, 0, sizeof bm);
    sd_error_clear(&err);
    if (batch_manifest_load(dir, &bm, &err) == 0) {
        for (int i = 0; i < bm.n; i++) FUZZ_ASSERT(bm.entries[i].file != NULL);
        if (bm.n > 0) (void)batch_manifest_is_done(&bm, dir, bm.entries[0].file, bm.entries[0].params);
        batch_manifest_free(&bm);
    } else {
        FUZZ_CHECK_ERROR(err);
    }
    return 0;
}
