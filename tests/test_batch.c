/* `sdmoe batch`: the jobs parser and the manifest directly, then the real
 * executable on the demo model (assets/tiny-sd15, 64x64, 2 Euler steps):
 * plain text, JSON Lines + manifest contents, resume after SIGKILL, shards,
 * bad lines, --batch-size 2 against 1, standard input. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/batch_jobs.h"
#include "cli/batch_manifest.h"
#include "core/fileio.h"
#include "core/image.h"
#include "core/sha256.h"
#include "tests/support/test_support.h"

/* ---- helpers ---- */

/* printf into a malloc'd string. */
static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    int n = vasprintf(&s, f, ap);
    va_end(ap);
    cr_assert_geq(n, 0);
    return s;
}

static char *path2(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    fwrite(text, 1, strlen(text), f);
    fclose(f);
}

static char *read_text(const char *path) {
    char *s = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(path, (size_t)64 << 20, &s, NULL, &err), 0, "%s", err.msg);
    return s;
}

static const char *demo_model(void) {
    static char buf[PATH_MAX];
    if (!buf[0]) {
        char *rel = tst_source_path("assets/tiny-sd15");
        cr_assert_not_null(realpath(rel, buf), "demo model missing: %s", rel);
        free(rel);
    }
    return buf;
}

/* Common flags: tiny and fast. */
/* One thread: the test suite runs beside other jobs, and OpenMP teams
 * spinning on oversubscribed cores cost far more than they gain here. */
#define FAST "-W 64 -H 64 --steps 2 --sampler euler -t 1"

/* Runs `sdmoe batch -m DEMO <args>`; stderr into err_path (may be NULL). */
static int run_batch(const char *args, const char *err_path) {
    char *cmd = fmt("%s batch -m %s %s", tst_sdmoe_bin(), demo_model(), args);
    int rc = tst_run(cmd, NULL, err_path);
    free(cmd);
    return rc;
}

/* Sorted *.png names of dir (NULL-terminated, malloc'd). */
static char **list_pngs(const char *dir, int *n) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot list %s", dir);
    char **names = calloc(1024, sizeof *names);
    *n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && *n < 1023) {
        size_t l = strlen(de->d_name);
        if (l > 4 && !strcmp(de->d_name + l - 4, ".png")) names[(*n)++] = strdup(de->d_name);
    }
    closedir(d);
    for (int i = 0; i < *n; i++)
        for (int j = i + 1; j < *n; j++)
            if (strcmp(names[i], names[j]) > 0) {
                char *t = names[i];
                names[i] = names[j];
                names[j] = t;
            }
    return names;
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

static int same_bytes(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    sd_error err = {0};
    int ok = !sd_read_file(a, (size_t)64 << 20, &x, &nx, &err) && !sd_read_file(b, (size_t)64 << 20, &y, &ny, &err) &&
             nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return ok;
}

/* The PNGs of a and b: same names, same bytes; returns how many. */
static int assert_same_pngs(const char *a, const char *b) {
    int na, nb;
    char **la = list_pngs(a, &na), **lb = list_pngs(b, &nb);
    cr_assert_eq(na, nb, "%s has %d PNGs, %s has %d", a, na, b, nb);
    for (int i = 0; i < na; i++) {
        cr_assert_str_eq(la[i], lb[i]);
        char *pa = path2(a, la[i]), *pb = path2(b, lb[i]);
        cr_expect(same_bytes(pa, pb), "%s and %s differ", pa, pb);
        free(pa);
        free(pb);
    }
    free_names(la, na);
    free_names(lb, nb);
    return na;
}

static int file_exists(const char *dir, const char *name) {
    char *p = path2(dir, name);
    int ok = sd_is_file(p);
    free(p);
    return ok;
}

/* Manifest records (cJSON array) of dir/name, complete lines only. */
static cJSON *read_manifest(const char *dir, const char *name) {
    char *p = path2(dir, name), *text = read_text(p);
    cJSON *all = cJSON_CreateArray();
    for (char *s = text, *nl; (nl = strchr(s, '\n')); s = nl + 1) {
        *nl = 0;
        cJSON *rec = cJSON_Parse(s);
        cr_assert_not_null(rec, "%s: invalid line '%s'", p, s);
        cJSON_AddItemToArray(all, rec);
    }
    free(text);
    free(p);
    return all;
}

static const cJSON *find_record(const cJSON *all, const char *file) {
    const cJSON *rec;
    cJSON_ArrayForEach(rec, all) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(rec, "file");
        if (cJSON_IsString(f) && !strcmp(f->valuestring, file)) return rec;
    }
    return NULL;
}

