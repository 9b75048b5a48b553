/**
 * P1: stock QEMU 7.2 deadlocks the primary at its first COLO checkpoint under
 * TCG; the lab QEMU (patch 0001) does not. Same guest, same procedure, same
 * trigger: setting x-checkpoint-delay, which in 7.2 takes a checkpoint at once.
 *
 * "Stock" is the distribution's QEMU 7.2 (qemu-system-x86). On a host where
 * KVM works the lab runs KVM and never takes this TCG path, so the test is
 * skipped there.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OneHostPair } from '../../src/lab/pair.js';
import { setCheckpointDelay } from '../../src/colo/startup.js';
import { locateQemu, probeQemu } from '../../src/qemu/discover.js';
import { runtime } from '../helpers/lab.js';

interface FirstCheckpoint {
  stopped: boolean;
  resumed: boolean;
  qmpAnswers: boolean;
}

async function firstCheckpoint(binary: string, dataDirs: string[]): Promise<FirstCheckpoint> {
  const rt = await runtime();
  const pair = await OneHostPair.start({ runtime: { ...rt, binary, dataDirs, accel: 'tcg' } });
  try {
    const stop = pair.primary.qmp.listen('STOP');
    const resume = pair.primary.qmp.listen('RESUME');
    await setCheckpointDelay(pair.primary.qmp, 2000);
    const stopped = await stop.next(10_000).then(() => true, () => false);
    const resumed = await resume.next(10_000).then(() => true, () => false);
    const qmpAnswers = await pair.primary.qmp.execute('query-status', undefined, { timeoutMs: 3000 }).then(() => true, () => false);
    return { stopped, resumed, qmpAnswers };
  } finally {
    await pair.stop({ removeDir: true });
  }
}

test('stock QEMU 7.2 deadlocks at the first checkpoint; the patched one does not', { timeout: 5 * 60_000 }, async (t) => {
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
  const stockResult = await firstCheckpoint(stock.binary, []);
  assert.deepEqual(stockResult, { stopped: true, resumed: false, qmpAnswers: false }, 'stock: the primary stops and never comes back');
  const patched = await firstCheckpoint(rt.binary, rt.dataDirs);
  assert.deepEqual(patched, { stopped: true, resumed: true, qmpAnswers: true }, 'patched: the checkpoint completes');
});
