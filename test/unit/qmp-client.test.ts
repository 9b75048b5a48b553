import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QmpClient } from '../../src/qmp/client.js';
import { QmpCommandError, QmpConnectError, QmpDisconnectedError, QmpNegotiationError, QmpTimeoutError } from '../../src/qmp/errors.js';
import { TimeoutError } from '../../src/util/errors.js';
import { FakeQmp, type FakeCommand } from '../helpers/fake-qmp.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QemuProcess } from '../../src/qemu/process.js';
import { connectQmp } from '../../src/pair/launch.js';
import type { NodePlan } from '../../src/pair/plan.js';

test('negotiates capabilities and enables out-of-band execution when offered', async () => {
  const fake = await FakeQmp.start({ onCommand: (c, conn) => conn.reply(c, { status: 'running' }) });
  const qmp = await QmpClient.connect(fake.path);
  try {
    assert.equal(qmp.state, 'running');
    assert.equal(qmp.oobEnabled, true);
    assert.equal(qmp.greeting?.version.qemu.major, 7);
    assert.deepEqual(fake.received[0]?.arguments, { enable: ['oob'] });
    assert.deepEqual(await qmp.execute('query-status'), { status: 'running' });
  } finally {
    await qmp.close();
    await fake.stop();
  }
});

test('does not ask for oob when the server does not offer it, and refuses oob commands then', async () => {
  const fake = await FakeQmp.start({ capabilities: [], onCommand: (c, conn) => conn.reply(c, {}) });
  const qmp = await QmpClient.connect(fake.path);
  try {
    assert.equal(qmp.oobEnabled, false);
    assert.equal(fake.received[0]?.arguments, undefined);
    await assert.rejects(qmp.execute('yank', { instances: [] }, { oob: true }), /out-of-band/);
  } finally {
    await qmp.close();
    await fake.stop();
  }
});

test('matches concurrent commands to their replies by id, whatever the order', async () => {
  const held: Array<[FakeCommand, string]> = [];
  const fake = await FakeQmp.start({
    onCommand: (c, conn) => {
      held.push([c, c.execute!]);
      if (held.length === 3) for (const [cmd, name] of held.reverse()) conn.reply(cmd, { name });
    },
  });
  const qmp = await QmpClient.connect(fake.path);
  try {
    const [a, b, c] = await Promise.all([qmp.execute('a'), qmp.execute('b'), qmp.execute('c')]);
    assert.deepEqual([a, b, c], [{ name: 'a' }, { name: 'b' }, { name: 'c' }]);
    const ids = fake.received.slice(1).map((r) => r.id);
    assert.equal(new Set(ids).size, 3, 'every command has its own id');
  } finally {
    await qmp.close();
    await fake.stop();
  }
});