static int count_lines(const char *text) {
    int n = 0;
    for (; *text; text++) n += *text == '\n';
    return n;
}

/* ---- the jobs parser ---- */

static void read_jobs(const char *text, size_t len, batch_jobs *j) {
    FILE *f = fmemopen((void *)text, len, "rb");
    cr_assert_not_null(f);
    sd_error err = {0};
    cr_assert_eq(batch_jobs_read(f, j, &err), 0, "%s", err.msg);
    fclose(f);
}

Test(batch_jobs, plain_text_lines_blank_crlf_bom) {
    const char text[] = "\xEF\xBB\xBF" "a red apple\r\n\n   \n  a blue car  \nlast line without newline";
    batch_jobs j;
    read_jobs(text, sizeof text - 1, &j);
    cr_assert_eq(j.jsonl, 0);
    cr_assert_eq(j.n_jobs, 3);
    cr_assert_eq(j.n_issues, 0);
    cr_expect_str_eq(j.jobs[0].prompt, "a red apple");
    cr_expect_str_eq(j.jobs[1].prompt, "a blue car");
    cr_expect_str_eq(j.jobs[2].prompt, "last line without newline");
    cr_expect_eq(j.jobs[1].line, 4);
    cr_expect_eq(j.jobs[1].index, 1);
    cr_expect_str_eq(j.jobs[1].stem, "0004");
    cr_expect_eq(j.jobs[0].seed, -1);
    cr_expect_eq(j.jobs[0].has_negative, 0);
    batch_jobs_free(&j);
}

Test(batch_jobs, jsonl_fields_and_bad_lines_with_numbers) {
    const char text[] =
        "\n"
        "{\"prompt\": \"cat\", \"negative_prompt\": \"dog\", \"seed\": 7, \"steps\": 3, \"cfg_scale\": 5.5, "
        "\"width\": 64, \"height\": 96, \"sampler\": \"DPM++ 2M\", \"scheduler\": \"karras\", \"clip_skip\": 2, "
        "\"count\": 3, \"name\": \"../etc/passwd\", \"_note\": {\"any\": [1]}}\n"
        "{\"prompt\": \"x\" \n"                                      /* 3: invalid JSON */
        "{\"prompt\": \"x\", \"sampler\": \"nope\"}\n"               /* 4: unknown sampler */
        "{\"prompt\": \"x\", \"width\": 65}\n"                       /* 5: bad size */
        "{\"prompt\": \"x\", \"seeed\": 1}\n"                        /* 6: unknown key */
        "{\"prompt\": 5}\n"                                          /* 7: wrong type */
        "{\"negative_prompt\": null}\n"                              /* 8: no prompt */
        "[1, 2]\n"                                                   /* 9: not an object */
        "{\"prompt\": \"x\", \"count\": 0}\n"                        /* 10: count range */
        "{\"prompt\": \"x\", \"steps\": 2.5}\n"                      /* 11: not whole */
        "{\"prompt\": \"x\", \"prompt\": \"y\"}\n"                   /* 12: duplicate key */
        "{\"prompt\": \"x\", \"sampler\": \"ddim\", \"scheduler\": \"karras\"}\n" /* 13: no karras */
        "{\"prompt\": \"y\", \"negative_prompt\": null, \"seed\": -1, \"name\": \"..\"}\n"; /* 14: ok */
    batch_jobs j;
    read_jobs(text, sizeof text - 1, &j);
    cr_assert_eq(j.jsonl, 1);
    cr_assert_eq(j.n_jobs, 2, "%d jobs", j.n_jobs);
    const batch_job *a = &j.jobs[0];
    cr_expect_eq(a->line, 2);
    cr_expect_eq(a->index, 0);
    cr_expect_str_eq(a->prompt, "cat");
    cr_expect_str_eq(a->negative, "dog");
    cr_expect_eq(a->seed, 7);
    cr_expect_eq(a->steps, 3);
    cr_expect_eq(a->cfg_scale, 5.5);
    cr_expect_eq(a->width, 64);
    cr_expect_eq(a->height, 96);
    cr_expect_str_eq(a->sampler, "DPM++ 2M");
    cr_expect_str_eq(a->scheduler, "karras");
    cr_expect_eq(a->clip_skip, 2);
    cr_expect_eq(a->count, 3);
    cr_expect_str_eq(a->stem, "_._etc_passwd");
    cr_expect(!strchr(a->stem, '/') && !strstr(a->stem, ".."));
    const batch_job *b = &j.jobs[1];
    cr_expect_eq(b->line, 14);
    cr_expect_eq(b->index, 12);
    cr_expect_eq(b->has_negative, 1);
    cr_expect_null(b->negative);
    cr_expect_str_eq(b->stem, "_.");
    int want[] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    const char *says[] = {"invalid JSON", "sampler", "multiple of 8", "unknown key \"seeed\"", "must be a string",
                          "missing \"prompt\"", "JSON object", "count", "whole number", "twice", "Karras"};
    cr_assert_eq(j.n_issues, 11);
    for (int i = 0; i < 11; i++) {
        cr_expect_eq(j.issues[i].line, want[i], "issue %d is on line %d", i, j.issues[i].line);
        cr_expect(strstr(j.issues[i].msg, says[i]), "line %d: '%s' lacks '%s'", want[i], j.issues[i].msg, says[i]);
        cr_expect_eq(j.issues[i].index, want[i] - 2);
    }
    batch_jobs_free(&j);
}

