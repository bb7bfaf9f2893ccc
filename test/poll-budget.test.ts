// The coordinator's low-depth poll budget (src/coordinator/poll-budget.ts): pure arithmetic over
// the completion times it is fed, floor 30 µs and cap 250 µs as the daemon's defaults.

import test from 'ava';
import { PollBudget } from '../src/coordinator/poll-budget.js';

/** A budget (default floor and cap) fed `n` completions of `ns` each, in order, per pair. */
function fed(...runs: [ns: number, n: number][]): PollBudget {
  const b = new PollBudget(30_000, 250_000);
  for (const [ns, n] of runs) for (let i = 0; i < n; i++) b.record(ns);
  return b;
}

test('with no history the coordinator polls for the floor only', (t) => {
  t.is(fed().budgetNs, 30_000);
});

test('a floor of 0 turns polling off whatever completions take', (t) => {
  const b = new PollBudget(0, 250_000);
  for (let i = 0; i < 20; i++) b.record(100_000);
  t.is(b.budgetNs, 0);
});

test('completions slower than the floor but within the cap are polled for a little past their average', (t) => {
  const b = fed([100_000, 50]);
  t.true(Math.abs(b.averageNs - 100_000) < 1);
  t.true(Math.abs(b.budgetNs - 150_000) < 2);
});

test('fast completions keep the floor', (t) => {
  t.is(fed([5_000, 50]).budgetNs, 30_000);
});

test('completions a little beyond the cap (timed with a wake-up on top) poll the cap', (t) => {
  t.is(fed([300_000, 50]).budgetNs, 250_000);
});

test('completions far beyond the cap (slow misses) poll the floor, not the cap', (t) => {
  t.is(fed([2_000_000, 50]).budgetNs, 30_000);
});

test('the average follows a device that becomes fast again', (t) => {
  const b = fed([2_000_000, 50], [80_000, 60]);
  t.true(b.budgetNs > 100_000 && b.budgetNs <= 250_000, `budget ${b.budgetNs}`);
});

test('nonsense samples are ignored', (t) => {
  const b = fed([Number.NaN, 1], [-5, 1]);
  t.is(b.averageNs, 0);
});

test('one outlier moves the average by at most half the cap', (t) => {
  const b = fed([100_000, 50], [50_000_000, 1]);
  t.true(b.averageNs <= 100_000 + 125_000 + 1, `average ${b.averageNs}`);
  t.is(b.budgetNs, 250_000);
});
