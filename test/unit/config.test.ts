import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadConfig, parseConfig, ConfigError } from '../../src/config/load.js';
import { parseSize } from '../../src/config/schema.js';
import { packageRoot } from '../../src/util/paths.js';
import { coreConfig } from '../../src/node/timings.js';

const minimal = `
vm:
  disk: { image: disk.qcow2 }
nodes:
  - { name: a, address: 127.0.0.1 }
  - { name: b, address: 127.0.0.2 }
`;

function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, '/etc/lockstep/test.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, `a ConfigError, not ${String(err)}`);
    return err.problems;
  }
  assert.fail('expected the config to be rejected');
}

test('the shipped example config is valid', () => {
  const c = loadConfig(path.join(packageRoot(), 'examples', 'one-host.yaml'));
  assert.equal(c.name, 'demo');
  assert.equal(c.nodes[0]!.address, '127.0.0.1');
  assert.equal(c.vm.memory, 128 * 1024 * 1024);
  assert.equal(c.vm.kernel, 'demo');
  assert.ok(path.isAbsolute(c.vm.disk.image));
});

test('a minimal config gets safe defaults and absolute paths', () => {
  const c = parseConfig(minimal, '/etc/lockstep/test.yaml');
  assert.equal(c.vm.disk.image, '/etc/lockstep/disk.qcow2');
  assert.equal(c.vm.disk.create, false, 'never creates disks unless asked');
  assert.deepEqual(c.ports, { comparePrimary: 9001, mirror: 9003, compare: 9004, compareOut: 9005, migration: 9998, nbd: 9999 });
  assert.equal(c.replication.checkpointDelayMs, 2000);
  assert.equal(c.stateDir, '/etc/lockstep/.lockstep/lockstep');
  assert.equal(c.nodes[1]!.dataDir, '/etc/lockstep/.lockstep/lockstep/b');
  assert.equal(c.vm.network.mode, 'user');
});

test('sizes accept units', () => {
  assert.equal(parseSize('512M'), 512 * 1024 ** 2);
  assert.equal(parseSize('2G'), 2 * 1024 ** 3);
  assert.equal(parseSize('64MiB'), 64 * 1024 ** 2);
  assert.equal(parseSize(4096), 4096);
  assert.equal(parseSize('lots'), undefined);
});

test('errors name the field and what is allowed', () => {
  assert.deepEqual(problems(minimal.replace('disk: { image: disk.qcow2 }', 'memory: lots\n  disk: { image: disk.qcow2 }')), [
    'vm.memory: expected a memory size from 16M to 1T like 512M or 2G, got "lots"',
  ]);
  assert.deepEqual(problems(minimal + 'qemu: { accel: fast }\n'), ['qemu.accel: expected one of "auto", "kvm", "tcg"']);
  assert.deepEqual(problems(minimal.replace('vm:\n  disk: { image: disk.qcow2 }\n', 'vm: {}\n')), ['vm.disk: missing (expected object)']);
  assert.deepEqual(problems(minimal + 'colour: blue\n'), ['unknown field "colour"']);
  assert.match(problems(minimal.replace('address: 127.0.0.2', 'address: localhost'))[0]!, /^nodes\[1\]\.address: expected an IPv4 address/);
});

test('semantic mistakes are caught with a way out', () => {
  assert.deepEqual(problems(minimal.replace('127.0.0.2', '127.0.0.1')), [
    'nodes: the two nodes need different addresses (both are 127.0.0.1); on one host use 127.0.0.1 and 127.0.0.2',
  ]);
  assert.deepEqual(problems(minimal + 'ports: { mirror: 9001 }\n'), ['ports.mirror: 9001 is also ports.comparePrimary']);
  assert.deepEqual(problems(minimal.replace('disk: { image: disk.qcow2 }', 'disk: { image: d.qcow2, create: true }')), [
    'vm.disk.size: needed with vm.disk.create: true (e.g. 64M)',
  ]);
  const tap = minimal.replace('disk: { image: disk.qcow2 }', 'disk: { image: d.qcow2 }\n  network: { mode: tap, bridge: br0, taps: { a: tap-a } }');
  assert.deepEqual(problems(tap), ['vm.network.taps: no tap for node "b"']);
  assert.match(problems(minimal.replace(/nodes:[\s\S]*/, 'nodes:\n  - { name: a, address: 127.0.0.1 }\n'))[0]!, /exactly two nodes/);
});

