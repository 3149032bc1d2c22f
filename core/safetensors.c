#define _POSIX_C_SOURCE 200809L
#include "core/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "core/fileio.h"
#include "core/half.h"

static const char *const DTYPE_NAMES[ST_DTYPE_COUNT] = {
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"};
static const size_t DTYPE_SIZES[ST_DTYPE_COUNT] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};

size_t st_dtype_size(st_dtype dt) { return (unsigned)dt < ST_DTYPE_COUNT ? DTYPE_SIZES[dt] : 0; }
const char *st_dtype_name(st_dtype dt) { return (unsigned)dt < ST_DTYPE_COUNT ? DTYPE_NAMES[dt] : "?"; }

int st_dtype_parse(const char *name) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(name, DTYPE_NAMES[i]) == 0) return i;
    return -1;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

typedef struct span { uint64_t begin, end; int idx; } span;
static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* A JSON number that is a non-negative integer below 2^53 (exactly representable). */
static int json_u53(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740991.0 || floor(d) != d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static int parse_metadata(st_file *f, const cJSON *meta, sd_error *err) {
    if (!cJSON_IsObject(meta))
        return sd_fail(err, "%s: __metadata__: expected a JSON object", f->path);
    if (f->meta_keys) return sd_fail(err, "%s: __metadata__ appears twice in the header", f->path);
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_values = calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_values) return sd_fail(err, "%s: out of memory", f->path);
    for (const cJSON *it = meta->child; it; it = it->next) {
        if (!cJSON_IsString(it))
            return sd_fail(err, "%s: __metadata__.%s: expected a string value", f->path, it->string);
        f->meta_keys[f->n_meta] = dup_str(it->string);
        f->meta_values[f->n_meta] = dup_str(it->valuestring);
        if (!f->meta_keys[f->n_meta] || !f->meta_values[f->n_meta])
            return sd_fail(err, "%s: out of memory", f->path);
        f->n_meta++;
    }
    return 0;
}

/* 1 if s is well-formed UTF-8 (the reference reader refuses anything else). */
static int valid_utf8(const char *s) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t n = (utf8proc_ssize_t)strlen(s);
    while (n > 0) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p, n, &cp);
        if (k <= 0) return 0;
        p += k;
        n -= k;
    }
    return 1;
}

/* Validates one header entry and fills t (data pointer set by the caller). */
static int parse_entry(const st_file *f, const cJSON *e, uint64_t data_len, st_tensor *t,
                       uint64_t *begin, uint64_t *end, sd_error *err) {
    const char *name = e->string;
    if (!valid_utf8(name)) return sd_fail(err, "%s: a tensor name is not valid UTF-8", f->path);
    if (!cJSON_IsObject(e)) return sd_fail(err, "%s: tensor '%s': expected a JSON object", f->path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) return sd_fail(err, "%s: tensor '%s': missing string 'dtype'", f->path, name);
    int dti = st_dtype_parse(dt->valuestring);
    if (dti < 0)
        return sd_fail(err, "%s: tensor '%s': unknown dtype '%.32s' (expected F32, F16, BF16, F64, I64, I32, I16, I8, U8 or BOOL)",
                       f->path, name, dt->valuestring);
    if (!cJSON_IsArray(shape)) return sd_fail(err, "%s: tensor '%s': missing array 'shape'", f->path, name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > ST_MAX_DIMS)
        return sd_fail(err, "%s: tensor '%s': %d dimensions, expected at most %d", f->path, name, nd, ST_MAX_DIMS);
    uint64_t numel = 1;
    int i = 0;
    for (const cJSON *d = shape->child; d; d = d->next, i++) {
        uint64_t v;
        if (json_u53(d, &v))
            return sd_fail(err, "%s: tensor '%s': shape[%d] is not a non-negative integer", f->path, name, i);
        if (v && numel > UINT64_MAX / v)
            return sd_fail(err, "%s: tensor '%s': shape overflows", f->path, name);
        numel *= v;
        t->shape[i] = (int64_t)v;
    }
    t->ndim = nd;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        json_u53(offs->child, begin) || json_u53(offs->child->next, end))
        return sd_fail(err, "%s: tensor '%s': 'data_offsets' must be two non-negative integers", f->path, name);
    if (*end < *begin)
        return sd_fail(err, "%s: tensor '%s': data_offsets [%llu, %llu] end before begin", f->path, name,
                       (unsigned long long)*begin, (unsigned long long)*end);
    if (*end > data_len)
        return sd_fail(err, "%s: tensor '%s': data_offsets end %llu is past the data section (%llu bytes)",
                       f->path, name, (unsigned long long)*end, (unsigned long long)data_len);
    uint64_t es = DTYPE_SIZES[dti];
    if (numel > UINT64_MAX / es || numel * es != *end - *begin)
        return sd_fail(err, "%s: tensor '%s': %s x shape needs %llu bytes but data_offsets span %llu",
                       f->path, name, DTYPE_NAMES[dti], (unsigned long long)(numel * es),
                       (unsigned long long)(*end - *begin));
    t->dtype = (st_dtype)dti;
    t->numel = numel;
    t->nbytes = (size_t)(*end - *begin);
    t->name = dup_str(name);
    if (!t->name) return sd_fail(err, "%s: out of memory", f->path);
    return 0;
}

