// The faulty disk's control channel: a Unix socket taking one command per line and answering one
// line each, `ok [DETAIL]` or `err MESSAGE`. Tests switch faults with it while clients run.
//
//   ping                                  -> ok pong
//   flush fail [PCT] | flush ok           FLUSH and FUA get EIO (PCT% of them; default 100) and drop the volatile cache
//   write fail [PCT] | write ok           WRITE, TRIM and WRITE_ZEROES get EIO and change nothing
//   read fail [PCT]  | read ok            READ gets EIO
//   latency read MS | latency write MS    delay per request (write: also TRIM, WRITE_ZEROES, FLUSH)
//   seed N                                restart the fault and tear draws from N
//   sync                                  flush the volatile cache now (a FLUSH: the flush fault applies)
//   stats                                 -> ok {JSON: faults, counters, volatileBytes, server}

import { createServer, type Server, type Socket } from 'node:net';
import type { Faults, VolatileDisk } from './faulty-disk-store.js';
import type { FaultyNbdServer } from './faulty-disk-server.js';

const MAX_LINE = 4096;

export interface DiskStats {
  faults: Faults;
  counters: VolatileDisk['counters'];
  volatileBytes: number;
  powerCut: VolatileDisk['powerCut'];
  size: number;
  server: FaultyNbdServer['stats'];
}

function percent(arg: string | undefined): number {
  if (arg === undefined) return 100;
  const n = Number(arg);
  if (!/^\d+(\.\d+)?$/.test(arg) || n > 100) throw new Error(`"${arg}" is not a percentage 0-100`);
  return n;
}

function millis(arg: string | undefined): number {
  const n = Number(arg);
  if (arg === undefined || !/^\d+$/.test(arg) || n > 600_000) throw new Error(`"${arg ?? ''}" is not a delay 0-600000 ms`);
  return n;
}

const FAULT_KEYS: Record<string, keyof Faults> = { flush: 'flushFailPct', write: 'writeFailPct', read: 'readFailPct' };

/** One command line to its reply line (without the newline). */
export function controlCommand(line: string, disk: VolatileDisk, server: FaultyNbdServer): string {
  const [cmd, ...args] = line.trim().split(/\s+/);
  try {
    switch (cmd) {
      case 'ping':
        return 'ok pong';
      case 'flush':
      case 'write':
      case 'read': {
        const key = FAULT_KEYS[cmd]!;
        if (args[0] === 'ok' && args.length === 1) disk.faults[key] = 0;
        else if (args[0] === 'fail' && args.length <= 2) disk.faults[key] = percent(args[1]);
        else throw new Error(`usage: ${cmd} fail [PCT] | ${cmd} ok`);
        return `ok ${cmd} fails ${disk.faults[key]}%`;
      }
      case 'latency': {
        if (args.length !== 2 || (args[0] !== 'read' && args[0] !== 'write')) throw new Error('usage: latency read|write MS');
        const ms = millis(args[1]);
        if (args[0] === 'read') disk.faults.readLatencyMs = ms;
        else disk.faults.writeLatencyMs = ms;
        return `ok ${args[0]} latency ${ms} ms`;
      }
      case 'seed': {
        if (args.length !== 1 || !/^\d+$/.test(args[0]!)) throw new Error('usage: seed N');
        disk.reseed(Number(args[0]));
        return 'ok';
      }
      case 'sync':
        return disk.flush() === 0 ? 'ok' : 'err the flush failed (fault injected); the volatile cache was dropped';
      case 'stats': {
        const stats: DiskStats = {
          faults: disk.faults, counters: disk.counters, volatileBytes: disk.volatileBytes, powerCut: disk.powerCut, size: disk.size, server: server.stats,
        };
        return `ok ${JSON.stringify(stats)}`;
      }
      default:
        throw new Error(`unknown command ${JSON.stringify(cmd ?? '')} (ping, flush, write, read, latency, seed, sync, stats)`);
    }
  } catch (err) {
    return `err ${(err as Error).message}`;
  }
}

export function startControlServer(path: string, disk: VolatileDisk, server: FaultyNbdServer): Promise<Server> {
  const srv = createServer((sock: Socket) => {
    let pending = '';
    sock.setEncoding('utf8');
    sock.on('error', () => {});
    sock.on('data', (chunk: string) => {
      pending += chunk;
      if (pending.length > MAX_LINE && !pending.includes('\n')) {
        sock.end('err line too long\n');
        return;
      }
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.trim() === '') continue;
        sock.write(`${controlCommand(line, disk, server)}\n`);
      }
    });
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(path, () => {
      srv.off('error', reject);
      resolve(srv);
    });
  });
}
