/* core/weight_cache — prepared weights kept on disk between runs (see the header).
 *
 * File layout (little-endian, all offsets absolute):
 *   header  HEADER_BYTES: magic "SDMOEWC1", u32 version, u32 n_entries,
 *           u64 index_bytes, u64 data_offset, u64 file_bytes, identity[32]
 *   index   n_entries x { u64 offset, u64 bytes, u32 key_len, key, 0-pad to 8 },
 *           keys strictly ascending (binary search)
 *   data    each entry at a multiple of DATA_ALIGN (oneDNN wants 64; pages
 *           keep entries from sharing one)
 */
#include "core/weight_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "core/fileio.h"
#include "core/sha256.h"

#define MAGIC "SDMOEWC1"
#define FORMAT_VERSION 1u
#define HEADER_BYTES 72
#define DATA_ALIGN 4096
#define KEY_MAX 4096
#define SUFFIX ".sdwc"
#define DEFAULT_MAX_BYTES ((int64_t)16 << 30)
#define DISK_MARGIN ((uint64_t)256 << 20) /* free space left on the disk after a save */
#define STALE_TMP_SECONDS (24 * 3600)     /* temp files of crashed saves are removed after a day */
#define HASH_SUFFIX ".sha256"
#define STALE_HASH_SECONDS (90 * 24 * 3600) /* file hashes unused for 90 days are removed */

typedef struct cache_entry {
    char *key;
    uint64_t offset, bytes; /* in the mapped file (found) */
    const void *data;       /* added: the caller's buffer */
    int used;               /* found: handed out by this load (kept by the next save) */
} cache_entry;

struct sd_weight_cache {
    char *dir, *path;
    int64_t max_bytes;
    unsigned char identity[32];
    void *map;               /* the existing file, or NULL */
    size_t map_size;
    cache_entry *found;      /* the existing file's entries, sorted by key */
    int n_found;
    cache_entry *added;
    int n_added, cap_added;
    sd_weight_cache_stats stats;
};

/* ---------------------------------------------------------------- location */

static int disabled_value(const char *v) { return !v || !v[0] || !strcmp(v, "off") || !strcmp(v, "0"); }

/* The folder from the options or the environment (malloc'd), NULL = disabled. */
static char *cache_dir_choose(const sd_weight_cache_options *opt) {
    if (opt && opt->dir) return disabled_value(opt->dir) ? NULL : strdup(opt->dir);
    const char *env = getenv("SDMOE_CACHE_DIR");
    if (env) return disabled_value(env) ? NULL : strdup(env);
    const char *xdg = getenv("XDG_CACHE_HOME");
    if (xdg && xdg[0] == '/') return sd_path_join(xdg, "sdmoe");
    const char *home = getenv("HOME");
    if (home && home[0] == '/') {
        char *dot = sd_path_join(home, ".cache");
        char *dir = dot ? sd_path_join(dot, "sdmoe") : NULL;
        free(dot);
        return dir;
    }
    return NULL;
}

static int64_t cache_limit_choose(const sd_weight_cache_options *opt) {
    if (opt && opt->max_bytes > 0) return opt->max_bytes;
    const char *env = getenv("SDMOE_CACHE_MAX_MB");
    if (env && env[0]) {
        char *end;
        long long mb = strtoll(env, &end, 10);
        if (!*end && mb > 0 && mb < (LLONG_MAX >> 20)) return (int64_t)mb << 20;
    }
    return DEFAULT_MAX_BYTES;
}

/* mkdir -p with mode 0755. */
static int make_dirs(const char *dir, sd_error *err) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return sd_fail(err, "weight cache: folder name too long: %s", dir);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p) continue;
        char keep = *p;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return sd_fail(err, "weight cache: cannot create folder %s: %s", buf, strerror(errno));
        *p = keep;
        if (!keep) break;
    }
    if (!sd_is_dir(dir)) return sd_fail(err, "weight cache: %s exists and is not a folder", dir);
    return 0;
}

/* One weight file's identity line: real path, size, mtime, inode, device
 * (from `known`, the fstat of the file as mapped, when given). */
