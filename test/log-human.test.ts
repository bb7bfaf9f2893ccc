// The human log line: time, level, who, message, key=value; what needs quoting is quoted, an
// error shows its code and message, and a line that is not JSON passes through unchanged.

import test from 'ava';
import { formatHumanLine } from '../src/daemon/log-human.js';
import { resolveLogFormat } from '../src/daemon/logger.js';

const base = { time: '2026-12-02T17:30:01.123Z', pid: 42, hostname: 'h' };

test('head: time, padded level, process and cache, message', (t) => {
  t.is(formatHumanLine(JSON.stringify({ ...base, level: 30, name: 'coordinator', cache: 'vol', msg: 'listening', listener: 'unix:/run/vol.sock' })),
    '2026-12-02T17:30:01.123Z INFO  coordinator[vol]: listening listener=unix:/run/vol.sock\n');
  t.is(formatHumanLine(JSON.stringify({ ...base, level: 50, name: 'pcached', msg: 'boom' })), '2026-12-02T17:30:01.123Z ERROR pcached: boom\n');
  t.is(formatHumanLine(JSON.stringify({ ...base, level: 40, name: 'stripe', stripe: 1, msg: 'slow' })), '2026-12-02T17:30:01.123Z WARN  stripe: slow stripe=1\n');
});

test('values: plain words bare, the rest JSON; errors by code and message', (t) => {
  const line = formatHumanLine(JSON.stringify({
    ...base, level: 30, name: 'pcached', msg: 'm',
    a: 'has space', b: 'k=v', c: 12, d: null, e: ['x', 1], f: { g: true },
    err: { type: 'PcachedError', message: 'cannot open', code: 'ERR_ORIGIN', stack: 'PcachedError: cannot open\n    at x' },
  }));
  t.is(line, '2026-12-02T17:30:01.123Z INFO  pcached: m a="has space" b="k=v" c=12 d=null e=["x",1] f={"g":true} err="ERR_ORIGIN: cannot open"\n');
  t.is(formatHumanLine('not json'), 'not json\n');
});

test('resolveLogFormat: the flag, else $PCACHED_LOG_FORMAT, else by terminal', (t) => {
  t.is(resolveLogFormat('human', { PCACHED_LOG_FORMAT: 'json' }), 'human');
  t.is(resolveLogFormat(undefined, { PCACHED_LOG_FORMAT: 'human' }), 'human');
  t.is(resolveLogFormat(undefined, { PCACHED_LOG_FORMAT: 'json' }), 'json');
  // ava's workers write to pipes, not a terminal.
  t.is(resolveLogFormat(undefined, {}), 'json');
});
