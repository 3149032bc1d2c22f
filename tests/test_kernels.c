/* Fast core/kernels against the plain references in tests/kernel_ref.c on
 * odd sizes (not multiples of any vector width or block size). */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels.h"
#include "kernel_ref.c"
#include "support/test_support.h"

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static float frand(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(g_rng >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static float *rand_buf(int64_t n, float amp) {
    float *p = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) p[i] = amp * frand();
    return p;
}

static float *zeros(int64_t n) { return calloc((size_t)n, sizeof(float)); }

Test(kernels, gemm_all_transposes) {
    int64_t M = 37, N = 29, K = 53, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            float *A = rand_buf((ta ? K : M) * lda, 1), *B = rand_buf((tb ? N : K) * ldb, 1);
            float *C = rand_buf(M * ldc, 1), *R = malloc((size_t)(M * ldc) * sizeof(float));
            memcpy(R, C, (size_t)(M * ldc) * sizeof(float));
            sd_gemm(ta, tb, M, N, K, 0.7f, A, lda, B, ldb, 0.5f, C, ldc);
            ref_gemm(ta, tb, M, N, K, 0.7f, A, lda, B, ldb, 0.5f, R, ldc);
            tst_check_close("gemm", C, R, (size_t)(M * ldc), 1e-5, 0);
            free(A), free(B), free(C), free(R);
        }
}

Test(kernels, gemm_inside_parallel_region) {
    int64_t M = 19, N = 23, K = 41;
    float *A = rand_buf(M * K, 1), *B = rand_buf(N * K, 1);
    float *C = zeros(4 * M * N), *R = zeros(M * N);
    ref_gemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, R, N);
    #pragma omp parallel for num_threads(2)
    for (int t = 0; t < 4; t++) sd_gemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C + t * M * N, N);
    for (int t = 0; t < 4; t++) tst_check_close("gemm in omp", C + t * M * N, R, (size_t)(M * N), 1e-5, 0);
    free(A), free(B), free(C), free(R);
}

Test(kernels, linear_bias_strides_accumulate) {
    int64_t n = 33, in = 45, out = 27, ldx = 50, ldy = 31;
    float *x = rand_buf(n * ldx, 1), *W = rand_buf(out * in, 1), *b = rand_buf(out, 1);
    float *xc = malloc((size_t)(n * in) * sizeof(float));
    for (int64_t r = 0; r < n; r++) memcpy(xc + r * in, x + r * ldx, (size_t)in * sizeof(float));
    float *y = zeros(n * out), *r = zeros(n * out);
    sd_linear(xc, W, b, n, in, out, y);
    ref_linear(xc, W, b, n, in, out, r);
    tst_check_close("linear+bias", y, r, (size_t)(n * out), 1e-5, 0);
    sd_linear(xc, W, NULL, n, in, out, y);
    ref_linear(xc, W, NULL, n, in, out, r);
    tst_check_close("linear", y, r, (size_t)(n * out), 1e-5, 0);
    /* strided, accumulating into y0 */
    float *y0 = rand_buf(n * ldy, 1), *ys = malloc((size_t)(n * ldy) * sizeof(float));
    memcpy(ys, y0, (size_t)(n * ldy) * sizeof(float));
    sd_linear_ex(x, ldx, W, b, n, in, out, ys, ldy, 1);
    ref_linear(xc, W, b, n, in, out, r);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < ldy; j++) {
            float want = y0[i * ldy + j] + (j < out ? r[i * out + j] : 0.0f);
            cr_assert(fabsf(ys[i * ldy + j] - want) < 1e-5f, "linear_ex at %lld,%lld", (long long)i, (long long)j);
        }
    free(x), free(W), free(b), free(xc), free(y), free(r), free(y0), free(ys);
}

