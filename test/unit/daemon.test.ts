/**
 * The host file, host init / trust, and the daemon's API on its two
 * listeners: the local socket (root only) and TLS between hosts that pinned
 * each other's certificates. Real daemons, real TLS, on loopback.
 */
import { test, after, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import https from 'node:https';
import { spawnSync } from 'node:child_process';
import { parseHostFile, loadHostFile, type HostConfig } from '../../src/config/host.js';
import { hostInit, hostTrust } from '../../src/daemon/host-init.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { ApiClient, ApiCallError } from '../../src/daemon/client.js';
import { MAX_BODY_BYTES } from '../../src/daemon/api.js';
import { packageRoot } from '../../src/util/paths.js';
import { LockstepError } from '../../src/util/errors.js';
import { parseVmFile, portBlockAt } from '../../src/config/vm.js';

const made: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-daemon-test-'));
  made.push(d);
  return d;
};
after(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

/** A free TCP port on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Hosts named `names` under `dir`, each with a TLS API on 127.0.0.1, each trusting the others listed in `trust`. */
async function hosts(dir: string, names: string[], trust: Array<[string, string]>): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  const ports: Record<string, number> = {};
  for (const n of names) {
    ports[n] = await freePort();
    files[n] = path.join(dir, n, 'host.yaml');
    await hostInit({ file: files[n]!, name: n, replication: '127.0.0.1', api: `127.0.0.1:${ports[n]}`, stateDir: path.join(dir, n, 'state'), socket: path.join(dir, n, 'api.sock') });
  }
  for (const [who, whom] of trust) hostTrust({ file: files[who]!, name: whom, api: `127.0.0.1:${ports[whom]}`, certFile: path.join(dir, whom, 'tls', 'host.crt') });
  return files;
}

/**
 * What a host needs to run a VM, as files that exist (a daemon refuses a VM whose QEMU or kernel it cannot find): these
 * tests define VMs without running them, whatever this machine has built or installed.
 */
const artifacts = (() => {
  const dir = tmp();
  const binary = path.join(dir, 'qemu-system-x86_64');
  fs.writeFileSync(binary, '#!/bin/sh\nexit 1\n', { mode: 0o755 });
  const kernel = path.join(dir, 'vmlinuz');
  fs.writeFileSync(kernel, '');
  return { binary, kernel };
})();

/** Host a's daemon alone (b is named in definitions only), started, with its local client; stopped after the test. */
async function daemonOfA(t: TestContext, o: { memoryForVms?: number; qemuBinary?: string | null; kernels?: string[] } = {}): Promise<{ h: HostConfig; d: Daemon; c: ApiClient }> {
  const files = await hosts(tmp(), ['a'], []);
  // The test's images (/srv) and kernels (a directory of its own) are allowed on this host.
  const allow = { images: ['/srv'], kernels: [path.dirname(artifacts.kernel), ...(o.kernels ?? [])] };
  const loaded = { ...loadHostFile(files.a!), qemu: o.qemuBinary === null ? {} : { binary: o.qemuBinary ?? artifacts.binary }, allow };
  const h = o.memoryForVms === undefined ? loaded : { ...loaded, memory: { forVms: o.memoryForVms } };
  const d = new Daemon(h);
  await d.start();
  t.after(() => d.stop());
  return { h, d, c: ApiClient.local(h) };
}

/** VM `name`'s definition between a and b, as up -f hands it over: its `vm:` section, its ports from `base`. */
function placedVm(name: string, o: { base: number; vm?: string; run?: string; kernel?: string }) {
  return {
    vm: parseVmFile(`name: ${name}\nhosts: [a, b]\nvm: { kernel: ${o.kernel ?? artifacts.kernel}, disk: { image: /srv/${name}.qcow2 }${o.vm ? `, ${o.vm}` : ''} }\n`, `${name}.yaml`),
    hosts: { a: { replication: '10.0.1.1', heartbeat: ['10.0.1.1'] }, b: { replication: '10.0.1.2', heartbeat: ['10.0.1.2'] } },
    run: o.run ?? `run-${name}-0123456789`,
    secret: 'a secret of sixteen or more',
    ports: portBlockAt(o.base),
    definedAt: new Date().toISOString(),
  };
}

