// When writeback runs and how fast (src/cache/writeback-policy.ts), with a fake clock: no real
// sleeps, every decision from a state snapshot.

import test from 'ava';
import { BACKOFF_MS, HALTED_MS, IDLE_MS, WritebackPolicy } from '../src/cache/writeback-policy.js';
import type { Decision, Urgency, WritebackState } from '../src/cache/writeback-policy.js';

const MiB = 1 << 20;
const CACHE = 100 * MiB;

function setup(over: Partial<WritebackState> = {}) {
  const clock = { t: 10_000, now(): number { return this.t; } };
  const policy = new WritebackPolicy(clock);
  // Something pending, nothing urgent, room to wait, no pause, no rate limit.
  const s: WritebackState = {
    headLsn: 10, tailLsn: 5, dirtyBytes: 10 * MiB, cacheBytes: CACHE, highWatermark: 50, lowWatermark: 45,
    cleaner: false, writesWaiting: false, maxAgeMs: 0, foreground: 0, pauseMs: 0, roomy: true, rate: 0, ...over,
  };
  return { clock, policy, s };
}

const write = (urgent: Urgency | null): Decision => ({ act: 'write', urgent });
const pausing: Decision = { act: 'sleep', ms: 100, why: 'pause', wake: false };

/** A policy past the pause its start counts as (the start is foreground I/O: see the first test). */
function started(over: Partial<WritebackState> = {}) {
  const x = setup(over);
  x.clock.t += x.s.pauseMs;
  return x;
}

test('the start counts as foreground I/O: pauseMs of waiting first; the counter\'s first value is only a baseline', (t) => {
  const { clock, policy, s } = setup({ pauseMs: 1000, foreground: 7 });
  t.deepEqual(policy.next(s), pausing);
  clock.t += 999;
  t.deepEqual(policy.next(s), pausing);
  clock.t += 1;
  t.deepEqual(policy.next(s), write(null), 'nothing urgent, no foreground I/O: write back at the normal pace');
});

test('pause_writeback: foreground I/O within pauseMs waits (in 100 ms slices) while there is room; then writes', (t) => {
  const { clock, policy, s } = started({ pauseMs: 1000 });
  t.deepEqual(policy.next(s), write(null));
  s.foreground = 1;
  t.deepEqual(policy.next(s), pausing);
  clock.t += 999;
  t.deepEqual(policy.next(s), pausing, 'still within pauseMs of the I/O');
  clock.t += 1;
  t.deepEqual(policy.next(s), write(null), 'pauseMs after the last foreground I/O');
  s.foreground = 2;
  clock.t += 5000;
  t.deepEqual(policy.next(s), pausing, 'new I/O pauses again');
  s.pauseMs = 40;
  t.deepEqual(policy.next(s), { ...pausing, ms: 40 }, 'a slice is never longer than the pause');
});

test('pause_writeback: no pause when it is off, segment use is past gc_percent, or nothing is pending', (t) => {
  const { policy, s } = started({ pauseMs: 1000 });
  policy.next(s);
  s.foreground = 1;
  t.deepEqual(policy.next({ ...s, pauseMs: 0 }), write(null));
  t.deepEqual(policy.next({ ...s, roomy: false }), write(null));
  t.deepEqual(policy.next({ ...s, tailLsn: s.headLsn }), write(null));
  t.deepEqual(policy.next(s), pausing);
});

test('watermarks: urgent from high until back to low (hysteresis), and urgency overrides the pause', (t) => {
  const { policy, s } = started({ pauseMs: 1000 });
  policy.next(s);
  s.foreground = 1;
  const at = (pct: number): Decision => policy.next({ ...s, dirtyBytes: (pct * CACHE) / 100 });
  t.deepEqual(at(49), pausing, 'below high');
  t.deepEqual(at(50), write('high watermark'), 'at high');
  t.deepEqual(at(47), write('high watermark'), 'between the marks, coming down: still urgent');
  t.deepEqual(at(45.5), write('high watermark'));
  t.deepEqual(at(45), pausing, 'back at low');
  t.deepEqual(at(48), pausing, 'between the marks, going up: not urgent');
  t.deepEqual(at(60), write('high watermark'));
});

test('writes waiting for space, and the cleaner, are urgent; high watermark is named first', (t) => {
  const { policy, s } = started({ pauseMs: 1000 });
  policy.next(s);
  s.foreground = 1;
  t.deepEqual(policy.next({ ...s, writesWaiting: true }), write('writes waiting for space'));
  t.deepEqual(policy.next({ ...s, cleaner: true }), write('cleaner'));
  t.deepEqual(policy.next({ ...s, cleaner: true, dirtyBytes: CACHE }), write('high watermark'));
  // The cleaner drains everything: urgent far below the low watermark, down to the last byte.
  t.deepEqual(policy.next({ ...s, cleaner: true, dirtyBytes: 4096 }), write('cleaner'));
  t.is(policy.paceMs(MiB, 0, { ...s, cleaner: true, rate: MiB, dirtyBytes: 4096 }), 0, 'the cleaner is not rate-limited');
});