static void check_conv(int64_t n, int64_t h, int64_t w, int64_t ci, int64_t co, int64_t k,
                       int64_t s, int64_t pt, int64_t pl, int64_t pb, int64_t pr, int with_bias) {
    sd_conv2d_desc d = {ci, co, k, k, s, s, pt, pl, pb, pr};
    float *wt = rand_buf(co * ci * k * k, 0.5f), *bias = with_bias ? rand_buf(co, 1) : NULL;
    float *x = rand_buf(n * h * w * ci, 1);
    sd_conv2d *c;
    sd_error err = {0};
    cr_assert_eq(sd_conv2d_create(&c, &d, wt, bias, &err), 0, "%s", err.msg);
    int64_t oh, ow;
    sd_conv2d_out_size(c, h, w, &oh, &ow);
    float *y = zeros(n * oh * ow * co), *r = zeros(n * oh * ow * co);
    cr_assert_eq(sd_conv2d_forward(c, x, n, h, w, y, &err), 0, "%s", err.msg);
    ref_conv2d(x, n, h, w, ci, wt, bias, co, k, k, s, s, pt, pl, pb, pr, r);
    tst_check_close("conv2d", y, r, (size_t)(n * oh * ow * co), 1e-4, 0);
    /* second shape through the same object (cached primitives per shape) */
    int64_t h2 = h + 3, w2 = w + 1, oh2, ow2;
    sd_conv2d_out_size(c, h2, w2, &oh2, &ow2);
    float *x2 = rand_buf(h2 * w2 * ci, 1), *y2 = zeros(oh2 * ow2 * co), *r2 = zeros(oh2 * ow2 * co);
    cr_assert_eq(sd_conv2d_forward(c, x2, 1, h2, w2, y2, &err), 0, "%s", err.msg);
    ref_conv2d(x2, 1, h2, w2, ci, wt, bias, co, k, k, s, s, pt, pl, pb, pr, r2);
    tst_check_close("conv2d shape 2", y2, r2, (size_t)(oh2 * ow2 * co), 1e-4, 0);
    cr_assert_eq(sd_conv2d_forward(c, x, n, h, w, y, &err), 0, "%s", err.msg);
    tst_check_close("conv2d again", y, r, (size_t)(n * oh * ow * co), 1e-4, 0);
    sd_conv2d_free(c);
    free(wt), free(bias), free(x), free(y), free(r), free(x2), free(y2), free(r2);
}

Test(kernels, conv2d_shapes) {
    check_conv(2, 9, 11, 5, 7, 3, 1, 1, 1, 1, 1, 1);   /* 3x3 same */
    check_conv(2, 9, 11, 13, 6, 3, 2, 1, 1, 1, 1, 1);  /* stride-2 down (UNet) */
    check_conv(1, 9, 12, 6, 6, 3, 2, 0, 0, 1, 1, 1);   /* VAE encoder: pad right/bottom only */
    check_conv(2, 7, 5, 19, 11, 1, 1, 0, 0, 0, 0, 1);  /* 1x1 shortcut */
    check_conv(1, 8, 6, 3, 9, 3, 1, 1, 1, 1, 1, 0);    /* no bias, 3 input channels */
    check_conv(2, 6, 10, 40, 36, 3, 1, 1, 1, 1, 1, 1); /* wider channels (blocked paths) */
}