Test(batch_jobs, hostile_input_is_bounded) {
    size_t big = (size_t)BATCH_JOBS_MAX_LINE + 100;
    size_t cap = big + 20000 + 256;
    char *text = malloc(cap), *s = text;
    s += sprintf(s, "{\"prompt\": \"ok\"}\n");
    s += sprintf(s, "{\"prompt\": \"");
    memset(s, 'a', big);
    s += big;
    s += sprintf(s, "\"}\n");
    s += sprintf(s, "{\"prompt\": \"bad \xff\xfe utf8\"}\n");
    for (int i = 0; i < 5000; i++) *s++ = '[';
    *s++ = '\n';
    s += sprintf(s, "{\"prompt\": \"nul");
    *s++ = 0;
    s += sprintf(s, "\"}\n");
    s += sprintf(s, "{\"prompt\": \"dup\", \"name\": \"same\"}\n{\"prompt\": \"dup2\", \"name\": \"same\"}\n");
    s += sprintf(s, "{\"prompt\": \"clash\", \"name\": \"0001\"}\n");
    batch_jobs j;
    read_jobs(text, (size_t)(s - text), &j);
    cr_assert_eq(j.n_jobs, 2, "%d jobs", j.n_jobs);
    cr_expect_str_eq(j.jobs[0].prompt, "ok");
    cr_expect_str_eq(j.jobs[1].stem, "same");
    cr_assert_eq(j.n_issues, 6, "%d issues", j.n_issues);
    cr_expect(strstr(j.issues[0].msg, "longer than"), "%s", j.issues[0].msg);
    cr_expect_eq(j.issues[0].line, 2);
    cr_expect(strstr(j.issues[1].msg, "UTF-8"), "%s", j.issues[1].msg);
    cr_expect(strstr(j.issues[2].msg, "invalid JSON"), "%s", j.issues[2].msg);
    cr_expect(strstr(j.issues[3].msg, "NUL"), "%s", j.issues[3].msg);
    cr_expect(strstr(j.issues[4].msg, "already used by line 6"), "%s", j.issues[4].msg);
    cr_expect_eq(j.issues[4].line, 7);
    cr_expect(strstr(j.issues[5].msg, "already used by line 1"), "%s", j.issues[5].msg);
    batch_jobs_free(&j);
    free(text);
}

Test(batch_jobs, sanitize_name) {
    char out[BATCH_JOBS_MAX_NAME + 1];
    cr_assert_eq(batch_jobs_sanitize_name("a b/c..d", out, sizeof out), 0);
    cr_expect_str_eq(out, "a_b_c._d");
    cr_assert_eq(batch_jobs_sanitize_name(".hidden", out, sizeof out), 0);
    cr_expect_str_eq(out, "_hidden");
    cr_expect_eq(batch_jobs_sanitize_name("", out, sizeof out), -1);
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[299] = 0;
    cr_assert_eq(batch_jobs_sanitize_name(longname, out, sizeof out), 0);
    cr_expect_eq(strlen(out), BATCH_JOBS_MAX_NAME);
}

/* ---- the manifest ---- */

