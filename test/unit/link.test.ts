import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  listenLinks,
  connectLink,
  LinkAuthError,
  FrameCodec,
  handshakeProof,
  sessionKey,
  signFrame,
  newNonce,
  PROTOCOL,
  MAX_HANDSHAKES,
  MAX_HANDSHAKES_PER_SOURCE,
  SERVER_HANDSHAKE_TIMEOUT_MS,
  HandshakeAdmission,
  type Link,
  type LinkServerOptions,
} from '../../src/node/link.js';
import { peerMessageSchema, MAX_LINE_BYTES, type PeerMessage } from '../../src/node/wire.js';
import { LockstepError } from '../../src/util/errors.js';

const SECRET = 'correct horse battery staple';
const HOST = '127.0.0.1';

type PeerLink = Link<PeerMessage, PeerMessage>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

interface Refusal {
  remote: string;
  why: string;
  peer: string | undefined;
}

/** A link server on a free port that records everything. */
async function server(opts: Partial<LinkServerOptions<PeerMessage, PeerMessage>> = {}) {
  const links: PeerLink[] = [];
  const refusals: Refusal[] = [];
  const got: PeerMessage[] = [];
  const closes: string[] = [];
  const srv = await listenLinks({
    name: 'b',
    secret: SECRET,
    host: HOST,
    port: 0,
    inbound: peerMessageSchema,
    outbound: peerMessageSchema,
    onLink: (l) => {
      links.push(l);
      l.on('message', (m) => got.push(m));
      l.on('close', (why) => closes.push(why));
    },
    onRefuse: (remote, why, peer) => refusals.push({ remote, why, peer }),
    ...opts,
  });
  const port = (srv.address() as net.AddressInfo).port;
  return {
    srv,
    port,
    links,
    refusals,
    got,
    closes,
    refusalsFrom: (remote: string) => refusals.filter((r) => r.remote === remote).map((r) => r.why),
    async close() {
      for (const l of links) l.close();
      await new Promise<void>((r) => srv.close(() => r()));
    },
  };
}

/** A client link, recording what it receives. */
async function client(port: number, name = 'a', secret = SECRET, localAddress?: string) {
  const got: PeerMessage[] = [];
  const closes: string[] = [];
  const refusals: string[] = [];
  const link = await connectLink({ name, secret, host: HOST, port, localAddress, inbound: peerMessageSchema, outbound: peerMessageSchema, onRefuse: (_r, why) => refusals.push(why) });
  link.on('message', (m) => got.push(m));
  link.on('close', (why) => closes.push(why));
  return { link, got, closes, refusals };
}

/** A raw TCP connection that records the lines it receives. */
async function raw(port: number, localAddress?: string) {
  const sock = net.createConnection({ host: HOST, port, ...(localAddress ? { localAddress } : {}) });
  sock.on('error', () => {});
  const st = { sock, buf: '', lines: [] as string[], closed: false, local: '' };
  sock.on('data', (d: Buffer) => {
    st.buf += d.toString('latin1');
    let i: number;
    while ((i = st.buf.indexOf('\n')) >= 0) {
      st.lines.push(st.buf.slice(0, i));
      st.buf = st.buf.slice(i + 1);
    }
  });
  sock.on('close', () => (st.closed = true));
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', () => resolve());
    sock.once('error', reject);
  });
  st.local = `${sock.localAddress}:${sock.localPort}`;
  return st;
}

/** A raw connection that has done the handshake by hand: the test holds the session key. */
async function rawSession(port: number, name = 'a') {
  const r = await raw(port);
  await waitFor('hello', () => r.lines.length >= 1);
  const hello = JSON.parse(r.lines[0]!) as { hello: string; nonce: string };
  assert.equal(hello.hello, PROTOCOL);
  const nc = newNonce();
  r.sock.write(JSON.stringify({ name, nonce: nc, proof: handshakeProof(SECRET, 'client', hello.nonce, nc, name) }) + '\n');
  await waitFor('server proof', () => r.lines.length >= 2);
  const reply = JSON.parse(r.lines[1]!) as { name: string; proof: string };
  assert.equal(reply.proof, handshakeProof(SECRET, 'server', hello.nonce, nc, reply.name));
  const key = sessionKey(SECRET, hello.nonce, nc, name, reply.name);
  // Not a spread: `closed` and `lines` keep updating.
  return Object.assign(r, { key, codec: new FrameCodec<PeerMessage, unknown>(key, 'c2s', peerMessageSchema) });
}

