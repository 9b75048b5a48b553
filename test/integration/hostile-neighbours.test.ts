/**
 * What a neighbour can do to a protected VM, on the daemons of lab hosts a
 * and b (VM web, the witness and a management host beside it, a client on
 * the LAN keeping one TCP connection and counting on the disk):
 *
 * - a third host that web's hosts trust (the management host, which also
 *   holds another VM's witness key): its definitions are confined by the
 *   hosts' files, its witness key reaches its own VM's records only, its pair
 *   secret opens no heartbeat session to a host it shares no VM with; web
 *   then fails over and is protected again as if nothing had happened;
 * - a hostile peer that fills every handshake slot it can, on b's heartbeat
 *   sessions (from a's own address) and on the witness, while the heartbeat
 *   cable and a's witness cable are cut and healed: the real peer is back
 *   within 5 s of each heal;
 * - a local unprivileged user (nobody) on the hosts: reads no guest data
 *   (images, replicas, buffers, logs, the monitors and the local proxy
 *   sockets), and what it plants where the buffers used to be is neither
 *   followed nor used by the resync that makes the next secondary.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { NetnsClient } from '../../src/lab/client-driver.js';
import { readState } from '../../src/pair/state.js';
import { packageRoot } from '../../src/util/paths.js';
import { run } from '../../src/util/exec.js';
import { sleep, pollUntil } from '../../src/util/time.js';
import { pairSecret } from '../../src/daemon/identity.js';
import { hostInfoSchema } from '../../src/daemon/api-types.js';
import { witnessKeyFor } from '../../src/node/witness.js';
import { LAB_SECRET } from '../../src/lab/scenario.js';
import { daemonLab, assertConnectionKept } from '../helpers/daemons.js';
import type { AgentStatus } from '../../src/pair/agents.js';

const isRoot = process.getuid?.() === 0;
const dist = (f: string) => path.join(packageRoot(), 'dist', 'src', 'lab', f);

/** The times (wall-clock ms) of a pino log's lines that `pick` takes. */
function logTimes(file: string, pick: (j: { msg?: unknown; path?: unknown }) => boolean): number[] {
  const out: number[] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    let j: { time?: unknown; msg?: unknown; path?: unknown };
    try {
      j = JSON.parse(line) as typeof j;
    } catch {
      continue;
    }
    const at = typeof j.time === 'string' ? Date.parse(j.time) : typeof j.time === 'number' ? j.time : NaN;
    if (Number.isFinite(at) && pick(j)) out.push(at);
  }
  return out;
}

function isLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** The QEMU processes on lab host `h` (its daemon's children, the daemon left out). */
async function qemusOn(lab: { daemonPid(h: 'a' | 'b'): Promise<number | undefined>; processes(h: 'a' | 'b'): Promise<number[]> }, h: 'a' | 'b'): Promise<number[]> {
  const daemon = await lab.daemonPid(h);
  return (await lab.processes(h)).filter((p) => p !== daemon && isQemu(p));
}

/** Kills (SIGKILL) the one QEMU on lab host `h`. */
async function killQemuOn(lab: Parameters<typeof qemusOn>[0], h: 'a' | 'b'): Promise<void> {
  const qemus = await qemusOn(lab, h);
  assert.equal(qemus.length, 1, `one QEMU on ${h}`);
  process.kill(qemus[0]!, 'SIGKILL');
}

function isQemu(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('qemu');
  } catch {
    return false;
  }
}

