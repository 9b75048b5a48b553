/**
 * A VM protected by the daemons of two lab hosts that share nothing (a
 * mount namespace each), driven only with the CLI from the management host:
 * `up -f` starts it on the primary's host from an image that exists only
 * there, the first sync goes over the replication network, a client on the
 * guest LAN keeps one TCP connection and counts on the disk; a daemon
 * restart changes nothing the client sees; the primary's QEMU killed: the
 * other host carries the VM on and the agents re-protect it; down, then up
 * again: the agents restart the VM from the newest disk and protect it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NetnsClient, counterGaps } from '../../src/lab/client-driver.js';
import { pidRunning } from '../../src/util/proc.js';
import { daemonLab, feltLines, type Fault } from '../helpers/daemons.js';

const isRoot = process.getuid?.() === 0;

test('up -f through the daemons of two hosts that share nothing; daemon restarts; the primary killed; a failover by hand; down; up again from the newest disk', { skip: !isRoot && 'needs root for namespaces', timeout: 15 * 60_000 }, async (t) => {
  const d = await daemonLab(t, 'daemon-up');
  const { hosts, lab, vmFile } = d;

  // up, from the management host, with the image only on a.
  const up = await lab.cli('mgmt', ['up', '-f', vmFile, '--json'], { timeoutMs: 600_000 });
  assert.equal(up.code, 0, up.stderr);
  const first = await d.status();
  assert.equal(first.code, 0, 'status exits 0: protected');
  await d.guestReady();
  assert.deepEqual([first.of('a')?.agent?.role, first.of('b')?.agent?.role], ['primary', 'secondary']);
  assert.notEqual((await lab.exec('b', 'test', ['-e', '/var/lib/lockstep/images/web.qcow2'])).code, 0, "the image was never on b's host");
  assert.equal((await lab.exec('b', 'test', ['-s', '/var/lib/lockstep/vms/web/b/replica.qcow2'])).code, 0, "b's replica, synced over the network");

  // The guest boots; a client on the LAN keeps one TCP connection (echo) and counts on the disk.
  const client = NetnsClient.start(hosts.ns.client, '10.0.2.15', 100);
  const faults: Fault[] = [];
  let lastCount = 0;
  try {
    await client.until((x) => x.echoOk >= 15 && x.httpOk >= 15, 240_000, 'traffic through COLO');

    // systemctl restart lockstepd on a: the QEMU runs on, the agent comes back to it.
    const pidBefore = first.of('a')!.agent!.qemuPid;
    const errorsBefore = client.latest.errors;
    await lab.stopDaemon('a', 'SIGTERM');
    assert.ok(pidRunning(pidBefore), 'the QEMU outlives its daemon');
    await lab.startDaemon('a');
    const back = await d.untilProtected('after the daemon restart', 30_000);
    assert.equal(back.s.of('a')?.agent?.qemuPid, pidBefore, 'the same QEMU');
    // The same on b, whose QEMU came from the agents (a new secondary), not from up.
    const bPid = back.s.of('b')!.agent!.qemuPid;
    await lab.stopDaemon('b', 'SIGTERM');
    await lab.startDaemon('b');
    const backB = await d.untilProtected('after the daemon restart on b', 30_000);
    assert.equal(backB.s.of('b')?.agent?.qemuPid, bPid, "the same QEMU on b");
    const okBefore = client.latest.httpOk;
    await client.until((x) => x.httpOk >= okBefore + 10, 30_000, 'answers after the daemon restarts');
    assert.equal(client.latest.errors, errorsBefore, 'no request failed across the daemon restarts');

    // The primary's QEMU killed: b carries the VM on; the agents re-protect it on a.
    const killedAtWall = Date.now();
    process.kill(pidBefore, 'SIGKILL');
    const killedAt = performance.now();
    const afterKill = client.latest.httpOk;
    await client.until((x) => x.httpOk >= afterKill + 5, 60_000, 'answers from the survivor');
    const answeredMs = performance.now() - killedAt;
    const again = await d.untilProtected('after the kill', 120_000);
    assert.deepEqual([again.s.of('a')?.agent?.role, again.s.of('b')?.agent?.role], ['secondary', 'primary']);
    faults.push({ label: "the primary's QEMU killed", at: killedAtWall, until: Date.now() });
    process.stderr.write(`# survivor with 5 answers ${(answeredMs / 1000).toFixed(1)} s after the kill; protected again ${((performance.now() - killedAt) / 1000).toFixed(1)} s after it\n`);

    // A failover by hand back to a, then protected again on b by the agents.
    const refused = await lab.cli('mgmt', ['failover', 'web', '--to', 'b']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /b runs VM "web" already/);
    const fo = await lab.cli('mgmt', ['failover', 'web', '--to', 'a', '--json'], { timeoutMs: 120_000 });
    assert.equal(fo.code, 0, fo.stderr);
    const moved = await d.untilProtected('after the failover by hand', 120_000);
    assert.deepEqual([moved.s.of('a')?.agent?.role, moved.s.of('b')?.agent?.role], ['primary', 'secondary']);
    const okAfter = client.latest.httpOk;
    await client.until((x) => x.httpOk >= okAfter + 5, 30_000, 'answers after the failover by hand');
  } finally {
    const sum = await client.finish();
    process.stderr.write(feltLines(sum, faults).map((f) => `# ${f}\n`).join(''));
    lastCount = sum.http.counts.at(-1) ?? 0;
    assert.equal(sum.echo.closed, false, 'the TCP connection stayed open');
    assert.equal(counterGaps(sum.http.requests), undefined);
  }

  // down, from the management host: both QEMUs end, and stay ended across a daemon restart.
  const running = (await d.status()).hosts.map((h) => h.status!.agent!.qemuPid);
  const down = await lab.cli('mgmt', ['down', 'web', '--json'], { timeoutMs: 120_000 });
  assert.equal(down.code, 0, down.stderr);
  const res = JSON.parse(down.stdout) as { hosts: Array<{ host: string; role: string; qemu: string }> };
  assert.deepEqual(res.hosts.map((h) => [h.host, h.role]), [['b', 'secondary'], ['a', 'primary']], 'the secondary first');
  assert.ok(res.hosts.every((h) => h.qemu === 'quit'), down.stdout);
  for (const p of running) assert.equal(pidRunning(p), false, `QEMU ${p} ended`);
  await lab.stopDaemon('b', 'SIGTERM');
  await lab.startDaemon('b');
  const after = await d.status();
  assert.equal(after.code, 3, 'status exits 3: not protected');
  assert.deepEqual(after.hosts.map((h) => [h.host, h.status?.phase, h.status?.agent ?? null]), [['a', 'stopped', null], ['b', 'stopped', null]]);

  // up again: the agents restart the VM from the newest disk (a's, the last primary) and protect it; the counter
  // carries on from the last acknowledged value.
  const again = await lab.cli('mgmt', ['up', '-f', vmFile], { timeoutMs: 600_000 });
  assert.equal(again.code, 0, again.stderr);
  const restarted = await d.status();
  assert.equal(restarted.code, 0);
  assert.deepEqual([restarted.of('a')?.agent?.role, restarted.of('b')?.agent?.role], ['primary', 'secondary'], 'a, whose disk is the newest, runs the VM');
  const c2 = NetnsClient.start(hosts.ns.client, '10.0.2.15', 100);
  try {
    await c2.until((x) => x.httpOk >= 3, 240_000, 'answers after up of the stopped VM');
  } finally {
    const sum2 = await c2.finish();
    const first = sum2.http.counts[0]!;
    assert.equal(first, lastCount + 1, `the counter carries on from ${lastCount}`);
  }
});
