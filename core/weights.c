#define _POSIX_C_SOURCE 200809L
#include "core/weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/half.h"

typedef struct file_slot {
    st_file f;
    float **converted;   /* per tensor: f32 copy for f16/bf16 sources */
    float **transposed;  /* per tensor: transposed f32 copy (SD_MAP_TRANSPOSED views) */
    unsigned char *used; /* per tensor: bound or ignored */
} file_slot;

struct sd_weights {
    int n;
    file_slot *files;
};

int sd_weights_open(sd_weights **out, const char *const *paths, int n, sd_error *err) {
    *out = NULL;
    sd_weights *w = calloc(1, sizeof *w);
    if (!w || !(w->files = calloc((size_t)n + 1, sizeof(file_slot)))) {
        free(w);
        return sd_fail(err, "out of memory opening weights");
    }
    for (int i = 0; i < n; i++) {
        if (st_open(&w->files[i].f, paths[i], err)) {
            sd_weights_free(w);
            return -1;
        }
        w->n = i + 1;
        size_t nt = (size_t)w->files[i].f.n_tensors + 1;
        w->files[i].converted = calloc(nt, sizeof(float *));
        w->files[i].transposed = calloc(nt, sizeof(float *));
        w->files[i].used = calloc(nt, 1);
        if (!w->files[i].converted || !w->files[i].transposed || !w->files[i].used) {
            sd_weights_free(w);
            return sd_fail(err, "%s: out of memory", paths[i]);
        }
    }
    *out = w;
    return 0;
}

void sd_weights_free(sd_weights *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        file_slot *s = &w->files[i];
        for (int k = 0; s->converted && k < s->f.n_tensors; k++) free(s->converted[k]);
        for (int k = 0; s->transposed && k < s->f.n_tensors; k++) free(s->transposed[k]);
        free(s->converted);
        free(s->transposed);
        free(s->used);
        st_close(&s->f);
    }
    free(w->files);
    free(w);
}

int sd_weights_file_count(const sd_weights *w) { return w->n; }
const st_file *sd_weights_file(const sd_weights *w, int i) { return &w->files[i].f; }

static file_slot *find_slot(const sd_weights *w, const char *key, const st_tensor **t) {
    for (int i = 0; i < w->n; i++) {
        const st_tensor *x = st_find(&w->files[i].f, key);
        if (x) {
            *t = x;
            return &w->files[i];
        }
    }
    *t = NULL;
    return NULL;
}

const st_tensor *sd_weights_find(const sd_weights *w, const char *key, const st_file **file) {
    const st_tensor *t;
    file_slot *s = find_slot(w, key, &t);
    if (file) *file = s ? &s->f : NULL;
    return t;
}

void sd_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* Resolves a diffusers name to the file key; returns 0 or -1 (no mapping). */
static int resolve_key(const sd_binder *b, const char *name, char *key, size_t cap,
                       int *slice_index, int *slice_count) {
    char mapped[512];
    *slice_index = *slice_count = 0;
    if (b->map) {
        if (b->map(name, mapped, sizeof mapped, slice_index, slice_count)) return -1;
    } else {
        snprintf(mapped, sizeof mapped, "%s", name);
    }
    int k = snprintf(key, cap, "%s%s", b->prefix ? b->prefix : "", mapped);
    return (k < 0 || (size_t)k >= cap) ? -1 : 0;
}

static int tensor_index(const file_slot *s, const st_tensor *t) { return (int)(t - s->f.tensors); }

/* Drops trailing size-1 dims beyond `keep`. */
static int squeeze_ndim(int ndim, const int64_t *shape, int keep) {
    while (ndim > keep && shape[ndim - 1] == 1) ndim--;
    return ndim;
}

