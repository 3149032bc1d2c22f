/* `sdmoe info -m MODEL`: what a model folder or checkpoint is — kind,
 * components, their key config values, parameter counts, dtypes, file
 * sizes, scheduler, and the MoE layout of a SegMoE model. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "core/model.h"

static void info_usage(FILE *out) {
    fprintf(out,
            "usage: sdmoe info -m MODEL [options]\n\n"
            "  -m, --model PATH         diffusers folder, SegMoE folder or single-file .safetensors\n"
            "      --variant fp16       use the .fp16 weight files of a diffusers folder\n"
            "      --model-config F     LDM/SGM yaml (or diffusers folder) describing a single-file model\n"
            "      --no-hash            skip the SHA-256 model hash (large files take a second or two)\n"
            "  -h, --help               this help\n");
}

/* 1234567 -> "1,234,567" */
static const char *grouped(int64_t v, char *buf, size_t cap) {
    char raw[32];
    int n = snprintf(raw, sizeof raw, "%lld", (long long)(v < 0 ? -v : v));
    size_t k = 0;
    if (v < 0 && k + 1 < cap) buf[k++] = '-';
    for (int i = 0; i < n && k + 2 < cap; i++) {
        if (i && (n - i) % 3 == 0) buf[k++] = ',';
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

static const char *basename_of(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Prints `key value` for each listed config key that is present. */
static void print_keys(const cJSON *cfg, const char *const *keys) {
    int col = 0;
    for (; *keys; keys++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, *keys);
        if (!v || cJSON_IsNull(v)) continue;
        char *s = cJSON_PrintUnformatted(v);
        if (!s) continue;
        int w = (int)(strlen(*keys) + strlen(s) + 3);
        if (col && col + w > 100) {
            printf("\n");
            col = 0;
        }
        col += printf("%s%s %s", col ? ", " : "    ", *keys, s);
        free(s);
    }
    if (col) printf("\n");
}

static const char *const unet_keys[] = {"block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                                        "attention_head_dim", "num_attention_heads", "cross_attention_dim",
                                        "transformer_layers_per_block", "use_linear_projection", "norm_num_groups",
                                        "in_channels", "out_channels", "sample_size", "addition_embed_type",
                                        "addition_time_embed_dim", "projection_class_embeddings_input_dim", NULL};
static const char *const vae_keys[] = {"block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
                                       "scaling_factor", "in_channels", "out_channels", NULL};
static const char *const clip_keys[] = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                        "hidden_act", "vocab_size", "max_position_embeddings", "projection_dim", NULL};

static const char *class_of(const cJSON *cfg, const char *fallback) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(cfg, "_class_name");
    if (cJSON_IsString(c)) return c->valuestring;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(cfg, "architectures");
    if (cJSON_IsArray(a) && cJSON_IsString(cJSON_GetArrayItem(a, 0))) return cJSON_GetArrayItem(a, 0)->valuestring;
    return fallback;
}

static void print_component(const sd_model *m, const sd_component *c) {
    char b1[64], b2[64];
    sd_component_stats s;
    sd_component_stats_get(c, &s);
    const char *fallback = !strcmp(c->name, "unet") ? "UNet2DConditionModel"
                         : !strcmp(c->name, "vae") ? "AutoencoderKL"
                         : !strcmp(c->name, "text_encoder_2") ? "CLIPTextModelWithProjection" : "CLIPTextModel";
    printf("\n%s: %s\n", c->name, class_of(c->config, fallback));
    printf("  config      %s\n", c->config_path);
    if (m->kind == SD_MODEL_SINGLE_FILE) {
        printf("  weights     tensors under '%s' (%s of tensor data%s)\n", c->binder.prefix,
               human_bytes((double)s.data_bytes, b1, sizeof b1),
               !strcmp(c->name, "text_encoder_2") ? ", OpenCLIP names" : "");
    } else {
        for (int i = 0; i < c->n_files; i++) {
            const st_file *f = sd_weights_file(c->weights, i);
            printf("  %s %s (%d tensors)\n", i ? "           " : "file       ", basename_of(c->files[i]),
                   f->n_tensors);
        }
        printf("  size        %s%s\n", human_bytes((double)s.file_bytes, b1, sizeof b1),
               c->variant_used ? " (variant)" : "");
    }
    printf("  parameters  %s in %lld tensors (", grouped(s.n_params, b2, sizeof b2), (long long)s.n_tensors);
    int first = 1;
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        if (!s.params_by_dtype[d]) continue;
        int is_float = d == ST_F32 || d == ST_F16 || d == ST_BF16 || d == ST_F64;
        printf("%s%s%s %s", first ? "" : ", ", is_float ? "" : "buffers ", st_dtype_name((st_dtype)d),
               grouped(s.params_by_dtype[d], b1, sizeof b1));
        first = 0;
    }
    printf(")\n");
    print_keys(c->config, !strcmp(c->name, "unet") ? unet_keys : !strcmp(c->name, "vae") ? vae_keys : clip_keys);
}

static void print_scheduler(const sd_model *m) {
    const cJSON *s = m->scheduler_config;
    static const char *const keys[] = {"beta_schedule", "beta_start", "beta_end", "num_train_timesteps",
                                       "prediction_type", "timestep_spacing", "steps_offset", NULL};
    printf("\nscheduler: %s\n  config      %s\n", class_of(s, "?"), m->scheduler_config_path);
    print_keys(s, keys);
}

