/* sdmoe-fuzz-libs: text_encoder
 *
 * Fuzzes text_encoder/prompt_parser sd_prompt_parse_a1111 (A1111's
 * emphasis syntax: nested ( ) [ ], (text:weight), escapes, BREAK,
 * unbalanced brackets) on arbitrary bytes, and the CLIP text normaliser
 * (text_encoder/normalize: ftfy fixes, HTML entities, NFC, whitespace) on
 * each piece it yields. */
#include <math.h>

#include "tests/fuzz/fuzz_common.h"
#include "text_encoder/normalize.h"
#include "text_encoder/prompt_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_strndup(data, size);
    sd_prompt_parsed p = {0};
    sd_error err = {0};
    if (sd_prompt_parse_a1111(text, &p, &err) == 0) {
        FUZZ_ASSERT(p.n >= 1 && p.pieces != NULL);
        size_t total = 0;
        for (int i = 0; i < p.n; i++) {
            FUZZ_ASSERT(p.pieces[i].text != NULL);
            FUZZ_ASSERT(!isnan(p.pieces[i].weight));
            size_t len = strlen(p.pieces[i].text);
            total += len;
            char *norm = NULL;
            size_t bad = 0;
            sd_error e2 = {0};
            if (sd_clip_normalize_utf8(p.pieces[i].text, len, &norm, &bad, &e2) == 0) free(norm);
            else FUZZ_CHECK_ERROR(e2);
        }
        /* pieces hold prompt bytes (escapes resolved, BREAKs as pieces) */
        FUZZ_ASSERT(total <= strlen(text) + 5 * (size_t)p.n);
        sd_prompt_parsed_free(&p);
    } else {
        FUZZ_CHECK_ERROR(err);
    }
    free(text);
    return 0;
}
