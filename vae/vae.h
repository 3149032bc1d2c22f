/* vae — the AutoencoderKL of Stable Diffusion: latents -> image (decode)
 * and image -> latent distribution (encode), numerically equal to diffusers
 * v0.27.2 (models/autoencoders/autoencoder_kl.py, vae.py Encoder/Decoder,
 * unets/unet_2d_blocks.py DownEncoderBlock2D/UpDecoderBlock2D/UNetMidBlock2D).
 *
 * Owns: the config read from vae/config.json, the typed weights (bound by
 * diffusers name through an sd_binder; convolutions prepared once as oneDNN
 * objects), and one workspace that grows to the largest (batch, h, w) asked
 * for and is reused afterwards.  Activations stay in one layout between
 * layers (core/kernels.h: sd_preferred_layout(), the channel-blocked nChw8c
 * where oneDNN's convolutions are fastest in it, else NHWC); the API takes
 * and returns NCHW, the layout of the sampler's latents and of the fixtures,
 * and converts only there and at the mid-block attention's token rows.
 *
 *     vae_config cfg;  vae_model *vae;
 *     vae_config_from_json(&cfg, json, "vae/config.json", &err);
 *     vae_load(&vae, &cfg, &binder, VAE_PART_DECODER, &err);
 *     vae_decode_latents(vae, latents, 1, 64, 64, image, NULL, &err);
 *     vae_free(vae);
 *
 * A vae_model is not safe for concurrent calls (one workspace).  It borrows
 * the sd_weights behind the binder: keep them open until vae_free.
 */
#ifndef SDMOE_VAE_VAE_H
#define SDMOE_VAE_VAE_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/memory.h"
#include "core/weights.h"

#define VAE_MAX_LEVELS 8

typedef struct vae_config {
    int in_channels;          /* image channels into the encoder (3) */
    int out_channels;         /* image channels out of the decoder (3) */
    int latent_channels;      /* 4 for SD */
    int n_levels;             /* len(block_out_channels) */
    int block_out_channels[VAE_MAX_LEVELS];
    int layers_per_block;     /* encoder resnets per level; the decoder has one more */
    int norm_num_groups;      /* every GroupNorm (eps is fixed at 1e-6 by diffusers) */
    int mid_block_add_attention; /* later diffusers key; v0.27.2 always has it (default 1) */
    double scaling_factor;    /* pipeline latents = encoder latents * scaling_factor */
} vae_config;

/* Reads an AutoencoderKL config object (diffusers defaults for absent keys:
 * block_out_channels [64], layers_per_block 1, norm_num_groups 32,
 * latent_channels 4, in/out_channels 3, scaling_factor 0.18215).  Fails on
 * block types other than DownEncoderBlock2D/UpDecoderBlock2D, a block type
 * count that differs from the level count, act_fn other than silu, or
 * channels not divisible by norm_num_groups.  `file` names the source in
 * messages. */
int vae_config_from_json(vae_config *cfg, const cJSON *json, const char *file, sd_error *err);

typedef struct vae_model vae_model;

/* Which halves to prepare.  All tensors are bound and shape-checked either
 * way (so sd_binder_check_complete sees them); only the chosen halves get
 * their convolutions built. */
enum { VAE_PART_DECODER = 1, VAE_PART_ENCODER = 2, VAE_PART_ALL = 3 };

/* Binds every tensor named as diffusers names them (`b` maps them for
 * single-file checkpoints; LDM's [C,C,1,1] attention weights bind as [C,C]).
 * The config is copied. */
int vae_load(vae_model **out, const vae_config *cfg, sd_binder *b, int parts, sd_error *err);
void vae_free(vae_model *m);
const vae_config *vae_model_config(const vae_model *m);

/* Optional view of intermediate activations (tests, debugging): called
 * with an NHWC tensor [n, h, w, c] valid only during the call.  Names as in
 * the fixtures: "decoder_input", "post_quant_conv", "decoder.conv_in",
 * "decoder.mid_block", "decoder.up_blocks.<i>", "decoder.conv_out";
 * "encoder.conv_in", "encoder.down_blocks.<i>", "encoder.mid_block",
 * "encoder.conv_out", "quant_conv" (= the moments). */
typedef struct vae_probe {
    void (*fn)(void *user, const char *name, const float *x, int64_t n, int64_t h, int64_t w,
               int64_t c);
    void *user;
} vae_probe;

/* Image size the decoder gives for h x w latents: 2^(n_levels-1) times larger. */
void vae_decode_out_size(const vae_model *m, int64_t h, int64_t w, int64_t *ih, int64_t *iw);