test('a QMP error becomes a QmpCommandError with its class and description', async () => {
  const fake = await FakeQmp.start({ onCommand: (c, conn) => conn.error(c, 'GenericError', "The feature 'colo' is not enabled") });
  const qmp = await QmpClient.connect(fake.path);
  try {
    const err = await qmp.execute('x-colo-lost-heartbeat').then(
      () => assert.fail('should reject'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof QmpCommandError);
    assert.equal(err.errorClass, 'GenericError');
    assert.equal(err.command, 'x-colo-lost-heartbeat');
    assert.match(err.desc, /colo/);
  } finally {
    await qmp.close();
    await fake.stop();
  }
});

test('a command without an answer times out, and the connection stays usable', async () => {
  const fake = await FakeQmp.start({
    onCommand: (c, conn) => {
      if (c.execute === 'ping') conn.reply(c, 'pong');
      // 'hang' is never answered; a late reply for it must be ignored
    },
  });
  const qmp = await QmpClient.connect(fake.path);
  try {
    const t0 = Date.now();
    await assert.rejects(qmp.execute('hang', undefined, { timeoutMs: 150 }), (e: unknown) => e instanceof QmpTimeoutError && e instanceof TimeoutError);
    assert.ok(Date.now() - t0 < 1000);
    const hung = fake.received.find((r) => r.execute === 'hang')!;
    fake.conn!.reply(hung, 'late');
    assert.equal(await qmp.execute('ping'), 'pong');
  } finally {
    await qmp.close();
    await fake.stop();
  }
});

test('a scoped listener registered before a command sees the event the command causes', async () => {
  const fake = await FakeQmp.start({
    onCommand: (c, conn) => {
      // The event arrives before the reply, as QEMU often does.
      if (c.execute === 'stop') conn.event('STOP');
      conn.event('NOISE');
      conn.reply(c, {});
    },
  });
  const qmp = await QmpClient.connect(fake.path);
  try {
    const stops = qmp.listen('STOP');
    await qmp.execute('stop');
    const ev = await stops.next(1000);
    assert.equal(ev.event, 'STOP');
    assert.ok(ev.time > 0);
    await assert.rejects(stops.next(100), TimeoutError);
    stops.close();
    const filtered = qmp.listen((e) => e.event === 'NOISE');
    await qmp.execute('anything');
    assert.equal((await filtered.next(1000)).event, 'NOISE');
    filtered.close();
  } finally {
    await qmp.close();
    await fake.stop();
  }
});

test('listener.until skips events until the predicate holds', async () => {
  const fake = await FakeQmp.start({
    onCommand: (c, conn) => {
      conn.event('JOB_STATUS_CHANGE', { status: 'created' });
      conn.event('JOB_STATUS_CHANGE', { status: 'running' });
      conn.event('JOB_STATUS_CHANGE', { status: 'ready' });
      conn.reply(c, {});
    },
  });
  const qmp = await QmpClient.connect(fake.path);
  try {
    const l = qmp.listen('JOB_STATUS_CHANGE');
    await qmp.execute('drive-mirror');
    const ev = await l.until((e) => e.data.status === 'ready', 1000);
    assert.equal(ev.data.status, 'ready');
    l.close();
  } finally {
    await qmp.close();
    await fake.stop();
  }
});

test('a dropped connection rejects pending commands and waiting listeners with QmpDisconnectedError', async () => {
  const fake = await FakeQmp.start({ onCommand: (_c, conn) => setTimeout(() => conn.close(), 20) });
  const qmp = await QmpClient.connect(fake.path);
  let disconnected = false;
  qmp.on('disconnect', () => (disconnected = true));
  const l = qmp.listen('SHUTDOWN');
  const waiting = l.next(5000);
  await assert.rejects(qmp.execute('quit'), QmpDisconnectedError);
  await assert.rejects(waiting, QmpDisconnectedError);
  assert.equal(qmp.state, 'idle');
  assert.ok(disconnected);
  await assert.rejects(qmp.execute('query-status'), QmpDisconnectedError);
  await fake.stop();
});

test('connecting to a missing socket is a QmpConnectError that says where', async () => {
  const err = await QmpClient.connect('/nonexistent/lockstep-qmp.sock', { timeoutMs: 1000 }).then(
    () => assert.fail('should reject'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof QmpConnectError);
  assert.match(err.message, /nonexistent/);
  assert.ok(err.hint);
});

test('a peer that is not QMP fails negotiation with a clear error', async () => {
  const fake = await FakeQmp.start({ raw: (s) => s.write('QEMU 7.2.22 monitor - type \'help\' for more information\r\n(qemu) ') });
  await assert.rejects(QmpClient.connect(fake.path, { timeoutMs: 1000 }), QmpNegotiationError);
  await fake.stop();
});

test('a peer that never greets times out within the connect budget', async () => {
  const fake = await FakeQmp.start({ raw: () => {} });
  const t0 = Date.now();
  await assert.rejects(QmpClient.connect(fake.path, { timeoutMs: 300 }), TimeoutError);
  assert.ok(Date.now() - t0 < 2000);
  await fake.stop();
});

test('human-monitor-command output is returned as text', async () => {
  const fake = await FakeQmp.start({
    onCommand: (c, conn) => conn.reply(c, c.execute === 'human-monitor-command' ? `ran: ${String(c.arguments?.['command-line'])}` : {}),
  });
  const qmp = await QmpClient.connect(fake.path);
  try {
    assert.equal(await qmp.hmp('info status'), 'ran: info status');
  } finally {
    await qmp.close();
    await fake.stop();
  }
});

test('oob commands are sent with exec-oob', async () => {
  const fake = await FakeQmp.start({ onCommand: (c, conn) => conn.reply(c, {}) });
  const qmp = await QmpClient.connect(fake.path);
  try {
    await qmp.execute('yank', { instances: [{ type: 'migration' }] }, { oob: true });
    const sent = fake.received.at(-1)!;
    assert.equal(sent['exec-oob'], 'yank');
    assert.equal(sent.execute, undefined);
  } finally {
    await qmp.close();
    await fake.stop();
  }
});

test('a starting QEMU whose QMP socket exists but does not listen yet (bind before listen) is connected to once it listens, not refused', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-bind-'));
  const sock = path.join(dir, 'qmp.sock');
  // Stands in for QEMU: binds (the file appears), listens only 400 ms later, then greets and takes qmp_capabilities.
  const script = [
    'import socket, sys, time, json',
    's = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); time.sleep(0.4); s.listen(1)',
    'c, _ = s.accept()',
    'c.sendall(b\'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": []}}\\r\\n\')',
    'f = c.makefile("r"); cmd = json.loads(f.readline())',
    'c.sendall((json.dumps({"return": {}, "id": cmd.get("id")}) + "\\r\\n").encode())',
    'time.sleep(5)',
  ].join('\n');
  const proc = new QemuProcess({ name: 'bind-before-listen', binary: 'python3', args: ['-c', script, sock], logFile: path.join(dir, 'log') });
  try {
    const node = { name: 'b', role: 'secondary', qmpSocket: sock } as NodePlan;
    const { qmp } = await connectQmp(proc, node, 5000);
    assert.equal(qmp.greeting?.version.qemu.major, 7);
    qmp.destroy();
  } finally {
    await proc.stop(1000);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
