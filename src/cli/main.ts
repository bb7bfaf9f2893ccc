// Entry point of `pcached` (bin/pcached imports this file): run the command line, exit with its code.

import { runCli } from './program.js';

const argv = process.argv.slice(2);
// `pcached status --json | head -c 100`: the reader may go before the output is written. A
// one-shot command then has nobody left to tell and ends quietly (as a C tool dies of SIGPIPE)
// rather than with an unhandled 'error' event; the daemon's commands keep running without it.
const daemonCommand = argv[0] === 'start' || argv[0] === 'run';
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') throw err;
  if (!daemonCommand) process.exit(process.exitCode ?? 0);
});

process.exitCode = await runCli(argv);
