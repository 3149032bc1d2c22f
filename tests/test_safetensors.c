/* core/safetensors: the fixture files open and read correctly; hostile
 * files written by the test itself are refused with a clear message. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "tests/support/test_support.h"

Test(safetensors, reads_fixture_text_encoder) {
    st_file f;
    tst_open_ref(&f, "tiny-sd15/text_encoder/model.safetensors");
    const st_tensor *t = st_find(&f, "text_model.embeddings.token_embedding.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, ST_F32);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 49408);
    cr_assert_eq(t->shape[1], 32);
    const st_tensor *p = st_find(&f, "text_model.embeddings.position_ids");
    cr_assert_not_null(p);
    int64_t ids[77];
    sd_error err = {0};
    cr_assert_eq(st_tensor_to_i64(&f, p, ids, &err), 0);
    for (int i = 0; i < 77; i++) cr_assert_eq(ids[i], i);
    st_close(&f);
}

Test(safetensors, f16_file_matches_f32_file) {
    st_file a, b;
    tst_open_ref(&a, "tiny-sd15/unet/diffusion_pytorch_model.safetensors");
    tst_open_ref(&b, "tiny-sd15/unet/diffusion_pytorch_model.fp16.safetensors");
    cr_assert_eq(a.n_tensors, b.n_tensors);
    const st_tensor *ta = st_find(&a, "conv_in.weight"), *tb = st_find(&b, "conv_in.weight");
    cr_assert_eq(tb->dtype, ST_F16);
    float *x = malloc(ta->numel * 4), *y = malloc(tb->numel * 4);
    sd_error err = {0};
    cr_assert_eq(st_tensor_to_f32(&a, ta, x, &err), 0);
    cr_assert_eq(st_tensor_to_f32(&b, tb, y, &err), 0);
    for (size_t i = 0; i < ta->numel; i++)
        cr_assert(fabsf(x[i] - y[i]) <= 1e-3f * fabsf(x[i]) + 1e-6f, "conv_in[%zu] %g vs %g", i, x[i], y[i]);
    free(x);
    free(y);
    st_close(&a);
    st_close(&b);
}

/* ---- hostile files ---- */

