// The client's view of a run of stamped writes (test/helpers/stamps.ts), and the two checks made
// against what a device holds afterwards.
//
// Versions count per block (1, 2, ...), so "at least as new" is a comparison. An epoch is the
// writes between two successful FLUSHes; the writer waits for every write of an epoch to be
// answered before it sends the FLUSH, and for the FLUSH's answer before the next write (the driver
// in stamp-driver.ts does), so each write belongs to exactly one epoch. A FLUSH reply covers every
// write whose reply arrived before the FLUSH was sent ([proto] NBD_CMD_FLUSH).
//
// A write answered with an error, or never answered, may or may not be on the device. So may an
// acknowledged write that no successful FLUSH covered when a crash came (a power cut, a daemon
// killed): crash() demotes those and closes their epoch.
//
// Checks:
// - checkDurable: every block holds a version at least as new as the newest one a successful
//   FLUSH covered, and a version that was really written, intact.
// - checkEpochPrefix (an origin image alone, as if the cache were lost): the device holds every
//   epoch up to some W whole plus a subset of epoch W+1, and nothing of later epochs.

import { readStamp, STAMP_BLOCK } from './stamps.js';

export const enum Outcome { PENDING = 0, OK = 1, FAILED = 2, LOST = 3 }

export class StampModel {
  readonly blocks: number;
  /** The open epoch (1-based): the one the next write belongs to. */
  epoch = 1;
  readonly sent: Int32Array;
  readonly acked: Int32Array;
  readonly durable: Int32Array;
  /** Per block, per version (index version-1): its epoch and outcome. */
  readonly #epochOf: number[][];
  readonly #outcome: Outcome[][];
  readonly counts = { writesOk: 0, writesFailed: 0, writesLost: 0, flushesOk: 0, flushesFailed: 0, flushesLost: 0, crashes: 0 };

  constructor(blocks: number) {
    this.blocks = blocks;
    this.sent = new Int32Array(blocks);
    this.acked = new Int32Array(blocks);
    this.durable = new Int32Array(blocks);
    this.#epochOf = Array.from({ length: blocks }, () => []);
    this.#outcome = Array.from({ length: blocks }, () => []);
  }

  /** The version to write next to `block`, recorded as sent in the open epoch. */
  beginWrite(block: number): number {
    const v = ++this.sent[block]!;
    this.#epochOf[block]!.push(this.epoch);
    this.#outcome[block]!.push(Outcome.PENDING);
    return v;
  }

  endWrite(block: number, version: number, outcome: Outcome): void {
    this.#outcome[block]![version - 1] = outcome;
    if (outcome === Outcome.OK) {
      this.counts.writesOk++;
      if (version > this.acked[block]!) this.acked[block] = version;
    } else if (outcome === Outcome.FAILED) this.counts.writesFailed++;
    else this.counts.writesLost++;
  }

  /** Call as the FLUSH is sent: what it will cover if it succeeds. */
  beginFlush(): Int32Array {
    return this.acked.slice();
  }

  endFlush(covered: Int32Array, outcome: Outcome): void {
    if (outcome !== Outcome.OK) {
      if (outcome === Outcome.FAILED) this.counts.flushesFailed++;
      else this.counts.flushesLost++;
      return;
    }
    this.counts.flushesOk++;
    for (let b = 0; b < this.blocks; b++) if (covered[b]! > this.durable[b]!) this.durable[b] = covered[b]!;
    this.epoch++;
  }

  /** Everything not covered by a successful FLUSH may be gone now: demote it, close the epoch. */
  crash(): void {
    this.counts.crashes++;
    for (let b = 0; b < this.blocks; b++) {
      const outcomes = this.#outcome[b]!;
      for (let i = this.durable[b]!; i < outcomes.length; i++) {
        if (outcomes[i] === Outcome.OK || outcomes[i] === Outcome.PENDING) outcomes[i] = Outcome.LOST;
      }
      this.acked[b] = this.durable[b]!;
    }
    this.epoch++;
  }

  /** Epoch of `version` of `block` (0 for version 0). */
  epochOf(block: number, version: number): number {
    return version === 0 ? 0 : this.#epochOf[block]![version - 1]!;
  }

  /** The first acknowledged version newer than `version`, or 0. */
  nextAcked(block: number, version: number): number {
    const outcomes = this.#outcome[block]!;
    for (let i = version; i < outcomes.length; i++) if (outcomes[i] === Outcome.OK) return i + 1;
    return 0;
  }
}

/** What a device holds per block: a version, or -1 (then `bad` says why). */
export interface Held {
  versions: Int32Array;
  bad: Map<number, string>;
}

