/* `sdmoe merge CONFIG.yaml OUT_DIR`: builds a SegMoE mixture-of-experts
 * model folder from a SegMoE config, as `segmoe CONFIG OUT` does (reading:
 * moe_merge/segmoe_config; gates: moe_merge/gate_init; writing:
 * moe_merge/merge_writer), seeded and on the CPU.
 *
 * Output: warnings and progress (one bar per expert gate run, one for
 * writing) on stderr, the summary on stdout; errors are one line
 * "sdmoe: <message>" and exit status 1, with no output folder left. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/progress.h"
#include "core/kernels.h"
#include "moe_merge/gate_init.h"
#include "moe_merge/merge_writer.h"
#include "moe_merge/segmoe_config.h"

static void merge_usage(FILE *out) {
    fprintf(out,
            "usage: sdmoe merge CONFIG.yaml OUT_DIR [options]\n\n"
            "Builds a mixture-of-experts model from a SegMoE config (base_model, experts with\n"
            "positive/negative prompts, num_experts_per_tok, moe_layers ff|attn|all, type sd|sdxl\n"
            "(SegMoE's default: sdxl), init hidden|random) and writes it as a diffusers folder SegMoE\n"
            "can load.  Model paths in the YAML are local folders or .safetensors files, relative to\n"
            "the YAML's folder.  With init: hidden (the default) every expert's own pipeline runs\n"
            "once (25 DDPM steps at its native size, guidance 7.5 for sd / 5.0 for sdxl, seed S + e)\n"
            "to compute the gates (mapping an expert's weight cache when `generate` made one; merge\n"
            "writes none).\n\n"
            "  --seed S                 seed of the gate runs and of init: random gates (0)\n"
            "  -t, --threads N          threads (<= 0: physical cores)\n"
            "  --dtype f32|f16|bf16     dtype of the merged UNet file (default: the base UNet's)\n"
            "  -q, --quiet              no progress output\n"
            "  -h, --help               this help\n");
}

typedef struct merge_args {
    const char *yaml, *out;
    uint64_t seed;
    int threads, threads_set;
    int dtype;
    int quiet;
} merge_args;

static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    if (!*s || *s == '-' || *s == '+') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_dtype(const char *s, int *out) {
    if (!strcmp(s, "f32") || !strcmp(s, "fp32") || !strcmp(s, "float32")) *out = ST_F32;
    else if (!strcmp(s, "f16") || !strcmp(s, "fp16") || !strcmp(s, "float16")) *out = ST_F16;
    else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) *out = ST_BF16;
    else return -1;
    return 0;
}

/* 0 = run, 1 = --help shown, -1 = error printed. */
static int parse_args(int argc, char **argv, merge_args *a) {
    enum { OPT_SEED = 1000, OPT_DTYPE };
    static const struct option longs[] = {
        {"seed", required_argument, NULL, OPT_SEED},  {"threads", required_argument, NULL, 't'},
        {"dtype", required_argument, NULL, OPT_DTYPE}, {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},             {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof *a);
    a->dtype = SD_MERGE_DTYPE_AUTO;
    optind = 0; /* glibc: full re-initialisation */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":t:qh", longs, NULL)) != -1) {
        switch (c) {
        case OPT_SEED:
            if (parse_u64(optarg, &a->seed)) {
                fprintf(stderr, "sdmoe: merge: --seed: '%s' is not a whole number from 0 to 2^64-1\n", optarg);
                return -1;
            }
            break;
        case 't': {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || *end || !*optarg || v > 1024) {
                fprintf(stderr, "sdmoe: merge: --threads: '%s' is not a whole number up to 1024\n", optarg);
                return -1;
            }
            a->threads = (int)v;
            a->threads_set = 1;
            break;
        }
        case OPT_DTYPE:
            if (parse_dtype(optarg, &a->dtype)) {
                fprintf(stderr, "sdmoe: merge: --dtype: '%s' is not one of f32, f16, bf16\n", optarg);
                return -1;
            }
            break;
        case 'q': a->quiet = 1; break;
        case 'h': merge_usage(stdout); return 1;
        case ':': fprintf(stderr, "sdmoe: merge: option '%s' needs a value\n", argv[optind - 1]); return -1;
        default:
            fprintf(stderr, "sdmoe: merge: unknown option '%s' (see sdmoe merge --help)\n", argv[optind - 1]);
            return -1;
        }
    }
    if (argc - optind != 2) {
        if (argc - optind > 2)
            fprintf(stderr, "sdmoe: merge: unexpected argument '%s' (expected CONFIG.yaml OUT_DIR)\n", argv[optind + 2]);
        else
            fprintf(stderr, "sdmoe: merge: expected CONFIG.yaml and OUT_DIR (see sdmoe merge --help)\n");
        return -1;
    }
    a->yaml = argv[optind];
    a->out = argv[optind + 1];
    return 0;
}

/* ------------------------------------------------------------- progress */

typedef struct merge_ui {
    cli_progress bar;
    cli_progress_mode mode;
    int gate_bar_open;
    int write_bar_open;
    const sd_segmoe_config *cfg;
} merge_ui;

