/* sdmoe-fuzz-libs: moe_merge
 *
 * Fuzzes moe_merge/segmoe_config: sd_yaml_to_json (event-level libyaml
 * reader with anchors, aliases, "<<" merge keys, node and depth limits) and
 * the SegMoE schema validation of sd_segmoe_config_parse.  Relative model
 * paths resolve against $SDMOE_FIXTURES/moe when set, so inputs derived
 * from the fixture's segmoe-2x2.yaml reach the expert checks. */
#include "moe_merge/segmoe_config.h"
#include "tests/fuzz/fuzz_common.h"

static char base_dir[4096] = ".";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *fx = getenv("SDMOE_FIXTURES");
    if (fx && *fx) snprintf(base_dir, sizeof base_dir, "%s/moe", fx);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sd_error err = {0};
    cJSON *j = NULL;
    char **warn = NULL;
    int n_warn = 0;
    if (sd_yaml_to_json((const char *)data, size, "fuzz.yaml", &j, &warn, &n_warn, &err) == 0) {
        FUZZ_ASSERT(j != NULL);
        cJSON_Delete(j);
    } else {
        FUZZ_CHECK_ERROR(err);
        FUZZ_ASSERT(j == NULL);
    }
    for (int i = 0; i < n_warn; i++) {
        FUZZ_ASSERT(warn[i] != NULL);
        free(warn[i]);
    }
    free(warn);

    sd_segmoe_config cfg;
    sd_error_clear(&err);
    if (sd_segmoe_config_parse(&cfg, (const char *)data, size, "fuzz.yaml", base_dir, &err) == 0) {
        FUZZ_ASSERT(cfg.n_experts >= 1 && cfg.experts != NULL);
        FUZZ_ASSERT(cfg.num_experts_per_tok >= 1 && cfg.num_experts_per_tok <= cfg.n_experts);
        FUZZ_ASSERT(cfg.base_path != NULL && cfg.yaml != NULL);
        for (int i = 0; i < cfg.n_experts; i++)
            FUZZ_ASSERT(cfg.experts[i].path && cfg.experts[i].positive_prompt && cfg.experts[i].negative_prompt);
        sd_segmoe_config_free(&cfg);
    } else {
        FUZZ_CHECK_ERROR(err);
        FUZZ_ASSERT(cfg.experts == NULL && cfg.yaml == NULL);
    }
    return 0;
}
