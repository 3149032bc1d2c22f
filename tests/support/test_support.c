#define _POSIX_C_SOURCE 200809L
#include "tests/support/test_support.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/error.h"
#include "core/json.h"

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

static const char *source_dir(void) {
    const char *s = getenv("SDMOE_SOURCE_DIR");
    return s && *s ? s : ".";
}

const char *tst_fixtures_dir(void) {
    static char buf[PATH_MAX];
    if (!buf[0]) {
        const char *env = getenv("SDMOE_FIXTURES");
        char tmp[PATH_MAX];
        if (env && *env) snprintf(tmp, sizeof tmp, "%s", env);
        else snprintf(tmp, sizeof tmp, "%s/../shared/fixtures", source_dir());
        if (!realpath(tmp, buf)) snprintf(buf, sizeof buf, "%s", tmp);
    }
    return buf;
}

char *tst_fixture_path(const char *rel) { return join(tst_fixtures_dir(), rel); }
char *tst_source_path(const char *rel) { return join(source_dir(), rel); }

const char *tst_sdmoe_bin(void) {
    const char *b = getenv("SDMOE_BIN");
    return b && *b ? b : "build/sdmoe";
}

int tst_require_fixture(const char *rel) {
    char *p = tst_fixture_path(rel);
    struct stat st;
    int ok = stat(p, &st) == 0;
    if (!ok) {
        const char *ci = getenv("CI");
        if (ci && *ci) cr_assert_fail("fixture missing under CI: %s (set SDMOE_FIXTURES)", p);
        free(p);
        cr_skip_test("fixture missing: %s (set SDMOE_FIXTURES)", rel);
    }
    free(p);
    return ok;
}

void tst_open_ref(st_file *f, const char *rel) {
    tst_require_fixture(rel);
    char *p = tst_fixture_path(rel);
    sd_error err = {0};
    int rc = st_open(f, p, &err);
    free(p);
    cr_assert_eq(rc, 0, "cannot open %s: %s", rel, err.msg);
}

const st_tensor *tst_ref_tensor(const st_file *f, const char *name) {
    const st_tensor *t = st_find(f, name);
    cr_assert_not_null(t, "reference tensor '%s' missing in %s", name, f->path);
    return t;
}

float *tst_ref_f32(const st_file *f, const char *name, size_t *numel) {
    const st_tensor *t = tst_ref_tensor(f, name);
    float *out = malloc((size_t)t->numel * sizeof(float) + 4);
    sd_error err = {0};
    if (t->dtype == ST_I64 || t->dtype == ST_I32) {
        int64_t *tmp = malloc((size_t)t->numel * 8 + 8);
        cr_assert_eq(st_tensor_to_i64(f, t, tmp, &err), 0, "%s", err.msg);
        for (size_t i = 0; i < t->numel; i++) out[i] = (float)tmp[i];
        free(tmp);
    } else {
        cr_assert_eq(st_tensor_to_f32(f, t, out, &err), 0, "%s", err.msg);
    }
    if (numel) *numel = (size_t)t->numel;
    return out;
}

int64_t *tst_ref_i64(const st_file *f, const char *name, size_t *numel) {
    const st_tensor *t = tst_ref_tensor(f, name);
    int64_t *out = malloc((size_t)t->numel * 8 + 8);
    sd_error err = {0};
    cr_assert_eq(st_tensor_to_i64(f, t, out, &err), 0, "%s", err.msg);
    if (numel) *numel = (size_t)t->numel;
    return out;
}

double tst_check_close(const char *what, const float *got, const float *ref, size_t n,
                       double max_abs, double rel_to_max) {
    double maxref = 0, maxerr = 0;
    size_t at = 0;
    int bad_nan = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)ref[i]);
        if (r > maxref) maxref = r;
        if (isnan(got[i]) && !isnan(ref[i])) bad_nan = 1;
        double e = fabs((double)got[i] - (double)ref[i]);
        if (e > maxerr) {
            maxerr = e;
            at = i;
        }
    }
    double bound = fmax(max_abs, rel_to_max * maxref);
    cr_expect(!bad_nan, "%s: NaN in output", what);
    cr_expect(maxerr <= bound, "%s: max|err| %.3g at index %zu (got %.7g ref %.7g) > bound %.3g", what,
              maxerr, at, (double)got[at], (double)ref[at], bound);
    return maxerr;
}

int tst_run(const char *cmd, const char *stdout_path, const char *stderr_path) {
    size_t n = strlen(cmd) + 2 * PATH_MAX + 32;
    char *full = malloc(n);
    snprintf(full, n, "%s >%s 2>%s </dev/null", cmd, stdout_path ? stdout_path : "/dev/null",
             stderr_path ? stderr_path : "/dev/null");
    int st = system(full);
    free(full);
    if (st == -1) return -1;
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return WEXITSTATUS(st);
}

char *tst_tmpdir(void) {
    const char *base = getenv("TMPDIR");
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof tmpl, "%s/sdmoe-test-XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    cr_assert_not_null(d, "mkdtemp failed");
    return strdup(d);
}

cJSON *tst_load_json(const char *rel) {
    tst_require_fixture(rel);
    char *path = tst_fixture_path(rel);
    cJSON *root = NULL;
    sd_error err = {0};
    int rc = sd_json_load(path, &root, &err);
    free(path);
    cr_assert_eq(rc, 0, "%s", err.msg);
    return root;
}
