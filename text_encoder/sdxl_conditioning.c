/* SDXL prompt -> (context rows, pooled embedding) and time ids: diffusers'
 * StableDiffusionXLPipeline.encode_prompt / _get_add_time_ids (plain) and
 * stable-diffusion-webui's SDXL conditioner (a1111). */
#include "text_encoder/sdxl_conditioning.h"

#include <stdlib.h>
#include <string.h>

int sd_sdxl_encoders_check(const sd_sdxl_encoders *e, sd_error *err) {
    if (!e->tok1 || !e->tok2 || !e->te1 || !e->te2)
        return sd_fail(err, "SDXL text conditioning needs tokenizer, tokenizer_2, text_encoder and text_encoder_2");
    if (!sd_clip_text_has_projection(e->te2))
        return sd_fail(err, "text_encoder_2: no text_projection.weight (SDXL needs CLIPTextModelWithProjection "
                       "for the pooled embedding)");
    const int len1 = sd_tokenizer_max_length(e->tok1), len2 = sd_tokenizer_max_length(e->tok2);
    if (len1 != len2)
        return sd_fail(err, "tokenizer model_max_length %d and tokenizer_2 model_max_length %d differ (SDXL "
                       "concatenates the two encodings token by token)", len1, len2);
    const struct {
        const char *tname, *ename;
        const sd_tokenizer *tok;
        const sd_clip_text *te;
    } pairs[2] = {{"tokenizer", "text_encoder", e->tok1, e->te1}, {"tokenizer_2", "text_encoder_2", e->tok2, e->te2}};
    for (int i = 0; i < 2; i++) {
        const sd_clip_text_config *c = sd_clip_text_get_config(pairs[i].te);
        if (sd_tokenizer_max_length(pairs[i].tok) > c->max_positions)
            return sd_fail(err, "%s: model_max_length %d exceeds %s max_position_embeddings %d", pairs[i].tname,
                           sd_tokenizer_max_length(pairs[i].tok), pairs[i].ename, c->max_positions);
        if (sd_tokenizer_vocab_size(pairs[i].tok) > c->vocab_size)
            return sd_fail(err, "%s: %d vocabulary entries, %s vocab_size is %d", pairs[i].tname,
                           sd_tokenizer_vocab_size(pairs[i].tok), pairs[i].ename, c->vocab_size);
    }
    return 0;
}

int sd_sdxl_clip_skip_layer(const sd_clip_text_config *cfg, int clip_skip, int *layer, sd_error *err) {
    const int L = cfg->num_layers;
    if (clip_skip < 0 || clip_skip > L)
        return sd_fail(err, "clip skip %d: expected 1..%d for this SDXL model (1 and 2 = the penultimate layer, "
                       "SDXL's default; k = hidden_states[-k])", clip_skip, L);
    int k = clip_skip < 2 ? 2 : clip_skip;
    if (k > L)
        return sd_fail(err, "clip skip %d: the text encoder has only %d layers", clip_skip, L);
    *layer = L + 1 - k;
    return 0;
}

int sd_sdxl_context_dim(const sd_sdxl_encoders *e) {
    return sd_clip_text_get_config(e->te1)->hidden_size + sd_clip_text_get_config(e->te2)->hidden_size;
}

int sd_sdxl_pooled_dim(const sd_sdxl_encoders *e) { return sd_clip_text_get_config(e->te2)->projection_dim; }