const ack = (seq: number): PeerMessage => ({ t: 'hback', seq });

test('both ends prove the shared secret and then exchange typed messages', async () => {
  const s = await server({
    onLink: (l) => {
      s.links.push(l);
      l.on('message', (m) => s.got.push(m));
      // Sent at once, before the client even has its Link: must still arrive.
      l.send(ack(100));
    },
  });
  try {
    const c = await client(s.port);
    assert.equal(c.link.peer, 'b');
    await waitFor('server link', () => s.links.length === 1);
    assert.equal(s.links[0]!.peer, 'a');
    c.link.send(ack(1));
    c.link.send(ack(2));
    await waitFor('2 messages', () => s.got.length === 2);
    assert.deepEqual(s.got, [ack(1), ack(2)]);
    s.links[0]!.send(ack(3));
    await waitFor('2 replies', () => c.got.length === 2);
    assert.deepEqual(c.got, [ack(100), ack(3)]);
    const serverClose = new Promise<string>((r) => s.links[0]!.once('close', r));
    c.link.close();
    assert.equal(c.link.isOpen, false);
    assert.equal(await serverClose, 'closed by peer');
    await waitFor('client close event', () => c.closes.length === 1);
    assert.deepEqual(c.closes, ['closed locally']);
    assert.equal(c.link.send(ack(4)), false);
    assert.deepEqual(s.refusals, []);
  } finally {
    await s.close();
  }
});

test('a client with the wrong secret is refused, reported, and never becomes a link', async () => {
  const s = await server();
  try {
    await assert.rejects(connectLink({ name: 'mallory', secret: 'not the secret at all', host: HOST, port: s.port, inbound: peerMessageSchema }), LinkAuthError);
    await waitFor('refusal', () => s.refusals.length === 1);
    assert.equal(s.links.length, 0);
    assert.match(s.refusals[0]!.why, /^authentication failed \(claimed name "mallory"\)$/);
  } finally {
    await s.close();
  }
});

test('a server with the wrong secret is refused by the client', async () => {
  const s = await server({ secret: 'some other secret value' });
  try {
    await assert.rejects(connectLink({ name: 'a', secret: SECRET, host: HOST, port: s.port, inbound: peerMessageSchema }), (err: unknown) => {
      assert.ok(err instanceof LinkAuthError);
      // The server refuses our proof first (it checks before it proves anything).
      assert.match(err.message, /refused our proof/);
      return true;
    });
    await waitFor('refusal', () => s.refusals.length === 1);
    assert.match(s.refusals[0]!.why, /authentication failed/);
    assert.equal(s.links.length, 0);
  } finally {
    await s.close();
  }
});

test('unauthenticated garbage is refused with a reason, closed, and leaves the server working', async () => {
  const s = await server();
  const junk = Buffer.alloc(1024);
  for (let i = 0; i < junk.length; i++) junk[i] = (i * 37 + 11) & 0xff;
  const cases: [string, string | Buffer, RegExp][] = [
    ['null', 'null\n', /^handshake: schema: \(root\): .*expected object, received null/],
    ['[]', '[]\n', /^handshake: schema: \(root\): .*expected object, received array/],
    ['"x"', '"x"\n', /^handshake: schema: \(root\): .*expected object, received string/],
    ['{}', '{}\n', /^handshake: schema: name: .*expected string, received undefined/],
    ['{"name":null}', '{"name":null}\n', /^handshake: schema: name: .*expected string, received null/],
    ['100 KB without newline', 'A'.repeat(100 * 1024), /^handshake: line longer than 4096 bytes$/],
    ['binary junk', Buffer.concat([junk, Buffer.from('\n')]), /^handshake: not JSON$/],
    ['wrong types', '{"name":"a","nonce":12345,"proof":true}\n', /^handshake: schema: nonce: .*expected string, received number; proof: .*expected string, received boolean$/],
    ['bad nonce and name', `{"name":"a b","nonce":"abc","proof":"${'0'.repeat(64)}"}\n`, /^handshake: schema: name: .*; nonce: expected 32 lower-case hex digits$/],
    ['HTTP', 'GET / HTTP/1.0\r\n\r\n', /^handshake: not JSON$/],
  ];
  try {
    for (const [what, payload, expected] of cases) {
      const r = await raw(s.port);
      r.sock.write(payload);
      await waitFor(`${what}: closed by the server`, () => r.closed);
      const whys = s.refusalsFrom(r.local);
      assert.equal(whys.length, 1, `${what}: one refusal (got ${JSON.stringify(whys)})`);
      assert.match(whys[0]!, expected, what);
      assert.equal(r.lines.length, 1, `${what}: only the hello was sent`);
    }
    assert.equal(s.links.length, 0);
    // The server is still fine.
    const c = await client(s.port);
    c.link.send(ack(1));
    await waitFor('message', () => s.got.length === 1);
    assert.deepEqual(s.got, [ack(1)]);
    c.link.close();
    assert.equal(s.links.length, 1);
  } finally {
    await s.close();
  }
});

