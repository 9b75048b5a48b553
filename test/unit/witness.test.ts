import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Witness, WitnessClient } from '../../src/node/witness.js';
import { sleep } from '../../src/util/time.js';

const secret = 'a shared secret for tests';

async function setup(graceMs = 0) {
  const w = new Witness({ secret, host: '127.0.0.1', port: 0, graceMs });
  await w.start();
  const client = (name: string) => new WitnessClient({ name, secret, host: '127.0.0.1', port: w.port });
  return { w, client };
}

test('one lease at a time: the holder renews, the other is refused until it runs out', async () => {
  const { w, client } = await setup();
  const a = client('a');
  const b = client('b');
  try {
    const first = await a.acquire(300);
    assert.equal(first.granted, true);
    assert.ok(first.validUntil! <= performance.now() + 300, 'the holder\'s own view ends no later than the witness\'s');
    const denied = await b.acquire(300);
    assert.deepEqual([denied.granted, denied.holder], [false, 'a']);
    assert.equal((await a.acquire(300)).granted, true, 'renewal');
    await sleep(350);
    const later = await b.acquire(300);
    assert.deepEqual([later.granted, later.holder], [true, 'b'], 'granted once a stopped renewing');
    assert.equal((await a.acquire(300)).granted, false);
  } finally {
    a.close();
    b.close();
    await w.stop();
  }
});

test('a released lease can be taken at once', async () => {
  const { w, client } = await setup();
  const a = client('a');
  const b = client('b');
  try {
    assert.equal((await a.acquire(5000)).granted, true);
    await a.release();
    assert.equal((await b.acquire(5000)).granted, true);
  } finally {
    a.close();
    b.close();
    await w.stop();
  }
});

test('a restarted witness grants nothing during its grace period', async () => {
  const { w, client } = await setup(300);
  const a = client('a');
  try {
    const r = await a.acquire(1000);
    assert.equal(r.granted, false);
    assert.match(r.reason!, /grace/);
    const got = await a.acquireBy(1000, performance.now() + 1000);
    assert.equal(got?.granted, true);
  } finally {
    a.close();
    await w.stop();
  }
});

test('a client with the wrong secret gets nothing', async () => {
  const { w } = await setup();
  const m = new WitnessClient({ name: 'mallory', secret: 'wrong secret, wrong secret', host: '127.0.0.1', port: w.port });
  try {
    await assert.rejects(m.acquire(1000));
    assert.equal(w.state().holder, null);
  } finally {
    m.close();
    await w.stop();
  }
});

test('disk generations: a node whose disk is older than the newest recorded for its run gets no lease, ever; other runs are apart; the newest survives a restart', async () => {
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-witness-'));
  const stateFile = path.join(dir, 'witness.json');
  let w = new Witness({ secret, host: '127.0.0.1', port: 0, graceMs: 0, stateFile });
  await w.start();
  const a = new WitnessClient({ name: 'a', secret, host: '127.0.0.1', port: w.port });
  const b = new WitnessClient({ name: 'b', secret, host: '127.0.0.1', port: w.port });
  try {
    assert.equal((await a.acquire(200, 500, { run: 'r1', gen: 1 })).granted, true);
    // a writes alone: it records generation 2 first.
    assert.equal((await a.acquire(200, 500, { run: 'r1', gen: 2 })).granted, true);
    a.close();
    await sleep(250);
    const stale = await b.acquire(200, 500, { run: 'r1', gen: 1 });
    assert.equal(stale.granted, false, 'b\'s disk misses what a wrote alone: no lease even with a gone');
    assert.match(stale.reason!, /stale disk: generation 1, the newest is 2/);
    assert.equal((await b.acquire(200, 500, { run: 'r2', gen: 1 })).granted, true, 'a new run of the pair starts its own count');
    b.close();
    await w.stop();
    w = new Witness({ secret, host: '127.0.0.1', port: 0, graceMs: 0, stateFile });
    await w.start();
    const b2 = new WitnessClient({ name: 'b', secret, host: '127.0.0.1', port: w.port });
    try {
      assert.equal((await b2.acquire(200, 500, { run: 'r1', gen: 1 })).granted, false, 'still stale after the witness restarted');
      assert.deepEqual(w.state().generations, { r1: 2, r2: 1 });
    } finally {
      b2.close();
    }
  } finally {
    a.close();
    b.close();
    await w.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