static int file_identity(char *out, size_t cap, const char *file, const struct stat *known, sd_error *err) {
    struct stat st;
    char real[PATH_MAX];
    if (!realpath(file, real) || (known ? (st = *known, 0) : stat(real, &st)) != 0)
        return sd_fail(err, "weight cache: %s: cannot examine the weight file: %s", file, strerror(errno));
    snprintf(out, cap, "file %s %lld %lld.%09ld %llu %llu\n", real, (long long)st.st_size,
             (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec, (unsigned long long)st.st_ino,
             (unsigned long long)st.st_dev);
    return 0;
}

/* The identity text: component, then per weight file its real path, size, mtime, inode, device. */
static int identity_hash(unsigned char out[32], char hex[65], const char *component, const char *const *files,
                         const struct stat *stats, int n_files, sd_error *err) {
    size_t cap = 256 + (size_t)n_files * (PATH_MAX + 128), len = 0;
    char *text = malloc(cap);
    if (!text) return sd_fail(err, "weight cache: out of memory");
    len += (size_t)snprintf(text + len, cap - len, "sdmoe weight cache %u\ncomponent %s\n", FORMAT_VERSION, component);
    for (int i = 0; i < n_files; i++) {
        if (file_identity(text + len, cap - len, files[i], stats ? &stats[i] : NULL, err)) {
            free(text);
            return -1;
        }
        len += strlen(text + len);
    }
    int rc = sd_sha256_buffer(text, len, hex, err);
    free(text);
    if (rc) return -1;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (unsigned char)v;
    }
    return 0;
}

/* ------------------------------------------------------------ reading a file */

static uint64_t get_u64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint32_t get_u32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void found_free(sd_weight_cache *c) {
    for (int i = 0; i < c->n_found; i++) free(c->found[i].key);
    free(c->found);
    c->found = NULL, c->n_found = 0;
    if (c->map) munmap(c->map, c->map_size);
    c->map = NULL, c->map_size = 0;
}

/* Why the mapped file is not a valid cache file for c, or NULL; fills c->found. */
static const char *index_parse(sd_weight_cache *c) {
    const unsigned char *m = c->map;
    uint64_t size = c->map_size;
    if (size < HEADER_BYTES || memcmp(m, MAGIC, 8)) return "not an sdmoe weight cache file";
    if (get_u32(m + 8) != FORMAT_VERSION) return "another format version";
    uint32_t n = get_u32(m + 12);
    uint64_t index_bytes = get_u64(m + 16), data_offset = get_u64(m + 24), file_bytes = get_u64(m + 32);
    if (memcmp(m + 40, c->identity, 32)) return "made for other weight files";
    if (file_bytes != size) return "truncated or extended";
    if (index_bytes > size - HEADER_BYTES || data_offset < HEADER_BYTES + index_bytes || data_offset > size)
        return "index out of bounds";
    if (n > index_bytes / 24) return "entry count out of bounds";
    c->found = calloc(n ? n : 1, sizeof *c->found);
    if (!c->found) return "out of memory";
    const unsigned char *p = m + HEADER_BYTES, *end = p + index_bytes;
    for (uint32_t i = 0; i < n; i++) {
        if (end - p < 20) return "index entry out of bounds";
        uint64_t off = get_u64(p), bytes = get_u64(p + 8);
        uint32_t key_len = get_u32(p + 16);
        size_t rec = (20 + (size_t)key_len + 7) & ~(size_t)7;
        if (key_len == 0 || key_len > KEY_MAX || rec > (size_t)(end - p)) return "index key out of bounds";
        if (off % DATA_ALIGN || off < data_offset || off > size || bytes > size - off)
            return "entry data out of bounds";
        char *key = malloc(key_len + 1);
        if (!key) return "out of memory";
        memcpy(key, p + 20, key_len);
        key[key_len] = 0;
        c->found[c->n_found++] = (cache_entry){.key = key, .offset = off, .bytes = bytes};
        if (strlen(key) != key_len) return "key with a NUL byte";
        if (i > 0 && strcmp(c->found[i - 1].key, key) >= 0) return "keys not in order";
        p += rec;
    }
    return NULL;
}

/* Maps and validates the existing file, if any; an unusable one is noted and dropped. */
static void cache_map_existing(sd_weight_cache *c) {
    int fd = open(c->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st;
    const char *why = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) why = "not a regular file";
    else if (st.st_size < HEADER_BYTES) why = "truncated";
    if (!why) {
        c->map_size = (size_t)st.st_size;
        c->map = mmap(NULL, c->map_size, PROT_READ, MAP_SHARED, fd, 0);
        if (c->map == MAP_FAILED) c->map = NULL, why = "cannot be mapped";
    }
    close(fd);
    if (!why) why = index_parse(c);
    if (why) {
        snprintf(c->stats.ignored, sizeof c->stats.ignored, "%s: %s", c->path, why);
        found_free(c);
        return;
    }
    madvise(c->map, c->map_size, MADV_WILLNEED); /* start reading ahead: every entry is wanted */
}