Test(batch_manifest, torn_line_is_ignored_and_ended) {
    char *dir = tst_tmpdir(), *png = path2(dir, "a.png");
    write_text(png, "pixels");
    sd_error err = {0};
    char sha[65], key[65];
    cr_assert_eq(sd_sha256_file(png, sha, &err), 0);
    cJSON *params = cJSON_Parse("{\"prompt\": \"p\", \"seed\": 1}");
    cr_assert_eq(batch_manifest_params_key(params, key, &err), 0);
    batch_manifest_writer w;
    cr_assert_eq(batch_manifest_open(&w, dir, "manifest.jsonl", &err), 0, "%s", err.msg);
    cJSON *rec = cJSON_CreateObject();
    cJSON_AddStringToObject(rec, "file", "a.png");
    cJSON_AddStringToObject(rec, "sha256", sha);
    cJSON_AddStringToObject(rec, "params_sha256", key);
    cr_assert_eq(batch_manifest_append(&w, rec, &err), 0, "%s", err.msg);
    batch_manifest_close(&w);
    /* a write cut by SIGKILL: no newline */
    char *mp = path2(dir, "manifest.jsonl");
    FILE *f = fopen(mp, "ab");
    fputs("{\"file\": \"b.png\", \"sha2", f);
    fclose(f);
    batch_manifest m;
    cr_assert_eq(batch_manifest_load(dir, &m, &err), 0, "%s", err.msg);
    cr_expect_eq(m.n, 1);
    cr_expect_eq(m.n_bad_lines, 1);
    cr_expect_eq(batch_manifest_is_done(&m, dir, "a.png", key), 1);
    cr_expect_eq(batch_manifest_is_done(&m, dir, "b.png", key), 0);
    char other[65];
    memset(other, 'f', 64);
    other[64] = 0;
    cr_expect_eq(batch_manifest_is_done(&m, dir, "a.png", other), 0, "other parameters");
    batch_manifest_free(&m);
    /* the file changed: no longer done */
    write_text(png, "other pixels");
    cr_assert_eq(batch_manifest_load(dir, &m, &err), 0);
    cr_expect_eq(batch_manifest_is_done(&m, dir, "a.png", key), 0);
    batch_manifest_free(&m);
    /* the next append ends the torn line first */
    cr_assert_eq(batch_manifest_open(&w, dir, "manifest.jsonl", &err), 0);
    cr_assert_eq(batch_manifest_append(&w, rec, &err), 0);
    batch_manifest_close(&w);
    char *text = read_text(mp);
    cr_expect_eq(count_lines(text), 3);
    cr_assert_eq(batch_manifest_load(dir, &m, &err), 0);
    cr_expect_eq(m.n, 2);
    cr_expect_eq(m.n_bad_lines, 1);
    batch_manifest_free(&m);
    cJSON_Delete(rec);
    cJSON_Delete(params);
    free(text);
    free(mp);
    free(png);
    free(dir);
}

/* ---- through the executable ---- */

static const char *FIVE_PROMPTS = "a red apple\na blue car\n\na green tree\na yellow house\na white cat\n";

Test(batch_cli, plain_text_renders_each_line, .timeout = 300) {
    char *dir = tst_tmpdir(), *jobs = path2(dir, "jobs.txt"), *out = path2(dir, "out"), *errp = path2(dir, "err");
    write_text(jobs, "a red apple\n\n  a blue car  \n");
    char *args = fmt("--jobs %s -o %s " FAST " -n 'blurry' -s 42", jobs, out);
    cr_assert_eq(run_batch(args, errp), 0, "%s", read_text(errp));
    int n;
    char **names = list_pngs(out, &n);
    cr_assert_eq(n, 2);
    cr_expect_str_eq(names[0], "0001-00.png");
    cr_expect_str_eq(names[1], "0003-00.png");
    free_names(names, n);
    /* A1111 parameters: the flags fill in, --seed is every job's seed */
    sd_png_info info;
    sd_error err = {0};
    char *png = path2(out, "0003-00.png");
    cr_assert_eq(sd_png_read(png, NULL, &info, &err), 0, "%s", err.msg);
    const sd_png_text_chunk *t = sd_png_info_find(&info, "parameters");
    cr_assert_not_null(t);
    cr_expect(!strncmp(t->text, "a blue car\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, CFG scale: 7.5, "
                                "Seed: 42, Size: 64x64", 83), "%s", t->text);
    sd_png_info_free(&info);
    /* a rerun finds everything done */
    cr_assert_eq(run_batch(args, errp), 0);
    char *log = read_text(errp);
    cr_expect(strstr(log, "0 rendered, 2 skipped"), "%s", log);
    free(log);
}

