/**
 * P1: stock QEMU 7.2 deadlocks the primary at its first COLO checkpoint under
 * TCG; the lab QEMU (patch 0001) does not. Same guest, same procedure, the
 * same stream of checkpoints (x-checkpoint-delay 200 ms).
 *
 * "Stock" is the distribution's QEMU 7.2 (qemu-system-x86). On a host where
 * KVM works the lab runs KVM and never takes this TCG path, so the test is
 * skipped there.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OneHostPair } from '../../src/lab/pair.js';
import { locateQemu, probeQemu } from '../../src/qemu/discover.js';
import { sleep } from '../../src/util/time.js';
import { runtime } from '../helpers/lab.js';

interface Outcome {
  /** The primary stopped for a checkpoint and never resumed, and its QMP went silent. */
  deadlocked: boolean;
  /** Checkpoints that completed (STOP followed by RESUME on the primary). */
  completed: number;
}

/**
 * Runs a pair with checkpoints every 200 ms for up to `ms`, and watches for
 * the primary hanging in one. Whether a given checkpoint hangs is a race
 * (the vCPU thread may finish the work item before the COLO thread waits for
 * it), so this looks at many checkpoints rather than only the first.
 */
async function checkpointsFor(binary: string, ms: number): Promise<Outcome> {
  let pair: OneHostPair;
  try {
    pair = await OneHostPair.start({ qemu: { binary, accel: 'tcg' }, checkpointDelayMs: 200, waitGuest: false });
  } catch (err) {
    // up checks that the first checkpoint completes, and ends both QEMUs when it does not.
    if (/first COLO checkpoint did not complete/.test((err as Error).message)) return { deadlocked: true, completed: 0 };
    throw err;
  }
  try {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      await sleep(1000);
      const ev = pair.primary.events.filter((e) => e.event === 'STOP' || e.event === 'RESUME');
      const last = ev.at(-1);
      if (last?.event === 'STOP' && Date.now() - last.time > 5000) {
        const answers = await pair.primary.qmp.execute('query-status', undefined, { timeoutMs: 3000 }).then(() => true, () => false);
        if (!answers) return { deadlocked: true, completed: pair.pauses().length };
      }
    }
    const answers = await pair.primary.qmp.execute('query-status', undefined, { timeoutMs: 3000 }).then(() => true, () => false);
    return { deadlocked: !answers, completed: pair.pauses().length };
  } finally {
    await pair.stop({ removeDir: true });
  }
}

test('stock QEMU 7.2 deadlocks in a checkpoint; the patched one does not', { timeout: 5 * 60_000 }, async (t) => {
  const rt = await runtime();
  if (rt.accel !== 'tcg') {
    t.skip('KVM works here: the TCG deadlock does not apply');
    return;
  }
  const stock = locateQemu();
  const info = await probeQemu(stock.binary, stock.source);
  if (info.version.major !== 7 || info.version.minor !== 2) {
    t.skip(`the distribution QEMU is ${info.version.major}.${info.version.minor}, not the 7.2 this patch is for`);
    return;
  }
  const stockRun = await checkpointsFor(stock.binary, 60_000);
  process.stderr.write(`# stock: deadlocked=${stockRun.deadlocked} after ${stockRun.completed} completed checkpoints\n`);
  assert.equal(stockRun.deadlocked, true, 'stock: the primary hangs in a checkpoint');
  const patched = await checkpointsFor(rt.binary, 30_000);
  process.stderr.write(`# patched: deadlocked=${patched.deadlocked}, ${patched.completed} completed checkpoints\n`);
  assert.equal(patched.deadlocked, false, 'patched: no hang');
  assert.ok(patched.completed >= 50, `patched: checkpoints keep completing (${patched.completed})`);
});
