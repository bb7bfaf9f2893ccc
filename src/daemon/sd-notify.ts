// sd_notify(3) for Type=notify units: READY=1, STOPPING=1, STATUS=... to $NOTIFY_SOCKET.
// Node has no Unix datagram sockets, so the datagram is sent by the native addon; without it,
// systemd-notify(1) sends it (the unit then needs NotifyAccess=all, which config/pcached.service
// sets, because the datagram comes from that child's PID, not ours).

import { spawn } from 'node:child_process';
import { native } from '../native/index.js';
import type { Logger } from './logger.js';

export type NotifyFields = Partial<Record<'READY' | 'STOPPING' | 'RELOADING' | 'MONOTONIC_USEC' | 'STATUS' | 'MAINPID' | 'ERRNO', string | number>>;

/** KEY=VALUE lines; a newline inside a value would start a new assignment, so it becomes a space. */
export function formatNotify(fields: NotifyFields): string {
  return Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${String(v).replace(/\n/g, ' ')}`)
    .join('\n');
}

export class SdNotifier {
  readonly #socket: string | undefined;
  readonly #log: Logger | undefined;
  #warned = false;

  /** NOTIFY_SOCKET is read once: the environment is scrubbed of it afterwards so children do not inherit it. */
  constructor(env: NodeJS.ProcessEnv = process.env, log?: Logger) {
    this.#socket = env.NOTIFY_SOCKET || undefined;
    this.#log = log;
    if (env === process.env) delete process.env.NOTIFY_SOCKET;
  }

  get enabled(): boolean {
    return this.#socket !== undefined;
  }

  /** Sends the fields; failures are logged once and never thrown (the service must not die of it). */
  notify(fields: NotifyFields): void {
    const socket = this.#socket;
    if (socket === undefined) return;
    const message = formatNotify(fields);
    if (native?.sdNotify) {
      const r = native.sdNotify(socket, message);
      if (r < 0) this.#fail(`sd_notify to ${socket} failed: errno ${-r}`);
      return;
    }
    // One systemd-notify at a time, so that RELOADING=1 cannot overtake the READY=1 before it.
    this.#queue = this.#queue.then(() => this.#spawnNotify(socket, message.split('\n')));
  }

  #queue: Promise<void> = Promise.resolve();

  #spawnNotify(socket: string, args: string[]): Promise<void> {
    return new Promise((resolve) => {
      const child = spawn('systemd-notify', args, { env: { ...process.env, NOTIFY_SOCKET: socket }, stdio: 'ignore' });
      child.on('error', (err) => {
        this.#fail(`no native addon and cannot run systemd-notify: ${err.message}`);
        resolve();
      });
      child.on('exit', (code) => {
        if (code !== 0 && code !== null) this.#fail(`systemd-notify exited with ${code}`);
        resolve();
      });
    });
  }

  #fail(why: string): void {
    if (this.#warned) return;
    this.#warned = true;
    this.#log?.warn(`${why}; systemd will not hear from pcached`);
  }
}
