/* cli/progress — the progress display on stderr (loading, sampling steps,
 * decoding).
 *
 * Three modes: a redrawn bar when stderr is a terminal
 *     sampling [###########.........] 11/20  1.52s/it  ETA 00:14
 * plain lines when it is not (a log file, CI): one per update, at most one
 * a second, plus a summary line from finish(); nothing when quiet (-q).
 * Rates read as tqdm does: "it/s" at >= 1 step per second, "s/it" below.
 *
 *     cli_progress pr;
 *     cli_progress_init(&pr, stderr, cli_progress_auto_mode(stderr, opts.quiet));
 *     cli_progress_start(&pr, "sampling", steps);
 *     for (...) { ...; cli_progress_update(&pr, i + 1); }
 *     cli_progress_finish(&pr);
 */
#ifndef SDMOE_CLI_PROGRESS_H
#define SDMOE_CLI_PROGRESS_H

#include <stdio.h>

typedef enum cli_progress_mode {
    CLI_PROGRESS_QUIET,     /* print nothing */
    CLI_PROGRESS_PLAIN,     /* whole lines, throttled */
    CLI_PROGRESS_BAR,       /* one line redrawn with '\r' */
} cli_progress_mode;

typedef struct cli_progress {
    FILE *out;
    cli_progress_mode mode;
    char label[64];
    int total, done;
    double t_start;         /* seconds, from now() */
    double t_last_line;     /* last plain line printed */
    int last_line_done;     /* done count of that line (-1 = none) */
    double (*now)(void);    /* clock in seconds; monotonic by default, tests may replace */
} cli_progress;

/* QUIET when quiet, else BAR if `out` is a terminal, else PLAIN. */
cli_progress_mode cli_progress_auto_mode(FILE *out, int quiet);

void cli_progress_init(cli_progress *p, FILE *out, cli_progress_mode mode);
/* Begins a task of `total` units (total <= 0: unknown, no bar or ETA). */
void cli_progress_start(cli_progress *p, const char *label, int total);
/* Reports `done` units finished so far. */
void cli_progress_update(cli_progress *p, int done);
/* Ends the task: the bar's last state and a newline, or a plain summary. */
void cli_progress_finish(cli_progress *p);

/* Prints msg as a line of its own (even when quiet), keeping a terminal
 * bar intact: the bar is cleared, the line printed, the bar redrawn. */
void cli_progress_message(cli_progress *p, const char *msg);

/* Adapter for library callbacks of the form fn(user, done, total):
 * user is a cli_progress*. */
void cli_progress_callback(void *user, int done, int total);

#endif
