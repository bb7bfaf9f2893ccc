// The STARTTLS policy of option haggling, without sockets ([proto] "TLS support"): NOTLS refuses
// STARTTLS with ERR_POLICY and never says ERR_TLS_REQD; FORCEDTLS refuses everything but STARTTLS
// and ABORT until TLS is up and hangs up on EXPORT_NAME; after the upgrade the plaintext state
// is gone and a second STARTTLS is invalid.

import test from 'ava';
import { Negotiation, type TlsPolicy } from '../src/coordinator/negotiate.js';
import { Opt, Rep } from '../src/nbd/constants.js';

const EXP = { name: 'vol', description: '', size: 1 << 20, readOnly: false };

function haggler(tls: TlsPolicy): { neg: Negotiation; replies: () => number[] } {
  const sent: Buffer[] = [];
  const neg = new Negotiation(EXP, (b) => sent.push(b), { tls });
  neg.clientFlags(1 | 2);
  // Reply type of each option reply sent since the last call (header: magic 8, option 4, type 4).
  return { neg, replies: () => sent.splice(0).map((b) => b.readUInt32BE(12)) };
}

const infoData = (name: string): Buffer => {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  return b;
};

test('tls off: STARTTLS is refused by policy, everything else works as before', (t) => {
  const { neg, replies } = haggler('off');
  t.deepEqual(neg.option(Opt.STARTTLS, Buffer.alloc(0)), { next: 'continue' });
  t.deepEqual(replies(), [Rep.ERR_POLICY]);
  neg.option(Opt.LIST, Buffer.alloc(0));
  t.deepEqual(replies(), [Rep.SERVER, Rep.ACK]);
});

test('tls require: ERR_TLS_REQD for every option but STARTTLS and ABORT; EXPORT_NAME hangs up', (t) => {
  const { neg, replies } = haggler('require');
  for (const opt of [Opt.LIST, Opt.INFO, Opt.GO, Opt.STRUCTURED_REPLY, Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT, 99]) {
    t.deepEqual(neg.option(opt, opt === Opt.INFO || opt === Opt.GO ? infoData('vol') : Buffer.alloc(0)), { next: 'continue' });
    t.deepEqual(replies(), [Rep.ERR_TLS_REQD], `option ${opt}`);
  }
  t.is(neg.option(Opt.EXPORT_NAME, Buffer.from('vol')).next, 'close');
  t.deepEqual(replies(), [], 'EXPORT_NAME has no error reply');
  t.is(haggler('require').neg.option(Opt.ABORT, Buffer.alloc(0)).next, 'close');
});

test('STARTTLS: the caller sends the ACK and upgrades; afterwards options are served and plaintext state is gone', (t) => {
  const { neg, replies } = haggler('require');
  t.deepEqual(neg.option(Opt.STARTTLS, Buffer.from('x')), { next: 'continue' });
  t.deepEqual(replies(), [Rep.ERR_INVALID], 'STARTTLS carries no data');
  t.deepEqual(neg.option(Opt.STARTTLS, Buffer.alloc(0)), { next: 'starttls' });
  t.deepEqual(replies(), [], 'the ACK is the session\'s to send, in plaintext');
  t.false(neg.secure);
  neg.tlsStarted();
  t.true(neg.secure);
  neg.option(Opt.STARTTLS, Buffer.alloc(0));
  t.deepEqual(replies(), [Rep.ERR_INVALID], 'a second STARTTLS');
  t.deepEqual(neg.option(Opt.GO, infoData('vol')), { next: 'transmission', structuredReplies: false, metaContext: false });
  t.deepEqual(replies(), [Rep.INFO, Rep.ACK]);
});

test('tls on: plaintext clients are served; structured replies chosen before STARTTLS are forgotten', (t) => {
  const plain = haggler('on');
  t.is(plain.neg.option(Opt.GO, infoData('vol')).next, 'transmission');
  const { neg, replies } = haggler('on');
  neg.option(Opt.STRUCTURED_REPLY, Buffer.alloc(0));
  t.deepEqual(replies(), [Rep.ACK]);
  t.is(neg.option(Opt.STARTTLS, Buffer.alloc(0)).next, 'starttls');
  neg.tlsStarted();
  t.deepEqual(neg.option(Opt.GO, infoData('vol')), { next: 'transmission', structuredReplies: false, metaContext: false });
});
