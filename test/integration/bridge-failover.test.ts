/**
 * Bridge mode: the pair's VMs on taps in a lab network namespace, a client
 * on the same bridge talking to the guest directly. kill -9 the primary and
 * fail over: the survivor's tap joins the bridge, one persistent TCP
 * connection to the guest's echo service stays open, and the disk counter
 * never goes back nor skips an acknowledged value.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { lockstep, json } from '../helpers/cli.js';
import { labConfigYaml } from '../../src/lab/pair.js';
import { findFreePortRange } from '../../src/util/net.js';
import { createBridgedNetns, type BridgedNetns } from '../../src/lab/netns.js';
import { waitForSerial } from '../../src/qemu/serial.js';
import { GUEST_READY_MARKER } from '../../src/lab/guest.js';
import { NetnsClient, counterProblems } from '../../src/lab/client-driver.js';
import type { PairStatus } from '../../src/pair/status.js';

const isRoot = process.getuid?.() === 0;
let dir: string;
let cfg: string;
let ns: BridgedNetns;

before(async () => {
  if (!isRoot) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-br-'));
  ns = await createBridgedNetns({ taps: ['tap-a', 'tap-b'] });
  cfg = path.join(dir, 'pair.yaml');
  const base = await findFreePortRange(['127.0.0.1'], 6); // inside the namespace any ports do; keep them unusual
  fs.writeFileSync(
    cfg,
    labConfigYaml({
      name: 'br',
      base,
      tap: { bridge: ns.bridge, taps: { a: 'tap-a', b: 'tap-b' } },
      netns: { a: ns.name, b: ns.name },
      replication: { bufferDir: path.join(dir, 'shm') },
    }),
  );
});

after(async () => {
  if (!isRoot) return;
  NetnsClient.endAll();
  await lockstep(['down', '-c', cfg]);
  await ns?.remove();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('bridge mode: a TCP connection survives a killed primary; no acknowledged write lost', { skip: !isRoot && 'needs root for network namespaces', timeout: 10 * 60_000 }, async () => {
  const r = await lockstep(['up', '-c', cfg], { timeoutMs: 9 * 60_000 });
  assert.equal(r.code, 0, r.stderr);
  const st = json<PairStatus>(await lockstep(['status', '-c', cfg, '--json']));
  assert.equal(st.protected, true);
  const serial = path.join(dir, '.lockstep', 'br', 'a', 'serial.log');
  await waitForSerial(serial, GUEST_READY_MARKER, 120_000);

  const client = NetnsClient.start(ns.name, '10.0.2.15');
  const before = await client.until((t) => t.echoOk >= 20 && t.httpOk >= 20, 60_000, 'traffic through COLO');
  const primary = st.nodes.find((n) => n.role === 'primary')!;
  process.kill(primary.pid!, 'SIGKILL');
  const f = await lockstep(['failover', '-c', cfg, '--json']);
  assert.equal(f.code, 0, f.stderr);
  await client.until((t) => t.echoOk >= before.echoOk + 30 && t.httpOk >= before.httpOk + 30, 60_000, 'traffic on the survivor');
  const s = await client.finish();
  process.stderr.write(
    `# echo: ${s.echo.ok}/${s.echo.sent} ok, max ${s.echo.maxMs.toFixed(0)} ms, closed=${s.echo.closed}; ` +
      `http: ${s.http.ok} ok, ${s.http.errors.length} errors, max ${s.http.maxMs.toFixed(0)} ms, counts ${s.http.counts[0]}..${s.http.counts.at(-1)}\n`,
  );
  assert.deepEqual(s.echo.errors, [], 'the echo connection never failed');
  assert.equal(s.echo.closed, false, 'the echo connection stayed open');
  assert.equal(counterProblems(s.http.counts), undefined);
  assert.ok(s.http.errors.length <= 1, `at most the request in flight failed: ${JSON.stringify(s.http.errors)}`);
});
