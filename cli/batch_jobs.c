/* cli/batch_jobs — see batch_jobs.h. */
#include "cli/batch_jobs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "sampler/sampler.h"
#include "text_encoder/unicode.h"

/* ---- growing arrays and issues ---- */

static int add_issue(batch_jobs *j, int line, int index, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int add_issue(batch_jobs *j, int line, int index, const char *fmt, ...) {
    if (j->n_issues % 64 == 0) {
        batch_issue *p = realloc(j->issues, (size_t)(j->n_issues + 64) * sizeof *p);
        if (!p) return -1;
        j->issues = p;
    }
    batch_issue *is = &j->issues[j->n_issues++];
    is->line = line;
    is->index = index;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(is->msg, sizeof is->msg, fmt, ap);
    va_end(ap);
    return 0;
}

static void job_free(batch_job *job) {
    free(job->prompt);
    free(job->negative);
    free(job->sampler);
    free(job->scheduler);
    memset(job, 0, sizeof *job);
}

static int add_job(batch_jobs *j, const batch_job *job) {
    if (j->n_jobs % 256 == 0) {
        batch_job *p = realloc(j->jobs, (size_t)(j->n_jobs + 256) * sizeof *p);
        if (!p) return -1;
        j->jobs = p;
    }
    j->jobs[j->n_jobs++] = *job;
    return 0;
}

void batch_jobs_free(batch_jobs *j) {
    for (int i = 0; i < j->n_jobs; i++) job_free(&j->jobs[i]);
    free(j->jobs);
    free(j->issues);
    memset(j, 0, sizeof *j);
}

/* ---- names ---- */

static int name_char_ok(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("._+=,@-", c);
}

int batch_jobs_sanitize_name(const char *name, char *out, size_t cap) {
    size_t k = 0;
    for (const unsigned char *s = (const unsigned char *)name; *s && k + 1 < cap && k < BATCH_JOBS_MAX_NAME; s++) {
        char c = name_char_ok(*s) ? (char)*s : '_';
        if (c == '.' && (k == 0 || out[k - 1] == '.')) c = '_';
        out[k++] = c;
    }
    if (cap) out[k < cap ? k : cap - 1] = 0;
    return k ? 0 : -1;
}

/* ---- reading lines ---- */

/* Reads one line (without '\n') into *buf, keeping at most max bytes;
 * *too_long is set when more were discarded.  1 = a line, 0 = end of file,
 * -1 = read error or out of memory. */
static int read_line(FILE *in, char **buf, size_t *cap, size_t *len, int *too_long) {
    size_t n = 0;
    int c, any = 0;
    *too_long = 0;
    while ((c = getc_unlocked(in)) != EOF) {
        any = 1;
        if (c == '\n') break;
        if (n >= BATCH_JOBS_MAX_LINE) {
            *too_long = 1;
            continue;
        }
        if (n + 1 >= *cap) {
            size_t nc = *cap ? *cap * 2 : 4096;
            if (nc > BATCH_JOBS_MAX_LINE + 2) nc = BATCH_JOBS_MAX_LINE + 2;
            char *p = realloc(*buf, nc);
            if (!p) return -1;
            *buf = p;
            *cap = nc;
        }
        (*buf)[n++] = (char)c;
    }
    if (ferror(in)) return -1;
    if (!any) return 0;
    if (!*buf) {
        *buf = malloc(1);
        if (!*buf) return -1;
        *cap = 1;
    }
    if (n && (*buf)[n - 1] == '\r') n--;
    (*buf)[n] = 0;
    *len = n;
    return 1;
}

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Offset of the first ill-formed UTF-8 byte, or -1 when valid. */
static long utf8_bad_at(const char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        size_t n;
        int bad = 0;
        sd_utf8_next(s, len, i, &n, &bad);
        if (bad) return (long)i;
        i += n ? n : 1;
    }
    return -1;
}

/* ---- one line -> one job ---- */

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* A whole number in [lo, hi] or an error message. */
static int json_whole(const cJSON *v, const char *key, double lo, double hi, long long *out, char *msg,
                      size_t cap) {
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!isfinite(d) || d != floor(d) || d < lo || d > hi) {
        snprintf(msg, cap, "\"%s\" must be a whole number from %.0f to %.0f", key, lo, hi);
        return -1;
    }
    *out = (long long)d;
    return 0;
}

