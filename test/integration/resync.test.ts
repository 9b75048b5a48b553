/**
 * Re-protection on the lab's separate hosts, under continuous client load
 * (one TCP connection to the guest's echo service for the whole run, a
 * counter request every 100 ms):
 *
 * - failover → automatic re-protection cycles on one pair, alternating a
 *   killed primary and a killed secondary, so that both nodes die in turn,
 *   both failover procedures run, and both resume procedures (with and
 *   without the filter-rewriter of a former secondary) are exercised: the
 *   survivor's agent resyncs the other node by itself each time, and the
 *   next failure is survived;
 * - the new secondary killed while the survivor's agent resyncs it: the
 *   survivor runs on alone, and its agent tries again by itself;
 * - the survivor's agent killed while it resyncs: the VM runs on, and the
 *   restarted agent takes the half-done resume back and re-protects;
 * - the survivor's QEMU killed during that resync, so that no VM runs at all:
 *   the node with the newest disk restarts the VM by itself (the guest
 *   reboots, its disk keeps every acknowledged write) and re-protects it;
 * - the replication cable pulled in the middle of the disk mirror: the
 *   survivor notices the stalled mirror, gives up and runs on alone, and the
 *   agents re-protect once the cable is back;
 * - `lockstep resync` by hand (agents that do not re-protect by themselves),
 *   interrupted by killing the new secondary, then again: protected.
 *
 * The counter never goes back; the only gaps allowed are the requests in
 * flight at a kill.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { hostsLabForTests } from '../helpers/lab.js';
import { writers, carriesOn, restartAgent, leftovers, dumpQemus, assertOneWriter } from '../helpers/scenario.js';
import { counterProblems, type ClientSummary } from '../../src/lab/client-driver.js';
import { createDataDisk } from '../../src/lab/data-disk.js';
import type { LabRun } from '../../src/lab/scenario.js';
import { loadConfig } from '../../src/config/load.js';
import { resync } from '../../src/pair/resync.js';
import { readEpoch } from '../../src/pair/generation.js';
import { readState } from '../../src/pair/state.js';
import { sleep, waitFor } from '../../src/util/time.js';
import { run } from '../../src/util/exec.js';
import { pidRunning } from '../../src/util/proc.js';

const isRoot = process.getuid?.() === 0;
const CYCLES = Number(process.env.LOCKSTEP_RESYNC_CYCLES ?? 10);
const labOf = hostsLabForTests('resync');

const opts = { skip: !isRoot && 'needs root for network namespaces', timeout: 30 * 60_000 };

/** The PID of a QEMU whose command line names `marker` (its QMP socket) and is not `except`, if one runs. */
function qemuPidWith(marker: string, except?: number): number | undefined {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === except) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (cmd.some((x) => x.includes('qemu-system')) && cmd.some((x) => x.includes(marker))) return Number(d);
    } catch {
      /* gone */
    }
  }
  return undefined;
}

/** Waits until the pair is protected again after a resync newer than `since` (an ISO time or undefined). */
async function reprotected(p: LabRun, since: string | undefined, what: string, timeoutMs = 60_000) {
  return waitFor(what, async () => {
    const s = await p.status();
    await assertOneWriter(p, s, what);
    return s.protected && s.lastResync && s.lastResync.at !== since ? s : undefined;
  }, { timeoutMs, intervalMs: 100 });
}

function assertClient(s: ClientSummary, kills: number, label: string, p?: LabRun): void {
  if (p) assert.deepEqual(leftovers(p), [], `${label}: nothing of the pair is left running`);
  process.stderr.write(`# ${label}: echo ${s.echo.ok}/${s.echo.sent} max ${s.echo.maxMs.toFixed(0)} ms; http ${s.http.ok} ok ${s.http.errors.length} errors max ${s.http.maxMs.toFixed(0)} ms\n`);
  assert.deepEqual(s.echo.errors, [], `${label}: the echo connection never failed`);
  assert.equal(s.echo.closed, false, `${label}: the echo connection stayed open from start to end`);
  assert.equal(counterProblems(s.http.counts, kills), undefined, label);
  assert.ok(s.http.errors.length <= kills, `${label}: at most the requests in flight at the kills failed: ${JSON.stringify(s.http.errors)}`);
}