Test(kernels, conv2d_strided_io_and_accumulate) {
    int64_t n = 2, h = 7, w = 9, ci = 10, co = 12, x_ld = 17, y_ld = 20;
    sd_conv2d_desc d = {ci, co, 3, 3, 1, 1, 1, 1, 1, 1};
    float *wt = rand_buf(co * ci * 9, 0.5f), *bias = rand_buf(co, 1);
    float *x = rand_buf(n * h * w * x_ld, 1), *xc = zeros(n * h * w * ci);
    for (int64_t p = 0; p < n * h * w; p++) memcpy(xc + p * ci, x + p * x_ld, (size_t)ci * sizeof(float));
    float *y0 = rand_buf(n * h * w * y_ld, 1), *y = malloc((size_t)(n * h * w * y_ld) * sizeof(float));
    memcpy(y, y0, (size_t)(n * h * w * y_ld) * sizeof(float));
    float *r = zeros(n * h * w * co);
    sd_conv2d *c;
    sd_error err = {0};
    cr_assert_eq(sd_conv2d_create(&c, &d, wt, bias, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_conv2d_forward_ex(c, x, x_ld, n, h, w, y, y_ld, 1, &err), 0, "%s", err.msg);
    ref_conv2d(xc, n, h, w, ci, wt, bias, co, 3, 3, 1, 1, 1, 1, 1, 1, r);
    for (int64_t p = 0; p < n * h * w; p++)
        for (int64_t j = 0; j < y_ld; j++) {
            float want = y0[p * y_ld + j] + (j < co ? r[p * co + j] : 0.0f);
            cr_assert(fabsf(y[p * y_ld + j] - want) < 1e-4f, "conv accumulate at %lld,%lld", (long long)p, (long long)j);
        }
    sd_conv2d_free(c);
    free(wt), free(bias), free(x), free(xc), free(y0), free(y), free(r);
}

Test(kernels, group_norm_and_layer_norm) {
    int64_t n = 2, hw = 77, c = 24;
    int groups = 6;
    float *x = rand_buf(n * hw * c, 2), *g = rand_buf(c, 1), *b = rand_buf(c, 1);
    for (int64_t i = 0; i < n * hw * c; i++) x[i] += 3.0f; /* non-zero mean */
    float *y = zeros(n * hw * c), *r = zeros(n * hw * c);
    for (int silu = 0; silu < 2; silu++) {
        sd_group_norm(x, n, hw, c, groups, 1e-5f, g, b, y, silu);
        ref_group_norm(x, n, hw, c, groups, 1e-5f, g, b, r, silu);
        tst_check_close("group_norm", y, r, (size_t)(n * hw * c), 1e-5, 0);
    }
    /* large image: more pixels than reduction chunks; in place */
    int64_t hw2 = 1031;
    float *x2 = rand_buf(hw2 * c, 1), *r2 = zeros(hw2 * c);
    ref_group_norm(x2, 1, hw2, c, 3, 1e-6f, g, b, r2, 1);
    sd_group_norm(x2, 1, hw2, c, 3, 1e-6f, g, b, x2, 1);
    tst_check_close("group_norm in place", x2, r2, (size_t)(hw2 * c), 1e-5, 0);
    int64_t rows = 13, d = 75;
    float *lx = rand_buf(rows * d, 2), *lg = rand_buf(d, 1), *lb = rand_buf(d, 1);
    float *ly = zeros(rows * d), *lr = zeros(rows * d);
    sd_layer_norm(lx, rows, d, lg, lb, 1e-5f, ly);
    ref_layer_norm(lx, rows, d, lg, lb, 1e-5f, lr);
    tst_check_close("layer_norm", ly, lr, (size_t)(rows * d), 1e-5, 0);
    free(x), free(g), free(b), free(y), free(r), free(x2), free(r2);
    free(lx), free(lg), free(lb), free(ly), free(lr);
}

Test(kernels, activations) {
    int64_t n = 100003;
    float *x = rand_buf(n, 12), *y = zeros(n), *r = zeros(n);
    sd_silu(x, y, n);
    ref_silu(x, r, n);
    tst_check_close("silu", y, r, (size_t)n, 2e-6, 0);
    sd_gelu_erf(x, y, n);
    ref_gelu_erf(x, r, n);
    tst_check_close("gelu_erf", y, r, (size_t)n, 2e-6, 0);
    sd_quick_gelu(x, y, n);
    ref_quick_gelu(x, r, n);
    tst_check_close("quick_gelu", y, r, (size_t)n, 2e-6, 0);
    int64_t rows = 37, inner = 53;
    float *hg = rand_buf(rows * 2 * inner, 4), *gy = zeros(rows * inner), *gr = zeros(rows * inner);
    sd_geglu(hg, rows, inner, gy);
    ref_geglu(hg, rows, inner, gr);
    tst_check_close("geglu", gy, gr, (size_t)(rows * inner), 1e-5, 0);
    sd_geglu(hg, rows, inner, hg); /* in place */
    tst_check_close("geglu in place", hg, gr, (size_t)(rows * inner), 1e-5, 0);
    free(x), free(y), free(r), free(hg), free(gy), free(gr);
}

Test(kernels, attention_strided_and_causal) {
    int64_t batch = 2, nq = 131, nk = 77, dh = 8;
    int heads = 3;
    int64_t hd = heads * dh, q_ld = 3 * hd; /* q, k, v interleaved like a fused QKV */
    float *qkv = rand_buf(batch * nq * q_ld, 1.5f);
    float *kv = rand_buf(batch * nk * 2 * hd, 1.5f);
    float *o = zeros(batch * nq * hd), *r = zeros(batch * nq * hd);
    float *scratch = malloc((size_t)sd_attention_scratch_floats(nq, nk, dh) * sizeof(float));
    float scale = 1.0f / sqrtf((float)dh);
    sd_attention(qkv, q_ld, kv, 2 * hd, kv + hd, 2 * hd, batch, nq, nk, heads, dh, scale, 0, o, hd, scratch);
    ref_attention(qkv, q_ld, kv, 2 * hd, kv + hd, 2 * hd, batch, nq, nk, heads, dh, scale, 0, r, hd);
    tst_check_close("attention cross", o, r, (size_t)(batch * nq * hd), 1e-5, 0);
    /* self attention with a causal mask (CLIP), NULL scratch path */
    sd_attention(qkv, q_ld, qkv + hd, q_ld, qkv + 2 * hd, q_ld, batch, nq, nq, heads, dh, scale, 1, o, hd, NULL);
    ref_attention(qkv, q_ld, qkv + hd, q_ld, qkv + 2 * hd, q_ld, batch, nq, nq, heads, dh, scale, 1, r, hd);
    tst_check_close("attention causal", o, r, (size_t)(batch * nq * hd), 1e-5, 0);
    /* bytes identical run to run */
    float *o2 = zeros(batch * nq * hd);
    sd_attention(qkv, q_ld, qkv + hd, q_ld, qkv + 2 * hd, q_ld, batch, nq, nq, heads, dh, scale, 1, o2, hd, NULL);
    cr_assert(memcmp(o, o2, (size_t)(batch * nq * hd) * sizeof(float)) == 0, "attention not deterministic");
    free(qkv), free(kv), free(o), free(r), free(scratch), free(o2);
}

Test(kernels, layout_and_upsample) {
    int64_t n = 2, c = 5, h = 3, w = 7;
    float *x = rand_buf(n * c * h * w, 1), *y = zeros(n * c * h * w), *r = zeros(n * c * h * w);
    float *back = zeros(n * c * h * w);
    sd_nchw_to_nhwc(x, n, c, h, w, y);
    ref_nchw_to_nhwc(x, n, c, h, w, r);
    cr_assert(memcmp(y, r, (size_t)(n * c * h * w) * sizeof(float)) == 0, "nchw_to_nhwc");
    sd_nhwc_to_nchw(y, n, h, w, c, back);
    cr_assert(memcmp(x, back, (size_t)(n * c * h * w) * sizeof(float)) == 0, "nhwc_to_nchw");
    static const int64_t sizes[][4] = {{3, 7, 6, 14}, {1, 2, 2, 3}, {2, 3, 4, 6}, {3, 5, 7, 9}};
    for (int t = 0; t < 4; t++) {
        int64_t ih = sizes[t][0], iw = sizes[t][1], oh = sizes[t][2], ow = sizes[t][3], ld = c + 4;
        float *src = rand_buf(n * ih * iw * c, 1);
        float *up = zeros(n * oh * ow * ld), *ur = zeros(n * oh * ow * c);
        sd_upsample_nearest(src, n, ih, iw, c, up, oh, ow, ld);
        ref_upsample_nearest(src, n, ih, iw, c, ur, oh, ow);
        for (int64_t p = 0; p < n * oh * ow; p++)
            cr_assert(memcmp(up + p * ld, ur + p * c, (size_t)c * sizeof(float)) == 0, "upsample %d", t);
        free(src), free(up), free(ur);
    }
    float *cat = zeros(n * h * w * (c + 2)), *b2 = rand_buf(n * h * w * 2, 1);
    sd_concat_channels(y, c, b2, 2, n * h * w, cat);
    for (int64_t p = 0; p < n * h * w; p++) {
        cr_assert(memcmp(cat + p * (c + 2), y + p * c, (size_t)c * sizeof(float)) == 0);
        cr_assert(memcmp(cat + p * (c + 2) + c, b2 + p * 2, 2 * sizeof(float)) == 0);
    }
    free(x), free(y), free(r), free(back), free(cat), free(b2);
}

Test(kernels, threads) {
    cr_assert_geq(sd_default_threads(), 1);
    int before = sd_get_threads();
    sd_set_threads(1);
    cr_assert_eq(sd_get_threads(), 1);
    cr_assert_eq(omp_get_max_threads(), 1);
    sd_set_threads(before);
}

/* ------------------------------------------------------- blocked layouts */

static const int k_layouts[] = {0, 1, 8, 16}; /* NHWC, NCHW, nChw8c, nChw16c */

/* a (layout blk) equals b (layout blk) exactly, padding lanes included. */
static void assert_same(const char *what, const float *a, const float *b, int64_t nfl) {
    for (int64_t i = 0; i < nfl; i++)
        cr_assert(a[i] == b[i], "%s: index %lld: %g vs %g", what, (long long)i, a[i], b[i]);
}

Test(kernels, layout_offsets_and_convert) {
    int64_t n = 2, c = 13, hw = 7 * 5; /* c not a multiple of 8 or 16 */
    float *x = rand_buf(n * c * hw, 1);
    for (int i = 0; i < 4; i++) {
        int bi = k_layouts[i];
        cr_assert_eq(sd_layout_floats(bi, n, c, hw), ref_layout_size(bi, n, c, hw));
        for (int64_t b = 0; b < n; b++)
            for (int64_t ch = 0; ch < c; ch++)
                for (int64_t p = 0; p < hw; p += 3)
                    cr_assert_eq(sd_layout_offset(bi, c, hw, b, ch, p), ref_layout_index(bi, c, hw, b, ch, p));
        float *xi = malloc((size_t)ref_layout_size(bi, n, c, hw) * sizeof(float));
        ref_to_layout(x, bi, n, c, hw, xi);
        for (int j = 0; j < 4; j++) {
            int bo = k_layouts[j];
            int64_t no = ref_layout_size(bo, n, c, hw);
            float *want = malloc((size_t)no * sizeof(float)), *got = malloc((size_t)no * sizeof(float));
            ref_to_layout(x, bo, n, c, hw, want);
            for (int64_t t = 0; t < no; t++) got[t] = 99.0f; /* padding must be overwritten with 0 */
            sd_layout_convert(xi, bi, got, bo, n, c, hw, 0);
            assert_same("layout_convert", got, want, no);
            sd_layout_convert(xi, bi, got, bo, n, c, hw, 1); /* accumulate: 2x */
            for (int64_t t = 0; t < no; t++) want[t] *= 2.0f;
            assert_same("layout_convert accumulate", got, want, no);
            free(want), free(got);
        }
        free(xi);
    }
    free(x);
}

Test(kernels, group_norm_layouts) {
    int64_t n = 2, c = 24, hw = 37;
    int groups = 6;
    float *x = rand_buf(n * hw * c, 2), *g = rand_buf(c, 1), *b = rand_buf(c, 1), *r = zeros(n * hw * c);
    ref_group_norm(x, n, hw, c, groups, 1e-6f, g, b, r, 1);
    int lays[] = {0, 8, 16};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            int bi = lays[i], bo = lays[j];
            float *xi = malloc((size_t)ref_layout_size(bi, n, c, hw) * sizeof(float));
            float *yo = malloc((size_t)ref_layout_size(bo, n, c, hw) * sizeof(float));
            float *want = malloc((size_t)ref_layout_size(bo, n, c, hw) * sizeof(float));
            ref_to_layout(x, bi, n, c, hw, xi);
            ref_to_layout(r, bo, n, c, hw, want);
            sd_group_norm_ex(xi, bi, yo, bo, n, hw, c, groups, 1e-6f, g, b, 1);
            tst_check_close("group_norm_ex", yo, want, (size_t)ref_layout_size(bo, n, c, hw), 1e-5, 0);
            free(xi), free(yo), free(want);
        }
    /* padded channels (c = 20 in blocks of 8 / 16): padding lanes come out 0 */
    int64_t c2 = 20;
    float *x2 = rand_buf(n * hw * c2, 1), *r2 = zeros(n * hw * c2);
    ref_group_norm(x2, n, hw, c2, 5, 1e-5f, NULL, NULL, r2, 0);
    for (int i = 1; i < 3; i++) {
        int bl = lays[i];
        int64_t nf = ref_layout_size(bl, n, c2, hw);
        float *xi = malloc((size_t)nf * sizeof(float)), *want = malloc((size_t)nf * sizeof(float));
        ref_to_layout(x2, bl, n, c2, hw, xi);
        ref_to_layout(r2, bl, n, c2, hw, want);
        sd_group_norm_ex(xi, bl, xi, bl, n, hw, c2, 5, 1e-5f, NULL, NULL, 0); /* in place */
        tst_check_close("group_norm_ex padded", xi, want, (size_t)nf, 1e-5, 0);
        free(xi), free(want);
    }
    free(x), free(g), free(b), free(r), free(x2), free(r2);
}

