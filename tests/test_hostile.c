/* tests/test_hostile — the hostile-input corpus (issue 10).
 *
 * scripts/make_hostile_corpus.py writes the corpus into a temporary folder
 * (nothing binary is committed) with a manifest; this test drives it:
 *
 *   library tier   every case with a `lib` reader is given to that reader
 *                  in a forked child (a crash fails one case, not the
 *                  suite): it must refuse with a message naming the file
 *                  (cases marked "any" may be accepted, only not crash).
 *   CLI tier       every case with a `drive` command is given to the real
 *                  executable ($SDMOE_BIN) under `timeout` and a 4 GB memory
 *                  limit (`ulimit -v`, or ASan's own limits for a sanitized
 *                  build): non-zero exit, no crash signal, no timeout,
 *                  exactly one stderr line starting "sdmoe:" that names the
 *                  file at fault, and nothing written in its working folder.
 *                  A command that does not exist yet (`sdmoe CMD --help`
 *                  fails) skips its test; its cases stay in the corpus.
 *   regressions    inputs that crashed a reader under the fuzzers
 *                  (tests/fuzz/), embedded here.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/image.h"
#include "core/json.h"
#include "core/ldm_yaml.h"
#include "core/model_arch.h"
#include "core/safetensors.h"
#include "moe_merge/segmoe_config.h"
#include "tests/support/test_support.h"
#include "text_encoder/clip_text.h"
#include "unet/unet.h"
#include "vae/vae.h"

#if defined(__SANITIZE_ADDRESS__)
#define HOSTILE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HOSTILE_ASAN 1
#endif
#endif
#ifndef HOSTILE_ASAN
#define HOSTILE_ASAN 0
#endif

#define MEM_LIMIT_KB (4L * 1024 * 1024) /* 4 GB for every command and child */

/* ------------------------------------------------------------ the corpus */

typedef struct corpus {
    char *tmp;      /* per-test temporary folder (removed at the end) */
    char *dir;      /* <tmp>/corpus */
    cJSON *manifest;
    const cJSON *cases;
} corpus;

static void rm_rf(const char *path) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    (void)tst_run(cmd, NULL, NULL);
}

/* Generates the formats listed in `only` (comma-separated). */
static void corpus_make(corpus *c, const char *only) {
    memset(c, 0, sizeof *c);
    c->tmp = tst_tmpdir();
    c->dir = sd_path_join(c->tmp, "corpus");
    char *script = tst_source_path("scripts/make_hostile_corpus.py");
    char *log = sd_path_join(c->tmp, "make.log");
    size_t n = strlen(script) + strlen(c->dir) + strlen(tst_fixtures_dir()) + strlen(only) + 64;
    char *cmd = malloc(n);
    snprintf(cmd, n, "python3 '%s' '%s' --fixtures '%s' --only %s", script, c->dir, tst_fixtures_dir(), only);
    int rc = tst_run(cmd, NULL, log);
    cr_assert_eq(rc, 0, "make_hostile_corpus.py failed (exit %d), see %s", rc, log);
    char *mpath = sd_path_join(c->dir, "manifest.json");
    sd_error err = {0};
    cr_assert_eq(sd_json_load(mpath, &c->manifest, &err), 0, "%s", err.msg);
    c->cases = cJSON_GetObjectItemCaseSensitive(c->manifest, "cases");
    cr_assert(cJSON_IsArray(c->cases), "manifest without cases");
    free(mpath);
    free(cmd);
    free(log);
    free(script);
}

static void corpus_free(corpus *c) {
    cJSON_Delete(c->manifest);
    if (c->tmp) rm_rf(c->tmp);
    free(c->tmp);
    free(c->dir);
    memset(c, 0, sizeof *c);
}

static const char *field(const cJSON *cs, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cs, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int field_int(const cJSON *cs, const char *key, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cs, key);
    return cJSON_IsNumber(v) ? v->valueint : def;
}

static int expects_error(const cJSON *cs) {
    const char *e = field(cs, "expect");
    return !e || strcmp(e, "any") != 0;
}

