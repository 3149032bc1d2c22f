/* unet/unet_internal — the sd_unet object shared by unet_load.c and
 * unet_forward.c (not part of the public contract). */
#ifndef SDMOE_UNET_UNET_INTERNAL_H
#define SDMOE_UNET_UNET_INTERNAL_H

#include "core/memory.h"
#include "unet/unet.h"

/* Activation workspace, carved from one allocation (all NHWC). */
typedef struct unet_workspace {
    sd_scratch own;           /* the pages, unless shared (sd_unet_share_scratch) */
    sd_scratch *mem;          /* &own, or the shared scratch */
    size_t need_bytes;        /* what the latest forward carved */
    int64_t n, h, w, n_ctx;   /* what it was sized for */
    float *x;                 /* input [n, h, w, in_channels] */
    float *skips;             /* every res sample, in push order */
    float *ha, *hb, *cat;     /* hidden ping-pong and concat input (max_act floats each) */
    float *t1, *t2;           /* resnet / transformer temporaries (max_act) */
    float *ln, *q, *k, *v, *o, *ffo; /* token buffers (max_tok floats each) */
    float *lin_scratch;       /* sd_proj / sd_ff scratch */
    float *attn_scratch;
    int64_t attn_scratch_floats;
} unet_workspace;

struct sd_unet {
    sd_unet_config cfg;
    sd_dense time_lin1;              /* time_embedding.linear_1 [temb, c0] + bias */
    sd_dense time_lin2;              /* time_embedding.linear_2 [temb, temb] + bias */
    sd_dense add_lin1;               /* text_time only: add_embedding.linear_1 [temb, add_embed_in] + bias */
    sd_dense add_lin2;               /* text_time only: add_embedding.linear_2 [temb, temb] + bias */
    sd_tensor conv_in_w, conv_in_b;  /* conv_in [c0, in, k, k] */
    sd_conv2d *conv_in;
    sd_unet_block down[SD_UNET_MAX_LEVELS];
    sd_unet_block up[SD_UNET_MAX_LEVELS];
    sd_unet_block mid;               /* n_resnets == 0 when absent */
    sd_tensor norm_out_w, norm_out_b; /* conv_norm_out [c0] */
    sd_tensor conv_out_w, conv_out_b; /* conv_out [out, c0, k, k] */
    sd_conv2d *conv_out;

    int n_tblocks;
    sd_unet_tblock **tblocks;        /* forward order */
    int n_moe;

    /* small per-call vectors; emb has one row for the whole batch, or one per
     * batch item when added conditioning makes the rows differ */
    float *tproj, *temb0;            /* [c0], [temb]: time_proj(t), time_embedding(.) */
    float *temb, *temb_act, *tvec;   /* [rows, temb], [rows, temb], [rows, max channels] */
    int64_t temb_rows_cap;           /* rows temb/temb_act/tvec have room for */
    int64_t temb_rows;               /* rows of the current forward: 1, or n for text_time */
    float *aug;                      /* text_time: add_embedding output [aug_n, temb] */
    int64_t aug_n;                   /* rows of aug (0 = not set) */
    int64_t maxc;                    /* widest tvec row */

    int blk;                         /* activation layout (core/kernels.h): sd_preferred_layout() */
    float *cap_buf;                  /* NHWC copy for the capture callback (tests only) */
    size_t cap_floats;
    unet_workspace ws;
    int64_t ctx_n, ctx_tokens;       /* what the attn2 K/V caches hold (0 = nothing) */
    sd_unet_capture_fn capture;
    void *capture_ctx;
};

#endif
