/**
 * Re-protection on the lab's separate hosts, under continuous client load
 * (one TCP connection to the guest's echo service for the whole run, a
 * counter request every 100 ms):
 *
 * - failover → `lockstep resync` cycles on one pair, alternating a killed
 *   primary and a killed secondary, so that both nodes die in turn, both
 *   failover procedures run, and both resume procedures (with and without
 *   the filter-rewriter of a former secondary) are exercised: after each
 *   resync the pair is protected again and the next failure is survived;
 * - a resync whose new secondary is killed while the disk is mirrored
 *   fails cleanly (the survivor runs on alone), and the next one succeeds.
 *
 * The counter never goes back; the only gaps allowed are the requests in
 * flight at a kill.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { keepLogsOnly } from '../helpers/lab.js';
import { writers } from '../helpers/scenario.js';
import { HostsLab } from '../../src/lab/hosts-scenario.js';
import { counterProblems } from '../../src/lab/client-driver.js';
import type { LabRun } from '../../src/lab/scenario.js';
import { loadConfig } from '../../src/config/load.js';
import { resync } from '../../src/pair/resync.js';
import { readGeneration } from '../../src/pair/generation.js';
import { readState } from '../../src/pair/state.js';
import { waitFor } from '../../src/util/time.js';
import { pidRunning } from '../../src/util/proc.js';

const isRoot = process.getuid?.() === 0;
const CYCLES = Number(process.env.LOCKSTEP_RESYNC_CYCLES ?? 10);
let lab: HostsLab;

before(async () => {
  if (!isRoot) return;
  lab = await HostsLab.create(fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-resync-')));
});

after(async () => {
  if (!isRoot) return;
  await lab.remove();
  keepLogsOnly(lab.root);
});

const opts = { skip: !isRoot && 'needs root for network namespaces', timeout: 30 * 60_000 };

async function carriesOn(p: LabRun, by: number, what: string): Promise<void> {
  const t = p.client.latest;
  await p.client.until((x) => x.echoOk >= t.echoOk + by && x.httpOk >= t.httpOk + by, 60_000, what);
}

/** The PID of the QEMU whose command line names `marker` (its QMP socket), if one runs. */
function qemuPidWith(marker: string): number | undefined {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (cmd.some((x) => x.includes('qemu-system')) && cmd.some((x) => x.includes(marker))) return Number(d);
    } catch {
      /* gone */
    }
  }
  return undefined;
}

test(`${CYCLES} failover → resync cycles under load, both nodes dying in turn: protected after each, the counter never goes back, one TCP connection throughout`, opts, async () => {
  const p = await lab.startPair();
  const c = loadConfig(p.cfg);
  let kills = 0;
  try {
    for (let i = 1; i <= CYCLES; i++) {
      const victimRole = i % 2 === 1 ? 'primary' : 'secondary';
      const st = await p.status();
      assert.equal(st.protected, true, `cycle ${i}: protected before the kill`);
      const victim = st.nodes.find((n) => n.role === victimRole)!;
      const survivor = st.nodes.find((n) => n !== victim)!;
      const genBefore = readGeneration(path.join(p.stateDir, survivor.name)).generation;
      const before = st.lastFailover?.at;
      process.kill(victim.pid!, 'SIGKILL');
      kills++;
      await waitFor(`cycle ${i}: ${survivor.name} to carry on alone`, async () => {
        const s = await p.status();
        assert.ok(writers(s).length <= 1, `cycle ${i}: two writers`);
        return s.lastFailover !== null && s.lastFailover.at !== before && s.lastFailover.to === survivor.name;
      }, { timeoutMs: 20_000, intervalMs: 100 });
      assert.equal(readGeneration(path.join(p.stateDir, survivor.name)).generation, genBefore + 1, `cycle ${i}: the survivor's disk starts a new generation`);
      await carriesOn(p, 10, `cycle ${i}: traffic from ${survivor.name} alone`);
      const r = await resync(c);
      assert.deepEqual([r.from, r.to], [survivor.name, victim.name], `cycle ${i}: resync from the survivor`);
      const after = await p.status();
      assert.equal(after.protected, true, `cycle ${i}: protected again`);
      assert.equal(after.nodes.find((n) => n.name === survivor.name)!.role, 'primary');
      assert.equal(readGeneration(path.join(p.stateDir, victim.name)).generation, genBefore + 1, `cycle ${i}: the target holds the survivor's generation`);
      await carriesOn(p, 10, `cycle ${i}: traffic through COLO after the resync`);
      process.stderr.write(
        `# cycle ${i}: ${victimRole} ${victim.name} killed; ${survivor.name} took over in ${after.lastFailover!.ms.toFixed(0)} ms; ` +
          `resync ${(r.ms / 1000).toFixed(2)} s (mirror ${(r.mirrorBytes / 2 ** 20).toFixed(0)} MiB ${r.mirrorMs.toFixed(0)} ms, VM stopped ${r.stoppedMs.toFixed(0)} ms)\n`,
      );
    }
  } finally {
    const s = await p.stop();
    process.stderr.write(`# ${CYCLES} cycles: echo ${s.echo.ok}/${s.echo.sent} max ${s.echo.maxMs.toFixed(0)} ms; http ${s.http.ok} ok ${s.http.errors.length} errors max ${s.http.maxMs.toFixed(0)} ms\n`);
    assert.deepEqual(s.echo.errors, [], 'the echo connection never failed');
    assert.equal(s.echo.closed, false, 'the echo connection stayed open from start to end');
    assert.equal(counterProblems(s.http.counts, kills), undefined);
    assert.ok(s.http.errors.length <= kills, `at most the requests in flight at the kills failed: ${JSON.stringify(s.http.errors)}`);
  }
});

test('a resync whose new secondary is killed while the disk is mirrored fails cleanly; the next one succeeds', opts, async () => {
  const p = await lab.startPair();
  const c = loadConfig(p.cfg);
  try {
    const st = await p.status();
    process.kill(st.nodes.find((n) => n.role === 'secondary')!.pid!, 'SIGKILL');
    await waitFor('a to carry on alone', async () => (await p.status()).lastFailover?.to === 'a', { timeoutMs: 20_000, intervalMs: 100 });
    // Kill the new secondary as soon as the mirror starts.
    let killed: number | undefined;
    const err = await resync(c, {
      onUpdate: (m) => {
        if (!killed && m.startsWith('drive-mirror')) {
          killed = qemuPidWith(path.join(p.stateDir, 'b', 'qmp.sock'));
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
    const s = await p.stop();
    assert.deepEqual(s.echo.errors, []);
    assert.equal(s.echo.closed, false);
    assert.equal(counterProblems(s.http.counts, 1), undefined);
  }
});