static int parse_header(st_file *f, const char *hdr, size_t hlen, uint64_t data_len,
                        const unsigned char *data, sd_error *err) {
    const char *endp = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, hlen, &endp, 0);
    if (!root)
        return sd_fail(err, "%s: header is not valid JSON (near byte %ld)", f->path,
                       (long)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - hdr : 0));
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = sd_fail(err, "%s: header: expected a JSON object", f->path);
        goto done;
    }
    int n = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)n + 1, sizeof(st_tensor));
    span *spans = calloc((size_t)n + 1, sizeof(span));
    if (!f->tensors || !spans) {
        free(spans);
        rc = sd_fail(err, "%s: out of memory", f->path);
        goto done;
    }
    for (const cJSON *e = root->child; e && !rc; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            rc = parse_metadata(f, e, err);
            continue;
        }
        st_tensor *t = &f->tensors[f->n_tensors];
        uint64_t b = 0, en = 0;
        rc = parse_entry(f, e, data_len, t, &b, &en, err);
        if (rc) break;
        t->data = data + b;
        spans[f->n_tensors] = (span){b, en, f->n_tensors};
        f->n_tensors++;
    }
    if (!rc) {
        qsort(spans, (size_t)f->n_tensors, sizeof(span), cmp_span);
        /* sorted by begin: a tensor overlaps an earlier one iff it starts
         * before the furthest end so far (empty tensors occupy nothing) */
        uint64_t max_end = 0;
        int max_idx = -1;
        for (int i = 0; i < f->n_tensors; i++) {
            if (spans[i].end == spans[i].begin) continue;
            if (max_idx >= 0 && spans[i].begin < max_end) {
                rc = sd_fail(err, "%s: tensors '%s' and '%s' overlap in the data section", f->path,
                             f->tensors[max_idx].name, f->tensors[spans[i].idx].name);
                break;
            }
            if (spans[i].end > max_end) {
                max_end = spans[i].end;
                max_idx = spans[i].idx;
            }
        }
    }
    free(spans);
    if (!rc) {
        qsort(f->tensors, (size_t)f->n_tensors, sizeof(st_tensor), cmp_tensor_name);
        for (int i = 1; i < f->n_tensors; i++)
            if (strcmp(f->tensors[i].name, f->tensors[i - 1].name) == 0) {
                rc = sd_fail(err, "%s: tensor '%s' appears twice in the header", f->path, f->tensors[i].name);
                break;
            }
    }
done:
    cJSON_Delete(root);
    return rc;
}

int st_open(st_file *f, const char *path, sd_error *err) {
    memset(f, 0, sizeof *f);
    f->path = dup_str(path);
    if (!f->path) return sd_fail(err, "%s: out of memory", path);
    struct stat pre;
    if (stat(path, &pre) == 0 && !S_ISREG(pre.st_mode)) {
        st_close(f);
        return sd_fail(err, "%s: not a regular file", path); /* a FIFO would block open */
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        int e = errno;
        st_close(f);
        return sd_fail(err, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        st_close(f);
        return sd_fail(err, "%s: not a regular file", path);
    }
    f->stat = st;
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        st_close(f);
        return sd_fail(err, "%s: file is %zu bytes, too short for a safetensors header (8-byte length expected)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        int e = errno;
        st_close(f);
        return sd_fail(err, "%s: cannot map: %s", path, strerror(e));
    }
    f->map = map;
    f->map_size = size;
    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > ST_MAX_HEADER_BYTES) {
        st_close(f);
        return sd_fail(err, "%s: header claims %llu bytes, more than the %u-byte limit", path,
                       (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
    }
    if (hlen > size - 8) {
        st_close(f);
        return sd_fail(err, "%s: header claims %llu bytes but the file has only %zu after the length", path,
                       (unsigned long long)hlen, size - 8);
    }
    if (parse_header(f, (const char *)p + 8, (size_t)hlen, size - 8 - hlen, p + 8 + hlen, err)) {
        st_close(f);
        return -1;
    }
    return 0;
}

void st_close(st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_size);
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    if (f->tensors) {
        /* a partially filled entry may own a name */
        free(f->tensors[f->n_tensors].name);
    }
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
    memset(f, 0, sizeof *f);
}

int64_t st_release_pages(const st_file *f, const void *p, size_t nbytes) {
    if (!f || !f->map || !p) return -1;
    uintptr_t lo = (uintptr_t)f->map, hi = lo + f->map_size, a = (uintptr_t)p;
    /* only a range wholly inside the read-only file mapping: never heap
     * memory, where MADV_DONTNEED would zero live data */
    if (a < lo || a > hi || nbytes > hi - a) return -1;
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t page = ps > 0 ? (uintptr_t)ps : 4096;
    uintptr_t first = (a + page - 1) & ~(page - 1), last = (a + nbytes) & ~(page - 1);
    if (last <= first) return 0; /* no whole page inside: neighbours share them */
    /* the mapping is PROT_READ + MAP_PRIVATE and never written, so no private
     * copies exist: a later read faults the file's bytes back in */
    if (madvise((void *)first, (size_t)(last - first), MADV_DONTNEED) != 0) return 0;
    return (int64_t)(last - first);
}

const st_tensor *st_find(const st_file *f, const char *name) {
    st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n_tensors, sizeof(st_tensor), cmp_tensor_name);
}

