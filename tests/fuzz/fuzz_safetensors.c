/* sdmoe-fuzz-libs: core
 *
 * Fuzzes core/safetensors st_open (header length, JSON header, dtypes,
 * shapes, offsets, overlap checks) and, on files it accepts, every reader
 * that trusts the validation: st_find, st_metadata, st_tensor_to_f32 /
 * st_tensor_to_i64, and sd_weights_open over the same file. */
#include <math.h>

#include "core/safetensors.h"
#include "core/weights.h"
#include "tests/fuzz/fuzz_common.h"

/* Tensors larger than this are not converted (the harness's own allocation
 * would dominate; the accepted span is still inside the mapping). */
#define FUZZ_MAX_CONVERT (1u << 20)

static void check_tensor(const st_file *f, const st_tensor *t) {
    FUZZ_ASSERT(t->name != NULL);
    FUZZ_ASSERT(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
    FUZZ_ASSERT((unsigned)t->dtype < ST_DTYPE_COUNT);
    FUZZ_ASSERT(t->nbytes == t->numel * st_dtype_size(t->dtype));
    const unsigned char *base = f->map, *p = t->data;
    FUZZ_ASSERT(p >= base && p + t->nbytes <= base + f->map_size);
    FUZZ_ASSERT(st_find(f, t->name) == t);
    if (t->numel > FUZZ_MAX_CONVERT) return;
    sd_error err = {0};
    float *fv = malloc((t->numel + 1) * sizeof *fv);
    int64_t *iv = malloc((t->numel + 1) * sizeof *iv);
    FUZZ_ASSERT(fv && iv);
    if (st_tensor_to_f32(f, t, fv, &err)) FUZZ_CHECK_ERROR(err);
    sd_error_clear(&err);
    if (st_tensor_to_i64(f, t, iv, &err)) FUZZ_CHECK_ERROR(err);
    free(fv);
    free(iv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_file ff;
    fuzz_file_open(&ff, data, size);
    st_file f;
    sd_error err = {0};
    if (st_open(&f, ff.path, &err) == 0) {
        for (int i = 0; i < f.n_tensors; i++) check_tensor(&f, &f.tensors[i]);
        for (int i = 1; i < f.n_tensors; i++)
            FUZZ_ASSERT(strcmp(f.tensors[i - 1].name, f.tensors[i].name) < 0);
        for (int i = 0; i < f.n_meta; i++) FUZZ_ASSERT(st_metadata(&f, f.meta_keys[i]) != NULL);
        FUZZ_ASSERT(st_find(&f, "\x01 not a tensor") == NULL || f.n_tensors > 0);
        st_close(&f);

        const char *paths[1] = {ff.path};
        sd_weights *w = NULL;
        sd_error_clear(&err);
        if (sd_weights_open(&w, paths, 1, &err) == 0) {
            FUZZ_ASSERT(sd_weights_file_count(w) == 1);
            sd_weights_free(w);
        } else {
            FUZZ_CHECK_ERROR(err);
        }
    } else {
        FUZZ_CHECK_ERROR(err);
        /* a refused file leaves *f zeroed */
        FUZZ_ASSERT(f.map == NULL && f.tensors == NULL && f.n_tensors == 0);
    }
    fuzz_file_close(&ff);
    return 0;
}