int sd_sdxl_encode(const sd_sdxl_encoders *e, const char *prompt, sd_prompt_syntax syntax, int clip_skip,
                   sd_text_cond *out, sd_error *err) {
    memset(out, 0, sizeof *out);
    if (sd_sdxl_encoders_check(e, err)) return -1;
    const sd_clip_text_config *c1 = sd_clip_text_get_config(e->te1), *c2 = sd_clip_text_get_config(e->te2);
    int l1 = 0, l2 = 0;
    if (sd_sdxl_clip_skip_layer(c1, clip_skip, &l1, err) || sd_sdxl_clip_skip_layer(c2, clip_skip, &l2, err))
        return -1;
    sd_prompt_chunks ch1, ch2;
    if (sd_prompt_chunks_build(e->tok1, prompt, syntax, &ch1, err)) return -1;
    if (sd_prompt_chunks_build(e->tok2, prompt, syntax, &ch2, err)) {
        sd_prompt_chunks_free(&ch1);
        return -1;
    }
    int rc = 0;
    float *e1 = NULL, *e2 = NULL, *pooled = NULL;
    if (ch1.n_chunks != ch2.n_chunks || ch1.chunk_len != ch2.chunk_len) {
        rc = sd_fail(err, "prompt: tokenizer and tokenizer_2 split it differently (%d and %d chunks): their "
                     "vocabularies differ", ch1.n_chunks, ch2.n_chunks);
        goto done;
    }
    const size_t rows = (size_t)ch1.n_chunks * (size_t)ch1.chunk_len;
    const size_t H1 = (size_t)c1->hidden_size, H2 = (size_t)c2->hidden_size, H = H1 + H2;
    const size_t D = (size_t)c2->projection_dim;
    e1 = malloc(rows * H1 * sizeof *e1);
    e2 = malloc(rows * H2 * sizeof *e2);
    pooled = malloc((size_t)ch2.n_chunks * D * sizeof *pooled);
    out->emb = malloc(rows * H * sizeof *out->emb);
    out->pooled = malloc(D * sizeof *out->pooled);
    if (!e1 || !e2 || !pooled || !out->emb || !out->pooled) {
        rc = sd_fail(err, "prompt: out of memory for %d chunks", ch1.n_chunks);
        goto done;
    }
    if (sd_conditioning_encode_chunks(e->te1, &ch1, l1, 0, e1, err) ||
        sd_conditioning_encode_chunks_pooled(e->te2, &ch2, l2, 0, e2, pooled, err)) {
        rc = -1;
        goto done;
    }
    for (size_t r = 0; r < rows; r++) {
        memcpy(out->emb + r * H, e1 + r * H1, H1 * sizeof(float));
        memcpy(out->emb + r * H + H1, e2 + r * H2, H2 * sizeof(float));
    }
    memcpy(out->pooled, pooled, D * sizeof(float)); /* the first chunk's */
    out->n_chunks = ch1.n_chunks;
    out->chunk_len = ch1.chunk_len;
    out->hidden = (int)H;
    out->pooled_dim = (int)D;
    out->n_tokens = ch1.n_tokens;
    out->n_dropped = ch1.n_dropped;
    out->n_invalid_utf8 = ch1.n_invalid_utf8;
done:
    free(e1);
    free(e2);
    free(pooled);
    sd_prompt_chunks_free(&ch1);
    sd_prompt_chunks_free(&ch2);
    if (rc) sd_text_cond_free(out);
    return rc;
}

int sd_sdxl_zero_cond(int n_chunks, int chunk_len, int hidden, int pooled_dim, sd_text_cond *out, sd_error *err) {
    memset(out, 0, sizeof *out);
    if (n_chunks < 1 || chunk_len < 1 || hidden < 1 || pooled_dim < 1)
        return sd_fail(err, "zero conditioning: %d chunks of %d x %d, pooled %d: expected positive sizes", n_chunks,
                       chunk_len, hidden, pooled_dim);
    out->emb = calloc((size_t)n_chunks * (size_t)chunk_len * (size_t)hidden, sizeof *out->emb);
    out->pooled = calloc((size_t)pooled_dim, sizeof *out->pooled);
    if (!out->emb || !out->pooled) {
        sd_text_cond_free(out);
        return sd_fail(err, "zero conditioning: out of memory");
    }
    out->n_chunks = n_chunks;
    out->chunk_len = chunk_len;
    out->hidden = hidden;
    out->pooled_dim = pooled_dim;
    return 0;
}

void sd_sdxl_time_ids(int original_h, int original_w, int crop_top, int crop_left, int target_h, int target_w,
                      float out[SD_SDXL_N_TIME_IDS]) {
    out[0] = (float)original_h;
    out[1] = (float)original_w;
    out[2] = (float)crop_top;
    out[3] = (float)crop_left;
    out[4] = (float)target_h;
    out[5] = (float)target_w;
}