static void on_gate_progress(void *ctx, int expert, int n_experts, const char *stage, int done, int total) {
    merge_ui *ui = ctx;
    if (ui->mode == CLI_PROGRESS_QUIET) return;
    if (!strcmp(stage, "load") && done == 0) {
        fprintf(stderr, "gate run %d/%d: %s\n", expert + 1, n_experts, ui->cfg->experts[expert].source_model);
        return;
    }
    if (strcmp(stage, "sample")) return;
    if (done == 0) {
        char label[64];
        snprintf(label, sizeof label, "expert %d/%d", expert + 1, n_experts);
        cli_progress_init(&ui->bar, stderr, ui->mode);
        cli_progress_start(&ui->bar, label, total);
        ui->gate_bar_open = 1;
        return;
    }
    if (!ui->gate_bar_open) return;
    cli_progress_update(&ui->bar, done);
    if (done >= total) {
        cli_progress_finish(&ui->bar);
        ui->gate_bar_open = 0;
    }
}

#define MIB (1024.0 * 1024.0)

static void on_write_progress(void *ctx, const char *stage, uint64_t done, uint64_t total) {
    (void)stage;
    merge_ui *ui = ctx;
    if (ui->mode == CLI_PROGRESS_QUIET) return;
    int t = (int)(total / MIB + 0.999), d = (int)(done / MIB);
    if (t < 1) t = 1;
    if (!ui->write_bar_open) {
        cli_progress_init(&ui->bar, stderr, ui->mode);
        cli_progress_start(&ui->bar, "writing UNet (MiB)", t);
        ui->write_bar_open = 1;
    }
    cli_progress_update(&ui->bar, done >= total ? t : d);
    if (done >= total) {
        cli_progress_finish(&ui->bar);
        ui->write_bar_open = 0;
    }
}

static void close_bars(merge_ui *ui) {
    /* an error ends a bar mid-line: move to a fresh line before the message */
    if ((ui->gate_bar_open || ui->write_bar_open) && ui->mode == CLI_PROGRESS_BAR) fputc('\n', stderr);
    ui->gate_bar_open = ui->write_bar_open = 0;
}

/* -------------------------------------------------------------- summary */

static const char *grouped(int64_t v, char *buf, size_t cap) {
    char raw[32];
    int n = snprintf(raw, sizeof raw, "%lld", (long long)v);
    size_t k = 0;
    for (int i = 0; i < n && k + 2 < cap; i++) {
        if (i && raw[i - 1] != '-' && (n - i) % 3 == 0) buf[k++] = ',';
        buf[k++] = raw[i];
    }
    buf[k] = '\0';
    return buf;
}

static const char *human_bytes(double b, char *buf, size_t cap) {
    static const char *const units[] = {"B", "KB", "MB", "GB", "TB"};
    int u = 0;
    while (b >= 1024 && u < 4) b /= 1024, u++;
    snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", b, units[u]);
    return buf;
}

static void print_summary(const merge_args *a, const sd_segmoe_config *cfg, const sd_merge_summary *s) {
    char p[32], t[32], sz[32];
    printf("merged %s\n", a->out);
    printf("  experts     %d (top-%d per layer call), init %s, seed %llu\n", s->n_experts, s->top_k,
           sd_segmoe_init_name(cfg->init), (unsigned long long)a->seed);
    printf("  layers      %d MoE layers (moe_layers %s)\n", s->n_modules, sd_segmoe_layers_name(cfg->moe_layers));
    printf("  parameters  %s UNet parameters in %s tensors\n", grouped(s->n_params, p, sizeof p),
           grouped(s->n_tensors, t, sizeof t));
    printf("  size        %s (UNet file, %s)\n", human_bytes((double)s->unet_bytes, sz, sizeof sz),
           st_dtype_name(s->dtype));
}

/* ----------------------------------------------------------------- main */

int cli_merge(int argc, char **argv) {
    merge_args a;
    int pr = parse_args(argc, argv, &a);
    if (pr) return pr > 0 ? 0 : 1;
    if (a.threads_set) sd_set_threads(a.threads > 0 ? a.threads : sd_default_threads());

    sd_error err = {0};
    sd_segmoe_config cfg;
    if (sd_segmoe_config_load(&cfg, a.yaml, &err)) {
        fprintf(stderr, "sdmoe: %s\n", err.msg);
        return 1;
    }
    for (int i = 0; i < cfg.n_warnings; i++) fprintf(stderr, "sdmoe: warning: %s\n", cfg.warnings[i]);
    if (sd_merge_check_output(a.out, &err)) {
        fprintf(stderr, "sdmoe: %s\n", err.msg);
        sd_segmoe_config_free(&cfg);
        return 1;
    }

    merge_ui ui = {.mode = cli_progress_auto_mode(stderr, a.quiet), .cfg = &cfg};
    sd_gate_init_options gopt = {.seed = a.seed, .on_progress = on_gate_progress, .progress_ctx = &ui};
    sd_gate_init gi;
    sd_gate_init_begin(&gi, &cfg, &gopt);
    sd_merge_options mo = {.seed = a.seed,
                           .dtype = a.dtype,
                           .gates = sd_gate_init_merge_fn,
                           .gates_ctx = &gi,
                           .progress = on_write_progress,
                           .progress_ctx = &ui};
    sd_merge_summary sum;
    int rc = sd_merge_write(&cfg, a.out, &mo, &sum, &err);
    sd_gate_init_end(&gi);
    if (rc) {
        close_bars(&ui);
        fprintf(stderr, "sdmoe: %s\n", err.msg);
    } else {
        print_summary(&a, &cfg, &sum);
    }
    sd_segmoe_config_free(&cfg);
    return rc ? 1 : 0;
}