Test(kernels, channel_vec_upsample_concat_layouts) {
    int64_t n = 2, ca = 16, cb = 11, h = 3, w = 5, oh = 6, ow = 9;
    float *a = rand_buf(n * h * w * ca, 1), *bb = rand_buf(n * h * w * cb, 1), *vec = rand_buf(ca, 1);
    for (int i = 0; i < 4; i++) {
        int bl = k_layouts[i];
        /* per-channel add */
        float *ai = malloc((size_t)ref_layout_size(bl, n, ca, h * w) * sizeof(float));
        float *want = malloc((size_t)ref_layout_size(bl, n, ca, h * w) * sizeof(float));
        float *a2 = malloc((size_t)(n * h * w * ca) * sizeof(float));
        for (int64_t p = 0; p < n * h * w; p++)
            for (int64_t ch = 0; ch < ca; ch++) a2[p * ca + ch] = a[p * ca + ch] + vec[ch];
        ref_to_layout(a, bl, n, ca, h * w, ai);
        ref_to_layout(a2, bl, n, ca, h * w, want);
        sd_add_channel_vec(ai, bl, n, ca, h * w, vec);
        assert_same("add_channel_vec", ai, want, ref_layout_size(bl, n, ca, h * w));
        /* upsample */
        float *bi = malloc((size_t)ref_layout_size(bl, n, cb, h * w) * sizeof(float));
        ref_to_layout(bb, bl, n, cb, h * w, bi);
        float *up = malloc((size_t)(n * oh * ow * cb) * sizeof(float));
        ref_upsample_nearest(bb, n, h, w, cb, up, oh, ow);
        int64_t nu = ref_layout_size(bl, n, cb, oh * ow);
        float *upw = malloc((size_t)nu * sizeof(float)), *upg = malloc((size_t)nu * sizeof(float));
        ref_to_layout(up, bl, n, cb, oh * ow, upw);
        sd_upsample_nearest_ex(bi, bl, n, cb, h, w, upg, oh, ow);
        assert_same("upsample_nearest_ex", upg, upw, nu);
        /* concat [a | b] and [b | a] (unaligned first part) */
        for (int order = 0; order < 2; order++) {
            const float *p1 = order ? bb : a, *p2 = order ? a : bb;
            int64_t c1 = order ? cb : ca, c2 = order ? ca : cb, c = c1 + c2;
            float *cat = malloc((size_t)(n * h * w * c) * sizeof(float));
            ref_concat(p1, c1, p2, c2, n * h * w, cat);
            int64_t nc = ref_layout_size(bl, n, c, h * w);
            float *cw = malloc((size_t)nc * sizeof(float)), *cg = malloc((size_t)nc * sizeof(float));
            float *x1 = malloc((size_t)ref_layout_size(bl, n, c1, h * w) * sizeof(float));
            float *x2 = malloc((size_t)ref_layout_size(bl, n, c2, h * w) * sizeof(float));
            ref_to_layout(p1, bl, n, c1, h * w, x1);
            ref_to_layout(p2, bl, n, c2, h * w, x2);
            ref_to_layout(cat, bl, n, c, h * w, cw);
            for (int64_t t = 0; t < nc; t++) cg[t] = 99.0f;
            sd_concat_channels_ex(x1, c1, x2, c2, bl, n, h * w, cg);
            assert_same("concat_channels_ex", cg, cw, nc);
            free(cat), free(cw), free(cg), free(x1), free(x2);
        }
        free(ai), free(want), free(a2), free(bi), free(up), free(upw), free(upg);
    }
    free(a), free(bb), free(vec);
}

