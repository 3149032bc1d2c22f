/* CLIPTextModel(WithProjection) forward pass (transformers modeling_clip.py:
 * CLIPTextEmbeddings, CLIPEncoderLayer, CLIPAttention, CLIPMLP,
 * CLIPTextTransformer.forward). */
#include "text_encoder/clip_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json.h"
#include "core/kernels.h"

/* One CLIPEncoderLayer; shapes with H = hidden, I = intermediate. */
typedef struct clip_layer {
    const float *ln1_w, *ln1_b;       /* layer_norm1 [H] */
    const float *q_w, *q_b;           /* self_attn.q_proj [H,H], [H] */
    const float *k_w, *k_b;           /* self_attn.k_proj */
    const float *v_w, *v_b;           /* self_attn.v_proj */
    const float *o_w, *o_b;           /* self_attn.out_proj */
    const float *ln2_w, *ln2_b;       /* layer_norm2 [H] */
    const float *fc1_w, *fc1_b;       /* mlp.fc1 [I,H], [I] */
    const float *fc2_w, *fc2_b;       /* mlp.fc2 [H,I], [H] */
} clip_layer;

struct sd_clip_text {
    sd_clip_text_config cfg;
    const float *tok_emb;             /* embeddings.token_embedding.weight [V,H] */
    const float *pos_emb;             /* embeddings.position_embedding.weight [P,H] */
    clip_layer *layers;               /* [L] */
    const float *final_w, *final_b;   /* final_layer_norm [H] */
    const float *proj;                /* text_projection.weight [D,H] or NULL */
};

/* ------------------------------------------------------------------ config */

int sd_clip_text_config_read(const cJSON *cfg, const char *file, sd_clip_text_config *c,
                             sd_error *err) {
    char act[32];
    if (sd_json_int(cfg, file, "vocab_size", 49408, &c->vocab_size, err) ||
        sd_json_int(cfg, file, "hidden_size", 512, &c->hidden_size, err) ||
        sd_json_int(cfg, file, "num_attention_heads", 8, &c->num_heads, err) ||
        sd_json_int(cfg, file, "num_hidden_layers", 12, &c->num_layers, err) ||
        sd_json_int(cfg, file, "intermediate_size", 2048, &c->intermediate_size, err) ||
        sd_json_int(cfg, file, "max_position_embeddings", 77, &c->max_positions, err) ||
        sd_json_float(cfg, file, "layer_norm_eps", 1e-5, &c->eps, err) ||
        sd_json_int(cfg, file, "eos_token_id", 49407, &c->eos_token_id, err) ||
        sd_json_int(cfg, file, "projection_dim", 512, &c->projection_dim, err) ||
        sd_json_string(cfg, file, "hidden_act", "quick_gelu", act, sizeof act, err))
        return -1;
    if (strcmp(act, "quick_gelu") == 0) c->act = SD_CLIP_ACT_QUICK_GELU;
    else if (strcmp(act, "gelu") == 0) c->act = SD_CLIP_ACT_GELU;
    else return sd_fail(err, "%s: key 'hidden_act': '%s' is not supported (expected quick_gelu or gelu)", file, act);
    const struct {
        const char *key;
        int v;
    } pos[] = {{"vocab_size", c->vocab_size},           {"hidden_size", c->hidden_size},
               {"num_attention_heads", c->num_heads},   {"num_hidden_layers", c->num_layers},
               {"intermediate_size", c->intermediate_size}, {"max_position_embeddings", c->max_positions},
               {"projection_dim", c->projection_dim}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v <= 0) return sd_fail(err, "%s: key '%s': expected a positive integer, got %d", file, pos[i].key, pos[i].v);
    if (c->hidden_size % c->num_heads)
        return sd_fail(err, "%s: hidden_size %d is not divisible by num_attention_heads %d", file, c->hidden_size,
                       c->num_heads);
    if (!(c->eps > 0)) return sd_fail(err, "%s: key 'layer_norm_eps': expected a positive number", file);
    return 0;
}

