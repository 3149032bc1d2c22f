/* cli — the command-line front end: sub-command dispatch, flag parsing,
 * progress display.  The only module that prints or exits. */
#ifndef SDMOE_CLI_H
#define SDMOE_CLI_H

/* Runs `sdmoe <command> ...`; returns the process exit status. */
int cli_main(int argc, char **argv);

#endif