static int json_text(const cJSON *v, const char *key, int allow_null, char **out, char *msg, size_t cap) {
    if (allow_null && cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v) || !v->valuestring) {
        snprintf(msg, cap, "\"%s\" must be a string%s", key, allow_null ? " or null" : "");
        return -1;
    }
    *out = dup_str(v->valuestring);
    if (!*out) {
        snprintf(msg, cap, "out of memory");
        return -1;
    }
    return 0;
}

static const char *const KNOWN_KEYS[] = {"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width",
                                         "height", "sampler", "scheduler", "clip_skip", "count", "name"};
#define N_KNOWN_KEYS (int)(sizeof KNOWN_KEYS / sizeof KNOWN_KEYS[0])

static int key_slot(const char *k) {
    for (int i = 0; i < N_KNOWN_KEYS; i++)
        if (!strcmp(k, KNOWN_KEYS[i])) return i;
    return -1;
}

static int check_size(const cJSON *v, const char *key, int *out, char *msg, size_t cap) {
    long long x;
    if (json_whole(v, key, 8, 16384, &x, msg, cap) || x % 8) {
        snprintf(msg, cap, "\"%s\" must be a multiple of 8 from 8 to 16384", key);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int check_sampler(batch_job *job, char *msg, size_t cap) {
    sd_error err = {0};
    sd_sampler_id id;
    int karras;
    if (job->sampler && sd_sampler_lookup(job->sampler, &id, &karras, &err)) {
        snprintf(msg, cap, "\"sampler\": %.250s", err.msg);
        return -1;
    }
    if (job->scheduler && strcmp(job->scheduler, "default") && strcmp(job->scheduler, "karras") &&
        strcmp(job->scheduler, "discrete")) {
        snprintf(msg, cap, "\"scheduler\" must be one of default, karras, discrete");
        return -1;
    }
    if (job->sampler && job->scheduler && !strcmp(job->scheduler, "karras") && !sd_sampler_get(id)->supports_karras) {
        snprintf(msg, cap, "\"scheduler\": sampler '%s' has no Karras schedule", job->sampler);
        return -1;
    }
    return 0;
}

/* Reads the value of KNOWN_KEYS[slot] into job. */
static int read_key(int slot, const cJSON *v, batch_job *job, char *msg, size_t cap) {
    long long x;
    const char *k = KNOWN_KEYS[slot];
    switch (slot) {
    case 0: return json_text(v, k, 0, &job->prompt, msg, cap);
    case 1: job->has_negative = 1; return json_text(v, k, 1, &job->negative, msg, cap);
    case 2:
        if (json_whole(v, k, -1, (double)BATCH_JOBS_MAX_SEED, &x, msg, cap)) return -1;
        job->seed = x;
        return 0;
    case 3:
        if (json_whole(v, k, 1, 10000, &x, msg, cap)) return -1;
        job->steps = (int)x;
        return 0;
    case 4:
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
            snprintf(msg, cap, "\"cfg_scale\" must be a finite number");
            return -1;
        }
        job->has_cfg = 1;
        job->cfg_scale = v->valuedouble;
        return 0;
    case 5: return check_size(v, k, &job->width, msg, cap);
    case 6: return check_size(v, k, &job->height, msg, cap);
    case 7: return json_text(v, k, 0, &job->sampler, msg, cap);
    case 8: return json_text(v, k, 0, &job->scheduler, msg, cap);
    case 9:
        if (json_whole(v, k, 1, 100, &x, msg, cap)) return -1;
        job->clip_skip = (int)x;
        return 0;
    case 10:
        if (json_whole(v, k, 1, BATCH_JOBS_MAX_COUNT, &x, msg, cap)) return -1;
        job->count = (int)x;
        return 0;
    default: {
        char *name = NULL;
        if (json_text(v, k, 0, &name, msg, cap)) return -1;
        int rc = batch_jobs_sanitize_name(name, job->stem, sizeof job->stem);
        free(name);
        if (rc) {
            snprintf(msg, cap, "\"name\" is empty");
            return -1;
        }
        job->named = 1;
        return 0;
    }
    }
}

static int parse_json_job(const char *line, batch_job *job, char *msg, size_t cap) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(line, &end, 1);
    if (!root) {
        long col = end && end >= line ? (long)(end - line) + 1 : 1;
        snprintf(msg, cap, "invalid JSON near column %ld", col);
        return -1;
    }
    int rc = 0, seen[N_KNOWN_KEYS] = {0};
    if (!cJSON_IsObject(root)) {
        snprintf(msg, cap, "expected a JSON object {\"prompt\": ...}");
        rc = -1;
    }
    for (const cJSON *it = rc ? NULL : root->child; it && !rc; it = it->next) {
        if (!it->string || it->string[0] == '_') continue;
        int slot = key_slot(it->string);
        if (slot < 0) {
            snprintf(msg, cap, "unknown key \"%.60s\" (known: prompt, negative_prompt, seed, steps, cfg_scale, "
                     "width, height, sampler, scheduler, clip_skip, count, name; '_' keys are ignored)", it->string);
            rc = -1;
        } else if (seen[slot]++) {
            snprintf(msg, cap, "key \"%s\" appears twice", it->string);
            rc = -1;
        } else {
            rc = read_key(slot, it, job, msg, cap);
        }
    }
    if (!rc && !job->prompt) {
        snprintf(msg, cap, "missing \"prompt\"");
        rc = -1;
    }
    if (!rc) rc = check_sampler(job, msg, cap);
    cJSON_Delete(root);
    return rc;
}