test(`${CYCLES} failover → automatic re-protection cycles under load, both nodes dying in turn`, opts, async () => {
  const p = await labOf().startPair();
  let kills = 0;
  try {
    for (let i = 1; i <= CYCLES; i++) {
      const victimRole = i % 2 === 1 ? 'primary' : 'secondary';
      const st = await p.status();
      assert.equal(st.protected, true, `cycle ${i}: protected before the kill`);
      const victim = st.nodes.find((n) => n.role === victimRole)!;
      const survivor = st.nodes.find((n) => n !== victim)!;
      const genBefore = readEpoch(path.join(p.stateDir, survivor.name))?.gen ?? -1;
      const killedAt = Date.now();
      process.kill(victim.pid!, 'SIGKILL');
      kills++;
      const after = await reprotected(p, st.lastResync?.at, `cycle ${i}: protected again`);
      const unprotectedMs = Date.parse(after.protectedAt!) - killedAt;
      assert.deepEqual([after.lastFailover?.from, after.lastFailover?.to], [victim.name, survivor.name], `cycle ${i}: ${survivor.name} took over`);
      assert.deepEqual([after.lastResync!.from, after.lastResync!.to], [survivor.name, victim.name], `cycle ${i}: resync from the survivor`);
      assert.equal(after.nodes.find((n) => n.name === survivor.name)!.role, 'primary');
      const gens = [survivor.name, victim.name].map((n) => readEpoch(path.join(p.stateDir, n))?.gen);
      assert.deepEqual(gens, [genBefore + 1, genBefore + 1], `cycle ${i}: a new generation on the survivor, handed to the resynced node`);
      // Seen once (fresh-clone CI, cycle 2): protected, checkpoints flowing, but no traffic for 60 s; the QEMUs' links say more next time.
      await carriesOn(p, 10, `cycle ${i}: traffic through COLO after the resync`).catch(async (err: unknown) => {
        await dumpQemus(p, `cycle ${i}`);
        throw err;
      });
      const r = after.lastResync!;
      process.stderr.write(
        `# cycle ${i}: ${victimRole} ${victim.name} killed; ${survivor.name} took over in ${after.lastFailover!.ms.toFixed(0)} ms; ` +
          `protected again ${(unprotectedMs / 1000).toFixed(2)} s after the kill (resync ${(r.ms / 1000).toFixed(2)} s, mirror ${(r.mirrorBytes / 2 ** 20).toFixed(0)} MiB ${r.mirrorMs.toFixed(0)} ms, VM stopped ${r.stoppedMs.toFixed(0)} ms)\n`,
      );
    }
    // The replica exact after the last switch into COLO: with the client quiet (the guest writes only for it) and a
    // checkpoint or two later, the primary's disk and the secondary's replica hold the same data, block for block.
    await p.client.finish();
    await sleep(3000);
    const st = readState(p.stateDir)!;
    const [pd, sd] = (['primary', 'secondary'] as const).map((role) => st.nodes.find((n) => n.role === role)!.disk);
    const cmp = await run('qemu-img', ['compare', '-U', pd!, sd!], { allowFailure: true, timeoutMs: 60_000 });
    assert.equal(cmp.code, 0, `the primary's disk and the secondary's replica differ after ${CYCLES} re-protections: ${cmp.stdout}${cmp.stderr}`);
    process.stderr.write(`# after ${CYCLES} cycles: ${cmp.stdout.trim()} (the primary's disk and the secondary's replica)\n`);
  } finally {
    assertClient(await p.stop(), kills, `${CYCLES} cycles`, p);
  }
});

test('the new secondary killed during an automatic resync: the survivor runs on alone, and its agent tries again by itself', opts, async () => {
  const p = await labOf().startPair();
  try {
    const st = await p.status();
    const old = st.nodes.find((n) => n.role === 'secondary')!;
    process.kill(old.pid!, 'SIGKILL');
    // The survivor's agent has b start a new secondary at once: kill it as soon as it appears.
    const marker = path.join(p.stateDir, 'b', 'qmp.sock');
    const victim = await waitFor('the new secondary on b', () => qemuPidWith(marker, old.pid!), { timeoutMs: 20_000, intervalMs: 5 });
    process.kill(victim, 'SIGKILL');
    const s = await reprotected(p, undefined, 'protected again after the retry', 90_000);
    assert.notEqual(s.nodes.find((n) => n.name === 'b')!.pid, victim, 'a second new secondary');
    const log = fs.readFileSync(path.join(p.stateDir, 'a', 'agent.log'), 'utf8');
    assert.match(log, /resync given up \(.*\): running on alone/, 'the first attempt failed and was reported');
    await carriesOn(p, 10, 'traffic through COLO after the retry');
  } finally {
    assertClient(await p.stop(), 1, 'new secondary killed', p);
  }
});

