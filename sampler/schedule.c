/* sampler/schedule — timestep and sigma tables as diffusers v0.27.2 builds
 * them in set_timesteps (numpy float64, cast to float32 where diffusers
 * casts), and the numeric helpers they need. */
#include <math.h>
#include <stdlib.h>

#include "sampler/sched_internal.h"

void sched_torch_linspace_f32(float start, float end, int n, float *out) {
    if (n == 1) {
        out[0] = start;
        return;
    }
    /* RangeFactoriesKernel.cpp (1.13): step in float; the first half counts
     * up from start, the second down from end.  The AVX2 build fills 2x8
     * lanes per iteration from a fused base (Vectorized::arange: base + k*step),
     * and the tail of fewer than 16 values with the fused scalar formula. */
    float step = (end - start) / (float)(n - 1);
    int half = n / 2, i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int v = i; v < i + 16; v += 8) {
            float base = v < half ? fmaf(step, (float)v, start) : fmaf(-step, (float)(n - v - 1), end);
            for (int k = 0; k < 8; k++) out[v + k] = base + (float)k * step;
        }
    }
    for (; i < n; i++) out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - i - 1), end);
}

double sched_round(double x) { return rint(x); /* round half to even, as numpy */ }

double sched_np_linspace(double stop, int n, int i) {
    /* np.linspace(0, stop, n): arange(n) * (stop / (n-1)), the last set to stop */
    if (n <= 1) return 0.0;
    if (i == n - 1) return stop;
    return (double)i * (stop / (double)(n - 1));
}

double sched_interp(double x, const float *fp, int n) {
    /* numpy's arr_interp on xp = 0..n-1 */
    if (x <= 0.0) return fp[0];
    if (x >= (double)(n - 1)) return fp[n - 1];
    int j = (int)floor(x);
    if ((double)j == x) return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - (double)j) + (double)fp[j];
}

/* Values of np.arange(start, 0, -step) (float64; numpy fills start + i*delta
 * with delta = (start - step) - start). */
static double np_arange_down(double start, double step, int i) {
    double delta = (start + -step) - start;
    return i == 0 ? start : start + (double)i * delta;
}

void sched_float_timesteps(const sd_scheduler *s, int N, double *out) {
    int T = s->T;
    for (int k = 0; k < N; k++) {
        float t;
        if (s->cfg.spacing == SCHED_LINSPACE) {
            /* np.linspace(0, T-1, N, dtype=float32)[::-1] */
            t = (float)sched_np_linspace(T - 1, N, N - 1 - k);
        } else if (s->cfg.spacing == SCHED_LEADING) {
            /* (arange(N) * (T // N)).round()[::-1].astype(float32) + steps_offset */
            t = (float)((N - 1 - k) * (T / N)) + (float)s->cfg.steps_offset;
        } else {
            /* arange(T, 0, -T/N).round().astype(float32) - 1 */
            t = (float)sched_round(np_arange_down(T, (double)T / N, k)) - 1.0f;
        }
        out[k] = t;
    }
}

void sched_int_timesteps(const sd_scheduler *s, int N, double *out) {
    int T = s->T;
    for (int k = 0; k < N; k++) {
        if (s->cfg.spacing == SCHED_LINSPACE)
            out[k] = sched_round(sched_np_linspace(T - 1, N, N - 1 - k));
        else if (s->cfg.spacing == SCHED_LEADING)
            out[k] = (double)((N - 1 - k) * (T / N) + s->cfg.steps_offset);
        else
            out[k] = sched_round(np_arange_down(T, (double)T / N, k)) - 1.0;
    }
}

void sched_karras(double sigma_min, double sigma_max, int N, double *out) {
    /* _convert_to_karras, rho = 7 (Karras et al. 2022) */
    const double rho = 7.0;
    double min_inv = pow(sigma_min, 1.0 / rho), max_inv = pow(sigma_max, 1.0 / rho);
    for (int i = 0; i < N; i++) {
        double ramp = sched_np_linspace(1.0, N, i);
        out[i] = pow(max_inv + ramp * (min_inv - max_inv), rho);
    }
}

void sched_log_sigmas(const sd_scheduler *s, float *out) {
    for (int i = 0; i < s->T; i++) out[i] = logf(s->sigma_table[i]);
}

double sched_sigma_to_t(double sigma, const float *log_sigmas, int T) {
    double log_sigma = log(sigma > 1e-10 ? sigma : 1e-10);
    /* low = last index with log_sigmas[i] <= log_sigma (0 if none), at most T-2 */
    int low = 0;
    for (int i = 0; i < T; i++)
        if ((double)log_sigmas[i] <= log_sigma) low = i;
    if (low > T - 2) low = T - 2;
    double lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = (lo - log_sigma) / (lo - hi);
    w = w < 0 ? 0 : (w > 1 ? 1 : w);
    return (1.0 - w) * low + w * (low + 1);
}

