/* vae/vae_tiled — tiled decode, diffusers v0.27.2 AutoencoderKL.tiled_decode
 * (autoencoder_kl.py: tiled_decode, blend_v, blend_h; contract in vae/vae.h).
 *
 * diffusers decodes every tile first, then blends and crops them in raster
 * order, each tile in place: blend_v with the (already blended) tile above,
 * then blend_h with the (already blended) tile to the left.  A blend only
 * reads the last e <= E rows (columns) of its neighbour, so this file keeps
 * just those: one strip of E rows per tile column (the row of tiles above)
 * and one strip of E columns (the tile to the left), and writes each
 * finished tile's crop straight into the caller's image.  Peak memory is one
 * tile's decoder workspace plus these buffers, whatever the image size. */
#include <stdlib.h>
#include <string.h>

#include "vae/vae_internal.h"

typedef struct tiler {
    int64_t n, lc, c;          /* batch, latent channels, image channels */
    int64_t h, w, f;           /* latent size, decoder factor */
    int64_t T, stride, E, keep; /* latent tile, latent stride, blend extent and crop (image pixels) */
    int64_t S;                 /* image tile side, T * f */
    float *lat;                /* [n, lc, T, T] latent tile */
    float *img;                /* [n, c, S, S] decoded tile (its real size bh x bw, packed) */
    float *left;               /* [n, c, bh, left_cols]: last columns of the finished tile to the left */
    int64_t left_cols;
    float *above;              /* per tile column j: [n, c, above_rows[j], bw_j] at j * n*c*E*S */
    int64_t *above_rows;
} tiler;

/* Blend weights as torch computes `a * (1 - y / e) + b * (y / e)` for a
 * float tensor: the Python float rounded to float32. */
static void weights(int64_t y, int64_t e, float *wa, float *wb) {
    double t = (double)y / (double)e;
    *wa = (float)(1.0 - t);
    *wb = (float)t;
}

/* blend_v: the first e rows of b [n, c, bh, bw] from the strip of the last
 * `rows` rows of the tile above ([n, c, rows, bw], rows >= e). */
static void blend_rows(const tiler *t, float *b, int64_t bh, int64_t bw, const float *strip, int64_t rows, int64_t e) {
    for (int64_t k = 0; k < t->n * t->c; k++)
        for (int64_t y = 0; y < e; y++) {
            float wa, wb;
            weights(y, e, &wa, &wb);
            const float *ar = strip + (k * rows + rows - e + y) * bw;
            float *br = b + (k * bh + y) * bw;
            for (int64_t x = 0; x < bw; x++) br[x] = ar[x] * wa + br[x] * wb;
        }
}

/* blend_h: the first e columns of b from the strip of the last `cols`
 * columns of the tile to the left ([n, c, bh, cols], cols >= e). */
static void blend_cols(const tiler *t, float *b, int64_t bh, int64_t bw, const float *strip, int64_t cols, int64_t e) {
    for (int64_t k = 0; k < t->n * t->c; k++)
        for (int64_t y = 0; y < bh; y++) {
            const float *ar = strip + (k * bh + y) * cols + cols - e;
            float *br = b + (k * bh + y) * bw;
            for (int64_t x = 0; x < e; x++) {
                float wa, wb;
                weights(x, e, &wa, &wb);
                br[x] = ar[x] * wa + br[x] * wb;
            }
        }
}

/* Copies the [rows, cols] window at (y0, x0) of each plane of src [n*c, sh, sw]
 * into dst [n*c, rows, cols] with plane stride dst_plane (>= rows * cols)
 * and row stride dst_ld. */
static void copy_window(const float *src, int64_t planes, int64_t sh, int64_t sw, int64_t y0, int64_t x0,
                        int64_t rows, int64_t cols, float *dst, int64_t dst_plane, int64_t dst_ld) {
    for (int64_t k = 0; k < planes; k++)
        for (int64_t y = 0; y < rows; y++)
            memcpy(dst + k * dst_plane + y * dst_ld, src + (k * sh + y0 + y) * sw + x0, (size_t)cols * sizeof(float));
}