test('silence is refused when the handshake times out', async () => {
  const s = await server({ handshakeTimeoutMs: 150 });
  try {
    const r = await raw(s.port);
    await waitFor('closed', () => r.closed);
    assert.deepEqual(s.refusalsFrom(r.local), ['handshake timed out after 150 ms']);
    assert.equal(s.links.length, 0);
  } finally {
    await s.close();
  }
});

test('an onRefuse that throws does not break the server', async () => {
  let calls = 0;
  const s = await server({
    onRefuse: () => {
      calls++;
      throw new Error('logger broke');
    },
  });
  try {
    const r = await raw(s.port);
    r.sock.write('null\n');
    await waitFor('closed', () => r.closed);
    assert.equal(calls, 1);
    const c = await client(s.port);
    c.link.send(ack(1));
    await waitFor('message', () => s.got.length === 1);
    c.link.close();
  } finally {
    await s.close();
  }
});

test('after the handshake, every forged, replayed, reordered or invalid line is refused and closes the link', async () => {
  const s = await server();
  type Session = Awaited<ReturnType<typeof rawSession>>;
  const json = (m: unknown) => JSON.stringify(m);
  const cases: [string, (x: Session) => string[], string | RegExp, number][] = [
    // [what, lines to send, reason, messages accepted before the refusal]
    ['bad MAC', (x) => [x.codec.encode(ack(1)).replace(/^./, (c) => (c === '0' ? '1' : '0'))], 'bad MAC', 0],
    ['replayed line', (x) => { const l = x.codec.encode(ack(1)); return [l, l]; }, 'sequence 1, expected 2 (replay or loss)', 1],
    ['skipped seq', (x) => { x.codec.encode(ack(1)); return [x.codec.encode(ack(2))]; }, 'sequence 2, expected 1 (replay or loss)', 0],
    ['reordered', (x) => { const a = x.codec.encode(ack(1)); const b = x.codec.encode(ack(2)); return [b, a]; }, 'sequence 2, expected 1 (replay or loss)', 0],
    ['other direction', (x) => [signFrame(x.key, 's2c', 1, json(ack(1)))], 'bad MAC', 0],
    ['valid MAC, not JSON', (x) => [signFrame(x.key, 'c2s', 1, '{"t":"hback",')], 'not JSON', 0],
    ['valid MAC and JSON, unknown type', (x) => [signFrame(x.key, 'c2s', 1, json({ t: 'nope' }))], 'schema: t: invalid discriminator', 0],
    ['valid MAC and JSON, wrong field type', (x) => [x.codec.encode(ack(1)), signFrame(x.key, 'c2s', 2, json({ t: 'hback', seq: 'x' }))], /^schema: seq: .*expected number, received string$/, 1],
    ['valid MAC, JSON null', (x) => [signFrame(x.key, 'c2s', 1, 'null')], /^schema: \(root\): /, 0],
    ['bad format', () => ['hello world'], 'bad format (expected "<mac> <seq> <json>")', 0],
    ['seq with leading zero', (x) => [x.codec.encode(ack(1)).replace(' 1 ', ' 01 ')], 'bad format (expected "<mac> <seq> <json>")', 0],
  ];
  try {
    for (const [what, lines, reason, accepted] of cases) {
      const before = s.got.length;
      const x = await rawSession(s.port);
      await waitFor(`${what}: link`, () => s.links.some((l) => l.remote === x.local));
      const link = s.links.find((l) => l.remote === x.local)!;
      const closed = new Promise<string>((r) => link.once('close', r));
      x.sock.write(lines(x).map((l) => l + '\n').join(''));
      await waitFor(`${what}: closed by the server`, () => x.closed);
      const whys = s.refusalsFrom(x.local);
      assert.equal(whys.length, 1, `${what}: one refusal (got ${JSON.stringify(whys)})`);
      if (typeof reason === 'string') assert.equal(whys[0], reason, what);
      else assert.match(whys[0]!, reason, what);
      assert.equal(s.refusals.find((r) => r.remote === x.local)!.peer, 'a');
      assert.equal(await closed, `refused: ${whys[0]}`);
      assert.equal(link.isOpen, false);
      assert.equal(s.got.length - before, accepted, `${what}: messages emitted`);
      for (const m of s.got.slice(before)) assert.deepEqual(m, ack(1));
    }
    // A line that grows past the limit without a newline.
    const x = await rawSession(s.port);
    x.sock.write('0'.repeat(MAX_LINE_BYTES + 100));
    await waitFor('too long: closed', () => x.closed);
    assert.deepEqual(s.refusalsFrom(x.local), [`line longer than ${MAX_LINE_BYTES} bytes`]);
    // Still serving.
    const c = await client(s.port);
    c.link.send(ack(7));
    await waitFor('message', () => s.got.at(-1)?.t === 'hback' && (s.got.at(-1) as { seq: number }).seq === 7);
    c.link.close();
  } finally {
    await s.close();
  }
});

