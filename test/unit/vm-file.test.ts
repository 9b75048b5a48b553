/** The VM file for real hosts, and its placement on one host (src/config/vm.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { parseVmFile, placeVm } from '../../src/config/vm.js';
import { packageRoot } from '../../src/util/paths.js';

const VM = `
name: web
hosts: [a, b]
vm:
  memory: 256M
  kernel: demo
  disk: { image: /srv/vm/web.qcow2 }
  network: { mode: tap, bridge: br0, taps: { a: tap-web, b: tap-web } }
agents: { witness: 10.0.3.3:7900, secret: a-secret-of-sixteen-or-more }
`;

const hosts = {
  a: { replication: '10.0.1.1', heartbeat: ['10.0.2.1', '10.0.1.1'] },
  b: { replication: '10.0.1.2', heartbeat: ['10.0.2.2', '10.0.1.2'] },
};

test('a VM file placed on its hosts: nodes at their replication addresses, heartbeat paths theirs, state under the host\'s', () => {
  const v = parseVmFile(VM, 'web.yaml');
  const c = placeVm(v, hosts, 'b', '/var/lib/lockstep', 'a secret of sixteen or more');
  assert.deepEqual(c.nodes.map((n) => [n.name, n.address, n.dataDir]), [
    ['a', '10.0.1.1', '/var/lib/lockstep/vms/web/a'],
    ['b', '10.0.1.2', '/var/lib/lockstep/vms/web/b'],
  ]);
  assert.equal(c.stateDir, '/var/lib/lockstep/vms/web');
  assert.deepEqual(c.agents?.links, { a: ['10.0.2.1', '10.0.1.1'], b: ['10.0.2.2', '10.0.1.2'] });
  assert.equal(c.agents?.witness, '10.0.3.3:7900');
  assert.equal(c.vm.memory, 256 * 2 ** 20);
  assert.equal(c.vm.disk.image, '/srv/vm/web.qcow2');
  assert.equal(c.vm.kernel, 'demo');
  // As many heartbeat paths as both hosts have.
  const one = placeVm(v, { ...hosts, b: { replication: '10.0.1.2', heartbeat: ['10.0.1.2'] } }, 'a', '/s', 'a secret of sixteen or more');
  assert.deepEqual(one.agents?.links, { a: ['10.0.2.1'], b: ['10.0.1.2'] });
  // The QEMU: the VM file's, else the host file's, else none named (lockstep chooses: pair/runtime.ts).
  assert.equal(c.qemu.binary, undefined);
  const hostQemu = '/usr/lib/lockstep/qemu-10.0/bin/qemu-system-x86_64';
  assert.equal(placeVm(v, hosts, 'b', '/s', 'a secret of sixteen or more', { qemuBinary: hostQemu }).qemu.binary, hostQemu);
  const own = parseVmFile(VM + 'qemu: { binary: /opt/qemu/bin/qemu-system-x86_64 }\n', 'web.yaml');
  assert.equal(placeVm(own, hosts, 'b', '/s', 'a secret of sixteen or more', { qemuBinary: hostQemu }).qemu.binary, '/opt/qemu/bin/qemu-system-x86_64');
});

test('a VM file: relative paths, one host twice, links and an unknown host are refused, each named', () => {
  assert.throws(() => parseVmFile(VM.replace('/srv/vm/web.qcow2', 'web.qcow2'), 'web.yaml'), /vm.disk.image: "web.qcow2" must be an absolute path/);
  assert.throws(() => parseVmFile(VM.replace('hosts: [a, b]', 'hosts: [a, a]'), 'web.yaml'), /two hosts need different names/);
  assert.throws(() => parseVmFile(VM.replace('hosts: [a, b]', 'hosts: [a]'), 'web.yaml'), /hosts/);
  assert.throws(() => parseVmFile(VM.replace("agents: { witness: 10.0.3.3:7900, secret: a-secret-of-sixteen-or-more }", "agents: { links: { a: ['1.1.1.1'] } }"), 'web.yaml'), /unknown field "links"/);
  assert.throws(() => parseVmFile(VM.replace(', secret: a-secret-of-sixteen-or-more', ''), 'web.yaml'), /agents.witnessKey: needed with agents.witness .*or agents.secret/);
  // With the VM's own key at the witness, the secret may be left to up (each VM its own).
  const own = parseVmFile(VM.replace(', secret: a-secret-of-sixteen-or-more', `, witnessKey: ${'ab'.repeat(32)}`), 'web.yaml');
  assert.deepEqual([own.agents.secret, own.agents.witnessKey], [undefined, 'ab'.repeat(32)]);
  assert.throws(() => parseVmFile(VM.replace(', secret: a-secret-of-sixteen-or-more', ', witnessKey: not-a-key'), 'web.yaml'), /agents.witnessKey: expected the 64 hex digits/);
  // The shipped example is valid.
  parseVmFile(fs.readFileSync(path.join(packageRoot(), 'examples', 'two-hosts.yaml'), 'utf8'), 'two-hosts.yaml');
  assert.throws(() => parseVmFile(VM + 'nodes: []\n', 'web.yaml'), /unknown field "nodes"/);
  const v = parseVmFile(VM, 'web.yaml');
  assert.throws(() => placeVm(v, hosts, 'c', '/s', 'a secret of sixteen or more'), /this host \(c\) is not one of the VM's hosts/);
  assert.throws(() => placeVm(v, { a: hosts.a }, 'a', '/s', 'a secret of sixteen or more'), /addresses of host "b" are not known/);
  assert.throws(() => placeVm(v, { a: hosts.a, b: hosts.a }, 'a', '/s', 'a secret of sixteen or more'), /different addresses/);
});

test('ports: the lowest block of 7 free on both hosts, inside both ranges; none when full; placed as the data plane and the agents\' port', async () => {
  const { choosePortBlock, portBlockAt, portList } = await import('../../src/config/vm.js');
  assert.deepEqual(choosePortBlock([{ first: 9000, last: 9999, used: [] }, { first: 9000, last: 9999, used: [] }]), portBlockAt(9000));
  // a holds 9000-9006 (one VM), b holds 9010 (another VM's, with another host): the first block free on both starts at 9011.
  const a = { first: 9000, last: 9999, used: portList(portBlockAt(9000)) };
  assert.deepEqual(choosePortBlock([a, { first: 9000, last: 9999, used: [9010] }]), portBlockAt(9011));
  assert.deepEqual(choosePortBlock([a, { first: 9003, last: 9013, used: [] }]), portBlockAt(9007), 'inside both ranges');
  assert.equal(choosePortBlock([a, { first: 9000, last: 9012, used: [9010] }]), undefined, 'no room on both');
  const v = parseVmFile(VM, 'web.yaml');
  assert.equal(v.ports, undefined, 'a VM file without ports leaves them to up');
  const c = placeVm(v, hosts, 'a', '/s', 'a secret of sixteen or more', { ports: portBlockAt(9014) });
  assert.deepEqual([c.ports.comparePrimary, c.ports.mirror, c.ports.nbd, c.agents?.port], [9014, 9015, 9019, 9020]);
});

test("bridge mode: a host the VM file names no tap for uses the one its daemon made; none at all is refused when placed", () => {
  const v = parseVmFile(VM.replace('taps: { a: tap-web, b: tap-web }', 'taps: { a: tap-web }'), 'web.yaml');
  const onB = placeVm(v, hosts, 'b', '/s', 'a secret of sixteen or more', { tap: 'lstap3' });
  assert.equal(onB.vm.network.mode === 'tap' && onB.vm.network.taps.b, 'lstap3');
  const onA = placeVm(v, hosts, 'a', '/s', 'a secret of sixteen or more', { tap: 'lstap0' });
  assert.equal(onA.vm.network.mode === 'tap' && onA.vm.network.taps.a, 'tap-web', "the VM file's name wins");
  const none = parseVmFile(VM.replace('taps: { a: tap-web, b: tap-web }', 'taps: {}').replace('network: { mode: tap, bridge: br0, taps: {} }', 'network: { mode: tap, bridge: br0 }'), 'web.yaml');
  assert.throws(() => placeVm(none, hosts, 'a', '/s', 'a secret of sixteen or more'), /no tap for host "a", and none made for it/);
});