int sd_weight_cache_open(sd_weight_cache **out, const sd_weight_cache_options *opt, const char *component,
                         const char *const *files, const struct stat *stats, int n_files, sd_error *err) {
    *out = NULL;
    char *dir = cache_dir_choose(opt);
    if (!dir) return 0;
    sd_weight_cache *c = calloc(1, sizeof *c);
    char hex[65], name[128];
    if (!c) {
        free(dir);
        return sd_fail(err, "weight cache: out of memory");
    }
    c->dir = dir;
    c->max_bytes = cache_limit_choose(opt);
    if (make_dirs(dir, err) || identity_hash(c->identity, hex, component, files, stats, n_files, err)) {
        sd_weight_cache_free(c);
        return -1;
    }
    snprintf(name, sizeof name, "%.32s-%s" SUFFIX, hex, component);
    c->path = sd_path_join(dir, name);
    if (!c->path) {
        sd_weight_cache_free(c);
        return sd_fail(err, "weight cache: out of memory");
    }
    cache_map_existing(c);
    *out = c;
    return 0;
}

void sd_weight_cache_free(sd_weight_cache *c) {
    if (!c) return;
    found_free(c);
    for (int i = 0; i < c->n_added; i++) free(c->added[i].key);
    free(c->added);
    free(c->dir);
    free(c->path);
    free(c);
}

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const cache_entry *)a)->key, ((const cache_entry *)b)->key);
}

const void *sd_weight_cache_find(sd_weight_cache *c, const char *key, size_t bytes) {
    if (!c || !c->n_found) return NULL;
    cache_entry probe = {.key = (char *)key};
    cache_entry *e = bsearch(&probe, c->found, (size_t)c->n_found, sizeof probe, entry_cmp);
    if (!e || e->bytes != bytes) return NULL;
    e->used = 1;
    c->stats.hits++;
    c->stats.hit_bytes += (int64_t)bytes;
    return (const char *)c->map + e->offset;
}

int sd_weight_cache_add(sd_weight_cache *c, const char *key, const void *data, size_t bytes, sd_error *err) {
    if (!c) return 0;
    if (!key[0] || strlen(key) > KEY_MAX) return sd_fail(err, "weight cache: invalid key '%.64s'", key);
    if (c->n_added == c->cap_added) {
        int cap = c->cap_added ? 2 * c->cap_added : 64;
        cache_entry *ne = realloc(c->added, (size_t)cap * sizeof *ne);
        if (!ne) return sd_fail(err, "weight cache: out of memory");
        c->added = ne, c->cap_added = cap;
    }
    char *k = strdup(key);
    if (!k) return sd_fail(err, "weight cache: out of memory");
    c->added[c->n_added++] = (cache_entry){.key = k, .bytes = bytes, .data = data};
    c->stats.misses++;
    c->stats.added_bytes += (int64_t)bytes;
    return 0;
}

void sd_weight_cache_get_stats(const sd_weight_cache *c, sd_weight_cache_stats *s) {
    if (c) *s = c->stats;
    else memset(s, 0, sizeof *s);
}

const char *sd_weight_cache_path(const sd_weight_cache *c) { return c ? c->path : NULL; }

/* ---------------------------------------------------------------- the limit */

typedef struct dir_file {
    char *path;
    int64_t bytes;
    struct timespec mtime;
} dir_file;

static int older_first(const void *a, const void *b) {
    const dir_file *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec) return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    return (x->mtime.tv_nsec > y->mtime.tv_nsec) - (x->mtime.tv_nsec < y->mtime.tv_nsec);
}

/* Names this module makes: 32 hex digits, then "-<component>.sdwc" (cache)
 * or ".sha256" (file hash), either optionally + ".tmp-<pid>" (a save in
 * progress or abandoned).  Returns 0 for anything else (never removed). */