/* Convolution in every layout pair, incl. pairs oneDNN only has a reference
 * kernel for (handled by converting around a fast kernel). */
Test(kernels, conv2d_layouts) {
    int64_t n = 2, h = 9, w = 7;
    static const int64_t shapes[][3] = {{4, 24, 3}, {24, 4, 3}, {13, 21, 3}, {16, 16, 1}};
    int lays[] = {0, 1, 8, 16};
    for (int s = 0; s < 4; s++) {
        int64_t ci = shapes[s][0], co = shapes[s][1], k = shapes[s][2];
        sd_conv2d_desc d = {ci, co, k, k, 1, 1, k / 2, k / 2, k / 2, k / 2};
        float *wt = rand_buf(co * ci * k * k, 0.5f), *bias = rand_buf(co, 1), *x = rand_buf(n * h * w * ci, 1);
        float *r = zeros(n * h * w * co);
        ref_conv2d(x, n, h, w, ci, wt, bias, co, k, k, 1, 1, k / 2, k / 2, k / 2, k / 2, r);
        sd_conv2d *c;
        sd_error err = {0};
        cr_assert_eq(sd_conv2d_create(&c, &d, wt, bias, &err), 0, "%s", err.msg);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                int bi = lays[i], bo = lays[j];
                float *xi = malloc((size_t)ref_layout_size(bi, n, ci, h * w) * sizeof(float));
                int64_t ny = ref_layout_size(bo, n, co, h * w);
                float *y = malloc((size_t)ny * sizeof(float)), *want = malloc((size_t)ny * sizeof(float));
                ref_to_layout(x, bi, n, ci, h * w, xi);
                ref_to_layout(r, bo, n, co, h * w, want);
                cr_assert_eq(sd_conv2d_forward_layout(c, xi, bi, n, h, w, y, bo, 0, &err), 0, "%s", err.msg);
                tst_check_close("conv2d_forward_layout", y, want, (size_t)ny, 1e-4, 0);
                /* accumulate: y += conv(x) -> 2 * ref */
                cr_assert_eq(sd_conv2d_forward_layout(c, xi, bi, n, h, w, y, bo, 1, &err), 0, "%s", err.msg);
                for (int64_t t = 0; t < ny; t++) want[t] *= 2.0f;
                tst_check_close("conv2d_forward_layout accumulate", y, want, (size_t)ny, 2e-4, 0);
                free(xi), free(y), free(want);
            }
        sd_conv2d_free(c);
        free(wt), free(bias), free(x), free(r);
    }
}

