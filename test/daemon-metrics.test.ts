// `metrics.listen` through the real daemon: Prometheus text from the supervisor, every cache's
// counters as status reports them at scrape time, the process metrics, and the refusals (a
// non-loopback address without metrics.allowRemote; an address in use).

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nbdUri, makeSparseFile } from './helpers/daemon.js';
import { spawnPcached, startServing, statusJson, stopGracefully, waitFor, writeConfig } from './helpers/lifecycle.js';
import { needTools, nbdshJson, skipSuffix } from './helpers/tools.js';

function get(url: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('timed out')));
    req.end();
  });
}

/** The value of one sample line, e.g. `pcached_up{cache="vol"}`; NaN when absent. */
function sample(body: string, series: string): number {
  const line = body.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? NaN : Number(line.slice(series.length + 1));
}

const why = needTools('nbdsh', 'python3-nbd');

(why ? test.skip : test)('metrics: Prometheus text at scrape time, matching status; 404 elsewhere' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'pcached-metrics-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 32 << 20);
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  writeConfig(join(dir, 'pcached.json'), {
    control, logLevel: 'info', metrics: { listen: '127.0.0.1:0' },
    caches: [{ name: 'vol', origin, cache: join(dir, 'cache.img'), cacheSize: '16MiB', unix: sock, stripes: 1 }],
  });
  const d = await startServing(t, ['--config', join(dir, 'pcached.json')], { cwd: dir, sock, control });
  const url = await waitFor('the metrics address in the log', () => /"metrics":"(http:\/\/127\.0\.0\.1:\d+\/metrics)"/.exec(d.proc.output())?.[1], 10_000);
  await nbdshJson(`for i in range(8):\n    h.pwrite(bytes([i]) * 4096, i * 4096)\nh.flush()\nh.pread(4096, 0)\nprint('"ok"')`, { uri: nbdUri(sock, 'vol') });

  const r = await get(url);
  t.is(r.status, 200);
  t.regex(r.type, /^text\/plain; version=0\.0\.4/);
  const st = (await statusJson(control)).caches[0]!;
  const cs = st.cacheState!;
  t.is(sample(r.body, 'pcached_up{cache="vol"}'), 1);
  t.is(sample(r.body, 'pcached_mode{cache="vol",mode="writeback"}'), 1);
  t.is(sample(r.body, 'pcached_write_blocks_total{cache="vol"}'), 8);
  t.is(sample(r.body, 'pcached_write_blocks_total{cache="vol"}'), cs.writeBlocks ?? -1);
  t.is(sample(r.body, 'pcached_read_hits_total{cache="vol"}'), 1);
  t.is(sample(r.body, 'pcached_requests_total{cache="vol",command="write"}'), 8);
  t.is(sample(r.body, 'pcached_requests_total{cache="vol",command="flush"}'), 1);
  t.is(sample(r.body, 'pcached_cache_blocks{cache="vol"}'), cs.blocks);
  t.true(sample(r.body, 'pcached_dirty_blocks{cache="vol"}') >= 0);
  t.true(sample(r.body, 'process_cpu_user_seconds_total') > 0, 'the default process metrics are there');
  t.regex(r.body, /# TYPE pcached_read_blocks_total counter/);
  t.regex(r.body, /# TYPE pcached_free_blocks gauge/);

  const nf = await get(url.replace('/metrics', '/other'));
  t.is(nf.status, 404);
  t.is(await stopGracefully(d), 0, d.proc.output());
});

test('metrics: a non-loopback address needs metrics.allowRemote; an address in use fails the start with one clear line', async (t) => {
  t.timeout(60_000);
  const dir = mkdtempSync(join(tmpdir(), 'pcached-metrics-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 32 << 20);
  const cfg = (metrics: Record<string, unknown>) => ({
    control: join(dir, 'control.sock'), logLevel: 'warn', metrics,
    caches: [{ name: 'vol', origin, cache: join(dir, 'cache.img'), cacheSize: '16MiB', unix: join(dir, 'nbd.sock') }],
  });
  writeConfig(join(dir, 'remote.json'), cfg({ listen: '0.0.0.0:9464' }));
  const p = spawnPcached(['--config', join(dir, 'remote.json')], { cwd: dir });
  t.teardown(() => p.stop('SIGKILL'));
  t.is(await p.exited, 1);
  t.regex(p.output(), /metrics\.listen: 0\.0\.0\.0 is not a loopback address; .*metrics\.allowRemote/);

  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { busy.close(); });
  const port = (busy.address() as { port: number }).port;
  writeConfig(join(dir, 'busy.json'), cfg({ listen: `127.0.0.1:${port}` }));
  const q = spawnPcached(['--config', join(dir, 'busy.json')], { cwd: dir });
  t.teardown(() => q.stop('SIGKILL'));
  t.is(await q.exited, 1);
  t.regex(q.output(), new RegExp(`cannot listen for metrics on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`));
});