test('frames pipelined right behind the handshake are delivered in order', async () => {
  const s = await server();
  try {
    const r = await raw(s.port);
    await waitFor('hello', () => r.lines.length >= 1);
    const hello = JSON.parse(r.lines[0]!) as { nonce: string };
    const nc = newNonce();
    const codec = new FrameCodec<PeerMessage, PeerMessage>(sessionKey(SECRET, hello.nonce, nc, 'a', 'b'), 'c2s', peerMessageSchema);
    r.sock.write(
      JSON.stringify({ name: 'a', nonce: nc, proof: handshakeProof(SECRET, 'client', hello.nonce, nc, 'a') }) + '\n' + codec.encode(ack(1)) + '\n' + codec.encode(ack(2)) + '\n',
    );
    await waitFor('2 messages', () => s.got.length === 2);
    assert.deepEqual(s.got, [ack(1), ack(2)]);
    r.sock.destroy();
  } finally {
    await s.close();
  }
});

test('a line recorded on one session is refused on another session with the same secret', async () => {
  const s = await server();
  try {
    const one = await rawSession(s.port);
    const recorded = one.codec.encode(ack(1));
    one.sock.write(recorded + '\n');
    await waitFor('accepted on its own session', () => s.got.length === 1);
    const two = await rawSession(s.port);
    two.sock.write(recorded + '\n');
    await waitFor('closed', () => two.closed);
    assert.deepEqual(s.refusalsFrom(two.local), ['bad MAC']);
    assert.equal(s.got.length, 1);
    assert.equal(one.closed, false);
    one.sock.destroy();
  } finally {
    await s.close();
  }
});

