import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig } from '../../src/config/load.js';
import { planPair, vmMac, type Runtime } from '../../src/pair/plan.js';
import { newPairState } from '../../src/pair/state.js';

const rt: Runtime = { binary: '/usr/bin/qemu-system-x86_64', accel: 'tcg', dataDirs: [], kernel: '/k/vmlinuz', initrd: '/k/initrd', reconnectMs: false };

const yaml = (net: string) => `
name: web
vm:
  memory: 256M
  disk: { image: /data/web.qcow2 }
  network: ${net}
nodes:
  - { name: a, address: 10.0.0.1 }
  - { name: b, address: 10.0.0.2 }
replication: { bufferDir: /dev/shm, checkpointDelayMs: 3000 }
`;

test('the first node is the primary with the user\'s image; the second gets a replica and RAM-disk buffers', () => {
  const plan = planPair(parseConfig(yaml('{ mode: user, forwards: [{ port: 8080, guestPort: 80 }] }'), '/etc/lockstep/web.yaml'), rt);
  assert.equal(plan.primary.name, 'a');
  assert.equal(plan.primary.disk, '/data/web.qcow2');
  assert.equal(plan.secondary.disk, '/etc/lockstep/.lockstep/web/b/replica.qcow2');
  assert.deepEqual(plan.buffers, { active: '/dev/shm/lockstep-web-b/active.qcow2', hidden: '/dev/shm/lockstep-web-b/hidden.qcow2' }, 'in a directory of their own (made 0700, exclusively)');
  const p = plan.primary.args.join(' ');
  const s = plan.secondary.args.join(' ');
  assert.match(p, /-m 256 /);
  assert.match(p, /socket,id=mirror0,host=10\.0\.0\.1,port=9003,server=on,wait=off/);
  assert.match(p, /hostfwd=tcp:127\.0\.0\.1:8080-:80/);
  assert.match(s, /socket,id=red0,host=10\.0\.0\.1,port=9003,reconnect=1/);
  assert.match(s, /-incoming tcp:10\.0\.0\.2:9998/);
  assert.match(s, /file\.file\.filename=\/dev\/shm\/lockstep-web-b\/active\.qcow2/);
  assert.match(p, /socket,id=compare0,path=\/etc\/lockstep\/\.lockstep\/web\/a\/compare0\.sock,server=on,wait=off/, "the primary's local sockets in its data directory");
  assert.deepEqual(plan.primary.localSockets, ['/etc/lockstep/.lockstep/web/a/compare0.sock', '/etc/lockstep/.lockstep/web/a/compare-out.sock']);
  assert.doesNotMatch(s, /hostfwd/, 'the secondary forwards nothing while in COLO');
  assert.match(p, /-chardev socket,id=lsqmp0,path=\/etc\/lockstep\/\.lockstep\/web\/a\/qmp\.sock,server=on,wait=off -mon chardev=lsqmp0,mode=control -chardev socket,id=lsqmp1,path=\/etc\/lockstep\/\.lockstep\/web\/a\/qmp2\.sock/);
});

test("with agents, the buffers' directory has a tag from the agents' secret: another user of the host cannot take its name first", () => {
  const withAgents = (secret: string) => planPair(parseConfig(`${yaml('{ mode: user }')}agents: { secret: ${secret} }\n`, '/etc/lockstep/web.yaml'), rt);
  const one = withAgents('sixteen-characters-at-least');
  assert.match(one.buffers.active, /^\/dev\/shm\/lockstep-web-b-[0-9a-f]{16}\/active\.qcow2$/);
  assert.equal(withAgents('sixteen-characters-at-least').buffers.active, one.buffers.active, 'the same on every plan of the pair');
  assert.notEqual(withAgents('another-secret-of-sixteen').buffers.active, one.buffers.active);
});

