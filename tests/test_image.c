/* core/image: VAE float -> RGB8 exactly as diffusers (checked on every
 * pipeline fixture), PNG round trips with A1111's parameters chunk (tEXt for
 * Latin-1, iTXt otherwise, verified in the file's bytes), atomic writes that
 * leave nothing behind, and PNG/JPEG input through stb_image. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stb/stb_image_write.h>

#include "core/fileio.h"
#include "core/image.h"
#include "tests/support/test_support.h"

/* ---- helpers ---- */

static char *join(const char *dir, const char *name) {
    char *p = sd_path_join(dir, name);
    cr_assert_not_null(p);
    return p;
}

/* Number of entries in dir (without . and ..). */
static int dir_count(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "opendir %s", dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void make_pattern(sd_image *img, int w, int h) {
    sd_error err = {0};
    cr_assert_eq(sd_image_alloc(img, w, h, &err), 0, "%s", err.msg);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                img->rgb[((size_t)y * w + x) * 3 + c] = (uint8_t)(x * 37 + y * 11 + c * 85);
}

static unsigned char *slurp(const char *path, size_t *n) {
    char *buf = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(path, 1 << 26, &buf, n, &err), 0, "%s", err.msg);
    return (unsigned char *)buf;
}

/* Writes img with one "parameters" chunk, reads it back through libpng and
 * returns the chunk kind; checks pixels and text. */
static sd_png_text_kind round_trip(const char *text) {
    char *dir = tst_tmpdir();
    char *path = join(dir, "out.png");
    sd_image img, back;
    make_pattern(&img, 13, 7);
    sd_error err = {0};
    sd_png_text t = {"parameters", text};
    cr_assert_eq(sd_png_write(path, &img, &t, 1, &err), 0, "%s", err.msg);
    cr_assert_eq(dir_count(dir), 1, "only the PNG itself is left in the folder");
    sd_png_info info;
    cr_assert_eq(sd_png_read(path, &back, &info, &err), 0, "%s", err.msg);
    cr_assert_eq(back.width, 13);
    cr_assert_eq(back.height, 7);
    cr_assert_eq(memcmp(back.rgb, img.rgb, 13 * 7 * 3), 0, "pixels survive the round trip");
    cr_assert_eq(info.n_text, 1);
    const sd_png_text_chunk *c = sd_png_info_find(&info, "parameters");
    cr_assert_not_null(c);
    cr_assert_str_eq(c->text, text);
    sd_png_text_kind kind = c->kind;
    sd_png_info_free(&info);
    sd_image_free(&back);
    sd_image_free(&img);
    unlink(path);
    rmdir(dir);
    free(path);
    free(dir);
    return kind;
}

/* ---- float -> u8 ---- */

Test(image, rounds_half_to_even_in_float32) {
    /* float32 inputs whose product x*255.0f is exactly k + 0.5 */
    static const struct { float x; uint8_t want; } cases[] = {
        {0x1.010102p-9f, 0},    /* 0.5   -> 0   */
        {0x1.818182p-8f, 2},    /* 1.5   -> 2   */
        {0x1.414142p-7f, 2},    /* 2.5   -> 2   */
        {0x1.c1c1c2p-7f, 4},    /* 3.5   -> 4   */
        {0.5f, 128},            /* 127.5 -> 128 */
        {0x1.fefefep-1f, 254},  /* 254.5 -> 254 */
        {0x1.feffp-1f, 254},    /* 254.5 -> 254 */
        {0.0f, 0},
        {1.0f, 255},
    };
    size_t n = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < n; i++) {
        float r = cases[i].x * 255.0f;
        if (i < 7) cr_assert_eq(r - floorf(r), 0.5f, "case %zu is a tie (%a)", i, (double)r);
        /* one pixel, the value in the R plane, 0 in G and B */
        float chw[3] = {cases[i].x, 0.0f, 0.0f};
        uint8_t rgb[3];
        sd_image_unit_to_rgb8(chw, 1, 1, rgb);
        cr_expect_eq(rgb[0], cases[i].want, "case %zu: %a*255 -> %u, want %u", i,
                     (double)cases[i].x, rgb[0], cases[i].want);
    }
}

