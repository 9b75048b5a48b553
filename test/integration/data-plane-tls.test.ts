/**
 * The data plane only the pair can read or write. While VM web is protected
 * on the daemons of lab hosts a and b, and while its agents re-protect it
 * after its secondary's QEMU is killed (a new secondary then waits for its
 * migration and exports a fresh replica), a process on host a without the
 * pair's key keeps trying the secondary's NBD export (read, write; without
 * TLS and with a key of its own), the incoming migration port (a migration
 * stream's header and junk) and the primary's proxy ports (listening, then
 * junk). None of it reads or writes anything; the VM is protected again by
 * itself over TLS, the client's connection stays open and the disk counter
 * never goes back. Then b's heartbeat-session port gets the hostile peer of
 * the control plane (garbage, wrong proofs, and with the two hosts' own
 * secret forged, replayed and out-of-protocol lines): every connection
 * closed, nothing given away, the daemons and the VM run on, protected.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { NetnsClient } from '../../src/lab/client-driver.js';
import { readState } from '../../src/pair/state.js';
import { packageRoot } from '../../src/util/paths.js';
import { run } from '../../src/util/exec.js';
import { sleep } from '../../src/util/time.js';
import { IDS } from '../../src/qemu/cmdline.js';
import type { HostileDataReport, HostileDataSpec } from '../../src/lab/hostile-data.js';
import { daemonLab, assertConnectionKept } from '../helpers/daemons.js';
import { pairSecret } from '../../src/daemon/identity.js';
import { hostInfoSchema } from '../../src/daemon/api-types.js';

const isRoot = process.getuid?.() === 0;

test('without the pair\'s key the NBD export, the migration port and the proxy ports give and take nothing, protected or re-protecting; the pair works on over TLS', { skip: !isRoot && 'needs root for namespaces', timeout: 10 * 60_000 }, async (t) => {
  const d = await daemonLab(t, 'tls');
  const { hosts, lab } = d;
  await d.up();
  const vmDir = (h: 'a' | 'b') => path.join(lab.dirs(h).state, 'vms', 'web');
  // Both hosts hold the same key (derived from the agents' secret), readable by root only.
  const keys = (['a', 'b'] as const).map((h) => path.join(vmDir(h), 'tls', 'keys.psk'));
  assert.equal(fs.readFileSync(keys[0]!, 'utf8'), fs.readFileSync(keys[1]!, 'utf8'));
  for (const k of keys) assert.equal(fs.statSync(k).mode & 0o777, 0o600);
  const e = readState(vmDir('a'))!.endpoints;
  assert.ok(e.tls, 'the data plane has TLS by default');
  const st = await d.status();
  assert.deepEqual([st.of('a')?.dataPlane, st.of('b')?.dataPlane], ['tls', 'tls'], 'and status says so');

  const client = NetnsClient.start(hosts.ns.client, '10.0.2.15', 100);
  try {
    await client.until((x) => x.echoOk >= 15 && x.httpOk >= 15, 240_000, 'traffic through COLO');
    const spec: HostileDataSpec = {
      nbd: { host: e.secondaryHost, port: e.nbdPort, export: IDS.secondaryParent },
      migration: { host: e.secondaryHost, port: e.migrationPort },
      proxy: [{ host: e.primaryHost, port: e.mirrorPort }, { host: e.primaryHost, port: e.compareSecondaryPort }],
      durationMs: 45_000,
      controlKeyDir: path.join(vmDir('a'), 'tls'),
    };
    const script = path.join(packageRoot(), 'dist', 'src', 'lab', 'hostile-data.js');
    const attack = run('ip', ['netns', 'exec', hosts.ns.a, process.execPath, script, JSON.stringify(spec)], { timeoutMs: 120_000 });
    await sleep(10_000);
    // The secondary's QEMU dies: a's agent carries on alone, then starts a new secondary on b and resyncs it.
    const daemonB = await lab.daemonPid('b');
    const qemuB = (await lab.processes('b')).filter((p) => p !== daemonB && fs.readFileSync(`/proc/${p}/comm`, 'utf8').startsWith('qemu'));
    assert.equal(qemuB.length, 1, 'one QEMU on b');
    process.kill(qemuB[0]!, 'SIGKILL');
    const { ms } = await d.untilProtected('re-protection while attacked', 120_000);
    process.stderr.write(`# protected again ${(ms / 1000).toFixed(1)} s after the secondary's QEMU was killed\n`);
    const report = JSON.parse((await attack).stdout.trim()) as HostileDataReport;
    for (const [kind, k] of Object.entries(report)) process.stderr.write(`# ${kind}: ${k.attempts} attempts, ${k.through} through, ${k.dataBytes} data bytes, ${k.alerts} TLS alerts\n`);
    const kinds = ['nbd read, no TLS', 'nbd write, no TLS', 'nbd read, wrong key', 'nbd write, wrong key', 'migration stream', `proxy ${e.mirrorPort} listen`, `proxy ${e.compareSecondaryPort} junk`];
    for (const kind of kinds) assert.ok((report[kind]?.attempts ?? 0) > 0, `${kind}: attempted`);
    const { "control: nbd read with the pair's key": control, ...attempts } = report;
    assert.equal(control?.through, 1, 'with the pair\'s key, the same read goes through');
    for (const [kind, k] of Object.entries(attempts)) {
      assert.equal(k.through, 0, `${kind}: nothing read or written`);
      assert.equal(k.dataBytes, 0, `${kind}: no data came back`);
    }
    // The new secondary refused migration streams while it waited for its own (NBD's refusals say "option negotiation").
    const log = fs.readFileSync(path.join(vmDir('b'), 'b', 'qemu.log'), 'utf8').split('\n');
    const migrationRefused = log.filter((l) => /TLS handshake failed/.test(l) && !/option negotiation/.test(l)).length;
    const nbdRefused = log.filter((l) => /option negotiation failed: TLS handshake failed/.test(l)).length;
    process.stderr.write(`# b's QEMUs refused ${migrationRefused} migration streams and ${nbdRefused} NBD clients at the TLS handshake\n`);
    assert.ok(migrationRefused > 0, 'attempts reached the new secondary while it waited for its migration, and it refused them');
    assert.equal((await d.status()).protected, true);

    // b's heartbeat sessions, attacked from a with a's name and the secret a and b share (and without it).
    const infoB = hostInfoSchema.parse(JSON.parse((await lab.cli('b', ['host', 'show', '--json'], { check: true })).stdout));
    const tlsDir = (h: 'a' | 'b') => path.join(lab.dirs(h).etc, 'tls');
    const secret = pairSecret(fs.readFileSync(path.join(tlsDir('a'), 'host.key'), 'utf8'), 'a', fs.readFileSync(path.join(tlsDir('b'), 'host.crt'), 'utf8'), 'b');
    const isQemu = (pid: number) => {
      try {
        return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('qemu');
      } catch {
        return false;
      }
    };
    const pids = [await lab.daemonPid('a'), await lab.daemonPid('b'), ...(await Promise.all((['a', 'b'] as const).map((h) => lab.processes(h)))).flat().filter(isQemu)];
    assert.equal(pids.length, 4, 'two daemons, two QEMUs');
    const hostile = path.join(packageRoot(), 'dist', 'src', 'lab', 'hostile.js');
    const sessionPort = String(infoB.addresses.heartbeatPort);
    const r = await run('ip', ['netns', 'exec', hosts.ns.a, process.execPath, hostile, infoB.addresses.heartbeat[0]!, sessionPort, secret, 'a'], { timeoutMs: 180_000 });
    const outcomes = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { attempt: string; closed: boolean; extra: string[] });
    process.stderr.write(`# b's heartbeat sessions: ${outcomes.length} hostile attempts, ${outcomes.filter((o) => o.closed).length} refused and closed\n`);
    assert.ok(outcomes.length >= 13, 'every attempt ran');
    for (const o of outcomes) {
      assert.equal(o.closed, true, `"${o.attempt}": the connection is closed`);
      if (!o.attempt.startsWith('authenticated')) assert.deepEqual(o.extra, [], `"${o.attempt}": nothing came back before authentication`);
    }
    for (const pid of pids) if (pid !== undefined) assert.ok(fs.existsSync(`/proc/${pid}`), `pid ${pid} of the daemons and their QEMUs still runs`);
    const after = await d.untilProtected('after the attacks on the heartbeat sessions', 60_000);
    assert.equal(after.s.of('a')?.agent?.role, 'primary', 'no failover');
    const ok = client.latest.httpOk;
    await client.until((x) => x.httpOk >= ok + 5, 60_000, 'answers at the end');
  } finally {
    assertConnectionKept(await client.finish());
  }
});