test('agents: the secret must be long enough, and timings must make sense', () => {
  assert.deepEqual(problems(minimal + 'agents: { secret: short }\n'), ['agents.secret: expected a shared secret of at least 16 characters']);
  assert.deepEqual(problems(minimal + 'agents: { secret: a-long-enough-secret, heartbeatIntervalMs: 300, heartbeatTimeoutMs: 500 }\n'), [
    'agents.heartbeatTimeoutMs: 500 must be at least twice agents.heartbeatIntervalMs (300)',
  ]);
  assert.deepEqual(problems(minimal + 'agents: { secret: a-long-enough-secret, links: { a: [10.0.0.1], c: [10.0.0.9] } }\n'), [
    'agents.links.c: no node is named "c"',
    'agents.links: also give the addresses of b (one per heartbeat path, in the same order)',
  ]);
  assert.deepEqual(problems(minimal + 'agents: { secret: a-long-enough-secret, links: { a: [10.0.0.1, 10.1.0.1], b: [10.0.0.2] } }\n'), [
    'agents.links: the nodes have different numbers of paths (2 vs 1); each path needs an address on both nodes',
  ]);
  const two = parseConfig(minimal + 'agents: { secret: a-long-enough-secret, links: { a: [10.0.0.1, 10.1.0.1], b: [10.0.0.2, 10.1.0.2] } }\n', '/x/y.yaml');
  assert.deepEqual(two.agents?.links, { a: ['10.0.0.1', '10.1.0.1'], b: ['10.0.0.2', '10.1.0.2'] });
  const c = parseConfig(minimal + 'agents: { secret: a-long-enough-secret }\n', '/x/y.yaml');
  assert.deepEqual([c.agents?.port, c.agents?.heartbeatIntervalMs, c.agents?.heartbeatTimeoutMs, c.agents?.leaseMs], [7800, 100, 500, 500]);
});

test('the heartbeat path over the replication network is the one whose two ends are the nodes\' addresses, when another path runs elsewhere', () => {
  const pathOf = (links: string) => coreConfig(parseConfig(minimal + `agents: { secret: a-long-enough-secret${links} }\n`, '/x/y.yaml'), 'a', 'b', 1 << 20).replicationPath;
  assert.equal(pathOf(', links: { a: [10.0.0.1, 127.0.0.1], b: [10.0.0.2, 127.0.0.2] }'), 1, 'a dedicated network first, the replication network second');
  assert.equal(pathOf(', links: { a: [127.0.0.1, 10.0.0.1], b: [127.0.0.2, 10.0.0.2] }'), 0);
  assert.equal(pathOf(''), null, 'one path, over the replication network: no other path to hear the peer on');
  assert.equal(pathOf(', links: { a: [10.0.0.1, 10.1.0.1], b: [10.0.0.2, 10.1.0.2] }'), null, 'no path runs over it');
  assert.equal(pathOf(', links: { a: [10.0.0.1, 127.0.0.1], b: [10.0.0.2, 10.1.0.2] }'), null, 'only one end on it');
});

test('broken YAML and a missing file say so', () => {
  assert.match(problems('vm: [unclosed\n')[0]!, /not valid YAML/);
  assert.throws(() => loadConfig('/nonexistent/lockstep.yaml'), /cannot read config \/nonexistent\/lockstep.yaml: no such file/);
});

