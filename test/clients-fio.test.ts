// fio's nbd engine: 4 concurrent jobs (4 connections) writing and verifying with crc32c.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { needTools, skipSuffix, run, describe } from './helpers/tools.js';

const why = needTools('fio');
const t_ = why ? test.serial.skip : test.serial;
const SIZE = 128 * 1024 * 1024;
let d: Daemon | undefined;

test.before(async () => {
  if (!why) d = await startDaemon({ name: 'vol-fio', originSize: SIZE });
});
test.after.always(async () => {
  await d?.dispose();
});

interface FioJob { jobname: string; error: number; write: { io_bytes: number }; read: { io_bytes: number } }

async function fio(t: import('ava').ExecutionContext, name: string, extra: string[]): Promise<FioJob[]> {
  const out = join(d!.dir, `${name}.json`);
  const r = await run('fio', [
    `--name=${name}`, '--ioengine=nbd', `--uri=${d!.uri}`,
    '--numjobs=4', '--size=32M', '--offset_increment=32M',
    '--verify=crc32c', '--verify_fatal=1', '--do_verify=1', '--verify_state_save=0',
    '--output-format=json', `--output=${out}`, ...extra,
  ], { timeoutMs: 180_000 });
  t.is(r.code, 0, describe(r));
  const j = JSON.parse(readFileSync(out, 'utf8')) as { jobs: FioJob[] };
  return j.jobs;
}

t_(`fio ioengine=nbd, 4 jobs, random writes of mixed sizes verified with crc32c${skipSuffix(why)}`, async (t) => {
  const jobs = await fio(t, 'randverify', ['--rw=randwrite', '--bssplit=4k/50:64k/30:1m/20', '--iodepth=16']);
  t.is(jobs.length, 4);
  for (const j of jobs) {
    t.is(j.error, 0, `job ${j.jobname} error ${j.error}`);
    t.is(j.write.io_bytes, 32 * 1024 * 1024, `job ${j.jobname} wrote everything`);
    t.true(j.read.io_bytes >= 32 * 1024 * 1024, `job ${j.jobname} verified (read ${j.read.io_bytes})`);
  }
});

t_(`fio ioengine=nbd, 4 jobs, sequential 256k writes at QD8 verified with crc32c${skipSuffix(why)}`, async (t) => {
  const jobs = await fio(t, 'seqverify', ['--rw=write', '--bs=256k', '--iodepth=8']);
  t.is(jobs.length, 4);
  for (const j of jobs) {
    t.is(j.error, 0, `job ${j.jobname} error ${j.error}`);
    t.true(j.read.io_bytes >= 32 * 1024 * 1024, `job ${j.jobname} verified`);
  }
  t.true(d!.alive(), d!.stderr());
});
