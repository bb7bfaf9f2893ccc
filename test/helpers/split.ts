// Simulated TCP fragmentation: feed a byte stream to a push/next parser in pieces and collect
// every event it yields.

export interface PushParser<E> {
  push(chunk: Buffer): void;
  next(): E | null;
}

/** Push each chunk in turn, draining next() after every push. */
export function feed<E>(parser: PushParser<E>, chunks: Buffer[]): E[] {
  const out: E[] = [];
  for (const c of chunks) {
    parser.push(c);
    for (let ev = parser.next(); ev !== null; ev = parser.next()) {
      out.push(ev);
      if ((ev as { kind?: string }).kind === 'fatal') return out;
    }
  }
  return out;
}

/** Every two-piece split of buf: [0,i) and [i,len), for i = 0..len. Each piece is a fresh copy. */
export function* splitsAt(buf: Buffer): Generator<Buffer[]> {
  for (let i = 0; i <= buf.length; i++) yield [Buffer.from(buf.subarray(0, i)), Buffer.from(buf.subarray(i))];
}

/** buf cut into pieces of `size` bytes (the last may be shorter). */
export function pieces(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(Buffer.from(buf.subarray(i, i + size)));
  return out;
}

/** buf cut at the given sorted positions. */
export function cutAt(buf: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts, buf.length]) {
    out.push(buf.subarray(prev, c));
    prev = c;
  }
  return out;
}
