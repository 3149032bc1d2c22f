/* sdmoe-fuzz-libs: text_encoder
 *
 * Fuzzes text_encoder/unicode on arbitrary bytes, the first stage of the
 * tokenizer and the prompt parser: sd_utf8_decode (Python's
 * decode("utf-8", "replace")) must yield scalar values only, and valid
 * UTF-8 must survive decode -> sd_utf8_encode unchanged.  The character
 * class predicates are run on every decoded code point.
 *
 * TODO(issue 10): the tokenizer and A1111 prompt parser targets
 * (fuzz_tokenizer.c, fuzz_prompt.c) once text_encoder/ exports them. */
#include "tests/fuzz/fuzz_common.h"
#include "text_encoder/unicode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sd_utext t = {0};
    size_t bad = sd_utf8_decode((const char *)data, size, &t);
    FUZZ_ASSERT(!t.oom);
    FUZZ_ASSERT(t.n <= size);
    for (size_t i = 0; i < t.n; i++) {
        uint32_t c = t.cp[i];
        FUZZ_ASSERT(c <= 0x10FFFF && !(c >= 0xD800 && c <= 0xDFFF));
        char buf[4];
        int k = sd_utf8_put(c, buf);
        FUZZ_ASSERT(k >= 1 && k <= 4);
        (void)sd_uc_is_letter(c);
        (void)sd_uc_is_number(c);
        (void)sd_uc_is_regex_space(c);
        (void)sd_uc_is_py_space(c);
        (void)sd_uc_is_py_word(c);
        int dv = sd_uc_decimal_value(c);
        FUZZ_ASSERT(dv >= -1 && dv <= 9);
    }
    size_t len = 0;
    char *enc = sd_utf8_encode(t.cp, t.n, &len);
    FUZZ_ASSERT(enc != NULL);
    if (bad == 0) FUZZ_ASSERT(len == size && memcmp(enc, data, size) == 0);
    FUZZ_ASSERT(strlen(enc) <= len);
    free(enc);
    sd_utext_free(&t);
    return 0;
}
