/**
 * `lockstep failover` on a pair started with `lockstep up`: kill -9 the
 * primary, the secondary carries on with every acknowledged write, status
 * says who took over and why, and a later `up` never starts from the older
 * disk unless told to adopt the newest one.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { lockstep, json } from '../helpers/cli.js';
import { bumpCounter, waitHttp } from '../helpers/clients.js';
import { findFreePortRange } from '../../src/util/net.js';
import { labConfigYaml } from '../../src/lab/pair.js';
import type { PairStatus } from '../../src/pair/status.js';

let dir: string;
let cfg: string;
let base: string;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-fo-'));
  const p = await findFreePortRange(['127.0.0.1', '127.0.0.2'], 7);
  base = `http://127.0.0.1:${p + 6}`;
  cfg = path.join(dir, 'pair.yaml');
  fs.writeFileSync(cfg, labConfigYaml({ name: 'fo', base: p, forwards: [[p + 6, 80]], replication: { bufferDir: path.join(dir, 'shm') } }));
});

after(async () => {
  await lockstep(['down', '-c', cfg]);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('kill -9 the primary, failover: the secondary carries on with every acknowledged write', { timeout: 10 * 60_000 }, async () => {
  assert.equal((await lockstep(['up', '-c', cfg], { timeoutMs: 9 * 60_000 })).code, 0);
  await waitHttp(`${base}/cgi-bin/get`, 120_000);
  let last = 0;
  for (let i = 0; i < 10; i++) last = await bumpCounter(base);
  const before = json<PairStatus>(await lockstep(['status', '-c', cfg, '--json']));
  const primary = before.nodes.find((n) => n.role === 'primary')!;
  process.kill(primary.pid!, 'SIGKILL');
  const r = await lockstep(['failover', '-c', cfg, '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(json<{ from: string; to: string; procedure: string }>(r), { ...json<{ ms: number }>(r), from: 'a', to: 'b', procedure: 'secondary failover' });
  assert.equal(await bumpCounter(base), last + 1, 'the survivor continues from the last acknowledged value');
  const st = json<PairStatus>(await lockstep(['status', '-c', cfg, '--json']));
  assert.equal(st.protected, false);
  assert.equal(st.running, true);
  assert.deepEqual([st.lastFailover?.from, st.lastFailover?.to], ['a', 'b']);
  assert.match(st.lastFailover!.reason, /primary a not running/);
  const b = st.nodes.find((n) => n.name === 'b')!;
  assert.deepEqual([b.role, b.runState, b.colo?.mode], ['primary', 'running', 'none']);
});

test('failover to a node that is not running is refused, naming the one that can carry on', async () => {
  const r = await lockstep(['failover', '-c', cfg, '--to', 'a']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /node a is not running; only b can carry on/);
});

test('after the failover, up refuses the older disk and --adopt-newest continues from the survivor\'s', { timeout: 10 * 60_000 }, async () => {
  const last = await bumpCounter(base);
  assert.equal((await lockstep(['down', '-c', cfg])).code, 0);
  const refused = await lockstep(['up', '-c', cfg]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /the newest data of pair "fo" is in .*b\/replica\.qcow2/);
  assert.match(refused.stderr, /--adopt-newest/);
  const ok = await lockstep(['up', '-c', cfg, '--adopt-newest'], { timeoutMs: 9 * 60_000 });
  assert.equal(ok.code, 0, ok.stderr);
  await waitHttp(`${base}/cgi-bin/get`, 120_000);
  assert.equal(await bumpCounter(base), last + 1);
  assert.equal(json<PairStatus>(await lockstep(['status', '-c', cfg, '--json'])).protected, true);
});
