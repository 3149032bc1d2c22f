/* core/image — see image.h. PNG through libpng (errors caught with setjmp:
 * every libpng call runs inside one small function whose locals are never
 * modified after setjmp; everything it allocates hangs off a job struct
 * owned by the caller, so nothing leaks when libpng longjmps out). */
#include "core/image.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include <stb/stb_image.h>

#include "core/fileio.h"

/* ---- sd_image ---- */

static int check_size(int width, int height, const char *what, sd_error *err) {
    if (width <= 0 || height <= 0)
        return sd_fail(err, "%s: image size %dx%d, expected positive width and height", what,
                       width, height);
    if ((uint64_t)width * (uint64_t)height > SD_IMAGE_MAX_PIXELS)
        return sd_fail(err, "%s: image size %dx%d exceeds the limit of %u pixels", what, width,
                       height, SD_IMAGE_MAX_PIXELS);
    return 0;
}

int sd_image_alloc(sd_image *img, int width, int height, sd_error *err) {
    memset(img, 0, sizeof *img);
    if (check_size(width, height, "image", err)) return -1;
    img->rgb = calloc((size_t)width * (size_t)height, 3);
    if (!img->rgb) return sd_fail(err, "image: out of memory for %dx%d pixels", width, height);
    img->width = width;
    img->height = height;
    return 0;
}

void sd_image_free(sd_image *img) {
    if (!img) return;
    free(img->rgb);
    memset(img, 0, sizeof *img);
}

/* ---- VAE output -> RGB8 (diffusers image_processor.py) ---- */

/* denormalize(): (images / 2 + 0.5).clamp(0, 1), float32. x/2 is exact, so
 * this is the same float whether or not the compiler fuses it. */
static inline float denorm1(float x) {
    float y = x / 2.0f + 0.5f;
    return y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y);
}

/* numpy_to_pil(): (x * 255).round().astype("uint8"); numpy's round is half
 * to even, which nearbyintf gives in the default rounding mode. NaN (which
 * numpy would cast to an unspecified byte) becomes 0 here. */
static inline uint8_t to_u8(float x) {
    float v = nearbyintf(x * 255.0f);
    if (!(v > 0.0f)) return 0;
    return v >= 255.0f ? 255 : (uint8_t)v;
}

void sd_image_denormalize(const float *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = denorm1(src[i]);
}

void sd_image_unit_to_rgb8(const float *chw, int width, int height, uint8_t *rgb) {
    size_t plane = (size_t)width * (size_t)height;
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) rgb[3 * i + (size_t)c] = to_u8(chw[(size_t)c * plane + i]);
}

int sd_image_from_vae(const float *chw, int width, int height, sd_image *out, sd_error *err) {
    if (sd_image_alloc(out, width, height, err)) return -1;
    size_t plane = (size_t)width * (size_t)height;
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++)
            out->rgb[3 * i + (size_t)c] = to_u8(denorm1(chw[(size_t)c * plane + i]));
    return 0;
}

/* ---- text encodings ---- */

/* Decodes UTF-8 s into Latin-1 bytes when every code point is <= U+00FF
 * (Pillow: value.encode("latin-1", "strict")). Returns 1 and a malloc'd
 * *latin1 on success, 0 when some code point is above U+00FF, -1 when s is
 * not valid UTF-8 or on out of memory. */
static int utf8_to_latin1(const char *s, char **latin1) {
    size_t len = strlen(s), k = 0;
    char *out = malloc(len + 1);
    *latin1 = NULL;
    if (!out) return -1;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                              (utf8proc_ssize_t)(len - i), &c);
        if (n <= 0) {
            free(out);
            return -1;
        }
        if (c > 0xFF) {
            /* keep scanning: invalid UTF-8 later still has to be reported */
            for (i += (size_t)n; i < len; i += (size_t)n) {
                n = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                     (utf8proc_ssize_t)(len - i), &c);
                if (n <= 0) {
                    free(out);
                    return -1;
                }
            }
            free(out);
            return 0;
        }
        out[k++] = (char)c;
        i += (size_t)n;
    }
    out[k] = '\0';
    *latin1 = out;
    return 1;
}