Test(batch_cli, jsonl_and_manifest_contents, .timeout = 300) {
    char *dir = tst_tmpdir(), *jobs = path2(dir, "jobs.jsonl"), *out = path2(dir, "out"), *errp = path2(dir, "err");
    write_text(jobs,
               "{\"prompt\": \"a castle\", \"seed\": 100, \"count\": 2, \"name\": \"castle/..\", \"cfg_scale\": 5}\n"
               "{\"prompt\": \"a boat\", \"negative_prompt\": \"fog\", \"seed\": 7, \"steps\": 3, \"width\": 72, "
               "\"sampler\": \"ddim\"}\n");
    char *args = fmt("--jobs %s -o %s " FAST " -q", jobs, out);
    cr_assert_eq(run_batch(args, errp), 0, "%s", read_text(errp));
    cJSON *man = read_manifest(out, "manifest.jsonl");
    cr_assert_eq(cJSON_GetArraySize(man), 3);
    const char *files[] = {"castle_._-00.png", "castle_._-01.png", "0002-00.png"};
    int seeds[] = {100, 101, 7}, steps[] = {2, 2, 3}, widths[] = {64, 64, 72};
    double cfgs[] = {5, 5, 7.5};
    const char *samplers[] = {"euler", "euler", "ddim"};
    for (int i = 0; i < 3; i++) {
        const cJSON *rec = find_record(man, files[i]);
        cr_assert_not_null(rec, "no record for %s", files[i]);
        cr_expect_eq(cJSON_GetObjectItem(rec, "seed")->valuedouble, seeds[i]);
        cr_expect_eq(cJSON_GetObjectItem(rec, "steps")->valuedouble, steps[i]);
        cr_expect_eq(cJSON_GetObjectItem(rec, "width")->valuedouble, widths[i]);
        cr_expect_eq(cJSON_GetObjectItem(rec, "height")->valuedouble, 64);
        cr_expect_eq(cJSON_GetObjectItem(rec, "cfg_scale")->valuedouble, cfgs[i]);
        cr_expect_str_eq(cJSON_GetObjectItem(rec, "sampler")->valuestring, samplers[i]);
        cr_expect_eq(cJSON_GetObjectItem(rec, "image")->valuedouble, i == 1);
        cr_expect_eq(cJSON_GetObjectItem(rec, "job_line")->valuedouble, i < 2 ? 1 : 2);
        cr_expect_eq(cJSON_GetObjectItem(rec, "clip_skip")->valuedouble, 1);
        cr_expect(cJSON_GetObjectItem(rec, "seconds")->valuedouble >= 0);
        cr_expect_str_eq(cJSON_GetObjectItem(rec, "model_hash")->valuestring, "4f3e4eba71");
        const cJSON *neg = cJSON_GetObjectItem(rec, "negative_prompt");
        if (i == 2) cr_expect_str_eq(neg->valuestring, "fog");
        else cr_expect(cJSON_IsNull(neg));
        cr_expect_str_eq(cJSON_GetObjectItem(rec, "prompt")->valuestring, i == 2 ? "a boat" : "a castle");
        char *png = path2(out, files[i]), sha[65];
        sd_error err = {0};
        cr_assert_eq(sd_sha256_file(png, sha, &err), 0, "%s", err.msg);
        cr_expect_str_eq(cJSON_GetObjectItem(rec, "sha256")->valuestring, sha);
        sd_png_info info;
        cr_assert_eq(sd_png_read(png, NULL, &info, &err), 0, "%s", err.msg);
        char want[64];
        snprintf(want, sizeof want, "Seed: %d, Size: %dx64", seeds[i], widths[i]);
        cr_expect(strstr(sd_png_info_find(&info, "parameters")->text, want), "%s lacks %s", png, want);
        sd_png_info_free(&info);
        free(png);
    }
    cJSON_Delete(man);
}

/* Starts `sdmoe batch` in the background; SIGKILLs it once the manifest
 * holds a complete line. Returns 1 if it was killed mid-run. */
static int run_and_kill_after_first_image(const char *args, const char *out) {
    char *cmd = fmt("exec %s batch -m %s %s >/dev/null 2>&1 </dev/null", tst_sdmoe_bin(), demo_model(), args);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    char *mp = path2(out, "manifest.jsonl");
    int killed = 0, status;
    for (int i = 0; i < 120000; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid) break;
        char *text = NULL;
        sd_error err = {0};
        if (sd_is_file(mp) && !sd_read_file(mp, 1 << 20, &text, NULL, &err) && count_lines(text) >= 1) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            killed = WIFSIGNALED(status);
            free(text);
            break;
        }
        free(text);
        nanosleep(&(struct timespec){0, 2000000}, NULL);
    }
    free(mp);
    return killed;
}

/* Uninterrupted run in ref/; a run SIGKILLed after its first image in out/
 * (optionally with a torn manifest line appended, as a kill inside the
 * write would leave), resumed; both folders must hold the same bytes. */
