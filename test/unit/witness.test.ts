import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Witness, WitnessClient, WitnessConnection, MAX_QUEUED, witnessKeyFor, witnessClientName, type WitnessOptions } from '../../src/node/witness.js';
import { listenLinks, handshakeProof, sessionKey, signFrame, newNonce, PROTOCOL, type Link } from '../../src/node/link.js';
import { witnessReplySchema, witnessRequestSchema, type WitnessReply, type WitnessRequest } from '../../src/node/wire.js';
import type { Epoch } from '../../src/pair/epoch.js';
import { LockstepError } from '../../src/util/errors.js';

const SECRET = 'a shared secret for tests';
const HOST = '127.0.0.1';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

const E = (run: string, gen: number, by = 'up'): Epoch => ({ run, gen, by });

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-witness-'));
}

/** A started witness that records its log, and clients for it, all closed by `done()`. */
async function setup(o: Partial<WitnessOptions> = {}) {
  const logs: string[] = [];
  const w = new Witness({ secret: SECRET, host: HOST, port: 0, graceMs: 0, log: (m) => logs.push(m), ...o });
  await w.start();
  const clients: WitnessClient[] = [];
  const client = (name: string, secret = SECRET) => {
    const c = new WitnessClient({ name, secret, host: HOST, port: w.port });
    clients.push(c);
    return c;
  };
  return {
    w,
    logs,
    client,
    async done() {
      for (const c of clients) c.close();
      await w.stop();
    },
  };
}

// ---- the lease ----

test('one lease at a time: the holder renews, the other is refused (with holder and remainingMs) until it runs out', async () => {
  const s = await setup();
  const a = s.client('a');
  const b = s.client('b');
  const disk = E('r1', 1);
  try {
    await b.query('r1', 1000, disk); // b holds the run too: a run not on record is granted on the word of both nodes
    const first = await a.acquire(400, disk);
    assert.deepEqual([first.granted, first.holder, first.ttlMs], [true, 'a', 400]);
    const denied = await b.acquire(400, disk);
    assert.deepEqual([denied.granted, denied.holder], [false, 'a']);
    assert.match(denied.reason!, /held by a/);
    assert.ok(denied.remainingMs! > 0 && denied.remainingMs! <= 400, `remainingMs ${denied.remainingMs}`);
    await sleep(200);
    const renewed = await a.acquire(400, disk);
    assert.equal(renewed.granted, true, 'renewal');
    await sleep(250); // past the first lease, within the renewed one
    assert.equal((await b.acquire(400, disk)).granted, false, 'the renewal counts from when it was asked');
    assert.equal((s.w.state().leases.vm?.holder ?? null), 'a');
    await sleep(200);
    assert.equal((s.w.state().leases.vm?.holder ?? null), null, 'ran out');
    const later = await b.acquire(400, disk);
    assert.deepEqual([later.granted, later.holder], [true, 'b'], 'granted once a stopped renewing');
    const lost = await a.acquire(400, disk);
    assert.deepEqual([lost.granted, lost.holder], [false, 'b']);
    assert.ok(s.logs.some((l) => l.startsWith('lease of vm granted to a (400 ms)')) && s.logs.includes('lease of vm granted to b (400 ms)'), s.logs.join('\n'));
  } finally {
    await s.done();
  }
});

test('a released lease can be taken at once; a release by another node releases nothing', async () => {
  const s = await setup();
  const a = s.client('a');
  const b = s.client('b');
  const disk = E('r1', 1);
  try {
    await b.query('r1', 1000, disk);
    assert.equal((await a.acquire(5000, disk)).granted, true);
    await b.release();
    assert.equal((s.w.state().leases.vm?.holder ?? null), 'a', 'b cannot release a\'s lease');
    assert.equal((await b.acquire(5000, disk)).granted, false);
    await a.release();
    assert.equal((s.w.state().leases.vm?.holder ?? null), null);
    const r = await b.acquire(5000, disk);
    assert.deepEqual([r.granted, r.holder], [true, 'b']);
    const q = await a.query('r1');
    assert.equal(q.holder, 'b');
    assert.ok(q.remainingMs > 4000 && q.remainingMs <= 5000);
    assert.deepEqual(q.newest, disk);
  } finally {
    await s.done();
  }
});

test('a (re)started witness grants nothing during its grace period', async () => {
  const s = await setup({ graceMs: 300 });
  const started = performance.now();
  const a = s.client('a');
  try {
    await s.client('b').query('r1', 1000, E('r1', 1));
    const r = await a.acquire(1000, E('r1', 1));
    assert.equal(r.granted, false);
    assert.match(r.reason!, /grace/);
    assert.equal((s.w.state().leases.vm?.holder ?? null), null);
    await sleep(300 - (performance.now() - started) + 20);
    assert.equal((await a.acquire(1000, E('r1', 1))).granted, true, 'granted after the grace period');
  } finally {
    await s.done();
  }
});

test('a node that does not know its disk epoch gets no lease', async () => {
  const s = await setup();
  const a = s.client('a');
  try {
    const r = await a.acquire(1000, null);
    assert.equal(r.granted, false);
    assert.match(r.reason!, /unknown disk/);
    assert.equal((s.w.state().leases.vm?.holder ?? null), null);
  } finally {
    await s.done();
  }
});

// ---- epochs ----

