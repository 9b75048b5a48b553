/**
 * P3: a COLO secondary loads every checkpoint into devices that kept running
 * since the last one. virtio_load() never clears the 'disabled' and 'broken'
 * flags when the primary's state does not carry them, so a flag the
 * secondary raised by itself outlives every later checkpoint. In the wild
 * the secondary's guest clears bus mastering on its NIC while it probes PCI
 * during its own boot, and about one pair start-up in eight ends with a
 * secondary whose NIC is dead for good: it never answers, every packet of
 * the primary waits for the compare timeout, clients see a network that has
 * almost stopped.
 *
 * The test makes it deterministic: it clears bus mastering on the
 * secondary's NIC from outside (a PCI config write through ports
 * 0xcf8/0xcfc, by the secondary's monitor), forces a checkpoint and looks at
 * the secondary's NIC and at the client. Without patch 0003 the NIC stays
 * disabled and requests take seconds; with it the checkpoint heals the NIC.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OneHostPair } from '../../src/lab/pair.js';
import { checkpointNow } from '../../src/colo/startup.js';
import { IDS } from '../../src/qemu/cmdline.js';
import { ensureLabQemu, patchSeries } from '../../src/lab/qemu-build.js';
import type { QmpClient } from '../../src/qmp/client.js';
import { runtime } from '../helpers/lab.js';
import { bumpCounter } from '../helpers/clients.js';

const NIC = `/machine/peripheral/${IDS.nic}/virtio-backend`;

interface Outcome {
  disabledBefore: boolean;
  disabledAfterCheckpoint: boolean;
  requestMs: number[];
}

async function nicDisabled(qmp: QmpClient): Promise<boolean> {
  return ((await qmp.execute('x-query-virtio-status', { path: NIC })) as { disabled: boolean }).disabled;
}

/** PCI address (bus 0) of the NIC, from query-pci. */
async function nicSlot(qmp: QmpClient): Promise<{ slot: number; fn: number }> {
  const buses = (await qmp.execute('query-pci')) as Array<{ bus: number; devices: Array<{ bus: number; slot: number; function: number; qdev_id: string }> }>;
  const d = buses.flatMap((b) => b.devices).find((x) => x.qdev_id === IDS.nic);
  assert.ok(d && d.bus === 0, 'the NIC is on PCI bus 0');
  return { slot: d.slot, fn: d.function };
}

async function scenario(binary: string, allowMissingFixes = false): Promise<Outcome> {
  const pair = await OneHostPair.start({ qemu: { binary, accel: 'tcg', allowMissingFixes } });
  try {
    await bumpCounter(pair.httpBase, 15_000);
    const sq = pair.secondary.qmp;
    const { slot, fn } = await nicSlot(sq);
    // PCI_COMMAND (offset 4) with the bus-master bit (0x4) cleared.
    const select = `o /w 0xcf8 0x${((0x80000000 | (slot << 11) | (fn << 8) | 4) >>> 0).toString(16)}`;
    assert.equal(await sq.hmp(select), '');
    const m = /= 0x([0-9a-f]+)/.exec(await sq.hmp('i /h 0xcfc'));
    assert.ok(m, 'PCI_COMMAND read back');
    const command = parseInt(m[1]!, 16);
    assert.equal(await sq.hmp(select), '');
    assert.equal(await sq.hmp(`o /h 0xcfc 0x${(command & ~0x4).toString(16)}`), '');
    const disabledBefore = await nicDisabled(sq);
    await checkpointNow(pair.primary.qmp, pair.config.replication.checkpointDelayMs);
    const disabledAfterCheckpoint = await nicDisabled(sq);
    const requestMs: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now();
      await bumpCounter(pair.httpBase, 30_000);
      requestMs.push(Date.now() - t0);
    }
    return { disabledBefore, disabledAfterCheckpoint, requestMs };
  } finally {
    await pair.stop({ removeDir: true });
  }
}

test('a flag the secondary raised by itself: stuck without patch 0003, cleared by the next checkpoint with it', { timeout: 15 * 60_000 }, async (t) => {
  const rt = await runtime();
  if (rt.accel !== 'tcg') {
    t.skip('KVM works here: the lab QEMU is not used');
    return;
  }
  const series = patchSeries();
  const without = await ensureLabQemu({ patches: series.slice(0, 2), onStep: (m) => process.stderr.write(`# ${m}\n`) });
  const before = await scenario(without.binary, true);
  process.stderr.write(`# without 0003: ${JSON.stringify(before)}\n`);
  assert.equal(before.disabledBefore, true, 'the secondary NIC was disabled by the config write');
  assert.equal(before.disabledAfterCheckpoint, true, 'the bug reproduces: the checkpoint leaves the secondary NIC disabled');
  assert.ok(Math.min(...before.requestMs) > 2000, `every request waits for the compare timeout: ${before.requestMs}`);

  const after = await scenario(rt.binary);
  process.stderr.write(`# with 0003: ${JSON.stringify(after)}\n`);
  assert.equal(after.disabledBefore, true);
  assert.equal(after.disabledAfterCheckpoint, false, 'the checkpoint brings the secondary NIC back');
  assert.ok(Math.max(...after.requestMs) < 2000, `requests are answered without waiting for the compare timeout: ${after.requestMs}`);
});