static void check_resume(const char *extra, int tear) {
    char *dir = tst_tmpdir(), *jobs = path2(dir, "jobs.txt"), *ref = path2(dir, "ref"), *out = path2(dir, "out");
    char *errp = path2(dir, "err");
    write_text(jobs, FIVE_PROMPTS);
    char *args = fmt("--jobs %s -o %s " FAST " %s", jobs, ref, extra);
    cr_assert_eq(run_batch(args, errp), 0, "%s", read_text(errp));
    args = fmt("--jobs %s -o %s " FAST " %s", jobs, out, extra);
    int killed = run_and_kill_after_first_image(args, out);
    cr_log_info("killed mid-run: %d", killed);
    int before = 0;
    free_names(list_pngs(out, &before), before);
    cr_expect(before >= 1 && before <= 5, "%d images before resuming", before);
    char *mp = path2(out, "manifest.jsonl");
    if (tear) {
        FILE *f = fopen(mp, "ab");
        fputs("{\"file\": \"0006-00.png\", \"prompt\": \"a whi", f);
        fclose(f);
    }
    cr_assert_eq(run_batch(args, errp), 0, "%s", read_text(errp));
    char *log = read_text(errp);
    if (killed) cr_expect(!strstr(log, " 0 skipped"), "%s", log);
    if (tear) cr_expect(strstr(log, "ignored 1 incomplete or damaged manifest line"), "%s", log);
    free(log);
    cr_expect_eq(assert_same_pngs(ref, out), 5);
    /* every image has one complete record (the torn line was ended), no temp files remain */
    char *text = read_text(mp);
    int records = 0, damaged = 0;
    for (char *s = text, *nl; (nl = strchr(s, '\n')); s = nl + 1) {
        *nl = 0;
        cJSON *rec = cJSON_Parse(s);
        if (rec) records++;
        else damaged++;
        cJSON_Delete(rec);
    }
    cr_expect_eq(records, 5);
    cr_expect_eq(damaged, tear);
    free(text);
    DIR *d = opendir(out);
    struct dirent *de;
    while ((de = readdir(d))) cr_expect(!strstr(de->d_name, ".tmp-"), "leftover %s", de->d_name);
    closedir(d);
}

Test(batch_cli, resume_after_sigkill_is_byte_identical, .timeout = 300) {
    check_resume("", 0);
}

Test(batch_cli, resume_with_batch_size_2_and_torn_line, .timeout = 300) {
    check_resume("--batch-size 2", 1);
}

Test(batch_cli, two_shards_union_equals_unsharded, .timeout = 300) {
    char *dir = tst_tmpdir(), *jobs = path2(dir, "jobs.txt"), *ref = path2(dir, "ref"), *out = path2(dir, "out");
    char *errp = path2(dir, "err");
    write_text(jobs, FIVE_PROMPTS);
    char *args, *cmd;
    args = fmt("--jobs %s -o %s " FAST " -q", jobs, ref);
    cr_assert_eq(run_batch(args, errp), 0, "%s", read_text(errp));
    args = fmt("--jobs %s -o %s " FAST " -q --shard 0/2", jobs, out);
    cr_assert_eq(run_batch(args, errp), 0, "%s", read_text(errp));
    /* shard 0 has jobs 0, 2, 4 = lines 1, 4, 6 */
    cr_expect(file_exists(out, "0001-00.png") && file_exists(out, "0004-00.png") && file_exists(out, "0006-00.png"));
    cr_expect(!file_exists(out, "0002-00.png"));
    /* the second shard as a Kubernetes Indexed Job would start it */
    cmd = fmt("JOB_COMPLETION_INDEX=1 SDMOE_SHARD_COUNT=2 %s batch -m %s --jobs %s -o %s " FAST
             " -q --shard auto", tst_sdmoe_bin(), demo_model(), jobs, out);
    cr_assert_eq(tst_run(cmd, NULL, errp), 0, "%s", read_text(errp));
    cr_expect_eq(assert_same_pngs(ref, out), 5);
    cJSON *m0 = read_manifest(out, "manifest.shard-0-of-2.jsonl"), *m1 = read_manifest(out, "manifest.shard-1-of-2.jsonl");
    cr_expect_eq(cJSON_GetArraySize(m0), 3);
    cr_expect_eq(cJSON_GetArraySize(m1), 2);
    cJSON_Delete(m0);
    cJSON_Delete(m1);
    /* an unsharded rerun in the same folder finds everything done */
    args = fmt("--jobs %s -o %s " FAST, jobs, out);
    cr_assert_eq(run_batch(args, errp), 0);
    char *log = read_text(errp);
    cr_expect(strstr(log, "0 rendered, 5 skipped"), "%s", log);
    free(log);
}

