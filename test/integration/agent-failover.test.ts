/**
 * The node agents fail over by themselves. The pair runs in bridge mode on
 * the lab's separate hosts (a network namespace per node, with its agent; a
 * witness; replication and heartbeat each on their own cable), and a client
 * on the guest LAN keeps one TCP connection to the guest's echo service and
 * counts on its disk.
 * Each scenario runs three times in a row:
 *
 * - kill -9 the primary QEMU → the secondary takes over: the TCP connection
 *   survives and the counter never goes back nor skips an acknowledged value;
 * - kill -9 the secondary QEMU → the primary carries on;
 * - kill the primary's agent → no failover; a restarted agent re-attaches
 *   (and then handles a real failure);
 * - kill -9 the primary in the middle of a checkpoint → a healthy survivor;
 * - pull the agents' heartbeat cable with both VMs alive → no failover,
 *   never two writers, protected again once it heals;
 * - pull every cable between the nodes, the witness still reachable → the
 *   lease holder carries on alone;
 * - freeze (SIGSTOP) either QEMU → its agent ends it and the other carries on.
 */
import { test } from 'node:test';
import { hostsLabForTests } from '../helpers/lab.js';
import { writers, runRound, assertClientOk, carriesOn, restartAgent } from '../helpers/scenario.js';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { LabRun } from '../../src/lab/scenario.js';
import { readSerial, kernelTroubleLines } from '../../src/qemu/serial.js';
import { QmpClient } from '../../src/qmp/client.js';
import { waitFor, sleep } from '../../src/util/time.js';
import { pidRunning } from '../../src/util/proc.js';
import { loadConfig } from '../../src/config/load.js';

const isRoot = process.getuid?.() === 0;
const ROUNDS = Number(process.env.LOCKSTEP_ROUNDS ?? 3);
const labOf = hostsLabForTests('ag');

// Failover on its own: the survivor does not re-protect the VM here (resync.test.ts does).
const round = (label: string, body: (p: LabRun) => Promise<void>) => runRound(() => labOf().startPair({ reprotect: false }), label, body);

const opts = { skip: !isRoot && 'needs root for network namespaces', timeout: 20 * 60_000 };

test(`kill -9 the primary QEMU, ${ROUNDS} times: the secondary takes over by itself`, opts, async () => {
  for (let i = 1; i <= ROUNDS; i++) await round(`primary killed, round ${i}`, async (p) => {
    const st = await p.status();
    const primary = st.nodes.find((n) => n.role === 'primary')!;
    const killedAt = Date.now();
    process.kill(primary.pid!, 'SIGKILL');
    await carriesOn(p, 20);
    const after = await p.status();
    const b = after.nodes.find((n) => n.name === 'b')!;
    assert.deepEqual([b.role, b.runState, b.colo?.mode], ['primary', 'running', 'none'], `round ${i}: b carries the VM`);
    assert.match(after.lastFailover!.reason, /^agent: /);
    assert.ok(Date.parse(after.lastFailover!.at) - killedAt < 5000, `round ${i}: took over within 5 s`);
    assert.deepEqual(kernelTroubleLines(readSerial(path.join(p.stateDir, 'b', 'serial.log'))), []);
    assertClientOk(await p.stop(), `primary killed, round ${i}`);
  });
});

test(`kill -9 the secondary QEMU, ${ROUNDS} times: the primary carries on`, opts, async () => {
  for (let i = 1; i <= ROUNDS; i++) await round(`secondary killed, round ${i}`, async (p) => {
    const secondary = (await p.status()).nodes.find((n) => n.role === 'secondary')!;
    process.kill(secondary.pid!, 'SIGKILL');
    await carriesOn(p, 20);
    const after = await p.status();
    const a = after.nodes.find((n) => n.name === 'a')!;
    assert.deepEqual([a.role, a.runState, a.colo?.mode], ['primary', 'running', 'none'], `round ${i}: a carries on alone`);
    assert.deepEqual([after.lastFailover?.from, after.lastFailover?.to], ['b', 'a']);
    assertClientOk(await p.stop(), `secondary killed, round ${i}`);
  });
});