test('every number a user gives is bounded: memory, disk sizes, ports, IPv4 addresses', () => {
  const withVm = (vm: string) => minimal.replace('  disk: { image: disk.qcow2 }', vm);
  const one = (yaml: string) => problems(yaml).join('\n');
  // -m 1e29, and 1000 bytes becoming -m 0: refused.
  assert.match(one(withVm('  memory: 1e29\n  disk: { image: disk.qcow2 }')), /vm\.memory: expected a memory size from 16M to 1T/);
  assert.match(one(withVm('  memory: 100000000000000000000000000000\n  disk: { image: disk.qcow2 }')), /vm\.memory: expected a memory size/);
  assert.match(one(withVm('  memory: 1000\n  disk: { image: disk.qcow2 }')), /vm\.memory: expected a memory size from 16M to 1T/);
  assert.match(one(withVm('  memory: 100M1\n  disk: { image: disk.qcow2 }')), /vm\.memory/);
  assert.match(one(withVm('  memory: 1536K\n  disk: { image: disk.qcow2 }')), /vm\.memory: expected a memory size from 16M/);
  assert.match(one(withVm('  memory: 16777217\n  disk: { image: disk.qcow2 }')), /vm\.memory: expected a memory size in whole 1M/);
  assert.match(one(withVm('  disk: { image: disk.qcow2, create: true, size: 99999999999999999999T }')), /vm\.disk\.size: expected a disk size from 1M to 64T/);
  assert.match(one(withVm('  disk: { image: disk.qcow2, create: true, size: 100 }')), /vm\.disk\.size: expected a disk size from 1M to 64T/);
  assert.equal(parseSize('99999999999999999999T'), undefined, 'beyond a safe integer: no size');
  assert.equal(parseSize(1e29), undefined);
  // IPv4 parts of 0-255, ports up to 65535.
  assert.match(one(minimal.replace('127.0.0.2', '999.999.999.999')), /nodes\[1\]\.address: expected an IPv4 address/);
  assert.match(one(minimal.replace('127.0.0.2', '127.0.0.02')), /nodes\[1\]\.address: expected an IPv4 address/);
  assert.match(one(`${minimal}agents: { secret: sixteen-characters-or-more, witness: "10.0.0.3:99999" }\n`), /agents\.witness: expected ADDRESS:PORT/);
  assert.match(one(`${minimal}agents: { secret: sixteen-characters-or-more, witness: "10.0.0.300:7900" }\n`), /agents\.witness: expected ADDRESS:PORT/);
  assert.match(one(`${minimal}ports: { nbd: 99999 }\n`), /ports\.nbd/);
});

test("names the wire refuses are refused here too: a VM or node named constructor or prototype", () => {
  for (const n of ['constructor', 'prototype']) {
    assert.match(problems(`name: ${n}\n${minimal}`).join('\n'), /^name: a reserved name/m, n);
    assert.match(problems(minimal.replace('name: b,', `name: ${n},`)).join('\n'), /nodes\[1\]\.name: a reserved name/, n);
  }
});

test('a comma in a path QEMU is given is refused (it would start another option: a second QMP monitor, chardev options)', () => {
  const p = problems(`stateDir: "/var/lib/x,server=on,wait=off,id=evil"\n${minimal}`);
  assert.ok(p.some((x) => /^stateDir: "\/var\/lib\/x,server=on,wait=off,id=evil" contains a comma, which QEMU reads as the start of another option/.test(x)), p.join('\n'));
  assert.ok(p.some((x) => /^nodes\[0\]\.dataDir: .* contains a comma/.test(x)), 'the data directories under it too');
  // The directory of the config file counts: relative paths resolve against it.
  assert.throws(() => parseConfig(minimal, '/home/u/my,dir/test.yaml'), /vm\.disk\.image: "\/home\/u\/my,dir\/disk\.qcow2" contains a comma/);
  assert.match(problems(minimal.replace('disk.qcow2', '"disk\\nx.qcow2"')).join('\n'), /vm\.disk\.image: .* contains a control character/s);
});