test('epochs: a stale disk (older generation, or the same one begun by another node) gets no lease, ever', async () => {
  const s = await setup();
  const a = s.client('a');
  const b = s.client('b');
  try {
    await b.query('r1', 1000, E('r1', 1));
    const first = await a.acquire(200, E('r1', 1));
    assert.equal(first.granted, true);
    assert.deepEqual(first.newest, E('r1', 1), 'a run the witness did not know of is recorded once both nodes spoke');
    // a writes alone: it records its new epoch with the grant.
    const alone = await a.acquire(200, E('r1', 1), E('r1', 2, 'a'));
    assert.equal(alone.granted, true);
    assert.deepEqual(alone.newest, E('r1', 2, 'a'));
    assert.deepEqual(s.w.state().records, { vm: { r1: E('r1', 2, 'a') } });
    await a.release();
    for (const disk of [E('r1', 1), E('r1', 2, 'b'), E('r1', 2, 'up')]) {
      const r = await b.acquire(200, disk);
      assert.equal(r.granted, false, `disk ${JSON.stringify(disk)}`);
      assert.match(r.reason!, /^stale disk/);
      assert.deepEqual(r.newest, E('r1', 2, 'a'));
    }
    // Nor with a new epoch of its own: its disk misses what a wrote alone.
    const r = await b.acquire(200, E('r1', 1), E('r1', 3, 'b'));
    assert.equal(r.granted, false);
    assert.match(r.reason!, /^stale disk/);
    await sleep(250);
    assert.equal((await b.acquire(200, E('r1', 1))).granted, false, 'still stale with nobody holding the lease');
    assert.equal((s.w.state().leases.vm?.holder ?? null), null);
    assert.deepEqual(s.w.state().records, { vm: { r1: E('r1', 2, 'a') } }, 'refusals record nothing');
    // A disk that caught up (resynced from a) is fine.
    assert.equal((await b.acquire(200, E('r1', 2, 'a'))).granted, true);
  } finally {
    await s.done();
  }
});

test('epochs: `next` is recorded with the grant and granted again for the same node when the answer was lost; bad `next`s are refused', async () => {
  const s = await setup();
  const a = s.client('a');
  const b = s.client('b');
  try {
    await b.query('r1', 1000, E('r1', 1));
    assert.equal((await a.acquire(200, E('r1', 1))).granted, true);
    const next = E('r1', 2, 'a');
    assert.equal((await a.acquire(200, E('r1', 1), next)).granted, true);
    const logged = s.logs.filter((l) => l.includes("newest epoch of vm's run r1: 2/a")).length;
    assert.equal(logged, 1);
    // The answer was lost; a asks again for exactly that epoch, from its old disk.
    const again = await a.acquire(200, E('r1', 1), next);
    assert.deepEqual([again.granted, again.newest], [true, next]);
    assert.equal(s.logs.filter((l) => l.includes("newest epoch of vm's run r1: 2/a")).length, 1, 'nothing new recorded');
    await a.release();

    const refusals: [string, Epoch, Epoch, RegExp][] = [
      ['the same epoch, asked by another node', E('r1', 1), next, /cannot begin an epoch for a/],
      ['an epoch for another node', E('r1', 2, 'a'), E('r1', 3, 'a'), /cannot begin an epoch for a/],
      ['not above the disk', E('r1', 2, 'a'), E('r1', 2, 'b'), /must be a later one/],
      ['another run than the disk', E('r1', 2, 'a'), E('r2', 3, 'b'), /must be a later one/],
      ['not above the newest (from a stale disk)', E('r1', 1), E('r1', 2, 'b'), /^stale disk/],
    ];
    for (const [what, disk, n, reason] of refusals) {
      const r = await b.acquire(200, disk, n);
      assert.equal(r.granted, false, what);
      assert.match(r.reason!, reason, what);
    }
    assert.equal((s.w.state().leases.vm?.holder ?? null), null);
    assert.deepEqual(s.w.state().records, { vm: { r1: next } }, 'refusals record nothing');
    const ok = await b.acquire(200, E('r1', 2, 'a'), E('r1', 3, 'b'));
    assert.deepEqual([ok.granted, ok.newest], [true, E('r1', 3, 'b')]);
  } finally {
    await s.done();
  }
});

test('epochs: runs are apart', async () => {
  const s = await setup();
  const a = s.client('a');
  const b = s.client('b');
  try {
    await b.query('r1', 1000, E('r1', 1));
    assert.equal((await a.acquire(200, E('r1', 1), E('r1', 2, 'a'))).granted, true);
    await a.release();
    assert.equal((await b.acquire(200, E('r1', 1))).granted, false);
    await a.query('r2', 1000, E('r2', 1));
    const other = await b.acquire(200, E('r2', 1));
    assert.deepEqual([other.granted, other.newest], [true, E('r2', 1)], 'a new run of the pair starts its own count');
    assert.deepEqual(s.w.state().records, { vm: { r1: E('r1', 2, 'a'), r2: E('r2', 1) } });
  } finally {
    await s.done();
  }
});

