// Benchmark: fio (ioengine=nbd, Unix socket) against pcached (pass-through over a file origin),
// nbdkit's file plugin over an identical file, and nbdkit's memory plugin (the transport's limit).
//
//   npm run bench                       # all servers, 10 s cells, median of 3
//   npm run bench -- --quick            # 3 s cells
//   npm run bench -- --servers nbdkit-file,nbdkit-memory   # without pcached
//
// See bench/README.md for the options and how to read the output.

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, release, totalmem } from 'node:os';
import { join, resolve } from 'node:path';

import { REPO, TOOL_ENV, fio, killAllProcs, median, prefillFile, startProc, stopProc, toolVersion, type FioDir, type Proc, type Sample } from './lib.js';

// ---------------------------------------------------------------------------------------------
// Options

const ALL_SERVERS = ['pcached', 'pcached-baseline', 'nbdkit-file', 'nbdkit-memory'] as const;
type ServerName = (typeof ALL_SERVERS)[number];

interface Workload { id: string; label: string; rw: string; bs: string; iodepth: number; dir: 'read' | 'write' }
const WORKLOADS: Workload[] = [
  { id: 'randread-4k-qd32', label: '4K randread QD32', rw: 'randread', bs: '4k', iodepth: 32, dir: 'read' },
  { id: 'randwrite-4k-qd32', label: '4K randwrite QD32', rw: 'randwrite', bs: '4k', iodepth: 32, dir: 'write' },
  { id: 'randread-4k-qd1', label: '4K randread QD1', rw: 'randread', bs: '4k', iodepth: 1, dir: 'read' },
  { id: 'randwrite-4k-qd1', label: '4K randwrite QD1', rw: 'randwrite', bs: '4k', iodepth: 1, dir: 'write' },
  { id: 'read-1m-qd8', label: '1M seq read QD8', rw: 'read', bs: '1m', iodepth: 8, dir: 'read' },
  { id: 'write-1m-qd8', label: '1M seq write QD8', rw: 'write', bs: '1m', iodepth: 8, dir: 'write' },
];

interface Options {
  runtime: number; ramp: number; reps: number; size: number;
  servers: ServerName[]; workloads: Workload[]; out: string; keep: boolean; pcachedArgs: string[];
  /** A built checkout of another pcached (e.g. the commit before a change), run as pcached-baseline. */
  baseline: string | null;
}

function usage(): never {
  process.stdout.write(`usage: node dist/bench/run.js [options]
  --quick                 3 s cells, 1 s ramp (default 10 s, 2 s ramp)
  --runtime SECONDS       seconds per cell (time_based)
  --ramp SECONDS          ramp time per cell
  --reps N                repetitions per cell, median reported (default 3)
  --size SIZE             volume size, e.g. 1G (default 1G)
  --servers LIST          comma list of ${ALL_SERVERS.join(',')} (default: all)
  --workloads LIST        comma list of ${WORKLOADS.map((w) => w.id).join(',')}
  --out DIR               results directory (default bench/results)
  --pcached-args "ARGS"   extra arguments for pcached start (space separated)
  --baseline DIR          also run DIR/bin/pcached (a built checkout, e.g. of the previous commit)
                          as pcached-baseline, interleaved with the others: a side-by-side before/after
  --keep                  keep the temp dir (origin files, fio JSON)
`);
  process.exit(2);
}

