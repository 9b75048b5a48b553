/**
 * Partitions on separate lab hosts (a namespace per node, witness and
 * client, each link its own cable): the primary's host loses every link at
 * once — replication, heartbeat, witness and LAN — while its VM runs on.
 * No reset ever reaches either side, so QEMU's COLO threads wait forever and
 * no COLO_EXIT comes. The secondary must notice the stalled stream, obtain
 * the lease once the isolated primary could no longer renew it, and take
 * over; the primary must fence itself. Never two writers.
 */
import { test, before, after } from 'node:test';
import { keepLogsOnly } from '../helpers/lab.js';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HostsLab } from '../../src/lab/hosts-scenario.js';
import { writers, runRound, assertClientOk, carriesOn } from '../helpers/scenario.js';
import { waitFor, sleep } from '../../src/util/time.js';

const isRoot = process.getuid?.() === 0;
const ROUNDS = Number(process.env.LOCKSTEP_ROUNDS ?? 3);
let lab: HostsLab;

before(async () => {
  if (!isRoot) return;
  lab = await HostsLab.create(fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-hosts-')));
});

after(async () => {
  if (!isRoot) return;
  await lab.remove();
  keepLogsOnly(lab.root);
});

test(`isolate the primary's host from everything, ${ROUNDS} times: the secondary takes over with the lease, the primary fences`, { skip: !isRoot && 'needs root for network namespaces', timeout: 20 * 60_000 }, async () => {
  for (let i = 1; i <= ROUNDS; i++) await runRound(() => lab.startPair(), `primary isolated, round ${i}`, async (p) => {
    const cutAt = Date.now();
    await lab.hosts.isolate('a');
    try {
      await waitFor('b to take over', async () => {
        const st = await p.status();
        assert.ok(writers(st).length <= 1, `round ${i}: two writers: ${writers(st)}`);
        return st.lastFailover?.to === 'b';
      }, { timeoutMs: 60_000, intervalMs: 200 });
      const tookMs = Date.now() - cutAt;
      await waitFor('a to fence itself', async () => {
        const st = await p.status();
        assert.ok(writers(st).length <= 1, `round ${i}: two writers: ${writers(st)}`);
        return st.nodes.find((n) => n.name === 'a')?.agent?.role === 'fenced';
      }, { timeoutMs: 30_000, intervalMs: 200 });
      const st = await p.status();
      const [a, b] = ['a', 'b'].map((n) => st.nodes.find((x) => x.name === n)!);
      assert.deepEqual([b!.role, b!.runState, b!.colo?.mode], ['primary', 'running', 'none'], `round ${i}: b carries the VM`);
      assert.notEqual(a!.runState, 'running', `round ${i}: the isolated primary's VM is stopped`);
      await carriesOn(p, 20, 'traffic from b');
      process.stderr.write(`# primary isolated, round ${i}: b took over ${tookMs} ms after the cut\n`);
    } finally {
      await lab.hosts.heal();
    }
    await sleep(500);
    assertClientOk(await p.stop(), `primary isolated, round ${i}`);
  });
});
