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
import { counterProblems } from '../../src/lab/client-driver.js';
import type { LabRun } from '../../src/lab/scenario.js';
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

function writers(st: Awaited<ReturnType<LabRun['status']>>): string[] {
  return st.nodes.filter((n) => (n.runState === 'running' || n.runState === 'colo') && n.colo?.mode !== 'secondary').map((n) => n.name);
}

test(`isolate the primary's host from everything, ${ROUNDS} times: the secondary takes over with the lease, the primary fences`, { skip: !isRoot && 'needs root for network namespaces', timeout: 20 * 60_000 }, async () => {
  for (let i = 1; i <= ROUNDS; i++) {
    const p = await lab.startPair();
    try {
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
        const t = p.client.latest;
        await p.client.until((x) => x.echoOk >= t.echoOk + 20 && x.httpOk >= t.httpOk + 20, 60_000, 'traffic from b');
        process.stderr.write(`# primary isolated, round ${i}: b took over ${tookMs} ms after the cut\n`);
      } finally {
        await lab.hosts.heal();
      }
      await sleep(500);
      const s = await p.stop();
      process.stderr.write(`# primary isolated, round ${i}: echo ${s.echo.ok}/${s.echo.sent} max ${s.echo.maxMs.toFixed(0)} ms; http ${s.http.ok} ok ${s.http.errors.length} errors max ${s.http.maxMs.toFixed(0)} ms\n`);
      assert.deepEqual(s.echo.errors, [], `round ${i}: the echo connection never failed`);
      assert.equal(s.echo.closed, false, `round ${i}: the echo connection stayed open`);
      assert.equal(counterProblems(s.http.counts), undefined, `round ${i}`);
      assert.ok(s.http.errors.length <= 1, `round ${i}: at most the request in flight failed: ${JSON.stringify(s.http.errors)}`);
    } catch (err) {
      for (const n of ['a', 'b']) {
        const log = path.join(p.dir, '.lockstep', 'hp', n, 'agent.log');
        if (fs.existsSync(log)) process.stderr.write(`# round ${i}: agent ${n} log (last lines):\n${fs.readFileSync(log, 'utf8').trim().split('\n').slice(-12).map((l) => `#   ${l}`).join('\n')}\n`);
      }
      await p.stop().catch(() => undefined);
      throw err;
    }
  }
});
