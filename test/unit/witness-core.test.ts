/**
 * The witness's rules (witness-core.ts) against what a client that holds one
 * VM's key could do to another VM, and what a witness that forgot its record
 * may still grant. Pure: no sockets, time given.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initWitness, witnessStep, runsOf, newestOf, RUNS_PER_VM, HEARD_NODES_MAX, type WitnessState } from '../../src/node/witness-core.js';
import type { WitnessReply, WitnessRequest } from '../../src/node/wire.js';
import type { Epoch } from '../../src/pair/epoch.js';

const E = (run: string, gen: number, by = 'up'): Epoch => ({ run, gen, by });

/** A witness driven by hand: every request from a node, at a time, its reply. */
function world(graceMs = 0) {
  let s: WitnessState = initWitness(0, graceMs);
  let seq = 0;
  type Body = WitnessRequest extends infer R ? (R extends WitnessRequest ? Omit<R, 'id'> : never) : never;
  const step = (now: number, from: string, req: Body): WitnessReply => {
    const r = witnessStep(s, now, from, { ...req, id: `r${++seq}` } as WitnessRequest);
    s = r.state;
    return r.reply;
  };
  return {
    get s() {
      return s;
    },
    acquire: (now: number, from: string, lease: string, disk: Epoch | null, next: Epoch | null = null, ttlMs = 1000) =>
      step(now, from, { t: 'acquire', lease, ttlMs, disk, next }) as Extract<WitnessReply, { t: 'lease' }>,
    query: (now: number, from: string, lease: string, run: string | null, disk?: Epoch | null) =>
      step(now, from, { t: 'query', lease, run, ...(disk === undefined ? {} : { disk }) }) as Extract<WitnessReply, { t: 'state' }>,
    release: (now: number, from: string, lease: string) => step(now, from, { t: 'release', lease }),
  };
}

test("a VM's records are its own: VM x's nodes recording epoch 1001 under VM y's run leave y's record, and y's nodes, as they were", () => {
  const w = world();
  // VM db runs r-db: its nodes a and b, a the primary, alone at 2/a after its secondary was lost.
  w.query(0, 'b', 'db', 'r-db', E('r-db', 1));
  assert.equal(w.acquire(0, 'a', 'db', E('r-db', 1), E('r-db', 2, 'a')).granted, true);
  // Whoever holds VM web's key learned db's run: web's witness link may name web only (witness.ts), so it asks for web.
  w.query(10, 'x2', 'web', 'r-db', E('r-db', 1000, 'x2'));
  const forged = w.acquire(10, 'x1', 'web', E('r-db', 1000, 'x1'), E('r-db', 1001, 'x1'));
  assert.equal(forged.granted, false, 'divergent from what x2 said: refused anyway');
  w.query(20, 'x2', 'web', 'r-db', E('r-db', 1000, 'x1'));
  assert.equal(w.acquire(20, 'x1', 'web', E('r-db', 1000, 'x1'), E('r-db', 1001, 'x1')).granted, true, "granted: it is web's record of a run that web's nodes named");
  assert.deepEqual(newestOf(w.s, 'web', 'r-db'), E('r-db', 1001, 'x1'), "web's record");
  assert.deepEqual(newestOf(w.s, 'db', 'r-db'), E('r-db', 2, 'a'), "db's record untouched");
  // db's nodes are not stale: a renews, and once it lets go, b (resynced to 2/a) is granted.
  assert.equal(w.acquire(30, 'a', 'db', E('r-db', 2, 'a')).granted, true);
  w.release(40, 'a', 'db');
  const b = w.acquire(50, 'b', 'db', E('r-db', 2, 'a'));
  assert.deepEqual([b.granted, b.newest], [true, E('r-db', 2, 'a')]);
});

test("VM x's nodes pushing 5,000 runs evict none of VM y's: y's stale disk is still refused (no split brain)", () => {
  const w = world();
  w.query(0, 'b', 'db', 'r-db', E('r-db', 1));
  assert.equal(w.acquire(0, 'a', 'db', E('r-db', 1), E('r-db', 2, 'a')).granted, true, 'a carries on alone at 2/a');
  w.release(1, 'a', 'db');
  let t = 10;
  for (let i = 0; i < 5000; i++) {
    const run = `junk-${i}`;
    w.query(t, 'x2', 'web', run, E(run, 1));
    assert.equal(w.acquire(t, 'x1', 'web', E(run, 1)).granted, true);
    t += 1;
  }
  assert.equal(runsOf(w.s, 'web').length, RUNS_PER_VM, "web's records are bounded: its oldest runs went");
  assert.deepEqual(runsOf(w.s, 'db'), ['r-db'], "db's record stays");
  const stale = w.acquire(t + 2000, 'b', 'db', E('r-db', 1), E('r-db', 2, 'b'));
  assert.equal(stale.granted, false, "b's disk misses a's writes: never granted");
  assert.match(stale.reason ?? '', /^stale disk: epoch 1\/up, the newest of its run is 2\/a/);
});