/* -------------------------------------------------------------------- load */

/* Binds `name` with 1 or 2 dims and returns its f32 data in *out. */
static int bind_f32(sd_binder *b, const char *name, int64_t d0, int64_t d1, const float **out,
                    sd_error *err) {
    sd_tensor t;
    int64_t shape[2] = {d0, d1};
    if (sd_bind(b, &t, name, d1 ? 2 : 1, shape, err)) return -1;
    *out = sd_tensor_f32(&t, err);
    return *out ? 0 : -1;
}

/* <prefix>.weight [out, in] and <prefix>.bias [out]; in = 0 binds a 1-D
 * weight (LayerNorm's weight and bias). */
static int bind_linear(sd_binder *b, const char *prefix, int64_t out, int64_t in, const float **w,
                       const float **bias, sd_error *err) {
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (bind_f32(b, name, out, in, w, err)) return -1;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return bind_f32(b, name, out, 0, bias, err);
}

static int bind_layer(sd_binder *b, const sd_clip_text_config *c, int i, clip_layer *l, sd_error *err) {
    char p[128], q[160];
    const int64_t H = c->hidden_size, I = c->intermediate_size;
    snprintf(p, sizeof p, "text_model.encoder.layers.%d", i);
#define SUB(s) (snprintf(q, sizeof q, "%s.%s", p, s), q)
    return bind_linear(b, SUB("layer_norm1"), H, 0, &l->ln1_w, &l->ln1_b, err) ||
                   bind_linear(b, SUB("self_attn.q_proj"), H, H, &l->q_w, &l->q_b, err) ||
                   bind_linear(b, SUB("self_attn.k_proj"), H, H, &l->k_w, &l->k_b, err) ||
                   bind_linear(b, SUB("self_attn.v_proj"), H, H, &l->v_w, &l->v_b, err) ||
                   bind_linear(b, SUB("self_attn.out_proj"), H, H, &l->o_w, &l->o_b, err) ||
                   bind_linear(b, SUB("layer_norm2"), H, 0, &l->ln2_w, &l->ln2_b, err) ||
                   bind_linear(b, SUB("mlp.fc1"), I, H, &l->fc1_w, &l->fc1_b, err) ||
                   bind_linear(b, SUB("mlp.fc2"), H, I, &l->fc2_w, &l->fc2_b, err)
               ? -1
               : 0;
#undef SUB
}