test(`kill the primary's agent, ${ROUNDS} times: no failover, and not called protected while nobody watches the replica; the restarted agent re-attaches`, opts, async () => {
  for (let i = 1; i <= ROUNDS; i++) await round(`agent killed, round ${i}`, async (p) => {
    const st = await p.status();
    const agentPid = (await p.status()).nodes.find((n) => n.name === 'a')!.agent!.pid;
    process.kill(agentPid, 'SIGKILL');
    await sleep(3000);
    const mid = await p.status();
    // The checkpoints go on, but only the primary's agent hears of a replica write that fails (QUORUM_REPORT_BAD).
    assert.equal(mid.protected, false, `round ${i}: not called protected with the primary's agent dead`);
    const bAgent = mid.nodes.find((n) => n.name === 'b')!.agent!;
    assert.ok(bAgent.degraded.some((d) => /no heartbeat from a/.test(d)), `round ${i}: b says why (${bAgent.degraded.join('; ')})`);
    assert.equal(mid.lastFailover, null, `round ${i}: no failover`);
    assert.equal(bAgent.role, 'secondary');
    restartAgent(p, 'a');
    await waitFor('the restarted agent to see its peer', async () => {
      const a = (await p.status()).nodes.find((n) => n.name === 'a')!.agent;
      return a && a.role === 'primary' && a.peer.paths.some((x) => x.lastHeardMs !== null && x.lastHeardMs < 500);
    }, { timeoutMs: 15_000, intervalMs: 300 });
    await waitFor('protected again once the primary\'s agent is back', async () => ((await p.status()).protected ? true : undefined), { timeoutMs: 15_000, intervalMs: 300 });
    // The re-attached agent handles a real failure.
    const primary = st.nodes.find((n) => n.role === 'primary')!;
    process.kill(primary.pid!, 'SIGKILL');
    await carriesOn(p, 20);
    assert.equal((await p.status()).lastFailover?.to, 'b');
    assertClientOk(await p.stop(), `agent killed, round ${i}`);
  });
});

test(`kill -9 the primary during a checkpoint, ${ROUNDS} times: a healthy survivor`, opts, async () => {
  for (let i = 1; i <= ROUNDS; i++) await round(`killed in a checkpoint, round ${i}`, async (p) => {
    const primary = (await p.status()).nodes.find((n) => n.role === 'primary')!;
    // Watch the primary's checkpoints on its second monitor and kill it right after a STOP.
    const qmp = await QmpClient.connect(path.join(p.stateDir, 'a', 'qmp2.sock'));
    const stops = qmp.listen('STOP');
    await stops.next(30_000, 'a checkpoint on the primary');
    process.kill(primary.pid!, 'SIGKILL');
    qmp.destroy();
    await carriesOn(p, 20);
    const b = (await p.status()).nodes.find((n) => n.name === 'b')!;
    assert.deepEqual([b.role, b.runState], ['primary', 'running'], `round ${i}`);
    assert.deepEqual(kernelTroubleLines(readSerial(path.join(p.stateDir, 'b', 'serial.log'))), []);
    assertClientOk(await p.stop(), `killed in a checkpoint, round ${i}`);
  });
});

test(`pull the heartbeat cable with both VMs alive, ${ROUNDS} times: no failover, never two writers`, opts, async () => {
  for (let i = 1; i <= ROUNDS; i++) await round(`heartbeat cut, round ${i}`, async (p) => {
    const agents = loadConfig(p.cfg).agents!;
    const ages = (st: Awaited<ReturnType<LabRun['status']>>) => st.nodes.flatMap((n) => (n.agent?.peer.paths ?? []).map((x) => x.lastHeardMs));
    await labOf().hosts.cut('heartbeat');
    try {
      // Both agents must really have lost each other, or this test proves nothing.
      await waitFor('both agents to miss the heartbeat', async () => {
        const a = ages(await p.status());
        return a.length >= 2 && a.every((ms) => ms === null || ms > 3 * agents.heartbeatTimeoutMs);
      }, { timeoutMs: 10_000, intervalMs: 200 });
      const until = Date.now() + 3000;
      while (Date.now() < until) {
        const st = await p.status();
        assert.deepEqual(writers(st), ['a'], `round ${i}: a is the only writer during the cut`);
        assert.equal(st.lastFailover, null, `round ${i}: no failover during the cut`);
        await sleep(200);
      }
    } finally {
      await labOf().hosts.restore('heartbeat');
    }
    await waitFor('the heartbeat to come back', async () => {
      const a = ages(await p.status());
      return a.length >= 2 && a.every((ms) => ms !== null && ms < agents.heartbeatTimeoutMs);
    }, { timeoutMs: 10_000, intervalMs: 200 });
    const st = await p.status();
    assert.equal(st.protected, true, `round ${i}: still protected`);
    assert.equal(st.lastFailover, null);
    await carriesOn(p, 10);
    assertClientOk(await p.stop(), `heartbeat cut, round ${i}`);
  });
});

