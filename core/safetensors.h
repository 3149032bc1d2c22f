/* core/safetensors — memory-mapped reader and atomic writer for .safetensors.
 *
 * Byte layout: u64 little-endian N, then N bytes of JSON header
 *   { "__metadata__": {"k": "v", ...},
 *     "<name>": {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ... }
 * then the data section; offsets are relative to the start of the data section.
 *
 * st_open validates everything before any pointer is made: header length vs
 * file size, well-formed JSON, known dtypes, non-negative dims, dtype x shape
 * equal to the byte length (no overflow), offsets inside the data section and
 * no two tensors overlapping.  After that, st_tensor.data points straight into
 * the read-only mapping (zero copy).
 */
#ifndef SDMOE_CORE_SAFETENSORS_H
#define SDMOE_CORE_SAFETENSORS_H

#include <stddef.h>
#include <sys/stat.h>
#include <stdint.h>

#include "core/error.h"

#define ST_MAX_DIMS 8
/* A header larger than this is refused (real SD checkpoints have < 1 MB). */
#define ST_MAX_HEADER_BYTES (100u * 1024u * 1024u)

typedef enum st_dtype {
    ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL,
    ST_DTYPE_COUNT
} st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    const void *data;   /* into the mapping */
    size_t nbytes;
} st_tensor;

typedef struct st_file {
    char *path;
    void *map;
    size_t map_size;
    struct stat stat;       /* fstat of the file that was mapped (identity for caches) */
    int n_tensors;
    st_tensor *tensors;     /* sorted by name */
    int n_meta;
    char **meta_keys;       /* __metadata__ entries (string values only) */
    char **meta_values;
} st_file;

/* Opens and validates `path`. On failure *f is left zeroed and err names the
 * file and the offending tensor/field. */
int st_open(st_file *f, const char *path, sd_error *err);
void st_close(st_file *f);

/* Binary search by exact name; NULL if absent. */
const st_tensor *st_find(const st_file *f, const char *name);
/* Value of a __metadata__ key, or NULL. */
const char *st_metadata(const st_file *f, const char *key);

/* Drops this process's resident pages of [p, p + nbytes) when the range lies
 * wholly inside f's mapping (madvise MADV_DONTNEED on the whole pages inside
 * it; partial pages at either end are shared with neighbouring tensors and
 * kept).  For a tensor whose values have been copied elsewhere (a reordered
 * or converted copy): its file pages then stop counting in the RSS.  Reading
 * the range again stays correct (the kernel re-reads the file: the mapping is
 * read-only and private).  Returns the bytes released (0: no whole page
 * inside, or madvise refused), -1 if the range is not inside the mapping
 * (heap memory, another file, NULL): nothing is done then. */
int64_t st_release_pages(const st_file *f, const void *p, size_t nbytes);

size_t st_dtype_size(st_dtype dt);
const char *st_dtype_name(st_dtype dt);
/* Parses "F32", "F16", ...; returns -1 for an unknown name. */
int st_dtype_parse(const char *name);

/* Converts a floating tensor (F32/F16/BF16/F64) to float32 into dst (numel
 * floats).  Integer dtypes are refused with an error naming the tensor. */
int st_tensor_to_f32(const st_file *f, const st_tensor *t, float *dst, sd_error *err);
/* Reads an integer tensor (I64/I32/I16/I8/U8) as int64 into dst. */
int st_tensor_to_i64(const st_file *f, const st_tensor *t, int64_t *dst, sd_error *err);

/* ---- writer ---- */
typedef struct st_write_entry {
    const char *name;
    st_dtype dtype;           /* dtype of `data` as given, written as is */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_write_entry;

/* Writes the entries (in the given order; the header lists them sorted by
 * name like the reference writer) plus optional metadata key/value pairs to a
 * temporary file beside `path`, then renames it into place. Nothing is left
 * behind on failure. */
int st_write(const char *path, const st_write_entry *entries, int n,
             const char *const *meta_keys, const char *const *meta_values, int n_meta,
             sd_error *err);

#endif