/* ------------------------------------------------------ library tier */

/* Runs one reader on `path`; 0 = accepted, -1 = refused (msg filled). */
static int lib_read(const char *lib, const char *path, sd_error *err) {
    if (!strcmp(lib, "st_open")) {
        st_file f;
        if (st_open(&f, path, err)) return -1;
        st_close(&f);
        return 0;
    }
    if (!strcmp(lib, "ldm_yaml")) {
        cJSON *y;
        if (ldm_yaml_load(path, &y, err)) return -1;
        sd_unet_arch ua;
        sd_vae_arch va;
        sd_ldm_sched sched = {0.00085, 0.012, 1000, 0};
        sd_unet_arch_sd15(&ua);
        sd_vae_arch_sd15(&va);
        int rc = sd_arch_from_ldm_yaml(y, path, &ua, &va, &sched, err);
        cJSON_Delete(y);
        return rc ? -1 : 0;
    }
    if (!strcmp(lib, "segmoe_yaml")) {
        sd_segmoe_config cfg;
        if (sd_segmoe_config_load(&cfg, path, err)) return -1;
        sd_segmoe_config_free(&cfg);
        return 0;
    }
    if (!strcmp(lib, "image")) {
        sd_image img;
        sd_png_info info;
        sd_error e2 = {0};
        int a = sd_image_load(path, &img, err);
        if (!a) sd_image_free(&img);
        int b = sd_png_read(path, &img, &info, &e2);
        if (!b) {
            sd_image_free(&img);
            sd_png_info_free(&info);
        }
        if (a && b) return -1;
        if (a || b) { /* one reader accepted: report it as accepted by that reader */
            snprintf(err->msg, sizeof err->msg, "%s accepted it", a ? "sd_png_read" : "sd_image_load");
            err->code = 0;
        }
        return 0;
    }
    /* JSON configs: json | unet_config | vae_config | clip_config */
    cJSON *j;
    if (sd_json_load(path, &j, err)) return -1;
    int rc = 0;
    if (!strcmp(lib, "unet_config")) {
        sd_unet_config uc;
        rc = sd_unet_config_parse(&uc, j, path, err);
    } else if (!strcmp(lib, "vae_config")) {
        vae_config vc;
        rc = vae_config_from_json(&vc, j, path, err);
    } else if (!strcmp(lib, "clip_config")) { /* both readers of a CLIPTextConfig must refuse it */
        sd_clip_arch ca;
        sd_clip_text_config tc;
        sd_error e2 = {0};
        int a = sd_clip_arch_from_config(j, path, &ca, err), b = sd_clip_text_config_read(j, path, &tc, &e2);
        rc = a && b;
        if (!rc) snprintf(err->msg, sizeof err->msg, "%s accepted it",
                          a ? "sd_clip_text_config_read" : "sd_clip_arch_from_config");
    }
    cJSON_Delete(j);
    return rc ? -1 : 0;
}

static char *read_small(const char *path) {
    char *text = NULL;
    size_t len;
    sd_error err = {0};
    if (sd_read_file(path, 1 << 20, &text, &len, &err)) return strdup("");
    return text;
}

/* In a forked child: drop Criterion's descriptors and signal handlers (a
 * crash or a lingering grandchild must not talk to or hold its IPC). */
static void detach_child(int keep_fd) {
    for (int fd = 3; fd < 1024; fd++)
        if (fd != keep_fd) close(fd);
    const int sigs[] = {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGALRM, SIGTERM, SIGCHLD};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], SIG_DFL);
}

/* How a library-tier child ended (exit codes no sanitizer or libc uses). */
enum { CHILD_REFUSED = 40, CHILD_ACCEPTED = 41 };

typedef struct child_result {
    int status;                      /* CHILD_*, another exit code, or 128+signal */
    char msg[SD_ERROR_MSG_MAX + 1];  /* the reader's error message */
    char report[1024];               /* start of the child's stderr (sanitizer reports) */
} child_result;

