/* sdmoe-fuzz-libs: text_encoder
 *
 * Fuzzes the CLIP tokenizer and the A1111 prompt path on arbitrary bytes:
 * text_encoder/tokenizer sd_tokenizer_tokenize / sd_tokenizer_encode
 * (normalisation, CLIP's pre-tokeniser, byte-level BPE, its cache) and
 * text_encoder/conditioning sd_prompt_chunks_build in both prompt syntaxes
 * (A1111 emphasis/BREAK parsing, 75-token chunking, comma backtracking).
 * The tokenizer is the real one: $SDMOE_TOKENIZER, else
 * $SDMOE_FIXTURES/tiny-sd15/tokenizer, else assets/tokenizer. */
#include "tests/fuzz/fuzz_common.h"
#include "text_encoder/conditioning.h"
#include "text_encoder/tokenizer.h"

static sd_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char dirs[3][4096];
    const char *env = getenv("SDMOE_TOKENIZER"), *fx = getenv("SDMOE_FIXTURES");
    snprintf(dirs[0], sizeof dirs[0], "%s", env ? env : "");
    snprintf(dirs[1], sizeof dirs[1], "%s/tiny-sd15/tokenizer", fx ? fx : "../shared/fixtures");
    snprintf(dirs[2], sizeof dirs[2], "assets/tokenizer");
    sd_error err = {0};
    for (int i = 0; i < 3 && !tok; i++)
        if (dirs[i][0] && sd_tokenizer_open(&tok, dirs[i], &err) != 0) tok = NULL;
    if (!tok) {
        fprintf(stderr, "fuzz_tokenizer: no tokenizer (set SDMOE_TOKENIZER or SDMOE_FIXTURES): %s\n", err.msg);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sd_error err = {0};
    sd_ids ids = {0};
    size_t bad = 0;
    if (sd_tokenizer_tokenize(tok, (const char *)data, size, &ids, &bad, &err) == 0) {
        int vs = sd_tokenizer_vocab_size(tok);
        for (size_t i = 0; i < ids.n; i++) FUZZ_ASSERT(ids.v[i] >= 0 && ids.v[i] < vs);
    } else {
        FUZZ_CHECK_ERROR(err);
    }
    sd_ids_free(&ids);

    char *text = fuzz_strndup(data, size);
    int max = sd_tokenizer_max_length(tok);
    int32_t *enc = malloc((size_t)max * sizeof *enc);
    FUZZ_ASSERT(enc != NULL);
    int n_tokens = 0, n_dropped = 0;
    sd_error_clear(&err);
    if (sd_tokenizer_encode(tok, text, enc, &n_tokens, &n_dropped, &bad, &err) == 0) {
        FUZZ_ASSERT(enc[0] == sd_tokenizer_bos(tok));
        FUZZ_ASSERT(n_tokens >= 0 && n_dropped >= 0 && n_dropped <= n_tokens);
    } else {
        FUZZ_CHECK_ERROR(err);
    }
    free(enc);

    for (int syn = 0; syn < 2; syn++) {
        sd_prompt_chunks ch = {0};
        sd_error_clear(&err);
        if (sd_prompt_chunks_build(tok, text, syn ? SD_PROMPT_SYNTAX_A1111 : SD_PROMPT_SYNTAX_PLAIN, &ch, &err) == 0) {
            FUZZ_ASSERT(ch.n_chunks >= 1 && ch.chunk_len == max);
            for (int i = 0; i < ch.n_chunks * ch.chunk_len; i++)
                FUZZ_ASSERT(ch.ids[i] >= 0 && ch.ids[i] < sd_tokenizer_vocab_size(tok));
            sd_prompt_chunks_free(&ch);
        } else {
            FUZZ_CHECK_ERROR(err);
        }
    }
    free(text);
    return 0;
}
