/* unet/linear_layer — dense paths of the linear-layer seam and the dispatch
 * to unet/moe_layer (contract in unet/linear_layer.h). */
#include "unet/linear_layer.h"

#include "core/kernels.h"
#include "unet/moe_layer.h"

static const float *dense_bias(const sd_dense *l) { return l->b.numel > 0 ? l->b.data : NULL; }

void sd_dense_forward(const sd_dense *l, const float *x, int64_t n_rows, float *y) {
    sd_linear(x, l->w.data, dense_bias(l), n_rows, l->w.shape[1], l->w.shape[0], y);
}

/* diffusers FeedForward(activation_fn="geglu"): GEGLU.proj -> chunk(2, -1) ->
 * hidden * F.gelu(gate) (exact erf) -> net.2 (attention.py / activations.py). */
void sd_geglu_ff_forward(const sd_geglu_ff *f, const float *x, int64_t n_rows, float *y, float *scratch) {
    int64_t two_inner = f->proj.w.shape[0], inner = two_inner / 2;
    sd_dense_forward(&f->proj, x, n_rows, scratch);
    sd_geglu(scratch, n_rows, inner, scratch); /* compacts rows to [n_rows, inner] */
    sd_dense_forward(&f->out, scratch, n_rows, y);
}

int64_t sd_proj_out_dim(const sd_proj *p) { return p->moe ? sd_moe_out_dim(p->moe) : p->dense.w.shape[0]; }

int64_t sd_proj_in_dim(const sd_proj *p) { return p->moe ? sd_moe_in_dim(p->moe) : p->dense.w.shape[1]; }

int sd_proj_forward(sd_proj *p, const float *x, int64_t n_rows, float *y, float *scratch, sd_error *err) {
    if (p->observe) p->observe(p->observe_ctx, x, n_rows, sd_proj_in_dim(p));
    if (p->moe) return sd_moe_forward(p->moe, x, n_rows, y, scratch, err);
    sd_dense_forward(&p->dense, x, n_rows, y);
    return 0;
}

int64_t sd_proj_scratch_floats(const sd_proj *p, int64_t n_rows) {
    return p->moe ? sd_moe_scratch_floats(p->moe, n_rows) : 0;
}

int sd_ff_forward(sd_ff *f, const float *x, int64_t n_rows, float *y, float *scratch, sd_error *err) {
    if (f->observe) f->observe(f->observe_ctx, x, n_rows, f->moe ? sd_moe_in_dim(f->moe) : f->dense.proj.w.shape[1]);
    if (f->moe) return sd_moe_forward(f->moe, x, n_rows, y, scratch, err);
    sd_geglu_ff_forward(&f->dense, x, n_rows, y, scratch);
    return 0;
}

int64_t sd_ff_scratch_floats(const sd_ff *f, int64_t n_rows) {
    if (f->moe) return sd_moe_scratch_floats(f->moe, n_rows);
    return n_rows * f->dense.proj.w.shape[0];
}
