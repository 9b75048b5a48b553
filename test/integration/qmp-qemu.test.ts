/**
 * The QMP client against a real QEMU: negotiation with out-of-band
 * execution, typed errors with QEMU's own classes, scoped event listeners,
 * out-of-band yank, and a disconnect when QEMU quits.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient } from '../../src/qmp/client.js';
import { QmpCommandError, QmpDisconnectedError } from '../../src/qmp/errors.js';
import { QemuProcess } from '../../src/qemu/process.js';
import { waitFor } from '../../src/util/time.js';
import { runtime } from '../helpers/lab.js';

let dir: string;
let qemu: QemuProcess;
let qmp: QmpClient;

before(async () => {
  const rt = await runtime();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-qmp-'));
  const sock = path.join(dir, 'qmp.sock');
  qemu = new QemuProcess({
    name: 'qmp-test',
    binary: rt.binary,
    args: ['-machine', 'pc', '-accel', 'tcg', '-nodefaults', '-display', 'none', ...rt.dataDirs.flatMap((d) => ['-L', d]), '-qmp', `unix:${sock},server=on,wait=off`],
    logFile: path.join(dir, 'qemu.log'),
  });
  await waitFor('QMP socket', () => fs.existsSync(sock), { timeoutMs: 10_000, intervalMs: 20 });
  qmp = await QmpClient.connect(sock);
});

after(async () => {
  qmp?.destroy();
  await qemu?.stop(1000);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('negotiates with QEMU, with out-of-band execution', async () => {
  assert.ok((qmp.greeting?.version.qemu.major ?? 0) >= 7);
  assert.equal(qmp.oobEnabled, true);
  const v = await qmp.execute<{ qemu: { major: number } }>('query-version');
  assert.equal(v.qemu.major, qmp.greeting?.version.qemu.major);
});

test('errors carry QEMU\'s class', async () => {
  await assert.rejects(qmp.execute('no-such-command'), (e: unknown) => e instanceof QmpCommandError && e.errorClass === 'CommandNotFound');
  await assert.rejects(qmp.execute('x-colo-lost-heartbeat'), (e: unknown) => e instanceof QmpCommandError && e.errorClass === 'GenericError' && /colo/i.test(e.desc));
});

test('a listener registered before stop/cont sees STOP and RESUME', async () => {
  const stops = qmp.listen('STOP');
  const resumes = qmp.listen('RESUME');
  await qmp.execute('stop');
  assert.equal((await stops.next(5000)).event, 'STOP');
  await qmp.execute('cont');
  assert.equal((await resumes.next(5000)).event, 'RESUME');
  stops.close();
  resumes.close();
});

test('yank runs out of band', async () => {
  const instances = await qmp.execute<Array<{ type: string }>>('query-yank');
  assert.ok(Array.isArray(instances));
  await qmp.execute('yank', { instances: [] }, { oob: true });
});

test('quit ends the connection: waiting callers get QmpDisconnectedError', async () => {
  const shutdown = qmp.listen('SHUTDOWN');
  const never = qmp.listen('BLOCK_JOB_READY');
  const waiting = never.next(10_000);
  await qmp.execute('quit').catch((e: unknown) => assert.ok(e instanceof QmpDisconnectedError));
  assert.equal((await shutdown.next(5000)).event, 'SHUTDOWN');
  await assert.rejects(waiting, QmpDisconnectedError);
  await qemu.wait();
  assert.equal(qmp.state, 'idle');
});