test("the survivor's agent killed during a resync: the VM runs on, the restarted agent takes it back and re-protects", opts, async () => {
  const p = await labOf().startPair();
  try {
    const st = await p.status();
    const old = st.nodes.find((n) => n.role === 'secondary')!;
    const agentA = readState(p.stateDir)!.agents!.a!;
    process.kill(old.pid!, 'SIGKILL');
    await waitFor('the new secondary on b', () => qemuPidWith(path.join(p.stateDir, 'b', 'qmp.sock'), old.pid!), { timeoutMs: 20_000, intervalMs: 5 });
    process.kill(agentA, 'SIGKILL');
    await carriesOn(p, 10, 'traffic from a while its agent is dead');
    restartAgent(p, 'a');
    const s = await reprotected(p, undefined, 'protected again by the restarted agent', 90_000);
    assert.equal(s.nodes.find((n) => n.name === 'a')!.role, 'primary');
    await carriesOn(p, 10, 'traffic through COLO after the restart');
  } finally {
    assertClient(await p.stop(), 1, 'agent killed in a resync', p);
  }
});

test("the survivor's QEMU killed during its resync (the whole pair down): the newest disk restarts the VM by itself, no acknowledged write lost, protected again", opts, async () => {
  const p = await labOf().startPair();
  let s: ClientSummary | undefined;
  try {
    const st = await p.status();
    const old = st.nodes.find((n) => n.role === 'secondary')!;
    const primary = st.nodes.find((n) => n.role === 'primary')!;
    process.kill(old.pid!, 'SIGKILL');
    await waitFor('the new secondary on b', () => qemuPidWith(path.join(p.stateDir, 'b', 'qmp.sock'), old.pid!), { timeoutMs: 20_000, intervalMs: 5 });
    const killedAt = Date.now();
    process.kill(primary.pid!, 'SIGKILL');
    const restarted = await waitFor('a to restart the VM', async () => {
      const x = await p.status();
      await assertOneWriter(p, x, 'restart after a kill');
      return x.lastRestart ? x : undefined;
    }, { timeoutMs: 60_000, intervalMs: 100 });
    assert.equal(restarted.lastRestart!.node, 'a', 'a, whose disk is a generation ahead, restarts');
    process.stderr.write(`# whole pair down: a restarted the VM ${Date.parse(restarted.lastRestart!.at) - killedAt} ms after the kill\n`);
    const again = await reprotected(p, undefined, 'protected again after the restart', 120_000);
    assert.deepEqual([again.lastResync!.from, again.lastResync!.to], ['a', 'b']);
    const before = p.client.latest.httpOk;
    await p.client.until((x) => x.httpOk >= before + 10, 60_000, 'answers from the restarted VM');
  } finally {
    s = await p.stop();
  }
  // The guest rebooted: its TCP connections died with it; the disk kept every acknowledged write.
  process.stderr.write(`# whole pair down: http ${s.http.ok} ok, ${s.http.errors.length} errors during the restart; counter ${s.http.counts[0]} … ${s.http.counts.at(-1)}\n`);
  assert.equal(counterProblems(s.http.counts, 1), undefined);
  assert.deepEqual(leftovers(p), [], 'nothing of the pair is left running');
});