static int parse_plain_job(const char *line, size_t len, batch_job *job, char *msg, size_t cap) {
    size_t a = 0, b = len;
    while (a < b && is_space(line[a])) a++;
    while (b > a && is_space(line[b - 1])) b--;
    job->prompt = malloc(b - a + 1);
    if (!job->prompt) {
        snprintf(msg, cap, "out of memory");
        return -1;
    }
    memcpy(job->prompt, line + a, b - a);
    job->prompt[b - a] = 0;
    return 0;
}

static size_t job_bytes(const batch_job *job) {
    size_t n = sizeof *job + strlen(job->prompt);
    if (job->negative) n += strlen(job->negative);
    return n;
}

/* Checks and parses one non-blank line; a bad line becomes an issue. */
static int take_line(batch_jobs *j, char *line, size_t len, int too_long, int lineno, size_t *bytes) {
    char msg[288];
    batch_job job = {.line = lineno, .index = j->n_indexes++, .seed = -1};
    long bad;
    int rc = 0;
    if (too_long) {
        snprintf(msg, sizeof msg, "line longer than %d bytes", BATCH_JOBS_MAX_LINE);
        rc = -1;
    } else if (memchr(line, 0, len)) {
        snprintf(msg, sizeof msg, "contains a NUL byte");
        rc = -1;
    } else if ((bad = utf8_bad_at(line, len)) >= 0) {
        snprintf(msg, sizeof msg, "not valid UTF-8 (byte 0x%02x at column %ld)", (unsigned char)line[bad], bad + 1);
        rc = -1;
    } else {
        rc = j->jsonl ? parse_json_job(line, &job, msg, sizeof msg) : parse_plain_job(line, len, &job, msg, sizeof msg);
    }
    if (!rc && !job.named) snprintf(job.stem, sizeof job.stem, "%04d", lineno);
    if (rc) {
        int index = job.index;
        job_free(&job);
        return add_issue(j, lineno, index, "%s", msg);
    }
    *bytes += job_bytes(&job);
    if (add_job(j, &job)) {
        job_free(&job);
        return -1;
    }
    return 0;
}

/* ---- duplicate output stems ---- */

typedef struct stem_ref {
    const char *stem;
    int line, index, pos;
} stem_ref;

