#include "cli/gen_options.h"

#include "sampler/sampler.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void gen_options_defaults(gen_options *o) {
    memset(o, 0, sizeof *o);
    o->output = "output.png";
    o->seed = -1;
    o->steps = 20;
    o->cfg_scale = 7.5;
    o->batch_count = 1;
    o->scheduler = "default";
    o->prompt_syntax = "a1111";
    o->moe_routing = "segmoe";
    o->batch_size = 1;
}

void gen_options_usage(const char *cmd, int batch_mode) {
    if (batch_mode)
        printf("usage: sdmoe batch -m MODEL --jobs FILE -o DIR [options]\n\n"
               "  --jobs FILE              JSON Lines jobs or one prompt per line ('-' = stdin)\n"
               "  -o, --output DIR         output folder (PNGs + manifest.jsonl)\n"
               "  --batch-size N           denoise N images per UNet call (1)\n"
               "  --shard I/N | auto       render only jobs with index = I mod N\n\n"
               "defaults for every job:\n");
    else
        printf("usage: sdmoe %s -m MODEL -p PROMPT [options]\n\n", cmd);
    printf("  -m, --model PATH         diffusers folder, SegMoE folder or single-file .safetensors\n"
           "  -p, --prompt TEXT        prompt\n"
           "  -n, --negative-prompt T  negative prompt (absent: \"\"; SDXL: zeros, while -n \"\" encodes \"\")\n");
    if (!batch_mode)
        printf("  -o, --output FILE        output PNG (output.png); %%d numbers batch images\n");
    printf("  -s, --seed N             seed (-1 = random; image i uses seed+i)\n"
           "      --steps N            sampling steps (20)\n"
           "      --cfg-scale X        classifier-free guidance scale (7.5)\n"
           "  -W, --width N            image width, multiple of 8 (model default)\n"
           "  -H, --height N           image height, multiple of 8 (model default)\n"
           "      --sampler NAME       sampler (alias --sampling-method); default: the model's scheduler\n"
           "      --scheduler NAME     sigma schedule: default | karras\n"
           "  -b, --batch-count N      number of images (1)\n"
           "  -t, --threads N          threads (<= 0: physical cores)\n"
           "      --clip-skip N        1 = last CLIP layer, 2 = penultimate (A1111 meaning)\n"
           "      --prompt-syntax S    a1111 (weights, BREAK, long prompts) | plain (diffusers)\n"
           "      --original-size WxH  SDXL: original-size conditioning (default: the image size)\n"
           "      --target-size WxH    SDXL: target-size conditioning (default: the image size)\n"
           "      --crop-top-left T,L  SDXL: crop-coordinates conditioning, pixels (default 0,0)\n"
           "      --variant fp16       load the .fp16 weight files of a diffusers folder\n"
           "      --model-config F     LDM / SGM yaml (or a diffusers folder) describing a single-file model\n"
           "      --moe-routing R      segmoe (default, SegMoE-identical) | per-token (Mixtral style)\n"
           "      --moe-stats FILE     write per-layer, per-step expert choices as JSON\n"
           "      --vae-tiling         VAE decode in overlapping tiles of 32 latents (diffusers' tiled_decode)\n"
           "      --weight-cache DIR   where prepared (reordered) conv weights and model hashes are kept\n"
           "                           (default $SDMOE_CACHE_DIR or ~/.cache/sdmoe; off = none)\n"
           "      --no-weight-cache    same as --weight-cache off\n"
           "  -q, --quiet              no progress output\n"
           "  -v, --verbose            more detail\n"
           "  -h, --help               this help\n\nsamplers (--sampler; append _karras for the Karras schedule):\n");
    int n;
    const sd_sampler_info *list = sd_sampler_list(&n);
    for (int i = 0; i < n; i++)
        printf("  %-10s %-10s %s\n", list[i].name, list[i].display_name, list[i].summary);
}

enum {
    OPT_STEPS = 1000, OPT_CFG, OPT_SAMPLER, OPT_SCHEDULER, OPT_CLIP_SKIP, OPT_SYNTAX, OPT_VARIANT,
    OPT_MODEL_CONFIG, OPT_MOE_ROUTING, OPT_MOE_STATS, OPT_VAE_TILING, OPT_JOBS, OPT_BATCH_SIZE, OPT_SHARD,
    OPT_ORIGINAL_SIZE, OPT_TARGET_SIZE, OPT_CROP, OPT_WEIGHT_CACHE, OPT_NO_WEIGHT_CACHE,
};

