/**
 * P1: stock QEMU deadlocks the primary in a COLO checkpoint under TCG; the lab
 * QEMU (patch 0001) does not. Same guest, same procedure, the same stream of
 * checkpoints (x-checkpoint-delay 200 ms). lockstep itself refuses the stock
 * binary, naming the fixes it lacks; told to run it anyway, it deadlocks.
 *
 * "Stock" is, for the line under test (LOCKSTEP_LAB_QEMU), the distribution's
 * QEMU when that is of the line (Debian 12's 7.2), else Debian's source of the
 * line built without lockstep's patches. On a host where KVM works the lab
 * runs KVM and never takes this TCG path, so the test is skipped there.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OneHostPair } from '../../src/lab/pair.js';
import { locateQemu, probeQemu } from '../../src/qemu/discover.js';
import { defaultQemuLine, ensureLabQemu } from '../../src/lab/qemu-build.js';
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
async function checkpointsFor(binary: string, ms: number, allowMissingFixes = false): Promise<Outcome> {
  let pair: OneHostPair;
  try {
    pair = await OneHostPair.start({ qemu: { binary, accel: 'tcg', allowMissingFixes }, checkpointDelayMs: 200, waitGuest: false });
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

test(`stock QEMU ${defaultQemuLine()} deadlocks in a checkpoint; the patched one does not`, { timeout: 15 * 60_000 }, async (t) => {
  const rt = await runtime();
  if (rt.accel !== 'tcg') {
    t.skip('KVM works here: the TCG deadlock does not apply');
    return;
  }
  const line = defaultQemuLine();
  const system = locateQemu();
  const info = await probeQemu(system.binary, system.source);
  const stock = `${info.version.major}.${info.version.minor}` === line ? system : { binary: (await ensureLabQemu({ line, patches: [], onStep: (m) => process.stderr.write(`# ${m}\n`) })).binary };
  process.stderr.write(`# stock QEMU ${line}: ${stock.binary}\n`);
  // lockstep refuses it, naming the fixes it lacks; told to run anyway, it shows why.
  await assert.rejects(OneHostPair.start({ qemu: { binary: stock.binary, accel: 'tcg' }, waitGuest: false }), /lacks 4 fixes COLO needs under TCG:\n  P1 .*deadlocks/);
  const stockRun = await checkpointsFor(stock.binary, 60_000, true);
  process.stderr.write(`# stock: deadlocked=${stockRun.deadlocked} after ${stockRun.completed} completed checkpoints\n`);
  assert.equal(stockRun.deadlocked, true, 'stock: the primary hangs in a checkpoint');
  const patched = await checkpointsFor(rt.binary, 30_000);
  process.stderr.write(`# patched: deadlocked=${patched.deadlocked}, ${patched.completed} completed checkpoints\n`);
  assert.equal(patched.deadlocked, false, 'patched: no hang');
  assert.ok(patched.completed >= 50, `patched: checkpoints keep completing (${patched.completed})`);
});