/* Latin-1 bytes (n of them) -> malloc'd UTF-8. */
static char *latin1_to_utf8(const char *s, size_t n) {
    char *out = malloc(2 * n + 1);
    if (!out) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            out[k++] = (char)c;
        } else {
            out[k++] = (char)(0xC0 | (c >> 6));
            out[k++] = (char)(0x80 | (c & 0x3F));
        }
    }
    out[k] = '\0';
    return out;
}

/* PNG keyword rule (PNG spec 11.3.4.1): 1-79 Latin-1 bytes from 32-126 or
 * 161-255, no leading, trailing or doubled spaces. */
static int keyword_ok(const char *k) {
    size_t n = strlen(k);
    if (n < 1 || n > 79 || k[0] == ' ' || k[n - 1] == ' ') return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (c < 32 || (c > 126 && c < 161)) return 0;
        if (c == ' ' && k[i + 1] == ' ') return 0;
    }
    return 1;
}

/* ---- libpng plumbing ---- */

typedef struct png_errctx {
    char msg[256];
} png_errctx;

static void on_png_error(png_structp png, png_const_charp msg) {
    png_errctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "libpng error");
    png_longjmp(png, 1);
}

/* Library code never prints: libpng warnings are dropped. */
static void on_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

/* ---- PNG writing ---- */

typedef struct png_write_job {
    const sd_image *img;
    png_text *texts;        /* prepared chunks */
    char **owned;           /* Latin-1 buffers backing texts (keys and values) */
    int n_texts, n_owned;
    png_bytep *rows;
    png_errctx ec;
} png_write_job;

static void write_job_free(png_write_job *job) {
    for (int i = 0; i < job->n_owned; i++) free(job->owned[i]);
    free(job->owned);
    free(job->texts);
    free(job->rows);
}

/* Builds the png_text entries: Latin-1 values as tEXt, others as iTXt. */
static int write_job_prepare(png_write_job *job, const char *path, const sd_png_text *t, int n,
                             sd_error *err) {
    const sd_image *img = job->img;
    job->rows = malloc((size_t)img->height * sizeof *job->rows);
    job->texts = calloc(n > 0 ? (size_t)n : 1, sizeof *job->texts);
    job->owned = calloc(2 * (n > 0 ? (size_t)n : 1), sizeof *job->owned);
    if (!job->rows || !job->texts || !job->owned) return sd_fail(err, "%s: out of memory", path);
    for (int y = 0; y < img->height; y++)
        job->rows[y] = img->rgb + (size_t)y * (size_t)img->width * 3;
    for (int i = 0; i < n; i++) {
        char *key = NULL, *val = NULL;
        if (!t[i].key || utf8_to_latin1(t[i].key, &key) != 1 || !keyword_ok(key)) {
            free(key);
            return sd_fail(err, "%s: PNG text keyword \"%s\": expected 1-79 printable Latin-1 "
                           "characters without leading, trailing or double spaces",
                           path, t[i].key ? t[i].key : "(null)");
        }
        job->owned[job->n_owned++] = key;
        int r = utf8_to_latin1(t[i].text ? t[i].text : "", &val);
        if (r < 0)
            return sd_fail(err, "%s: PNG text \"%s\": value is not valid UTF-8", path, t[i].key);
        png_text *pt = &job->texts[job->n_texts++];
        pt->key = key;
        if (r == 1) {
            job->owned[job->n_owned++] = val;
            pt->compression = PNG_TEXT_COMPRESSION_NONE;     /* tEXt */
            pt->text = val;
        } else {
            pt->compression = PNG_ITXT_COMPRESSION_NONE;     /* iTXt, uncompressed */
            pt->text = (png_charp)t[i].text;
            pt->lang = (png_charp)"";
            pt->lang_key = (png_charp)"";
        }
    }
    return 0;
}

/* All libpng calls of a write; returns -1 with job->ec.msg on error. */
static int png_write_stream(FILE *fp, png_write_job *job) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &job->ec, on_png_error,
                                              on_png_warning);
    if (!png) {
        snprintf(job->ec.msg, sizeof job->ec.msg, "cannot create libpng writer");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        snprintf(job->ec.msg, sizeof job->ec.msg, "out of memory");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)job->img->width, (png_uint_32)job->img->height, 8,
                 PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (job->n_texts) png_set_text(png, info, job->texts, job->n_texts);
    png_write_info(png, info);
    png_write_image(png, job->rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return 0;
}