/* LMS coefficients.  diffusers (get_lms_coefficient) integrates with
 * scipy.integrate.quad(epsrel=1e-4) an integrand built from 0-dim float32
 * tensors: tau is rounded to float32 and every factor is a float32 divide and
 * multiply.  For these cubic polynomials QUADPACK's dqags accepts its first
 * 21-point Gauss-Kronrod estimate (dqk21), so the coefficient is that sum
 * over float32 integrand values, accumulated in dqk21's order. */
typedef struct lms_basis {
    const float *sigmas;
    int order, t, current;
} lms_basis;

static double lms_integrand(const lms_basis *b, double tau) {
    float prod = 1.0f, tau32 = (float)tau, sc = b->sigmas[b->t - b->current];
    for (int k = 0; k < b->order; k++) {
        if (k == b->current) continue;
        float sk = b->sigmas[b->t - k];
        prod = prod * ((tau32 - sk) / (sc - sk));
    }
    return prod;
}

/* QUADPACK dqk21 abscissae (xgk[1,3,..,9] are the 10-point Gauss nodes) and Kronrod weights. */
static const double gk21_x[11] = {
    0.995657163025808080735527280689003, 0.973906528517171720077964012084452, 0.930157491355708226001207180059508,
    0.865063366688984510732096688423493, 0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
    0.562757134668604683339000099272694, 0.433395394129247190799265943165784, 0.294392862701460198131126603103866,
    0.148874338981631210884826001129720, 0.0};
static const double gk21_w[11] = {
    0.011694638867371874278064396062192, 0.032558162307964727478818972459390, 0.054755896574351996031381300244580,
    0.075039674810919952767043140916190, 0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
    0.123491976262065851077958109831074, 0.134709217311473325928054001771707, 0.142775938577060080797094273138717,
    0.147739104901338491374841515972068, 0.149445554002916905664936468389821};

double sched_lms_coefficient(const float *sigmas, int order, int t, int current) {
    lms_basis b = {sigmas, order, t, current};
    double lo = sigmas[t], hi = sigmas[t + 1];
    double centr = 0.5 * (lo + hi), hlgth = 0.5 * (hi - lo);
    double resk = gk21_w[10] * lms_integrand(&b, centr);
    for (int pass = 0; pass < 2; pass++) {     /* the Gauss nodes first, then the Kronrod ones */
        for (int j = 1 - pass; j < 10; j += 2) {
            double absc = hlgth * gk21_x[j];
            double fsum = lms_integrand(&b, centr - absc) + lms_integrand(&b, centr + absc);
            resk = resk + gk21_w[j] * fsum;
        }
    }
    return resk * hlgth;
}

int sched_sigma_schedule(sd_scheduler *s, int allow_karras_bounds, sd_error *err) {
    int N = s->num_inference_steps, T = s->T;
    double *ts = malloc((size_t)N * sizeof *ts), *sig = malloc((size_t)N * sizeof *sig);
    float *log_sigmas = s->cfg.karras ? malloc((size_t)T * sizeof *log_sigmas) : NULL;
    if (!ts || !sig || (s->cfg.karras && !log_sigmas)) {
        free(ts);
        free(sig);
        free(log_sigmas);
        return sd_fail(err, "scheduler: out of memory building %d sigmas", N);
    }
    sched_float_timesteps(s, N, ts);
    for (int i = 0; i < N; i++) sig[i] = sched_interp(ts[i], s->sigma_table, T);
    if (s->cfg.karras) {
        /* bounds: the config's sigma_min/max (Euler only) or the ends of the
         * interpolated schedule */
        double smin = sched_interp(ts[N - 1], s->sigma_table, T), smax = sched_interp(ts[0], s->sigma_table, T);
        if (allow_karras_bounds && !isnan(s->cfg.sigma_min)) smin = s->cfg.sigma_min;
        if (allow_karras_bounds && !isnan(s->cfg.sigma_max)) smax = s->cfg.sigma_max;
        sched_karras(smin, smax, N, sig);
        sched_log_sigmas(s, log_sigmas);
        for (int i = 0; i < N; i++) ts[i] = sched_sigma_to_t(sig[i], log_sigmas, T);
    }
    for (int i = 0; i < N; i++) {
        s->sigmas[i] = (float)sig[i];
        s->timesteps[i] = (float)ts[i];
    }
    s->sigmas[N] = 0.0f;
    s->n_sigmas = N + 1;
    s->n_calls = N;
    free(ts);
    free(sig);
    free(log_sigmas);
    return 0;
}

float sched_sigma_init_noise(const sd_scheduler *s) {
    float m = 0.0f;
    for (int i = 0; i < s->n_sigmas; i++)
        if (s->sigmas[i] > m) m = s->sigmas[i];
    if (s->cfg.spacing == SCHED_LINSPACE || s->cfg.spacing == SCHED_TRAILING) return m;
    return sqrtf(m * m + 1.0f);
}