test('FrameCodec: round trip, seq numbering, and refusals without any network', () => {
  const [ns, nc] = [newNonce(), newNonce()];
  const key = sessionKey(SECRET, ns, nc, 'a', 'b');
  const c = new FrameCodec<PeerMessage, PeerMessage>(key, 'c2s', peerMessageSchema, peerMessageSchema);
  const sv = new FrameCodec<PeerMessage, PeerMessage>(key, 's2c', peerMessageSchema, peerMessageSchema);
  const msgs: PeerMessage[] = [
    ack(1),
    { t: 'req', id: 'r1', body: { k: 'resync-abort', why: 'unicode ✓ and "quotes"\nand a newline' } },
    { t: 'rep', re: 'r1', ok: true },
  ];
  for (const [i, m] of msgs.entries()) {
    const line = c.encode(m);
    assert.ok(!line.includes('\n'));
    assert.match(line, new RegExp(`^[0-9a-f]{64} ${i + 1} \\{`));
    assert.deepEqual(sv.decode(line), { ok: true, msg: m });
  }
  assert.equal(c.sent, 3);
  assert.equal(sv.received, 3);
  const back = sv.encode(ack(9));
  assert.match(back, /^[0-9a-f]{64} 1 /);
  assert.deepEqual(c.decode(back), { ok: true, msg: ack(9) });

  // A line cannot be reflected back to its sender.
  const own = new FrameCodec<PeerMessage, PeerMessage>(key, 'c2s', peerMessageSchema);
  const reflected = new FrameCodec<PeerMessage, PeerMessage>(key, 'c2s', peerMessageSchema);
  assert.deepEqual(reflected.decode(own.encode(ack(1))), { ok: false, why: 'bad MAC' });

  // Another session (same secret and names, fresh nonces) has another key.
  const other = new FrameCodec<PeerMessage, PeerMessage>(sessionKey(SECRET, newNonce(), newNonce(), 'a', 'b'), 's2c', peerMessageSchema);
  assert.deepEqual(other.decode(c.encode(ack(1))), { ok: false, why: 'bad MAC' });

  // A refusal is final.
  const d = new FrameCodec<PeerMessage, PeerMessage>(key, 's2c', peerMessageSchema);
  const e = new FrameCodec<PeerMessage, PeerMessage>(key, 'c2s', peerMessageSchema);
  const l1 = e.encode(ack(1));
  const l2 = e.encode(ack(2));
  assert.deepEqual(d.decode(l2), { ok: false, why: 'sequence 2, expected 1 (replay or loss)' });
  assert.equal(d.decode(l1).ok, false);
  assert.equal(d.refused, 'sequence 2, expected 1 (replay or loss)');

  // Too long, checked first.
  const f = new FrameCodec<PeerMessage, PeerMessage>(key, 's2c', peerMessageSchema);
  assert.deepEqual(f.decode('x'.repeat(MAX_LINE_BYTES + 1)), { ok: false, why: `line longer than ${MAX_LINE_BYTES} bytes (${MAX_LINE_BYTES + 1})` });
});

test('FrameCodec.encode refuses what the other end would refuse, consuming no seq', () => {
  const key = sessionKey(SECRET, newNonce(), newNonce(), 'a', 'b');
  const c = new FrameCodec<PeerMessage, PeerMessage>(key, 'c2s', peerMessageSchema, peerMessageSchema);
  const sv = new FrameCodec<PeerMessage, PeerMessage>(key, 's2c', peerMessageSchema);
  assert.throws(() => c.encode({ t: 'hback', seq: -1 }), (err: unknown) => err instanceof LockstepError && /schema: seq:/.test(err.message));
  assert.throws(() => c.encode({ t: 'req', id: 'x', body: { k: 'resync-abort', why: 'y'.repeat(MAX_LINE_BYTES) } }), LockstepError);
  const loose = new FrameCodec<unknown, unknown>(key, 'c2s', peerMessageSchema);
  assert.throws(() => loose.encode({ big: 'y'.repeat(MAX_LINE_BYTES) }), /message too long/);
  assert.throws(() => loose.encode(10n), /not JSON/);
  assert.throws(() => loose.encode(undefined), /not JSON/);
  assert.equal(c.sent, 0);
  assert.deepEqual(sv.decode(c.encode(ack(1))), { ok: true, msg: ack(1) });
});

test('Link.send throws on an invalid message and the link carries on', async () => {
  const s = await server();
  try {
    const c = await client(s.port);
    assert.throws(() => c.link.send({ t: 'hback', seq: 1.5 }), LockstepError);
    assert.equal(c.link.send(ack(1)), true);
    await waitFor('message', () => s.got.length === 1);
    assert.deepEqual(s.got, [ack(1)]);
    assert.deepEqual(s.refusals, []);
    c.link.close();
  } finally {
    await s.close();
  }
});

