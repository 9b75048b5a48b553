/**
 * P5: on the COLO primary, a write forwarded to the secondary's disk that
 * fails there is reported done (block/replication.c,
 * replication_return_value), and nothing says so: quorum sees a success, and
 * QUORUM_REPORT_BAD comes only if a later flush fails too. With patch 0005
 * it is said at once, and the next checkpoint fails. Here the
 * secondary's replica sits on a small RAM disk of its own that is then
 * filled: the first write to a cluster of the replica that no write had
 * allocated fails with ENOSPC while every connection stays up, and flushes
 * still succeed. A client then bumps the disk counter (its first write).
 *
 * The secondary's own VM wrote the same value into its active buffer, so the
 * answers match and the client is told the new value: that is safe as long
 * as no checkpoint empties the buffer. Without patch 0005 the next checkpoint
 * succeeds and does, and after the primary dies the secondary counts that
 * value again: a write its client was told about is lost. With it, that
 * checkpoint fails, COLO ends on the primary, and the primary carries on
 * alone with every write.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OneHostPair } from '../../src/lab/pair.js';
import { checkpointNow, setCheckpointDelay } from '../../src/colo/startup.js';
import { primaryFailover, secondaryFailover } from '../../src/colo/failover.js';
import { ensureLabQemu, patchSeries } from '../../src/lab/qemu-build.js';
import { run } from '../../src/util/exec.js';
import { waitFor } from '../../src/util/time.js';
import { runtime } from '../helpers/lab.js';
import { bumpCounter, httpGet } from '../helpers/clients.js';

const isRoot = process.getuid?.() === 0;

interface Outcome {
  before: number;
  /** What the client was told for its bump during the fault (null: nothing before COLO ended). */
  told: number | null;
  /** The checkpoint after the failed write: completed, or COLO ended on the primary (COLO_EXIT). */
  checkpoint: 'completed' | 'colo-exit';
  /** query-xen-replication-status on the primary after the write: a forwarded write failed. */
  replicationError: boolean;
  /** The primary's QEMU said QUORUM_REPORT_BAD (of the replication child) after the write. */
  reported: boolean;
  /** The counter's next value on whichever VM carries on after the failover. */
  next: number;
  survivor: 'primary' | 'secondary';
}

async function readCounter(base: string): Promise<number> {
  const r = await httpGet(`${base}/cgi-bin/get`, 15_000);
  const m = /^count=(\d+)$/m.exec(r.body);
  assert.ok(r.status === 200 && m, `counter read: ${r.status} ${r.body.slice(0, 80)}`);
  return Number(m[1]);
}

/** Takes every free byte of the file system at `dir`. */
async function fill(dir: string): Promise<void> {
  const st = fs.statfsSync(dir);
  await run('fallocate', ['-l', String(st.bavail * st.bsize), path.join(dir, 'filler')], { timeoutMs: 10_000 });
  assert.equal(fs.statfsSync(dir).bavail, 0, 'the RAM disk is full');
}