/* Counts the MoE gates present in the UNet weights. */
static int count_gates(const sd_component *c) {
    int n = 0;
    for (int i = 0; i < sd_weights_file_count(c->weights); i++) {
        const st_file *f = sd_weights_file(c->weights, i);
        for (int k = 0; k < f->n_tensors; k++) {
            size_t l = strlen(f->tensors[k].name);
            n += l > 12 && !strcmp(f->tensors[k].name + l - 12, ".gate.weight");
        }
    }
    return n;
}

static void print_moe(const sd_model *m) {
    const cJSON *mc = cJSON_GetObjectItemCaseSensitive(m->unet.config, "segmoe_config");
    static const char *const keys[] = {"type", "num_experts", "num_experts_per_tok", "moe_layers", "base_model", NULL};
    printf("\nmixture of experts (SegMoE)\n");
    print_keys(mc, keys);
    const char *rk[4] = {"down_idx_start", "down_idx_end", "up_idx_start", "up_idx_end"};
    int r[4];
    for (int i = 0; i < 4; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(mc, rk[i]);
        r[i] = cJSON_IsNumber(v) ? v->valueint : -1;
    }
    if (r[0] >= 0 && r[1] >= 0 && r[2] >= 0 && r[3] >= 0)
        printf("    MoE blocks: down_blocks %d..%d, up_blocks %d..%d (mid block dense)\n", r[0], r[1] - 1, r[2],
               r[3] - 1);
    printf("    gate tensors in the UNet weights: %d\n", count_gates(&m->unet));
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(mc, "experts");
    int i = 0;
    for (const cJSON *e = cJSON_IsArray(ex) ? ex->child : NULL; e; e = e->next, i++) {
        const cJSON *src = cJSON_GetObjectItemCaseSensitive(e, "source_model");
        const cJSON *pos = cJSON_GetObjectItemCaseSensitive(e, "positive_prompt");
        const cJSON *neg = cJSON_GetObjectItemCaseSensitive(e, "negative_prompt");
        printf("    expert %d: %s\n", i, cJSON_IsString(src) ? src->valuestring : "?");
        if (cJSON_IsString(pos)) printf("      positive: %s\n", pos->valuestring);
        if (cJSON_IsString(neg)) printf("      negative: %s\n", neg->valuestring);
    }
}

static void print_model(sd_model *m, int with_hash) {
    printf("model: %s\n", m->name);
    printf("  path        %s\n", m->path);
    printf("  kind        %s%s%s\n",
           m->kind == SD_MODEL_DIFFUSERS ? "diffusers folder"
           : m->text_encoder_2.present   ? "single-file checkpoint (SGM keys)"
                                         : "single-file checkpoint (CompVis/LDM keys)",
           m->text_encoder_2.present ? ", SDXL" : "", m->is_segmoe ? ", SegMoE mixture of experts" : "");
    if (m->arch_source) printf("  configs     %s\n", m->arch_source);
    if (with_hash) {
        char hash[11];
        sd_error err = {0};
        if (sd_model_hash(m, hash, &err) == 0) printf("  hash        %s (SHA-256 of %s)\n", hash,
                                                      m->kind == SD_MODEL_SINGLE_FILE ? "the checkpoint" : "the UNet weights");
        else printf("  hash        unavailable: %s\n", err.msg);
    }
    printf("  pipeline    %s\n", class_of(m->model_index, "?"));
    printf("  tokenizer   %s%s%s\n", m->tokenizer_dir, m->tokenizer_2_dir ? ", " : "",
           m->tokenizer_2_dir ? m->tokenizer_2_dir : "");
    printf("  components ");
    for (int i = 0; i < SD_MODEL_N_COMPONENTS; i++) {
        sd_component *c = sd_model_component(m, i);
        if (c->present) printf(" %s", c->name);
    }
    printf("\n");
    for (int i = 0; i < SD_MODEL_N_COMPONENTS; i++) {
        sd_component *c = sd_model_component(m, i);
        if (c->present) print_component(m, c);
    }
    print_scheduler(m);
    if (m->is_segmoe) print_moe(m);
}

int cli_info(int argc, char **argv) {
    enum { OPT_VARIANT = 1000, OPT_MODEL_CONFIG, OPT_NO_HASH };
    static const struct option longs[] = {
        {"model", required_argument, NULL, 'm'},
        {"variant", required_argument, NULL, OPT_VARIANT},
        {"model-config", required_argument, NULL, OPT_MODEL_CONFIG},
        {"no-hash", no_argument, NULL, OPT_NO_HASH},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    sd_model_options opt = {0};
    const char *model = NULL;
    int with_hash = 1, c;
    optind = 0; /* glibc: full re-initialisation, so the command can run more than once */
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:h", longs, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case OPT_VARIANT: opt.variant = optarg; break;
        case OPT_MODEL_CONFIG: opt.model_config = optarg; break;
        case OPT_NO_HASH: with_hash = 0; break;
        case 'h': info_usage(stdout); return 0;
        case ':': fprintf(stderr, "sdmoe: info: option '%s' needs a value\n", argv[optind - 1]); return 1;
        default: fprintf(stderr, "sdmoe: info: unknown option '%s' (see sdmoe info --help)\n", argv[optind - 1]); return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sdmoe: info: unexpected argument '%s' (the model goes after -m)\n", argv[optind]);
        return 1;
    }
    if (!model) {
        fprintf(stderr, "sdmoe: info: -m MODEL is required (see sdmoe info --help)\n");
        return 1;
    }
    sd_model m;
    sd_error err = {0};
    if (sd_model_open(&m, model, &opt, &err)) {
        fprintf(stderr, "sdmoe: %s\n", err.msg);
        return 1;
    }
    print_model(&m, with_hash);
    sd_model_close(&m);
    return 0;
}
