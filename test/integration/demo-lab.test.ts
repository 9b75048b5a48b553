/**
 * The demo as the README has a user run it (as root): `lockstep demo` brings
 * up the lab hosts with their daemons, protects the VM, takes the primary's
 * host down and back while a client counts, and says that the connection
 * stayed open and no acknowledged write was lost; the lab it leaves answers
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
import { runtime, keepLogsOnly } from '../helpers/lab.js';

const isRoot = process.getuid?.() === 0;
const cli = (args: string[], timeoutMs = 120_000) => run(process.execPath, [path.join(packageRoot(), 'bin', 'lockstep.js'), ...args], { allowFailure: true, timeoutMs });

test('lockstep demo on the daemons of the lab hosts, then the lab verbs, then lab down', { skip: !isRoot && 'needs root for namespaces', timeout: 10 * 60_000 }, async (t) => {
  await runtime();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-demo-'));
  t.after(async () => {
    // Whatever the test left (a failed assertion before lab down).
    await (await DaemonVmLab.open(dir).catch(() => undefined))?.end();
    keepLogsOnly(dir);
  });
  const demo = await cli(['demo', '--dir', dir, '--seconds', '2', '--after', '2'], 400_000);
  assert.equal(demo.code, 0, demo.stdout + demo.stderr);
  assert.match(demo.stdout, /host [ab] loses power/);
  assert.match(demo.stdout, /protected again [\d.]+ s after its daemon started/);
  assert.match(demo.stdout, /The client's TCP connection stayed open throughout/);
  assert.match(demo.stdout, /No acknowledged write was lost/);

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