Test(image, vae_output_is_clamped) {
    /* [1,3,1,4] planes: -3 -> 0, 3 -> 255, NaN -> 0, 0 -> 0.5 -> 127.5 -> 128 */
    const float chw[12] = {-3.0f, 3.0f, NAN, 0.0f, -1.0f, 1.0f, 0.0f, 0.0f, 0, 0, 0, 0};
    sd_image img;
    sd_error err = {0};
    cr_assert_eq(sd_image_from_vae(chw, 4, 1, &img, &err), 0, "%s", err.msg);
    const uint8_t want_r[4] = {0, 255, 0, 128}, want_g[4] = {0, 255, 128, 128};
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(img.rgb[3 * i], want_r[i], "R[%d]", i);
        cr_expect_eq(img.rgb[3 * i + 1], want_g[i], "G[%d]", i);
        cr_expect_eq(img.rgb[3 * i + 2], 128, "B[%d]", i);
    }
    sd_image_free(&img);
}

static const char *const pipeline_runs[] = {
    "pndm_seed42_64x64",          "ddim_seed1234_64x96",    "euler_a_seed7_64x64",
    "dpmpp_2m_karras_seed2024_128x128", "euler_seed31337_96x64", "dpmpp_2m_seed0_64x64",
    "heun_seed99_64x64",
};

/* vae_out -> image (float) -> image_u8, bit for bit, for every run. */
Test(image, matches_diffusers_postprocess_on_fixtures) {
    for (size_t r = 0; r < sizeof pipeline_runs / sizeof pipeline_runs[0]; r++) {
        char rel[256];
        snprintf(rel, sizeof rel, "refs/pipeline/%s.safetensors", pipeline_runs[r]);
        st_file f;
        tst_open_ref(&f, rel);
        size_t n = 0, n_img = 0;
        float *vae = tst_ref_f32(&f, "vae_out", &n);
        float *ref_img = tst_ref_f32(&f, "image", &n_img);
        const st_tensor *u8 = tst_ref_tensor(&f, "image_u8");
        cr_assert_eq(u8->dtype, ST_U8);
        int h = (int)u8->shape[0], w = (int)u8->shape[1];
        cr_assert_eq(n, (size_t)3 * w * h);
        float *img01 = malloc(n * sizeof *img01);
        sd_image_denormalize(vae, img01, n);
        cr_assert_eq(memcmp(img01, ref_img, n * sizeof(float)), 0, "%s: image float", rel);
        sd_image img;
        sd_error err = {0};
        cr_assert_eq(sd_image_from_vae(vae, w, h, &img, &err), 0, "%s", err.msg);
        cr_assert_eq(memcmp(img.rgb, u8->data, n), 0, "%s: image_u8", rel);
        sd_image_unit_to_rgb8(img01, w, h, img.rgb);
        cr_assert_eq(memcmp(img.rgb, u8->data, n), 0, "%s: image_u8 (two-step)", rel);
        sd_image_free(&img);
        free(img01);
        free(ref_img);
        free(vae);
        st_close(&f);
    }
}

/* ---- PNG round trips ---- */

Test(image, png_ascii_text_is_tEXt) {
    cr_assert_eq(round_trip("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42"),
                 SD_PNG_TEXT_TEXT);
}

Test(image, png_latin1_text_is_tEXt) {
    cr_assert_eq(round_trip("caf\xc3\xa9 na\xc3\xafve \xc3\x97\xc3\xbf\nSteps: 20"),
                 SD_PNG_TEXT_TEXT);
}

Test(image, png_japanese_text_is_iTXt) {
    cr_assert_eq(round_trip("\xe7\x8c\xab\xe3\x81\xae\xe5\x86\x99\xe7\x9c\x9f\nSteps: 20"),
                 SD_PNG_TEXT_ITXT);
    /* one code point above U+00FF is enough (the euro sign) */
    cr_assert_eq(round_trip("price \xe2\x82\xac 5"), SD_PNG_TEXT_ITXT);
}

/* The bytes on disk are what Pillow's add_text writes: tEXt = key NUL
 * Latin-1; iTXt = key NUL, flag 0, method 0, "" NUL, "" NUL, UTF-8. */
