/**
 * The lab's hosts as separate machines: each sees only its own
 * /etc/lockstep, /var/lib/lockstep and /run/lockstep (a mount namespace per
 * host), runs its own daemon, and is reached from the management host only
 * through the CLI over TLS, with pinned certificates. A daemon that is
 * stopped, or killed, comes back on the same state.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createLabHosts } from '../../src/lab/hosts.js';
import { LabDaemons } from '../../src/lab/daemons.js';
import { hostInfoSchema } from '../../src/daemon/api-types.js';
import { endLabDir, testPassed } from '../helpers/lab.js';

const isRoot = process.getuid?.() === 0;

test('lab hosts with their own files and daemons: separation, the API from the management host, daemon restarts', { skip: !isRoot && 'needs root for namespaces', timeout: 180_000 }, async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-daemons-'));
  const hosts = await createLabHosts({ prefix: 'ld' });
  let lab: LabDaemons | undefined;
  // The daemons first (found in their hosts' namespaces), then the namespaces.
  t.after(async () => {
    await lab?.remove();
    await hosts.remove();
    endLabDir(root, !testPassed(t));
  });
  lab = await LabDaemons.create(root, hosts, { tag: path.basename(root) });

  const show = async (from: 'a' | 'b' | 'mgmt', host?: 'a' | 'b') => {
    const r = await lab.cli(from, ['host', 'show', '--json', ...(host ? ['--host', host] : [])]);
    assert.equal(r.code, 0, `host show${host ? ` --host ${host}` : ''} on ${from}: ${r.stderr}`);
    return hostInfoSchema.parse(JSON.parse(r.stdout));
  };

  // Each host sees its own files where a real host has them, and nothing of the others'.
  for (const h of ['a', 'b'] as const) {
    const own = await lab.exec(h, 'cat', ['/etc/lockstep/host.yaml'], { check: true });
    assert.match(own.stdout, new RegExp(`^name: "${h}"`, 'm'));
    const other = h === 'a' ? 'b' : 'a';
    const peek = await lab.exec(h, 'ls', [path.join(root, 'hosts', other)]);
    assert.notEqual(peek.code, 0, `host ${h} must not see host ${other}'s files (${peek.stdout})`);
    const state = await lab.exec(h, 'stat', ['-c', '%a', '/var/lib/lockstep'], { check: true });
    assert.equal(state.stdout.trim(), '700');
    const key = await lab.exec(h, 'stat', ['-c', '%a', '/etc/lockstep/tls/host.key'], { check: true });
    assert.equal(key.stdout.trim(), '600');
  }
  // Outside the lab's hosts nothing changed: the machine's own directories hold none of their files.
  assert.equal(fs.existsSync('/etc/lockstep/host.yaml') && fs.readFileSync('/etc/lockstep/host.yaml', 'utf8').includes(root), false);

  // The management host reaches both daemons over TLS and is known to them by its certificate.
  const a = await show('mgmt', 'a');
  const b = await show('mgmt', 'b');
  assert.deepEqual([a.name, b.name, a.caller, b.caller], ['a', 'b', 'mgmt', 'mgmt']);
  assert.equal(a.addresses.replication, hosts.addr.replication.a);
  assert.deepEqual(a.addresses.heartbeat, [hosts.addr.heartbeat.a, hosts.addr.replication.a]);
  // The hosts reach each other; root on a host uses the local socket.
  assert.equal((await show('a', 'b')).caller, 'a');
  assert.equal((await show('b')).caller, 'root on this host');

  // With the management cable of a pulled, a is unreachable, and the CLI says so within its timeout.
  await hosts.cut('witness-a');
  const t0 = performance.now();
  const cut = await lab.cli('mgmt', ['host', 'show', '--host', 'a']);
  assert.notEqual(cut.code, 0);
  assert.match(cut.stderr, /did not answer|cannot reach|nothing answers/);
  assert.ok(performance.now() - t0 < 20_000);
  await hosts.heal();

  // systemctl restart: the daemon ends on SIGTERM (its socket removed) and comes back on the same state.
  const before = await show('mgmt', 'a');
  await lab.stopDaemon('a', 'SIGTERM');
  assert.equal(fs.existsSync(path.join(lab.dirs('a').run, 'api.sock')), false);
  const down = await lab.cli('a', ['host', 'show']);
  assert.notEqual(down.code, 0);
  assert.match(down.stderr, /does not run on this host[\s\S]*systemctl start lockstepd/);
  await lab.startDaemon('a');
  const again = await show('mgmt', 'a');
  assert.notEqual(again.pid, before.pid);
  assert.equal(again.name, 'a');

  // A crash (SIGKILL) leaves its socket behind: the next daemon replaces it.
  await lab.stopDaemon('b', 'SIGKILL');
  assert.equal(fs.existsSync(path.join(lab.dirs('b').run, 'api.sock')), true, 'a killed daemon leaves its socket');
  await lab.startDaemon('b');
  assert.equal((await show('mgmt', 'b')).name, 'b');
});
