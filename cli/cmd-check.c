/* placeholder until check lands */
#include "cli.h"
int cmd_check (int argc, char **argv) { return fail ("check: not yet"); }