test(`one address's silent connections never keep another's out: ${MAX_HANDSHAKES_PER_SOURCE} per address (a newer drops its oldest), ${MAX_HANDSHAKES} in all (a newer drops the heaviest address's oldest)`, async () => {
  const s = await server({ handshakeTimeoutMs: 10_000 });
  const hostile: Awaited<ReturnType<typeof raw>>[] = [];
  try {
    // 64 silent connections from one address: it keeps its share only, the newest.
    for (let i = 0; i < MAX_HANDSHAKES; i++) hostile.push(await raw(s.port, '127.0.0.2'));
    await waitFor('all but the share dropped', () => hostile.filter((r) => !r.closed).length === MAX_HANDSHAKES_PER_SOURCE);
    assert.ok(hostile.slice(-MAX_HANDSHAKES_PER_SOURCE).every((r) => !r.closed), 'the newest kept');
    assert.equal(s.refusals.filter((r) => r.why === `dropped: a newer connection from 127.0.0.2, which may hold ${MAX_HANDSHAKES_PER_SOURCE} in the handshake`).length, MAX_HANDSHAKES - MAX_HANDSHAKES_PER_SOURCE);
    // The peer, from its own address, gets through at once.
    const c = await client(s.port, 'a', SECRET, '127.0.0.1');
    c.link.send(ack(1));
    await waitFor('message', () => s.got.length === 1);
    c.link.close();
    // Many addresses, each its share: past the total, the newest still gets a slot, taken from the heaviest.
    for (let host = 3; host <= 10; host++) for (let i = 0; i < MAX_HANDSHAKES_PER_SOURCE; i++) hostile.push(await raw(s.port, `127.0.0.${host}`));
    await waitFor('the total held', () => hostile.filter((r) => !r.closed).length === MAX_HANDSHAKES);
    const d = await client(s.port, 'a', SECRET, '127.0.0.1');
    d.link.send(ack(2));
    await waitFor('message', () => s.got.length === 2);
    d.link.close();
    assert.ok(s.refusals.some((r) => /^dropped: 64 connections in the handshake, 127\.0\.0\.\d+ holding the most$/.test(r.why)), JSON.stringify(s.refusals.slice(-3)));
  } finally {
    for (const r of hostile) r.sock.destroy();
    await s.close();
  }
});

test(`a silent connection is closed ${SERVER_HANDSHAKE_TIMEOUT_MS} ms after accept; a source the server does not admit gets nothing, not even a hello`, async () => {
  const s = await server({ admit: (a) => (a === '127.0.0.3' ? 'not a trusted peer address' : undefined) });
  try {
    const t0 = performance.now();
    const silent = await raw(s.port, '127.0.0.2');
    await waitFor('closed', () => silent.closed, SERVER_HANDSHAKE_TIMEOUT_MS + 1000);
    const ms = performance.now() - t0;
    assert.ok(ms >= SERVER_HANDSHAKE_TIMEOUT_MS - 50 && ms < SERVER_HANDSHAKE_TIMEOUT_MS + 500, `closed after ${ms} ms`);
    assert.equal(silent.lines.length, 1, 'its hello only');
    const stranger = await raw(s.port, '127.0.0.3');
    await waitFor('closed', () => stranger.closed);
    assert.deepEqual(stranger.lines, []);
    assert.deepEqual(s.refusalsFrom(stranger.local), ['not a trusted peer address']);
    await assert.rejects(client(s.port, 'a', SECRET, '127.0.0.3'), LinkAuthError);
  } finally {
    await s.close();
  }
});

test('HandshakeAdmission: the share of a source, the total, and who is dropped', () => {
  const dropped: string[] = [];
  const adm = new HandshakeAdmission(4, 2);
  const take = (src: string, tag: string) => adm.admit(src, (why) => dropped.push(`${tag}: ${why}`));
  take('x', 'x1');
  const x2 = take('x', 'x2');
  take('x', 'x3');
  assert.deepEqual(dropped, ['x1: dropped: a newer connection from x, which may hold 2 in the handshake']);
  take('y', 'y1');
  take('y', 'y2');
  assert.equal(adm.size, 4);
  take('z', 'z1');
  assert.equal(dropped.at(-1), 'x2: dropped: 4 connections in the handshake, x holding the most', 'a tie: the older oldest');
  x2(); // a connection already dropped: its release is harmless
  assert.deepEqual([adm.size, adm.of('x'), adm.of('y'), adm.of('z')], [4, 1, 2, 1]);
});

/** A fake server that runs `script` on each accepted socket. */
async function fakeServer(script: (sock: net.Socket, lines: () => Promise<string>) => void | Promise<void>) {
  const srv = net.createServer((sock) => {
    sock.on('error', () => {});
    let buf = '';
    const waiting: ((l: string) => void)[] = [];
    const queue: string[] = [];
    sock.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const l = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const w = waiting.shift();
        if (w) w(l);
        else queue.push(l);
      }
    });
    const next = () => (queue.length ? Promise.resolve(queue.shift()!) : new Promise<string>((r) => waiting.push(r)));
    void script(sock, next);
  });
  await new Promise<void>((r) => srv.listen({ host: HOST, port: 0 }, () => r()));
  return { srv, port: (srv.address() as net.AddressInfo).port, close: () => new Promise<void>((r) => srv.close(() => r())) };
}