const char *st_metadata(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

int st_tensor_to_f32(const st_file *f, const st_tensor *t, float *dst, sd_error *err) {
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
    case ST_F32: memcpy(dst, t->data, n * 4); return 0;
    case ST_F16: sd_f16_to_f32_n(t->data, dst, n); return 0;
    case ST_BF16: sd_bf16_to_f32_n(t->data, dst, n); return 0;
    case ST_F64: {
        const unsigned char *p = t->data;
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    }
    default:
        return sd_fail(err, "%s: tensor '%s': dtype %s, expected a floating type (F32, F16, BF16)",
                       f ? f->path : "?", t->name, st_dtype_name(t->dtype));
    }
}

int st_tensor_to_i64(const st_file *f, const st_tensor *t, int64_t *dst, sd_error *err) {
    const unsigned char *p = t->data;
    for (size_t i = 0; i < t->numel; i++) {
        switch (t->dtype) {
        case ST_I64: memcpy(&dst[i], p + 8 * i, 8); break;
        case ST_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = v; break; }
        case ST_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = v; break; }
        case ST_I8: dst[i] = (int8_t)p[i]; break;
        case ST_U8: case ST_BOOL: dst[i] = p[i]; break;
        default:
            return sd_fail(err, "%s: tensor '%s': dtype %s, expected an integer type",
                           f ? f->path : "?", t->name, st_dtype_name(t->dtype));
        }
    }
    return 0;
}

/* ---- writer ---- */

static int cmp_entry_ptr(const void *a, const void *b) {
    return strcmp((*(const st_write_entry *const *)a)->name, (*(const st_write_entry *const *)b)->name);
}

int st_write(const char *path, const st_write_entry *entries, int n,
             const char *const *meta_keys, const char *const *meta_values, int n_meta,
             sd_error *err) {
    const st_write_entry **order = malloc(((size_t)n + 1) * sizeof *order);
    cJSON *root = cJSON_CreateObject();
    if (!order || !root) {
        free(order);
        cJSON_Delete(root);
        return sd_fail(err, "%s: out of memory", path);
    }
    for (int i = 0; i < n; i++) order[i] = &entries[i];
    qsort(order, (size_t)n, sizeof *order, cmp_entry_ptr);
    if (n_meta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(meta, meta_keys[i], meta_values[i]);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const st_write_entry *e = order[i];
        uint64_t numel = 1;
        cJSON *obj = cJSON_AddObjectToObject(root, e->name);
        cJSON_AddStringToObject(obj, "dtype", st_dtype_name(e->dtype));
        cJSON *shape = cJSON_AddArrayToObject(obj, "shape");
        for (int d = 0; d < e->ndim; d++) {
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
            numel *= (uint64_t)e->shape[d];
        }
        uint64_t nb = numel * st_dtype_size(e->dtype);
        cJSON *offs = cJSON_AddArrayToObject(obj, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    char *hdr = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!hdr) {
        free(order);
        return sd_fail(err, "%s: out of memory", path);
    }
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7; /* 8-byte aligned data */
    sd_atomic_file af = {0};
    if (sd_atomic_open(&af, path, err)) {
        free(hdr);
        free(order);
        return -1;
    }
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(lenbuf, 1, 8, af.fp) == 8 && fwrite(hdr, 1, hlen, af.fp) == hlen;
    for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', af.fp) != EOF;
    for (int i = 0; ok && i < n; i++) {
        const st_write_entry *e = order[i];
        uint64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) numel *= (uint64_t)e->shape[d];
        size_t nb = (size_t)(numel * st_dtype_size(e->dtype));
        ok = nb == 0 || fwrite(e->data, 1, nb, af.fp) == nb;
    }
    free(hdr);
    free(order);
    if (!ok) {
        sd_atomic_abort(&af);
        return sd_fail(err, "%s: write failed", path);
    }
    return sd_atomic_commit(&af, err);
}