function parseSize(s: string): number {
  const m = /^(\d+)([KMGT]?)i?B?$/i.exec(s.trim());
  if (!m) throw new Error(`bad size ${s}`);
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  return Number(m[1]) * mult;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    runtime: 10, ramp: 2, reps: 3, size: 1024 ** 3, servers: [...ALL_SERVERS], workloads: WORKLOADS,
    out: join(REPO, 'bench', 'results'), keep: false, pcachedArgs: [], baseline: null,
  };
  let runtimeSet = false;
  let rampSet = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = () => { const v = argv[++i]; if (v === undefined) usage(); return v; };
    switch (a) {
      case '--quick': if (!runtimeSet) o.runtime = 3; if (!rampSet) o.ramp = 1; break;
      case '--runtime': o.runtime = Number(next()); runtimeSet = true; break;
      case '--ramp': o.ramp = Number(next()); rampSet = true; break;
      case '--reps': o.reps = Number(next()); break;
      case '--size': o.size = parseSize(next()); break;
      case '--servers': {
        const list = next().split(',').map((s) => s.trim()).filter(Boolean);
        for (const s of list) if (!ALL_SERVERS.includes(s as ServerName)) throw new Error(`unknown server ${s}`);
        o.servers = list as ServerName[];
        break;
      }
      case '--workloads': {
        const ids = next().split(',');
        o.workloads = ids.map((id) => WORKLOADS.find((w) => w.id === id) ?? (() => { throw new Error(`unknown workload ${id}`); })());
        break;
      }
      case '--out': o.out = resolve(next()); break;
      case '--pcached-args': o.pcachedArgs = next().split(/\s+/).filter(Boolean); break;
      case '--keep': o.keep = true; break;
      case '--baseline': o.baseline = resolve(next()); break;
      case '-h': case '--help': usage();
      // falls through (usage exits)
      default: process.stderr.write(`unknown argument ${a}\n`); usage();
    }
  }
  if (!(o.runtime > 0 && o.reps >= 1 && o.ramp >= 0)) usage();
  if (o.baseline && !o.servers.includes('pcached-baseline')) o.servers.splice(1, 0, 'pcached-baseline');
  if (!o.baseline) o.servers = o.servers.filter((s) => s !== 'pcached-baseline');
  return o;
}

// ---------------------------------------------------------------------------------------------
// Servers: started and stopped by PID.

interface Server { name: ServerName; uri: string; proc: Proc }

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => { process.stderr.write(`\n${sig}: stopping servers\n`); killAllProcs(); process.exit(130); });
}

async function startServer(name: ServerName, dir: string, file: string | null, size: number, extra: string[], baseline: string | null): Promise<Server> {
  const sock = join(dir, `${name}.sock`);
  let cmd: string;
  let args: string[];
  let uri: string;
  if (name === 'pcached' || name === 'pcached-baseline') {
    cmd = process.execPath;
    args = [join(name === 'pcached' ? REPO : baseline!, 'bin', 'pcached'), 'start', '--origin', file!, '--cache', join(dir, `${name}-cache.img`),
      '--cache-size', '256M', '--unix', sock, '--tcp', '', '--name', 'bench', '--mode', 'passthrough',
      '--control', join(dir, `${name}-control.sock`), '--log-level', 'warn', ...extra];
    uri = `nbd+unix:///bench?socket=${sock}`;
  } else if (name === 'nbdkit-file') {
    cmd = 'nbdkit';
    args = ['-f', '-U', sock, 'file', file!];
    uri = `nbd+unix:///?socket=${sock}`;
  } else {
    cmd = 'nbdkit';
    args = ['-f', '-U', sock, 'memory', String(size)];
    uri = `nbd+unix:///?socket=${sock}`;
  }
  return { name, uri, proc: await startProc(name, cmd, args, sock, dir) };
}

async function runCell(s: Server, w: Workload, o: Options, outFile: string): Promise<Sample> {
  const j = await fio([
    `--name=${w.id}`, '--ioengine=nbd', `--uri=${s.uri}`, `--rw=${w.rw}`, `--bs=${w.bs}`,
    `--iodepth=${w.iodepth}`, '--numjobs=1', '--time_based', `--runtime=${o.runtime}`, `--ramp_time=${o.ramp}`,
    '--norandommap', '--randrepeat=0', '--lat_percentiles=1', '--percentile_list=50:99',
  ], outFile, (o.runtime + o.ramp + 60) * 1000);
  const job = (j.jobs as Array<Record<string, FioDir>>)[0]!;
  const d = job[w.dir]!;
  if ((job as unknown as { error: number }).error) throw new Error(`fio job error ${(job as unknown as { error: number }).error}`);
  const pct = d.lat_ns.percentile ?? {};
  const p = (k: string) => (pct[k] ?? NaN) / 1000;
  return { iops: d.iops, mbps: d.bw_bytes / 1e6, p50us: p('50.000000'), p99us: p('99.000000'), meanus: d.lat_ns.mean / 1000 };
}

// ---------------------------------------------------------------------------------------------
// Output

const fmtInt = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-');
const fmt1 = (n: number) => (Number.isFinite(n) ? n.toFixed(n >= 100 ? 0 : 1) : '-');
const pad = (s: string, n: number, left = false) => (left ? s.padEnd(n) : s.padStart(n));