test('the client refuses a server that does not speak lockstep/3, or talks garbage', async () => {
  const old = await fakeServer((sock) => void sock.write(JSON.stringify({ hello: 'lockstep/2', nonce: newNonce() }) + '\n'));
  const junk = await fakeServer((sock) => void sock.write('SSH-2.0-OpenSSH_9.2\r\n'));
  const mute = await fakeServer(() => {});
  const liar = await fakeServer(async (sock, next) => {
    sock.write(JSON.stringify({ hello: PROTOCOL, nonce: newNonce() }) + '\n');
    await next();
    sock.write(JSON.stringify({ name: 'b', proof: 'f'.repeat(64) }) + '\n');
  });
  try {
    await assert.rejects(connectLink({ name: 'a', secret: SECRET, host: HOST, port: old.port, inbound: peerMessageSchema }), (err: unknown) => {
      assert.ok(err instanceof LinkAuthError);
      assert.match(err.message, /speaks "lockstep\/2", we speak lockstep\/3/);
      return true;
    });
    await assert.rejects(connectLink({ name: 'a', secret: SECRET, host: HOST, port: junk.port, inbound: peerMessageSchema }), /is not a lockstep agent or witness \(handshake: not JSON\)/);
    await assert.rejects(connectLink({ name: 'a', secret: SECRET, host: HOST, port: mute.port, inbound: peerMessageSchema, timeoutMs: 150 }), /handshake timed out after 150 ms/);
    await assert.rejects(connectLink({ name: 'a', secret: SECRET, host: HOST, port: liar.port, inbound: peerMessageSchema }), (err: unknown) => {
      assert.ok(err instanceof LinkAuthError);
      assert.match(err.message, /could not prove the shared secret \(claimed name "b"\)/);
      return true;
    });
  } finally {
    await Promise.all([old.close(), junk.close(), mute.close(), liar.close()]);
  }
});

test('the client side refuses a forged line from the server too', async () => {
  const fake = await fakeServer(async (sock, next) => {
    const ns = newNonce();
    sock.write(JSON.stringify({ hello: PROTOCOL, nonce: ns }) + '\n');
    const auth = JSON.parse(await next()) as { name: string; nonce: string };
    const key = sessionKey(SECRET, ns, auth.nonce, auth.name, 'b');
    const codec = new FrameCodec<unknown, PeerMessage>(key, 's2c', peerMessageSchema);
    // Proof, one good frame, then a frame MACed as if the client had sent it.
    sock.write(
      JSON.stringify({ name: 'b', proof: handshakeProof(SECRET, 'server', ns, auth.nonce, 'b') }) + '\n' + codec.encode(ack(1)) + '\n' + signFrame(key, 'c2s', 2, JSON.stringify(ack(2))) + '\n',
    );
  });
  try {
    const c = await client(fake.port);
    assert.equal(c.link.peer, 'b');
    await waitFor('closed', () => c.closes.length === 1);
    assert.deepEqual(c.got, [ack(1)]);
    assert.deepEqual(c.refusals, ['bad MAC']);
    assert.deepEqual(c.closes, ['refused: bad MAC']);
    assert.equal(c.link.isOpen, false);
  } finally {
    await fake.close();
  }
});

test("an agent's own links (pairs without daemons): only the peer, from its address on the path, gets a handshake", async (t) => {
  const { OwnLinks } = await import('../../src/node/peer-channel.js');
  const pino = (await import('pino')).default;
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.31', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const b = new OwnLinks({ name: 'b', peer: 'a', secret: SECRET, port, paths: [{ local: '127.0.0.31', remote: '127.0.0.32' }], heartbeatIntervalMs: 100, heartbeatTimeoutMs: 500, log: pino({ level: 'silent' }) });
  const up: boolean[] = [];
  await b.open({ link: (_i, u) => up.push(u), message: () => {} });
  t.after(() => b.close());
  // With the agents' secret, from another address: not even a hello.
  await assert.rejects(connectLink({ name: 'a', secret: SECRET, host: '127.0.0.31', port, localAddress: '127.0.0.33', inbound: peerMessageSchema }), /is not a lockstep agent or witness/);
  // The peer, from its own address: a link.
  const l = await connectLink({ name: 'a', secret: SECRET, host: '127.0.0.31', port, localAddress: '127.0.0.32', inbound: peerMessageSchema });
  await waitFor('b sees its peer', () => up.includes(true));
  l.close();
});