test('the replication cable pulled while the disk is mirrored: the survivor gives the resync up and runs on alone, and once the cable is back the agents re-protect', opts, async () => {
  // A disk of real data, so that the mirror takes long enough to be cut in the middle.
  const image = path.join(labOf().root, 'data.qcow2');
  await createDataDisk(image, 256);
  const p = await labOf().startPair({ diskImage: image });
  try {
    const st = await p.status();
    process.kill(st.nodes.find((n) => n.role === 'secondary')!.pid!, 'SIGKILL');
    const mirroring = await waitFor('the mirror to be under way', async () => {
      const w = (await p.status()).nodes.find((n) => n.name === 'a')!.agent?.work;
      return w?.kind === 'reprotect' && w.mirror && w.mirror.offset > 0 && w.mirror.offset < w.mirror.len ? w.mirror : undefined;
    }, { timeoutMs: 30_000, intervalMs: 20 });
    await labOf().hosts.cut('replication');
    const cutAt = Date.now();
    process.stderr.write(`# cable pulled with ${(mirroring.offset / 2 ** 20).toFixed(0)} of ${(mirroring.len / 2 ** 20).toFixed(0)} MiB mirrored\n`);
    try {
      await waitFor('the survivor to give the resync up', () => /resync given up \(.*\): running on alone/.test(fs.readFileSync(path.join(p.stateDir, 'a', 'agent.log'), 'utf8')), { timeoutMs: 30_000, intervalMs: 200 });
      process.stderr.write(`# resync given up ${Date.now() - cutAt} ms after the cut\n`);
      const mid = await p.status();
      const a = mid.nodes.find((n) => n.name === 'a')!;
      assert.deepEqual([a.runState, a.colo?.mode, mid.protected], ['running', 'none', false], 'a runs on alone');
      assert.deepEqual(writers(mid), ['a']);
      await carriesOn(p, 10, 'traffic from a while the cable is out');
    } finally {
      await labOf().hosts.restore('replication');
    }
    const s = await reprotected(p, undefined, 'protected again once the cable is back', 120_000);
    assert.deepEqual([s.lastResync!.from, s.lastResync!.to], ['a', 'b']);
    await carriesOn(p, 10, 'traffic through COLO after the resync');
  } finally {
    const sum = await p.stop();
    assertClient(sum, 1, 'cable pulled in a resync', p);
    // The mirror never makes a guest write wait for a cut link: a write-blocking mirror held the guest's disk until the
    // resync was given up (10.7-10.9 s without an answer); in the background mode the longest wait was 0.6 s.
    assert.ok(sum.http.maxMs < 5000, `cable pulled in a resync: a counter request waited ${sum.http.maxMs.toFixed(0)} ms: the guest's disk waited for the cut link?`);
  }
});

test('lockstep resync by hand, its new secondary killed during the resync: fails cleanly; the next one protects', opts, async () => {
  const p = await labOf().startPair({ reprotect: false });
  const c = loadConfig(p.cfg);
  try {
    const st = await p.status();
    const old = st.nodes.find((n) => n.role === 'secondary')!;
    process.kill(old.pid!, 'SIGKILL');
    await waitFor('a to carry on alone', async () => (await p.status()).lastFailover?.to === 'a', { timeoutMs: 20_000, intervalMs: 100 });
    let killed: number | undefined;
    const err = await resync(c, {
      onUpdate: (m) => {
        if (!killed && m.startsWith('drive-mirror')) {
          killed = qemuPidWith(path.join(p.stateDir, 'b', 'qmp.sock'), old.pid!);
          if (killed) process.kill(killed, 'SIGKILL');
        }
      },
    }).then(() => undefined, (e: Error) => e);
    assert.ok(killed, 'the new secondary was found and killed during the resync');
    assert.ok(err, 'the resync failed');
    process.stderr.write(`# interrupted resync: ${err.message.split('\n')[0]}\n`);
    const mid = await p.status();
    const a = mid.nodes.find((n) => n.name === 'a')!;
    assert.deepEqual([a.runState, a.colo?.mode, mid.protected], ['running', 'none', false], 'a runs on alone');
    assert.equal(pidRunning(killed!), false);
    assert.equal(readState(p.stateDir)!.nodes.find((n) => n.name === 'b')!.role, 'secondary', 'b is still the one to resync');
    await carriesOn(p, 10, 'traffic from a after the failed resync');
    const r = await resync(c);
    assert.deepEqual([r.from, r.to], ['a', 'b']);
    assert.equal((await p.status()).protected, true, 'protected after the retry');
    await carriesOn(p, 10, 'traffic through COLO after the retry');
  } finally {
    assertClient(await p.stop(), 1, 'resync by hand', p);
  }
});
