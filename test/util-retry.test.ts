// The back-off loops the worker threads run under (src/util/retry.ts), with a fake clock.

import test from 'ava';
import { keepRunning, retryUntilOpen } from '../src/util/retry.js';

const BACKOFF = [10, 20, 40];

function fakeTime() {
  const t = { now: 0, slept: [] as number[] };
  return { t, sleep: async (ms: number) => { t.slept.push(ms); t.now += ms; }, now: () => t.now };
}

test('retryUntilOpen: retries with growing back-off until open succeeds, reporting each failure', async (t) => {
  const { t: time, sleep } = fakeTime();
  let calls = 0;
  const reports: [number, number][] = [];
  const got = await retryUntilOpen(async () => {
    if (++calls <= 5) throw new Error(`down ${calls}`);
    return 'origin';
  }, { stopped: () => false, sleep, backoffMs: BACKOFF, onFailure: (_e, n, delay) => { reports.push([n, delay]); } });
  t.is(got, 'origin');
  t.is(calls, 6);
  t.deepEqual(time.slept, [10, 20, 40, 40, 40], 'the last delay repeats');
  t.deepEqual(reports, [[1, 10], [2, 20], [3, 40], [4, 40], [5, 40]]);
});

test('retryUntilOpen: null once stopped; a throwing reporter does not end the retries', async (t) => {
  const { sleep } = fakeTime();
  let calls = 0;
  const got = await retryUntilOpen(async () => { calls++; throw new Error('down'); }, {
    stopped: () => calls >= 3, sleep, backoffMs: BACKOFF, onFailure: () => { throw new Error('logger broke'); },
  });
  t.is(got, null);
  t.is(calls, 3);
});

test('keepRunning: a body that throws is run again after back-off; returns when the body returns', async (t) => {
  const { t: time, sleep, now } = fakeTime();
  let runs = 0;
  const crashes: number[] = [];
  await keepRunning(async () => {
    if (++runs < 4) throw new Error(`bug ${runs}`);
  }, { stopped: () => false, sleep, now, backoffMs: BACKOFF, stableMs: 1000, onCrash: (_e, n) => { crashes.push(n); } });
  t.is(runs, 4);
  t.deepEqual(crashes, [1, 2, 3]);
  t.deepEqual(time.slept, [10, 20, 40]);
});

test('keepRunning: a run that lasted stableMs resets the back-off; stops when told; never rejects', async (t) => {
  const { t: time, sleep, now } = fakeTime();
  let runs = 0;
  let stop = false;
  const done = keepRunning(async () => {
    runs++;
    if (runs === 3) time.now += 5000; // this run was long and stable before it failed
    if (runs === 5) stop = true;
    throw new Error('bug');
  }, { stopped: () => stop, sleep, now, backoffMs: BACKOFF, stableMs: 1000, onCrash: () => { throw new Error('logger broke'); } });
  await t.notThrowsAsync(done);
  t.is(runs, 5);
  t.deepEqual(time.slept, [10, 20, 10, 20, 40]);
});
