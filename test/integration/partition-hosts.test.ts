/**
 * Partitions on separate lab hosts (a namespace per node, witness and
 * client, each link its own cable): the primary's host loses every link at
 * once — replication, heartbeat, witness and LAN — while its VM runs on.
 * No reset ever reaches either side, so QEMU's COLO threads wait forever and
 * no COLO_EXIT comes. The secondary must notice the stalled stream, obtain
 * the lease once the isolated primary could no longer renew it, and take
 * over; the primary must fence itself. Never two writers. Once the links
 * are back, the isolated node, whose disk is now stale, is resynced from b
 * by the agents (never the other way) and the pair is protected again.
 */
import { test } from 'node:test';
import { hostsLabForTests } from '../helpers/lab.js';
import assert from 'node:assert/strict';
import path from 'node:path';
import { runRound, assertClientOk, carriesOn, assertOneWriter } from '../helpers/scenario.js';
import { waitFor } from '../../src/util/time.js';
import { readEpoch } from '../../src/pair/generation.js';

const isRoot = process.getuid?.() === 0;
const ROUNDS = Number(process.env.LOCKSTEP_ROUNDS ?? 3);
const labOf = hostsLabForTests('hosts');

test(`isolate the primary's host from everything, ${ROUNDS} times: the secondary takes over with the lease, the primary fences`, { skip: !isRoot && 'needs root for network namespaces', timeout: 20 * 60_000 }, async () => {
  for (let i = 1; i <= ROUNDS; i++) await runRound(() => labOf().startPair(), `primary isolated, round ${i}`, async (p) => {
    const cutAt = Date.now();
    await labOf().hosts.isolate('a');
    try {
      await waitFor('b to take over', async () => {
        const st = await p.status();
        await assertOneWriter(p, st, `round ${i}`);
        return st.lastFailover?.to === 'b';
      }, { timeoutMs: 60_000, intervalMs: 200 });
      const tookMs = Date.now() - cutAt;
      await waitFor('a to fence itself', async () => {
        const st = await p.status();
        await assertOneWriter(p, st, `round ${i}`);
        return st.nodes.find((n) => n.name === 'a')?.agent?.role === 'fenced';
      }, { timeoutMs: 30_000, intervalMs: 200 });
      const st = await p.status();
      const [a, b] = ['a', 'b'].map((n) => st.nodes.find((x) => x.name === n)!);
      assert.deepEqual([b!.role, b!.runState, b!.colo?.mode], ['primary', 'running', 'none'], `round ${i}: b carries the VM`);
      assert.notEqual(a!.runState, 'running', `round ${i}: the isolated primary's VM is stopped`);
      await carriesOn(p, 20, 'traffic from b');
      process.stderr.write(`# primary isolated, round ${i}: b took over ${tookMs} ms after the cut\n`);
      // The isolated primary's disk is stale now: b's is a generation ahead.
      const gen = (n: string) => readEpoch(path.join(p.stateDir, n))?.gen ?? -1;
      assert.ok(gen('b') > gen('a'), `round ${i}: b's disk is newer (${gen('b')} > ${gen('a')})`);
    } finally {
      await labOf().hosts.heal();
    }
    // Back on the network, the stale node is resynced from the newer side, never the other way.
    const healedAt = Date.now();
    const st = await waitFor('the pair to be protected again', async () => {
      const s = await p.status();
      await assertOneWriter(p, s, `round ${i} after healing`);
      return s.protected ? s : undefined;
    }, { timeoutMs: 60_000, intervalMs: 200 });
    assert.deepEqual([st.lastResync?.from, st.lastResync?.to], ['b', 'a'], `round ${i}: resynced from b to a`);
    assert.deepEqual(st.nodes.map((n) => [n.name, n.role]), [['a', 'secondary'], ['b', 'primary']]);
    const gens = ['a', 'b'].map((n) => readEpoch(path.join(p.stateDir, n)));
    assert.deepEqual(gens[0], gens[1], `round ${i}: a holds b's epoch after the resync`);
    process.stderr.write(`# primary isolated, round ${i}: protected again ${Date.now() - healedAt} ms after healing (a resynced from b)\n`);
    await carriesOn(p, 10, 'traffic through COLO after the resync');
    assertClientOk(await p.stop(), `primary isolated, round ${i}`);
  });
});
