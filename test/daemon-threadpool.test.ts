// How the supervisor sizes libuv's thread pool for a coordinator (src/daemon/threadpool.ts); the
// value a real coordinator runs with is checked in test/origin-slow-file.test.ts.

import test from 'ava';
import { coordinatorEnv, threadPoolSize } from '../src/daemon/threadpool.js';

const file = { origin: '/dev/sdb', stripes: 2, originQueueDepth: 32, writeback: { rate: 0, jobs: 16 } };

test('a file origin: every stripe\'s depth, writeback\'s jobs and libuv\'s default 4, at most 1024', (t) => {
  t.is(threadPoolSize(file), 2 * 32 + 16 + 4);
  t.is(threadPoolSize({ ...file, stripes: 64, originQueueDepth: 256 }), 1024);
  t.is(threadPoolSize({ ...file, origin: 'nbd+unix:///x?socket=/run/s.sock' }), 4, 'an NBD origin does no I/O in the pool');
});

test('the coordinator\'s environment: set unless the operator set it', (t) => {
  t.is(coordinatorEnv(file, { PATH: '/bin' }).UV_THREADPOOL_SIZE, '84');
  t.is(coordinatorEnv(file, { PATH: '/bin' }).PATH, '/bin');
  t.is(coordinatorEnv(file, { UV_THREADPOOL_SIZE: '8' }).UV_THREADPOOL_SIZE, '8');
  t.is(coordinatorEnv(file, { UV_THREADPOOL_SIZE: '' }).UV_THREADPOOL_SIZE, '84');
});
