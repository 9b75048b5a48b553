/**
 * The secondary's replica misses writes, on real VMs on the lab's separate
 * hosts. The primary's disk is a quorum of its own disk and the replication
 * child (an NBD client to the secondary's replica) with vote-threshold=1: a
 * write the replica fails still completes, and only QUORUM_REPORT_BAD says
 * so (block/quorum.c). Here the replica's NBD connection is reset again and
 * again for a few seconds (its requests fail while it reconnects), while the
 * COLO stream and its checkpoints go on and a client counts on the disk. A
 * checkpoint then makes the short replica the secondary's disk for good: had
 * the agents gone on calling it exact, the next failover would serve a disk
 * without acknowledged writes. They must stop calling it exact: the primary
 * carries on alone under a new epoch and resyncs the secondary; only then may
 * a failover to it happen, and no acknowledged write may be missing after it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { hostsLabForTests } from '../helpers/lab.js';
import { runRound, assertClientOk, carriesOn, assertOneWriter } from '../helpers/scenario.js';
import { readState } from '../../src/pair/state.js';
import { readEpoch } from '../../src/pair/generation.js';
import { run } from '../../src/util/exec.js';
import { waitFor, sleep } from '../../src/util/time.js';

const isRoot = process.getuid?.() === 0;
const labOf = hostsLabForTests('rw');
const opts = { skip: !isRoot && 'needs root for network namespaces', timeout: 15 * 60_000 };

/** How long a's NBD connections to b's replica are reset, each as soon as it is seen. */
const RESET_FOR_MS = 4000;

test("the secondary's replica fails writes (its NBD connection reset, again and again) while a client counts: the primary stops calling it exact and resyncs it; a failover after that loses no acknowledged write", opts, async () => {
  await runRound(() => labOf().startPair(), 'replica write errors', async (p) => {
    const before = await p.status();
    assert.equal(before.protected, true, 'protected at the start');
    const hosts = labOf().hosts;
    const nbdPort = readState(p.stateDir)!.endpoints.nbdPort;
    const epochBefore = readEpoch(path.join(p.stateDir, 'a'));
    // In a's namespace: every TCP connection to b's NBD export is destroyed (RST to b, ECONNABORTED to QEMU).
    const resetAt = Date.now();
    let resets = 0;
    while (Date.now() - resetAt < RESET_FOR_MS) {
      const r = await run('ip', ['netns', 'exec', hosts.ns.a, 'ss', '-K', 'dst', hosts.addr.replication.b, 'dport', '=', `:${nbdPort}`], { allowFailure: true, timeoutMs: 5000 });
      resets += r.stdout.split('\n').filter((l) => /ESTAB|CLOSE|SYN/.test(l)).length;
      await sleep(10);
    }
    process.stderr.write(`# replica write errors: ${resets} NBD connections reset in ${RESET_FOR_MS} ms\n`);
    assert.ok(resets > 0, 'the replica\'s NBD connection was reset');
    const aLog = fs.readFileSync(path.join(p.stateDir, 'a', 'agent.log'), 'utf8');
    assert.match(aLog, /QUORUM_REPORT_BAD: the secondary's replica failed a write/, 'the primary heard of a write the replica failed');

    // The primary stopped calling the replica exact: it carried on alone under a new epoch, never failing over to b.
    const st = await waitFor('a to carry on alone, the replica no exact copy', async () => {
      const s = await p.status();
      await assertOneWriter(p, s, `replica write errors`);
      return s.lastFailover?.to === 'a' ? s : undefined;
    }, { timeoutMs: 30_000, intervalMs: 100 });
    assert.match(st.lastFailover!.reason, /replica missed a write/);
    const epochAlone = readEpoch(path.join(p.stateDir, 'a'));
    assert.ok(epochAlone && epochBefore && epochAlone.gen > epochBefore.gen, `a new epoch on a (${epochBefore?.gen} → ${epochAlone?.gen}): b's disk is stale at the witness`);
    process.stderr.write(`# replica write errors: a carried on alone ${Date.parse(st.lastFailover!.at) - resetAt} ms after the first reset (${st.lastFailover!.reason})\n`);

    // b is resynced (a fresh replica): protected again.
    const again = await waitFor('the pair to be protected again by a resync of b', async () => {
      const s = await p.status();
      await assertOneWriter(p, s, `replica write errors`);
      return s.protected && s.lastResync?.to === 'b' && s.lastResync.at !== before.lastResync?.at ? s : undefined;
    }, { timeoutMs: 90_000, intervalMs: 200 });
    assert.deepEqual(readEpoch(path.join(p.stateDir, 'b')), readEpoch(path.join(p.stateDir, 'a')), 'b holds a\'s epoch after the resync');
    process.stderr.write(`# replica write errors: protected again ${Date.parse(again.protectedAt!) - resetAt} ms after the first reset\n`);
    await carriesOn(p, 10, 'traffic through COLO after the resync');

    // Now the primary dies: b takes over with its new replica, and every acknowledged write is there.
    const primary = again.nodes.find((n) => n.role === 'primary')!;
    assert.equal(primary.name, 'a');
    process.kill(primary.pid!, 'SIGKILL');
    await waitFor('b to take over', async () => (await p.status()).lastFailover?.to === 'b', { timeoutMs: 30_000, intervalMs: 100 });
    await carriesOn(p, 20, 'traffic from b after the failover');
    // The counter never went back, no acknowledged value is missing, the TCP connection survived.
    assertClientOk(await p.stop(), 'replica write errors, then a failover', { failedRequests: 2 });
  });
});
