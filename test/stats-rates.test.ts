// The rate windows of `pcached status NAME` (src/stats/rates.ts) with an injected clock: a
// window covers its length once the history is long enough, a younger history covers its age,
// nothing older than a window counts, clear_stats starts over.

import test from 'ava';
import { RateHistory, RATE_SAMPLE_MS, RATE_WINDOWS } from '../src/stats/rates.js';

function history() {
  let now = 0;
  const h = new RateHistory({ now: () => now });
  return { h, at: (ms: number) => { now = ms; } };
}

test('a young history: the window covers the time since the first sample', (t) => {
  const { h, at } = history();
  t.is(h.rates(RATE_WINDOWS.minute, { b: 0 }), null);
  h.record({ b: 0 });
  at(10_000);
  const r = h.rates(RATE_WINDOWS.minute, { b: 5000 })!;
  t.is(r.spanSec, 10);
  t.is(r.perSec.b, 500);
  t.is(r.delta.b, 5000);
});

test('a long history: the minute covers the last minute, the hour the last hour and nothing older', (t) => {
  const { h, at } = history();
  // 1000 units per second for an hour, then 2000, sampled every 5 s.
  for (let ms = 0; ms <= 2 * 3_600_000; ms += RATE_SAMPLE_MS) {
    at(ms);
    h.record({ b: ms <= 3_600_000 ? ms : 3_600_000 + 2 * (ms - 3_600_000) });
  }
  const now = 2 * 3_600_000;
  const current = { b: 3_600_000 + 2 * 3_600_000 };
  at(now);
  const minute = h.rates(RATE_WINDOWS.minute, current)!;
  t.is(minute.spanSec, 60);
  t.is(minute.perSec.b, 2000);
  const hour = h.rates(RATE_WINDOWS.hour, current)!;
  t.is(hour.spanSec, 3600);
  t.is(hour.perSec.b, 2000, 'only the second hour counts (the first ran at 1000/s)');
});

test('a counter that went backwards (clear_stats) gives no negative rate; reset starts over', (t) => {
  const { h, at } = history();
  h.record({ b: 1000 });
  at(5000);
  t.is(h.rates(RATE_WINDOWS.minute, { b: 10 })!.perSec.b, 0);
  h.reset({ b: 10 });
  at(7000);
  const r = h.rates(RATE_WINDOWS.minute, { b: 30 })!;
  t.is(r.spanSec, 2);
  t.is(r.perSec.b, 10);
});