/* Stride-2 convolutions in the blocked layouts, as the VAE encoder runs its
 * downsamplers (pad right/bottom only) and the UNet its own (pad 1), with
 * odd sizes and channel counts that leave padding lanes. */
Test(kernels, conv2d_strided_blocked_layouts) {
    int64_t n = 2, h = 11, w = 9;
    static const int64_t shapes[][6] = {{13, 13, 0, 0, 1, 1}, {21, 18, 1, 1, 1, 1}};
    int lays[] = {0, 8, 16};
    for (int s = 0; s < 2; s++) {
        int64_t ci = shapes[s][0], co = shapes[s][1], pt = shapes[s][2], pl = shapes[s][3], pb = shapes[s][4],
                pr = shapes[s][5];
        sd_conv2d_desc d = {ci, co, 3, 3, 2, 2, pt, pl, pb, pr};
        float *wt = rand_buf(co * ci * 9, 0.5f), *bias = rand_buf(co, 1), *x = rand_buf(n * h * w * ci, 1);
        sd_conv2d *c;
        sd_error err = {0};
        cr_assert_eq(sd_conv2d_create(&c, &d, wt, bias, &err), 0, "%s", err.msg);
        int64_t oh, ow;
        sd_conv2d_out_size(c, h, w, &oh, &ow);
        float *r = zeros(n * oh * ow * co);
        ref_conv2d(x, n, h, w, ci, wt, bias, co, 3, 3, 2, 2, pt, pl, pb, pr, r);
        for (int i = 0; i < 3; i++) {
            int bl = lays[i];
            float *xi = malloc((size_t)ref_layout_size(bl, n, ci, h * w) * sizeof(float));
            int64_t ny = ref_layout_size(bl, n, co, oh * ow);
            float *y = malloc((size_t)ny * sizeof(float)), *want = malloc((size_t)ny * sizeof(float));
            ref_to_layout(x, bl, n, ci, h * w, xi);
            ref_to_layout(r, bl, n, co, oh * ow, want);
            cr_assert_eq(sd_conv2d_forward_blk(c, xi, bl, n, h, w, y, 0, &err), 0, "%s", err.msg);
            tst_check_close("conv2d stride 2 blocked", y, want, (size_t)ny, 1e-4, 0);
            free(xi), free(y), free(want);
        }
        sd_conv2d_free(c);
        free(wt), free(bias), free(x), free(r);
    }
}

