/**
 * The demo as the README has a user run it (as root), on a machine where
 * nothing but lockstep's QEMU was ever built (a cache of its own, holding only
 * that build: no demo guest, no probe results): `lockstep demo` builds the
 * guest on the machine's own network before any lab host exists, brings up
 * the lab hosts with their daemons, protects the VM, takes the primary's host
 * down and back while a client counts, and says what the client felt (its
 * longest time without an answer, and when the first answer to a request sent
 * after the power loss came: the figures match the client's own record), that
 * the connection stayed open and no acknowledged write was lost; the lab it leaves answers
 * `lab status`, `lab run mgmt status web`, `status` of every VM, and a chaos verb from another
 * process, and `lab down` leaves nothing running.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run } from '../../src/util/exec.js';
import { packageRoot } from '../../src/util/paths.js';
import { DaemonVmLab } from '../../src/lab/daemon-vm.js';
import { roundInterruption, type ClientSummary } from '../../src/lab/client-driver.js';
import { findOwnQemu } from '../../src/qemu/builds.js';
import { runtime, endLabDir, testPassed } from '../helpers/lab.js';

const isRoot = process.getuid?.() === 0;

/** A new cache holding only lockstep's QEMU build of this machine's cache (linked): what a new machine has after its long build. */
function cacheWithQemuOnly(): string {
  const own = findOwnQemu();
  assert.ok(own, 'runtime() built and published the lab QEMU');
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-demo-cache-'));
  fs.mkdirSync(path.join(cache, 'qemu'));
  fs.symlinkSync(path.dirname(path.dirname(own.binary)), path.join(cache, 'qemu', own.key));
  return cache;
}

/** The test's own cache (cacheWithQemuOnly), for every lockstep command it runs. */
let cache = '';
const cli = (args: string[], timeoutMs = 120_000) =>
  run(process.execPath, [path.join(packageRoot(), 'bin', 'lockstep.js'), ...args], { allowFailure: true, timeoutMs, env: { ...process.env, LOCKSTEP_CACHE: cache } });

test('lockstep demo on the daemons of the lab hosts, then the lab verbs, then lab down', { skip: !isRoot && 'needs root for namespaces', timeout: 10 * 60_000 }, async (t) => {
  await runtime();
  cache = cacheWithQemuOnly();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-demo-'));
  t.after(async () => {
    // Whatever the test left (a failed assertion before lab down).
    await (await DaemonVmLab.open(dir).catch(() => undefined))?.end();
    endLabDir(dir, !testPassed(t));
    fs.rmSync(cache, { recursive: true, force: true });
  });
  const demo = await cli(['demo', '--dir', dir, '--seconds', '2', '--after', '2'], 400_000);
  assert.equal(demo.code, 0, demo.stdout + demo.stderr);
  assert.match(demo.stderr, /the demo guest is not built yet: building it/, 'the guest was built by the demo, before the lab hosts');
  assert.ok(fs.existsSync(path.join(cache, 'guest', 'current.json')), 'the demo guest is in the new cache');
  assert.match(demo.stdout, /host [ab] loses power/);
  assert.match(demo.stdout, /protected again [\d.]+ s after its daemon started/);
  assert.match(demo.stdout, /The client's TCP connection stayed open throughout/);
  assert.match(demo.stdout, /No acknowledged write was lost/);
  // The figures it closes with are the client's own: its longest time without an answer, and its first answer to a
  // request sent after the power loss (never one already on its way).
  const rec = JSON.parse(fs.readFileSync(path.join(dir, 'demo-client.json'), 'utf8')) as ClientSummary & { lostAt: number; backAt: number; endAt: number };
  const counter = roundInterruption(rec.http.answers, rec.lostAt, rec.backAt);
  const echo = roundInterruption(rec.echo.answers, rec.lostAt, rec.backAt);
  const s = (ms: number | undefined) => (ms === undefined ? 'never' : `${(ms / 1000).toFixed(2)} s`);
  assert.ok(
    demo.stdout.includes(`no answer for ${s(counter.longestGapMs)} (counter) and ${s(echo.longestGapMs)} (echo) at most;`) &&
      demo.stdout.includes(`the first answer to a request sent after it came ${s(counter.firstAfterFaultMs)} (counter) and ${s(echo.firstAfterFaultMs)} (echo) after it`),
    `the demo's figures are the client's: ${JSON.stringify({ counter, echo })}\n${demo.stdout}`,
  );
  const back = roundInterruption(rec.http.answers, rec.backAt, rec.endAt);
  assert.ok(demo.stdout.includes(`the re-protection (`) && demo.stdout.includes(`no answer for ${s(back.longestGapMs)} (counter)`), demo.stdout);
  // No answer came between the power loss and the survivor's first but one already on its way.
  assert.ok(counter.longestGapMs >= counter.firstAfterFaultMs! - 1000, JSON.stringify(counter));
  process.stderr.write(`# the demo's client, power loss: longest gap counter ${counter.longestGapMs} ms, echo ${echo.longestGapMs} ms; first answer to a request sent after it ${counter.firstAfterFaultMs} / ${echo.firstAfterFaultMs} ms; re-protection: longest gap ${back.longestGapMs} ms\n`);

  const status = await cli(['lab', 'status', '--dir', dir]);
  assert.equal(status.code, 0, status.stdout + status.stderr);
  assert.match(status.stdout, /VM "web": PROTECTED/);
  const json = await cli(['lab', 'run', 'mgmt', '--dir', dir, '--', 'status', 'web', '--json']);
  assert.equal(JSON.parse(json.stdout).protected, true);
  const every = await cli(['lab', 'run', 'mgmt', '--dir', dir, '--', 'status', '--json']);
  assert.equal(every.code, 0, every.stderr);
  assert.deepEqual(
    (JSON.parse(every.stdout) as { vms: Array<{ name: string; protected: boolean; status: Array<{ host: string }> }> }).vms.map((v) => [v.name, v.protected, v.status.map((s) => s.host).sort()]),
    [['web', true, ['a', 'b']]],
    'lockstep status without a name lists every VM of the hosts the management host trusts',
  );

  const kill = await cli(['lab', 'kill', 'secondary', '--dir', dir]);
  assert.equal(kill.code, 0, kill.stderr);
  const again = await cli(['lab', 'status', '--dir', dir]);
  assert.equal(again.code, 3, 'not protected right after the kill (status exits 3)');

  const down = await cli(['lab', 'down', '--dir', dir]);
  assert.equal(down.code, 0, down.stderr);
  assert.equal(await DaemonVmLab.open(dir), undefined, 'no lab left in its directory');
  const left = await cli(['lab', 'status', '--dir', dir]);
  assert.equal(left.code, 1);
  assert.match(left.stderr, /no lab is up/);
});
