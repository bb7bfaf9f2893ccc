// Process entry of the faulty disk (test/helpers/faulty-disk-store.ts, -server.ts, -control.ts):
//
//   node dist/test/helpers/faulty-disk-main.js --image PATH --size SIZE --socket PATH --control PATH
//        [--name EXPORT] [--power-cut drop|keep|tear] [--seed N] [--cache-limit SIZE]
//        [--fail-flush PCT] [--fail-write PCT] [--fail-read PCT] [--read-latency MS] [--write-latency MS]
//
// Prints one line `ready {"pid":...}` on stdout once both sockets accept. SIGKILL is a power cut
// (the volatile cache is lost); SIGTERM/SIGINT are an orderly power-down: the volatile cache is
// written to the image first, whatever faults are set, as a drive does when it is shut down.

import { lstatSync, unlinkSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parseSize } from '../../src/util/size.js';
import { POWER_CUT_MODES, VolatileDisk, type PowerCutMode } from './faulty-disk-store.js';
import { FaultyNbdServer } from './faulty-disk-server.js';
import { startControlServer } from './faulty-disk-control.js';

function fail(message: string): never {
  process.stderr.write(`faulty-disk: ${message}\n`);
  process.exit(2);
}

function number(name: string, v: string | undefined, max: number): number {
  if (v === undefined) return 0;
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || n > max) fail(`--${name} ${v}: expected a number 0-${max}`);
  return n;
}

/** A socket left by a process that was killed is removed; anything else at the path is refused. */
function clearStaleSocket(path: string): void {
  try {
    if (!lstatSync(path).isSocket()) fail(`${path} exists and is not a socket`);
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

async function main(): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        image: { type: 'string' }, size: { type: 'string' }, socket: { type: 'string' }, control: { type: 'string' },
        name: { type: 'string', default: 'disk' }, 'power-cut': { type: 'string', default: 'drop' }, seed: { type: 'string', default: '1' },
        'cache-limit': { type: 'string' }, 'fail-flush': { type: 'string' }, 'fail-write': { type: 'string' }, 'fail-read': { type: 'string' },
        'read-latency': { type: 'string' }, 'write-latency': { type: 'string' },
      },
      strict: true,
    }));
  } catch (err) {
    fail((err as Error).message);
  }
  for (const k of ['image', 'size', 'socket', 'control'] as const) if (!values[k]) fail(`--${k} is required`);
  const powerCut = values['power-cut'] as PowerCutMode;
  if (!POWER_CUT_MODES.includes(powerCut)) fail(`--power-cut ${powerCut}: expected one of ${POWER_CUT_MODES.join(', ')}`);
  let size: number;
  let cacheLimit: number | undefined;
  try {
    size = parseSize(values.size!);
    cacheLimit = values['cache-limit'] === undefined ? undefined : parseSize(values['cache-limit']);
  } catch (err) {
    fail((err as Error).message);
  }
  let disk: VolatileDisk;
  try {
    disk = new VolatileDisk(values.image!, size, {
      powerCut, seed: number('seed', values.seed, 2 ** 32 - 1), cacheLimit,
      faults: {
        flushFailPct: number('fail-flush', values['fail-flush'], 100), writeFailPct: number('fail-write', values['fail-write'], 100),
        readFailPct: number('fail-read', values['fail-read'], 100), readLatencyMs: number('read-latency', values['read-latency'], 600_000),
        writeLatencyMs: number('write-latency', values['write-latency'], 600_000),
      },
    });
  } catch (err) {
    fail((err as Error).message);
  }
  clearStaleSocket(values.socket!);
  clearStaleSocket(values.control!);
  const nbd = new FaultyNbdServer(disk, values.name!);
  await nbd.listen(values.socket!);
  const control = await startControlServer(values.control!, disk, nbd);

  let stopping = false;
  const powerDown = (): void => {
    if (stopping) return;
    stopping = true;
    disk.faults.flushFailPct = 0;
    disk.flush();
    control.close();
    void nbd.close().then(() => {
      disk.close();
      process.exit(0);
    });
  };
  process.on('SIGTERM', powerDown);
  process.on('SIGINT', powerDown);
  process.stdout.write(`ready ${JSON.stringify({ pid: process.pid, socket: values.socket, control: values.control, size, powerCut })}\n`);
}

main().catch((err: unknown) => fail((err as Error).stack ?? String(err)));