test("a third host that web's hosts trust, holding another VM's witness key, cannot disturb web", { skip: !isRoot && 'needs root for namespaces', timeout: 12 * 60_000 }, async (t) => {
  const d = await daemonLab(t, 'nb3');
  const { hosts, lab } = d;
  await d.up();
  const client = NetnsClient.start(hosts.ns.client, '10.0.2.15', 100);
  try {
    await client.until((x) => x.echoOk >= 10 && x.httpOk >= 10, 240_000, 'traffic through COLO');
    // 1. Definitions from the management host: what web's hosts do not allow is refused, naming the line that would.
    const etc = lab.dirs('mgmt').etc;
    const web = fs.readFileSync(path.join(etc, 'web.yaml'), 'utf8');
    const evil = (name: string, text: string) => {
      fs.writeFileSync(path.join(etc, `${name}.yaml`), text);
      return lab.cli('mgmt', ['up', '-f', `/etc/lockstep/${name}.yaml`], { timeoutMs: 120_000 });
    };
    const shell = await evil('shell', web.replace('name: web', 'name: shell').replace('vm:', 'qemu: { binary: /bin/sh }\nvm:'));
    assert.notEqual(shell.code, 0);
    assert.match(shell.stderr, /qemu\.binary: \/bin\/sh is not among the QEMU binaries host [ab] allows/);
    assert.match(shell.stderr, /allow: \{ qemu: \[.*\/bin\/sh\] \} in \/etc\/lockstep\/host\.yaml/);
    const disk = await evil('rawdisk', web.replace('name: web', 'name: rawdisk').replace(/image: [^,]+,/, 'image: /dev/vda,'));
    assert.notEqual(disk.code, 0);
    assert.match(disk.stderr, /vm\.disk\.image: \/dev\/vda is not among the image directories/);
    const nic = await evil('nic', web.replace('name: web', 'name: nic').replace('{ mode: tap, bridge: br0 }', '{ mode: tap, bridge: br0, taps: { a: mg0, b: mg0 } }'));
    assert.notEqual(nic.code, 0);
    assert.match(nic.stderr, /interface mg0 exists on host [ab] and lockstep did not make it/);
    const changed = await evil('web', web.replace('memory: 128M', 'memory: 256M'));
    assert.notEqual(changed.code, 0, 'a running VM is not redefined under its agents');
    fs.writeFileSync(path.join(etc, 'web.yaml'), web);
    for (const h of ['a', 'b'] as const) {
      const vms = fs.readdirSync(path.join(lab.dirs(h).state, 'vms'));
      assert.deepEqual(vms, ['web'], `host ${h} kept none of the refused definitions`);
    }

    // 2. The witness, with VM db's own key (the management host runs db): web's run, learned, is not db's to touch.
    const placed = JSON.parse(fs.readFileSync(path.join(lab.dirs('a').state, 'vms', 'web', 'vm.json'), 'utf8')) as { run: string };
    const spec = { host: hosts.addr.mgmt.witness, port: 7900, ownVm: 'db', key: witnessKeyFor(LAB_SECRET, 'db'), victimVm: 'web', victimRun: placed.run, forgedGen: 1001, junkRuns: 300 };
    const w = await lab.exec('mgmt', process.execPath, [dist('hostile-witness.js'), JSON.stringify(spec)], { timeoutMs: 300_000 });
    const got = JSON.parse(w.stdout.trim()) as { forged: { granted: boolean }; victimLease: { granted?: boolean; reason?: string }; junk: { runs: number; granted: number; ms: number } };
    process.stderr.write(`# with db's key: web's run recorded under db (granted ${got.forged.granted}); web's lease: ${JSON.stringify(got.victimLease)}; ${got.junk.granted} of ${got.junk.runs} runs of db's own in ${got.junk.ms} ms\n`);
    assert.equal(got.victimLease.granted, false);
    assert.match(got.victimLease.reason ?? '', /proved VM db's key: it may not touch VM web's lease/);

    // 3. Its pair secret with b, from a's address (a path of web's): the handshake goes through, no session does.
    const infoB = hostInfoSchema.parse(JSON.parse((await lab.cli('b', ['host', 'show', '--json'], { check: true })).stdout));
    const secret = pairSecret(fs.readFileSync(path.join(lab.dirs('mgmt').etc, 'tls', 'host.key'), 'utf8'), 'mgmt', fs.readFileSync(path.join(lab.dirs('b').etc, 'tls', 'host.crt'), 'utf8'), 'b');
    const r = await run('ip', ['netns', 'exec', hosts.ns.a, process.execPath, dist('hostile.js'), infoB.addresses.heartbeat[0]!, String(infoB.addresses.heartbeatPort), secret, 'mgmt'], { timeoutMs: 180_000 });
    const outcomes = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { attempt: string; closed: boolean; extra: string[] });
    for (const o of outcomes) {
      assert.equal(o.closed, true, `"${o.attempt}": closed`);
      assert.deepEqual(o.extra.filter((l) => !l.includes('"proof"')), [], `"${o.attempt}": nothing but the handshake came back`);
    }
    assert.equal((await d.status()).protected, true, 'web still protected');

    // 4. web loses its primary's QEMU: b takes over (its disk is not stale at the witness), then it is protected again.
    await killQemuOn(lab, 'a');
    const again = await d.untilProtected('after the primary QEMU was killed', 120_000);
    assert.equal(again.s.of('b')?.agent?.role, 'primary', 'b took over');
    assert.ok(!again.s.hosts.some((h) => h.status?.agent?.lease.stale), 'no node of web is stale at the witness');
    process.stderr.write(`# web protected again ${(again.ms / 1000).toFixed(1)} s after its primary's QEMU was killed\n`);
  } finally {
    assertConnectionKept(await client.finish());
  }
});

