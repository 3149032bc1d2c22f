/* `sdmoe merge` through the executable: bad configs give one line
 * "sdmoe: <message>" naming the file and the key, exit status 1, and no
 * output folder (nor a temporary one); one quick successful merge
 * (init: random) checks warnings, the summary and the stored seed. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/fileio.h"
#include "core/json.h"
#include "tests/support/test_support.h"

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}
static void rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static char *read_text(const char *path) {
    char *s = NULL;
    sd_error err = {0};
    cr_assert_eq(sd_read_file(path, 1 << 20, &s, NULL, &err), 0, "%s", err.msg);
    return s;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* Only the YAML and the captured outputs may exist in dir afterwards. */
static void expect_no_output(const char *dir, const char *what) {
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    for (struct dirent *de; (de = readdir(d));) {
        const char *n = de->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || strstr(n, ".yaml") || !strcmp(n, "stdout") ||
            !strcmp(n, "stderr"))
            continue;
        cr_expect_fail("%s: '%s' left in the folder", what, n);
    }
    closedir(d);
}

typedef struct cli_case {
    const char *name;
    const char *yaml;       /* %1$s = fixtures folder */
    const char *expect[3];  /* substrings of the message */
} cli_case;

#define ONE_EXPERT "experts:\n  - {source_model: %1$s/tiny-sd15, positive_prompt: \"a cat\", negative_prompt: \"blur\"}\n"
#define TWO_EXPERTS                                                                                      \
    "experts:\n  - {source_model: %1$s/tiny-sd15, positive_prompt: \"a cat\", negative_prompt: \"blur\"}\n" \
    "  - {source_model: %1$s/moe/tiny-sd15-expert, positive_prompt: \"a dog\", negative_prompt: \"photo\"}\n"

static const cli_case CASES[] = {
    {"moe_layers", "base_model: %1$s/tiny-sd15\ntype: sd\nmoe_layers: everything\n" ONE_EXPERT,
     {"moe_layers", "'everything'", NULL}},
    {"k0", "base_model: %1$s/tiny-sd15\ntype: sd\nnum_experts_per_tok: 0\n" ONE_EXPERT,
     {"num_experts_per_tok", "0", NULL}},
    {"k3", "base_model: %1$s/tiny-sd15\ntype: sd\nnum_experts_per_tok: 3\n" TWO_EXPERTS,
     {"num_experts_per_tok", "3", "(2)"}},
    {"no_prompt",
     "base_model: %1$s/tiny-sd15\ntype: sd\nexperts:\n  - {source_model: %1$s/tiny-sd15, negative_prompt: \"x\"}\n",
     {"experts[0].positive_prompt", "missing", NULL}},
    {"no_negative",
     "base_model: %1$s/tiny-sd15\ntype: sd\nexperts:\n  - {source_model: %1$s/tiny-sd15, positive_prompt: \"x\"}\n",
     {"experts[0].negative_prompt", NULL, NULL}},
    {"missing_file",
     "base_model: %1$s/tiny-sd15\ntype: sd\nexperts:\n"
     "  - {source_model: ./no-such-model, positive_prompt: \"a\", negative_prompt: \"b\"}\n",
     {"experts[0].source_model", "no-such-model", "not found"}},
    {"hub_id", "base_model: runwayml/stable-diffusion-v1-5\ntype: sd\n" ONE_EXPERT,
     {"base_model", "runwayml/stable-diffusion-v1-5", "download it first"}},
    {"url", "base_model: https://civitai.com/api/download/models/1234\ntype: sd\n" ONE_EXPERT,
     {"base_model", "download it first", NULL}},
    {"sdxl_default_type", "base_model: %1$s/tiny-sd15\n" ONE_EXPERT, {"type: sdxl", "SegMoE's default", "not an SDXL model"}},
    {"sdxl", "base_model: %1$s/tiny-sd15\ntype: sdxl\n" ONE_EXPERT, {"type: sdxl", "not an SDXL model", "type: sd`"}},
    {"loras", "base_model: %1$s/tiny-sd15\ntype: sd\nloras:\n  - {source_model: x.safetensors}\n" ONE_EXPERT,
     {"loras", "not supported yet", NULL}},
    {"other_architecture",
     "base_model: %1$s/tiny-sd15\ntype: sd\nexperts:\n"
     "  - {source_model: %1$s/tiny-sd15, positive_prompt: \"a\", negative_prompt: \"b\"}\n"
     "  - {source_model: %1$s/sdxl/tiny-sdxl, positive_prompt: \"c\", negative_prompt: \"d\"}\n",
     {"experts[1]", "architecture differs", "add_embedding"}},
};

