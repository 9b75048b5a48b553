import { test } from 'node:test';
import assert from 'node:assert/strict';
import { primaryArgs, secondaryArgs, netdevArg, opts, type ColoEndpoints, type MachineSpec } from '../../src/qemu/cmdline.js';

const e: ColoEndpoints = {
  primaryHost: '127.0.0.1',
  secondaryHost: '127.0.0.2',
  primaryLocal: '127.0.0.1',
  comparePrimaryPort: 9001,
  mirrorPort: 9003,
  compareSecondaryPort: 9004,
  compareOutPort: 9005,
  migrationPort: 9998,
  nbdPort: 9999,
  reconnectMs: false,
  localSockets: { compare0: 'R/p-compare0.sock', compareOut: 'R/p-compare-out.sock' },
};

const m = (name: string): MachineSpec => ({
  name,
  accel: 'tcg',
  memoryMiB: 128,
  cpus: 1,
  kernel: 'vmlinuz',
  initrd: 'initrd.gz',
  serialLog: `R/${name[0]}-serial.log`,
  qmpSockets: [`R/${name[0]}-qmp.sock`],
  nic: { mode: 'user', forwards: [{ hostAddr: '127.0.0.1', hostPort: 18082, guestPort: 80 }] },
});

/** Pairs "-opt value" into "-opt value" strings for readable comparisons. */
function pairs(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    if (next !== undefined && !next.startsWith('-')) {
      out.push(`${a} ${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

// The primary of the COLO documentation's "Startup qemu" step 1, as adapted
// to QEMU 7.2 (virtio devices, if=none drive) in the lab notes.
test('primary command line matches the documented topology', () => {
  const got = pairs(primaryArgs(m('primary'), e, { image: 'R/primary.qcow2', format: 'qcow2' }));
  const expected = [
    '-netdev user,id=hn0,hostfwd=tcp:127.0.0.1:18082-:80',
    '-device virtio-net-pci,id=e0,netdev=hn0',
    '-chardev socket,id=mirror0,host=127.0.0.1,port=9003,server=on,wait=off',
    '-chardev socket,id=compare1,host=127.0.0.1,port=9004,server=on,wait=on',
    '-chardev socket,id=compare0,path=R/p-compare0.sock,server=on,wait=off',
    '-chardev socket,id=compare0-0,path=R/p-compare0.sock',
    '-chardev socket,id=compare_out,path=R/p-compare-out.sock,server=on,wait=off',
    '-chardev socket,id=compare_out0,path=R/p-compare-out.sock',
    '-object filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0',
    '-object filter-redirector,netdev=hn0,id=redire0,queue=rx,indev=compare_out',
    '-object filter-redirector,netdev=hn0,id=redire1,queue=rx,outdev=compare0',
    '-object iothread,id=iothread1',
    '-object colo-compare,id=comp0,primary_in=compare0-0,secondary_in=compare1,outdev=compare_out0,iothread=iothread1',
    '-drive if=none,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,children.0.file.filename=R/primary.qcow2,children.0.driver=qcow2',
    '-device virtio-blk-pci,id=blk0,drive=colo-disk0',
    '-S',
  ];
  const start = got.indexOf(expected[0]!);
  assert.ok(start > 0, 'netdev present');
  assert.deepEqual(got.slice(start), expected);
  assert.ok(got.includes('-accel tcg'));
  assert.ok(got.includes('-chardev socket,id=lsqmp0,path=R/p-qmp.sock,server=on,wait=off'));
  assert.ok(got.includes('-mon chardev=lsqmp0,mode=control'));
});

test("the primary's local proxy sockets are unix sockets in its own directory: no TCP port on loopback that a local process could reach", () => {
  const args = primaryArgs(m('primary'), e, { image: 'R/primary.qcow2', format: 'qcow2' });
  const local = args.filter((a) => /^socket,id=(compare0|compare0-0|compare_out|compare_out0),/.test(a));
  assert.equal(local.length, 4);
  for (const c of local) assert.match(c, /,path=R\/p-compare(0|-out)\.sock(,|$)/, c);
  assert.ok(!args.some((a) => a.includes('host=127.0.0.1,port=9001') || a.includes('port=9005')), 'no loopback TCP port');
  // The peer-facing ones stay TCP on the replication address.
  assert.ok(args.includes('socket,id=mirror0,host=127.0.0.1,port=9003,server=on,wait=off'));
});

test('QMP monitors are chardevs with their path as a value: a comma in it cannot add an option or a monitor', () => {
  const args = primaryArgs({ ...m('primary'), qmpSockets: ['/var/lib/x,server=on,wait=off,id=evil/qmp.sock'] }, e, { image: 'R/p.qcow2', format: 'qcow2' });
  assert.ok(!args.includes('-qmp'), 'no -qmp with its unix: shorthand (its head is parsed as options)');
  assert.ok(args.includes('socket,id=lsqmp0,path=/var/lib/x,,server=on,,wait=off,,id=evil/qmp.sock,server=on,wait=off'));
  assert.equal(args.filter((a) => a === '-mon').length, 1);
});

test('secondary command line matches the documented topology', () => {
  const got = pairs(
    secondaryArgs(m('secondary'), e, { parent: 'R/secondary-parent.qcow2', parentFormat: 'qcow2', active: '/dev/shm/a.qcow2', hidden: '/dev/shm/h.qcow2' }),
  );
  const expected = [
    '-netdev user,id=hn0',
    '-device virtio-net-pci,id=e0,netdev=hn0',
    '-chardev socket,id=red0,host=127.0.0.1,port=9003,reconnect=1',
    '-chardev socket,id=red1,host=127.0.0.1,port=9004,reconnect=1',
    '-object filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0',
    '-object filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1',
    '-object filter-rewriter,id=rew0,netdev=hn0,queue=all',
    '-drive if=none,id=parent0,file.filename=R/secondary-parent.qcow2,driver=qcow2',
    '-drive if=none,id=childs0,driver=replication,mode=secondary,file.driver=qcow2,top-id=colo-disk0,file.file.filename=/dev/shm/a.qcow2,file.backing.driver=qcow2,file.backing.file.filename=/dev/shm/h.qcow2,file.backing.backing=parent0',
    '-drive if=none,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,children.0=childs0',
    '-device virtio-blk-pci,id=blk0,drive=colo-disk0',
    '-incoming tcp:127.0.0.2:9998',
  ];
  const start = got.indexOf(expected[0]!);
  assert.ok(start > 0);
  assert.deepEqual(got.slice(start), expected);
});

test('newer QEMU gets reconnect-ms instead of reconnect', () => {
  const args = secondaryArgs(m('secondary'), { ...e, reconnectMs: true }, { parent: 'p', parentFormat: 'qcow2', active: 'a', hidden: 'h' }).join(' ');
  assert.match(args, /id=red0,host=127\.0\.0\.1,port=9003,reconnect-ms=1000/);
  assert.doesNotMatch(args, /reconnect=1/);
});

test('a tap netdev always has vnet_hdr=off, vhost=off and no scripts', () => {
  const arg = netdevArg({ mode: 'tap', ifname: 'tap-p' }, true);
  assert.equal(arg, 'tap,id=hn0,ifname=tap-p,script=no,downscript=no,vhost=off,vnet_hdr=off');
  for (const role of ['primary', 'secondary'] as const) {
    const spec = { ...m(role), nic: { mode: 'tap' as const, ifname: 'tap0' } };
    const args =
      role === 'primary'
        ? primaryArgs(spec, e, { image: 'x', format: 'qcow2' })
        : secondaryArgs(spec, e, { parent: 'p', parentFormat: 'qcow2', active: 'a', hidden: 'h' });
    const netdevs = args.filter((_, i) => args[i - 1] === '-netdev');
    assert.equal(netdevs.length, 1);
    assert.match(netdevs[0]!, /vnet_hdr=off/);
  }
});

test('tap names that could smuggle options are refused', () => {
  assert.throws(() => netdevArg({ mode: 'tap', ifname: 'tap0,vnet_hdr=on' }, true), /invalid tap interface name/);
});

test('commas inside values are escaped so a path cannot add options', () => {
  assert.equal(opts('if=none', { file: '/a,b/disk.qcow2', readonly: true }), 'if=none,file=/a,,b/disk.qcow2,readonly=on');
});

test('colo-compare timeout and scan cycle are passed when configured', () => {
  const args = primaryArgs(m('primary'), { ...e, compareTimeoutMs: 1500, compareScanMs: 100 }, { image: 'x', format: 'qcow2' }).join(' ');
  assert.match(args, /colo-compare,id=comp0,.*,compare_timeout=1500,expired_scan_cycle=100/);
});

test('with the pair\'s TLS, every socket between the hosts takes it: both credential objects, the chardevs to and from the peer, the incoming migration before it listens', () => {
  const tls = { dir: '/var/lib/lockstep/vms/web/tls' };
  const et: ColoEndpoints = { ...e, primaryHost: '10.0.0.1', secondaryHost: '10.0.0.2', tls };
  const p = pairs(primaryArgs(m('primary'), et, { image: 'R/p.qcow2', format: 'qcow2' }));
  const s = pairs(secondaryArgs(m('secondary'), et, { parent: 'p', parentFormat: 'qcow2', active: 'a', hidden: 'h' }));
  for (const args of [p, s]) {
    assert.ok(args.includes(`-object tls-creds-psk,id=lstls-server,endpoint=server,dir=${tls.dir}`));
    assert.ok(args.includes(`-object tls-creds-psk,id=lstls-client,endpoint=client,dir=${tls.dir},username=lockstep`));
    const toPeer = args.filter((a) => a.startsWith('-chardev socket') && a.includes('host='));
    assert.equal(toPeer.length, 2, 'mirror0 and compare1 on the primary, red0 and red1 on the secondary');
    for (const c of toPeer) assert.match(c, c.includes('server=on') ? /,tls-creds=lstls-server(,|$)/ : /,tls-creds=lstls-client(,|$)/, c);
    for (const c of args.filter((a) => a.startsWith('-chardev socket') && a.includes('path='))) assert.doesNotMatch(c, /tls-creds/, 'local sockets stay plain');
  }
  const incoming = s.indexOf('-incoming tcp:10.0.0.2:9998');
  assert.ok(incoming > 0 && s.indexOf(`-global migration.tls-creds=lstls-server`) === incoming - 1);
  // Without it: none of it.
  const plain = secondaryArgs(m('secondary'), e, { parent: 'p', parentFormat: 'qcow2', active: 'a', hidden: 'h' }).join(' ');
  assert.doesNotMatch(plain, /tls/);
});