interface Cell { workload: string; label: string; server: ServerName; samples: Sample[]; median: Sample }

function table(cells: Cell[], o: Options): string {
  const lines: string[] = [];
  const head = `${pad('workload', 18, true)} ${pad('server', 14, true)} ${pad('IOPS', 10)} ${pad('MB/s', 8)} ${pad('p50 µs', 9)} ${pad('p99 µs', 9)} ${pad('IOPS×', 7)} ${pad('p50×', 6)}`;
  lines.push(head, '-'.repeat(head.length));
  for (const w of o.workloads) {
    const ref = cells.find((c) => c.workload === w.id && c.server === 'nbdkit-file')?.median;
    for (const c of cells.filter((x) => x.workload === w.id)) {
      const m = c.median;
      const r = ref && c.server !== 'nbdkit-file' ? `${(m.iops / ref.iops).toFixed(2)}` : '';
      const l = ref && c.server !== 'nbdkit-file' ? `${(m.p50us / ref.p50us).toFixed(2)}` : '';
      lines.push(`${pad(w.label, 18, true)} ${pad(c.server, 14, true)} ${pad(fmtInt(m.iops), 10)} ${pad(fmtInt(m.mbps), 8)} ` +
        `${pad(fmt1(m.p50us), 9)} ${pad(fmt1(m.p99us), 9)} ${pad(r, 7)} ${pad(l, 6)}`);
    }
  }
  lines.push('', 'IOPS× and p50× are ratios to nbdkit-file for the same workload (medians).');
  if (o.servers.includes('pcached-baseline')) {
    lines.push('', 'pcached against pcached-baseline (medians): IOPS ratio, p50 ratio');
    for (const w of o.workloads) {
      const a = cells.find((c) => c.workload === w.id && c.server === 'pcached')?.median;
      const b = cells.find((c) => c.workload === w.id && c.server === 'pcached-baseline')?.median;
      if (a && b) lines.push(`${pad(w.label, 18, true)} IOPS ${(a.iops / b.iops).toFixed(3)}×  p50 ${(a.p50us / b.p50us).toFixed(3)}×`);
    }
  }
  return lines.join('\n');
}

function targets(cells: Cell[]): string[] {
  const get = (w: string, s: ServerName) => cells.find((c) => c.workload === w && c.server === s)?.median;
  const out: string[] = [];
  const check = (label: string, ok: boolean, detail: string) => out.push(`${ok ? 'PASS' : 'MISS'}  ${label}: ${detail}`);
  for (const w of ['randread-4k-qd32', 'randwrite-4k-qd32']) {
    const p = get(w, 'pcached'); const f = get(w, 'nbdkit-file');
    if (p && f) check(`${w} IOPS ≥ 0.8× nbdkit-file`, p.iops >= 0.8 * f.iops, `${(p.iops / f.iops).toFixed(2)}×`);
  }
  for (const w of ['randread-4k-qd1', 'randwrite-4k-qd1']) {
    const p = get(w, 'pcached'); const f = get(w, 'nbdkit-file');
    if (p && f) check(`${w} p50 ≤ 1.3× nbdkit-file`, p.p50us <= 1.3 * f.p50us, `${(p.p50us / f.p50us).toFixed(2)}×`);
  }
  return out;
}