test('max_age: dirty data older than max_age is urgent below the low watermark; its age is when the head passed it', (t) => {
  const { clock, policy, s } = started({ pauseMs: 1_000_000, maxAgeMs: 2000, dirtyBytes: MiB, headLsn: 10, tailLsn: 10 });
  policy.next(s);
  s.foreground = 1;
  t.deepEqual(policy.next(s), write(null), 'nothing pending: no pause, no age');
  s.headLsn = 20; // ksets 10..19 logged now
  t.deepEqual(policy.next(s), pausing);
  clock.t += 1000;
  s.headLsn = 30; // 20..29 logged 1000 ms later, sampled then
  t.deepEqual(policy.next(s), pausing);
  t.is(policy.oldestDirtyAge(s), 1000);
  clock.t += 999;
  t.deepEqual(policy.next(s), pausing, '1999 ms old');
  clock.t += 1;
  t.deepEqual(policy.next(s), write('max age'), '2000 ms old');
  t.is(policy.paceMs(MiB, 0, { ...s, rate: MiB }), 0, 'old data is not rate-limited');
  s.tailLsn = 20; // the old ksets written back: the oldest dirty one is 1000 ms younger
  t.is(policy.oldestDirtyAge(s), 1000);
  t.deepEqual(policy.next(s), pausing);
  clock.t += 1000;
  t.deepEqual(policy.next(s), write('max age'));
  t.deepEqual(policy.next({ ...s, maxAgeMs: 0 }), pausing, 'max_age 0 is off');
});

test('writeback.rate: sleeps the time the bytes were due minus what the epoch took, at most 5 s', (t) => {
  const { policy, s } = setup({ rate: 10 * MiB });
  t.is(policy.paceMs(MiB, 0, s), 100);
  t.is(policy.paceMs(MiB, 30, s), 70);
  t.is(policy.paceMs(MiB, 99.5, s), 0, 'within a millisecond: no sleep');
  t.is(policy.paceMs(MiB, 200, s), 0, 'a slow epoch owes nothing');
  t.is(policy.paceMs(100 * MiB, 0, s), 5000, 'capped');
  t.is(policy.paceMs(MiB, 0, { ...s, rate: 0 }), 0, 'unlimited');
  t.is(policy.paceMs(MiB, 0, { ...s, dirtyBytes: CACHE }), 0, 'past the high watermark');
  t.is(policy.paceMs(MiB, 0, { ...s, dirtyBytes: (47 * CACHE) / 100 }), 0, 'still above low: hysteresis holds for pacing too');
  t.is(policy.paceMs(MiB, 0, { ...s, dirtyBytes: (45 * CACHE) / 100 }), 100, 'back at low');
});

test('idle: a step with nothing pending sleeps once, woken by the log head; the next decision writes', (t) => {
  const { policy, s } = setup();
  policy.stepDone(0);
  t.deepEqual(policy.next(s), { act: 'sleep', ms: IDLE_MS, why: 'idle', wake: true });
  t.deepEqual(policy.next(s), write(null), 'one-shot: a wake-up leads to a step');
  policy.stepDone(4096);
  t.deepEqual(policy.next(s), write(null), 'a step that wrote: straight on');
});

test('origin errors: back-off grows 100 ms to 5 s, repeats the last, and a good step resets it', (t) => {
  const { policy, s } = setup();
  const seen: number[] = [];
  for (let i = 0; i < BACKOFF_MS.length + 2; i++) {
    seen.push(policy.stepFailed(false));
    t.deepEqual(policy.next(s), { act: 'sleep', ms: seen[i], why: 'backoff', wake: false });
  }
  t.deepEqual(seen, [100, 250, 500, 1000, 2000, 5000, 5000, 5000]);
  t.deepEqual(policy.next(s), write(null), 'after the back-off: try again');
  policy.stepDone(4096);
  t.is(policy.stepFailed(false), 100, 'reset by a step that succeeded');
  t.is(policy.stepFailed(false), 250);
  policy.stepDone(0);
  t.is(policy.stepFailed(false), 100, 'an idle step succeeded too');
});

test('halted: looks again every 5 s, woken by the log head, without growing the back-off', (t) => {
  const { policy, s } = setup();
  policy.stepFailed(false);
  policy.stepFailed(false);
  t.is(policy.stepFailed(true), HALTED_MS);
  t.deepEqual(policy.next(s), { act: 'sleep', ms: HALTED_MS, why: 'halted', wake: true });
  t.is(policy.stepFailed(false), 500, 'the origin back-off carried on where it was');
});