/* GroupNorm within one blocked layout (the plane-by-plane path: full blocks
 * as vectors, a partial last block, more pixels than reduction chunks), with
 * and without SiLU, out of place and in place. */
Test(kernels, group_norm_blocked_planes) {
    int64_t n = 2, hw = 131;
    static const int64_t cs[][2] = {{48, 4}, {40, 5}, {12, 3}}; /* channels, groups */
    int lays[] = {8, 16};
    for (int s = 0; s < 3; s++)
        for (int silu = 0; silu < 2; silu++) {
            int64_t c = cs[s][0];
            int groups = (int)cs[s][1];
            float *x = rand_buf(n * hw * c, 3), *g = rand_buf(c, 1), *b = rand_buf(c, 1), *r = zeros(n * hw * c);
            for (int64_t i = 0; i < n * hw * c; i++) x[i] += 0.5f; /* a non-zero mean */
            ref_group_norm(x, n, hw, c, groups, 1e-6f, g, b, r, silu);
            for (int i = 0; i < 2; i++) {
                int bl = lays[i];
                int64_t nf = ref_layout_size(bl, n, c, hw);
                float *xi = malloc((size_t)nf * sizeof(float)), *y = malloc((size_t)nf * sizeof(float));
                float *want = malloc((size_t)nf * sizeof(float));
                ref_to_layout(x, bl, n, c, hw, xi);
                ref_to_layout(r, bl, n, c, hw, want);
                for (int64_t t = 0; t < nf; t++) y[t] = 99.0f; /* padding lanes must come out 0 */
                sd_group_norm_ex(xi, bl, y, bl, n, hw, c, groups, 1e-6f, g, b, silu);
                tst_check_close("group_norm_ex blocked", y, want, (size_t)nf, 1e-5, 0);
                sd_group_norm_ex(xi, bl, xi, bl, n, hw, c, groups, 1e-6f, g, b, silu);
                tst_check_close("group_norm_ex blocked in place", xi, want, (size_t)nf, 1e-5, 0);
                free(xi), free(y), free(want);
            }
            free(x), free(g), free(b), free(r);
        }
}