Test(image, png_chunk_bytes_match_pillow) {
    char *dir = tst_tmpdir();
    char *a = join(dir, "a.png"), *b = join(dir, "b.png");
    sd_image img;
    make_pattern(&img, 4, 3);
    sd_error err = {0};
    sd_png_text ta[2] = {{"parameters", "caf\xc3\xa9"}, {"extra key", "v"}};
    cr_assert_eq(sd_png_write(a, &img, ta, 2, &err), 0, "%s", err.msg);
    sd_png_text tb = {"parameters", "\xe7\x8c\xab"};
    cr_assert_eq(sd_png_write(b, &img, &tb, 1, &err), 0, "%s", err.msg);

    size_t na, nb;
    unsigned char *fa = slurp(a, &na), *fb = slurp(b, &nb);
    /* length 15 = "parameters\0caf\xe9" */
    static const unsigned char text_chunk[] = "\0\0\0\x0f" "tEXtparameters\0caf\xe9";
    unsigned char *p = memmem(fa, na, text_chunk, sizeof text_chunk - 1);
    cr_assert_not_null(p, "tEXt chunk with Latin-1 bytes");
    unsigned char *idat = memmem(fa, na, "IDAT", 4);
    cr_assert(idat && p < idat, "text precedes IDAT");
    cr_assert_not_null(memmem(fa, na, "tEXtextra key\0v", 15));
    /* length 18 = "parameters" NUL 0 0 NUL NUL + 3 bytes of UTF-8 */
    static const unsigned char itxt_chunk[] =
        "\0\0\0\x12" "iTXtparameters\0\0\0\0\0\xe7\x8c\xab";
    cr_assert_not_null(memmem(fb, nb, itxt_chunk, sizeof itxt_chunk - 1), "uncompressed iTXt");
    cr_assert_null(memmem(fb, nb, "tEXt", 4));

    sd_png_info info;
    cr_assert_eq(sd_png_read(a, NULL, &info, &err), 0, "%s", err.msg);
    cr_assert_eq(info.n_text, 2);
    cr_assert_eq(info.width, 4);
    cr_assert_str_eq(sd_png_info_find(&info, "extra key")->text, "v");
    cr_assert_null(sd_png_info_find(&info, "nope"));
    sd_png_info_free(&info);

    free(fa);
    free(fb);
    unlink(a);
    unlink(b);
    rmdir(dir);
    free(a);
    free(b);
    free(dir);
    sd_image_free(&img);
}

