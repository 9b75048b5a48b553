/**
 * The daemon's heartbeat sessions (src/node/host-sessions.ts) on loopback
 * addresses: one session per pair of hosts carries every VM they share, a
 * VM's path is up only while the peer host carries that VM too, a VM's
 * messages reach that VM's agent only and only from its peer host, and a
 * host without the pair's secret gets nothing. The secret itself
 * (pairSecret: ECDH of one host's key with the other's certificate) is
 * checked with identities made as host init makes them.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import pino from 'pino';
import { HostSessions } from '../../src/node/host-sessions.js';
import { connectLink } from '../../src/node/link.js';
import type { PeerChannel } from '../../src/node/peer-channel.js';
import { sessionMessageSchema, type PeerMessage, type SessionMessage } from '../../src/node/wire.js';
import { makeIdentity, pairSecret } from '../../src/daemon/identity.js';

const ADDR = { a: '127.0.0.21', b: '127.0.0.22', c: '127.0.0.23' } as const;
type HostName = keyof typeof ADDR;

/** One secret per pair of hosts; c shares one with b only. */
const SECRETS: Record<string, string> = { 'a|b': 'secret of a and b, 0123456789', 'b|c': 'secret of b and c, 0123456789' };
const secretOf = (x: string, y: string) => SECRETS[[x, y].sort().join('|')];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A port free on every test address (each host listens on its own address, all at the same port, as real hosts do). */
async function freePort(): Promise<number> {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 30000);
    const free = await Promise.all(
      Object.values(ADDR).map(
        (host) =>
          new Promise<boolean>((resolve) => {
            const s = net.createServer();
            s.once('error', () => resolve(false));
            s.listen(port, host, () => s.close(() => resolve(true)));
          }),
      ),
    );
    if (free.every(Boolean)) return port;
  }
}

function hostSessions(t: TestContext, host: HostName, port: number): HostSessions {
  const s = new HostSessions({ host, port, secretFor: (peer) => secretOf(host, peer), log: pino({ level: 'silent' }) });
  t.after(() => s.close());
  return s;
}

interface Agent {
  channel: PeerChannel;
  up: boolean[];
  got: PeerMessage[];
}

/** VM `vm`'s agent on host `me`, its peer on `peer`, one path. */
async function agent(sessions: HostSessions, vm: string, me: HostName, peer: HostName, port: number): Promise<Agent> {
  const channel = sessions.channel({ vm, peer, peerPort: port, paths: [{ local: ADDR[me], remote: ADDR[peer] }], heartbeatTimeoutMs: 1000 });
  const a: Agent = { channel, up: [false], got: [] };
  await channel.open({ link: (i, up) => (a.up[i] = up), message: (_i, m) => a.got.push(m) });
  return a;
}

const ack = (seq: number): PeerMessage => ({ t: 'hback', seq });

test('one session per pair of hosts carries every VM they share, each VM hearing only its own peer agent', async (t) => {
  const port = await freePort();
  const [a, b] = [hostSessions(t, 'a', port), hostSessions(t, 'b', port)];
  const web = { a: await agent(a, 'web', 'a', 'b', port), b: await agent(b, 'web', 'b', 'a', port) };
  const db = { a: await agent(a, 'db', 'a', 'b', port), b: await agent(b, 'db', 'b', 'a', port) };
  await waitFor('both VMs up on both hosts', () => web.a.up[0]! && web.b.up[0]! && db.a.up[0]! && db.b.up[0]!);
  // One session, both VMs on it, as each host says.
  for (const s of [a, b]) {
    const st = s.status();
    assert.equal(st.length, 1, JSON.stringify(st));
    assert.deepEqual(st[0]!.vms, ['db', 'web']);
    assert.equal(st[0]!.up, true);
  }
  web.a.channel.send('all', ack(1));
  db.b.channel.send(0, ack(2));
  web.a.channel.send('any', ack(3));
  await waitFor('the messages', () => web.b.got.length === 2 && db.a.got.length === 1);
  assert.deepEqual(web.b.got, [ack(1), ack(3)]);
  assert.deepEqual(db.a.got, [ack(2)]);
  await sleep(100);
  assert.deepEqual(web.a.got, [], 'nothing comes back to its sender');
  assert.deepEqual(db.b.got, [], "db's agent on b gets none of web's messages");
});