/* Decodes, blends and writes tile (i, j). */
static int tile_run(vae_model *m, tiler *t, const float *latents, int64_t i, int64_t j, float *image, sd_error *err) {
    int64_t ly = i * t->stride, lx = j * t->stride;
    int64_t th = t->h - ly < t->T ? t->h - ly : t->T, tw = t->w - lx < t->T ? t->w - lx : t->T;
    int64_t bh = th * t->f, bw = tw * t->f, H = t->h * t->f, W = t->w * t->f;
    /* z[:, :, ly : ly + T, lx : lx + T] */
    copy_window(latents, t->n * t->lc, t->h, t->w, ly, lx, th, tw, t->lat, th * tw, tw);
    if (vae_decode_latents(m, t->lat, t->n, th, tw, t->img, NULL, err))
        return sd_error_prefix(err, "vae: tiled decode: tile at latent (%lld, %lld)", (long long)ly, (long long)lx);
    float *above = t->above + j * t->n * t->c * t->E * t->S;
    if (i > 0) { /* e = min(a.shape[2], b.shape[2], E); the strip holds min(a rows, E) rows */
        int64_t rows = t->above_rows[j], e = rows < bh ? rows : bh;
        blend_rows(t, t->img, bh, bw, above, rows, e);
    }
    if (j > 0) {
        int64_t cols = t->left_cols, e = cols < bw ? cols : bw;
        blend_cols(t, t->img, bh, bw, t->left, cols, e);
    }
    /* keep the finished tile's last E rows / columns for its neighbours below and to the right */
    int64_t rows = bh < t->E ? bh : t->E, cols = bw < t->E ? bw : t->E;
    copy_window(t->img, t->n * t->c, bh, bw, bh - rows, 0, rows, bw, above, rows * bw, bw);
    t->above_rows[j] = rows;
    copy_window(t->img, t->n * t->c, bh, bw, 0, bw - cols, bh, cols, t->left, bh * cols, cols);
    t->left_cols = cols;
    /* tile[:, :, :keep, :keep] at (i * keep, j * keep): every crop but the last of a row/column is keep wide */
    int64_t ch = bh < t->keep ? bh : t->keep, cw = bw < t->keep ? bw : t->keep;
    for (int64_t k = 0; k < t->n * t->c; k++)
        for (int64_t y = 0; y < ch; y++)
            memcpy(image + (k * H + i * t->keep + y) * W + j * t->keep, t->img + (k * bh + y) * bw,
                   (size_t)cw * sizeof(float));
    return 0;
}

int vae_decode_tiled(vae_model *m, const float *latents, int64_t n, int64_t h, int64_t w, int tile, float *image,
                     sd_error *err) {
    if (tile < 4 || tile % 4)
        return sd_fail(err, "vae: tiled decode: tile %d latent pixels: expected a positive multiple of 4", tile);
    if (n < 1 || h < 1 || w < 1)
        return sd_fail(err, "vae: tiled decode: bad latent shape [%lld, %d, %lld, %lld]", (long long)n,
                       m->cfg.latent_channels, (long long)h, (long long)w);
    if (h <= tile && w <= tile) return vae_decode_latents(m, latents, n, h, w, image, NULL, err);
    tiler t = {.n = n, .lc = m->cfg.latent_channels, .c = m->cfg.out_channels, .h = h, .w = w, .T = tile};
    int64_t fw;
    vae_decode_out_size(m, 1, 1, &t.f, &fw);
    /* diffusers: overlap_size = int(T * (1 - 0.25)), blend_extent = int(S * 0.25), row_limit = S - blend_extent */
    t.S = t.T * t.f;
    t.stride = t.T * 3 / 4;
    t.E = t.S / 4;
    t.keep = t.S - t.E;
    int64_t rows = (h + t.stride - 1) / t.stride, cols = (w + t.stride - 1) / t.stride;
    size_t f_lat = (size_t)(n * t.lc * t.T * t.T), f_img = (size_t)(n * t.c * t.S * t.S),
           f_left = (size_t)(n * t.c * t.S * t.E), f_above = (size_t)(cols * n * t.c * t.E * t.S);
    t.lat = malloc(f_lat * sizeof(float));
    t.img = malloc(f_img * sizeof(float));
    t.left = malloc(f_left * sizeof(float));
    t.above = malloc(f_above * sizeof(float));
    t.above_rows = calloc((size_t)cols, sizeof *t.above_rows);
    int rc = 0;
    if (!t.lat || !t.img || !t.left || !t.above || !t.above_rows) {
        rc = sd_fail(err, "vae: tiled decode: out of memory for %lld-pixel tiles", (long long)t.S);
    } else {
        size_t bytes = (f_lat + f_img + f_left + f_above) * sizeof(float) + (size_t)cols * sizeof *t.above_rows;
        if (bytes > m->tile_bytes) m->tile_bytes = bytes;
    }
    for (int64_t i = 0; !rc && i < rows; i++)
        for (int64_t j = 0; !rc && j < cols; j++) rc = tile_run(m, &t, latents, i, j, image, err);
    free(t.lat);
    free(t.img);
    free(t.left);
    free(t.above);
    free(t.above_rows);
    return rc;
}