static char *write_raw(const char *name, const void *data, size_t n) {
    char *dir = tst_tmpdir();
    size_t len = strlen(dir) + strlen(name) + 2;
    char *path = malloc(len);
    snprintf(path, len, "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    if (n) fwrite(data, 1, n, fp);
    fclose(fp);
    free(dir);
    return path;
}

/* A file with the given header text, its true length, and `data_len` bytes of data. */
static char *write_with_header(const char *name, const char *hdr, size_t data_len) {
    size_t hl = strlen(hdr);
    unsigned char *buf = calloc(1, 8 + hl + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    char *p = write_raw(name, buf, 8 + hl + data_len);
    free(buf);
    return p;
}

static void expect_refused(const char *path, const char *needle) {
    st_file f;
    sd_error err = {0};
    int rc = st_open(&f, path, &err);
    cr_expect_neq(rc, 0, "%s: expected failure", path);
    cr_expect(strstr(err.msg, path) != NULL, "message should name the file: %s", err.msg);
    cr_expect(strstr(err.msg, needle) != NULL, "message should mention '%s': %s", needle, err.msg);
    unlink(path);
}

Test(safetensors_hostile, missing_file) {
    expect_refused("/nonexistent/x.safetensors", "cannot open");
}

Test(safetensors_hostile, truncated_length) {
    char *p = write_raw("t.safetensors", "\x10\x00\x00", 3);
    expect_refused(p, "too short");
    free(p);
}

Test(safetensors_hostile, header_past_eof) {
    unsigned char b[16] = {0xff, 0x00, 0x00, 0x00, 0, 0, 0, 0, '{', '}'};
    char *p = write_raw("h.safetensors", b, 10);
    expect_refused(p, "header claims");
    free(p);
}

Test(safetensors_hostile, huge_header_claim) {
    unsigned char b[16] = {0x00, 0x00, 0x80, 0x0c, 0, 0, 0, 0, '{', '}'}; /* ~200 MB */
    char *p = write_raw("huge.safetensors", b, 10);
    expect_refused(p, "limit");
    free(p);
}

Test(safetensors_hostile, not_json) {
    char *p = write_with_header("nj.safetensors", "{\"a\": [1, 2", 0);
    expect_refused(p, "not valid JSON");
    free(p);
}

Test(safetensors_hostile, offsets_out_of_range) {
    char *p = write_with_header("o.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
    expect_refused(p, "past the data section");
    free(p);
}

Test(safetensors_hostile, overlapping) {
    char *p = write_with_header("ov.safetensors",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
    expect_refused(p, "overlap");
    free(p);
}

Test(safetensors_hostile, end_before_begin) {
    char *p = write_with_header("eb.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8);
    expect_refused(p, "end before begin");
    free(p);
}

Test(safetensors_hostile, unknown_dtype) {
    char *p = write_with_header("ud.safetensors", "{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_refused(p, "unknown dtype");
    free(p);
}

Test(safetensors_hostile, shape_bytes_mismatch) {
    char *p = write_with_header("sb.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
    expect_refused(p, "needs 12 bytes");
    free(p);
}

Test(safetensors_hostile, negative_dim) {
    char *p = write_with_header("nd.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
    expect_refused(p, "shape[0]");
    free(p);
}

Test(safetensors_hostile, overflowing_dims) {
    char *p = write_with_header("of.safetensors",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 8);
    expect_refused(p, "overflow");
    free(p);
}

Test(safetensors_hostile, header_not_object) {
    char *p = write_with_header("arr.safetensors", "[1,2,3]", 0);
    expect_refused(p, "expected a JSON object");
    free(p);
}

Test(safetensors, write_then_read_roundtrip) {
    char *dir = tst_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[2] = {0x3c00, 0xc000}; /* 1.0, -2.0 in f16 */
    st_write_entry e[2] = {
        {.name = "b.half", .dtype = ST_F16, .ndim = 1, .shape = {2}, .data = h},
        {.name = "a.w", .dtype = ST_F32, .ndim = 2, .shape = {2, 3}, .data = a},
    };
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    sd_error err = {0};
    cr_assert_eq(st_write(path, e, 2, mk, mv, 1, &err), 0, "%s", err.msg);
    st_file f;
    cr_assert_eq(st_open(&f, path, &err), 0, "%s", err.msg);
    cr_assert_str_eq(st_metadata(&f, "format"), "pt");
    const st_tensor *ta = st_find(&f, "a.w"), *tb = st_find(&f, "b.half");
    cr_assert_eq(ta->shape[1], 3);
    float got[6];
    cr_assert_eq(st_tensor_to_f32(&f, ta, got, &err), 0);
    cr_assert_arr_eq(got, a, sizeof a);
    cr_assert_eq(st_tensor_to_f32(&f, tb, got, &err), 0);
    cr_assert_float_eq(got[0], 1.0f, 0);
    cr_assert_float_eq(got[1], -2.0f, 0);
    st_close(&f);
    unlink(path);
    rmdir(dir);
    free(dir);
}

/* st_release_pages drops the resident pages of a mapped tensor (whole pages
 * only); the values read back unchanged; pointers outside the mapping are
 * refused untouched. */
Test(safetensors, release_pages_keeps_values) {
    st_file f;
    tst_open_ref(&f, "tiny-sd15/text_encoder/model.safetensors");
    const st_tensor *t = st_find(&f, "text_model.embeddings.token_embedding.weight");
    cr_assert_not_null(t);
    float *copy = malloc(t->nbytes);
    memcpy(copy, t->data, t->nbytes);
    int64_t released = st_release_pages(&f, t->data, t->nbytes);
    long ps = sysconf(_SC_PAGESIZE);
    /* 49408 x 32 floats = 6.3 MB: all but at most the two end pages */
    cr_assert_geq(released, (int64_t)t->nbytes - 2 * ps, "released %lld of %zu", (long long)released, t->nbytes);
    cr_assert_eq(released % ps, 0);
    cr_assert(memcmp(copy, t->data, t->nbytes) == 0, "values changed after release");
    /* heap memory, NULL and a range running past the mapping are refused */
    cr_assert_eq(st_release_pages(&f, copy, t->nbytes), -1);
    for (size_t i = 0; i < 16; i++) cr_assert_eq(((float *)copy)[i], ((const float *)t->data)[i]);
    cr_assert_eq(st_release_pages(&f, NULL, 16), -1);
    cr_assert_eq(st_release_pages(&f, t->data, (size_t)1 << 40), -1);
    /* a range smaller than a page releases nothing */
    cr_assert_eq(st_release_pages(&f, t->data, 64), 0);
    free(copy);
    st_close(&f);
}