/* Largest size / crop coordinate the SDXL conditioning flags accept. */
#define MICRO_MAX 65536

static int parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_i64(const char *s, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

/* "<a><sep><b>" with two whole numbers in [lo, MICRO_MAX]. */
static int parse_pair(const char *s, const char *seps, long lo, long *a, long *b) {
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9') return -1;
    long x = strtol(s, &end, 10);
    if (errno || !*end || !strchr(seps, *end) || x < lo || x > MICRO_MAX) return -1;
    const char *t = end + 1;
    if (*t < '0' || *t > '9') return -1;
    long y = strtol(t, &end, 10);
    if (errno || *end || y < lo || y > MICRO_MAX) return -1;
    *a = x;
    *b = y;
    return 0;
}

static int parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v != v) return -1;
    *out = v;
    return 0;
}

int gen_options_parse(gen_options *o, int argc, char **argv, int batch_mode, char *msg, int msg_cap) {
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},
        {"prompt", required_argument, 0, 'p'},
        {"negative-prompt", required_argument, 0, 'n'},
        {"output", required_argument, 0, 'o'},
        {"seed", required_argument, 0, 's'},
        {"steps", required_argument, 0, OPT_STEPS},
        {"cfg-scale", required_argument, 0, OPT_CFG},
        {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},
        {"sampler", required_argument, 0, OPT_SAMPLER},
        {"sampling-method", required_argument, 0, OPT_SAMPLER},
        {"scheduler", required_argument, 0, OPT_SCHEDULER},
        {"batch-count", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'},
        {"clip-skip", required_argument, 0, OPT_CLIP_SKIP},
        {"prompt-syntax", required_argument, 0, OPT_SYNTAX},
        {"variant", required_argument, 0, OPT_VARIANT},
        {"model-config", required_argument, 0, OPT_MODEL_CONFIG},
        {"moe-routing", required_argument, 0, OPT_MOE_ROUTING},
        {"moe-stats", required_argument, 0, OPT_MOE_STATS},
        {"vae-tiling", no_argument, 0, OPT_VAE_TILING},
        {"weight-cache", required_argument, 0, OPT_WEIGHT_CACHE},
        {"no-weight-cache", no_argument, 0, OPT_NO_WEIGHT_CACHE},
        {"original-size", required_argument, 0, OPT_ORIGINAL_SIZE},
        {"target-size", required_argument, 0, OPT_TARGET_SIZE},
        {"crop-top-left", required_argument, 0, OPT_CROP},
        {"jobs", required_argument, 0, OPT_JOBS},
        {"batch-size", required_argument, 0, OPT_BATCH_SIZE},
        {"shard", required_argument, 0, OPT_SHARD},
        {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    optind = 1;
    opterr = 0;
    int c;
    long v;
    while ((c = getopt_long(argc, argv, ":m:p:n:o:s:W:H:b:t:qvh", longopts, NULL)) != -1) {
        const char *a = optarg;
        switch (c) {
        case 'm': o->model = a; break;
        case 'p': o->prompt = a; break;
        case 'n': o->negative = a; break;
        case 'o': o->output = a; break;
        case 's':
            if (parse_i64(a, &o->seed)) goto bad_value;
            break;
        case OPT_STEPS:
            if (parse_int(a, 1, 10000, &v)) {
                snprintf(msg, (size_t)msg_cap, "--steps: '%s' is not a whole number from 1 to 10000", a);
                return -1;
            }
            o->steps = (int)v;
            break;
        case OPT_CFG:
            if (parse_double(a, &o->cfg_scale)) goto bad_value;
            break;
        case 'W':
        case 'H':
            if (parse_int(a, 8, 16384, &v) || v % 8) {
                snprintf(msg, (size_t)msg_cap, "--%s: '%s' must be a multiple of 8 between 8 and 16384",
                         c == 'W' ? "width" : "height", a);
                return -1;
            }
            if (c == 'W') o->width = (int)v;
            else o->height = (int)v;
            break;
        case OPT_SAMPLER: o->sampler = a; break;
        case OPT_SCHEDULER: o->scheduler = a; break;
        case 'b':
            if (parse_int(a, 1, 100000, &v)) goto bad_value;
            o->batch_count = (int)v;
            break;
        case 't':
            if (parse_int(a, -1, 1024, &v)) goto bad_value;
            o->threads = (int)v;
            break;
        case OPT_CLIP_SKIP:
            if (parse_int(a, 1, 100, &v)) goto bad_value;
            o->clip_skip = (int)v;
            break;
        case OPT_SYNTAX:
            if (strcmp(a, "a1111") && strcmp(a, "plain")) {
                snprintf(msg, (size_t)msg_cap, "--prompt-syntax: '%s' is not one of a1111, plain", a);
                return -1;
            }
            o->prompt_syntax = a;
            break;
        case OPT_VARIANT: o->variant = a; break;
        case OPT_MODEL_CONFIG: o->model_config = a; break;
        case OPT_MOE_ROUTING:
            if (strcmp(a, "segmoe") && strcmp(a, "per-token")) {
                snprintf(msg, (size_t)msg_cap, "--moe-routing: '%s' is not one of segmoe, per-token", a);
                return -1;
            }
            o->moe_routing = a;
            break;
        case OPT_MOE_STATS: o->moe_stats = a; break;
        case OPT_VAE_TILING: o->vae_tiling = 1; break;
        case OPT_WEIGHT_CACHE: o->weight_cache = a; break;
        case OPT_NO_WEIGHT_CACHE: o->weight_cache = "off"; break;
        case OPT_ORIGINAL_SIZE:
        case OPT_TARGET_SIZE: {
            long w, h;
            const char *flag = c == OPT_ORIGINAL_SIZE ? "--original-size" : "--target-size";
            if (parse_pair(a, "xX", 1, &w, &h)) {
                snprintf(msg, (size_t)msg_cap, "%s: '%s' is not WIDTHxHEIGHT (e.g. 1024x1024) with whole numbers "
                         "from 1 to %d", flag, a, MICRO_MAX);
                return -1;
            }
            if (c == OPT_ORIGINAL_SIZE) o->original_width = (int)w, o->original_height = (int)h;
            else o->target_width = (int)w, o->target_height = (int)h;
            o->micro_given = 1;
            break;
        }
        case OPT_CROP: {
            long top, left;
            if (parse_pair(a, ",", 0, &top, &left)) {
                snprintf(msg, (size_t)msg_cap, "--crop-top-left: '%s' is not TOP,LEFT (e.g. 0,0) with whole numbers "
                         "from 0 to %d", a, MICRO_MAX);
                return -1;
            }
            o->crop_top = (int)top;
            o->crop_left = (int)left;
            o->micro_given = 1;
            break;
        }
        case OPT_JOBS:
            if (!batch_mode) goto not_here;
            o->jobs = a;
            break;
        case OPT_BATCH_SIZE:
            if (!batch_mode) goto not_here;
            if (parse_int(a, 1, 64, &v)) goto bad_value;
            o->batch_size = (int)v;
            break;
        case OPT_SHARD:
            if (!batch_mode) goto not_here;
            o->shard = a;
            break;
        case 'q': o->quiet = 1; break;
        case 'v': o->verbose = 1; break;
        case 'h':
            gen_options_usage(argv[0], batch_mode);
            return 1;
        case ':':
            snprintf(msg, (size_t)msg_cap, "option '%s' needs a value", argv[optind - 1]);
            return -1;
        default:
            snprintf(msg, (size_t)msg_cap, "unknown option '%s' (see sdmoe %s --help)", argv[optind - 1], argv[0]);
            return -1;
        }
        continue;
    bad_value:
        snprintf(msg, (size_t)msg_cap, "option '%s': invalid value '%s'", argv[optind - 1], a);
        return -1;
    not_here:
        snprintf(msg, (size_t)msg_cap, "option '%s' is only for sdmoe batch", argv[optind - 1]);
        return -1;
    }
    if (optind < argc) {
        snprintf(msg, (size_t)msg_cap, "unexpected argument '%s' (see sdmoe %s --help)", argv[optind], argv[0]);
        return -1;
    }
    if (!o->model) {
        snprintf(msg, (size_t)msg_cap, "missing -m/--model (a diffusers folder or a .safetensors checkpoint)");
        return -1;
    }
    if (strcmp(o->scheduler, "default") && strcmp(o->scheduler, "karras") && strcmp(o->scheduler, "discrete")) {
        snprintf(msg, (size_t)msg_cap, "--scheduler: '%s' is not one of default, karras", o->scheduler);
        return -1;
    }
    return 0;
}