async function scenario(binary: string, allowMissingFixes: boolean): Promise<Outcome> {
  const top = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-p5-'));
  const replicaDir = path.join(top, 'b');
  fs.mkdirSync(replicaDir);
  await run('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0700', 'lockstep-p5', replicaDir], { timeoutMs: 10_000 });
  let pair: OneHostPair | undefined;
  try {
    pair = await OneHostPair.start({ qemu: { binary, accel: 'tcg', allowMissingFixes }, dir: path.join(top, 'pair'), dataDirs: { b: replicaDir }, log: (m) => process.stderr.write(`# ${m}\n`) });
    const p = pair;
    assert.equal(p.secondary.name, 'b');
    // Read only: the counter's sector is written first during the fault.
    const before = await readCounter(p.httpBase);
    await checkpointNow(p.primary.qmp, p.config.replication.checkpointDelayMs);
    await fill(replicaDir);
    let told: number | null = null;
    const request = bumpCounter(p.httpBase, 60_000).then((v) => (told = v));
    request.catch(() => {});
    const exits = () => p.primary.events.filter((e) => e.event === 'COLO_EXIT').length;
    const exitsBefore = exits();
    await waitFor('the answer, or the end of COLO on the primary', () => told !== null || exits() > exitsBefore, { timeoutMs: 20_000, intervalMs: 50 });
    const status = await p.primary.qmp.execute<{ error: boolean; desc?: string }>('query-xen-replication-status');
    const reported = p.primary.events.some((e) => e.event === 'QUORUM_REPORT_BAD');
    // The next checkpoint, at once.
    const resumesBefore = p.primary.events.filter((e) => e.event === 'RESUME').length;
    await setCheckpointDelay(p.primary.qmp, 100);
    const checkpoint = await waitFor(
      'a checkpoint to complete, or COLO to end on the primary',
      () => (exits() > exitsBefore ? ('colo-exit' as const) : p.primary.events.filter((e) => e.event === 'RESUME').length > resumesBefore ? ('completed' as const) : undefined),
      { timeoutMs: 20_000, intervalMs: 50 },
    );
    process.stderr.write(`# before ${before}, told ${told}, replication status ${JSON.stringify(status)}, QUORUM_REPORT_BAD ${reported}, checkpoint: ${checkpoint}\n`);
    fs.rmSync(path.join(replicaDir, 'filler'));
    if (checkpoint === 'completed') {
      // COLO goes on: the primary dies, the secondary takes over as documented.
      p.primary.proc.signal('SIGKILL');
      await p.primary.proc.wait();
      await secondaryFailover(p.secondary.qmp, { forwards: p.forwards });
      return { before, told, checkpoint, replicationError: status.error, reported, next: await bumpCounter(p.httpBase, 30_000), survivor: 'secondary' };
    }
    // COLO ended on the primary: it carries on alone (its agent's Primary Failover).
    await primaryFailover(p.primary.qmp);
    await request.catch(() => {});
    return { before, told, checkpoint, replicationError: status.error, reported, next: await bumpCounter(p.httpBase, 30_000), survivor: 'primary' };
  } finally {
    await pair?.stop();
    await run('umount', ['-l', replicaDir], { timeoutMs: 10_000, allowFailure: true });
    fs.rmSync(top, { recursive: true, force: true });
  }
}

test("the secondary's replica fails a write with every connection up: without patch 0005 the next checkpoint drops the secondary's own copy and a failover loses a value its client was told; with it COLO ends and nothing is lost", { skip: !isRoot && 'needs root to mount the RAM disk', timeout: 15 * 60_000 }, async (t) => {
  const rt = await runtime();
  if (rt.accel !== 'tcg') {
    t.skip('KVM works here: the lab QEMU is not used');
    return;
  }
  const series = patchSeries();
  const without = await ensureLabQemu({ patches: series.slice(0, 3), onStep: (m) => process.stderr.write(`# ${m}\n`) });
  const bug = await scenario(without.binary, true);
  process.stderr.write(`# without 0005: ${JSON.stringify(bug)}\n`);
  assert.equal(bug.replicationError, true, 'the primary\'s replication recorded the failed write');
  assert.equal(bug.reported, false, 'and nothing said so: no QUORUM_REPORT_BAD');
  assert.equal(bug.told, bug.before + 1, 'the client was told the new value');
  assert.equal(bug.checkpoint, 'completed', 'without 0005 the checkpoint completes');
  assert.equal(bug.next, bug.before + 1, 'the bug reproduces: after the failover the secondary lacks the value its client was told, and counts it again');

  const fixed = await scenario(rt.binary, false);
  process.stderr.write(`# with 0005: ${JSON.stringify(fixed)}\n`);
  assert.equal(fixed.replicationError, true);
  assert.equal(fixed.reported, true, 'QUORUM_REPORT_BAD said it at once');
  assert.equal(fixed.checkpoint, 'colo-exit', 'the checkpoint failed: COLO ended on the primary');
  assert.equal(fixed.next, fixed.before + 2, 'the primary kept the write and goes on from it');
});