int sd_png_write(const char *path, const sd_image *img, const sd_png_text *texts, int n_texts,
                 sd_error *err) {
    if (!img || !img->rgb) return sd_fail(err, "%s: no image to write", path);
    if (check_size(img->width, img->height, path, err)) return -1;
    if (n_texts < 0 || (n_texts > 0 && !texts))
        return sd_fail(err, "%s: bad text chunk list (%d entries)", path, n_texts);
    png_write_job job;
    memset(&job, 0, sizeof job);
    job.img = img;
    if (write_job_prepare(&job, path, texts, n_texts, err)) {
        write_job_free(&job);
        return -1;
    }
    sd_atomic_file af;
    if (sd_atomic_open(&af, path, err)) {
        write_job_free(&job);
        return -1;
    }
    int rc = png_write_stream(af.fp, &job);
    write_job_free(&job);
    if (rc) {
        sd_atomic_abort(&af);
        return sd_fail(err, "%s: PNG write failed: %s", path, job.ec.msg);
    }
    return sd_atomic_commit(&af, err);
}

/* ---- PNG reading ---- */

typedef struct png_read_job {
    const char *path;
    int want_pixels;
    uint8_t *pixels;        /* RGB8, owned until handed to the caller */
    png_bytep *rows;
    sd_png_info *info;
    int oom;
    png_errctx ec;
} png_read_job;

/* Copies libpng's text records into job->info (UTF-8 throughout). */
static void copy_texts(png_read_job *job, png_textp tp, int n) {
    sd_png_info *info = job->info;
    if (n <= 0) return;
    info->text = calloc((size_t)n, sizeof *info->text);
    if (!info->text) {
        job->oom = 1;
        return;
    }
    for (int i = 0; i < n; i++) {
        sd_png_text_chunk *c = &info->text[info->n_text];
        c->key = latin1_to_utf8(tp[i].key, strlen(tp[i].key));
        if (tp[i].compression == PNG_TEXT_COMPRESSION_NONE ||
            tp[i].compression == PNG_TEXT_COMPRESSION_zTXt) {
            c->kind = tp[i].compression == PNG_TEXT_COMPRESSION_NONE ? SD_PNG_TEXT_TEXT
                                                                     : SD_PNG_TEXT_ZTXT;
            c->text = latin1_to_utf8(tp[i].text ? tp[i].text : "", tp[i].text_length);
        } else {
            c->kind = SD_PNG_TEXT_ITXT;
            size_t n8 = tp[i].itxt_length;
            c->text = malloc(n8 + 1);
            if (c->text) {
                if (n8) memcpy(c->text, tp[i].text, n8);
                c->text[n8] = '\0';
            }
        }
        info->n_text++;
        if (!c->key || !c->text) {
            job->oom = 1;
            return;
        }
    }
}

/* All libpng calls of a read; returns -1 with job->ec.msg on error. */
static int png_read_stream(FILE *fp, png_read_job *job) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job->ec, on_png_error,
                                             on_png_warning);
    if (!png) {
        snprintf(job->ec.msg, sizeof job->ec.msg, "cannot create libpng reader");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        snprintf(job->ec.msg, sizeof job->ec.msg, "out of memory");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    png_init_io(png, fp);
    png_set_sig_bytes(png, 8);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if ((uint64_t)w * h > SD_IMAGE_MAX_PIXELS)
        png_error(png, "image larger than SD_IMAGE_MAX_PIXELS");
    job->info->width = (int)w;
    job->info->height = (int)h;
    png_set_expand(png);        /* palette -> RGB, gray < 8 bit -> 8 bit, tRNS -> alpha */
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)w * 3) png_error(png, "unexpected row size");
    /* Pixels are decoded even when not wanted: text after IDAT is only
     * reachable through the image data. */
    job->pixels = malloc((size_t)w * h * 3);
    job->rows = malloc((size_t)h * sizeof *job->rows);
    if (!job->pixels || !job->rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) job->rows[y] = job->pixels + (size_t)y * w * 3;
    png_read_image(png, job->rows);
    png_read_end(png, info);    /* same info: text after IDAT joins the list */
    png_textp tp = NULL;
    int n = png_get_text(png, info, &tp, NULL);
    copy_texts(job, tp, n);
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
}