Test(image, png_write_is_deterministic) {
    char *dir = tst_tmpdir();
    char *a = join(dir, "a.png"), *b = join(dir, "b.png");
    sd_image img;
    make_pattern(&img, 32, 24);
    sd_error err = {0};
    sd_png_text t = {"parameters", "x\nSteps: 1"};
    cr_assert_eq(sd_png_write(a, &img, &t, 1, &err), 0, "%s", err.msg);
    cr_assert_eq(sd_png_write(b, &img, &t, 1, &err), 0, "%s", err.msg);
    size_t na, nb;
    unsigned char *fa = slurp(a, &na), *fb = slurp(b, &nb);
    cr_assert(na == nb && memcmp(fa, fb, na) == 0);
    /* overwriting an existing file replaces it */
    cr_assert_eq(sd_png_write(a, &img, NULL, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(dir_count(dir), 2);
    free(fa);
    free(fb);
    unlink(a);
    unlink(b);
    rmdir(dir);
    free(a);
    free(b);
    free(dir);
    sd_image_free(&img);
}

/* ---- atomic writes: failures leave nothing ---- */

Test(image, png_write_failures_leave_no_file) {
    char *dir = tst_tmpdir();
    char *missing = join(dir, "no/such/dir/out.png");
    char *path = join(dir, "out.png");
    sd_image img;
    make_pattern(&img, 8, 8);
    sd_error err = {0};
    sd_png_text ok = {"parameters", "p"};

    cr_assert_neq(sd_png_write(missing, &img, &ok, 1, &err), 0);
    cr_assert_not_null(strstr(err.msg, missing), "message names the path: %s", err.msg);
    cr_assert_eq(dir_count(dir), 0);

    sd_png_text bad_utf8 = {"parameters", "bad \xff byte"};
    cr_assert_neq(sd_png_write(path, &img, &bad_utf8, 1, &err), 0);
    cr_assert_not_null(strstr(err.msg, "UTF-8"), "%s", err.msg);
    sd_png_text bad_key = {"", "v"};
    cr_assert_neq(sd_png_write(path, &img, &bad_key, 1, &err), 0);
    sd_png_text long_key = {"k123456789k123456789k123456789k123456789k123456789k123456789"
                            "k123456789k123456789", "v"};
    cr_assert_neq(sd_png_write(path, &img, &long_key, 1, &err), 0);
    cr_assert_eq(dir_count(dir), 0);

    /* a libpng error in the middle of writing (width over libpng's limit of
     * 1e6 columns) is caught and the temporary file removed */
    sd_image wide;
    cr_assert_eq(sd_image_alloc(&wide, 2000000, 1, &err), 0, "%s", err.msg);
    cr_assert_neq(sd_png_write(path, &wide, &ok, 1, &err), 0);
    cr_assert_not_null(strstr(err.msg, "PNG write failed"), "%s", err.msg);
    cr_assert_eq(dir_count(dir), 0, "no temp file left after a libpng error");
    sd_image_free(&wide);

    /* a failed write keeps the previous file intact */
    cr_assert_eq(sd_png_write(path, &img, &ok, 1, &err), 0, "%s", err.msg);
    size_t n0, n1;
    unsigned char *before = slurp(path, &n0);
    cr_assert_neq(sd_png_write(path, &img, &bad_utf8, 1, &err), 0);
    unsigned char *after = slurp(path, &n1);
    cr_assert(n0 == n1 && memcmp(before, after, n0) == 0);
    cr_assert_eq(dir_count(dir), 1);
    free(before);
    free(after);
    unlink(path);

    /* a read-only folder (meaningless as root, who may write anyway) */
    if (geteuid() != 0) {
        cr_assert_eq(chmod(dir, 0555), 0);
        cr_assert_neq(sd_png_write(path, &img, &ok, 1, &err), 0);
        cr_assert_eq(dir_count(dir), 0);
        chmod(dir, 0755);
    }
    rmdir(dir);
    free(missing);
    free(path);
    free(dir);
    sd_image_free(&img);
}

/* ---- reading inputs ---- */

static void expect_same_pixels_as_fixture(const sd_image *img, const char *run) {
    char rel[256];
    snprintf(rel, sizeof rel, "refs/pipeline/%s.safetensors", run);
    st_file f;
    tst_open_ref(&f, rel);
    const st_tensor *u8 = tst_ref_tensor(&f, "image_u8");
    cr_assert_eq(img->height, (int)u8->shape[0]);
    cr_assert_eq(img->width, (int)u8->shape[1]);
    cr_assert_eq(memcmp(img->rgb, u8->data, u8->nbytes), 0, "%s pixels", run);
    st_close(&f);
}

Test(image, reads_fixture_png_with_libpng_and_stb) {
    const char *run = "ddim_seed1234_64x96";
    char rel[256];
    snprintf(rel, sizeof rel, "refs/pipeline/%s.png", run);
    if (!tst_require_fixture(rel)) return;
    char *path = tst_fixture_path(rel);
    sd_image a, b;
    sd_png_info info;
    sd_error err = {0};
    cr_assert_eq(sd_png_read(path, &a, &info, &err), 0, "%s", err.msg);
    expect_same_pixels_as_fixture(&a, run);
    cr_assert_eq(sd_image_load(path, &b, &err), 0, "%s", err.msg);
    expect_same_pixels_as_fixture(&b, run);
    sd_png_info_free(&info);
    sd_image_free(&a);
    sd_image_free(&b);
    free(path);
}

Test(image, reads_gray_rgba_and_jpeg) {
    char *dir = tst_tmpdir();
    char *gray = join(dir, "g.png"), *rgba = join(dir, "a.png"), *jpg = join(dir, "c.jpg");
    uint8_t g[6 * 4], px4[6 * 4 * 4], px3[16 * 16 * 3];
    for (int i = 0; i < 24; i++) {
        g[i] = (uint8_t)(i * 10);
        for (int c = 0; c < 4; c++) px4[4 * i + c] = (uint8_t)(i * 7 + c * 50);
    }
    for (int i = 0; i < 256; i++) {
        px3[3 * i] = 200;
        px3[3 * i + 1] = 100;
        px3[3 * i + 2] = 50;
    }
    cr_assert(stbi_write_png(gray, 6, 4, 1, g, 6));
    cr_assert(stbi_write_png(rgba, 6, 4, 4, px4, 24));
    cr_assert(stbi_write_jpg(jpg, 16, 16, 3, px3, 95));

    sd_image img;
    sd_png_info info;
    sd_error err = {0};
    cr_assert_eq(sd_image_load(gray, &img, &err), 0, "%s", err.msg);
    for (int i = 0; i < 24; i++)
        for (int c = 0; c < 3; c++) cr_assert_eq(img.rgb[3 * i + c], g[i]);
    sd_image_free(&img);
    cr_assert_eq(sd_png_read(gray, &img, &info, &err), 0, "%s", err.msg);
    for (int i = 0; i < 24; i++)
        for (int c = 0; c < 3; c++) cr_assert_eq(img.rgb[3 * i + c], g[i]);
    sd_image_free(&img);
    sd_png_info_free(&info);

    cr_assert_eq(sd_image_load(rgba, &img, &err), 0, "%s", err.msg);
    for (int i = 0; i < 24; i++)
        for (int c = 0; c < 3; c++) cr_assert_eq(img.rgb[3 * i + c], px4[4 * i + c]);
    sd_image_free(&img);
    cr_assert_eq(sd_png_read(rgba, &img, &info, &err), 0, "%s", err.msg);
    for (int i = 0; i < 24; i++)
        for (int c = 0; c < 3; c++) cr_assert_eq(img.rgb[3 * i + c], px4[4 * i + c]);
    sd_image_free(&img);
    sd_png_info_free(&info);

    cr_assert_eq(sd_image_load(jpg, &img, &err), 0, "%s", err.msg);
    cr_assert_eq(img.width, 16);
    cr_assert_eq(img.height, 16);
    for (int i = 0; i < 256 * 3; i++)
        cr_assert(abs((int)img.rgb[i] - (int)px3[i]) <= 3, "jpeg byte %d: %u vs %u", i,
                  img.rgb[i], px3[i]);
    sd_image_free(&img);

    unlink(gray);
    unlink(rgba);
    unlink(jpg);
    rmdir(dir);
    free(gray);
    free(rgba);
    free(jpg);
    free(dir);
}

Test(image, bad_inputs_give_clear_errors) {
    char *dir = tst_tmpdir();
    char *junk = join(dir, "junk.png"), *cut = join(dir, "cut.png"), *full = join(dir, "f.png");
    char *missing = join(dir, "missing.png");
    sd_error err = {0};
    sd_image img;
    sd_png_info info;

    cr_assert_neq(sd_image_load(missing, &img, &err), 0);
    cr_assert_not_null(strstr(err.msg, "cannot open"), "%s", err.msg);
    cr_assert_neq(sd_png_read(missing, &img, &info, &err), 0);

    FILE *fp = fopen(junk, "wb");
    fputs("hello, not an image", fp);
    fclose(fp);
    cr_assert_neq(sd_image_load(junk, &img, &err), 0);
    cr_assert_not_null(strstr(err.msg, "not a PNG or JPEG"), "%s", err.msg);
    cr_assert_neq(sd_png_read(junk, &img, &info, &err), 0);
    cr_assert_not_null(strstr(err.msg, "not a PNG"), "%s", err.msg);

    /* a PNG cut in the middle of IDAT */
    sd_image src;
    make_pattern(&src, 40, 40);
    sd_png_text t = {"parameters", "p"};
    cr_assert_eq(sd_png_write(full, &src, &t, 1, &err), 0, "%s", err.msg);
    size_t n;
    unsigned char *bytes = slurp(full, &n);
    fp = fopen(cut, "wb");
    fwrite(bytes, 1, n / 2, fp);
    fclose(fp);
    cr_assert_neq(sd_png_read(cut, &img, &info, &err), 0);
    cr_assert_not_null(strstr(err.msg, cut), "%s", err.msg);
    cr_assert_eq(info.n_text, 0);
    cr_assert_null(img.rgb);
    cr_assert_neq(sd_image_load(cut, &img, &err), 0);
    /* a flipped byte in IDAT: CRC error */
    unsigned char *idat = memmem(bytes, n, "IDAT", 4);
    idat[8] ^= 0x55;
    fp = fopen(cut, "wb");
    fwrite(bytes, 1, n, fp);
    fclose(fp);
    cr_assert_neq(sd_png_read(cut, &img, &info, &err), 0);

    cr_assert_neq(sd_image_alloc(&img, 0, 5, &err), 0);
    cr_assert_neq(sd_image_alloc(&img, 1 << 20, 1 << 20, &err), 0);
    free(bytes);
    sd_image_free(&src);
    unlink(junk);
    unlink(cut);
    unlink(full);
    rmdir(dir);
    free(junk);
    free(cut);
    free(full);
    free(missing);
    free(dir);
}