/* The one-time transposed f32 copy of a 2-D file tensor [r, c] -> [c, r]. */
static int transpose_now(file_slot *s, const st_tensor *st, sd_tensor *t, sd_error *err) {
    int idx = tensor_index(s, st);
    if (!s->transposed[idx]) {
        const int64_t r = st->shape[0], c = st->shape[1];
        float *src = malloc((size_t)st->numel * sizeof(float) + 1);
        float *dst = malloc((size_t)st->numel * sizeof(float) + 1);
        if (!src || !dst) {
            free(src), free(dst);
            return sd_fail(err, "%s: tensor '%s': out of memory transposing", s->f.path, st->name);
        }
        if (st_tensor_to_f32(&s->f, st, src, err)) {
            free(src), free(dst);
            return -1;
        }
        for (int64_t i = 0; i < r; i++)
            for (int64_t j = 0; j < c; j++) dst[j * r + i] = src[i * c + j];
        free(src);
        s->transposed[idx] = dst;
        st_release_pages(&s->f, st->data, st->nbytes); /* the f32 copy replaces the file's pages */
    }
    t->data = s->transposed[idx];
    return 0;
}

static int convert_now(file_slot *s, const st_tensor *st, sd_tensor *t, sd_error *err) {
    if (t->transposed) return transpose_now(s, st, t, err);
    int idx = tensor_index(s, st);
    if (!s->converted[idx]) {
        float *buf = malloc((size_t)st->numel * sizeof(float) + 1);
        if (!buf) return sd_fail(err, "%s: tensor '%s': out of memory converting to f32", s->f.path, st->name);
        if (st_tensor_to_f32(&s->f, st, buf, err)) {
            free(buf);
            return -1;
        }
        s->converted[idx] = buf;
        st_release_pages(&s->f, st->data, st->nbytes); /* the f32 copy replaces the file's pages */
    }
    t->data = s->converted[idx] + t->src_offset;
    return 0;
}

static int bind_impl(sd_binder *b, sd_tensor *t, const char *name, int ndim, const int64_t *shape,
                     int optional, sd_error *err) {
    memset(t, 0, sizeof *t);
    char key[640];
    int si, sc;
    const char *comp = b->component ? b->component : "model";
    if (resolve_key(b, name, key, sizeof key, &si, &sc)) {
        if (optional) return 1;
        return sd_fail(err, "%s: tensor '%s' has no counterpart in this checkpoint layout", comp, name);
    }
    if (sc < SD_MAP_TRANSPOSED || (sc > 0 && (si < 0 || si >= sc)))
        return sd_fail(err, "%s: tensor '%s': the name map gave slice %d of %d", comp, name, si, sc);
    const st_tensor *st;
    file_slot *s = find_slot(b->w, key, &st);
    if (!s) {
        if (optional) return 1;
        return sd_fail(err, "%s: %s: missing tensor '%s'", b->w->n ? b->w->files[0].f.path : "?", comp, key);
    }
    char got[128], want[128];
    sd_shape_str(got, sizeof got, st->ndim, st->shape);
    sd_shape_str(want, sizeof want, ndim, shape);
    if (st->dtype != ST_F32 && st->dtype != ST_F16 && st->dtype != ST_BF16)
        return sd_fail(err, "%s: %s: tensor '%s' has dtype %s, expected F32, F16 or BF16", s->f.path, comp, key,
                       st_dtype_name(st->dtype));
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    int ok;
    if (sc == SD_MAP_TRANSPOSED) { /* stored as the transpose of the declared 2-D shape */
        ok = ndim == 2 && st->ndim == 2 && st->shape[0] == shape[1] && st->shape[1] == shape[0];
    } else if (sc > 0) { /* row slice of a fused tensor: dim 0 is sc times larger */
        ok = st->ndim == ndim && st->shape[0] == shape[0] * sc;
        for (int i = 1; ok && i < ndim; i++) ok = st->shape[i] == shape[i];
    } else {
        int sn = squeeze_ndim(st->ndim, st->shape, ndim);
        ok = sn == ndim;
        for (int i = 0; ok && i < ndim; i++) ok = st->shape[i] == shape[i];
    }
    if (!ok && sc == SD_MAP_TRANSPOSED) {
        int64_t tr[2] = {ndim == 2 ? shape[1] : 0, shape[0]};
        char wt[128];
        sd_shape_str(wt, sizeof wt, 2, tr);
        return sd_fail(err, "%s: %s: tensor '%s' has shape %s, expected %s (stored transposed: the %s weight '%s')",
                       s->f.path, comp, key, got, wt, want, name);
    }
    if (!ok)
        return sd_fail(err, "%s: %s: tensor '%s' has shape %s, expected %s%s", s->f.path, comp, key, got, want,
                       sc > 0 ? " (as a row slice of a fused tensor)" : "");
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    t->numel = numel;
    t->owner = b->w;
    t->file = &s->f;
    t->src = st;
    t->src_offset = sc > 0 ? (int64_t)si * numel : 0;
    t->transposed = sc == SD_MAP_TRANSPOSED;
    s->used[tensor_index(s, st)] = 1;
    if (!t->transposed && st->dtype == ST_F32 && ((uintptr_t)st->data % sizeof(float)) == 0) {
        t->data = (const float *)st->data + t->src_offset;
        return 0;
    }
    if (b->lazy) return 0;
    return convert_now(s, st, t, err);
}