test("a held lease's run is never evicted by its VM's own records: the oldest other run goes", () => {
  const w = world();
  let t = 0;
  for (let i = 0; i < RUNS_PER_VM; i++) {
    const run = `r${i}`;
    w.query(t, 'b', 'web', run, E(run, 1));
    assert.equal(w.acquire(t, 'a', 'web', E(run, 1)).granted, true);
    w.release(t, 'a', 'web');
    t += 10;
  }
  // b takes the lease on the oldest run, then (holding it) on a new one: r0, its live lease's run, stays.
  assert.equal(w.acquire(t, 'b', 'web', E('r0', 1)).granted, true);
  w.query(t, 'a', 'web', 'r-new', E('r-new', 1));
  assert.equal(w.acquire(t + 1, 'b', 'web', E('r-new', 1)).granted, true);
  assert.deepEqual(runsOf(w.s, 'web'), ['r0', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7', 'r-new'].slice(-RUNS_PER_VM), 'r1 went, not r0');
  assert.ok(runsOf(w.s, 'web').includes('r0'));
});

test("a run not on record (new, or forgotten) is granted only on the word of both nodes, and never to a disk older than the other's", () => {
  // The case: a runs alone at 2/a, the witness restarts empty, a loses power, b asks after 9 s.
  const w = world(2000);
  const late = 9000;
  const r = w.acquire(late, 'b', 'web', E('run', 1), E('run', 2, 'b'));
  assert.equal(r.granted, false, 'nobody vouches that b has every acknowledged write');
  assert.match(r.reason ?? '', /^no record of run run of web \(a new run, or one this witness lost or evicted\): it grants once the other node has spoken too/);
  assert.equal(newestOf(w.s, 'web', 'run'), undefined, 'nothing recorded');
  // a comes back: it says which disk it holds (a query with its disk), and b is stale, whatever b asks.
  w.query(late + 100, 'a', 'web', 'run', E('run', 2, 'a'));
  for (const next of [E('run', 2, 'b'), E('run', 3, 'b')]) {
    const again = w.acquire(late + 200, 'b', 'web', E('run', 1), next);
    assert.equal(again.granted, false);
    assert.match(again.reason ?? '', /^stale disk: epoch 1\/up, and a holds 2\/a/);
  }
  const a = w.acquire(late + 400, 'a', 'web', E('run', 2, 'a'), E('run', 3, 'a'));
  assert.deepEqual([a.granted, a.newest], [true, E('run', 3, 'a')], 'the newest disk is granted, and recorded');
  // Two disks of the same generation begun by different nodes (divergent): neither is granted.
  const d = world();
  d.query(0, 'a', 'web', 'run', E('run', 2, 'a'));
  const divergent = d.acquire(10, 'b', 'web', E('run', 2, 'b'));
  assert.match(divergent.reason ?? '', /^stale disk: epoch 2\/b, and a holds 2\/a/);
  assert.equal(d.acquire(20, 'a', 'web', E('run', 2, 'a')).granted, false, 'b said 2/b: a is refused too');
  // A fresh run: both nodes at 1/up (or the secondary empty, 0/up): the primary is granted once the secondary spoke.
  const f = world();
  assert.equal(f.acquire(0, 'a', 'db', E('new', 1)).granted, false, 'the secondary has not spoken yet');
  f.query(5, 'b', 'db', 'new', E('new', 0));
  assert.equal(f.acquire(10, 'a', 'db', E('new', 1), E('new', 2, 'a')).granted, true);
  // Agents whose queries carry no disk: the other node's word that it holds the run counts, its disk unknown.
  const legacy = world();
  legacy.query(0, 'b', 'db', 'new');
  assert.equal(legacy.acquire(10, 'a', 'db', E('new', 1)).granted, true);
  // What one node said is remembered for a few nodes only (a VM has two); the others' words go first.
  const many = world();
  for (let i = 0; i < HEARD_NODES_MAX + 3; i++) many.query(i, `n${i}`, 'db', 'x', E('x', 5));
  assert.equal(Object.keys(many.s.heard['db/x'] ?? {}).length, HEARD_NODES_MAX);
});

test('what the other node said is heard even from a refused request, and a run on record needs nobody else', () => {
  const w = world(1000);
  // During the grace period both ask: both refused, both heard.
  assert.equal(w.acquire(0, 'b', 'web', E('run', 2, 'a')).granted, false);
  assert.equal(w.acquire(10, 'a', 'web', E('run', 2, 'a')).granted, false);
  const g = w.acquire(1000, 'a', 'web', E('run', 2, 'a'));
  assert.equal(g.granted, true, 'after the grace period, on the word of both');
  assert.deepEqual(Object.keys(w.s.heard), [], 'on record now: what was heard is dropped');
  w.release(1001, 'a', 'web');
  assert.equal(w.acquire(1002, 'b', 'web', E('run', 2, 'a')).granted, true, 'on record: no need to hear a again');
});