test("a VM's path is up only while its peer host carries it too; one VM leaving leaves the other up", async (t) => {
  const port = await freePort();
  const [a, b] = [hostSessions(t, 'a', port), hostSessions(t, 'b', port)];
  const web = { a: await agent(a, 'web', 'a', 'b', port), b: await agent(b, 'web', 'b', 'a', port) };
  const dbA = await agent(a, 'db', 'a', 'b', port);
  await waitFor('web up', () => web.a.up[0]! && web.b.up[0]!);
  await sleep(300);
  assert.equal(dbA.up[0], false, "db's agent on a sees no peer agent while b has none");
  dbA.channel.send('all', ack(9)); // dropped: no path up
  const dbB = await agent(b, 'db', 'b', 'a', port);
  await waitFor('db up once b carries it', () => dbA.up[0]! && dbB.up[0]!);
  assert.deepEqual(dbB.got, [], 'a message sent while the path was down is not delivered later');
  // db's agent on b stops: a's db path goes down, web's stays up.
  dbB.channel.close();
  await waitFor("db's path down on a", () => !dbA.up[0]);
  assert.equal(web.a.up[0], true);
  web.b.channel.send('all', ack(4));
  await waitFor("web's message", () => web.a.got.length === 1);
  assert.deepEqual(b.status()[0]!.vms, ['web']);
});

test('a host paired with two others: one session to each, each carrying the VM those two share', async (t) => {
  const port = await freePort();
  SECRETS['a|c'] = 'secret of a and c, 0123456789';
  t.after(() => delete SECRETS['a|c']);
  const [a, b, c] = [hostSessions(t, 'a', port), hostSessions(t, 'b', port), hostSessions(t, 'c', port)];
  const web = { a: await agent(a, 'web', 'a', 'b', port), b: await agent(b, 'web', 'b', 'a', port) };
  const db = { a: await agent(a, 'db', 'a', 'c', port), c: await agent(c, 'db', 'c', 'a', port) };
  await waitFor('both VMs up', () => web.a.up[0]! && web.b.up[0]! && db.a.up[0]! && db.c.up[0]!);
  assert.deepEqual(
    a.status().map((x) => [x.peer, x.up, x.vms]),
    [
      ['b', true, ['web']],
      ['c', true, ['db']],
    ],
  );
  web.b.channel.send('all', ack(1));
  db.c.channel.send('all', ack(2));
  await waitFor('the messages', () => web.a.got.length === 1 && db.a.got.length === 1);
  assert.deepEqual([web.a.got, db.a.got], [[ack(1)], [ack(2)]]);
  c.close(); // host c lost: db loses its peer, web keeps its
  await waitFor("db's path down", () => !db.a.up[0]);
  assert.equal(web.a.up[0], true);
});

test('a session lost takes every VM on it down at once; the hosts dial it again', async (t) => {
  const port = await freePort();
  const a1 = new HostSessions({ host: 'a', port, secretFor: (peer) => secretOf('a', peer), log: pino({ level: 'silent' }) });
  const b = hostSessions(t, 'b', port);
  const onB = [await agent(b, 'web', 'b', 'a', port), await agent(b, 'db', 'b', 'a', port)];
  await agent(a1, 'web', 'a', 'b', port);
  await agent(a1, 'db', 'a', 'b', port);
  await waitFor('up', () => onB.every((x) => x.up[0]));
  a1.close(); // host a's daemon ends
  await waitFor('both VMs down on b', () => onB.every((x) => !x.up[0]), 2000);
  const a2 = hostSessions(t, 'a', port); // and starts again
  await agent(a2, 'web', 'a', 'b', port);
  await agent(a2, 'db', 'a', 'b', port);
  await waitFor('both up again', () => onB.every((x) => x.up[0]));
});