/* Runs `sdmoe merge` on one bad config and checks the one-line error. */
static void run_bad_case(const cli_case *c) {
    const char *fx = tst_fixtures_dir();
    char *dir = tst_tmpdir();
    char yaml[4096], path[4096], out[4096], cmd[16384], so[4096], se[4096];
    snprintf(yaml, sizeof yaml, c->yaml, fx);
    snprintf(path, sizeof path, "%s/%s.yaml", dir, c->name);
    write_text(path, yaml);
    snprintf(out, sizeof out, "%s/merged", dir);
    snprintf(so, sizeof so, "%s/stdout", dir);
    snprintf(se, sizeof se, "%s/stderr", dir);
    snprintf(cmd, sizeof cmd, "'%s' merge '%s' '%s' -q", tst_sdmoe_bin(), path, out);
    int rc = tst_run(cmd, so, se);
    char *err = read_text(se), *std = read_text(so);
    cr_expect_eq(rc, 1, "%s: exit status %d (stderr: %s)", c->name, rc, err);
    cr_expect(!strncmp(err, "sdmoe: ", 7), "%s: message must start with 'sdmoe: ': %s", c->name, err);
    size_t len = strlen(err);
    cr_expect(len > 0 && err[len - 1] == '\n' && !memchr(err, '\n', len - 1), "%s: not one line: %s", c->name, err);
    if (strcmp(c->name, "other_architecture"))
        cr_expect(strstr(err, c->name) != NULL, "%s: the message does not name the YAML file: %s", c->name, err);
    for (int i = 0; i < 3 && c->expect[i]; i++)
        cr_expect(strstr(err, c->expect[i]) != NULL, "%s: message lacks '%s': %s", c->name, c->expect[i], err);
    cr_expect_eq(std[0], '\0', "%s: unexpected stdout: %s", c->name, std);
    cr_expect(!sd_is_dir(out), "%s: output folder left behind", c->name);
    remove(so), remove(se);
    expect_no_output(dir, c->name);
    free(err), free(std);
    rm_tree(dir);
    free(dir);
}

Test(merge_cli, bad_configs_fail_cleanly, .timeout = 120) {
    if (!tst_require_fixture("moe/tiny-sd15-expert/model_index.json")) return;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        if (!strcmp(CASES[i].name, "other_architecture") && !tst_require_fixture("sdxl/tiny-sdxl/model_index.json"))
            continue;
        run_bad_case(&CASES[i]);
    }
}

Test(merge_cli, usage_errors) {
    char *dir = tst_tmpdir();
    char cmd[4096], se[4096], so[4096];
    snprintf(se, sizeof se, "%s/stderr", dir);
    snprintf(so, sizeof so, "%s/stdout", dir);
    static const struct { const char *args; int rc; const char *msg; } cases[] = {
        {"", 1, "expected CONFIG.yaml and OUT_DIR"},
        {"a.yaml", 1, "expected CONFIG.yaml and OUT_DIR"},
        {"a.yaml b c", 1, "unexpected argument 'c'"},
        {"a.yaml b --dtype f64", 1, "--dtype"},
        {"a.yaml b --seed -3", 1, "--seed"},
        {"a.yaml b --seed x", 1, "--seed"},
        {"a.yaml b --bogus", 1, "unknown option '--bogus'"},
        {"a.yaml b --seed", 1, "needs a value"},
        {"no-such-config.yaml b", 1, "no-such-config.yaml"},
    };
    /* run from the temporary folder (relative YAML paths): the executable's absolute path */
    char *bin = realpath(tst_sdmoe_bin(), NULL);
    cr_assert_not_null(bin, "sdmoe executable not found at %s", tst_sdmoe_bin());
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(cmd, sizeof cmd, "cd '%s' && '%s' merge %s", dir, bin, cases[i].args);
        int rc = tst_run(cmd, so, se);
        char *err = read_text(se);
        cr_expect_eq(rc, cases[i].rc, "'merge %s': status %d", cases[i].args, rc);
        cr_expect(strstr(err, cases[i].msg) != NULL, "'merge %s': %s", cases[i].args, err);
        cr_expect(!strncmp(err, "sdmoe: ", 7), "'merge %s': %s", cases[i].args, err);
        free(err);
    }
    snprintf(cmd, sizeof cmd, "'%s' merge --help", bin);
    free(bin);
    cr_expect_eq(tst_run(cmd, so, se), 0);
    char *help = read_text(so);
    cr_expect(strstr(help, "usage: sdmoe merge CONFIG.yaml OUT_DIR") != NULL, "%s", help);
    cr_expect(strstr(help, "--dtype") && strstr(help, "--seed") && strstr(help, "--threads"), "%s", help);
    free(help);
    rm_tree(dir);
    free(dir);
}