enum { NAME_FOREIGN, NAME_CACHE, NAME_HASH, NAME_TMP };
static int name_kind(const char *name) {
    for (int i = 0; i < 32; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'))) return NAME_FOREIGN;
    const char *rest = name + 32, *tmp = strstr(rest, ".tmp-");
    size_t len = tmp ? (size_t)(tmp - rest) : strlen(rest);
    if (tmp) {
        if (!tmp[5]) return NAME_FOREIGN;
        for (const char *d = tmp + 5; *d; d++)
            if (*d < '0' || *d > '9') return NAME_FOREIGN;
    }
    int kind = NAME_FOREIGN;
    if (len == strlen(HASH_SUFFIX) && !strncmp(rest, HASH_SUFFIX, len)) kind = NAME_HASH;
    else if (len > strlen(SUFFIX) + 1 && rest[0] == '-' && !strncmp(rest + len - strlen(SUFFIX), SUFFIX, strlen(SUFFIX)))
        kind = NAME_CACHE;
    return kind == NAME_FOREIGN ? kind : tmp ? NAME_TMP : kind;
}

/* Removes least recently used cache files (never c->path) until `incoming`
 * more bytes fit under the limit, and temp files of saves that died. */
static void cache_evict(sd_weight_cache *c, int64_t incoming) {
    DIR *d = opendir(c->dir);
    if (!d) return;
    dir_file *files = NULL;
    int n = 0, cap = 0;
    int64_t total = 0;
    time_t now = time(NULL);
    struct dirent *de;
    while ((de = readdir(d))) {
        int kind = name_kind(de->d_name), is_tmp = kind == NAME_TMP, is_hash = kind == NAME_HASH;
        if (kind == NAME_FOREIGN) continue;
        char *path = sd_path_join(c->dir, de->d_name);
        struct stat st;
        if (!path || lstat(path, &st) != 0 || !S_ISREG(st.st_mode) || !strcmp(path, c->path)) {
            free(path);
            continue;
        }
        if (is_tmp || is_hash) {
            if (now - st.st_mtim.tv_sec > (is_tmp ? STALE_TMP_SECONDS : STALE_HASH_SECONDS)) unlink(path);
            free(path);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            dir_file *nf = realloc(files, (size_t)cap * sizeof *nf);
            if (!nf) {
                free(path);
                break;
            }
            files = nf;
        }
        files[n++] = (dir_file){path, (int64_t)st.st_size, st.st_mtim};
        total += (int64_t)st.st_size;
    }
    closedir(d);
    if (n > 1) qsort(files, (size_t)n, sizeof *files, older_first);
    for (int i = 0; i < n && total + incoming > c->max_bytes; i++)
        if (unlink(files[i].path) == 0 || errno == ENOENT) total -= files[i].bytes;
    for (int i = 0; i < n; i++) free(files[i].path);
    free(files);
}

/* ------------------------------------------------------------------ saving */

static size_t record_bytes(const char *key) { return (20 + strlen(key) + 7) & ~(size_t)7; }

static uint64_t align_up(uint64_t v) { return (v + DATA_ALIGN - 1) / DATA_ALIGN * DATA_ALIGN; }

/* Every entry of the new file: the old file's entries this load used (stale
 * ones, e.g. of another oneDNN version, are dropped) and the added ones,
 * sorted, duplicate keys dropped (one copy kept). */
static cache_entry *entries_merge(const sd_weight_cache *c, int *n_out) {
    int n = 0;
    cache_entry *all = malloc((size_t)(c->n_found + c->n_added + 1) * sizeof *all);
    if (!all) return NULL;
    for (int i = 0; i < c->n_found; i++) {
        if (!c->found[i].used) continue;
        all[n] = c->found[i];
        all[n++].data = (const char *)c->map + c->found[i].offset;
    }
    memcpy(all + n, c->added, (size_t)c->n_added * sizeof *all);
    n += c->n_added;
    qsort(all, (size_t)n, sizeof *all, entry_cmp);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (k == 0 || strcmp(all[k - 1].key, all[i].key)) all[k++] = all[i];
    *n_out = k;
    return all;
}

static void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

/* Header + index into one buffer; assigns each entry's offset. */
static unsigned char *layout_build(const sd_weight_cache *c, cache_entry *e, int n, size_t *head_bytes,
                                   uint64_t *file_bytes) {
    size_t index_bytes = 0;
    for (int i = 0; i < n; i++) index_bytes += record_bytes(e[i].key);
    uint64_t data_offset = align_up(HEADER_BYTES + index_bytes), off = data_offset;
    for (int i = 0; i < n; i++) {
        e[i].offset = off;
        off = align_up(off + e[i].bytes);
    }
    *head_bytes = HEADER_BYTES + index_bytes;
    *file_bytes = n ? e[n - 1].offset + e[n - 1].bytes : data_offset;
    unsigned char *h = calloc(1, *head_bytes);
    if (!h) return NULL;
    memcpy(h, MAGIC, 8);
    put_u32(h + 8, FORMAT_VERSION);
    put_u32(h + 12, (uint32_t)n);
    put_u64(h + 16, index_bytes);
    put_u64(h + 24, data_offset);
    put_u64(h + 32, *file_bytes);
    memcpy(h + 40, c->identity, 32);
    unsigned char *p = h + HEADER_BYTES;
    for (int i = 0; i < n; i++) {
        size_t kl = strlen(e[i].key);
        put_u64(p, e[i].offset);
        put_u64(p + 8, e[i].bytes);
        put_u32(p + 16, (uint32_t)kl);
        memcpy(p + 20, e[i].key, kl);
        p += record_bytes(e[i].key);
    }
    return h;
}

static int write_zeros(FILE *fp, uint64_t n) {
    static const char zeros[DATA_ALIGN];
    while (n > 0) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (fwrite(zeros, 1, k, fp) != k) return -1;
        n -= k;
    }
    return 0;
}

