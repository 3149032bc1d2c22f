/* cli/gen_options — the generation flags shared by `generate` and `batch`
 * (stable-diffusion.cpp's names), parsed with getopt_long. */
#ifndef SDMOE_CLI_GEN_OPTIONS_H
#define SDMOE_CLI_GEN_OPTIONS_H

#include <stdint.h>

typedef struct gen_options {
    const char *model;           /* -m */
    const char *prompt;          /* -p */
    const char *negative;        /* -n; NULL = absent (not the same as "") */
    const char *output;          /* -o */
    int64_t seed;                /* -s; < 0 = random */
    int steps;                   /* --steps */
    double cfg_scale;            /* --cfg-scale */
    int width, height;           /* -W/-H; 0 = model default */
    const char *sampler;         /* --sampler; NULL = the model's own scheduler */
    const char *scheduler;       /* --scheduler: "default" | "karras" */
    int batch_count;             /* -b */
    int threads;                 /* -t; <= 0 = physical cores */
    int clip_skip;               /* --clip-skip; 0 = unset (1) */
    const char *prompt_syntax;   /* --prompt-syntax a1111|plain */
    const char *variant;         /* --variant fp16 */
    const char *model_config;    /* --model-config */
    const char *moe_routing;     /* --moe-routing segmoe|per-token */
    const char *moe_stats;       /* --moe-stats FILE */
    int vae_tiling;              /* --vae-tiling */
    const char *weight_cache;    /* --weight-cache DIR|off, --no-weight-cache (= off); NULL = default folder */
    /* SDXL micro-conditioning (diffusers' original_size, target_size,
     * crops_coords_top_left); 0 = default (the image size; crop 0,0) */
    int original_width, original_height; /* --original-size WxH */
    int target_width, target_height;     /* --target-size WxH */
    int crop_top, crop_left;             /* --crop-top-left TOP,LEFT */
    int micro_given;             /* 1 if any of the three flags was given (SDXL only) */
    int quiet, verbose;          /* -q / -v */
    /* batch only */
    const char *jobs;            /* --jobs FILE */
    int batch_size;              /* --batch-size */
    const char *shard;           /* --shard I/N | auto */
} gen_options;

void gen_options_defaults(gen_options *o);
/* Parses argv (argv[0] = command name).  batch_mode accepts --jobs etc.
 * Returns 0 ok, 1 when --help was printed, -1 on a bad flag (message in msg). */
int gen_options_parse(gen_options *o, int argc, char **argv, int batch_mode, char *msg, int msg_cap);
void gen_options_usage(const char *cmd, int batch_mode);

#endif
