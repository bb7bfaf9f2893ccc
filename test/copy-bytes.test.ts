// copyBytes (src/util/copy-bytes.ts): the same bytes as TypedArray.set for every size and
// alignment it picks the addon for, into and out of SharedArrayBuffer memory, and the addon's
// bounds check.

import test from 'ava';
import { randomFillSync } from 'node:crypto';
import { copyBytes } from '../src/util/copy-bytes.js';
import { native } from '../src/native/index.js';

test('copies exactly the source, at every offset and size, shared or not', (t) => {
  const src = randomFillSync(Buffer.alloc(80 * 1024));
  for (const shared of [true, false]) {
    const mem = shared ? new SharedArrayBuffer(96 * 1024) : new ArrayBuffer(96 * 1024);
    const dst = new Uint8Array(mem);
    const model = new Uint8Array(96 * 1024);
    for (const size of [0, 1, 511, 512, 4096, 4097, 16384, 65536]) {
      for (const [so, at] of [[0, 0], [28, 0], [0, 4], [3, 4101], [28, 4096]] as const) {
        dst.fill(0xee); model.fill(0xee);
        const s = src.subarray(so, so + size);
        copyBytes(dst, at, s);
        model.set(s, at);
        t.true(Buffer.from(mem).equals(Buffer.from(model.buffer)), `${shared ? 'shared' : 'plain'} size ${size} from ${so} to ${at}`);
        // And back out of it, from an unaligned view of the shared memory.
        const out = Buffer.alloc(size + 8);
        copyBytes(out, 3, dst.subarray(at, at + size));
        t.true(out.subarray(3, 3 + size).equals(s));
      }
    }
  }
});

(native?.copyBytes ? test : test.skip)('the addon refuses a copy that does not fit, and non-Uint8Array arguments', (t) => {
  const copy = native!.copyBytes!;
  const dst = new Uint8Array(new SharedArrayBuffer(4096));
  t.is(copy(dst, 4096 - 5, Buffer.from('hello')), 5);
  t.throws(() => copy(dst, 4096 - 4, Buffer.from('hello')), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => copy(dst, -1, Buffer.from('x')), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => copy(dst, 0.5, Buffer.from('x')), { code: 'ERR_OUT_OF_RANGE' });
  t.throws(() => copy(new Uint16Array(4) as unknown as Uint8Array, 0, Buffer.from('x')));
  t.throws(() => copy(dst, 0, 'x' as unknown as Uint8Array));
});