static int stem_cmp(const void *a, const void *b) {
    const stem_ref *x = a, *y = b;
    int c = strcmp(x->stem, y->stem);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

static int issue_cmp(const void *a, const void *b) {
    const batch_issue *x = a, *y = b;
    return (x->line > y->line) - (x->line < y->line);
}

/* Two jobs with one stem would overwrite each other's images: every job
 * after the first with a given stem becomes an issue. */
static int drop_duplicate_stems(batch_jobs *j) {
    if (j->n_jobs < 2) return 0;
    stem_ref *refs = malloc((size_t)j->n_jobs * sizeof *refs);
    char *drop = calloc((size_t)j->n_jobs, 1);
    if (!refs || !drop) {
        free(refs);
        free(drop);
        return -1;
    }
    for (int i = 0; i < j->n_jobs; i++) refs[i] = (stem_ref){j->jobs[i].stem, j->jobs[i].line, j->jobs[i].index, i};
    qsort(refs, (size_t)j->n_jobs, sizeof *refs, stem_cmp);
    int rc = 0;
    for (int i = 1; i < j->n_jobs && !rc; i++)
        if (!strcmp(refs[i].stem, refs[i - 1].stem)) {
            int first = i - 1;
            while (first > 0 && !strcmp(refs[first - 1].stem, refs[i].stem)) first--;
            drop[refs[i].pos] = 1;
            rc = add_issue(j, refs[i].line, refs[i].index, "output name '%s' is already used by line %d", refs[i].stem,
                           refs[first].line);
        }
    int k = 0;
    for (int i = 0; i < j->n_jobs; i++) {
        if (drop[i]) job_free(&j->jobs[i]);
        else j->jobs[k++] = j->jobs[i];
    }
    j->n_jobs = k;
    free(refs);
    free(drop);
    if (!rc && j->n_issues > 1) qsort(j->issues, (size_t)j->n_issues, sizeof *j->issues, issue_cmp);
    return rc;
}

/* ---- the file ---- */

static const char *skip_bom(const char *s, size_t *len) {
    if (*len >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) {
        *len -= 3;
        return s + 3;
    }
    return s;
}

int batch_jobs_read(FILE *in, batch_jobs *out, sd_error *err) {
    memset(out, 0, sizeof *out);
    char *buf = NULL;
    size_t cap = 0, len = 0, bytes = 0;
    int too_long, lineno = 0, seen_content = 0, r, rc = 0;
    while ((r = read_line(in, &buf, &cap, &len, &too_long)) == 1) {
        lineno++;
        char *line = buf;
        if (lineno == 1) line = (char *)skip_bom(buf, &len);
        size_t a = 0;
        while (a < len && is_space(line[a])) a++;
        if (a == len && !too_long) continue;
        if (!seen_content) {
            out->jsonl = line[a] == '{';
            seen_content = 1;
        }
        if (out->n_indexes >= BATCH_JOBS_MAX_JOBS || bytes > BATCH_JOBS_MAX_BYTES) {
            out->truncated = 1;
            if (add_issue(out, lineno, -1, "more than %s; this line and the rest of the file are ignored",
                          bytes > BATCH_JOBS_MAX_BYTES ? "256 MiB of prompts" : "100000 jobs"))
                rc = -1;
            break;
        }
        if (take_line(out, line, len, too_long, lineno, &bytes)) {
            rc = -1;
            break;
        }
    }
    free(buf);
    if (r < 0 && !rc) rc = sd_fail(err, "%s", ferror(in) ? strerror(errno) : "out of memory");
    else if (rc) sd_fail(err, "out of memory reading the jobs");
    if (!rc && drop_duplicate_stems(out)) rc = sd_fail(err, "out of memory reading the jobs");
    if (rc) batch_jobs_free(out);
    return rc;
}

int batch_jobs_load(const char *path, batch_jobs *out, sd_error *err) {
    int use_stdin = !strcmp(path, "-");
    FILE *f = use_stdin ? stdin : fopen(path, "rb");
    if (!f) return sd_fail(err, "%s: cannot read the jobs file: %s", path, strerror(errno));
    int rc = batch_jobs_read(f, out, err);
    if (!use_stdin) fclose(f);
    if (rc) return sd_error_prefix(err, "%s", use_stdin ? "standard input" : path);
    return 0;
}
