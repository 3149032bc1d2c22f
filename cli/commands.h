/* cli/commands — one entry point per sub-command; each parses its own flags
 * from argv (argv[0] is the command name) and returns the exit status. */
#ifndef SDMOE_CLI_COMMANDS_H
#define SDMOE_CLI_COMMANDS_H

int cli_info(int argc, char **argv);
int cli_generate(int argc, char **argv);
int cli_merge(int argc, char **argv);
int cli_batch(int argc, char **argv);

#endif
