/* core/weights — binding model tensors by name from one or more mapped
 * safetensors files (declare, bind, verify).
 *
 * A component loader (unet/, vae/, text_encoder/) asks for each tensor it
 * needs by its diffusers name with the shape it expects from the config;
 * the binder maps the name to the file's key (identity for diffusers folders,
 * an exact LDM table for single-file checkpoints), checks the shape and
 * dtype, and hands back an sd_tensor.  f32 data points straight into the
 * mapping; f16/bf16 are converted once into a buffer owned by sd_weights
 * (or, for lazy binders such as MoE experts, on first use).  After binding,
 * sd_binder_check_complete() reports any tensor under the component's prefix
 * that nobody asked for.
 */
#ifndef SDMOE_CORE_WEIGHTS_H
#define SDMOE_CORE_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/weight_cache.h"

#define SD_TENSOR_MAX_DIMS 4

typedef struct sd_weights sd_weights;

typedef struct sd_tensor {
    const float *data;                 /* f32 values; NULL until converted when lazy */
    int ndim;
    int64_t shape[SD_TENSOR_MAX_DIMS]; /* as the caller declared it */
    int64_t numel;
    sd_weights *owner;                 /* for lazy conversion */
    const st_file *file;               /* source file and tensor */
    const st_tensor *src;
    int64_t src_offset;                /* element offset inside src (row slices) */
    int transposed;                    /* src is stored as the transpose (SD_MAP_TRANSPOSED) */
} sd_tensor;

/* Maps a diffusers tensor name to the file key (the binder prefix is added after).
 * Returns 0 on success, -1 if the name has no counterpart.  A name that is a
 * row slice of a fused tensor (OpenCLIP in_proj: q, k, v = rows [0,h), [h,2h),
 * [2h,3h)) sets slice_index and slice_count: the view points into the file
 * tensor, no copy.  A 2-D name whose file tensor is stored transposed (OpenCLIP's
 * text_projection, used as x @ P where a Linear holds P^T) sets slice_count =
 * SD_MAP_TRANSPOSED: the binder then expects the file shape [shape[1], shape[0]]
 * and binds a transposed f32 copy made once and owned by sd_weights, like an
 * f16 conversion (on first sd_tensor_f32() for lazy binders).  Otherwise both
 * stay 0. */
#define SD_MAP_TRANSPOSED (-1)
typedef int (*sd_name_map_fn)(const char *name, char *out, size_t cap,
                              int *slice_index, int *slice_count);

typedef struct sd_binder {
    sd_weights *w;
    const char *component;  /* for messages, e.g. "unet" */
    const char *prefix;     /* file key prefix, "" for diffusers folders */
    sd_name_map_fn map;     /* NULL = identity */
    int lazy;               /* 1: convert f16/bf16 on first sd_tensor_f32() */
    sd_weight_cache *cache; /* prepared copies (oneDNN conv weights) found in / added to it; NULL = none */
} sd_binder;

/* Opens every path (all must be valid safetensors). */
int sd_weights_open(sd_weights **out, const char *const *paths, int n, sd_error *err);
void sd_weights_free(sd_weights *w);
int sd_weights_file_count(const sd_weights *w);
const st_file *sd_weights_file(const sd_weights *w, int i);
/* Finds a file key in any of the files; NULL if absent. */
const st_tensor *sd_weights_find(const sd_weights *w, const char *key, const st_file **file);

/* Binds `name` expecting `ndim` dims of `shape`.  A stored shape that equals
 * the expected one after dropping trailing 1s (LDM's [C,C,1,1] for a linear
 * [C,C]) is accepted.  Errors name the component, the key and got/expected. */
int sd_bind(sd_binder *b, sd_tensor *t, const char *name, int ndim, const int64_t *shape,
            sd_error *err);
/* Like sd_bind but a missing tensor is not an error: returns 1 and zeroes *t. */
int sd_bind_optional(sd_binder *b, sd_tensor *t, const char *name, int ndim,
                     const int64_t *shape, sd_error *err);
/* 1 if `name` maps to a tensor present in the files. */
int sd_binder_has(sd_binder *b, const char *name);
/* Marks a file key as deliberately ignored (e.g. position_ids). */
void sd_binder_ignore(sd_binder *b, const char *name);

/* Fails naming the first tensor under b->prefix that was never bound or
 * ignored ("unknown tensor").  Only keys of this component are considered;
 * for prefix "" that is every key of every file. */
int sd_binder_check_complete(sd_binder *b, sd_error *err);

/* f32 view of a bound tensor, converting a lazy one on first use (not thread
 * safe: call outside parallel regions).  NULL on conversion failure. */
const float *sd_tensor_f32(sd_tensor *t, sd_error *err);
/* 1 if the tensor's f32 data already exists (mapped f32 or converted). */
int sd_tensor_ready(const sd_tensor *t);

/* Releases the resident file pages behind f32 data that has been copied
 * elsewhere for good (a oneDNN weight reorder): madvise(MADV_DONTNEED) on the
 * whole pages of [p, p + nbytes), only when the range lies inside one of w's
 * file mappings (core/safetensors st_release_pages); anything else (a
 * converted f16/bf16 copy, heap memory, NULL) is left alone and 0 returned.
 * Reading the data again stays correct: the kernel re-reads the file.
 * Returns the bytes released.  f16/bf16 sources are released by the binder
 * itself once converted. */
size_t sd_weights_release_pages(const sd_weights *w, const void *p, size_t nbytes);
/* The same for a bound tensor's f32 data (t->numel floats at t->data). */
size_t sd_tensor_release_pages(const sd_tensor *t);

/* Shape formatting for messages: "[320, 4, 3, 3]". */
void sd_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

#endif
