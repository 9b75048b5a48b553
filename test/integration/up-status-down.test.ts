/**
 * The product path: a config file → `lockstep up` → a protected pair that
 * serves through COLO and replicates its disk → `lockstep status` →
 * `lockstep down`, all through the CLI as a user runs it.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { lockstep, json } from '../helpers/cli.js';
import { bumpCounter, httpGet, waitHttp } from '../helpers/clients.js';
import { findFreePortRange } from '../../src/util/net.js';
import { labConfigYaml } from '../../src/lab/pair.js';
import { defaultQemuLine, findLabQemu } from '../../src/lab/qemu-build.js';
import { QmpClient } from '../../src/qmp/client.js';
import { readImageBytes } from '../../src/qemu/images.js';
import type { PairStatus } from '../../src/pair/status.js';
import { pidRunning } from '../../src/util/proc.js';

let dir: string;
let cfg: string;
let httpPort: number;
let stateDir: string;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-up-'));
  const base = await findFreePortRange(['127.0.0.1', '127.0.0.2'], 7);
  httpPort = base + 6;
  stateDir = path.join(dir, '.lockstep', `t${base}`);
  cfg = path.join(dir, 'pair.yaml');
  fs.writeFileSync(cfg, labConfigYaml({ name: `t${base}`, base, forwards: [[base + 6, 80]], replication: { checkpointDelayMs: 2000, bufferDir: path.join(dir, 'shm') } }));
});

after(async () => {
  await lockstep(['down', '-c', cfg]);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('up → protected pair; status shows both nodes in COLO', { timeout: 10 * 60_000 }, async () => {
  const r = await lockstep(['up', '-c', cfg, '--json'], { timeoutMs: 9 * 60_000 });
  assert.equal(r.code, 0, r.stderr);
  const st = json<PairStatus>(await lockstep(['status', '-c', cfg, '--json']));
  assert.equal(st.protected, true);
  assert.equal(st.running, true);
  const [a, b] = st.nodes;
  assert.deepEqual([a?.name, a?.role, a?.colo?.mode, a?.migration], ['a', 'primary', 'primary', 'colo']);
  assert.deepEqual([b?.name, b?.role, b?.colo?.mode, b?.migration], ['b', 'secondary', 'secondary', 'colo']);
  // "colo" while a checkpoint is being taken
  assert.match(a!.runState!, /^(running|colo)$/);
  assert.match(b!.runState!, /^(running|colo)$/);
  assert.ok(a!.pid! > 0 && b!.pid! > 0 && a!.pid !== b!.pid);
  // Both run the lab QEMU of the line under test (LOCKSTEP_LAB_QEMU: the suite's version matrix).
  const line = defaultQemuLine();
  const lab = findLabQemu(line);
  assert.ok(lab, `the lab QEMU ${line} is built`);
  for (const n of [a!, b!]) assert.equal(fs.realpathSync(`/proc/${n.pid}/exe`), fs.realpathSync(lab.binary), `node ${n.name} runs the lab QEMU ${line}`);
  process.stderr.write(`# QEMU ${line}: ${lab.sourceVersion} + ${lab.patches.length} patches\n`);
  assert.ok(st.upMs! > 0);
  const human = await lockstep(['status', '-c', cfg]);
  assert.match(human.stdout, /PROTECTED/);
  assert.equal(human.code, 0, 'status exits 0 when protected');
});

test('the service answers through the primary, checkpoints happen, and the replica holds the primary\'s writes', { timeout: 5 * 60_000 }, async () => {
  const base = `http://127.0.0.1:${httpPort}`;
  await waitHttp(`${base}/cgi-bin/get`, 120_000); // the guest boots under COLO after up returns
  const first = await bumpCounter(base);
  const second = await bumpCounter(base);
  assert.equal(second, first + 1);
  const p = await QmpClient.connect(path.join(stateDir, 'a', 'qmp.sock'));
  try {
    const stops = p.listen('STOP');
    const resumes = p.listen('RESUME');
    await httpGet(`${base}/cgi-bin/info`); // always differs: forces a checkpoint
    await stops.next(15_000, 'a checkpoint (STOP on the primary)');
    await resumes.next(15_000, 'the primary to resume after the checkpoint');
  } finally {
    p.destroy();
  }
  const last = await bumpCounter(base);
  const expect = `counter=${last}\n`;
  const read = async (f: string) => (await readImageBytes(f, 'qcow2', 512, 16)).toString('latin1').replace(/\0+$/, '');
  assert.equal(await read(path.join(dir, 'disk.qcow2')), expect, 'the primary\'s disk');
  assert.equal(await read(path.join(stateDir, 'b', 'replica.qcow2')), expect, 'the secondary\'s replica');
});

test('a second up of a running pair is refused and leaves it protected', async () => {
  const r = await lockstep(['up', '-c', cfg]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /already running/);
  assert.match(r.stderr, /lockstep down -c/);
  assert.equal(json<PairStatus>(await lockstep(['status', '-c', cfg, '--json'])).protected, true);
});

test('down stops both VMs; status then says so', async () => {
  const before = json<PairStatus>(await lockstep(['status', '-c', cfg, '--json']));
  const r = await lockstep(['down', '-c', cfg, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const res = json<{ nodes: Array<{ role: string; result: string }> }>(r);
  assert.deepEqual(res.nodes.map((n) => n.role), ['secondary', 'primary'], 'secondary first');
  assert.ok(res.nodes.every((n) => n.result === 'quit'), JSON.stringify(res));
  const after = await lockstep(['status', '-c', cfg, '--json']);
  assert.equal(after.code, 3, 'status exits 3 when the pair is not protected');
  const st = json<PairStatus>(after);
  assert.equal(st.running, false);
  assert.equal(st.protected, false);
  assert.ok(st.nodes.every((n) => n.pid === null && !n.alive));
  for (const n of before.nodes) assert.equal(pidRunning(n.pid!), false, `QEMU pid ${n.pid} has ended`);
});
