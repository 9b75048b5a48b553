/**
 * Two protected VMs whose primaries are on different hosts, through the
 * daemons of the lab hosts (each VM its own ports, taps, MAC, guest address
 * and lease at the one witness), a client on each keeping one TCP connection
 * and counting on its VM's disk:
 * - host a loses power: web (primary on a) fails over to b, db (primary on
 *   b) carries on alone; a comes back: both protected again by themselves;
 * - the same with host b (now the primary of both).
 * Each VM proves its own key at the shared witness, so each has a secret,
 * and a data-plane key, of its own. The two hosts keep one heartbeat session
 * per path between them, carrying both VMs (a TCP connection per path, not
 * per VM), before the faults and after each host came back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { NetnsClient } from '../../src/lab/client-driver.js';
import { LAB_GUEST_IPS } from '../../src/lab/daemon-vm.js';
import { daemonLab, assertConnectionKept, feltLines, type Fault } from '../helpers/daemons.js';
import { hostInfoSchema } from '../../src/daemon/api-types.js';
import { DEFAULT_HEARTBEAT_PORT } from '../../src/config/host.js';

const isRoot = process.getuid?.() === 0;

test('two VMs, primaries on different hosts: each host lost and back, both VMs run on and are protected again', { skip: !isRoot && 'needs root for namespaces', timeout: 15 * 60_000 }, async (t) => {
  const d = await daemonLab(t, 'two-vms');
  const { hosts, lab } = d;
  d.addVm('db', ['b', 'a']);
  await d.up();
  await d.up({ vm: 'db' });
  const every = await lab.cli('mgmt', ['status', '--json']);
  assert.equal(every.code, 0, `both protected: ${every.stdout}`);
  const st = { web: await d.status('web'), db: await d.status('db') };
  assert.deepEqual([st.web.of('a')?.agent?.role, st.db.of('b')?.agent?.role], ['primary', 'primary'], 'primaries on different hosts');
  // Each VM proves its own key at the shared witness and has a secret of its own: so its data-plane key is its own too.
  const key = (vm: string, h: 'a' | 'b') => fs.readFileSync(path.join(lab.dirs(h).state, 'vms', vm, 'tls', 'keys.psk'), 'utf8');
  assert.equal(key('web', 'a'), key('web', 'b'));
  assert.equal(key('db', 'a'), key('db', 'b'));
  assert.notEqual(key('web', 'a'), key('db', 'a'), "one VM's pair cannot reach the other's data plane");
  /** Each host's heartbeat sessions: one per path (the lab's hosts have two), up, carrying both VMs; and that many TCP connections. */
  const assertOneSessionPerPath = async (when: string) => {
    for (const h of ['a', 'b'] as const) {
      const r = await lab.cli(h, ['host', 'show', '--json'], { check: true });
      const info = hostInfoSchema.parse(JSON.parse(r.stdout));
      const sessions = info.heartbeatSessions ?? [];
      assert.equal(sessions.length, 2, `${when}: host ${h}'s sessions: ${JSON.stringify(sessions)}`);
      for (const x of sessions) assert.deepEqual([x.peer, x.up, x.vms], [h === 'a' ? 'b' : 'a', true, ['db', 'web']], `${when}: host ${h}: ${JSON.stringify(x)}`);
      const port = DEFAULT_HEARTBEAT_PORT;
      const ss = await lab.exec(h, 'ss', ['-Htn', 'state', 'established', `( sport = :${port} or dport = :${port} )`], { check: true });
      assert.equal(ss.stdout.trim().split('\n').filter(Boolean).length, 2, `${when}: host ${h}'s TCP connections of heartbeat sessions:\n${ss.stdout}`);
    }
  };
  await assertOneSessionPerPath('both VMs protected');
  const clients = { web: NetnsClient.start(hosts.ns.client, LAB_GUEST_IPS.web!, 100), db: NetnsClient.start(hosts.ns.client, LAB_GUEST_IPS.db!, 100) };
  const figures: string[] = [];
  const faults: Fault[] = [];
  try {
    for (const c of Object.values(clients)) await c.until((x) => x.echoOk >= 15 && x.httpOk >= 15, 240_000, 'traffic through COLO');
    /** Waits until both VMs answered 5 more requests; the time until the last did, and each one's. */
    const bothAnswer = async (what: string) => {
      const t0 = performance.now();
      const ok = { web: clients.web.latest.httpOk, db: clients.db.latest.httpOk };
      const each = await Promise.all(
        (['web', 'db'] as const).map(async (vm) => {
          await clients[vm].until((x) => x.httpOk >= ok[vm] + 5, 60_000, `${vm}: ${what}`);
          return `${vm} ${((performance.now() - t0) / 1000).toFixed(1)} s`;
        }),
      );
      return { ms: performance.now() - t0, each: each.join(', ') };
    };
    for (const lost of ['a', 'b'] as const) {
      const other = lost === 'a' ? 'b' : 'a';
      const lostAt = (await lab.powerLoss(hosts, lost)).deadAt;
      const answered = await bothAnswer(`answers after host ${lost} lost power`);
      for (const vm of ['web', 'db']) assert.equal((await d.status(vm)).of(other)?.agent?.role, 'alone', `${vm} runs on ${other} alone`);
      await hosts.heal();
      await lab.startDaemon(lost);
      const back = { web: await d.untilProtected(`web after host ${lost} came back`, 180_000, 'web'), db: await d.untilProtected(`db after host ${lost} came back`, 180_000, 'db') };
      await assertOneSessionPerPath(`host ${lost} back`);
      faults.push({ label: `host ${lost} lost`, at: lostAt, until: Date.now() });
      figures.push(`host ${lost} lost: both with 5 answers again within ${(answered.ms / 1000).toFixed(1)} s (${answered.each}); back: protected again after ${(back.web.ms / 1000).toFixed(1)} s (web), ${(back.db.ms / 1000).toFixed(1)} s more (db)`);
    }
    await bothAnswer('answers at the end');
  } finally {
    process.stderr.write(figures.map((f) => `# ${f}\n`).join(''));
    const sums = { web: await clients.web.finish(), db: await clients.db.finish() };
    for (const [vm, sum] of Object.entries(sums)) {
      process.stderr.write(feltLines(sum, faults).map((f) => `# ${vm}, ${f}\n`).join(''));
      // One request that waits long (a TCP retransmission backed off during the outage) rather than many that fail.
      process.stderr.write(`# ${vm}: longest request ${sum.http.maxMs.toFixed(0)} ms, longest echo ${sum.echo.maxMs.toFixed(0)} ms, ${sum.http.errors.length} requests failed\n`);
      assertConnectionKept(sum, vm);
    }
  }
});
