/* core/infotext: the A1111 "parameters" text, checked against strings
 * derived by hand from A1111's create_infotext() and quote(), and Python's
 * repr(float) / json.dumps(ensure_ascii=False) / str.strip(). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/infotext.h"

static void check_format(const sd_infotext_params *p, const char *want) {
    sd_error err = {0};
    char *got = NULL;
    cr_assert_eq(sd_infotext_format(p, &got, &err), 0, "%s", err.msg);
    cr_assert_str_eq(got, want);
    free(got);
}

Test(infotext, full_with_negative_prompt) {
    sd_infotext_params p = {
        .prompt = "a photo of a cat",
        .negative = "blurry, low quality",
        .steps = 20,
        .sampler = "Euler a",
        .cfg_scale = 7.5,
        .seed = 42,
        .width = 512,
        .height = 768,
        .model_hash = "6ce0161689",
        .model = "v1-5-pruned-emaonly",
        .clip_skip = 1,
        .rng = "CPU",
        .version = "sdmoe 0.1.0",
    };
    check_format(&p, "a photo of a cat\n"
                     "Negative prompt: blurry, low quality\n"
                     "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x768, "
                     "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, RNG: CPU, "
                     "Version: sdmoe 0.1.0");
}

Test(infotext, no_negative_schedule_type_and_clip_skip) {
    sd_infotext_params p = {
        .prompt = "a cat",
        .negative = "",          /* empty: no "Negative prompt:" line */
        .steps = 4,
        .sampler = "DPM++ 2M",
        .schedule_type = "Karras",
        .cfg_scale = 7.0,        /* Python float repr: "7.0" */
        .seed = 1234,
        .width = 96,
        .height = 64,
        .clip_skip = 2,
    };
    check_format(&p, "a cat\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, "
                     "Seed: 1234, Size: 96x64, Clip skip: 2");
    p.negative = NULL;
    p.clip_skip = 0;
    p.seed = 4294967301LL;
    check_format(&p, "a cat\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, "
                     "Seed: 4294967301, Size: 96x64");
}

Test(infotext, extra_keys_before_version_and_quoting) {
    sd_error err = {0};
    sd_infotext extra;
    sd_infotext_init(&extra);
    cr_assert_eq(sd_infotext_add(&extra, "MoE experts", "cat, dog", &err), 0);
    cr_assert_eq(sd_infotext_add(&extra, "MoE routing", "segmoe", &err), 0);
    cr_assert_eq(sd_infotext_add_int(&extra, "MoE top k", 2, &err), 0);
    cr_assert_eq(sd_infotext_add(&extra, "Ratio", "1:2", &err), 0);
    cr_assert_eq(sd_infotext_add(&extra, "Skipped", NULL, &err), 0); /* None: omitted */
    sd_infotext_params p = {
        .prompt = "(masterpiece:1.2), a cat",
        .negative = "ugly",
        .steps = 10,
        .sampler = "Euler",
        .cfg_scale = 4.25,
        .seed = 7,
        .width = 64,
        .height = 64,
        .model_hash = "0123456789",
        .model = "my,model",
        .extra = &extra,
        .version = "v1.0: beta",
    };
    check_format(&p, "(masterpiece:1.2), a cat\n"
                     "Negative prompt: ugly\n"
                     "Steps: 10, Sampler: Euler, CFG scale: 4.25, Seed: 7, Size: 64x64, "
                     "Model hash: 0123456789, Model: \"my,model\", "
                     "MoE experts: \"cat, dog\", MoE routing: segmoe, MoE top k: 2, "
                     "Ratio: \"1:2\", Version: \"v1.0: beta\"");
    sd_infotext_free(&extra);
}

Test(infotext, json_escapes_like_python) {
    sd_error err = {0};
    sd_infotext kv;
    sd_infotext_init(&kv);
    /* json.dumps('a"b\\c\n\r\t\b\f\x01\x1f\x7f猫, x', ensure_ascii=False) */
    cr_assert_eq(sd_infotext_add(&kv, "K", "a\"b\\c\n\r\t\b\f\x01\x1f\x7f\xe7\x8c\xab, x", &err), 0);
    /* no ',', ':' or newline: written verbatim, quotes and all */
    cr_assert_eq(sd_infotext_add(&kv, "Q", "say \"hi\"", &err), 0);
    char *got = NULL;
    cr_assert_eq(sd_infotext_build("p", NULL, &kv, &got, &err), 0, "%s", err.msg);
    cr_assert_str_eq(got, "p\nK: \"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\x7f\xe7\x8c\xab, x\", "
                          "Q: say \"hi\"");
    free(got);
    sd_infotext_free(&kv);
}