int sd_png_read(const char *path, sd_image *img, sd_png_info *info, sd_error *err) {
    memset(info, 0, sizeof *info);
    if (img) memset(img, 0, sizeof *img);
    struct stat pre;
    if (stat(path, &pre) == 0 && !S_ISREG(pre.st_mode))
        return sd_fail(err, "%s: not a regular file", path); /* a FIFO would block fopen */
    FILE *fp = fopen(path, "rb");
    if (!fp) return sd_fail(err, "%s: cannot open: %s", path, strerror(errno));
    unsigned char sig[8];
    if (fread(sig, 1, 8, fp) != 8 || png_sig_cmp(sig, 0, 8) != 0) {
        fclose(fp);
        return sd_fail(err, "%s: not a PNG file (bad signature)", path);
    }
    png_read_job job;
    memset(&job, 0, sizeof job);
    job.path = path;
    job.info = info;
    int rc = png_read_stream(fp, &job);
    fclose(fp);
    free(job.rows);
    if (rc || job.oom) {
        free(job.pixels);
        sd_png_info_free(info);
        return rc ? sd_fail(err, "%s: corrupt or unreadable PNG: %s", path, job.ec.msg)
                  : sd_fail(err, "%s: out of memory reading text chunks", path);
    }
    if (img) {
        img->width = info->width;
        img->height = info->height;
        img->rgb = job.pixels;
    } else {
        free(job.pixels);
    }
    return 0;
}

void sd_png_info_free(sd_png_info *info) {
    if (!info) return;
    for (int i = 0; i < info->n_text; i++) {
        free(info->text[i].key);
        free(info->text[i].text);
    }
    free(info->text);
    memset(info, 0, sizeof *info);
}

const sd_png_text_chunk *sd_png_info_find(const sd_png_info *info, const char *key) {
    for (int i = 0; i < info->n_text; i++)
        if (strcmp(info->text[i].key, key) == 0) return &info->text[i];
    return NULL;
}

/* ---- PNG / JPEG input through stb_image ---- */

static const char *sniff_format(const unsigned char *m, size_t n) {
    static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
    if (n >= 8 && memcmp(m, png_sig, 8) == 0) return "PNG";
    if (n >= 3 && m[0] == 0xFF && m[1] == 0xD8 && m[2] == 0xFF) return "JPEG";
    return NULL;
}

int sd_image_load(const char *path, sd_image *out, sd_error *err) {
    memset(out, 0, sizeof *out);
    struct stat pre;
    if (stat(path, &pre) == 0 && !S_ISREG(pre.st_mode))
        return sd_fail(err, "%s: not a regular file", path); /* a FIFO would block fopen */
    FILE *fp = fopen(path, "rb");
    if (!fp) return sd_fail(err, "%s: cannot open: %s", path, strerror(errno));
    unsigned char magic[8];
    size_t got = fread(magic, 1, sizeof magic, fp);
    const char *fmt = sniff_format(magic, got);
    if (!fmt) {
        fclose(fp);
        return sd_fail(err, "%s: not a PNG or JPEG file (unrecognised signature)", path);
    }
    int w = 0, h = 0, comp = 0;
    rewind(fp);
    if (!stbi_info_from_file(fp, &w, &h, &comp)) {
        fclose(fp);
        return sd_fail(err, "%s: corrupt %s header: %s", path, fmt, stbi_failure_reason());
    }
    if (check_size(w, h, path, err)) {
        fclose(fp);
        return -1;
    }
    unsigned char *px = stbi_load_from_file(fp, &w, &h, &comp, 3);
    fclose(fp);
    if (!px) return sd_fail(err, "%s: cannot decode %s: %s", path, fmt, stbi_failure_reason());
    if (sd_image_alloc(out, w, h, err)) {
        stbi_image_free(px);
        return -1;
    }
    memcpy(out->rgb, px, (size_t)w * (size_t)h * 3);
    stbi_image_free(px);
    return 0;
}
