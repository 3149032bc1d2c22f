/* core/image — 8-bit RGB images: the VAE-output conversion, PNG output with
 * text chunks, and reading PNG/JPEG inputs.
 *
 * Pixels are interleaved RGB, rows top to bottom (HWC, what a PNG stores and
 * what the fixtures' `image_u8` [H,W,3] holds).
 *
 * PNG text follows Pillow's PngInfo.add_text, which A1111 uses for its
 * "parameters" chunk: a value that encodes as Latin-1 goes into tEXt (as
 * Latin-1 bytes); any other value into an uncompressed iTXt (UTF-8, empty
 * language tag and translated keyword). The chunks precede IDAT, as Pillow
 * writes them. A PNG is written to "<path>.tmp-<pid>" and renamed into place
 * (core/fileio), so a reader never sees a partial file and a failed write
 * leaves nothing behind. libpng errors are caught (setjmp) and returned.
 *
 *     sd_image img;
 *     if (sd_image_from_vae(vae_out, W, H, &img, &err)) ...;       // [1,3,H,W] float
 *     sd_png_text t = {"parameters", infotext};
 *     if (sd_png_write("out.png", &img, &t, 1, &err)) ...;
 *     sd_image_free(&img);
 */
#ifndef SDMOE_CORE_IMAGE_H
#define SDMOE_CORE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* Largest image accepted for reading or writing (pixels), so a hostile
 * header cannot ask for gigabytes: 2^28 = 16384 x 16384. */
#define SD_IMAGE_MAX_PIXELS (1u << 28)

typedef struct sd_image {
    int width, height;
    uint8_t *rgb;       /* height * width * 3 bytes, malloc'd, owned */
} sd_image;

/* Allocates a zeroed width x height image. */
int sd_image_alloc(sd_image *img, int width, int height, sd_error *err);
/* Frees the pixels and zeroes *img (safe on a zeroed image). */
void sd_image_free(sd_image *img);

/* ---- from the VAE (diffusers v0.27.2 VaeImageProcessor.postprocess) ---- */

/* dst[i] = clamp(src[i]/2 + 0.5, 0, 1) in float32 (denormalize()); in place ok. */
void sd_image_denormalize(const float *src, float *dst, size_t n);
/* u8 = round_half_even(x * 255) in float32 (numpy_to_pil: (x*255).round()
 * .astype(uint8)) for one [3,H,W] plane set in [0,1], written as HWC. */
void sd_image_unit_to_rgb8(const float *chw, int width, int height, uint8_t *rgb);
/* Both steps: one decoded image [1,3,H,W] (the VAE's raw output, about
 * [-1,1]) into a newly allocated *out. Bit-identical to diffusers. */
int sd_image_from_vae(const float *chw, int width, int height, sd_image *out, sd_error *err);

/* ---- PNG output ---- */

typedef struct sd_png_text {
    const char *key;    /* keyword: 1-79 printable Latin-1 characters, e.g. "parameters" */
    const char *text;   /* UTF-8 value */
} sd_png_text;

/* Writes img as an 8-bit RGB PNG with the text chunks (tEXt when the value
 * is Latin-1-encodable, else iTXt), atomically. On failure nothing is left
 * at path or beside it and err names the path and the cause. */
int sd_png_write(const char *path, const sd_image *img, const sd_png_text *texts, int n_texts,
                 sd_error *err);

/* ---- PNG reading with its text (libpng) ---- */

typedef enum sd_png_text_kind {
    SD_PNG_TEXT_TEXT,   /* tEXt (Latin-1 on disk) */
    SD_PNG_TEXT_ZTXT,   /* zTXt (compressed Latin-1) */
    SD_PNG_TEXT_ITXT,   /* iTXt (UTF-8, compressed or not) */
} sd_png_text_kind;

typedef struct sd_png_text_chunk {
    char *key;          /* UTF-8 (converted from Latin-1) */
    char *text;         /* UTF-8 (tEXt/zTXt converted from Latin-1) */
    sd_png_text_kind kind;
} sd_png_text_chunk;

typedef struct sd_png_info {
    int width, height;          /* of the image */
    int n_text;
    sd_png_text_chunk *text;    /* in file order, before and after IDAT */
} sd_png_info;

/* Reads a PNG: its text chunks into *info and, if img is not NULL, its
 * pixels converted to RGB8 (palette expanded, 16-bit stripped, gray
 * replicated, alpha dropped). Corrupt input is an error, never a crash. */
int sd_png_read(const char *path, sd_image *img, sd_png_info *info, sd_error *err);
void sd_png_info_free(sd_png_info *info);
/* First chunk with this keyword, or NULL. */
const sd_png_text_chunk *sd_png_info_find(const sd_png_info *info, const char *key);

/* ---- PNG / JPEG input (stb_image) ---- */

/* Loads a PNG or JPEG file (recognised by its signature) as RGB8; gray is
 * replicated, alpha dropped, 16-bit reduced to 8. Other formats, truncated
 * or corrupt files and images over SD_IMAGE_MAX_PIXELS are errors. */
int sd_image_load(const char *path, sd_image *out, sd_error *err);

#endif