Test(batch_cli, shard_flag_errors) {
    char *dir = tst_tmpdir(), *jobs = path2(dir, "jobs.txt"), *errp = path2(dir, "err");
    write_text(jobs, "x\n");
    const char *bad[] = {"--shard 2/2", "--shard 1", "--shard x/2", "--shard auto"};
    const char *says[] = {"not below", "expected I/N", "expected I/N", "neither SLURM_ARRAY_TASK_ID"};
    for (int i = 0; i < 4; i++) {
        char *args = fmt("--jobs %s -o %s/out %s", jobs, dir, bad[i]);
        char *cmd = fmt("env -u SLURM_ARRAY_TASK_ID -u JOB_COMPLETION_INDEX %s batch -m %s %s",
                 tst_sdmoe_bin(), demo_model(), args);
        cr_expect_eq(tst_run(cmd, NULL, errp), 2, "%s", bad[i]);
        char *log = read_text(errp);
        cr_expect(strstr(log, says[i]), "%s: %s", bad[i], log);
        free(log);
    }
    /* Slurm: an array 4-5 gives task 5 the index 1; without a count it is an error */
    char *cmd = fmt("SLURM_ARRAY_TASK_ID=5 SLURM_ARRAY_TASK_MIN=4 %s batch -m %s --jobs %s -o %s/out "
             "--shard auto", tst_sdmoe_bin(), demo_model(), jobs, dir);
    cr_expect_eq(tst_run(cmd, NULL, errp), 2);
    char *log = read_text(errp);
    cr_expect(strstr(log, "number of shards is unknown"), "%s", log);
    free(log);
    /* a single array task resubmitted with the count given: its ID is its shard (nothing to render here) */
    cmd = fmt("SLURM_ARRAY_TASK_ID=3 SLURM_ARRAY_TASK_MIN=3 SLURM_ARRAY_TASK_COUNT=1 SDMOE_SHARD_COUNT=8 %s batch -m %s "
              "--jobs %s -o %s/out --shard auto", tst_sdmoe_bin(), demo_model(), jobs, dir);
    cr_expect_eq(tst_run(cmd, NULL, errp), 0);
    log = read_text(errp);
    cr_expect(strstr(log, "shard 3/8 from Slurm array task: 0 of them"), "%s", log);
    free(log);
}

Test(batch_cli, bad_lines_reported_others_rendered, .timeout = 300) {
    char *dir = tst_tmpdir(), *jobs = path2(dir, "jobs.jsonl"), *out = path2(dir, "out"), *errp = path2(dir, "err");
    write_text(jobs,
               "{\"prompt\": \"first\"}\n"
               "{\"prompt\": \"broken\"\n"
               "{\"prompt\": \"x\", \"sampler\": \"warp-drive\"}\n"
               "{\"prompt\": \"x\", \"width\": 100}\n"
               "{\"prompt\": \"last\", \"name\": \"last\"}\n");
    char *args = fmt("--jobs %s -o %s " FAST, jobs, out);
    cr_assert_eq(run_batch(args, errp), 1);
    char *log = read_text(errp);
    cr_expect(strstr(log, "jobs.jsonl:2: skipped: invalid JSON"), "%s", log);
    cr_expect(strstr(log, "jobs.jsonl:3: skipped: \"sampler\""), "%s", log);
    cr_expect(strstr(log, "jobs.jsonl:4: skipped: \"width\" must be a multiple of 8"), "%s", log);
    cr_expect(strstr(log, "2 rendered, 0 skipped (already done), 0 failed (of 2 images); 3 failed job line(s)"),
              "%s", log);
    cr_expect(strstr(log, "failed: "), "%s", log);
    free(log);
    cr_expect(file_exists(out, "0001-00.png"));
    cr_expect(file_exists(out, "last-00.png"));
}

/* Pixels within 1 level, at most 0.1% of values differing. */
static void assert_close_pngs(const char *a, const char *b) {
    sd_image x, y;
    sd_png_info ia, ib;
    sd_error err = {0};
    cr_assert_eq(sd_png_read(a, &x, &ia, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_png_read(b, &y, &ib, &err), 0, "%s", err.msg);
    sd_png_info_free(&ia);
    sd_png_info_free(&ib);
    cr_assert(x.width == y.width && x.height == y.height);
    size_t n = (size_t)x.width * x.height * 3, off = 0;
    int worst = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)x.rgb[i] - (int)y.rgb[i]);
        off += d != 0;
        if (d > worst) worst = d;
    }
    cr_expect_leq(worst, 1, "%s vs %s: a value differs by %d", a, b, worst);
    cr_expect_leq(off * 1000, n, "%s vs %s: %zu of %zu values differ", a, b, off, n);
    sd_image_free(&x);
    sd_image_free(&y);
}

