/* sdmoe-fuzz-libs: text_encoder
 *
 * Fuzzes the tokenizer's file readers (text_encoder/tokenizer
 * sd_tokenizer_open: vocab.json ids, merges.txt lines, special tokens from
 * special_tokens_map.json) -- a model's tokenizer/ folder is downloaded
 * input too.  The fuzz input is split at NUL bytes into vocab.json,
 * merges.txt and special_tokens_map.json (missing parts: a minimal valid
 * merges.txt, no map), written to a private folder; a tokenizer that opens
 * then encodes a fixed prompt. */
#include <sys/stat.h>

#include "tests/fuzz/fuzz_common.h"
#include "text_encoder/tokenizer.h"

static char dir[256], paths[3][320];

static void cleanup(void) {
    for (int i = 0; i < 3; i++) unlink(paths[i]);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/sdmoe-fuzz-tok-%ld", base, (long)getpid());
    if (mkdir(dir, 0700) != 0) {
        perror(dir);
        exit(1);
    }
    const char *names[3] = {"vocab.json", "merges.txt", "special_tokens_map.json"};
    for (int i = 0; i < 3; i++) snprintf(paths[i], sizeof paths[i], "%s/%s", dir, names[i]);
    atexit(cleanup);
    return 0;
}

static void put(const char *path, const uint8_t *p, size_t n) {
    FILE *f = fopen(path, "wb");
    FUZZ_ASSERT(f != NULL);
    FUZZ_ASSERT(n == 0 || fwrite(p, 1, n, f) == n);
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *part[3] = {data, NULL, NULL};
    size_t len[3] = {size, 0, 0};
    for (int k = 1; k < 3; k++) {
        const uint8_t *nul = memchr(part[k - 1], 0, len[k - 1]);
        if (!nul) break;
        part[k] = nul + 1;
        len[k] = (size_t)(part[k - 1] + len[k - 1] - part[k]);
        len[k - 1] = (size_t)(nul - part[k - 1]);
    }
    static const char def_merges[] = "#version: 0.2\nc a\nca t</w>\n";
    put(paths[0], part[0], len[0]);
    if (part[1]) put(paths[1], part[1], len[1]);
    else put(paths[1], (const uint8_t *)def_merges, sizeof def_merges - 1);
    if (part[2]) put(paths[2], part[2], len[2]);
    else unlink(paths[2]);

    sd_tokenizer *tok = NULL;
    sd_error err = {0};
    if (sd_tokenizer_open(&tok, dir, &err) == 0) {
        int max = sd_tokenizer_max_length(tok);
        FUZZ_ASSERT(max >= 3);
        int32_t *ids = malloc((size_t)max * sizeof *ids);
        FUZZ_ASSERT(ids != NULL);
        sd_error_clear(&err);
        if (sd_tokenizer_encode(tok, "a cat, cat</w> <|endoftext|> 42 \xc3\xa9\xf0\x9f\x90\x88 ca", ids, NULL, NULL,
                                NULL, &err) == 0) {
            for (int i = 0; i < max; i++) FUZZ_ASSERT(ids[i] >= 0 && ids[i] < sd_tokenizer_vocab_size(tok));
        } else {
            FUZZ_CHECK_ERROR(err);
        }
        free(ids);
        sd_tokenizer_free(tok);
    } else {
        FUZZ_CHECK_ERROR(err);
    }
    return 0;
}