test('a hostile peer filling every handshake slot it can on the heartbeat sessions and the witness: a cut session and a cut witness link are back within 5 s of healing', { skip: !isRoot && 'needs root for namespaces', timeout: 12 * 60_000 }, async (t) => {
  const BOUND_MS = 5000;
  const d = await daemonLab(t, 'nbf');
  const { hosts, lab } = d;
  await d.up();
  const client = NetnsClient.start(hosts.ns.client, '10.0.2.15', 100);
  const fills: Array<Promise<{ stdout: string }>> = [];
  try {
    await client.until((x) => x.echoOk >= 10 && x.httpOk >= 10, 240_000, 'traffic through COLO');
    const infoB = hostInfoSchema.parse(JSON.parse((await lab.cli('b', ['host', 'show', '--json'], { check: true })).stdout));
    const fill = (ns: string, host: string, port: number) =>
      run('ip', ['netns', 'exec', ns, process.execPath, dist('hostile.js'), 'fill', host, String(port), '200', '60000'], { timeoutMs: 120_000 });
    // From a's own address (the real peer's) onto b's session port, and from both hosts onto the witness.
    fills.push(fill(hosts.ns.a, infoB.addresses.heartbeat[0]!, infoB.addresses.heartbeatPort ?? 7701));
    fills.push(fill(hosts.ns.a, hosts.addr.mgmt.witness, 7900));
    fills.push(fill(hosts.ns.b, hosts.addr.mgmt.witness, 7900));
    await sleep(3000);
    // Asked on the host itself (its local API): a's witness cable is also its management cable.
    const agentOf = async (h: 'a' | 'b') => {
      const r = await lab.cli(h, ['status', 'web', '--json']);
      const s = JSON.parse(r.stdout) as { hosts: Array<{ host: string; status?: { agent: AgentStatus | null } }> };
      return s.hosts.find((x) => x.host === h)?.status?.agent ?? undefined;
    };

    // The heartbeat cable: the session on it dies (no reset) and must come back once the cable does.
    await hosts.cut('heartbeat');
    const down = await pollUntil(() => agentOf('a'), (a) => a?.peer.paths[0]?.up === false, { timeoutMs: 15_000, intervalMs: 100 });
    assert.ok(down.done, "a's first heartbeat path went down");
    await sleep(1000);
    // The clock starts before the cable is back: a session that comes up while `ip` returns is counted, not missed
    // (a loaded host may take a tenth of a second to see the command end, and a redial can land inside it).
    const t0 = Date.now();
    await hosts.restore('heartbeat');
    const up = await pollUntil(() => agentOf('a'), (a) => a?.peer.paths[0]?.up === true, { timeoutMs: 30_000, intervalMs: 100 });
    assert.ok(up.done, 'the session came back');
    // When, by a's daemon's own log (the status asked through the CLI lags by its own run time).
    const path0 = `${hosts.addr.heartbeat.a}→${hosts.addr.heartbeat.b}`;
    const upLines = logTimes(path.join(lab.dirs('a').etc, '..', 'daemon.log'), (j) => j.msg === 'heartbeat session up' && j.path === path0);
    const sessionUp = upLines.find((at) => at >= t0);
    assert.ok(sessionUp !== undefined, `a's daemon logged the session up (its session-up lines on ${path0}: ${JSON.stringify(upLines.map((at) => at - t0))} ms from the cable's return)`);
    const sessionMs = sessionUp - t0;
    process.stderr.write(`# the heartbeat session was back ${(sessionMs / 1000).toFixed(2)} s after the cable (status saw it ${((Date.now() - t0) / 1000).toFixed(1)} s after)\n`);
    assert.ok(sessionMs < BOUND_MS, `the session back after ${sessionMs} ms`);

    // a's witness cable: its link to the witness dies and must come back (its renewals answered again).
    await hosts.cut('witness-a');
    const lost = await pollUntil(() => agentOf('a'), (a) => (a?.lease.witnessAnswerMs ?? 0) > 2000, { timeoutMs: 15_000, intervalMs: 100 });
    assert.ok(lost.done, 'a lost the witness');
    const t1 = Date.now();
    await hosts.restore('witness-a');
    const back = await pollUntil(() => agentOf('a'), (a) => !!a && (a.lease.witnessAnswerMs ?? Infinity) < 1000 && a.lease.held, { timeoutMs: 30_000, intervalMs: 100 });
    assert.ok(back.done, 'the witness link came back');
    // When, by the witness's own log: a's lease, lapsed during the cut, granted to it again.
    const granted = logTimes(path.join(d.root, 'witness.log'), (j) => typeof j.msg === 'string' && j.msg.startsWith('lease of web granted to a ')).find((at) => at >= t1);
    assert.ok(granted !== undefined, 'the witness logged the grant');
    const witnessMs = granted - t1;
    process.stderr.write(`# a's witness link was back ${(witnessMs / 1000).toFixed(2)} s after the cable (its lease granted again; status saw it ${((Date.now() - t1) / 1000).toFixed(1)} s after)\n`);
    assert.ok(witnessMs < BOUND_MS, `the witness link back after ${witnessMs} ms`);

    const after = await d.untilProtected('after both heals', 60_000);
    assert.equal(after.s.of('a')?.agent?.role, 'primary', 'no failover');
    for (const f of await Promise.all(fills)) {
      const o = JSON.parse(f.stdout.trim()) as { attempt: string; opened: number; closedByPeer: number; maxOpen: number };
      process.stderr.write(`# ${o.attempt}: ${o.opened} opened, ${o.closedByPeer} closed by the server, at most ${o.maxOpen} open at once\n`);
      assert.ok(o.closedByPeer > 100, `${o.attempt}: the server kept dropping them`);
    }
  } finally {
    assertConnectionKept(await client.finish());
  }
});