test(`pull every cable between the nodes, the witness still reachable, ${ROUNDS} times: the lease holder carries on alone, never two writers`, opts, async () => {
  for (let i = 1; i <= ROUNDS; i++) await round(`nodes partitioned, round ${i}`, async (p) => {
    // Replication and heartbeat: everything between the two nodes; both still reach the witness and the LAN.
    await labOf().hosts.cut('replication');
    await labOf().hosts.cut('heartbeat');
    const cutAt = Date.now();
    try {
      // The primary yanks its hung links and carries on alone; the secondary, without
      // heartbeat or checkpoints, asks the witness and is refused: it stays a secondary.
      await waitFor('the primary to carry on alone', async () => {
        const st = await p.status();
        const w = writers(st);
        assert.ok(w.length <= 1, `round ${i}: two writers: ${w}`);
        return st.lastFailover?.to === 'a';
      }, { timeoutMs: 30_000, intervalMs: 200 });
      const tookMs = Date.now() - cutAt;
      // Longer than a stall, so that the secondary has asked the witness at least once.
      const until = Date.now() + 8000;
      while (Date.now() < until) {
        const st = await p.status();
        const b = st.nodes.find((n) => n.name === 'b')!;
        assert.notEqual(b.agent?.role, 'alone', `round ${i}: b never takes over while a holds the lease`);
        assert.ok(b.colo?.mode === 'secondary' || b.runState !== 'running', `round ${i}: b is not a writer`);
        await sleep(250);
      }
      // b learnt from the witness that a carries on with a newer epoch (by asking it for the lease and being refused,
      // or from its periodic question), and stopped its out-of-date VM.
      const decisions = fs.readFileSync(path.join(p.stateDir, 'b', 'agent.log'), 'utf8').split('\n').filter((l) => l.includes('"msg":"decision: '));
      assert.ok(decisions.some((l) => /"why":"(no heartbeat and no checkpoint|no heartbeat, and the primary's host answers nothing|the witness knows a newer disk)/.test(l)), `round ${i}: b learnt that a carries on alone`);
      assert.ok(['secondary', 'fenced'].includes((await p.status()).nodes.find((n) => n.name === 'b')!.agent?.role ?? ''), `round ${i}: b stays out of the way`);
      process.stderr.write(`# nodes partitioned, round ${i}: a alone after ${tookMs} ms\n`);
      await carriesOn(p, 20);
    } finally {
      await labOf().hosts.heal();
    }
    assertClientOk(await p.stop(), `nodes partitioned, round ${i}`);
  });
});

for (const frozen of ['primary', 'secondary'] as const) {
  test(`freeze the ${frozen} QEMU (SIGSTOP), ${ROUNDS} times: its agent ends it and the pair carries on`, opts, async () => {
    for (let i = 1; i <= ROUNDS; i++) await round(`${frozen} frozen, round ${i}`, async (p) => {
      const victim = (await p.status()).nodes.find((n) => n.role === frozen)!;
      const survivor = victim.name === 'a' ? 'b' : 'a';
      const frozenAt = Date.now();
      process.kill(victim.pid!, 'SIGSTOP');
      try {
        // A frozen process is still a process: only its agent's watchdog can call it dead.
        await waitFor('the frozen QEMU to be ended', () => !pidRunning(victim.pid!), { timeoutMs: 20_000, intervalMs: 100 });
      } finally {
        if (pidRunning(victim.pid!)) process.kill(victim.pid!, 'SIGCONT');
      }
      await carriesOn(p, 20);
      const st = await p.status();
      const s = st.nodes.find((n) => n.name === survivor)!;
      assert.deepEqual([s.role, s.runState, s.colo?.mode], ['primary', 'running', 'none'], `round ${i}: ${survivor} carries the VM`);
      assert.deepEqual([st.lastFailover?.from, st.lastFailover?.to], [victim.name, survivor]);
      process.stderr.write(`# ${frozen} frozen, round ${i}: ended and failed over ${Date.parse(st.lastFailover!.at) - frozenAt} ms after the freeze\n`);
      assertClientOk(await p.stop(), `${frozen} frozen, round ${i}`);
    });
  });
}
