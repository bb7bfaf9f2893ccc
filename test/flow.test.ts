import test from 'ava';
import { FlowBudget } from '../src/coordinator/flow.js';

const MiB = 1024 * 1024;

test('charges fit the budget or are refused; one larger than the budget fits only when it is empty', (t) => {
  const f = new FlowBudget(100 * MiB);
  t.true(f.tryAcquire(60 * MiB));
  t.true(f.tryAcquire(40 * MiB));
  t.false(f.tryAcquire(1), 'full');
  f.release(100 * MiB);
  t.is(f.used, 0);
  t.true(f.tryAcquire(150 * MiB), 'alone, a charge over the limit is let through');
  t.false(f.tryAcquire(1));
});

test('payloads still arriving may hold at most half the budget; the other half stays for everyone else', (t) => {
  const f = new FlowBudget(512 * MiB);
  for (let i = 0; i < 4; i++) t.true(f.tryAcquire(64 * MiB, true), `trickler ${i}`);
  t.is(f.receiving, 256 * MiB);
  t.false(f.tryAcquire(64 * MiB, true), 'a fifth trickler waits');
  t.true(f.tryAcquire(200 * MiB), 'ordinary requests still fit');
  // A payload that arrived is ordinary data: the receiving half has room again.
  f.received(64 * MiB);
  t.true(f.tryAcquire(40 * MiB, true));
  t.is(f.receiving, 232 * MiB);
  f.release(40 * MiB, true);
  t.is(f.receiving, 192 * MiB);
  t.is(f.used, 456 * MiB);
});

test('waiters are woken once there is room (a quarter free; for receiving, room in its half), not on every release', (t) => {
  const f = new FlowBudget(400);
  t.true(f.tryAcquire(390));
  let woken = 0;
  f.wait(() => woken++);
  f.release(10);
  t.is(woken, 0, 'still over three quarters');
  f.release(100);
  t.is(woken, 1, 'woken once at 280 of 400');
  f.release(10);
  t.is(woken, 1, 'a waiter runs once');

  const g = new FlowBudget(400);
  t.true(g.tryAcquire(190, true));
  let recv = 0;
  let normal = 0;
  g.wait(() => recv++, true);
  g.wait(() => normal++);
  g.tryAcquire(10);
  g.release(10);
  t.is(normal, 1, 'an ordinary waiter is woken: there is room');
  t.is(recv, 0, 'the receiving half is still over three eighths');
  g.release(100, true);
  t.is(recv, 1);
});
