// Entry point of `pcached` (bin/pcached imports this file): run the command line, exit with its code.

import { runCli } from './program.js';

process.exitCode = await runCli(process.argv.slice(2));