/* Runs lib_read in a child with a time and (without ASan) memory limit; the
 * child's stderr is captured, not mixed into the test output. */
static void lib_run_isolated(const char *lib, const char *path, const char *tmp, child_result *res) {
    memset(res, 0, sizeof *res);
    char *errfile = sd_path_join(tmp, "child.stderr");
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        detach_child(fds[1]);
        if (!freopen(errfile, "w", stderr)) _exit(3);
        alarm(10); /* parsing only: milliseconds when right */
        if (!HOSTILE_ASAN) {
            struct rlimit rl = {(rlim_t)MEM_LIMIT_KB * 1024, (rlim_t)MEM_LIMIT_KB * 1024};
            setrlimit(RLIMIT_AS, &rl);
        }
        sd_error err = {0};
        int rc = lib_read(lib, path, &err);
        size_t len = strnlen(err.msg, sizeof err.msg);
        if (write(fds[1], err.msg, len) < 0) _exit(3);
        _exit(rc ? CHILD_REFUSED : CHILD_ACCEPTED);
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t r;
    while (got + 1 < sizeof res->msg && (r = read(fds[0], res->msg + got, sizeof res->msg - 1 - got)) > 0)
        got += (size_t)r;
    res->msg[got] = '\0';
    close(fds[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    res->status = WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
    char *rep = read_small(errfile);
    snprintf(res->report, sizeof res->report, "%s", rep);
    free(rep);
    unlink(errfile);
    free(errfile);
}

/* Fails the case unless the child ended normally; returns 1 if it did. */
static int child_ended_normally(const child_result *r, const char *id, const char *why, const char *lib) {
    if (r->status == 128 + SIGALRM)
        cr_expect_fail("%s (%s): %s did not finish within 10 s", id, why, lib);
    else if (r->status >= 128)
        cr_expect_fail("%s (%s): %s crashed with signal %d: %.600s", id, why, lib, r->status - 128, r->report);
    else if (r->status != CHILD_REFUSED && r->status != CHILD_ACCEPTED)
        cr_expect_fail("%s (%s): %s died with exit code %d (sanitizer report?): %.600s", id, why, lib, r->status,
                       r->report);
    else
        return 1;
    return 0;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Drives every case of `format` in c that has a library reader. */
static void lib_tier_on(corpus *cp, const char *format) {
    corpus c = *cp;
    int n = 0;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, c.cases) {
        const char *lib = field(cs, "lib"), *target = field(cs, "target"), *id = field(cs, "id");
        if (!lib || !target || strcmp(field(cs, "format"), format) != 0) continue;
        char *path = sd_path_join(c.dir, target);
        child_result r;
        lib_run_isolated(lib, path, c.tmp, &r);
        const char *why = field(cs, "why");
        n++;
        if (child_ended_normally(&r, id, why, lib)) {
            if (expects_error(cs) && r.status == CHILD_ACCEPTED)
                cr_expect_fail("%s (%s): %s accepted it%s%s", id, why, lib, r.msg[0] ? ": " : "", r.msg);
            else if (expects_error(cs))
                cr_expect(strstr(r.msg, base_name(target)) != NULL, "%s: %s's message does not name %s: \"%s\"", id,
                          lib, base_name(target), r.msg);
            if (r.status == CHILD_REFUSED)
                cr_expect(r.msg[0] != '\0', "%s: %s refused it with an empty message", id, lib);
        }
        free(path);
    }
    cr_expect_gt(n, 0, "no %s cases with a library reader", format);
}

static void lib_tier(const char *format) {
    corpus c;
    corpus_make(&c, format);
    lib_tier_on(&c, format);
    corpus_free(&c);
}

Test(hostile_lib, safetensors, .timeout = 120) { lib_tier("safetensors"); }
Test(hostile_lib, model_folders, .timeout = 120) {
    if (tst_require_fixture("tiny-sd15/model_index.json")) lib_tier("model");
}
Test(hostile_lib, ldm_yaml, .timeout = 120) {
    if (tst_require_fixture("tiny-sd15.yaml")) lib_tier("ldm_yaml");
}
Test(hostile_lib, segmoe_yaml, .timeout = 120) {
    if (tst_require_fixture("moe/tiny-sd15-expert/model_index.json")) lib_tier("segmoe_yaml");
}
Test(hostile_lib, images, .timeout = 120) {
    corpus c;
    corpus_make(&c, "image");
    lib_tier_on(&c, "image");
    /* the generator's intact images must load, or its damaged ones prove little */
    const char *good[] = {"images/good.png", "images/good.jpg", "images/good_gray.jpg"};
    const int dims[][2] = {{8, 8}, {16, 16}, {8, 8}};
    for (int i = 0; i < 3; i++) {
        char *p = sd_path_join(c.dir, good[i]);
        sd_image img;
        sd_error err = {0};
        cr_expect_eq(sd_image_load(p, &img, &err), 0, "%s: %s", good[i], err.msg);
        cr_expect(img.width == dims[i][0] && img.height == dims[i][1], "%s: %dx%d", good[i], img.width, img.height);
        sd_image_free(&img);
        free(p);
    }
    corpus_free(&c);
}

/* The generator is deterministic and makes at least 50 cases. */
Test(hostile_corpus, deterministic_and_large_enough, .timeout = 120) {
    corpus a, b;
    corpus_make(&a, "safetensors,segmoe_yaml,jobs,image");
    corpus_make(&b, "safetensors,segmoe_yaml,jobs,image");
    cr_expect_geq(cJSON_GetArraySize(a.cases), 50, "only %d cases", cJSON_GetArraySize(a.cases));
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "diff -r '%s' '%s'", a.dir, b.dir);
    /* manifests hold absolute fixture paths only, so the trees compare equal */
    cr_expect_eq(tst_run(cmd, NULL, NULL), 0, "two runs of make_hostile_corpus.py differ");
    corpus_free(&a);
    corpus_free(&b);
}

/* ----------------------------------------------------------- CLI tier */

/* Absolute path of the executable (the commands run in their own folder). */
static const char *sdmoe_bin(void) {
    static char abs[4096];
    if (!abs[0] && !realpath(tst_sdmoe_bin(), abs)) snprintf(abs, sizeof abs, "%s", tst_sdmoe_bin());
    return abs;
}

static int command_exists(const char *cmd) {
    char line[4200];
    snprintf(line, sizeof line, "'%s' %s --help", sdmoe_bin(), cmd);
    return tst_run(line, NULL, NULL) == 0;
}

/* The shell prefix bounding memory: `ulimit -v` unless the binary is
 * sanitized (ASan reserves terabytes of address space and cannot run under
 * it); then ASan's own allocator limits. */
static const char *memory_prefix(void) {
    static char prefix[256];
    char line[4400];
    snprintf(line, sizeof line, "ulimit -v %ld && '%s' --version", MEM_LIMIT_KB, sdmoe_bin());
    if (tst_run(line, NULL, NULL) == 0)
        snprintf(prefix, sizeof prefix, "ulimit -v %ld &&", MEM_LIMIT_KB);
    else
        snprintf(prefix, sizeof prefix,
                 "ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=%ld:"
                 "hard_rss_limit_mb=%ld",
                 MEM_LIMIT_KB / 1024, MEM_LIMIT_KB / 1024);
    return prefix;
}


/* Names of regular files under dir, recursively, joined by spaces ("" if none). */
static void list_files(const char *dir, char *out, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = sd_path_join(dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            list_files(p, out, cap);
        } else {
            size_t k = strlen(out);
            snprintf(out + k, cap - k, "%s%s", k ? " " : "", p);
        }
        free(p);
    }
    closedir(d);
}