Test(infotext, key_order_dict_semantics_and_bare_key) {
    sd_error err = {0};
    sd_infotext kv;
    sd_infotext_init(&kv);
    cr_assert_eq(sd_infotext_add_int(&kv, "Steps", 20, &err), 0);
    cr_assert_eq(sd_infotext_add_int(&kv, "Seed", 1, &err), 0);
    cr_assert_eq(sd_infotext_add_int(&kv, "Seed", 2, &err), 0); /* keeps place, new value */
    cr_assert_eq(sd_infotext_add(&kv, "Tiling", "Tiling", &err), 0); /* k == v: bare key */
    cr_assert_eq(kv.n, 3);
    char *got = NULL;
    cr_assert_eq(sd_infotext_build("x", "", &kv, &got, &err), 0);
    cr_assert_str_eq(got, "x\nSteps: 20, Seed: 2, Tiling");
    free(got);
    cr_assert_neq(sd_infotext_add(&kv, "", "v", &err), 0);
    sd_infotext_free(&kv);
}

Test(infotext, python_strip_of_whole_text) {
    sd_error err = {0};
    sd_infotext kv;
    sd_infotext_init(&kv);
    char *got = NULL;
    /* no pairs: "  hello \n" -> "hello" */
    cr_assert_eq(sd_infotext_build("  hello ", NULL, &kv, &got, &err), 0);
    cr_assert_str_eq(got, "hello");
    free(got);
    cr_assert_eq(sd_infotext_add_int(&kv, "Steps", 1, &err), 0);
    /* empty prompt: the leading "\n" goes */
    cr_assert_eq(sd_infotext_build("", NULL, &kv, &got, &err), 0);
    cr_assert_str_eq(got, "Steps: 1");
    free(got);
    /* NBSP and U+3000 are Python whitespace; U+200B (zero-width space) is not */
    cr_assert_eq(sd_infotext_build("\xc2\xa0\xe3\x80\x80" "cat", NULL, &kv, &got, &err), 0);
    cr_assert_str_eq(got, "cat\nSteps: 1");
    free(got);
    cr_assert_eq(sd_infotext_build("\xe2\x80\x8b" "cat", NULL, &kv, &got, &err), 0);
    cr_assert_str_eq(got, "\xe2\x80\x8b" "cat\nSteps: 1");
    free(got);
    sd_infotext_free(&kv);
}

Test(infotext, float_repr_matches_python) {
    static const struct { double v; const char *want; } cases[] = {
        {7.0, "7.0"},         {7.5, "7.5"},
        {0.1, "0.1"},         {1e-05, "1e-05"},
        {0.0001, "0.0001"},   {0.00012345, "0.00012345"},
        {1e16, "1e+16"},      {1e15, "1000000000000000.0"},
        {123456789012345678.0, "1.2345678901234568e+17"},
        {1.5e300, "1.5e+300"}, {-2.25, "-2.25"},
        {0.30000000000000004, "0.30000000000000004"},
        {9999999999999998.0, "9999999999999998.0"},
        {5e-324, "5e-324"},   {1.7976931348623157e308, "1.7976931348623157e+308"},
        {0.0, "0.0"},         {-0.0, "-0.0"},
        {12.0, "12.0"},       {100.0, "100.0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[40];
        sd_infotext_float_repr(cases[i].v, buf, sizeof buf);
        cr_expect_str_eq(buf, cases[i].want, "repr(%.17g)", cases[i].v);
    }
    char buf[40];
    sd_infotext_float_repr(NAN, buf, sizeof buf);
    cr_expect_str_eq(buf, "nan");
    sd_infotext_float_repr(-INFINITY, buf, sizeof buf);
    cr_expect_str_eq(buf, "-inf");
}