test('epochs: the newest survive a restart of the witness (its own record, and one small file per VM)', async () => {
  const dir = tmpDir();
  const stateFile = path.join(dir, 'witness.json');
  const vmFile = (vm: string) => path.join(dir, 'witness.json.d', `${vm}.json`);
  try {
    let s = await setup({ stateFile });
    const instance = s.w.state().instance;
    try {
      const own = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { format: number; instance: string };
      assert.deepEqual([own.format, own.instance], [2, instance], 'a first start writes its own record: which witness it is');
      assert.ok(s.logs.some((l) => l.includes('a new witness') && l.includes('vouches for no run yet')), s.logs.join('\n'));
      await s.client('b').query('r1', 1000, E('r1', 1));
      assert.equal((await s.client('a').acquire(200, E('r1', 1), E('r1', 2, 'a'))).granted, true);
      assert.deepEqual(JSON.parse(fs.readFileSync(vmFile('vm'), 'utf8')), { vm: 'vm', runs: { r1: E('r1', 2, 'a') } }, 'on disk with the grant');
      await s.client('a').release();
      await s.client('a').query('r2', 1000, E('r2', 1));
      assert.equal((await s.client('b').acquire(200, E('r2', 1))).granted, true);
    } finally {
      await s.done();
    }
    assert.deepEqual(JSON.parse(fs.readFileSync(vmFile('vm'), 'utf8')), { vm: 'vm', runs: { r1: E('r1', 2, 'a'), r2: E('r2', 1) } });
    s = await setup({ stateFile });
    try {
      assert.equal(s.w.state().instance, instance, 'the same witness');
      assert.deepEqual(s.w.state().records, { vm: { r1: E('r1', 2, 'a'), r2: E('r2', 1) } });
      const r = await s.client('b').acquire(200, E('r1', 1));
      assert.equal(r.granted, false, 'still stale after the witness restarted');
      assert.match(r.reason!, /^stale disk: epoch 1\/up, the newest of its run is 2\/a/);
      assert.ok(s.logs.some((l) => l.includes('2 run(s) of 1 VM(s) on record')), s.logs.join('\n'));
    } finally {
      await s.done();
    }
    assert.deepEqual(fs.readdirSync(dir).sort(), ['witness.json', 'witness.json.d'], 'no temporary files left');
    assert.deepEqual(fs.readdirSync(path.join(dir, 'witness.json.d')), ['vm.json']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a witness that lost its record knows it: it grants nothing on one node's word (a runs alone at 2/a, the witness restarts empty, a loses power, b asks)", async () => {
  const dir = tmpDir();
  const stateFile = path.join(dir, 'witness.json');
  try {
    let s = await setup({ stateFile });
    const first = s.w.state().instance;
    try {
      await s.client('b').query('r1', 1000, E('r1', 1));
      // a carries on alone in a new epoch, recorded (acknowledged write 37 goes to its disk only).
      assert.equal((await s.client('a').acquire(1000, E('r1', 1), E('r1', 2, 'a'))).granted, true);
    } finally {
      await s.done();
    }
    // The witness's disk is lost.
    fs.rmSync(stateFile);
    fs.rmSync(`${stateFile}.d`, { recursive: true });
    s = await setup({ stateFile });
    try {
      assert.notEqual(s.w.state().instance, first, 'a new witness: it vouches for no run');
      // a has lost power: it says nothing. b, whose disk misses a's epoch, asks to write alone.
      const b = s.client('b');
      const r = await b.acquire(1000, E('r1', 1), E('r1', 2, 'b'));
      assert.equal(r.granted, false, 'not granted: b might miss acknowledged writes');
      assert.match(r.reason!, /no record of run r1 of vm .*waiting for it/);
      await sleep(50);
      assert.equal((await b.acquire(1000, E('r1', 1), E('r1', 2, 'b'))).granted, false, 'nor later');
      assert.deepEqual(s.w.state().records, {}, 'nothing recorded');
      // a comes back and says which disk it holds: b is stale, a is granted.
      const a = s.client('a');
      const q = await a.query('r1', 1000, E('r1', 2, 'a'));
      assert.equal(q.newest, null);
      const stale = await b.acquire(1000, E('r1', 1), E('r1', 2, 'b'));
      assert.equal(stale.granted, false);
      assert.match(stale.reason!, /^stale disk: epoch 1\/up, and a holds 2\/a/);
      const ok = await a.acquire(1000, E('r1', 2, 'a'), E('r1', 3, 'a'));
      assert.deepEqual([ok.granted, ok.newest], [true, E('r1', 3, 'a')]);
      assert.deepEqual(s.w.state().records, { vm: { r1: E('r1', 3, 'a') } });
    } finally {
      await s.done();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('epochs: the state files of earlier versions ({ newest }, { generations }) are kept as a floor and rewritten in the new format', async () => {
  const dir = tmpDir();
  const stateFile = path.join(dir, 'witness.json');
  try {
    for (const old of [{ generations: { r1: 3, r2: 1 } }, { newest: { r1: E('r1', 3), r2: E('r2', 1) } }]) {
      fs.rmSync(`${stateFile}.d`, { recursive: true, force: true });
      fs.writeFileSync(stateFile, JSON.stringify(old));
      const s = await setup({ stateFile });
      try {
        assert.deepEqual(s.w.state().records, {}, 'whose runs they were, the old file did not say');
        const b = s.client('b');
        const stale = await b.acquire(200, E('r1', 2));
        assert.deepEqual([stale.granted, stale.newest], [false, E('r1', 3)], 'older than the floor: stale for any VM');
        assert.equal((await b.acquire(200, E('r1', 3))).granted, true);
        assert.equal((await b.acquire(200, E('r1', 3), E('r1', 4, 'b'))).granted, true);
        assert.deepEqual(s.w.state().records, { vm: { r1: E('r1', 4, 'b') } });
        const own = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { format: number; legacy: unknown };
        assert.deepEqual([own.format, own.legacy], [2, { r1: E('r1', 3), r2: E('r2', 1) }], 'rewritten in the new format, the floor kept');
      } finally {
        await s.done();
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an unusable record stops the witness at start, with what to do', async () => {
  const dir = tmpDir();
  const stateFile = path.join(dir, 'witness.json');
  const own = JSON.stringify({ format: 2, instance: '0123abcd-0000-4000-8000-000000000000', createdAt: '2026-01-01T00:00:00.000Z' });
  const cases: [string, string | null, Record<string, string> | null, RegExp][] = [
    ['empty', '', null, /is not JSON/],
    ['not JSON', '{"newest": {', null, /is not JSON/],
    ['JSON null', 'null', null, /is not a witness record/],
    ['an array', '[]', null, /is not a witness record/],
    ['no known key', '{"lease": 1}', null, /is not a witness record/],
    ['a bad epoch', JSON.stringify({ newest: { r1: { run: 'r1', gen: -1, by: 'a' } } }), null, /is not a witness record/],
    ['an epoch under another run', JSON.stringify({ newest: { r1: E('r2', 1) } }), null, /is not a witness record/],
    ['a bad old generation', JSON.stringify({ generations: { r1: 'two' } }), null, /is not a witness record/],
    ['a reserved run name', '{"newest":{"__proto__":{"run":"__proto__","gen":1,"by":"a"}}}', null, /the run name "__proto__" is reserved/],
    ['a directory', null, null, /cannot be read \(EISDIR/],
    ["the VMs' records without the witness's own", 'MISSING', { 'web.json': JSON.stringify({ vm: 'web', runs: {} }) }, /is missing, but its VMs' records are in/],
    ["a VM's record that is not JSON", own, { 'web.json': '{' }, /web\.json that is not JSON/],
    ["a VM's record of another VM", own, { 'web.json': JSON.stringify({ vm: 'db', runs: {} }) }, /web\.json of VM "db"/],
    ["a VM's record with a bad epoch", own, { 'web.json': JSON.stringify({ vm: 'web', runs: { r1: E('r2', 1) } }) }, /web\.json that is not one/],
    ["a VM's record with a reserved run", own, { 'web.json': '{"vm":"web","runs":{"__proto__":{"run":"__proto__","gen":1,"by":"a"}}}' }, /reserved run name/],
  ];
  try {
    for (const [what, text, vms, msg] of cases) {
      fs.rmSync(stateFile, { recursive: true, force: true });
      fs.rmSync(`${stateFile}.d`, { recursive: true, force: true });
      if (text === null) fs.mkdirSync(stateFile);
      else if (text !== 'MISSING') fs.writeFileSync(stateFile, text);
      if (vms) {
        fs.mkdirSync(`${stateFile}.d`);
        for (const [n, t] of Object.entries(vms)) fs.writeFileSync(path.join(`${stateFile}.d`, n), t);
      }
      const logs: string[] = [];
      const w = new Witness({ secret: SECRET, host: HOST, port: 0, graceMs: 0, stateFile, log: (m) => logs.push(m) });
      await assert.rejects(
        w.start(),
        (err: unknown) => {
          assert.ok(err instanceof LockstepError, what);
          assert.ok(err.message.startsWith(`the witness's record ${stateFile} `), `${what}: ${err.message}`);
          assert.match(err.message, msg, what);
          assert.match(err.hint!, /inspect/);
          assert.match(err.hint!, /grants the lease of a VM only once both of its nodes have spoken/);
          return true;
        },
        what,
      );
      assert.equal(w.port, 0, `${what}: not listening`);
      assert.deepEqual(logs, [], what);
      if (text !== null && text !== 'MISSING') assert.equal(fs.readFileSync(stateFile, 'utf8'), text, `${what}: left as it was`);
      await w.stop();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a failed write of a VM's record: no grant goes out, nothing changes", async () => {
  const dir = tmpDir();
  const stateFile = path.join(dir, 'witness.json');
  const vmsDir = `${stateFile}.d`;
  const s = await setup({ stateFile });
  const a = s.client('a');
  const b = s.client('b');
  try {
    await b.query('r1', 1000, E('r1', 1));
    assert.equal((await a.acquire(5000, E('r1', 1))).granted, true, 'recorded');
    // The directory of the VMs' records is replaced by a file: the write fails (ENOTDIR), even as root.
    fs.rmSync(vmsDir, { recursive: true });
    fs.writeFileSync(vmsDir, 'not a directory');
    const r = await a.acquire(5000, E('r1', 1), E('r1', 2, 'a'));
    assert.equal(r.granted, false);
    assert.match(r.reason!, /^witness cannot record: .*ENOTDIR/);
    assert.deepEqual(r.newest, E('r1', 1));
    assert.deepEqual(s.w.state().records, { vm: { r1: E('r1', 1) } }, 'nothing recorded');
    assert.equal((s.w.state().leases.vm?.holder ?? null), 'a', 'the earlier lease stands, not extended');
    assert.ok((s.w.state().leases.vm?.remainingMs ?? 0) < 5000);
    assert.ok(s.logs.some((l) => /refused a's acquire c\d+: witness cannot record/.test(l)), s.logs.join('\n'));
    await a.release();
    await a.query('r9', 1000, E('r9', 1));
    const c = await b.acquire(5000, E('r9', 1));
    assert.deepEqual([c.granted, c.holder], [false, null], 'a first record of a run cannot be written either: no lease');
    assert.equal((s.w.state().leases.vm?.holder ?? null), null);
    // Repaired: granted, and on disk.
    fs.rmSync(vmsDir);
    fs.mkdirSync(vmsDir);
    assert.equal((await a.acquire(5000, E('r1', 1), E('r1', 2, 'a'))).granted, true);
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(vmsDir, 'vm.json'), 'utf8')), { vm: 'vm', runs: { r1: E('r1', 2, 'a') } });
  } finally {
    await s.done();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- who may talk to the witness ----

test('a client with the wrong secret gets nothing', async () => {
  const s = await setup();
  const m = s.client('mallory', 'wrong secret, wrong secret');
  try {
    await assert.rejects(m.acquire(1000, E('r1', 1)), (err: unknown) => err instanceof LockstepError && /could not prove the shared secret|refused our proof/.test(err.message));
    assert.equal(m.refusals.length, 1);
    assert.equal((s.w.state().leases.vm?.holder ?? null), null);
    assert.deepEqual(s.w.state().records, {});
    await waitFor('the witness logs it', () => s.logs.some((l) => /^refused 127\.0\.0\.1:\d+: authentication failed/.test(l)));
  } finally {
    await s.done();
  }
});

/** A raw TCP connection that records the lines it receives. */
async function raw(port: number) {
  const sock = net.createConnection({ host: HOST, port });
  sock.on('error', () => {});
  const st = { sock, buf: '', lines: [] as string[], closed: false };
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
  return st;
}

/** A raw connection past the handshake, by hand: the test holds the session key. */
async function rawSession(port: number, name: string) {
  const r = await raw(port);
  await waitFor('hello', () => r.lines.length >= 1);
  const hello = JSON.parse(r.lines[0]!) as { hello: string; nonce: string };
  assert.equal(hello.hello, PROTOCOL);
  const nc = newNonce();
  r.sock.write(JSON.stringify({ name, nonce: nc, proof: handshakeProof(SECRET, 'client', hello.nonce, nc, name) }) + '\n');
  await waitFor('server proof', () => r.lines.length >= 2);
  const reply = JSON.parse(r.lines[1]!) as { name: string; proof: string };
  assert.equal(reply.name, 'witness');
  return Object.assign(r, { key: sessionKey(SECRET, hello.nonce, nc, name, reply.name) });
}

test('hostile input: the witness refuses it, logs it, stays up, and still grants the lease', async () => {
  const s = await setup();
  try {
    const junk: [string, string | Buffer][] = [
      ['null', 'null\n'],
      ['[]', '[]\n'],
      ['a 100 KB line', 'x'.repeat(100 * 1024) + '\n'],
      ['a 100 KB line without newline', Buffer.alloc(100 * 1024, 0x7b)],
      ['junk', Buffer.from([0, 0xff, 0xfe, 10, 0x7b, 0x7b, 10])],
      ['a client auth with a bad proof', JSON.stringify({ name: 'a', nonce: newNonce(), proof: '0'.repeat(64) }) + '\n'],
    ];
    for (const [what, bytes] of junk) {
      const before = s.logs.length;
      const r = await raw(s.w.port);
      r.sock.write(bytes);
      await waitFor(`${what}: closed by the witness`, () => r.closed);
      await waitFor(`${what}: logged`, () => s.logs.length > before);
      assert.match(s.logs.at(-1)!, /^refused 127\.0\.0\.1:\d+: /, what);
    }
    const frames: [string, (key: Buffer) => string, RegExp][] = [
      ['a schema-invalid request', (k) => signFrame(k, 'c2s', 1, JSON.stringify({ t: 'acquire', id: 'x', lease: 'vm', ttlMs: 'soon', disk: null, next: null })), /schema: ttlMs/],
      ['a request without its lease', (k) => signFrame(k, 'c2s', 1, JSON.stringify({ t: 'acquire', id: 'x', ttlMs: 500, disk: null, next: null })), /schema: lease/],
      ['a lease named __proto__', (k) => signFrame(k, 'c2s', 1, JSON.stringify({ t: 'release', id: 'x', lease: '__proto__' })), /schema: lease: a reserved name/],
      ['an unknown request', (k) => signFrame(k, 'c2s', 1, JSON.stringify({ t: 'steal', id: 'x' })), /schema: t: invalid discriminator/],
      ['a huge lease', (k) => signFrame(k, 'c2s', 1, JSON.stringify({ t: 'acquire', id: 'x', lease: 'vm', ttlMs: 1e12, disk: E('r1', 1), next: null })), /schema: ttlMs/],
      ['a reply instead of a request', (k) => signFrame(k, 'c2s', 1, JSON.stringify({ t: 'released', re: 'x' })), /schema/],
      ['JSON null', (k) => signFrame(k, 'c2s', 1, 'null'), /schema: \(root\)/],
      ['not JSON', (k) => signFrame(k, 'c2s', 1, '{"t":'), /not JSON/],
      ['a bad MAC', (k) => signFrame(k, 's2c', 1, JSON.stringify({ t: 'query', id: 'x' })), /bad MAC/],
      ['a frame over 64 KiB', (k) => signFrame(k, 'c2s', 1, JSON.stringify({ t: 'query', id: 'x', pad: 'y'.repeat(70_000) })), /line longer than/],
    ];
    for (const [what, frame, why] of frames) {
      const before = s.logs.length;
      const r = await rawSession(s.w.port, 'mallory');
      r.sock.write(frame(r.key) + '\n');
      await waitFor(`${what}: closed by the witness`, () => r.closed);
      await waitFor(`${what}: logged`, () => s.logs.length > before);
      assert.match(s.logs.at(-1)!, /^refused 127\.0\.0\.1:\d+ \(mallory\): /, what);
      assert.match(s.logs.at(-1)!, why, what);
      assert.equal(r.lines.length, 2, `${what}: no answer past the handshake`);
    }
    assert.equal((s.w.state().leases.vm?.holder ?? null), null);
    assert.deepEqual(s.w.state().records, {});
    await s.client('b').query('r1', 1000, E('r1', 1));
    const ok = await s.client('a').acquire(1000, E('r1', 1));
    assert.deepEqual([ok.granted, ok.holder], [true, 'a'], 'a normal client still gets the lease');
  } finally {
    await s.done();
  }
});

test('runs named like Object.prototype properties are refused at the wire: never sent, never taken', async () => {
  const s = await setup();
  const a = s.client('a');
  try {
    for (const run of ['__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
      await assert.rejects(a.acquire(200, E(run, 1), E(run, 2, 'a')), `${run}: not a request the wire carries`);
      assert.equal((s.w.state().leases.vm?.holder ?? null), null, `${run}: no lease`);
    }
    assert.deepEqual(s.w.state().records, {});
    await s.client('c').query('r1', 1000, E('r1', 1));
    const ok = await s.client('b').acquire(1000, E('r1', 1));
    assert.equal(ok.granted, true, 'the witness still grants the lease');
    assert.deepEqual(s.w.state().records, { vm: { r1: E('r1', 1) } });
  } finally {
    await s.done();
  }
});

// ---- WitnessConnection ----

function recorder() {
  const replies: WitnessReply[] = [];
  const refusals: string[] = [];
  const downs: string[] = [];
  return {
    replies,
    refusals,
    downs,
    hooks: { onReply: (r: WitnessReply) => replies.push(r), onRefuse: (w: string) => refusals.push(w), onDown: (w: string) => downs.push(w) },
  };
}

const query = (id: string): WitnessRequest => ({ t: 'query', id, lease: 'vm', run: null });

test('WitnessConnection queues requests while connecting (the newest 8) and sends them on connect', async () => {
  const s = await setup();
  const rec = recorder();
  const conn = new WitnessConnection({ name: 'a', secret: SECRET, host: HOST, port: s.w.port, ...rec.hooks });
  try {
    for (let i = 1; i <= 10; i++) conn.send(query(`q${i}`));
    assert.equal(conn.connected, false, 'send does not wait');
    await waitFor('the queued replies', () => rec.replies.length >= MAX_QUEUED);
    await sleep(50);
    assert.deepEqual(
      rec.replies.map((r) => r.re),
      ['q3', 'q4', 'q5', 'q6', 'q7', 'q8', 'q9', 'q10'],
      'the oldest two were dropped',
    );
    assert.equal(conn.connected, true);
    await s.client('b').query('r1', 1000, E('r1', 1));
    conn.send({ t: 'acquire', id: 'l1', lease: 'vm', ttlMs: 500, disk: E('r1', 1), next: null });
    await waitFor('the lease', () => rec.replies.length === 9);
    const lease = rec.replies[8]!;
    assert.ok(lease.t === 'lease' && lease.re === 'l1' && lease.granted);
    assert.deepEqual([rec.refusals, rec.downs], [[], []]);
    // An invalid request is reported, not thrown.
    conn.send({ t: 'acquire', id: 'l2', lease: 'vm', ttlMs: 1, disk: null, next: null });
    assert.match(rec.refusals[0]!, /request not sent to the witness: .*ttlMs/);
  } finally {
    conn.close();
    await s.done();
  }
  assert.equal(conn.connected, false);
  conn.send(query('after-close')); // a no-op, no throw
});

test('WitnessConnection drops its queue when a connection attempt fails, and tries again at most every 200 ms', async () => {
  const s = await setup();
  // A front for the witness: the first connection is cut at once, later ones are passed through.
  let accepted = 0;
  const front = net.createServer((sock) => {
    sock.on('error', () => {});
    if (accepted++ === 0) {
      sock.destroy();
      return;
    }
    const up = net.createConnection({ host: HOST, port: s.w.port });
    up.on('error', () => sock.destroy());
    sock.pipe(up).pipe(sock);
  });
  await new Promise<void>((r) => front.listen(0, HOST, () => r()));
  const rec = recorder();
  const conn = new WitnessConnection({ name: 'a', secret: SECRET, host: HOST, port: (front.address() as net.AddressInfo).port, ...rec.hooks });
  try {
    const t0 = performance.now();
    conn.send(query('q1'));
    conn.send(query('q2'));
    await waitFor('the failed attempt', () => rec.downs.length === 1);
    assert.match(rec.downs[0]!, /^cannot connect to the witness at 127\.0\.0\.1:\d+: /);
    assert.equal(rec.refusals.length, 1, 'a failed handshake is reported as a refusal too');
    assert.equal(conn.lastError, rec.downs[0]);
    conn.send(query('q3'));
    await waitFor('the reply to q3', () => rec.replies.length >= 1);
    assert.ok(performance.now() - t0 >= 195, 'the second attempt waited for 200 ms after the first');
    await sleep(50);
    assert.deepEqual(rec.replies.map((r) => r.re), ['q3'], 'q1 and q2 went with the failed attempt');
    assert.equal(accepted, 2);
    assert.equal(conn.lastError, undefined);
  } finally {
    conn.close();
    await new Promise<void>((r) => front.close(() => r()));
    await s.done();
  }
});

test('WitnessConnection reports an unreachable witness, then reaches it once it is there', async () => {
  // A port nobody listens on (taken, then released).
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, HOST, () => r()));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const rec = recorder();
  const conn = new WitnessConnection({ name: 'a', secret: SECRET, host: HOST, port, ...rec.hooks });
  let w: Witness | undefined;
  try {
    conn.send(query('q1'));
    await waitFor('the failed attempt', () => rec.downs.length === 1);
    assert.match(rec.downs[0]!, /ECONNREFUSED/);
    assert.deepEqual(rec.refusals, [], 'not a refusal: nobody there');
    w = new Witness({ secret: SECRET, host: HOST, port, graceMs: 0 });
    await w.start();
    await sleep(200);
    conn.send(query('q2'));
    await waitFor('the reply', () => rec.replies.length === 1);
    assert.equal(rec.replies[0]!.re, 'q2');
    assert.equal(conn.connected, true);
    await w.stop();
    await waitFor('the link closes', () => !conn.connected);
    assert.match(rec.downs.at(-1)!, /the link to the witness at .* closed/);
  } finally {
    conn.close();
    await w?.stop();
  }
});

test('WitnessConnection rejects a server whose name is not "witness"', async () => {
  const serverLinks: Link<WitnessRequest, WitnessReply>[] = [];
  const closes: string[] = [];
  const got: WitnessRequest[] = [];
  const srv = await listenLinks({
    name: 'impostor',
    secret: SECRET,
    host: HOST,
    port: 0,
    inbound: witnessRequestSchema,
    outbound: witnessReplySchema,
    onLink: (l) => {
      serverLinks.push(l);
      l.on('message', (m) => got.push(m));
      l.on('close', (why) => closes.push(why));
    },
  });
  const rec = recorder();
  const conn = new WitnessConnection({ name: 'a', secret: SECRET, host: HOST, port: (srv.address() as net.AddressInfo).port, ...rec.hooks });
  try {
    conn.send(query('q1'));
    await waitFor('the refusal', () => rec.refusals.length === 1);
    assert.match(rec.refusals[0]!, /is "impostor", not the witness/);
    assert.equal(rec.downs.length, 1);
    assert.equal(conn.connected, false);
    await waitFor('the impostor sees the link close', () => closes.length === 1);
    assert.deepEqual(got, [], 'no request reached it');
    assert.deepEqual(rec.replies, []);
  } finally {
    conn.close();
    for (const l of serverLinks) l.close();
    await new Promise<void>((r) => srv.close(() => r()));
  }
});

test('WitnessClient: a request times out without an answer, and close() fails what is pending', async () => {
  // A server that completes the handshake as the witness and never answers.
  const srv = await listenLinks({ name: 'witness', secret: SECRET, host: HOST, port: 0, inbound: witnessRequestSchema, outbound: witnessReplySchema, onLink: () => {} });
  const c = new WitnessClient({ name: 'a', secret: SECRET, host: HOST, port: (srv.address() as net.AddressInfo).port });
  try {
    await assert.rejects(c.query(null, 200), /timed out after 200 ms waiting for the witness's reply to query c1/);
    const pending = c.acquire(100, E('r1', 1), null, 5000);
    await waitFor('connected', () => c.connected);
    c.close();
    await assert.rejects(pending, /witness client closed/);
  } finally {
    c.close();
    await new Promise<void>((r) => srv.close(() => r()));
  }
});

test('no lease outlasts the grace period: a restarted witness outwaits every lease of its previous life', async () => {
  const { initWitness, witnessStep } = await import('../../src/node/witness-core.js');
  const s = witnessStep(initWitness(0, 300), 10, 'b', { t: 'query', id: 'q', lease: 'vm', run: 'r1', disk: E('r1', 1) }).state;
  const r = witnessStep(s, 400, 'a', { t: 'acquire', id: 'x', lease: 'vm', ttlMs: 5000, disk: E('r1', 1), next: null });
  assert.equal(r.reply.t === 'lease' && r.reply.granted, true);
  assert.equal(r.reply.t === 'lease' ? r.reply.ttlMs : -1, 300);
});

test('one lease per VM: hosts a and b each hold the lease of a different VM at once; each is refused the other\'s; a query gives the newest of the run asked about', async () => {
  const { initWitness, witnessStep, LEASES_MAX } = await import('../../src/node/witness-core.js');
  let s = initWitness(0, 0);
  const ask = (from: string, lease: string, disk: Epoch, now = 10) => {
    // The other node of the VM names the run first: a run not on record is granted on the word of both.
    s = witnessStep(s, now, `${from}-peer`, { t: 'query', id: 'p', lease, run: disk.run, disk }).state;
    const r = witnessStep(s, now, from, { t: 'acquire', id: `${from}-${lease}`, lease, ttlMs: 1000, disk, next: null });
    s = r.state;
    return r.reply;
  };
  const g1 = ask('a', 'web', E('r1', 1));
  const g2 = ask('b', 'db', E('r2', 1));
  assert.deepEqual([g1.t === 'lease' && g1.granted, g2.t === 'lease' && g2.granted], [true, true], 'two VMs, two holders');
  const refused = ask('b', 'web', E('r1', 1), 20);
  assert.ok(refused.t === 'lease' && !refused.granted && refused.holder === 'a', 'web\'s lease is a\'s');
  const q = witnessStep(s, 30, 'b', { t: 'query', id: 'q', lease: 'db', run: 'r2' });
  assert.deepEqual(q.reply, { t: 'state', re: 'q', holder: 'b', remainingMs: 980, newest: E('r2', 1) });
  const other = witnessStep(s, 30, 'b', { t: 'query', id: 'q2', lease: 'db', run: null });
  assert.equal(other.reply.t === 'state' ? other.reply.newest : 'x', null, 'no run asked: no epoch told');
  // A release gives back only that VM's lease.
  s = witnessStep(s, 40, 'a', { t: 'release', id: 'r', lease: 'web' }).state;
  assert.equal(witnessStep(s, 40, 'b', { t: 'query', id: 'q3', lease: 'db', run: null }).reply.t === 'state' ? 'db held' : '', 'db held');
  const again = ask('b', 'web', E('r1', 1), 50);
  assert.ok(again.t === 'lease' && again.granted, 'web free for b after a released it');
  // Bounded: no room beyond LEASES_MAX held leases; a lease that ran out takes none.
  let t = 100;
  s = initWitness(0, 0);
  for (let i = 0; i < LEASES_MAX; i++) ask('a', `vm${i}`, E(`r${i}`, 1), t);
  const full = ask('a', 'one-more', E('rx', 1), t);
  assert.ok(full.t === 'lease' && !full.granted && /holds 1024 leases/.test(full.reason ?? ''), JSON.stringify(full));
  t += 2000;
  const later = ask('a', 'vm0', E('rx', 1), t);
  assert.ok(later.t === 'lease' && later.granted, 'room again once the others ran out');
  // The VMs on record are bounded too: a new VM beyond VMS_MAX is refused, no other VM's record is dropped for it.
  const none = ask('a', 'one-more', E('rx', 1), t);
  assert.ok(none.t === 'lease' && !none.granted && /keeps the record of 1024 VMs/.test(none.reason ?? ''), JSON.stringify(none));
});

test("a VM's own key: its agents (\"VM.NODE\") may touch that VM's lease only; another VM's name with it, or a name that is neither, gets nothing", async () => {
  const s = await setup();
  const key = (vm: string) => witnessKeyFor(SECRET, vm);
  const own = (name: string, secret: string, lease: string) => {
    const c = new WitnessClient({ name, secret, host: HOST, port: s.w.port, lease });
    extra.push(c);
    return c;
  };
  const extra: WitnessClient[] = [];
  try {
    assert.match(key('web'), /^[0-9a-f]{64}$/);
    assert.notEqual(key('web'), key('db'));
    await own(witnessClientName('web', 'b'), key('web'), 'web').query('r1', 1000, E('r1', 1));
    await own('db.a', key('db'), 'db').query('r2', 1000, E('r2', 1));
    const web = await own(witnessClientName('web', 'a'), key('web'), 'web').acquire(1000, E('r1', 1));
    assert.deepEqual([web.granted, web.holder], [true, 'a'], 'granted, to node a');
    const db = await own('db.b', key('db'), 'db').acquire(1000, E('r2', 1));
    assert.deepEqual([db.granted, db.holder], [true, 'b']);
    // web's key, asking for db's lease: refused, and db's lease untouched.
    const cross = await own('web.a', key('web'), 'db').acquire(1000, E('r2', 1));
    assert.equal(cross.granted, false);
    assert.match(cross.reason ?? '', /VM web's key: it may not touch VM db's lease/);
    // web's key under db's name: the handshake fails.
    await assert.rejects(own('db.a', key('web'), 'db').acquire(1000, E('r2', 1)), /could not prove the shared secret|refused our proof/);
    for (const bad of ['a.b.c', 'Web.a', '.a']) await assert.rejects(own(bad, SECRET, 'web').acquire(1000, E('r1', 1)), /could not prove the shared secret|refused our proof/, bad);
    // The witness's own secret still serves a node of any VM (configs that share it).
    const shared = await own('a', SECRET, 'db').acquire(1000, E('r2', 1));
    assert.deepEqual([shared.granted, shared.holder], [false, 'b'], "db's lease is b's, whoever asks");
    assert.deepEqual(Object.fromEntries(Object.entries(s.w.state().leases).map(([k, v]) => [k, v.holder])), { web: 'a', db: 'b' });
  } finally {
    for (const c of extra) c.close();
    await s.done();
  }
});
