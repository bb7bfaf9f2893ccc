import test from 'ava';
import fc from 'fast-check';
import { SlabAllocator } from '../src/ring/slab.js';
import { SLAB_PAGE } from '../src/ring/layout.js';

test('allocations never overlap and frees make the space reusable (model check)', (t) => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('alloc' as const), bytes: fc.integer({ min: 1, max: 40 * SLAB_PAGE }) }),
    fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }),
  );
  fc.assert(fc.property(fc.array(op, { maxLength: 300 }), (ops) => {
    const pages = 128;
    const slab = new SlabAllocator(pages * SLAB_PAGE);
    const owner = new Int32Array(pages).fill(-1);
    const live: { off: number; bytes: number; id: number }[] = [];
    let id = 0;
    for (const o of ops) {
      if (o.kind === 'alloc') {
        const off = slab.alloc(o.bytes);
        const need = Math.ceil(o.bytes / SLAB_PAGE);
        if (off < 0) {
          // Refusal is only allowed when no contiguous free run exists.
          let run = 0;
          for (let i = 0; i < pages; i++) { run = owner[i] === -1 ? run + 1 : 0; if (run >= need) return false; }
          continue;
        }
        if (off % SLAB_PAGE !== 0 || off / SLAB_PAGE + need > pages) return false;
        for (let i = off / SLAB_PAGE; i < off / SLAB_PAGE + need; i++) { if (owner[i] !== -1) return false; owner[i] = id; }
        live.push({ off, bytes: o.bytes, id: id++ });
      } else if (live.length > 0) {
        const [victim] = live.splice(o.pick % live.length, 1);
        slab.free(victim!.off, victim!.bytes);
        owner.fill(-1, victim!.off / SLAB_PAGE, victim!.off / SLAB_PAGE + Math.ceil(victim!.bytes / SLAB_PAGE));
      }
      const used = owner.reduce((n, v) => n + (v === -1 ? 0 : 1), 0);
      if (slab.freeBytes !== (pages - used) * SLAB_PAGE) return false;
    }
    return true;
  }), { seed: 1234, numRuns: 300 });
  t.pass();
});

test('bad frees and sizes are rejected', (t) => {
  t.throws(() => new SlabAllocator(1000));
  const slab = new SlabAllocator(4 * SLAB_PAGE);
  t.throws(() => slab.free(5 * SLAB_PAGE, 4096));
  t.throws(() => slab.free(100, 4096));
  t.is(slab.alloc(5 * SLAB_PAGE), -1);
  t.is(slab.alloc(4 * SLAB_PAGE), 0);
  t.is(slab.alloc(1), -1);
});

test('largestFreeRun finds the longest run of free pages', (t) => {
  const slab = new SlabAllocator(16 * SLAB_PAGE);
  t.is(slab.largestFreeRun(), 16 * SLAB_PAGE);
  const a = slab.alloc(3 * SLAB_PAGE);
  const b = slab.alloc(SLAB_PAGE);
  const c = slab.alloc(5 * SLAB_PAGE);
  slab.alloc(SLAB_PAGE);
  t.is(slab.largestFreeRun(), 6 * SLAB_PAGE, 'the tail');
  slab.free(a, 3 * SLAB_PAGE);
  slab.free(c, 5 * SLAB_PAGE);
  t.is(slab.largestFreeRun(), 6 * SLAB_PAGE);
  slab.free(b, SLAB_PAGE);
  t.is(slab.largestFreeRun(), 9 * SLAB_PAGE, 'freed runs merge');
});
