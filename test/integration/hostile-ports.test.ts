/**
 * Input from the network is hostile until authenticated. While a pair runs
 * on the lab's separate hosts, every port lockstep listens on (each agent's,
 * the witness's) gets what an attacker or a broken peer might send: JSON
 * that is no handshake (`null` once ended the witness), oversized lines,
 * binary junk, HTTP, a proof made with the wrong secret, more connections
 * at once than the handshake admits; and, from a peer that knows the secret,
 * lines with a bad MAC, a replayed line and messages outside the protocol.
 * Every one is refused and its connection closed; no process ends; the pair
 * stays protected and the client never notices.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { hostsLabForTests } from '../helpers/lab.js';
import { runRound, assertClientOk, carriesOn } from '../helpers/scenario.js';
import { loadConfig } from '../../src/config/load.js';
import { LAB_SECRET } from '../../src/lab/scenario.js';
import { packageRoot } from '../../src/util/paths.js';
import { pidRunning } from '../../src/util/proc.js';
import { readState } from '../../src/pair/state.js';
import { waitFor } from '../../src/util/time.js';

const run = promisify(execFile);
const isRoot = process.getuid?.() === 0;
const labOf = hostsLabForTests('hp');

interface Outcome {
  attempt: string;
  closed: boolean;
  extra: string[];
}

/** Runs the hostile peer inside a lab host's namespace against HOST:PORT. */
async function hostile(netns: string, host: string, port: number, name: string): Promise<Outcome[]> {
  const script = path.join(packageRoot(), 'dist', 'src', 'lab', 'hostile.js');
  const r = await run('ip', ['netns', 'exec', netns, process.execPath, script, host, String(port), LAB_SECRET, name], { timeout: 180_000 });
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Outcome);
}

test('garbage, oversized, unauthenticated and forged lines on every port lockstep listens on: nothing ends, the pair stays protected', { skip: !isRoot && 'needs root for network namespaces', timeout: 15 * 60_000 }, async () => {
  await runRound(() => labOf().startPair(), 'hostile ports', async (p) => {
    const c = loadConfig(p.cfg);
    const a = c.agents!;
    const h = labOf().hosts;
    await waitFor('the pair to be protected', async () => (await p.status()).protected, { timeoutMs: 30_000, intervalMs: 200 });
    const s0 = readState(p.stateDir)!;
    const agentPids = Object.values(s0.agents ?? {});
    const qemuPids = s0.nodes.map((n) => n.pid);
    const [wHost, wPort] = a.witness!.split(':');
    const targets = [
      { what: "b's agent", from: h.ns.a, host: a.links!.b![0]!, port: a.port, name: 'a' },
      { what: "a's agent", from: h.ns.b, host: a.links!.a![0]!, port: a.port, name: 'b' },
      { what: 'the witness', from: h.ns.a, host: wHost!, port: Number(wPort), name: 'mallory' },
    ];
    for (const t of targets) {
      const outcomes = await hostile(t.from, t.host, t.port, t.name);
      process.stderr.write(`# ${t.what}: ${outcomes.length} hostile attempts, ${outcomes.filter((o) => o.closed).length} refused and closed\n`);
      assert.ok(outcomes.length >= 13, `${t.what}: every attempt ran`);
      for (const o of outcomes) {
        assert.equal(o.closed, true, `${t.what}: "${o.attempt}": the connection is closed`);
        // Before authentication nothing may come back but the hello (an authenticated peer may get heartbeats first).
        if (!o.attempt.startsWith('authenticated')) assert.deepEqual(o.extra, [], `${t.what}: "${o.attempt}": nothing came back`);
      }
      for (const pid of [...agentPids, ...qemuPids]) assert.ok(pidRunning(pid), `${t.what}: pid ${pid} of the pair still runs`);
      assert.ok(labOf().witnessRunning(), `${t.what}: the witness still runs`);
    }
    const st = await waitFor('the pair to be protected after the attacks', async () => {
      const s = await p.status();
      return s.protected ? s : undefined;
    }, { timeoutMs: 30_000, intervalMs: 200 });
    assert.equal(st.lastFailover, null, 'no failover');
    await carriesOn(p, 10, 'traffic after the attacks');
    assertClientOk(await p.stop(), 'hostile ports');
  });
});
