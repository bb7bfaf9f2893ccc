// Memory of a process tree, from /proc: tests that bound what a hostile client can make the
// daemon allocate.

import { readdirSync, readFileSync } from 'node:fs';

/** VmRSS of `pid` and all its descendants, in KiB (pcached = supervisor + coordinator processes). */
export function treeRssKiB(pid: number): number {
  return treeSumKiB(pid, 'status', /VmRSS:\s+(\d+)/);
}

/** PSS (shared pages split between the processes that map them) of `pid` and its descendants, in KiB. */
export function treePssKiB(pid: number): number {
  return treeSumKiB(pid, 'smaps_rollup', /^Pss:\s+(\d+) kB/m);
}

/** A kB field of /proc/PID/`file`, summed over `pid` and every descendant (a process gone meanwhile counts 0). */
function treeSumKiB(pid: number, file: string, field: RegExp): number {
  const children = new Map<number, number[]>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(e));
      children.set(ppid, list);
    } catch { /* raced */ }
  }
  let total = 0;
  const stack = [pid];
  while (stack.length) {
    const p = stack.pop()!;
    try {
      const m = field.exec(readFileSync(`/proc/${p}/${file}`, 'utf8'));
      total += Number(m?.[1] ?? 0);
    } catch { /* gone */ }
    stack.push(...(children.get(p) ?? []));
  }
  return total;
}

/** Sample treeRssKiB(pid) every `ms` until stop() is called; stop() returns the peak. */
export function rssSampler(pid: number, ms = 200): { stop(): number; peak(): number } {
  let peak = treeRssKiB(pid);
  const timer = setInterval(() => { peak = Math.max(peak, treeRssKiB(pid)); }, ms);
  return {
    peak: () => peak,
    stop: () => {
      clearInterval(timer);
      peak = Math.max(peak, treeRssKiB(pid));
      return peak;
    },
  };
}