static int count_lines(const char *s) {
    int n = 0;
    for (const char *p = s; *p; p++)
        if (*p == '\n') n++;
    if (*s && s[strlen(s) - 1] != '\n') n++;
    return n;
}

/* Case-insensitive strstr. */
static int contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0) return 1;
    return n == 0;
}

/* Every stderr line starts with "sdmoe:". */
static int all_lines_prefixed(const char *s) {
    for (const char *p = s; *p;) {
        if (strncmp(p, "sdmoe:", 6) != 0) return 0;
        const char *nl = strchr(p, '\n');
        if (!nl) break;
        p = nl + 1;
    }
    return 1;
}

/* For a case that may be accepted: removes from the file list what the
 * command was asked to write (-o / OUT), leaving only strays. */
static void drop_declared_output(const char *drive, const char *work, char *files) {
    const char *leaf = !strcmp(drive, "batch") ? "/batch/" : !strcmp(drive, "merge") ? "/merged/"
                       : !strcmp(drive, "generate") ? "/out.png" : NULL;
    if (!leaf) return;
    char prefix[4200];
    snprintf(prefix, sizeof prefix, "%s%s", work, leaf);
    char kept[8192] = "";
    for (char *tok = strtok(files, " "); tok; tok = strtok(NULL, " ")) {
        if (!strncmp(tok, prefix, strlen(prefix)) || (!strcmp(drive, "generate") && !strcmp(tok, prefix))) continue;
        size_t k = strlen(kept);
        snprintf(kept + k, sizeof kept - k, "%s%s", k ? " " : "", tok);
    }
    strcpy(files, kept);
}