test('a local unprivileged user reads no guest data, and plants nothing that a resync follows', { skip: !isRoot && 'needs root for namespaces', timeout: 12 * 60_000 }, async (t) => {
  const d = await daemonLab(t, 'nbu');
  const { lab } = d;
  await d.up();
  const nobody = (h: 'a' | 'b', script: string) => lab.exec(h, 'setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', 'sh', '-c', script], { timeoutMs: 30_000 });
  const vmDir = (h: 'a' | 'b') => path.join('/var/lib/lockstep/vms/web', h);
  const stB = readState(path.join(lab.dirs('b').state, 'vms', 'web'))!;
  const stA = readState(path.join(lab.dirs('a').state, 'vms', 'web'))!;
  const buffers = stB.buffers;
  const bufferDir = path.dirname(buffers.active);
  // b's /dev/shm is a RAM disk of b's own mount namespace: seen from here through its daemon's root.
  const daemonB = await lab.daemonPid('b');
  const onB = (p: string) => `/proc/${daemonB}/root${p}`;
  assert.match(bufferDir, /^\/dev\/shm\/lockstep-web-b-[0-9a-f]{16}$/, 'the buffers in a directory of their own, its name not guessable');
  assert.equal(fs.statSync(onB(bufferDir)).mode & 0o7777, 0o700);
  for (const b of [buffers.active, buffers.hidden]) assert.equal(fs.statSync(onB(b)).mode & 0o777, 0o600, b);

  // Reads, as nobody, of every place guest data or a way into a QEMU lives.
  const reads: Array<['a' | 'b', string]> = [
    ['a', '/var/lib/lockstep/images/web.qcow2'],
    ['a', `${vmDir('a')}/serial.log`],
    ['b', `${vmDir('b')}/replica.qcow2`],
    ['b', buffers.active],
    ['b', buffers.hidden],
  ];
  for (const [h, f] of reads) {
    const r = await nobody(h, `cat ${f} > /dev/null`);
    assert.notEqual(r.code, 0, `nobody read ${f} on ${h}`);
    assert.match(r.stderr, /Permission denied/, `${f}: ${r.stderr}`);
  }
  const connect = (h: 'a' | 'b', target: string) =>
    nobody(h, `${process.execPath} -e 'const s=require("net").connect(${target});s.on("connect",()=>{console.log("connected");process.exit(0)});s.on("error",(e)=>{console.log(e.code);process.exit(1)})'`);
  for (const sock of [`${vmDir('a')}/qmp.sock`, `${vmDir('a')}/compare0.sock`, `${vmDir('a')}/compare-out.sock`, `${vmDir('b')}/qmp.sock`]) {
    const h = sock.includes('/a/') ? 'a' : 'b';
    const r = await connect(h, JSON.stringify({ path: sock }));
    assert.equal(r.stdout.trim(), 'EACCES', `nobody connected to ${sock} on ${h}: ${r.stdout}${r.stderr}`);
  }
  // The primary's local proxy is no TCP port on loopback any more.
  for (const port of [stA.endpoints.comparePrimaryPort, stA.endpoints.compareOutPort]) {
    const r = await connect('a', JSON.stringify({ host: '127.0.0.1', port }));
    assert.equal(r.stdout.trim(), 'ECONNREFUSED', `port ${port} on a's loopback: ${r.stdout}`);
  }

  // Plants, as nobody on b: links where the buffers used to be (to a file of root's), a directory of the old name with a
  // buffer of its own in it, and a file in the real buffers' directory (refused).
  // (What is already there under those names, a run's leftovers, is left alone: only what nobody planted here goes after.)
  const precious = `/dev/shm/lockstep-test-precious-${process.pid}`;
  const names = ['/dev/shm/lockstep-web-b-active.qcow2', '/dev/shm/lockstep-web-b-hidden.qcow2', '/dev/shm/lockstep-web-b'];
  const planted = names.filter((p) => !fs.existsSync(onB(p)) && !isLink(onB(p)));
  assert.ok(planted.length > 0, 'something to plant');
  t.after(() => {
    for (const p of [precious, ...planted].map(onB)) if (fs.existsSync(p) || isLink(p)) if (p === onB(precious) || fs.lstatSync(p).uid === 65534) fs.rmSync(p, { recursive: true, force: true });
  });
  fs.writeFileSync(onB(precious), 'precious', { mode: 0o644 });
  const plantOne = (p: string) => (p.endsWith('.qcow2') ? `ln -s ${precious} ${p}` : `mkdir ${p} && echo planted > ${p}/active.qcow2 && chmod 777 ${p}`);
  const plant = await nobody('b', planted.map(plantOne).join(' && '));
  assert.equal(plant.code, 0, plant.stderr);
  const inside = await nobody('b', `touch ${bufferDir}/x`);
  assert.match(inside.stderr, /Permission denied/);

  // b's QEMU dies: a's agent makes a new secondary on b (new replica, new buffers) and resyncs it.
  await killQemuOn(lab, 'b');
  await sleep(2000);
  const { ms } = await d.untilProtected('re-protection after the secondary was killed', 120_000);
  process.stderr.write(`# protected again ${(ms / 1000).toFixed(1)} s after the secondary's QEMU was killed\n`);
  const newQemu = await qemusOn(lab, 'b');
  assert.equal(newQemu.length, 1);
  const cmdline = fs.readFileSync(`/proc/${newQemu[0]}/cmdline`, 'utf8');
  assert.ok(cmdline.includes(`${bufferDir}/active.qcow2`), "the new secondary's buffers are in the private directory");
  for (const p of planted) assert.ok(!cmdline.includes(`${p}\0`) && !cmdline.includes(`${p}/`) && !cmdline.includes(`${p},`), `${p}, planted, is not used`);
  assert.equal(fs.readFileSync(onB(precious), 'utf8'), 'precious', 'the link target untouched');
  for (const p of planted) {
    if (p.endsWith('.qcow2')) assert.ok(fs.lstatSync(onB(p)).isSymbolicLink(), `${p} left as it was`);
    else assert.equal(fs.readFileSync(onB(path.join(p, 'active.qcow2')), 'utf8'), 'planted\n', "nobody's own file untouched");
  }
  assert.equal(fs.statSync(onB(bufferDir)).mode & 0o7777, 0o700);
  assert.equal(fs.statSync(onB(bufferDir)).uid, 0);
  for (const b of [buffers.active, buffers.hidden]) assert.equal(fs.statSync(onB(b)).mode & 0o777, 0o600, `${b}: made anew, 0600`);

  // a's QEMU dies: b takes over and readies its own local proxy for the next secondary, as unix sockets in its
  // private data directory too (not loopback TCP, not a's directory), which the resync then uses.
  await killQemuOn(lab, 'a');
  const taken = await d.untilProtected('re-protection after the primary was killed', 120_000);
  assert.equal(taken.s.of('b')?.agent?.role, 'primary', 'b took over');
  process.stderr.write(`# protected again ${(taken.ms / 1000).toFixed(1)} s after the primary's QEMU was killed (b primary)\n`);
  for (const sock of [`${vmDir('b')}/compare0.sock`, `${vmDir('b')}/compare-out.sock`, `${vmDir('b')}/qmp.sock`]) {
    assert.ok(fs.statSync(onB(sock)).isSocket(), `${sock} is b's socket`);
    const r = await connect('b', JSON.stringify({ path: sock }));
    assert.equal(r.stdout.trim(), 'EACCES', `nobody connected to ${sock} on b: ${r.stdout}${r.stderr}`);
  }
  for (const port of [stA.endpoints.comparePrimaryPort, stA.endpoints.compareOutPort]) {
    const r = await connect('b', JSON.stringify({ host: '127.0.0.1', port }));
    assert.equal(r.stdout.trim(), 'ECONNREFUSED', `port ${port} on b's loopback after the takeover: ${r.stdout}`);
  }
});