int sd_bind(sd_binder *b, sd_tensor *t, const char *name, int ndim, const int64_t *shape, sd_error *err) {
    return bind_impl(b, t, name, ndim, shape, 0, err);
}

int sd_bind_optional(sd_binder *b, sd_tensor *t, const char *name, int ndim, const int64_t *shape,
                     sd_error *err) {
    return bind_impl(b, t, name, ndim, shape, 1, err);
}

int sd_binder_has(sd_binder *b, const char *name) {
    char key[640];
    int si, sc;
    if (resolve_key(b, name, key, sizeof key, &si, &sc)) return 0;
    const st_tensor *st;
    return find_slot(b->w, key, &st) != NULL;
}

void sd_binder_ignore(sd_binder *b, const char *name) {
    char key[640];
    int si, sc;
    if (resolve_key(b, name, key, sizeof key, &si, &sc)) return;
    const st_tensor *st;
    file_slot *s = find_slot(b->w, key, &st);
    if (s) s->used[tensor_index(s, st)] = 1;
}

int sd_binder_check_complete(sd_binder *b, sd_error *err) {
    const char *prefix = b->prefix ? b->prefix : "";
    size_t pl = strlen(prefix);
    for (int i = 0; i < b->w->n; i++) {
        file_slot *s = &b->w->files[i];
        for (int k = 0; k < s->f.n_tensors; k++)
            if (!s->used[k] && strncmp(s->f.tensors[k].name, prefix, pl) == 0)
                return sd_fail(err, "%s: %s: unknown tensor '%s' (not part of the architecture the config describes)",
                               s->f.path, b->component ? b->component : "model", s->f.tensors[k].name);
    }
    return 0;
}

const float *sd_tensor_f32(sd_tensor *t, sd_error *err) {
    if (t->data) return t->data;
    if (!t->owner || !t->src) {
        sd_fail(err, "tensor not bound");
        return NULL;
    }
    for (int i = 0; i < t->owner->n; i++) {
        file_slot *s = &t->owner->files[i];
        if (&s->f == t->file) return convert_now(s, t->src, t, err) ? NULL : t->data;
    }
    sd_fail(err, "tensor '%s': source file not found", t->src->name);
    return NULL;
}

int sd_tensor_ready(const sd_tensor *t) { return t->data != NULL; }

size_t sd_weights_release_pages(const sd_weights *w, const void *p, size_t nbytes) {
    if (!w || !p) return 0;
    for (int i = 0; i < w->n; i++) {
        int64_t r = st_release_pages(&w->files[i].f, p, nbytes);
        if (r >= 0) return (size_t)r; /* inside this file's mapping */
    }
    return 0; /* not mapped (a converted copy, heap memory): left alone */
}

size_t sd_tensor_release_pages(const sd_tensor *t) {
    if (!t || !t->data || t->numel <= 0) return 0;
    return sd_weights_release_pages(t->owner, t->data, (size_t)t->numel * sizeof(float));
}