/* The command line for one case (cwd = its empty work folder). */
static void case_command(const char *drive, const char *input, const char *work, char *out, size_t cap) {
    const char *bin = sdmoe_bin();
    if (!strcmp(drive, "info"))
        snprintf(out, cap, "'%s' info -m '%s'", bin, input);
    else if (!strcmp(drive, "generate"))
        snprintf(out, cap, "'%s' generate -m '%s' -p 'a cat' -s 1 --steps 2 -W 64 -H 64 -t 1 -q -o '%s/out.png'", bin,
                 input, work);
    else if (!strcmp(drive, "merge"))
        snprintf(out, cap, "'%s' merge '%s' '%s/merged'", bin, input, work);
    else if (!strcmp(drive, "batch")) {
        char *model = tst_fixture_path("tiny-sd15");
        snprintf(out, cap, "'%s' batch -m '%s' --jobs '%s' -o '%s/batch' --steps 1 -W 64 -H 64 -t 1 -q", bin, model,
                 input, work);
        free(model);
    }
}

/* Peak memory allowed to a command refusing a hostile file (the tiny
 * fixture model needs far less; ASan's shadow memory roughly doubles it). */
#define RSS_BUDGET_MB (HOSTILE_ASAN ? 2048 : 1024)

/* tst_run in an intermediate child, so that its RUSAGE_CHILDREN peak RSS
 * covers exactly this command's processes. */
