/* cli/progress — see progress.h. */
#include "cli/progress.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BAR_WIDTH 24
/* Plain mode prints at most one line per this many seconds. */
#define PLAIN_INTERVAL_S 1.0

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

cli_progress_mode cli_progress_auto_mode(FILE *out, int quiet) {
    if (quiet || !out) return CLI_PROGRESS_QUIET;
    return isatty(fileno(out)) ? CLI_PROGRESS_BAR : CLI_PROGRESS_PLAIN;
}

void cli_progress_init(cli_progress *p, FILE *out, cli_progress_mode mode) {
    memset(p, 0, sizeof *p);
    p->out = out;
    p->mode = out ? mode : CLI_PROGRESS_QUIET;
    p->now = monotonic_now;
    p->last_line_done = -1;
}

void cli_progress_start(cli_progress *p, const char *label, int total) {
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    p->total = total;
    p->done = 0;
    p->t_start = p->now();
    p->t_last_line = p->t_start;
    p->last_line_done = -1;
    if (p->mode == CLI_PROGRESS_BAR) cli_progress_update(p, 0);
}

/* "12.3it/s", "1.52s/it" (tqdm's switch at one per second) or "?it/s". */
static void fmt_rate(char *buf, size_t cap, int done, double elapsed) {
    if (done <= 0 || elapsed <= 0.0)
        snprintf(buf, cap, "?it/s");
    else if (done >= elapsed)
        snprintf(buf, cap, "%.2fit/s", done / elapsed);
    else
        snprintf(buf, cap, "%.2fs/it", elapsed / done);
}

/* "mm:ss", or "h:mm:ss" from an hour up. */
static void fmt_time(char *buf, size_t cap, double s) {
    if (s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, cap, "%02ld:%02ld", t / 60, t % 60);
}

static void fmt_eta(char *buf, size_t cap, const cli_progress *p, double elapsed) {
    if (p->total <= 0 || p->done <= 0 || elapsed <= 0.0) {
        snprintf(buf, cap, "--:--");
        return;
    }
    fmt_time(buf, cap, elapsed / p->done * (p->total - p->done));
}

static void draw_bar(cli_progress *p, double elapsed, int final) {
    char rate[32], tail[32], bar[BAR_WIDTH + 1];
    fmt_rate(rate, sizeof rate, p->done, elapsed);
    if (final) {
        fmt_time(tail, sizeof tail, elapsed);
    } else {
        char eta[24];
        fmt_eta(eta, sizeof eta, p, elapsed);
        snprintf(tail, sizeof tail, "ETA %s", eta);
    }
    if (p->total > 0) {
        int fill = (int)((long long)BAR_WIDTH * p->done / p->total);
        if (fill > BAR_WIDTH) fill = BAR_WIDTH;
        for (int i = 0; i < BAR_WIDTH; i++) bar[i] = i < fill ? '#' : '.';
        bar[BAR_WIDTH] = '\0';
        fprintf(p->out, "\r%s [%s] %d/%d  %s  %s\x1b[K", p->label, bar, p->done, p->total, rate,
                tail);
    } else {
        fprintf(p->out, "\r%s %d  %s  %s\x1b[K", p->label, p->done, rate, tail);
    }
    if (final) fputc('\n', p->out);
    fflush(p->out);
}

static void plain_line(cli_progress *p, double now) {
    char rate[32], eta[24];
    double elapsed = now - p->t_start;
    fmt_rate(rate, sizeof rate, p->done, elapsed);
    fmt_eta(eta, sizeof eta, p, elapsed);
    if (p->total > 0)
        fprintf(p->out, "%s: %d/%d  %s  ETA %s\n", p->label, p->done, p->total, rate, eta);
    else
        fprintf(p->out, "%s: %d  %s\n", p->label, p->done, rate);
    fflush(p->out);
    p->t_last_line = now;
    p->last_line_done = p->done;
}

void cli_progress_update(cli_progress *p, int done) {
    if (p->mode == CLI_PROGRESS_QUIET) return;
    p->done = done;
    double now = p->now();
    if (p->mode == CLI_PROGRESS_BAR) {
        draw_bar(p, now - p->t_start, 0);
        return;
    }
    /* plain: the last unit is reported by finish()'s summary */
    if (done <= 0 || (p->total > 0 && done >= p->total)) return;
    if (p->last_line_done < 0 || now - p->t_last_line >= PLAIN_INTERVAL_S) plain_line(p, now);
}

void cli_progress_finish(cli_progress *p) {
    if (p->mode == CLI_PROGRESS_QUIET) return;
    double elapsed = p->now() - p->t_start;
    if (p->mode == CLI_PROGRESS_BAR) {
        draw_bar(p, elapsed, 1);
        return;
    }
    char rate[32];
    fmt_rate(rate, sizeof rate, p->done, elapsed);
    if (p->total > 0)
        fprintf(p->out, "%s: %d/%d done in %.1fs (%s)\n", p->label, p->done, p->total, elapsed,
                rate);
    else
        fprintf(p->out, "%s: %d done in %.1fs (%s)\n", p->label, p->done, elapsed, rate);
    fflush(p->out);
}

void cli_progress_callback(void *user, int done, int total) {
    cli_progress *p = user;
    if (total > 0) p->total = total;
    cli_progress_update(p, done);
}

void cli_progress_message(cli_progress *p, const char *msg) {
    int bar_shown = p->mode == CLI_PROGRESS_BAR && p->label[0];
    fprintf(p->out ? p->out : stderr, "%s%s\n", bar_shown ? "\r\x1b[K" : "", msg);
    if (bar_shown) draw_bar(p, p->now() - p->t_start, 0);
    else fflush(p->out ? p->out : stderr);
}
