/* cli/batch_manifest — see batch_manifest.h. */
#include "cli/batch_manifest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/sha256.h"

/* A manifest line longer than this is damage, not a record. */
#define MANIFEST_MAX_LINE ((size_t)8 << 20)

void batch_manifest_file_name(int shard_index, int shard_count, char *out, size_t cap) {
    if (shard_count > 1)
        snprintf(out, cap, "manifest.shard-%d-of-%d.jsonl", shard_index, shard_count);
    else
        snprintf(out, cap, "manifest.jsonl");
}

static int is_manifest_name(const char *name) {
    size_t n = strlen(name);
    if (!strcmp(name, "manifest.jsonl")) return 1;
    return n > 15 && !strncmp(name, "manifest.", 9) && !strcmp(name + n - 6, ".jsonl");
}

static int is_hex64(const char *s) {
    if (!s || strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int add_entry(batch_manifest *m, const char *file, const char *sha, const char *params) {
    if (m->n % 256 == 0) {
        batch_manifest_entry *p = realloc(m->entries, (size_t)(m->n + 256) * sizeof *p);
        if (!p) return -1;
        m->entries = p;
    }
    batch_manifest_entry *e = &m->entries[m->n];
    e->file = strdup(file);
    if (!e->file) return -1;
    memcpy(e->sha256, sha, 65);
    memcpy(e->params, params, 65);
    m->n++;
    return 0;
}

/* One complete line -> an entry; anything else counts as a bad line. */
static int take_line(batch_manifest *m, const char *line, size_t len) {
    cJSON *rec = len < MANIFEST_MAX_LINE ? cJSON_ParseWithLengthOpts(line, len, NULL, 0) : NULL;
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(rec, "file");
    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(rec, "sha256");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(rec, "params_sha256");
    int ok = cJSON_IsString(file) && file->valuestring[0] && !strchr(file->valuestring, '/') &&
             cJSON_IsString(sha) && is_hex64(sha->valuestring) && cJSON_IsString(key) &&
             is_hex64(key->valuestring);
    int rc = 0;
    if (ok) rc = add_entry(m, file->valuestring, sha->valuestring, key->valuestring);
    else m->n_bad_lines++;
    cJSON_Delete(rec);
    return rc;
}

static int load_file(batch_manifest *m, const char *path, sd_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return sd_fail(err, "%s: cannot read: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while (!rc && (n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] != '\n') { /* torn last line: the write never finished */
            m->n_bad_lines++;
            break;
        }
        if (n > 1 && take_line(m, line, (size_t)n - 1)) rc = sd_fail(err, "%s: out of memory", path);
    }
    if (!rc && ferror(f)) rc = sd_fail(err, "%s: read error: %s", path, strerror(errno));
    free(line);
    fclose(f);
    m->n_files++;
    return rc;
}

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const batch_manifest_entry *)a)->file, ((const batch_manifest_entry *)b)->file);
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the manifest files in dir. */
static int list_manifests(const char *dir, char ***names, int *n, sd_error *err) {
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : sd_fail(err, "%s: cannot list: %s", dir, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d))) {
        if (!is_manifest_name(de->d_name)) continue;
        char **p = realloc(*names, (size_t)(*n + 1) * sizeof *p);
        if (p) *names = p;
        if (!p || !(p[*n] = strdup(de->d_name))) rc = sd_fail(err, "out of memory");
        else (*n)++;
    }
    closedir(d);
    if (*n > 1) qsort(*names, (size_t)*n, sizeof **names, name_cmp);
    return rc;
}

int batch_manifest_load(const char *dir, batch_manifest *m, sd_error *err) {
    memset(m, 0, sizeof *m);
    char **names;
    int n, rc = list_manifests(dir, &names, &n, err);
    for (int i = 0; i < n; i++) {
        char *path = sd_path_join(dir, names[i]);
        if (!rc && !path) rc = sd_fail(err, "out of memory");
        if (!rc) rc = load_file(m, path, err);
        free(path);
        free(names[i]);
    }
    free(names);
    if (!rc && m->n > 1) qsort(m->entries, (size_t)m->n, sizeof *m->entries, entry_cmp);
    if (rc) batch_manifest_free(m);
    return rc;
}

void batch_manifest_free(batch_manifest *m) {
    for (int i = 0; i < m->n; i++) free(m->entries[i].file);
    free(m->entries);
    memset(m, 0, sizeof *m);
}

int batch_manifest_params_key(const cJSON *params, char key[65], sd_error *err) {
    char *text = cJSON_PrintUnformatted(params);
    if (!text) return sd_fail(err, "out of memory");
    int rc = sd_sha256_buffer(text, strlen(text), key, err);
    cJSON_free(text);
    return rc;
}

int batch_manifest_is_done(const batch_manifest *m, const char *dir, const char *file, const char *params_key) {
    /* first entry with this file name (binary search), then the run of equal names */
    int lo = 0, hi = m->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (strcmp(m->entries[mid].file, file) < 0) lo = mid + 1;
        else hi = mid;
    }
    char actual[65] = "";
    for (int i = lo; i < m->n && !strcmp(m->entries[i].file, file); i++) {
        if (strcmp(m->entries[i].params, params_key)) continue;
        if (!actual[0]) {
            char *path = sd_path_join(dir, file);
            sd_error err = {0};
            int rc = !path || !sd_is_file(path) || sd_sha256_file(path, actual, &err);
            free(path);
            if (rc) return 0;
        }
        if (!strcmp(actual, m->entries[i].sha256)) return 1;
    }
    return 0;
}

/* write() all of buf, retrying on EINTR and short writes. */
static int write_all(int fd, const char *buf, size_t n) {
    while (n) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

int batch_manifest_open(batch_manifest_writer *w, const char *dir, const char *name, sd_error *err) {
    w->fd = -1;
    w->path = sd_path_join(dir, name);
    if (!w->path) return sd_fail(err, "out of memory");
    int existed = sd_is_file(w->path);
    w->fd = open(w->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        sd_fail(err, "%s: cannot open for appending: %s", w->path, strerror(errno));
        batch_manifest_close(w);
        return -1;
    }
    struct stat st;
    char last = '\n';
    if (fstat(w->fd, &st) == 0 && st.st_size > 0 && pread(w->fd, &last, 1, st.st_size - 1) != 1) last = '\n';
    if (last != '\n' && (write_all(w->fd, "\n", 1) || fsync(w->fd))) {
        sd_fail(err, "%s: cannot end the torn last line: %s", w->path, strerror(errno));
        batch_manifest_close(w);
        return -1;
    }
    if (!existed) sd_fsync_dir(dir);
    return 0;
}

int batch_manifest_append(batch_manifest_writer *w, const cJSON *record, sd_error *err) {
    char *text = cJSON_PrintUnformatted(record);
    if (!text) return sd_fail(err, "%s: out of memory", w->path);
    size_t n = strlen(text);
    char *line = malloc(n + 1);
    if (!line) {
        cJSON_free(text);
        return sd_fail(err, "%s: out of memory", w->path);
    }
    memcpy(line, text, n);
    line[n] = '\n';
    cJSON_free(text);
    int rc = write_all(w->fd, line, n + 1) || fsync(w->fd);
    free(line);
    if (rc) return sd_fail(err, "%s: cannot append: %s", w->path, strerror(errno));
    return 0;
}

void batch_manifest_close(batch_manifest_writer *w) {
    if (w->fd >= 0) close(w->fd);
    free(w->path);
    w->fd = -1;
    w->path = NULL;
}
