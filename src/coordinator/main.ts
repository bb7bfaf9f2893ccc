// Coordinator process entry: forked by the supervisor, one per cache, driven over the IPC
// channel (src/daemon/ipc.ts). The process claims its cache file and origin (./ownership.ts)
// before anything else and holds them until it exits. If the supervisor disappears (even by
// SIGKILL) the channel closes and the coordinator shuts down promptly (a short drain, then a hard
// deadline), so an orphan neither keeps the sockets nor keeps a restarted daemon waiting long.

import { createLogger, type Logger } from '../daemon/logger.js';
import type { SupervisorToCoordinator, CoordinatorToSupervisor } from '../daemon/ipc.js';
import { Coordinator } from './coordinator.js';
import { isPcachedError } from '../util/errors.js';
import { claimCacheDevices, releaseLockFiles } from './ownership.js';

/** An orphan lets in-flight requests finish for this long, then drops its connections. */
const ORPHAN_DRAIN_MS = 2000;
/** ... and leaves at this deadline whatever is still in motion: it is then like a crash, which the cache survives. */
const ORPHAN_EXIT_MS = 10_000;

let log: Logger = createLogger({ name: 'coordinator' });
let coordinator: Coordinator | null = null;
let shuttingDown: Promise<void> | null = null;

function send(msg: CoordinatorToSupervisor): void {
  if (process.connected) process.send!(msg);
}

function errorOf(err: unknown): { code: string; message: string } {
  return { code: isPcachedError(err) ? err.code : 'ERR_INTERNAL', message: (err as Error)?.message ?? String(err) };
}

function shutdown(why: string, orphaned = false): Promise<void> {
  if (orphaned) {
    // Also when a stop was already under way: its 30 s drain is cut short.
    coordinator?.hurry(ORPHAN_DRAIN_MS);
    setTimeout(() => {
      log.error({ ms: ORPHAN_EXIT_MS }, 'orphaned coordinator still shutting down at its deadline; exiting now');
      process.exit(1);
    }, ORPHAN_EXIT_MS).unref();
  }
  if (!shuttingDown) {
    log.info({ why }, 'shutting down');
    shuttingDown = (async () => {
      try {
        if (coordinator) {
          await coordinator.shutdown(orphaned ? { drainMs: ORPHAN_DRAIN_MS, prompt: true } : {});
          // Every thread that could write has stopped: the fallback's lock files may go now. (A
          // coordinator still starting may be writing; its files go stale when the process exits.)
          releaseLockFiles();
        }
      } catch (err) {
        log.error({ err }, 'shutdown failed');
        process.exitCode = 1;
      }
      // An orphan's channel is closed already, and disconnect() on a closed one throws.
      if (process.connected) process.disconnect();
      // Give pino's synchronous destination nothing to lose, then leave even if a handle lingers.
      setTimeout(() => process.exit(), 100).unref();
    })();
  }
  return shuttingDown;
}

async function onMessage(msg: SupervisorToCoordinator): Promise<void> {
  switch (msg.type) {
    case 'init': {
      log = createLogger({ level: msg.logLevel, name: 'coordinator', base: { cache: msg.cache.name } });
      try {
        // Before anything is opened for writing: a second daemon on these files stops here.
        const claims = claimCacheDevices(msg.cache);
        log.info({ claims: claims.map((c) => ({ role: c.role, path: c.path, mode: c.mode, method: c.method })) }, 'devices claimed');
        coordinator = await Coordinator.start(msg.cache, log, msg.logLevel, msg.overrides, msg.listenFds);
        send({ type: 'ready', listeners: coordinator.listeners, originSize: coordinator.originSize });
      } catch (err) {
        log.error({ err }, 'coordinator failed to start');
        send({ type: 'fatal', ...errorOf(err) });
        process.exitCode = 3;
        setTimeout(() => process.exit(), 50);
      }
      return;
    }
    case 'request': {
      try {
        if (!coordinator) throw new Error('cache is still starting');
        const result = msg.op === 'status' ? coordinator.status() : msg.op === 'table' ? coordinator.table() : await coordinator.message(msg.words);
        send({ type: 'response', id: msg.id, ok: true, result });
        if (msg.op === 'message') send({ type: 'tunables', overrides: coordinator.overrides() });
      } catch (err) {
        send({ type: 'response', id: msg.id, ok: false, error: errorOf(err) });
      }
      return;
    }
    case 'reconfigure': {
      try {
        if (!coordinator) throw new Error('cache is still starting');
        log.level = msg.logLevel;
        const changed = coordinator.reconfigure(msg.cache);
        log.info({ changed }, 'reconfigured');
        send({ type: 'response', id: msg.id, ok: true, result: { changed } });
        send({ type: 'tunables', overrides: coordinator.overrides() });
      } catch (err) {
        send({ type: 'response', id: msg.id, ok: false, error: errorOf(err) });
      }
      return;
    }
    case 'shutdown':
      await shutdown('supervisor asked');
      return;
  }
}

if (!process.send) {
  process.stderr.write('pcached: the coordinator is started by `pcached start`, not directly\n');
  process.exit(2);
}
process.on('message', (msg) => void onMessage(msg as SupervisorToCoordinator));
process.on('disconnect', () => void shutdown('supervisor went away', true));
// Ctrl-C reaches the whole process group; the supervisor orchestrates the shutdown.
process.on('SIGINT', () => log.debug('SIGINT ignored; waiting for the supervisor'));
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGHUP', () => log.debug('SIGHUP ignored; the supervisor reloads'));