test('bridge mode: each node gets its own tap, always with vnet_hdr=off', () => {
  const plan = planPair(parseConfig(yaml('{ mode: tap, bridge: br0, taps: { a: tap-a, b: tap-b } }'), '/etc/lockstep/web.yaml'), rt);
  assert.match(plan.primary.args.join(' '), /-netdev tap,id=hn0,ifname=tap-a,script=no,downscript=no,vhost=off,vnet_hdr=off/);
  assert.match(plan.secondary.args.join(' '), /-netdev tap,id=hn0,ifname=tap-b,script=no,downscript=no,vhost=off,vnet_hdr=off/);
});

test('KVM runtime gets the documented CPU model', () => {
  const plan = planPair(parseConfig(yaml('{ mode: user }'), '/x/y.yaml'), { ...rt, accel: 'kvm' });
  assert.match(plan.primary.args.join(' '), /-accel kvm -cpu qemu64,kvmclock=on/);
});

test('a resync plans the other way round: b primary, a new secondary on a with its own replica and buffers', () => {
  const plan = planPair(parseConfig(yaml('{ mode: tap, bridge: br0, taps: { a: tap-a, b: tap-b } }'), '/etc/lockstep/web.yaml'), rt, 'b');
  assert.deepEqual([plan.primary.name, plan.secondary.name], ['b', 'a']);
  assert.deepEqual([plan.endpoints.primaryHost, plan.endpoints.secondaryHost], ['10.0.0.2', '10.0.0.1']);
  // The target's old disk (the user's image, when a was the first primary) is never the resync target.
  assert.equal(plan.secondary.disk, '/etc/lockstep/.lockstep/web/a/replica.qcow2');
  assert.deepEqual(plan.buffers, { active: '/dev/shm/lockstep-web-a/active.qcow2', hidden: '/dev/shm/lockstep-web-a/hidden.qcow2' });
  const s = plan.secondary.args.join(' ');
  assert.match(s, /socket,id=red0,host=10\.0\.0\.2,port=9003/, 'the new secondary connects to b');
  assert.match(s, /-incoming tcp:10\.0\.0\.1:9998/);
  assert.match(s, /ifname=tap-a,/);
});

test("bridge mode announces the VM after a takeover unless vm.network.announce is off, and the pair's record says which", () => {
  const record = (net: string) => {
    const c = parseConfig(yaml(net), '/etc/lockstep/web.yaml');
    const plan = planPair(c, rt);
    return newPairState(c, rt, plan, [], new Date(0));
  };
  assert.equal(record('{ mode: tap, bridge: br0, taps: { a: tap-a, b: tap-b } }').announce, undefined);
  assert.equal(record('{ mode: tap, bridge: br0, taps: { a: tap-a, b: tap-b }, announce: false }').announce, false);
  assert.equal(record('{ mode: user }').announce, undefined);
});

test("the VM's MAC: the same on both nodes, derived from the VM's name unless the config gives one, unicast", () => {
  const macOf = (args: string[]) => /virtio-net-pci,id=\w+,netdev=hn0,mac=([0-9a-f:]+)/.exec(args.join(' '))?.[1];
  const web = planPair(parseConfig(yaml('{ mode: tap, bridge: br0, taps: { a: tap-a, b: tap-b } }'), '/etc/lockstep/web.yaml'), rt);
  assert.equal(macOf(web.primary.args), vmMac('web'));
  assert.equal(macOf(web.secondary.args), vmMac('web'), 'both nodes present the same VM');
  assert.match(vmMac('web'), /^52:54:00(:[0-9a-f]{2}){3}$/);
  assert.notEqual(vmMac('web'), vmMac('db'));
  const given = planPair(parseConfig(yaml('{ mode: tap, bridge: br0, taps: { a: tap-a, b: tap-b }, mac: "52:54:00:aa:bb:cc" }'), '/etc/lockstep/web.yaml'), rt);
  assert.equal(macOf(given.secondary.args), '52:54:00:aa:bb:cc');
  assert.throws(() => parseConfig(yaml('{ mode: user, mac: "53:54:00:aa:bb:cc" }'), '/x/y.yaml'), /unicast MAC/);
});