int sd_clip_text_load(sd_clip_text **out, const sd_clip_text_config *cfg, sd_binder *b,
                      sd_error *err) {
    *out = NULL;
    sd_clip_text *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)cfg->num_layers, sizeof *m->layers))) {
        free(m);
        return sd_fail(err, "text encoder: out of memory");
    }
    m->cfg = *cfg;
    const int64_t H = cfg->hidden_size;
    int rc = bind_f32(b, "text_model.embeddings.token_embedding.weight", cfg->vocab_size, H, &m->tok_emb, err) ||
             bind_f32(b, "text_model.embeddings.position_embedding.weight", cfg->max_positions, H, &m->pos_emb,
                      err);
    for (int i = 0; i < cfg->num_layers && !rc; i++) rc = bind_layer(b, cfg, i, &m->layers[i], err);
    if (!rc) rc = bind_linear(b, "text_model.final_layer_norm", H, 0, &m->final_w, &m->final_b, err);
    if (!rc) {
        /* position_ids is a buffer (0..P-1) some files carry; it adds nothing. */
        sd_binder_ignore(b, "text_model.embeddings.position_ids");
        sd_tensor t;
        int64_t shape[2] = {cfg->projection_dim, H};
        int r = sd_bind_optional(b, &t, "text_projection.weight", 2, shape, err);
        if (r < 0) rc = -1;
        else if (r == 0 && !(m->proj = sd_tensor_f32(&t, err))) rc = -1;
    }
    if (rc) {
        sd_clip_text_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void sd_clip_text_free(sd_clip_text *m) {
    if (!m) return;
    free(m->layers);
    free(m);
}

const sd_clip_text_config *sd_clip_text_get_config(const sd_clip_text *m) { return &m->cfg; }
int sd_clip_text_has_projection(const sd_clip_text *m) { return m->proj != NULL; }

int sd_clip_skip_layer(const sd_clip_text_config *cfg, int clip_skip, int *layer, int *final_norm,
                       sd_error *err) {
    if (clip_skip < 1 || clip_skip > cfg->num_layers)
        return sd_fail(err, "clip skip %d: expected 1..%d (1 = last layer, 2 = penultimate, ...)", clip_skip,
                       cfg->num_layers);
    *layer = cfg->num_layers + 1 - clip_skip;
    *final_norm = 1;
    return 0;
}

/* ----------------------------------------------------------------- forward */

typedef struct clip_work {
    float *x;      /* [rows, H] residual stream */
    float *h;      /* [rows, H] normed input / attention output */
    float *q, *k, *v;  /* [rows, H] */
    float *t;      /* [rows, H] projection output */
    float *mlp;    /* [rows, I] */
} clip_work;

static void clip_work_free(clip_work *w) {
    free(w->x);
    free(w->h);
    free(w->q);
    free(w->k);
    free(w->v);
    free(w->t);
    free(w->mlp);
}

static int clip_work_alloc(clip_work *w, int64_t rows, int64_t H, int64_t I) {
    size_t rh = (size_t)(rows * H) * sizeof(float);
    w->x = malloc(rh);
    w->h = malloc(rh);
    w->q = malloc(rh);
    w->k = malloc(rh);
    w->v = malloc(rh);
    w->t = malloc(rh);
    w->mlp = malloc((size_t)(rows * I) * sizeof(float));
    return w->x && w->h && w->q && w->k && w->v && w->t && w->mlp ? 0 : -1;
}

/* x += out_proj(attn(layer_norm1(x))); x += fc2(act(fc1(layer_norm2(x)))). */
static void clip_layer_forward(const sd_clip_text *m, const clip_layer *l, clip_work *w, int n, int seq) {
    const sd_clip_text_config *c = &m->cfg;
    const int64_t rows = (int64_t)n * seq, H = c->hidden_size, I = c->intermediate_size;
    const int64_t dh = H / c->num_heads;
    sd_layer_norm(w->x, rows, H, l->ln1_w, l->ln1_b, (float)c->eps, w->h);
    sd_linear(w->h, l->q_w, l->q_b, rows, H, H, w->q);
    sd_linear(w->h, l->k_w, l->k_b, rows, H, H, w->k);
    sd_linear(w->h, l->v_w, l->v_b, rows, H, H, w->v);
    /* softmax((q * dh^-0.5) k^T + causal mask) v, heads side by side in H. */
    sd_attention(w->q, H, w->k, H, w->v, H, n, seq, seq, c->num_heads, dh, 1.0f / sqrtf((float)dh), 1, w->h, H,
                 NULL);
    sd_linear(w->h, l->o_w, l->o_b, rows, H, H, w->t);
    sd_add(w->x, w->t, w->x, rows * H);
    sd_layer_norm(w->x, rows, H, l->ln2_w, l->ln2_b, (float)c->eps, w->h);
    sd_linear(w->h, l->fc1_w, l->fc1_b, rows, H, I, w->mlp);
    if (c->act == SD_CLIP_ACT_QUICK_GELU) sd_quick_gelu(w->mlp, w->mlp, rows * I);
    else sd_gelu_erf(w->mlp, w->mlp, rows * I);
    sd_linear(w->mlp, l->fc2_w, l->fc2_b, rows, I, H, w->t);
    sd_add(w->x, w->t, w->x, rows * H);
}

/* HF CLIPTextTransformer pooling position for one row of ids. */
static int eos_position(const sd_clip_text_config *c, const int32_t *ids, int seq) {
    int at = 0;
    if (c->eos_token_id == 2) { /* legacy configs: argmax(ids), first maximum */
        for (int i = 1; i < seq; i++)
            if (ids[i] > ids[at]) at = i;
        return at;
    }
    for (int i = 0; i < seq; i++)
        if (ids[i] == c->eos_token_id) return i;
    return 0; /* HF would index -1 -> error; no EOS: take BOS */
}

/* pooled[n, D|H] from the last layer's output x. */
static int clip_pool(const sd_clip_text *m, const int32_t *ids, int n, int seq, const float *x, float *pooled) {
    const sd_clip_text_config *c = &m->cfg;
    const int64_t H = c->hidden_size;
    float *rows = malloc((size_t)(n * H) * sizeof(float));
    if (!rows) return -1;
    for (int b = 0; b < n; b++) {
        int at = eos_position(c, ids + (size_t)b * seq, seq);
        sd_layer_norm(x + ((int64_t)b * seq + at) * H, 1, H, m->final_w, m->final_b, (float)c->eps, rows + b * H);
    }
    if (m->proj) sd_linear(rows, m->proj, NULL, n, H, c->projection_dim, pooled);
    else memcpy(pooled, rows, (size_t)(n * H) * sizeof(float));
    free(rows);
    return 0;
}

static int check_ids(const sd_clip_text_config *c, const int32_t *ids, int n, int seq, sd_error *err) {
    if (n <= 0 || seq <= 0 || seq > c->max_positions)
        return sd_fail(err, "text encoder: %d sequences of %d tokens (expected 1..%d tokens)", n, seq,
                       c->max_positions);
    for (int64_t i = 0; i < (int64_t)n * seq; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return sd_fail(err, "text encoder: token id %d at position %lld is outside the vocabulary (0..%d)",
                           ids[i], (long long)i, c->vocab_size - 1);
    return 0;
}

int sd_clip_text_forward(sd_clip_text *m, const int32_t *ids, int n, int seq,
                         const sd_clip_text_request *req, sd_error *err) {
    const sd_clip_text_config *c = &m->cfg;
    const int L = c->num_layers;
    const int64_t H = c->hidden_size, rows = (int64_t)n * seq, plane = rows * H;
    if (check_ids(c, ids, n, seq, err)) return -1;
    if (req->hidden && (req->layer < 0 || req->layer > L))
        return sd_fail(err, "text encoder: hidden state %d requested, the model has 0..%d", req->layer, L);
    int need = req->hidden ? req->layer : 0;
    if (req->all_hidden || req->pooled) need = L;
    clip_work w = {0};
    if (clip_work_alloc(&w, rows, H, c->intermediate_size)) {
        clip_work_free(&w);
        return sd_fail(err, "text encoder: out of memory for %d x %d tokens", n, seq);
    }
    /* CLIPTextEmbeddings: token + absolute position embedding. */
    for (int64_t r = 0; r < rows; r++)
        sd_add(m->tok_emb + (int64_t)ids[r] * H, m->pos_emb + (r % seq) * H, w.x + r * H, H);
    for (int l = 0;; l++) {
        if (req->all_hidden) memcpy(req->all_hidden + l * plane, w.x, (size_t)plane * sizeof(float));
        if (req->hidden && l == req->layer) {
            if (req->final_norm) sd_layer_norm(w.x, rows, H, m->final_w, m->final_b, (float)c->eps, req->hidden);
            else memcpy(req->hidden, w.x, (size_t)plane * sizeof(float));
        }
        if (l == need) break;
        clip_layer_forward(m, &m->layers[l], &w, n, seq);
    }
    int rc = 0;
    if (req->pooled && clip_pool(m, ids, n, seq, w.x, req->pooled)) rc = sd_fail(err, "text encoder: out of memory");
    clip_work_free(&w);
    return rc;
}