const COLORS: Record<ServerName, string> = { 'pcached': '#d9622b', 'pcached-baseline': '#f0b27a', 'nbdkit-file': '#3b6fb6', 'nbdkit-memory': '#8c8c8c' };

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Grouped bars: per workload, each server's median throughput relative to nbdkit-file, labelled with the absolute value. */
function svg(cells: Cell[], o: Options, title: string): string {
  const servers = o.servers;
  const W = 980, H = 460, left = 70, right = 20, top = 70, bottom = 90;
  const plotW = W - left - right, plotH = H - top - bottom;
  const groups = o.workloads;
  const ratio = (c: Cell) => {
    const ref = cells.find((x) => x.workload === c.workload && x.server === 'nbdkit-file')?.median;
    const base = ref ?? cells.filter((x) => x.workload === c.workload).map((x) => x.median).sort((a, b) => b.iops - a.iops)[0]!;
    return c.median.iops / base.iops;
  };
  const maxR = Math.max(1.2, ...cells.map(ratio));
  const yMax = Math.ceil(maxR * 5) / 5;
  const gW = plotW / groups.length;
  const bW = Math.min(50, (gW - 20) / servers.length);
  const y = (v: number) => top + plotH - (v / yMax) * plotH;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">${esc(title)}</text>`);
  const refName = cells.some((c) => c.server === 'nbdkit-file') ? 'nbdkit-file' : 'the fastest server';
  parts.push(`<text x="${W / 2}" y="44" text-anchor="middle" fill="#444">throughput relative to ${refName} (median of ${o.reps}, ${o.runtime} s cells); labels: IOPS (4K) or MB/s (1M)</text>`);
  for (let v = 0; v <= yMax + 1e-9; v += 0.2) {
    const yy = y(v);
    parts.push(`<line x1="${left}" x2="${W - right}" y1="${yy}" y2="${yy}" stroke="${Math.abs(v - 1) < 1e-9 ? '#000' : '#ddd'}" stroke-width="${Math.abs(v - 1) < 1e-9 ? 1.5 : 1}"/>`);
    parts.push(`<text x="${left - 8}" y="${yy + 4}" text-anchor="end">${v.toFixed(1)}×</text>`);
  }
  for (const [gi, w] of groups.entries()) {
    const gx = left + gi * gW + (gW - bW * servers.length) / 2;
    for (const [si, s] of servers.entries()) {
      const c = cells.find((x) => x.workload === w.id && x.server === s);
      if (!c) continue;
      const r = ratio(c);
      const x = gx + si * bW;
      parts.push(`<rect x="${x.toFixed(1)}" y="${y(r).toFixed(1)}" width="${(bW - 4).toFixed(1)}" height="${(y(0) - y(r)).toFixed(1)}" fill="${COLORS[s]}"><title>${esc(`${s} ${w.label}: ${fmtInt(c.median.iops)} IOPS, ${fmtInt(c.median.mbps)} MB/s, p50 ${fmt1(c.median.p50us)} µs, p99 ${fmt1(c.median.p99us)} µs`)}</title></rect>`);
      const label = w.bs === '1m' ? `${fmtInt(c.median.mbps)}` : `${(c.median.iops / 1000).toFixed(1)}k`;
      parts.push(`<text x="${(x + (bW - 4) / 2).toFixed(1)}" y="${(y(r) - 4).toFixed(1)}" text-anchor="middle" font-size="10">${label}</text>`);
    }
    parts.push(`<text x="${(left + gi * gW + gW / 2).toFixed(1)}" y="${top + plotH + 18}" text-anchor="middle">${esc(w.label)}</text>`);
  }
  for (const [si, s] of servers.entries()) {
    const lx = left + si * 170;
    parts.push(`<rect x="${lx}" y="${H - 34}" width="14" height="14" fill="${COLORS[s]}"/>`);
    parts.push(`<text x="${lx + 20}" y="${H - 22}">${s}</text>`);
  }
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  for (const tool of ['fio', ...(o.servers.some((s) => s.startsWith('nbdkit')) ? ['nbdkit'] : [])]) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`], { env: TOOL_ENV }).status !== 0) {
      throw new Error(`${tool} is not installed (bash scripts/install-test-deps.sh installs it)`);
    }
  }
  if (o.servers.includes('pcached') && !existsSync(join(REPO, 'dist', 'src', 'cli', 'main.js'))) {
    throw new Error('pcached is not built (dist/src/cli/main.js missing); run `npm run build`, or pass --servers nbdkit-file,nbdkit-memory');
  }
  const dir = mkdtempSync(join(tmpdir(), 'pcached-bench-'));
  const started = new Date();
  process.stdout.write(`pcached bench: servers ${o.servers.join(', ')}; ${o.workloads.length} workloads; ` +
    `${o.reps} reps × ${o.runtime} s (+${o.ramp} s ramp); volume ${o.size / 1024 ** 3} GiB; dir ${dir}\n`);
  const est = o.reps * o.workloads.length * o.servers.length * (o.runtime + o.ramp + 0.5);
  process.stdout.write(`estimated time: ${Math.ceil(est / 60)} min\n`);

  const servers: Server[] = [];
  try {
    // Identical pre-filled origin files, warmed into the page cache, for pcached and nbdkit-file.
    const files: Partial<Record<ServerName, string>> = {};
    for (const s of o.servers) {
      if (s === 'nbdkit-memory') continue;
      const f = join(dir, `${s}-origin.img`);
      process.stdout.write(`pre-filling ${f}\n`);
      prefillFile(f, o.size);
      files[s] = f;
    }
    for (const s of o.servers) servers.push(await startServer(s, dir, files[s] ?? null, o.size, s.startsWith('pcached') ? o.pcachedArgs : [], o.baseline));
    const mem = servers.find((s) => s.name === 'nbdkit-memory');
    if (mem) {
      process.stdout.write('pre-filling nbdkit-memory (fio 1M sequential write)\n');
      await fio(['--name=prefill', '--ioengine=nbd', `--uri=${mem.uri}`, '--rw=write', '--bs=1m', '--iodepth=8'], join(dir, 'prefill.json'), 600_000);
    }
    // Gigabytes of freshly dirtied page cache would otherwise be written back during the first
    // cells and stall whichever server happens to be writing then.
    process.stdout.write('syncing the pre-filled files\n');
    execFileSync('sync');

    const samples = new Map<string, Sample[]>();
    for (let rep = 0; rep < o.reps; rep++) {
      for (const w of o.workloads) {
        // Servers interleaved inside each repetition, rotating the order so none always goes first.
        const order = servers.map((_, i) => servers[(i + rep) % servers.length]!);
        for (const s of order) {
          const key = `${w.id}|${s.name}`;
          const sample = await runCell(s, w, o, join(dir, `${key.replace('|', '-')}-${rep}.json`));
          if (!s.proc.alive()) throw new Error(`${s.name} died during ${w.id}:\n${s.proc.log()}`);
          samples.set(key, [...(samples.get(key) ?? []), sample]);
          process.stdout.write(`rep ${rep + 1}/${o.reps}  ${pad(w.label, 18, true)} ${pad(s.name, 14, true)} ` +
            `${pad(fmtInt(sample.iops), 9)} IOPS ${pad(fmtInt(sample.mbps), 6)} MB/s  p50 ${fmt1(sample.p50us)} µs  p99 ${fmt1(sample.p99us)} µs\n`);
        }
      }
    }

    const cells: Cell[] = [];
    for (const w of o.workloads) {
      for (const s of o.servers) {
        const xs = samples.get(`${w.id}|${s}`) ?? [];
        cells.push({
          workload: w.id, label: w.label, server: s, samples: xs,
          median: {
            iops: median(xs.map((x) => x.iops)), mbps: median(xs.map((x) => x.mbps)),
            p50us: median(xs.map((x) => x.p50us)), p99us: median(xs.map((x) => x.p99us)), meanus: median(xs.map((x) => x.meanus)),
          },
        });
      }
    }
    const tbl = table(cells, o);
    const tg = targets(cells);
    process.stdout.write(`\n${tbl}\n${tg.length ? `\ntargets (issue 2):\n${tg.join('\n')}\n` : ''}`);

    mkdirSync(o.out, { recursive: true });
    const stamp = started.toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z');
    const result = {
      date: started.toISOString(),
      host: { cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: Math.round(totalmem() / 1024 ** 3), kernel: release(), node: process.version,
        fio: toolVersion('fio', ['--version']), nbdkit: toolVersion('nbdkit', ['--version']) },
      config: { runtime: o.runtime, ramp: o.ramp, reps: o.reps, size: o.size, servers: o.servers, baseline: o.baseline, transport: 'unix',
        fio: 'ioengine=nbd numjobs=1 time_based norandommap randrepeat=0 lat_percentiles=1' },
      workloads: o.workloads,
      cells,
      targets: tg,
      table: tbl,
    };
    const jsonPath = join(o.out, `${stamp}.json`);
    const svgPath = join(o.out, `${stamp}.svg`);
    writeFileSync(jsonPath, JSON.stringify(result, null, 2) + '\n');
    writeFileSync(svgPath, svg(cells, o, `pcached bench ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC`));
    process.stdout.write(`\nwrote ${jsonPath}\nwrote ${svgPath}\n`);
  } finally {
    for (const s of servers) await stopProc(s.proc);
    if (o.keep) process.stdout.write(`kept ${dir}\n`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? e.message : String(e)}\n`);
  killAllProcs();
  process.exit(1);
});
