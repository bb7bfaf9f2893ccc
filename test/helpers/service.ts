// What a service manager does around the daemon, played by small python3 programs (Node has no
// Unix datagram sockets and cannot hand a listening socket to a child without accepting on it):
// a NOTIFY_SOCKET listener that prints every datagram, and a socket-activation launcher that
// binds listeners, puts them at fds 3.., sets LISTEN_* for its own PID and execs the daemon (so
// the daemon is the process LISTEN_PID names, as under systemd).
//
// Both are stopped by their PID (spawnTracked); the launcher's PID is the daemon's.

import { PCACHED_BIN } from './daemon.js';
import { cleanEnv, spawnTracked, waitFor, type Proc } from './lifecycle.js';

const PYTHON = '/usr/bin/python3';

const NOTIFY_LISTENER = `
import socket, sys, json
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\\0' + addr[1:] if addr.startswith('@') else addr)
print('listening', flush=True)
while True:
    print('datagram ' + json.dumps(s.recv(65536).decode('utf-8', 'replace')), flush=True)
`;

export interface NotifyListener {
  proc: Proc;
  /** Every datagram so far, in arrival order. */
  datagrams(): string[];
  /** Resolves with the first datagram holding the line `assignment` (e.g. READY=1). */
  waitFor(assignment: string, timeoutMs?: number): Promise<string>;
}

/** Binds `address` ("/path" or "@abstract") and collects what arrives. */
export async function startNotifyListener(address: string): Promise<NotifyListener> {
  const proc = spawnTracked(PYTHON, ['-c', NOTIFY_LISTENER, address]);
  await waitFor('the NOTIFY_SOCKET listener', () => proc.output().includes('listening') || (!proc.alive() && Promise.reject(new Error(proc.output()))), 10_000, 20);
  const datagrams = (): string[] => [...proc.output().matchAll(/^datagram (.*)$/gm)].map((m) => JSON.parse(m[1]!) as string);
  return {
    proc,
    datagrams,
    waitFor: (assignment, timeoutMs = 60_000) =>
      waitFor(`a datagram with ${assignment}`, () => datagrams().find((d) => d.split('\n').includes(assignment)), timeoutMs, 50),
  };
}

const ACTIVATOR = `
import json, os, socket, sys
spec = json.loads(sys.argv[1])
socks = []
for want in spec['sockets']:
    if want['kind'] == 'unix':
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(want['path'])
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(('127.0.0.1', 0))
        print('port %d' % s.getsockname()[1], flush=True)
    s.listen(16)
    socks.append(s)
for i, s in enumerate(socks):
    os.dup2(s.fileno(), 3 + i)
    os.set_inheritable(3 + i, True)
env = dict(os.environ)
env['LISTEN_PID'] = str(os.getpid())
env['LISTEN_FDS'] = str(len(socks))
if spec.get('names') is not None:
    env['LISTEN_FDNAMES'] = ':'.join(spec['names'])
os.execve(spec['argv'][0], spec['argv'], env)
`;

export type ActivatedSpec = { kind: 'unix'; path: string } | { kind: 'tcp' };

/**
 * `pcached start ARGS` socket-activated with `sockets` (TCP ones on 127.0.0.1, a free port each;
 * the ports are printed as "port N" lines first) and LISTEN_FDNAMES = names when given.
 */
export function startActivated(sockets: ActivatedSpec[], names: string[] | undefined, args: string[], opts: { cwd: string; env?: Record<string, string> }): Proc {
  const spec = { sockets, names, argv: [process.execPath, PCACHED_BIN, 'start', ...args] };
  return spawnTracked(PYTHON, ['-c', ACTIVATOR, JSON.stringify(spec)], { cwd: opts.cwd, env: cleanEnv(opts.env) });
}

/** The TCP ports the launcher printed, in socket order. */
export function activatedPorts(proc: Proc): number[] {
  return [...proc.output().matchAll(/^port (\d+)$/gm)].map((m) => Number(m[1]));
}