test('host file: defaults filled in, paths relative to the file, every problem named with its field', () => {
  const h = parseHostFile('name: a\naddresses: { replication: 10.0.1.1 }\n', '/etc/lockstep/host.yaml');
  assert.equal(h.stateDir, '/var/lib/lockstep');
  assert.equal(h.api.socket, '/run/lockstep/api.sock');
  assert.equal(h.api.listen, undefined);
  assert.deepEqual(h.addresses.heartbeat, ['10.0.1.1']);
  assert.equal(h.tls.key, '/etc/lockstep/tls/host.key');
  assert.throws(() => parseHostFile('name: A!\naddresses: { replication: 10.0.1.1 }\n', 'h.yaml'), /name: expected a short lower-case name/);
  assert.throws(() => parseHostFile('name: a\naddresses: { replication: 10.0.1.1 }\nport: 1\n', 'h.yaml'), /unknown field "port"/);
  assert.throws(() => parseHostFile('name: a\naddresses: { replication: 10.0.1.1 }\napi: { listen: "10.0.1.1" }\n', 'h.yaml'), /api.listen: expected ADDRESS:PORT/);
  assert.throws(() => parseHostFile('name: a\naddresses: { replication: 10.0.1.1 }\npeers: { a: { api: "10.0.1.2:7700", cert: x } }\n', 'h.yaml'), /peers.a: that is this host's own name/);
  assert.throws(() => loadHostFile('/nonexistent/host.yaml'), /no such file[\s\S]*/);
  assert.equal(h.qemu.binary, undefined);
  const q = parseHostFile('name: a\naddresses: { replication: 10.0.1.1 }\nqemu: { binary: /usr/lib/lockstep/qemu-10.0/bin/qemu-system-x86_64 }\n', 'h.yaml');
  assert.equal(q.qemu.binary, '/usr/lib/lockstep/qemu-10.0/bin/qemu-system-x86_64');
  assert.throws(() => parseHostFile('name: a\naddresses: { replication: 10.0.1.1 }\nqemu: { binary: qemu-system-x86_64 }\n', 'h.yaml'), /qemu.binary: "qemu-system-x86_64" must be an absolute path/);
});

test('host init: a private key (0600), a certificate, a host file that loads; nothing replaced without --force', async () => {
  const dir = tmp();
  const file = path.join(dir, 'etc', 'host.yaml');
  const r = await hostInit({ file, name: 'a', replication: '10.0.1.1', heartbeat: ['10.0.2.1', '10.0.1.1'], api: '10.0.1.1' });
  const h = loadHostFile(file);
  assert.equal(h.name, 'a');
  assert.equal(h.api.listen, '10.0.1.1:7700');
  assert.deepEqual(h.addresses.heartbeat, ['10.0.2.1', '10.0.1.1']);
  assert.equal(fs.statSync(h.tls.key).mode & 0o777, 0o600);
  assert.equal(fs.statSync(path.dirname(h.tls.key)).mode & 0o077, 0);
  const cert = new (await import('node:crypto')).X509Certificate(fs.readFileSync(h.tls.cert));
  assert.equal(cert.fingerprint256, r.fingerprint);
  assert.match(cert.subjectAltName ?? '', /DNS:a.*IP Address:10.0.1.1.*IP Address:10.0.2.1/);
  assert.equal(cert.ca, false);
  const key = fs.readFileSync(h.tls.key, 'utf8');
  await assert.rejects(hostInit({ file, name: 'a', replication: '10.0.1.1' }), /exists: this host is set up already/);
  assert.equal(fs.readFileSync(h.tls.key, 'utf8'), key, 'the key is untouched');
  // Bad input is refused before anything is written.
  await assert.rejects(hostInit({ file: path.join(dir, 'x', 'host.yaml'), name: 'a', replication: 'ten' }), /addresses.replication: expected an IPv4 address/);
  assert.equal(fs.existsSync(path.join(dir, 'x')), false);
  await hostInit({ file, name: 'a', replication: '10.0.1.1', force: true });
  assert.notEqual(fs.readFileSync(h.tls.key, 'utf8'), key, 'replaced with --force');
});

test('host trust: pins a certificate under a name, keeps the comments; refuses its own, junk, and a changed one without --force', async () => {
  const dir = tmp();
  const files = await hosts(dir, ['a', 'b', 'c'], []);
  const bCert = path.join(dir, 'b', 'tls', 'host.crt');
  const r = hostTrust({ file: files.a!, name: 'b', api: '127.0.0.9', certFile: bCert });
  assert.equal(r.host.peers.b!.api, '127.0.0.9:7700');
  const text = fs.readFileSync(files.a!, 'utf8');
  assert.match(text, /# The hosts this one trusts/);
  assert.equal(loadHostFile(files.a!).peers.b!.cert.trim(), fs.readFileSync(bCert, 'utf8').trim());
  assert.throws(() => hostTrust({ file: files.a!, name: 'b', api: '127.0.0.9', certFile: bCert }), /trusted already with this certificate/);
  assert.throws(() => hostTrust({ file: files.a!, name: 'b', api: '127.0.0.9', certFile: path.join(dir, 'c', 'tls', 'host.crt') }), /trusted already with another certificate/);
  assert.throws(() => hostTrust({ file: files.a!, name: 'x', api: '127.0.0.9', certFile: path.join(dir, 'a', 'tls', 'host.crt') }), /this host's own certificate/);
  assert.throws(() => hostTrust({ file: files.a!, name: 'a', api: '127.0.0.9', certFile: bCert }), /this host's own name/);
  fs.writeFileSync(path.join(dir, 'junk.crt'), 'not a certificate\n');
  assert.throws(() => hostTrust({ file: files.a!, name: 'x', api: '127.0.0.9', certFile: path.join(dir, 'junk.crt') }), /not a PEM certificate/);
  assert.throws(() => hostTrust({ file: files.a!, name: 'x', api: '127.0.0.9', certFile: path.join(dir, 'key.crt') }), /cannot read/);
  assert.equal(fs.readFileSync(files.a!, 'utf8'), text, 'a refused trust changes nothing');
});

test('the API over TLS: hosts that pinned each other talk; an unpinned host, a wrong certificate, no certificate are refused', async (t) => {
  const dir = tmp();
  // a and b trust each other; c trusts b, but b does not trust c.
  const files = await hosts(dir, ['a', 'b', 'c'], [['a', 'b'], ['b', 'a'], ['c', 'b']]);
  const h: Record<string, HostConfig> = Object.fromEntries(Object.entries(files).map(([n, f]) => [n, loadHostFile(f)]));
  const daemons = [new Daemon(h.a!), new Daemon(h.b!)];
  for (const d of daemons) await d.start();
  t.after(() => Promise.all(daemons.map((d) => d.stop())));

  const fromA = await ApiClient.remote(h.a!, 'b').host();
  assert.equal(fromA.name, 'b');
  assert.equal(fromA.caller, 'a', 'b knows who asks by the certificate');
  assert.deepEqual(fromA.peers.map((p) => p.name), ['a']);
  assert.equal((await ApiClient.local(h.a!).host()).caller, 'root on this host');

  await assert.rejects(ApiClient.remote(h.c!, 'b').host(), /does not trust this host's certificate/);
  // c pins a's certificate for the address where b answers: the client refuses b's.
  hostTrust({ file: files.c!, name: 'a', api: h.b!.api.listen!, certFile: path.join(dir, 'a', 'tls', 'host.crt') });
  await assert.rejects(ApiClient.remote(loadHostFile(files.c!), 'a').host(), /do not trust each other/);
  assert.throws(() => ApiClient.remote(h.a!, 'nobody'), /does not know a host "nobody"/);

  // A TLS client without a certificate, or with one of its own making, gets nothing.
  const [host, port] = h.b!.api.listen!.split(':');
  const plain = (opts: https.RequestOptions) =>
    new Promise<string>((resolve) => {
      const req = https.request({ host, port: Number(port), path: '/v1/host', rejectUnauthorized: false, agent: false, ...opts }, (res) => resolve(`HTTP ${res.statusCode}`));
      req.on('error', (e) => resolve(`error ${e.message}`));
      req.end();
    });
  assert.match(await plain({}), /^error/);
  const selfMade = loadHostFile(files.c!);
  assert.match(await plain({ key: fs.readFileSync(selfMade.tls.key), cert: fs.readFileSync(selfMade.tls.cert) }), /^error/);
});

test('the API over TLS: 300 idle connections from one address lock no trusted host out, are closed after the handshake timeout, and a refused connection is not blamed on the certificate', async (t) => {
  const dir = tmp();
  const files = await hosts(dir, ['a', 'b'], [['a', 'b'], ['b', 'a']]);
  const h: Record<string, HostConfig> = Object.fromEntries(Object.entries(files).map(([n, f]) => [n, loadHostFile(f)]));
  const logs: string[] = [];
  const b = new Daemon(h.b!, { log: (_level, msg, detail) => logs.push(`${msg} ${JSON.stringify(detail ?? {})}`) });
  await b.start();
  t.after(() => b.stop());
  const [host, port] = h.b!.api.listen!.split(':');
  const idle: net.Socket[] = [];
  t.after(() => idle.forEach((s) => s.destroy()));
  for (let i = 0; i < 300; i++) {
    idle.push(
      await new Promise<net.Socket>((resolve) => {
        const s = net.createConnection({ host, port: Number(port), localAddress: '127.0.0.2' }, () => resolve(s));
        s.on('error', () => {});
      }),
    );
  }
  const t0 = performance.now();
  const info = await ApiClient.remote(h.a!, 'b').host();
  assert.equal(info.caller, 'a', 'the trusted host gets its answer at once');
  assert.ok(performance.now() - t0 < 2000);
  const open = () => idle.filter((s) => !s.destroyed && s.readyState === 'open').length;
  assert.ok(open() <= 8, `${open()} idle connections still held`);
  await new Promise((r) => setTimeout(r, 3500));
  assert.equal(open(), 0, 'the share the address kept is closed after the handshake timeout');
  assert.ok(logs.filter((l) => l.startsWith('refused a TLS connection')).length <= 20, 'refusals logged at a bounded rate');
  // A listener that takes the TCP connection and closes it at once: the client says so, not "your certificate".
  const closer = net.createServer((s) => s.destroy());
  await new Promise<void>((r) => closer.listen(0, '127.0.0.1', () => r()));
  t.after(() => closer.close());
  hostTrust({ file: files.a!, name: 'busy', api: `127.0.0.1:${(closer.address() as net.AddressInfo).port}`, certFile: path.join(dir, 'b', 'tls', 'host.crt') });
  await assert.rejects(ApiClient.remote(loadHostFile(files.a!), 'busy').host(), (e: unknown) => {
    assert.ok(e instanceof LockstepError);
    assert.match(e.message, /closed the connection before the TLS handshake was done/);
    assert.doesNotMatch(e.message, /certificate/);
    return true;
  });
});

test('the local API: root only, errors as JSON with a hint, bodies bounded; one daemon per socket, a stale socket replaced', async (t) => {
  const dir = tmp();
  const files = await hosts(dir, ['a'], []);
  const h = loadHostFile(files.a!);
  await assert.rejects(ApiClient.local(h).host(), (e: unknown) => e instanceof LockstepError && /the lockstep daemon does not run on this host/.test(e.message) && /systemctl start lockstepd/.test(e.hint ?? ''));
  // A socket file left by a daemon that died.
  fs.mkdirSync(path.dirname(h.api.socket), { recursive: true });
  const dead = net.createServer().listen(h.api.socket);
  await new Promise((r) => dead.once('listening', r));
  await new Promise<void>((r) => dead.close(() => r()));
  fs.writeFileSync(h.api.socket, '');
  const d = new Daemon(h);
  await d.start();
  t.after(() => d.stop());
  assert.equal(fs.statSync(h.api.socket).mode & 0o777, 0o600);
  assert.equal(fs.statSync(h.stateDir).mode & 0o777, 0o700);
  await assert.rejects(new Daemon(h).start(), /another lockstep daemon answers/);
  const c = ApiClient.local(h);
  const { z } = await import('zod');
  await assert.rejects(c.call('GET', '/nothing', z.unknown()), (e: unknown) => e instanceof ApiCallError && e.status === 404 && /no such API path/.test(e.message) && /\/v1/.test(e.hint ?? ''));
  await assert.rejects(c.call('PUT', '/host', z.unknown(), { junk: 'x'.repeat(MAX_BODY_BYTES) }), (e: unknown) => e instanceof ApiCallError && e.status === 413);
  assert.equal((await c.host()).name, 'a', 'still answering');
});

test('lockstepd.service passes systemd-analyze verify without a warning', (t) => {
  const which = spawnSync('sh', ['-c', 'command -v systemd-analyze']);
  if (which.status !== 0) return t.skip('systemd-analyze is not installed');
  const dir = tmp();
  const shipped = fs.readFileSync(path.join(packageRoot(), 'packaging', 'lockstepd.service'), 'utf8');
  assert.match(shipped, /^ExecStart=\/usr\/bin\/lockstep daemon /m, 'the command the lockstep package installs');
  assert.match(shipped, /^KillMode=process$/m, 'a daemon restart leaves the QEMUs running');
  // The command must exist for verify: the repository's, where lockstep is not installed.
  const bin = fs.existsSync('/usr/bin/lockstep') ? '/usr/bin/lockstep' : path.join(packageRoot(), 'bin', 'lockstep.js');
  const unit = path.join(dir, 'lockstepd.service');
  fs.writeFileSync(unit, shipped.replace('/usr/bin/lockstep', bin));
  const r = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr.trim(), '', 'no warnings');
});

test('VM definitions: checked and placed before they are kept (0600), the same again unchanged, unknown VMs 404', async (t) => {
  const { h, d, c } = await daemonOfA(t);
  const placed = placedVm('web', { base: 9000, run: 'run-0123456789' });
  const vm = placed.vm;
  const refused = (status: number, re: RegExp) => (e: unknown) => e instanceof ApiCallError && e.status === status && re.test(e.message);
  await assert.rejects(c.defineVm('web', { ...placed, secret: 'short' }), refused(400, /does not fit.*secret/));
  await assert.rejects(c.defineVm('other', placed), refused(400, /of VM "web", not "other"/));
  await assert.rejects(c.defineVm('web', { ...placed, hosts: { a: placed.hosts.a, b: placed.hosts.a } }), refused(400, /different addresses/));
  await assert.rejects(c.defineVm('Bad!', placed), refused(400, /not a VM name/));
  assert.equal((await c.defineVm('web', placed)).outcome, 'created');
  assert.equal((await c.defineVm('web', { ...placed, definedAt: 'later' })).outcome, 'unchanged');
  assert.equal((await c.defineVm('web', { ...placed, run: 'run-9876543210' })).outcome, 'replaced', 'never started here: replaced');
  assert.equal(fs.statSync(path.join(h.stateDir, 'vms', 'web', 'vm.json')).mode & 0o777, 0o600, 'it holds the secret');
  // Ports: a second VM cannot take web's, nor ports outside this host's range; a block of its own is fine.
  const db = { ...placed, vm: { ...vm, name: 'db' } };
  await assert.rejects(c.defineVm('db', db), refused(409, /would use ports 9000 \(comparePrimary, VM "web"'s\), .*9006 \(agents, VM "web"'s\) on this host/));
  await assert.rejects(c.defineVm('db', { ...db, ports: { ...portBlockAt(9007), agents: 7800 } }), refused(409, /port 7800 \(agents\), outside this host's range 9000-9999/));
  assert.equal((await c.defineVm('db', { ...db, ports: portBlockAt(9007) })).outcome, 'created');
  assert.deepEqual((await c.host()).ports, { first: 9000, last: 9999, used: Array.from({ length: 14 }, (_, i) => 9000 + i) });
  const list = await c.vms();
  assert.deepEqual(list.map((v) => [v.name, v.definedRole, v.phase, v.agent]), [['db', 'primary', 'defined', null], ['web', 'primary', 'defined', null]]);
  // lockstep status without a name: every VM of the hosts asked, none protected (defined only), nobody unreachable.
  const { vmsOnHosts } = await import('../../src/daemon/orchestrate.js');
  const all = await vmsOnHosts(h);
  assert.deepEqual(all.vms.map((v) => [v.name, v.protected, v.status.map((s) => `${s.host}:${s.status.phase}`)]), [['db', false, ['a:defined']], ['web', false, ['a:defined']]]);
  assert.deepEqual(all.unreachable, []);
  assert.equal(await c.vm('nothing'), undefined);
  await assert.rejects(c.startVm('nothing'), refused(404, /no VM "nothing"/));
  await assert.rejects(c.stopVm('nothing'), refused(404, /no VM "nothing"/));
  // A restarted daemon knows its VMs from its own files.
  await d.stop();
  const d2 = new Daemon(h);
  await d2.start();
  t.after(() => d2.stop());
  assert.deepEqual((await c.vms()).map((v) => v.name), ['db', 'web']);
  assert.equal((await c.host()).ports.used.length, 14, 'the ports stay taken across a restart');
});

test('a VM whose QEMU or kernel this host lacks is refused when defined, saying what to install; the daemon builds and downloads nothing', async (t) => {
  // An empty cache: no build of lockstep's QEMU, no demo guest (a daemon never makes either).
  const cache = tmp();
  const saved = process.env.LOCKSTEP_CACHE;
  process.env.LOCKSTEP_CACHE = cache;
  t.after(() => (saved === undefined ? delete process.env.LOCKSTEP_CACHE : (process.env.LOCKSTEP_CACHE = saved)));
  const refused = (re: RegExp, hint: RegExp) => (e: unknown) => e instanceof ApiCallError && e.status === 409 && re.test(e.message) && hint.test(e.hint ?? '');
  const { c } = await daemonOfA(t, { kernels: [cache] });
  await assert.rejects(c.defineVm('web', placedVm('web', { base: 9000, kernel: 'demo' })), refused(/boots the demo guest \(vm\.kernel: demo\), which is not built on host a/, /lockstep lab prepare/));
  await assert.rejects(c.defineVm('web', placedVm('web', { base: 9000, kernel: path.join(cache, 'no-such-kernel') })), refused(/vm\.kernel .*no-such-kernel of VM "web" does not exist on host a/, /put it there/));
  const { installedPackages } = await import('../../src/qemu/discover.js');
  if (installedPackages().length === 0 && !process.env.LOCKSTEP_QEMU) {
    const bare = await daemonOfA(t, { qemuBinary: null });
    await assert.rejects(bare.c.defineVm('web', placedVm('web', { base: 9000 })), refused(/no QEMU with lockstep's fixes on host a/, /apt install \.\/lockstep-qemu-LINE.*lockstep lab prepare/));
  }
  assert.deepEqual((await c.vms()).map((v) => v.name), [], 'nothing kept of the refused ones');
  assert.deepEqual(fs.readdirSync(cache), [], 'nothing built or downloaded into the cache');
});

test("a trusted host's definition is confined by the host file: QEMU binaries, image, kernel and buffer directories, taps lockstep made; each refusal names the host file line that allows it", async (t) => {
  const { h, c } = await daemonOfA(t);
  const base = placedVm('web', { base: 9000 });
  const with_ = (vm: Record<string, unknown>) => ({ ...base, vm: { ...base.vm, ...vm } });
  const refused = (status: number, re: RegExp, hint?: RegExp) => (e: unknown) => {
    assert.ok(e instanceof ApiCallError, String(e));
    assert.equal(e.status, status, e.message);
    assert.match(e.message, re);
    if (hint) assert.match(e.hint ?? '', hint);
    return true;
  };
  const line = (kind: string) => new RegExp(`allow: \\{ ${kind}: \\[.*\\] \\} in ${h.file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`);
  // Any executable as root: only the binaries the host file allows.
  await assert.rejects(c.defineVm('web', with_({ qemu: { ...base.vm.qemu, binary: '/bin/sh' } })), refused(403, /qemu\.binary: \/bin\/sh is not among the QEMU binaries host a allows/, line('qemu')));
  // An image outside the image directories, the way there written or not.
  await assert.rejects(c.defineVm('web', with_({ vm: { ...base.vm.vm, disk: { ...base.vm.vm.disk, image: '../../../../dev/sda' } } })), refused(400, /vm\.disk\.image: "\.\.\/\.\.\/\.\.\/\.\.\/dev\/sda" must be an absolute path/));
  await assert.rejects(c.defineVm('web', with_({ vm: { ...base.vm.vm, disk: { ...base.vm.vm.disk, image: '/srv/../dev/sda' } } })), refused(400, /must be a plain absolute path/));
  await assert.rejects(c.defineVm('web', with_({ vm: { ...base.vm.vm, disk: { ...base.vm.vm.disk, image: '/dev/sda' } } })), refused(403, /vm\.disk\.image: \/dev\/sda is not among the image directories/, line('images')));
  // disk.create only inside them, and a symbolic link inside one that leads out is out.
  await assert.rejects(c.defineVm('web', with_({ vm: { ...base.vm.vm, disk: { image: '/etc/web.qcow2', format: 'qcow2', create: true, size: 2 ** 26 } } })), refused(403, /\/etc\/web\.qcow2 is not among the image directories/));
  const kdir = path.dirname(artifacts.kernel);
  const link = path.join(kdir, 'to-etc');
  fs.symlinkSync('/etc', link);
  t.after(() => fs.rmSync(link));
  await assert.rejects(c.defineVm('web', with_({ vm: { ...base.vm.vm, kernel: path.join(link, 'shadow') } })), refused(403, /vm\.kernel: .*to-etc\/shadow is not among the kernel directories/, line('kernels')));
  await assert.rejects(c.defineVm('web', with_({ replication: { ...base.vm.replication, bufferDir: '/root' } })), refused(403, /replication\.bufferDir: \/root is not among the buffer directories/, line('buffers')));
  // A tap that exists and that lockstep did not make (here the loopback device: a real NIC's name would do as well).
  await assert.rejects(c.defineVm('web', with_({ vm: { ...base.vm.vm, network: { mode: 'tap', bridge: 'br0', taps: { a: 'lo' }, announce: true } } })), refused(403, /vm\.network\.taps\.a: interface lo exists on host a and lockstep did not make it/, line('taps')));
  assert.deepEqual((await c.vms()).map((v) => v.name), [], 'nothing kept of the refused ones');
  assert.equal((await c.defineVm('web', base)).outcome, 'created', 'what the host allows is kept');
});

test('a definition cannot replace a VM while its start runs', async (t) => {
  const cache = tmp();
  const saved = process.env.LOCKSTEP_CACHE;
  process.env.LOCKSTEP_CACHE = cache;
  t.after(() => (saved === undefined ? delete process.env.LOCKSTEP_CACHE : (process.env.LOCKSTEP_CACHE = saved)));
  // A QEMU that takes 3 s to answer anything: the start stays in its first steps meanwhile.
  const slow = path.join(tmp(), 'qemu-system-x86_64');
  fs.writeFileSync(slow, '#!/bin/sh\nsleep 3\nexit 1\n', { mode: 0o755 });
  const { c } = await daemonOfA(t, { qemuBinary: slow });
  const placed = placedVm('web', { base: 9000 });
  const tcg = { ...placed, vm: { ...placed.vm, qemu: { ...placed.vm.qemu, accel: 'tcg' as const } } };
  await c.defineVm('web', tcg);
  const st = await c.startVm('web');
  assert.equal(st.phase, 'starting');
  await assert.rejects(c.defineVm('web', { ...tcg, run: 'run-web-another-01' }), (e: unknown) => e instanceof ApiCallError && e.status === 409 && /is starting on this host: its definition cannot be replaced now/.test(e.message));
  assert.equal((await c.defineVm('web', tcg)).outcome, 'unchanged', 'the same definition again is fine');
  for (let i = 0; i < 100 && (await c.vm('web'))?.phase === 'starting'; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal((await c.vm('web'))?.phase, 'failed', 'the start failed on its own (no real QEMU), with the definition it began with');
});

test('memory: a VM that would go over what the host gives its VMs is refused, saying what is left and whose the rest is', async (t) => {
  const { c } = await daemonOfA(t, { memoryForVms: 300 * 2 ** 20 });
  const placed = (name: string, base: number) => placedVm(name, { base, vm: 'memory: 128M' });
  assert.equal((await c.defineVm('web', placed('web', 9000))).outcome, 'created', '128 MiB + 64 MiB of QEMU: 192 of 300');
  await assert.rejects(c.defineVm('db', placed('db', 9007)), (e: unknown) => e instanceof ApiCallError && e.status === 409 && /VM "db" needs about 192 MiB on this host .* but 108 MiB of the 300 MiB this host gives its VMs are left \(web 192 MiB\)/.test(e.message));
  assert.deepEqual((await c.host()).memory, { forVmsBytes: 300 * 2 ** 20, usedBytes: 192 * 2 ** 20 });
  assert.deepEqual((await c.vms()).map((v) => v.name), ['web'], 'nothing kept of the refused one');
});

test('bridge mode without a tap named for this host: the daemon names one per VM (lstapN), records it, keeps it across a restart and a new definition', async (t) => {
  const { h, d, c } = await daemonOfA(t);
  const placed = (name: string, base: number, run?: string) => placedVm(name, { base, run, vm: 'network: { mode: tap, bridge: br0 }' });
  await c.defineVm('web', placed('web', 9000));
  await c.defineVm('db', placed('db', 9007));
  const local = (name: string) => JSON.parse(fs.readFileSync(path.join(h.stateDir, 'vms', name, 'local.json'), 'utf8')) as { tap?: string };
  assert.deepEqual([local('web').tap, local('db').tap], ['lstap0', 'lstap1']);
  assert.equal((await c.defineVm('web', placed('web', 9000, 'run-web-again-0123'))).outcome, 'replaced');
  assert.equal(local('web').tap, 'lstap0', 'a new definition of the same VM keeps its tap');
  await d.stop();
  const d2 = new Daemon(h);
  await d2.start();
  t.after(() => d2.stop());
  await c.defineVm('cache', placed('cache', 9014));
  assert.equal(local('cache').tap, 'lstap2', 'the taps recorded before the restart stay taken');
});

test('the host file: no 0.0.0.0 nor out-of-range address or port, no reserved host name, no comma in its state directory', () => {
  const base = 'name: a\naddresses: { replication: 10.0.1.1 }\n';
  const refused = (text: string, re: RegExp) => assert.throws(() => parseHostFile(text, '/etc/lockstep/host.yaml'), re, text);
  refused('name: a\naddresses: { replication: 0.0.0.0 }\n', /addresses\.replication: expected one address of this host, not 0\.0\.0\.0/);
  refused('name: a\naddresses: { replication: 10.0.1.1, heartbeat: [0.0.0.0] }\n', /addresses\.heartbeat\[0\]: expected one address of this host/);
  refused(`${base}api: { listen: "0.0.0.0:7700" }\n`, /api\.listen: expected one address of this host, not 0\.0\.0\.0/);
  refused(`${base}api: { listen: "10.0.1.1:99999" }\n`, /api\.listen: expected ADDRESS:PORT/);
  refused('name: a\naddresses: { replication: 256.0.0.1 }\n', /addresses\.replication: expected an IPv4 address/);
  refused('name: constructor\naddresses: { replication: 10.0.1.1 }\n', /name: a reserved name/);
  refused(`${base}stateDir: "/var/lib/lock,step"\n`, /stateDir: "\/var\/lib\/lock,step" contains a comma/);
  refused(`${base}allow: { images: [relative/dir] }\n`, /allow\.images\[0\]: expected an absolute path/);
  assert.deepEqual(parseHostFile(`${base}allow: { images: [/srv/images], taps: [tap-web] }\n`, '/etc/lockstep/host.yaml').allow, { images: ['/srv/images'], taps: ['tap-web'] });
});