Test(batch_cli, batch_size_2_matches_single, .timeout = 300) {
    char *dir = tst_tmpdir(), *jobs = path2(dir, "jobs.jsonl"), *one = path2(dir, "one"), *two = path2(dir, "two");
    char *errp = path2(dir, "err");
    write_text(jobs,
               "{\"prompt\": \"a lighthouse at dusk\", \"count\": 3, \"seed\": 11}\n"
               "{\"prompt\": \"a (red:1.3) fox\", \"negative_prompt\": \"blur\", \"seed\": 5}\n"
               "{\"prompt\": \"a small village\", \"seed\": 9, \"width\": 72}\n");
    char *args = fmt("--jobs %s -o %s " FAST " -q", jobs, one);
    cr_assert_eq(run_batch(args, errp), 0, "%s", read_text(errp));
    args = fmt("--jobs %s -o %s " FAST " -q --batch-size 2", jobs, two);
    cr_assert_eq(run_batch(args, errp), 0, "%s", read_text(errp));
    int n;
    char **names = list_pngs(one, &n);
    cr_assert_eq(n, 5);
    for (int i = 0; i < n; i++) {
        char *a = path2(one, names[i]), *b = path2(two, names[i]);
        assert_close_pngs(a, b);
        free(a);
        free(b);
    }
    free_names(names, n);
    /* groups: [lighthouse x2], [lighthouse, fox], [village: 72 wide] */
    cJSON *man = read_manifest(two, "manifest.jsonl");
    int want[] = {2, 2, 2, 2, 1};
    const cJSON *rec;
    int i = 0;
    cr_assert_eq(cJSON_GetArraySize(man), 5);
    cJSON_ArrayForEach(rec, man) {
        cr_expect_eq(cJSON_GetObjectItem(rec, "batch")->valuedouble, want[i], "record %d", i);
        i++;
    }
    cJSON_Delete(man);
}

/* --vae-tiling is part of an image's parameters: recorded, and a rerun with
 * it renders again instead of skipping the untiled images. */
Test(batch_cli, vae_tiling_is_recorded_and_rerenders, .timeout = 300) {
    char *dir = tst_tmpdir(), *jobs = path2(dir, "jobs.txt"), *out = path2(dir, "out"), *errp = path2(dir, "err");
    write_text(jobs, "a red apple\n");
    char *plain = fmt("--jobs %s -o %s " FAST " -s 3", jobs, out);
    cr_assert_eq(run_batch(plain, errp), 0, "%s", read_text(errp));
    cJSON *man = read_manifest(out, "manifest.jsonl");
    cr_assert_eq(cJSON_GetArraySize(man), 1);
    cr_expect_null(cJSON_GetObjectItem(cJSON_GetArrayItem(man, 0), "vae_tile"));
    cJSON_Delete(man);
    char *tiled = fmt("--jobs %s -o %s " FAST " -s 3 --vae-tiling", jobs, out);
    cr_assert_eq(run_batch(tiled, errp), 0, "%s", read_text(errp));
    char *log = read_text(errp);
    cr_expect(strstr(log, "1 rendered, 0 skipped"), "%s", log);
    free(log);
    man = read_manifest(out, "manifest.jsonl");
    cr_assert_eq(cJSON_GetArraySize(man), 2);
    const cJSON *tile = cJSON_GetObjectItem(cJSON_GetArrayItem(man, 1), "vae_tile");
    cr_expect(cJSON_IsNumber(tile) && tile->valueint == 32, "vae_tile recorded as the tile size");
    cJSON_Delete(man);
    cr_assert_eq(run_batch(tiled, errp), 0);
    log = read_text(errp);
    cr_expect(strstr(log, "0 rendered, 1 skipped"), "%s", log);
    free(log);
}

Test(batch_cli, jobs_from_stdin, .timeout = 300) {
    char *dir = tst_tmpdir(), *jobs = path2(dir, "jobs.jsonl"), *out = path2(dir, "out"), *errp = path2(dir, "err");
    write_text(jobs, "{\"prompt\": \"from a pipe\", \"count\": 2, \"seed\": 3}\n");
    char *cmd = fmt("(cat %s | %s batch -m %s --jobs - -o %s " FAST ")", jobs, tst_sdmoe_bin(), demo_model(),
             out);
    cr_assert_eq(tst_run(cmd, NULL, errp), 0, "%s", read_text(errp));
    cr_expect(file_exists(out, "0001-00.png") && file_exists(out, "0001-01.png"));
    char *log = read_text(errp);
    cr_expect(strstr(log, "stdin: 1 job(s) (JSON Lines)"), "%s", log);
    free(log);
}
