/* cli/progress: the exact output of each mode with a fake clock. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/progress.h"

static double fake_time;
static double fake_now(void) { return fake_time; }

/* Runs start / update(1..total) at `step_s` seconds per step / finish and
 * returns what was printed (malloc'd). */
static char *run(cli_progress_mode mode, int total, double step_s) {
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    cr_assert_not_null(out);
    cli_progress p;
    cli_progress_init(&p, out, mode);
    p.now = fake_now;
    fake_time = 100.0;
    cli_progress_start(&p, "sampling", total);
    for (int i = 1; i <= total; i++) {
        fake_time += step_s;
        cli_progress_update(&p, i);
    }
    cli_progress_finish(&p);
    fclose(out);
    return buf;
}

Test(progress, quiet_prints_nothing) {
    char *s = run(CLI_PROGRESS_QUIET, 5, 1.0);
    cr_assert_str_eq(s, "");
    free(s);
}

Test(progress, plain_lines_one_per_slow_step) {
    char *s = run(CLI_PROGRESS_PLAIN, 3, 2.0);
    cr_assert_str_eq(s, "sampling: 1/3  2.00s/it  ETA 00:04\n"
                        "sampling: 2/3  2.00s/it  ETA 00:02\n"
                        "sampling: 3/3 done in 6.0s (2.00s/it)\n");
    free(s);
}

Test(progress, plain_lines_throttled_for_fast_steps) {
    /* 40 steps of 0.1 s: first step, then one line a second, then the summary */
    char *s = run(CLI_PROGRESS_PLAIN, 40, 0.1);
    int lines = 0;
    for (const char *c = s; *c; c++) lines += *c == '\n';
    cr_assert(lines >= 4 && lines <= 6, "%d lines:\n%s", lines, s);
    cr_assert(strstr(s, "sampling: 1/40  10.00it/s  ETA 00:04\n") == s, "%s", s);
    cr_assert_not_null(strstr(s, "sampling: 40/40 done in 4.0s (10.00it/s)\n"));
    free(s);
}

Test(progress, bar_redraws_in_place) {
    char *s = run(CLI_PROGRESS_BAR, 2, 0.5);
    cr_assert_str_eq(s,
        "\rsampling [........................] 0/2  ?it/s  ETA --:--\x1b[K"
        "\rsampling [############............] 1/2  2.00it/s  ETA 00:01\x1b[K"
        "\rsampling [########################] 2/2  2.00it/s  ETA 00:00\x1b[K"
        "\rsampling [########################] 2/2  2.00it/s  00:01\x1b[K\n");
    free(s);
}

Test(progress, auto_mode) {
    cr_assert_eq(cli_progress_auto_mode(stderr, 1), CLI_PROGRESS_QUIET);
    FILE *f = tmpfile();
    cr_assert_eq(cli_progress_auto_mode(f, 0), CLI_PROGRESS_PLAIN);
    fclose(f);
}