static int file_write(const sd_weight_cache *c, const unsigned char *head, size_t head_bytes,
                      const cache_entry *e, int n, sd_error *err) {
    sd_atomic_file af;
    if (sd_atomic_open(&af, c->path, err)) return -1;
    uint64_t pos = head_bytes;
    int bad = fwrite(head, 1, head_bytes, af.fp) != head_bytes;
    for (int i = 0; i < n && !bad; i++) {
        bad = write_zeros(af.fp, e[i].offset - pos) || fwrite(e[i].data, 1, e[i].bytes, af.fp) != e[i].bytes;
        pos = e[i].offset + e[i].bytes;
    }
    if (bad) {
        int saved = errno;
        sd_atomic_abort(&af);
        return sd_fail(err, "weight cache: %s: write failed: %s", c->path, strerror(saved));
    }
    return sd_atomic_commit(&af, err);
}

int sd_weight_cache_save(sd_weight_cache *c, sd_error *err) {
    if (!c) return 0;
    if (!c->n_added) {
        if (c->map) utimensat(AT_FDCWD, c->path, NULL, 0); /* used now: last in line for eviction */
        return 0;
    }
    int n;
    cache_entry *all = entries_merge(c, &n);
    size_t head_bytes;
    uint64_t file_bytes;
    unsigned char *head = all ? layout_build(c, all, n, &head_bytes, &file_bytes) : NULL;
    if (!head) {
        free(all);
        return sd_fail(err, "weight cache: out of memory");
    }
    int rc = 0;
    struct statvfs vfs;
    if (file_bytes > (uint64_t)c->max_bytes) {
        snprintf(c->stats.skipped, sizeof c->stats.skipped, "%llu MB exceed the cache limit of %lld MB",
                 (unsigned long long)(file_bytes >> 20), (long long)(c->max_bytes >> 20));
    } else {
        cache_evict(c, (int64_t)file_bytes);
        if (statvfs(c->dir, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < file_bytes + DISK_MARGIN)
            snprintf(c->stats.skipped, sizeof c->stats.skipped, "%s: not enough free disk space for %llu MB",
                     c->dir, (unsigned long long)(file_bytes >> 20));
        else if (!(rc = file_write(c, head, head_bytes, all, n, err)))
            c->stats.saved = 1;
    }
    free(head);
    free(all);
    return rc;
}

/* ------------------------------------------------------------- file hashes */

static int is_hex64(const char *s, size_t n) {
    if (n != 64 && !(n == 65 && s[64] == '\n')) return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

int sd_weight_cache_file_sha256(const sd_weight_cache_options *opt, const char *path, char hex[65], sd_error *err) {
    char *dir = cache_dir_choose(opt), *hash_path = NULL, line[PATH_MAX + 128], id_hex[65], name[96];
    if (!dir || make_dirs(dir, NULL) || file_identity(line, sizeof line, path, NULL, NULL) ||
        sd_sha256_buffer(line, strlen(line), id_hex, NULL)) {
        free(dir); /* no usable folder (or an unreadable file: let the hash name it) */
        return sd_sha256_file(path, hex, err);
    }
    snprintf(name, sizeof name, "%.32s" HASH_SUFFIX, id_hex);
    hash_path = sd_path_join(dir, name);
    free(dir);
    char *text = NULL;
    size_t n = 0;
    if (hash_path && sd_read_file(hash_path, 256, &text, &n, NULL) == 0 && is_hex64(text, n)) {
        memcpy(hex, text, 64);
        hex[64] = 0;
        utimensat(AT_FDCWD, hash_path, NULL, 0); /* used: kept */
    } else if (sd_sha256_file(path, hex, err) == 0 && hash_path) {
        sd_atomic_file af;
        if (sd_atomic_open(&af, hash_path, NULL) == 0) { /* not stored is only slower next time */
            if (fprintf(af.fp, "%s\n", hex) == 65) sd_atomic_commit(&af, NULL);
            else sd_atomic_abort(&af);
        }
    } else {
        free(text), free(hash_path);
        return -1;
    }
    free(text);
    free(hash_path);
    return 0;
}