/** Decodes `blocks` stamped blocks from `image` (a volume or an image read whole). */
export function decodeImage(image: Buffer, blocks: number, model?: StampModel): Held {
  const versions = new Int32Array(blocks);
  const bad = new Map<number, string>();
  for (let b = 0; b < blocks; b++) {
    const r = readStamp(image, b, b * STAMP_BLOCK);
    if ('bad' in r) {
      versions[b] = -1;
      bad.set(b, r.bad);
    } else if (model && r.version > model.sent[b]!) {
      versions[b] = -1;
      bad.set(b, `holds version ${r.version}, never written (last written: ${model.sent[b]})`);
    } else versions[b] = r.version;
  }
  return { versions, bad };
}

export interface DurableReport {
  ok: boolean;
  /** Blocks older than what the last successful FLUSH covering them said. */
  older: number;
  invalid: number;
  blocks: number;
  summary: string;
}

function examples(list: string[], n = 5): string {
  return list.length === 0 ? '' : `; e.g. ${list.slice(0, n).join('; ')}${list.length > n ? '; …' : ''}`;
}

export function checkDurable(model: StampModel, held: Held): DurableReport {
  const older: string[] = [];
  let firstEpoch = Infinity, lastEpoch = 0, nothing = 0;
  for (let b = 0; b < model.blocks; b++) {
    const h = held.versions[b]!;
    const need = model.durable[b]!;
    if (h < 0 || h >= need) continue;
    const e = model.epochOf(b, need);
    firstEpoch = Math.min(firstEpoch, e);
    lastEpoch = Math.max(lastEpoch, e);
    if (h === 0) nothing++;
    older.push(`block ${b} holds v${h} (epoch ${model.epochOf(b, h)}), a successful FLUSH covered v${need} (epoch ${e})`);
  }
  const invalid = [...held.bad].map(([b, why]) => `block ${b}: ${why}`);
  const c = model.counts;
  const lost = older.length === 0 ? '' : ` (the versions they miss were written in epochs ${firstEpoch}..${lastEpoch}; ${nothing} of these blocks read as zeros)`;
  const summary = `${older.length} of ${model.blocks} blocks older than the last successful FLUSH covering them${lost}, ${invalid.length} torn or never written ` +
    `(writes: ${c.writesOk} acknowledged, ${c.writesFailed} EIO, ${c.writesLost} unanswered; FLUSHes: ${c.flushesOk} succeeded, ${c.flushesFailed} failed, ${c.flushesLost} unanswered)` +
    examples(older) + examples(invalid, 3);
  return { ok: older.length === 0 && invalid.length === 0, older: older.length, invalid: invalid.length, blocks: model.blocks, summary };
}

export interface PrefixReport {
  ok: boolean;
  /** Every epoch 1..whole is on the device in full. */
  whole: number;
  /** Closed epochs (successful FLUSHes plus crashes). */
  epochs: number;
  /** Blocks holding a write of an epoch after `whole`. */
  later: number;
  /** Of those, blocks from an epoch after whole+1: a state the client never saw. */
  beyond: number;
  invalid: number;
  summary: string;
}

export function checkEpochPrefix(model: StampModel, held: Held): PrefixReport {
  const closed = model.epoch - 1;
  // The newest W with no block behind it: a block is behind epoch E when an acknowledged write
  // of it in an epoch <= E is newer than what it holds.
  let whole = closed;
  for (let b = 0; b < model.blocks; b++) {
    const h = held.versions[b]!;
    if (h < 0) continue;
    const next = model.nextAcked(b, h);
    if (next > 0) whole = Math.min(whole, model.epochOf(b, next) - 1);
  }
  const beyond: string[] = [];
  let later = 0;
  for (let b = 0; b < model.blocks; b++) {
    const h = held.versions[b]!;
    if (h < 0) continue;
    const e = model.epochOf(b, h);
    if (e <= whole) continue;
    later++;
    if (e > whole + 1) beyond.push(`block ${b} holds v${h} of epoch ${e}`);
  }
  const invalid = [...held.bad].map(([b, why]) => `block ${b}: ${why}`);
  const ok = beyond.length === 0 && invalid.length === 0;
  const summary = `origin holds epochs 1..${whole} of ${closed} whole plus ${later} blocks of later epochs` +
    (ok ? ` (all of epoch ${whole + 1})` : `: ${beyond.length} blocks from epochs after ${whole + 1}, a state the client never saw`) +
    (invalid.length ? `; ${invalid.length} torn or never written` : '') + examples(beyond) + examples(invalid, 3);
  return { ok, whole, epochs: closed, later, beyond: beyond.length, invalid: invalid.length, summary };
}
