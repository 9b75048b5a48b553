/**
 * Whole hosts failing under a VM run by the daemons (lab hosts that share
 * nothing), a client on the LAN keeping one TCP connection and counting on
 * the disk throughout:
 * - the primary's host loses power (its cables dead at once, then its daemon
 *   and QEMUs killed): the other host carries the VM on; when it comes back
 *   (its daemon on its old state, no QEMU), the VM is protected again by
 *   itself;
 * - the same with the secondary's host;
 * - a host that reboots (its processes end, its cables fine) is re-protected.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NetnsClient, counterGaps } from '../../src/lab/client-driver.js';
import { daemonLab, feltLines, type Fault } from '../helpers/daemons.js';

const isRoot = process.getuid?.() === 0;

test('a host lost, coming back, rebooting: the VM runs on and is protected again by itself', { skip: !isRoot && 'needs root for namespaces', timeout: 15 * 60_000 }, async (t) => {
  const d = await daemonLab(t, 'host-faults');
  const { hosts, lab } = d;
  await d.up();
  const client = NetnsClient.start(hosts.ns.client, '10.0.2.15', 100);
  const figures: string[] = [];
  const faults: Fault[] = [];
  try {
    await client.until((x) => x.echoOk >= 15 && x.httpOk >= 15, 240_000, 'traffic through COLO');
    const answersAgain = async (what: string) => {
      const t0 = performance.now();
      const ok = client.latest.httpOk;
      await client.until((x) => x.httpOk >= ok + 5, 60_000, what);
      return performance.now() - t0;
    };
    const primaryHost = async () => ((await d.status()).of('a')?.agent?.role === 'primary' ? 'a' : 'b');

    // The primary's host loses power.
    const p1 = await primaryHost();
    const s1 = p1 === 'a' ? 'b' : 'a';
    const lost1 = (await lab.powerLoss(hosts, p1)).deadAt;
    const answered1 = await answersAgain(`answers after host ${p1} lost power`);
    const st1 = await d.status();
    assert.equal(st1.of(s1)?.agent?.role, 'alone', `${s1} carries the VM on`);
    assert.equal(st1.code, 1, 'status exits 1: a host cannot be asked');
    await hosts.heal();
    await lab.startDaemon(p1);
    const back1 = await d.untilProtected(`after host ${p1} came back`, 120_000);
    assert.equal(back1.s.of(s1)?.agent?.role, 'primary');
    faults.push({ label: 'primary host lost', at: lost1, until: Date.now() });
    figures.push(`primary host lost: 5 answers again after ${(answered1 / 1000).toFixed(1)} s; back: protected again ${(back1.ms / 1000).toFixed(1)} s after its daemon started`);

    // The secondary's host (the one that came back) loses power.
    const lost2 = (await lab.powerLoss(hosts, p1)).deadAt;
    const answered2 = await answersAgain(`answers after the secondary's host ${p1} lost power`);
    await hosts.heal();
    await lab.startDaemon(p1);
    const back2 = await d.untilProtected(`after host ${p1} came back`, 120_000);
    faults.push({ label: 'secondary host lost', at: lost2, until: Date.now() });
    figures.push(`secondary host lost: 5 answers after ${(answered2 / 1000).toFixed(1)} s; back: protected again ${(back2.ms / 1000).toFixed(1)} s after its daemon started`);

    // The secondary's host reboots: its processes end, its cables stay.
    const rebootAt = Date.now();
    await lab.crash(p1);
    await lab.startDaemon(p1);
    const back3 = await d.untilProtected(`after host ${p1} rebooted`, 120_000);
    faults.push({ label: 'secondary host rebooted', at: rebootAt, until: Date.now() });
    figures.push(`secondary host rebooted: protected again ${(back3.ms / 1000).toFixed(1)} s after its daemon started`);
    await answersAgain('answers at the end');
  } finally {
    const sum = await client.finish();
    process.stderr.write([...figures, ...feltLines(sum, faults)].map((f) => `# ${f}\n`).join(''));
    assert.equal(sum.echo.closed, false, 'the TCP connection stayed open');
    assert.equal(counterGaps(sum.http.requests), undefined);
  }
});