test("a host without the pair's secret gets no session; a trusted host reaches only the VMs it shares, and only from a peer's address", async (t) => {
  const port = await freePort();
  const [a, b] = [hostSessions(t, 'a', port), hostSessions(t, 'b', port)];
  const webB = await agent(b, 'web', 'b', 'a', port);
  await agent(a, 'web', 'a', 'b', port);
  await waitFor('web up', () => webB.up[0]!);
  const trusted = { name: 'c', secret: secretOf('b', 'c')!, host: ADDR.b, port, inbound: sessionMessageSchema, outbound: sessionMessageSchema };
  // c shares a secret with b, and no VM: from its own address it gets no handshake at all (not even a hello).
  await assert.rejects(connectLink<SessionMessage, SessionMessage>({ ...trusted, localAddress: ADDR.c }), /is not a lockstep agent or witness/);
  // From a's address (a path of web's), with its own name: the handshake succeeds, the session does not.
  const link = await connectLink<SessionMessage, SessionMessage>({ ...trusted, localAddress: ADDR.a });
  const closed: string[] = [];
  link.on('close', (why) => closed.push(why));
  link.send({ t: 'join', vm: 'web' });
  link.send({ t: 'vm', vm: 'web', m: { t: 'hback', seq: 666 } });
  await waitFor('closed by b', () => closed.length === 1);
  await sleep(100);
  assert.deepEqual(webB.got, [], "web's agent on b hears nothing from c, which is not web's peer");
  // c claiming to be a, with c's secret: refused at the handshake.
  await assert.rejects(
    connectLink({ name: 'a', secret: secretOf('b', 'c')!, host: ADDR.b, port, localAddress: ADDR.a, inbound: sessionMessageSchema }),
    /could not prove|refused our proof/,
  );
  // A host b does not trust at all, from a's address.
  await assert.rejects(connectLink({ name: 'd', secret: 'a secret of its own, 0123456', host: ADDR.b, port, localAddress: ADDR.a, inbound: sessionMessageSchema }), /refused our proof/);
  assert.equal(webB.up[0], true);
});

test('a cut session comes back within a second while another address holds every handshake slot it can, and refusals are logged at a bounded rate', async (t) => {
  const port = await freePort();
  const lines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (l: string) => lines.push(l) });
  const a = hostSessions(t, 'a', port);
  const b = new HostSessions({ host: 'b', port, secretFor: (peer) => secretOf('b', peer), log });
  t.after(() => b.close());
  const webA = await agent(a, 'web', 'a', 'b', port);
  const webB = await agent(b, 'web', 'b', 'a', port);
  await waitFor('web up', () => webA.up[0]! && webB.up[0]!);
  // A hostile process on host c keeps 200 silent connections open to b's session port, reopening each at once.
  let stop = false;
  const open = new Set<net.Socket>();
  const hammer = () => {
    if (stop) return;
    const s = net.createConnection({ host: ADDR.b, port, localAddress: ADDR.c });
    open.add(s);
    s.on('error', () => {});
    s.on('close', () => {
      open.delete(s);
      setImmediate(hammer);
    });
  };
  for (let i = 0; i < 200; i++) hammer();
  t.after(() => {
    stop = true;
    for (const s of open) s.destroy();
  });
  await sleep(500);
  // The session is cut (its link closed by b's side, as an idle timeout would), and must come back.
  const t0 = performance.now();
  const st = (b as unknown as { sessions: Map<string, { link?: { close(why: string): void } }> }).sessions;
  for (const s of st.values()) s.link?.close('cut by the test');
  await waitFor('down', () => !webA.up[0]);
  await waitFor('back', () => webA.up[0]! && webB.up[0]!, 5000);
  const backMs = performance.now() - t0;
  assert.ok(backMs < 1500, `back after ${Math.round(backMs)} ms`);
  t.diagnostic(`session back ${Math.round(backMs)} ms after the cut`);
  webA.channel.send('all', ack(7));
  await waitFor('a message through', () => webB.got.length === 1);
  // Thousands refused; at most 20 lines per 10 s, the first after a gap saying how many were not logged.
  const refusals = lines.filter((l) => l.includes('heartbeat session: refused'));
  assert.ok(refusals.length <= 20, `${refusals.length} lines`);
  assert.ok(refusals.some((l) => l.includes('is no peer host') ), refusals[0]);
});

test('pairSecret: the same on both hosts of a pair, different for every other pair', async () => {
  const [a, b, c] = await Promise.all([makeIdentity('a', ['10.0.0.1']), makeIdentity('b', ['10.0.0.2']), makeIdentity('c', ['10.0.0.3'])]);
  const ab = pairSecret(a.keyPem, 'a', b.certPem, 'b');
  assert.match(ab, /^[0-9a-f]{64}$/);
  assert.equal(pairSecret(b.keyPem, 'b', a.certPem, 'a'), ab);
  assert.notEqual(pairSecret(a.keyPem, 'a', c.certPem, 'c'), ab);
  assert.notEqual(pairSecret(c.keyPem, 'c', b.certPem, 'b'), ab);
  assert.equal(pairSecret(c.keyPem, 'c', b.certPem, 'b'), pairSecret(b.keyPem, 'b', c.certPem, 'c'));
  assert.throws(() => pairSecret(a.keyPem, 'a', 'not a certificate', 'b'), /cannot derive the heartbeat key shared with host "b"/);
});
