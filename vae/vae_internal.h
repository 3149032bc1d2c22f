/* vae internals shared by vae_load.c (config, binding), vae_forward.c
 * (workspace, encode/decode) and vae_tiled.c: the typed weight structs.
 * Not part of the public contract (vae/vae.h). */
#ifndef SDMOE_VAE_INTERNAL_H
#define SDMOE_VAE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "core/kernels.h"
#include "vae/vae.h"

/* diffusers' Encoder/Decoder hard-code resnet_eps = 1e-6 and conv_norm_out
 * eps = 1e-6; the mid-block Attention's group_norm takes eps = resnet_eps. */
#define VAE_NORM_EPS 1e-6f

/* A prepared convolution and its channel counts (NULL k when the half it
 * belongs to was not requested). */
typedef struct vae_conv {
    sd_conv2d *k;
    int64_t c_in, c_out;
} vae_conv;

/* ResnetBlock2D without time embedding (temb_channels None):
 * out = x + conv2(SiLU(GN2(conv1(SiLU(GN1(x)))))), x through conv_shortcut
 * when the channel count changes.  output_scale_factor is 1. */
typedef struct vae_resnet {
    int64_t c_in, c_out;
    const float *norm1_w, *norm1_b; /* [c_in]  resnets.<j>.norm1.{weight,bias} */
    const float *norm2_w, *norm2_b; /* [c_out] resnets.<j>.norm2.{weight,bias} */
    vae_conv conv1;                 /* [c_out, c_in, 3, 3]  resnets.<j>.conv1 */
    vae_conv conv2;                 /* [c_out, c_out, 3, 3] resnets.<j>.conv2 */
    vae_conv shortcut;              /* [c_out, c_in, 1, 1]  resnets.<j>.conv_shortcut (c_in != c_out) */
    int has_shortcut;
} vae_resnet;

/* The mid block's single-head Attention (_from_deprecated_attn_block):
 * x + to_out(softmax(q k^T * c^-0.5) v) with q, k, v from GN(x) over the h*w
 * tokens; every projection has a bias. */
typedef struct vae_attention {
    int64_t c;
    const float *norm_w, *norm_b; /* [c]    attentions.0.group_norm */
    const float *q_w, *q_b;       /* [c, c] attentions.0.to_q (LDM: q, [c,c,1,1]) */
    const float *k_w, *k_b;       /* [c, c] attentions.0.to_k */
    const float *v_w, *v_b;       /* [c, c] attentions.0.to_v */
    const float *o_w, *o_b;       /* [c, c] attentions.0.to_out.0 (LDM: proj_out) */
} vae_attention;

/* UNetMidBlock2D with num_layers 1: resnet, attention, resnet. */
typedef struct vae_mid {
    vae_resnet res[2];
    int has_attn;
    vae_attention attn;
} vae_mid;

/* DownEncoderBlock2D / UpDecoderBlock2D: n_res resnets, then the resampler
 * (downsamplers.0.conv / upsamplers.0.conv) on every level but the last. */
typedef struct vae_level {
    int n_res;
    vae_resnet *res;
    int has_resample;
    vae_conv resample;
} vae_level;

/* Encoder or Decoder of diffusers' vae.py. */
typedef struct vae_coder {
    int loaded;                            /* convolutions built */
    vae_conv conv_in;
    vae_level levels[VAE_MAX_LEVELS];
    vae_mid mid;
    const float *norm_out_w, *norm_out_b;  /* conv_norm_out */
    vae_conv conv_out;
} vae_coder;

/* Activation buffers, grown to the largest request and reused.  x, s and t
 * hold activations in the model's layout (m->blk); the attention's token
 * rows (s, qkv, t) are NHWC. */
typedef struct vae_ws {
    sd_scratch own;       /* the pages, unless shared (vae_share_scratch) */
    sd_scratch *mem;      /* &own, or the shared scratch; carved on every call */
    float *x, *s;         /* current activation and its spare (swapped) */
    float *t;             /* resnet conv1 output; attention to_out rows */
    float *qkv;           /* mid attention q | k | v rows */
    float *scratch;       /* sd_attention scratch */
    float *tap;           /* NHWC copy for a vae_probe (grown only when probed) */
    size_t cap_x, cap_s, cap_t, cap_qkv, cap_scratch, cap_tap; /* floats, high-water marks */
} vae_ws;

struct vae_model {
    vae_config cfg;
    vae_coder enc, dec;
    vae_conv quant_conv;      /* [2L, 2L, 1, 1] quant_conv */
    vae_conv post_quant_conv; /* [L, L, 1, 1]   post_quant_conv */
    int blk;                  /* activation layout between layers (core/kernels.h) */
    vae_ws ws;
    size_t tile_bytes;        /* largest set of vae_decode_tiled buffers so far */
};

void vae_ws_free(vae_ws *ws);

#endif