/* image NCHW [n, out_channels, 8h, 8w] (vae_decode_out_size) =
 * decoder(post_quant_conv(latents / scaling_factor)), raw (not clamped).
 * `latents` NCHW [n, latent_channels, h, w] are the sampler's latents: the
 * division by scaling_factor happens here, as the pipeline does it.
 * probe may be NULL. */
int vae_decode_latents(vae_model *m, const float *latents, int64_t n, int64_t h, int64_t w,
                       float *image, const vae_probe *probe, sd_error *err);

/* Tiled decode: diffusers' AutoencoderKL.tiled_decode (v0.27.2
 * autoencoder_kl.py, with blend_v / blend_h), for a peak memory bounded by
 * the tile instead of the image.  With T = `tile` latent pixels, f the
 * decoder's factor (vae_decode_out_size), S = T*f, overlap factor 1/4:
 *   stride = floor(T * 3/4) latents, E = floor(S / 4) image rows/columns,
 *   keep = S - E;
 *   tile (i, j) = decode(latents[:, :, i*stride : +T, j*stride : +T])
 *   (clipped at the bottom/right edge), visited row by row; each tile b is
 *   first blended with the finished tile a above it, then with the finished
 *   tile a to its left, in place:
 *     e = min(a.rows, b.rows, E);  for y < e:
 *       b[y] = a[a.rows - e + y] * (1 - y/e) + b[y] * (y/e)
 *   (columns likewise), weights computed in double and rounded to float,
 *   as torch multiplies a float tensor by a Python float;
 *   the output is the tiles' top-left keep x keep crops side by side.
 * tile >= h and tile >= w: exactly vae_decode_latents (diffusers' _decode
 * does not tile then).  tile must be a multiple of 4 (then stride*f = keep
 * and the crops add up to the image size, which diffusers' formula does not
 * give otherwise).  Like diffusers, the blend reads the last e rows of the
 * tile above even when that tile was clipped by the bottom edge, and those do
 * not sit over the same image rows (when 0 < h - i*stride < T/4 for a tile
 * row i >= 1; columns likewise).
 * Memory: the workspace of one (n, T, T) decode, one decoded tile, a strip
 * of E columns and one strip of E rows per tile column (vae_workspace_bytes);
 * the caller's image is written crop by crop.  Not for probes. */
int vae_decode_tiled(vae_model *m, const float *latents, int64_t n, int64_t h, int64_t w, int tile,
                     float *image, sd_error *err);
/* The latent tile --vae-tiling uses: 32 (256-pixel tiles for SD): a 512^2
 * decode then needs about a quarter of the whole-image workspace. */
#define VAE_DEFAULT_TILE 32

/* Bytes held by the activation workspace and the tiled decode's buffers
 * (their high-water mark so far: the workspace only grows). */
size_t vae_workspace_bytes(const vae_model *m);

/* Runs the activation workspace in `s` (core/memory.h) instead of the model's
 * own pages, e.g. the one the UNet samples in; s must outlive the model or be
 * unset with NULL.  Nothing in the workspace survives between calls. */
void vae_share_scratch(vae_model *m, sd_scratch *s);

/* Activation layout between layers (core/kernels.h: SD_LAYOUT_NHWC, 8 or
 * 16); default sd_preferred_layout().  Results agree to rounding.  A layout
 * other than the preferred one keeps a second, reordered copy of each conv's
 * weights once used (oneDNN's weight format follows the activation layout). */
int vae_set_layout(vae_model *m, int blk, sd_error *err);
int vae_get_layout(const vae_model *m);

/* Latent size the encoder gives for an h x w image (each downsampler pads
 * right/bottom by one and convolves 3x3 stride 2: out = (in - 2) / 2 + 1). */
void vae_encode_out_size(const vae_model *m, int64_t h, int64_t w, int64_t *lh, int64_t *lw);

/* image NCHW [n, in_channels, h, w] in [-1, 1] -> the DiagonalGaussian of
 * quant_conv(encoder(image)), each NCHW [n, latent_channels, lh, lw]:
 * mean, logvar clamped to [-30, 20], std = exp(logvar / 2).  Any of the
 * three outputs may be NULL.  Needs VAE_PART_ENCODER; images need h, w >= 2
 * at every downsampling level. */
int vae_encode_image(vae_model *m, const float *image, int64_t n, int64_t h, int64_t w,
                     float *mean, float *logvar, float *std, const vae_probe *probe, sd_error *err);

#endif