/* init: random merges need no gate runs: a fast end-to-end run of the
 * command with a duplicate-expert warning, --seed, --dtype and the summary;
 * then the same output folder again is refused. */
Test(merge_cli, random_init_merge_summary_and_existing_output, .timeout = 120) {
    if (!tst_require_fixture("moe/tiny-sd15-expert/model_index.json")) return;
    const char *fx = tst_fixtures_dir();
    char *dir = tst_tmpdir();
    char yaml[4096], path[4096], out[4096], cmd[16384], so[4096], se[4096];
    snprintf(yaml, sizeof yaml,
             "base_model: %1$s/tiny-sd15\ntype: sd\nmoe_layers: ff\ninit: random\nnum_experts_per_tok: 1\n"
             "experts:\n"
             "  - {source_model: %1$s/tiny-sd15, positive_prompt: \"a cat\", negative_prompt: \"blur\"}\n"
             "  - {source_model: %1$s/tiny-sd15, positive_prompt: \"a cat\", negative_prompt: \"blur\"}\n"
             "  - {source_model: %1$s/moe/tiny-sd15-expert, positive_prompt: \"a dog\", negative_prompt: \"x\"}\n",
             fx);
    snprintf(path, sizeof path, "%s/dup.yaml", dir);
    write_text(path, yaml);
    snprintf(out, sizeof out, "%s/merged", dir);
    snprintf(so, sizeof so, "%s/stdout", dir);
    snprintf(se, sizeof se, "%s/stderr", dir);
    snprintf(cmd, sizeof cmd, "'%s' merge '%s' '%s' --seed 77 --dtype f16 -t 1 -q", tst_sdmoe_bin(), path, out);
    int rc = tst_run(cmd, so, se);
    char *err = read_text(se), *std = read_text(so);
    cr_assert_eq(rc, 0, "merge failed: %s", err);
    cr_expect(strstr(err, "sdmoe: warning: ") && strstr(err, "experts[0] and experts[1]"), "no duplicate warning: %s",
              err);
    cr_expect(strstr(std, "merged ") && strstr(std, "3 (top-1"), "%s", std);
    cr_expect(strstr(std, "15 MoE layers (moe_layers ff)"), "%s", std);
    cr_expect(strstr(std, "UNet parameters") && strstr(std, "F16"), "%s", std);
    cr_expect(strstr(std, "seed 77"), "%s", std);
    free(err), free(std);

    char *cfgp = sd_path_join(out, "unet/config.json");
    cJSON *j;
    sd_error e = {0};
    cr_assert_eq(sd_json_load(cfgp, &j, &e), 0, "%s", e.msg);
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(j, "segmoe_config");
    const cJSON *ours = cJSON_GetObjectItemCaseSensitive(sc, "sdmoe");
    cr_expect_eq(cJSON_GetObjectItemCaseSensitive(ours, "seed")->valuedouble, 77);
    cr_expect_str_eq(cJSON_GetObjectItemCaseSensitive(ours, "dtype")->valuestring, "f16");
    cr_expect_eq(cJSON_GetObjectItemCaseSensitive(sc, "num_experts")->valueint, 3);
    cJSON_Delete(j);
    free(cfgp);

    /* the folder now exists: refused before any work, left untouched */
    rc = tst_run(cmd, so, se);
    err = read_text(se);
    cr_expect_eq(rc, 1);
    cr_expect(strstr(err, "already exists") != NULL, "%s", err);
    free(err);
    char *unet = sd_path_join(out, "unet/diffusion_pytorch_model.safetensors");
    cr_expect(sd_is_file(unet));
    free(unet);
    rm_tree(dir);
    free(dir);
}