static int run_measured(const char *cmd, const char *out, const char *err, long *maxrss_kb) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        detach_child(fds[1]);
        long v[2] = {tst_run(cmd, out, err), 0};
        struct rusage ru;
        if (getrusage(RUSAGE_CHILDREN, &ru) == 0) v[1] = ru.ru_maxrss;
        if (write(fds[1], v, sizeof v) != (ssize_t)sizeof v) _exit(1);
        _exit(0);
    }
    close(fds[1]);
    long v[2] = {-1, 0};
    ssize_t got = read(fds[0], v, sizeof v);
    close(fds[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    cr_assert_eq(got, (ssize_t)sizeof v, "measuring child failed");
    *maxrss_kb = v[1];
    return (int)v[0];
}

static void cli_tier(const char *drive, const char *formats) {
    if (!command_exists(drive)) cr_skip_test("`sdmoe %s` does not exist yet: its hostile cases are not driven", drive);
    const char *mem = memory_prefix();
    corpus c;
    corpus_make(&c, formats);
    char *runs = sd_path_join(c.tmp, "runs");
    mkdir(runs, 0755);
    int n = 0;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, c.cases) {
        const char *d = field(cs, "drive");
        if (!d || strcmp(d, drive) != 0) continue;
        const char *id = field(cs, "id"), *why = field(cs, "why"), *names = field(cs, "names");
        char *input = sd_path_join(c.dir, field(cs, "path"));
        char *work = sd_path_join(runs, id);
        mkdir(work, 0755);
        char out_path[4200], err_path[4200], cmd[16384], inner[12288];
        snprintf(out_path, sizeof out_path, "%s.stdout", work);
        snprintf(err_path, sizeof err_path, "%s.stderr", work);
        case_command(drive, input, work, inner, sizeof inner);
        int secs = field_int(cs, "timeout", 20);
        snprintf(cmd, sizeof cmd, "cd '%s' && %s exec timeout -k 2 %d %s", work, mem, secs, inner);
        long rss_kb = 0;
        int rc = run_measured(cmd, out_path, err_path, &rss_kb);
        char *err = read_small(err_path);
        char files[8192] = "";
        list_files(work, files, sizeof files);
        if (!expects_error(cs)) drop_declared_output(drive, work, files);
        long budget_mb = field_int(cs, "mem_mb", RSS_BUDGET_MB);
        n++;
        if (rc == 124 || rc == 128 + SIGKILL) {
            cr_expect_fail("%s (%s): still running after %d s (peak %ld MB)", id, why, secs, rss_kb >> 10);
        } else if (rc >= 128) {
            cr_expect_fail("%s (%s): killed by signal %d; stderr: %.300s", id, why, rc - 128, err);
        } else if (strstr(err, "Sanitizer") || strstr(err, "runtime error:")) {
            cr_expect_fail("%s (%s): sanitizer report (exit %d): %.600s", id, why, rc, err);
        } else if (expects_error(cs)) {
            if (rc == 0) {
                cr_expect_fail("%s (%s): exit status 0 (accepted); stderr: %.300s", id, why, err);
            } else if (!strcmp(drive, "batch")) {
                cr_expect(count_lines(err) >= 1 && all_lines_prefixed(err),
                          "%s (%s): expected lines starting \"sdmoe:\", got: %.300s", id, why, err);
            } else {
                cr_expect(count_lines(err) == 1 && !strncmp(err, "sdmoe:", 6),
                          "%s (%s): expected exactly one line starting \"sdmoe:\", got %d: %.300s", id, why,
                          count_lines(err), err);
            }
            if (rc != 0 && names)
                cr_expect(contains_ci(err, names), "%s (%s): the message does not name \"%s\": %.300s", id, why,
                          names, err);
        }
        /* the ulimit only stops a runaway; a refusal must come long before it */
        cr_expect(rss_kb <= budget_mb * 1024, "%s (%s): peak memory %ld MB, budget %ld MB; stderr: %.200s", id, why,
                  rss_kb >> 10, budget_mb, err);
        cr_expect(files[0] == '\0', "%s (%s): files left behind: %.300s", id, why, files);
        free(err);
        free(work);
        free(input);
    }
    cr_expect_gt(n, 0, "no cases for sdmoe %s", drive);
    free(runs);
    corpus_free(&c);
}

Test(hostile_cli, info, .timeout = 300) { cli_tier("info", "safetensors,model,ldm_yaml"); }
Test(hostile_cli, generate, .timeout = 300) { cli_tier("generate", "model"); }
Test(hostile_cli, merge, .timeout = 300) { cli_tier("merge", "model,segmoe_yaml"); }
Test(hostile_cli, batch, .timeout = 300) { cli_tier("batch", "jobs"); }

/* --------------------------------------------------- fuzzer regressions */

/* Writes bytes to a temporary file and returns its path (malloc'd). */
static char *write_temp(const char *dir, const char *name, const void *data, size_t n) {
    char *p = sd_path_join(dir, name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f, "%s: %s", p, strerror(errno));
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
    return p;
}

static void expect_refused_isolated(const char *lib, const void *data, size_t n, const char *what) {
    char *dir = tst_tmpdir();
    char *p = write_temp(dir, "input", data, n);
    child_result r;
    lib_run_isolated(lib, p, dir, &r);
    if (child_ended_normally(&r, what, "fuzzer regression", lib)) {
        cr_expect(r.status != CHILD_ACCEPTED, "%s: %s accepted it", what, lib);
        if (r.status == CHILD_REFUSED)
            cr_expect(strstr(r.msg, p) != NULL, "%s: message does not name the file: %s", what, r.msg);
    }
    free(p);
    rm_rf(dir);
    free(dir);
}

/* fuzz_safetensors, crash-642b6065 / -8b277bc4 / leak-4da83c62: a header
 * with "__metadata__" more than once. core/safetensors.c parse_metadata
 * allocates for the current object's entries but keeps counting n_meta
 * across objects: heap-buffer-overflow write (and a leak of the first
 * arrays; st_close then reads past the second). */
Test(hostile_regress, safetensors_duplicate_metadata) {
    static const char hdr[] = "{\"__metadata__\":{\"a\":\"1\"},\"__metadata__\":{\"b\":\"2\"},"
                              "\"__metadata__\":{\"c\":\"3\"},\"__metadata__\":{\"d\":\"4\"}}";
    unsigned char buf[8 + sizeof hdr];
    uint64_t n = sizeof hdr - 1;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, hdr, n);
    expect_refused_isolated("st_open", buf, 8 + n, "duplicate __metadata__ (grow)");

    static const char hdr2[] = "{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\"},\"__metadata__\":{},"
                               "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    unsigned char buf2[8 + sizeof hdr2 + 4];
    n = sizeof hdr2 - 1;
    for (int i = 0; i < 8; i++) buf2[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf2 + 8, hdr2, n);
    memset(buf2 + 8 + n, 0, 4);
    expect_refused_isolated("st_open", buf2, 8 + n + 4, "duplicate __metadata__ (shrink)");
}

/* fuzz_json_config / fuzz_tokenizer_files, crash-024c6583 (and ~90 more):
 * Python's NaN outside a string.  core/json.c blank_python_nonfinite
 * overwrites the 3-byte "NaN" with the 4-byte "null" (one byte past the
 * token, past the buffer at the end of the file) and then memsets n - 4 =
 * SIZE_MAX bytes: every config.json / vocab.json with NaN crashes sdmoe. */
Test(hostile_regress, json_python_nan) {
    static const char a[] = "{\"norm_eps\": NaN}";
    expect_refused_isolated("unet_config", a, sizeof a - 1, "NaN value");
    static const char b[] = "{\"x\":NaN";
    expect_refused_isolated("json", b, sizeof b - 1, "NaN at the end of the file");
}

/* fuzz_json_config, crash-0b4d28fa: unet/unet_config.c:166 computes the
 * time_embedding_dim default as 4 * block_out_channels[0] in int: signed
 * overflow (UB; UBSan aborts) for channels > 2^29. */
Test(hostile_regress, unet_config_time_embed_overflow) {
    static const char a[] = "{\"block_out_channels\": [2147483632, 2147483632, 2147483632, 2147483632]}";
    expect_refused_isolated("unet_config", a, sizeof a - 1, "block_out_channels 2^31-16");
}

/* fuzz_ldm_yaml, crash-29d7eb97: core/model_arch.c:350 model_channels x
 * channel_mult in int (also :353 for the default multipliers and the VAE's
 * ch x ch_mult in yaml_vae): signed overflow, the yaml is then accepted with
 * negative or wrapped channel counts. */
Test(hostile_regress, ldm_yaml_channel_overflow) {
    static const char a[] = "model:\n  params:\n    unet_config:\n      params:\n        model_channels: 1073741824\n"
                            "        channel_mult: [1, 2, 4, 4]\n";
    expect_refused_isolated("ldm_yaml", a, sizeof a - 1, "model_channels 2^30 x 4");
    static const char b[] = "model:\n  params:\n    unet_config:\n      params:\n        model_channels: 1073741824\n";
    expect_refused_isolated("ldm_yaml", b, sizeof b - 1, "model_channels 2^30 x SD 1.5's default multipliers");
}
