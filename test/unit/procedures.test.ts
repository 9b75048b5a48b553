/**
 * The COLO procedures as resumable step lists: runSteps' fromStep/stepsDone
 * bookkeeping, and every step of the failover, resume and abort procedures
 * run again after its reply was lost, against a small model of QEMU 7.2's
 * state behind the fake QMP server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QmpClient } from '../../src/qmp/client.js';
import { IDS, type ColoEndpoints } from '../../src/qemu/cmdline.js';
import { runSteps, ColoStepError, parseUsernetForwards, type Step } from '../../src/colo/steps.js';
import { yankLinksToSecondary, primaryFailover, primaryFailoverSteps, secondaryFailover, secondaryFailoverSteps, PRIMARY_FAILOVER, SECONDARY_FAILOVER } from '../../src/colo/failover.js';
import { resumeReplication, abortResume, abortResumeTolerantSteps, cancelPausedMigrationStep, RESYNC_JOB, ABORT_RESUME } from '../../src/colo/resume.js';
import { FakeQmp, type FakeCommand, type FakeConn } from '../helpers/fake-qmp.js';

// ---------------------------------------------------------------------------
// runSteps

function recorder() {
  const ran: string[] = [];
  const step = (name: string, o: { fail?: () => boolean; done?: () => boolean; ms?: number } = {}): Step => ({
    name,
    timeoutMs: o.ms ?? 1000,
    run: async () => {
      ran.push(name);
      if (o.fail?.()) throw new Error(`${name} broke`);
    },
    ...(o.done ? { done: async () => o.done!() } : {}),
  });
  return { ran, step };
}

test('runSteps: a failure names the step, its index and how many are done; a retry from there runs only the rest', async () => {
  const { ran, step } = recorder();
  let broken = true;
  const steps = [step('a'), step('b'), step('c', { fail: () => broken }), step('d')];
  const progress: number[] = [];
  const seen: Array<[string, number, number]> = [];
  const err = await runSteps('proc', steps, { onProgress: (n) => progress.push(n), onStep: (n, i, t) => seen.push([n, i, t]) }).then(
    () => assert.fail('should fail'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ColoStepError);
  assert.deepEqual([err.procedure, err.step, err.stepIndex, err.stepsDone, err.total], ['proc', 'c', 2, 2, 4]);
  assert.match(err.message, /proc: step 3\/4 "c" failed: c broke/);
  assert.deepEqual(progress, [1, 2]);
  assert.deepEqual(seen, [['a', 0, 4], ['b', 1, 4], ['c', 2, 4]]);
  broken = false;
  ran.length = 0;
  const recs = await runSteps('proc', steps, { fromStep: err.stepsDone, onProgress: (n) => progress.push(n) });
  assert.deepEqual(ran, ['c', 'd']);
  assert.deepEqual(recs.map((r) => [r.name, r.index]), [['c', 2], ['d', 3]]);
  assert.deepEqual(progress, [1, 2, 3, 4]);
  assert.deepEqual(await runSteps('proc', steps, { fromStep: 4 }), [], 'all done: nothing to run');
  await assert.rejects(runSteps('proc', steps, { fromStep: 5 }), /cannot start at step 5: the procedure has 4 steps/);
  await assert.rejects(runSteps('proc', steps, { fromStep: -1 }), /cannot start at step -1/);
});

test('runSteps: a step whose effect is already there is skipped and counts as done; a failing check fails the step', async () => {
  const { ran, step } = recorder();
  const progress: number[] = [];
  const recs = await runSteps('proc', [step('a', { done: () => true }), step('b', { done: () => false })], { onProgress: (n) => progress.push(n) });
  assert.deepEqual(ran, ['b']);
  assert.deepEqual(recs.map((r) => [r.name, r.alreadyDone === true]), [['a', true], ['b', false]]);
  assert.deepEqual(progress, [1, 2]);
  const broken: Step = { name: 'x', timeoutMs: 1000, done: async () => Promise.reject(new Error('QMP gone')), run: async () => ran.push('x') };
  const err = await runSteps('proc', [broken]).catch((e: unknown) => e);
  assert.ok(err instanceof ColoStepError);
  assert.match(err.message, /could not ask QEMU whether it was done already: QMP gone/);
  assert.equal(err.stepsDone, 0);
  assert.ok(!ran.includes('x'), 'not run on a guess');
});

test('runSteps: the timeout bounds the check and the run together', async () => {
  const slow: Step = { name: 'slow', timeoutMs: 100, done: () => new Promise((r) => setTimeout(() => r(false), 70)), run: () => new Promise((r) => setTimeout(r, 70)) };
  const err = await runSteps('proc', [slow]).catch((e: unknown) => e);
  assert.ok(err instanceof ColoStepError);
  assert.match(err.message, /timed out after 100 ms/);
});

// ---------------------------------------------------------------------------
// A model of the QEMU state the procedures touch.

interface Job {
  device: string;
  type: string;
  offset: number;
  len: number;
  ready: boolean;
  status: string;
}

type Reply = { ret: unknown } | { error: string; cls?: string };

class QemuModel {
  objects = new Set<string>();
  chardevs = new Set<string>();
  nodes = new Set<string>(['disk-file']);
  /** The quorum's children: edge name -> node name. */
  quorum = new Map<string, string>([['children.0', 'disk-file']]);
  nextChild = 1;
  nbd = false;
  colo: 'primary' | 'secondary' | 'none' = 'none';
  caps = new Set<string>();
  status = 'running';
  migration: string | undefined;
  forwards: Array<{ proto: string; addr: string; port: number; guestPort: number }> = [];
  job: Job | undefined;
  /** The migration's tls-creds parameter ("" none); the arguments that name peers' credentials, as received. */
  tlsCreds = '';
  peerArgs: string[] = [];
  /** How block-job-cancel of a ready mirror ends. */
  mirrorEnd: 'completed' | 'error' | 'cancelled' = 'completed';
  /** Mutating commands received, in order ("object-del comp0", "hmp drive_del replication0", ...). */
  log: string[] = [];
  /** A mutating command whose effect takes place but whose reply is lost (answered with an error here). */
  lose: string | undefined;
  lost: string[] = [];

  static primaryInColo(): QemuModel {
    const m = new QemuModel();
    for (const o of [IDS.compare, IDS.iothread, IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut]) m.objects.add(o);
    for (const c of [IDS.mirrorChardev, IDS.compare1, IDS.compare0, IDS.compare0Client, IDS.compareOut, IDS.compareOutClient]) m.chardevs.add(c);
    m.nodes.add(IDS.replicationNode);
    m.quorum.set('children.1', IDS.replicationNode);
    m.nextChild = 2;
    m.colo = 'primary';
    m.caps.add('x-colo');
    m.migration = 'colo';
    return m;
  }

  static secondaryInColo(): QemuModel {
    const m = new QemuModel();
    for (const o of [IDS.secRedirectorIn, IDS.secRedirectorOut, IDS.rewriter]) m.objects.add(o);
    for (const c of [IDS.secChardevIn, IDS.secChardevOut]) m.chardevs.add(c);
    m.nbd = true;
    m.colo = 'secondary';
    m.caps.add('x-colo');
    m.migration = 'colo';
    return m;
  }

  /** A primary that failed over: running alone, x-colo still on, the chardevs of its start-up still there. */
  static primaryAlone(): QemuModel {
    const m = QemuModel.primaryInColo();
    for (const o of [IDS.compare, IDS.iothread, IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut]) m.objects.delete(o);
    m.nodes.delete(IDS.replicationNode);
    m.quorum.delete('children.1');
    m.nextChild = 1;
    m.colo = 'none';
    m.migration = 'completed';
    return m;
  }

  snapshot() {
    return {
      objects: [...this.objects].sort(),
      chardevs: [...this.chardevs].sort(),
      nodes: [...this.nodes].sort(),
      quorum: [...this.quorum.entries()].sort(),
      nbd: this.nbd,
      colo: this.colo,
      caps: [...this.caps].sort(),
      status: this.status,
      migration: this.migration,
      forwards: this.forwards.map((f) => `${f.proto}:${f.addr}:${f.port}-:${f.guestPort}`).sort(),
      job: this.job?.status,
    };
  }

  usernet(): string {
    const head = '  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n';
    const lines = this.forwards.map(
      (f, i) =>
        `${`  ${f.proto.toUpperCase()}[HOST_FORWARD]`.padEnd(19)} ${String(12 + i).padStart(3)} ${f.addr.padStart(15)} ${String(f.port).padStart(5)} ` +
        `${'10.0.2.15'.padStart(15)} ${String(f.guestPort).padStart(5)} ${'0'.padStart(5)} ${'0'.padStart(5)}\n`,
    );
    return `Hub -1 (${IDS.netdev}):\n${head}${lines.join('')}`;
  }

  /** The switchover into COLO: this node its primary, the VM running again. */
  private enterColo(conn: FakeConn): void {
    this.migration = 'colo';
    this.colo = 'primary';
    this.status = 'running';
    setImmediate(() => conn.event('RESUME'));
  }

  private mutation(key: string, conn: FakeConn, cmd: FakeCommand, apply: () => Reply): void {
    this.log.push(key);
    const r = apply();
    if (this.lose === key) {
      this.lose = undefined;
      this.lost.push(key);
      conn.error(cmd, 'GenericError', '(test) the reply was lost');
      return;
    }
    if ('error' in r) conn.error(cmd, r.cls ?? 'GenericError', r.error);
    else conn.reply(cmd, r.ret);
  }

  private hmp(line: string, conn: FakeConn, cmd: FakeCommand): void {
    if (line === 'info usernet') return conn.reply(cmd, this.usernet());
    const [verb, ...rest] = line.split(' ');
    this.mutation(`hmp ${verb} ${verb === 'drive_add' ? IDS.replicationNode : rest.join(' ')}`, conn, cmd, () => {
      switch (verb) {
        case 'drive_del': {
          const id = rest[0]!;
          if (!this.nodes.has(id)) return { ret: `Device '${id}' not found\r\n` };
          if ([...this.quorum.values()].includes(id)) return { ret: `Node '${id}' is busy: node is used as child of quorum\r\n` };
          this.nodes.delete(id);
          return { ret: '' };
        }
        case 'drive_add': {
          const node = /node-name=([^,\s]+)/.exec(line)?.[1] ?? '';
          if (this.nodes.has(node)) return { ret: `Duplicate nodes with node-name='${node}'\r\n` };
          this.nodes.add(node);
          this.peerArgs.push(line);
          return { ret: '' };
        }
        case 'hostfwd_add': {
          const m = /^(tcp|udp):([\d.]*):(\d+)-:(\d+)$/.exec(rest[1] ?? '');
          if (rest[0] !== IDS.netdev || !m) return { ret: 'invalid\r\n' };
          const f = { proto: m[1]!, addr: m[2] || '*', port: Number(m[3]), guestPort: Number(m[4]) };
          if (this.forwards.some((x) => x.proto === f.proto && x.port === f.port)) return { ret: `could not set up host forwarding rule '${rest[1]}'\r\n` };
          this.forwards.push(f);
          return { ret: '' };
        }
        default:
          return { ret: `unknown command: '${verb}'\r\n` };
      }
    });
  }

  handle(cmd: FakeCommand, conn: FakeConn): void {
    const a = (cmd.arguments ?? {}) as Record<string, unknown>;
    const name = cmd.execute ?? cmd['exec-oob'];
    switch (name) {
      case 'qom-list':
        return conn.reply(cmd, [...this.objects].map((o) => ({ name: o, type: 'child<object>' })));
      case 'query-chardev':
        return conn.reply(cmd, [...this.chardevs].map((c) => ({ label: c, filename: 'socket', 'frontend-open': true })));
      case 'query-named-block-nodes':
        return conn.reply(cmd, [...this.nodes].map((n) => ({ 'node-name': n })));
      case 'x-debug-query-block-graph': {
        const ids = new Map<string, number>([...this.nodes].map((n, i) => [n, 10 + i]));
        return conn.reply(cmd, {
          nodes: [{ id: 1, type: 'block-backend', name: IDS.disk }, { id: 2, type: 'block-driver', name: '#block123' }, ...[...ids].map(([n, id]) => ({ id, type: 'block-driver', name: n }))],
          edges: [{ parent: 1, child: 2, name: 'root', perm: [], 'shared-perm': [] }, ...[...this.quorum].map(([e, n]) => ({ parent: 2, child: ids.get(n)!, name: e, perm: [], 'shared-perm': [] }))],
        });
      }
      case 'query-migrate-parameters':
        return conn.reply(cmd, { 'tls-creds': this.tlsCreds });
      case 'migrate-set-parameters':
        return this.mutation('migrate-set-parameters', conn, cmd, () => ((this.tlsCreds = String(a['tls-creds'] ?? this.tlsCreds)), { ret: {} }));
      case 'query-migrate-capabilities':
        return conn.reply(cmd, ['x-colo', 'events', 'pause-before-switchover'].map((c) => ({ capability: c, state: this.caps.has(c) })));
      case 'query-migrate':
        return conn.reply(cmd, this.migration ? { status: this.migration } : {});
      case 'query-colo-status':
        return conn.reply(cmd, { mode: this.colo, 'last-mode': 'none', reason: 'none' });
      case 'query-status':
        return conn.reply(cmd, { status: this.status, running: this.status === 'running' });
      case 'query-block-jobs':
        return conn.reply(cmd, this.job ? [this.job] : []);
      case 'query-yank':
        return conn.reply(cmd, [{ type: 'migration' }, ...[...this.chardevs].map((id) => ({ type: 'chardev', id }))]);
      case 'yank':
        return conn.reply(cmd, {});
      case 'human-monitor-command':
        return this.hmp(String(a['command-line']), conn, cmd);
      case 'object-del':
        return this.mutation(`object-del ${a.id}`, conn, cmd, () => (this.objects.delete(String(a.id)) ? { ret: {} } : { error: `object '${a.id}' not found` }));
      case 'object-add':
        return this.mutation(`object-add ${a.id}`, conn, cmd, () => {
          if (this.objects.has(String(a.id))) return { error: `attempt to add duplicate property '${a.id}' to object (type 'container')` };
          this.objects.add(String(a.id));
          return { ret: {} };
        });
      case 'chardev-remove':
        return this.mutation(`chardev-remove ${a.id}`, conn, cmd, () => (this.chardevs.delete(String(a.id)) ? { ret: {} } : { error: `Chardev '${a.id}' not found` }));
      case 'chardev-add':
        return this.mutation(`chardev-add ${a.id}`, conn, cmd, () => {
          if (this.chardevs.has(String(a.id))) return { error: `Chardev with id '${a.id}' already exists` };
          this.chardevs.add(String(a.id));
          return { ret: {} };
        });
      case 'nbd-server-stop':
        return this.mutation('nbd-server-stop', conn, cmd, () => (this.nbd ? ((this.nbd = false), { ret: {} }) : { error: 'NBD server not running' }));
      case 'x-colo-lost-heartbeat':
        return this.mutation('x-colo-lost-heartbeat', conn, cmd, () => {
          if (this.colo === 'none') return { error: "The feature 'colo' is not enabled" };
          this.colo = 'none';
          this.migration = 'completed';
          return { ret: {} };
        });
      case 'x-blockdev-change':
        return this.mutation(`x-blockdev-change ${a.child ? 'remove' : 'attach'}`, conn, cmd, () => {
          if (a.child) {
            if (!this.quorum.delete(String(a.child))) return { error: `Node '${a.parent}' does not have child '${a.child}'` };
            this.nextChild--;
            return { ret: {} };
          }
          if (!this.nodes.has(String(a.node))) return { error: `Node '${a.node}' not found` };
          this.quorum.set(`children.${this.nextChild++}`, String(a.node));
          return { ret: {} };
        });
      case 'migrate-set-capabilities':
        return this.mutation('migrate-set-capabilities', conn, cmd, () => {
          if (this.migration === 'active' || this.migration === 'pre-switchover' || this.migration === 'colo') return { error: "There's a migration process in progress" };
          for (const c of a.capabilities as Array<{ capability: string; state: boolean }>) {
            if (c.state) this.caps.add(c.capability);
            else this.caps.delete(c.capability);
          }
          return { ret: {} };
        });
      case 'migrate':
        return this.mutation('migrate', conn, cmd, () => {
          // As QEMU's migration_tls_get_creds: an outgoing migration with the listening side's credentials fails.
          if (this.tlsCreds === IDS.tlsServer) return { error: 'Expected TLS credentials for a client endpoint' };
          this.peerArgs.push(`migrate tls-creds=${this.tlsCreds}`);
          if (['active', 'pre-switchover'].includes(this.migration ?? '') || (this.migration === 'colo' && this.colo === 'primary')) return { error: "There's a migration process in progress" };
          if (this.caps.has('pause-before-switchover')) {
            // As migration.c: the RAM goes over, then the VM is stopped for the last pass and the migration pauses.
            this.migration = 'pre-switchover';
            if (this.status === 'running') {
              this.status = 'finish-migrate';
              setImmediate(() => conn.event('STOP'));
            }
            return { ret: {} };
          }
          this.enterColo(conn);
          return { ret: {} };
        });
      case 'migrate-continue':
        return this.mutation('migrate-continue', conn, cmd, () => {
          if (this.migration !== 'pre-switchover' || a.state !== 'pre-switchover') return { error: `Migration not in expected state: ${this.migration}` };
          this.enterColo(conn);
          return { ret: {} };
        });
      case 'migrate_cancel':
        return this.mutation('migrate_cancel', conn, cmd, () => {
          // A migration paused before its switchover is let go and cancelled; the VM it stopped runs again (migration.c).
          if (this.migration === 'pre-switchover') {
            this.status = 'running';
            setImmediate(() => conn.event('RESUME'));
          }
          this.migration = 'cancelled';
          return { ret: {} };
        });
      case 'stop':
        return this.mutation('stop', conn, cmd, () => {
          // As vm_stop: a VM that does not run keeps its run state (a migration's last pass: finish-migrate).
          if (this.status !== 'running') return { ret: {} };
          setImmediate(() => conn.event('STOP'));
          this.status = 'paused';
          return { ret: {} };
        });
      case 'cont':
        return this.mutation('cont', conn, cmd, () => {
          if (this.status === 'finish-migrate') return { error: 'Migration is not finalized yet' };
          this.status = 'running';
          return { ret: {} };
        });
      case 'drive-mirror':
        return this.mutation('drive-mirror', conn, cmd, () => {
          if (this.job) return { error: `Job ID '${a['job-id']}' already in use` };
          this.peerArgs.push(`drive-mirror ${String(a.target)}`);
          this.job = { device: String(a['job-id']), type: 'mirror', offset: 4096, len: 4096, ready: true, status: 'ready' };
          setImmediate(() => conn.event('BLOCK_JOB_READY', { type: 'mirror', device: RESYNC_JOB, len: 4096, offset: 4096, speed: 0 }));
          return { ret: {} };
        });
      case 'block-job-cancel':
        return this.mutation('block-job-cancel', conn, cmd, () => {
          const j = this.job;
          if (!j) return { error: `Block job '${a.device}' not found`, cls: 'DeviceNotActive' };
          this.job = undefined;
          const base = { type: 'mirror', device: j.device, len: j.len, speed: 0 };
          setImmediate(() => {
            if (a.force || this.mirrorEnd === 'cancelled') conn.event('BLOCK_JOB_CANCELLED', { ...base, offset: j.offset - 512 });
            else if (this.mirrorEnd === 'error') conn.event('BLOCK_JOB_COMPLETED', { ...base, offset: j.offset - 512, error: 'Input/output error' });
            else conn.event('BLOCK_JOB_COMPLETED', { ...base, offset: j.offset });
          });
          return { ret: {} };
        });
      default:
        return conn.error(cmd, 'CommandNotFound', `The command ${name} has not been found`);
    }
  }
}

async function withModel<T>(m: QemuModel, fn: (qmp: QmpClient) => Promise<T>): Promise<T> {
  const fake = await FakeQmp.start({ onCommand: (c, conn) => m.handle(c, conn) });
  const qmp = await QmpClient.connect(fake.path);
  try {
    return await fn(qmp);
  } finally {
    qmp.destroy();
    await fake.stop();
  }
}

const endpoints: ColoEndpoints = {
  primaryHost: '10.0.0.2',
  secondaryHost: '10.0.0.1',
  primaryLocal: '127.0.0.1',
  comparePrimaryPort: 9001,
  mirrorPort: 9003,
  compareSecondaryPort: 9004,
  compareOutPort: 9005,
  migrationPort: 9998,
  nbdPort: 9999,
  reconnectMs: false,
  compareTimeoutMs: 3000,
};
const forwards = [{ proto: 'tcp' as const, hostAddr: '127.0.0.1', hostPort: 8080, guestPort: 80 }];

/** Steps that repeat their command on a retry and take QEMU's "already" error as done. */
const REPEATED = new Set(['nbd-server-stop', 'x-colo-lost-heartbeat']);

/**
 * For every step k of a procedure that sends one command per step: a fresh
 * model, the procedure runs until step k's command takes effect but its
 * reply is lost; the retry from stepsDone must finish without sending that
 * command again (unless it is one of REPEATED), and leave QEMU exactly as an
 * undisturbed run does.
 */
async function everyStepLost(procedure: string, fresh: () => QemuModel, run: (qmp: QmpClient, fromStep?: number) => Promise<unknown>): Promise<void> {
  const clean = fresh();
  await withModel(clean, (qmp) => run(qmp));
  const want = clean.snapshot();
  for (const [k, key] of clean.log.entries()) {
    const m = fresh();
    m.lose = key;
    await withModel(m, async (qmp) => {
      const err = await run(qmp).then(
        () => assert.fail(`${procedure}: the lost reply of ${key} should fail step ${k}`),
        (e: unknown) => e,
      );
      assert.ok(err instanceof ColoStepError, String(err));
      assert.equal(err.stepsDone, k, `${procedure}: ${key} is step ${k}`);
      await run(qmp, err.stepsDone);
    });
    assert.deepEqual(m.lost, [key]);
    if (!REPEATED.has(key)) assert.equal(m.log.filter((l) => l === key).length, 1, `${procedure}: the retry did not send ${key} again`);
    assert.deepEqual(m.snapshot(), want, `${procedure}: after losing the reply of ${key} and retrying, QEMU is as after a clean run`);
  }
}

test('primary failover: every step may have its reply lost; the retry from stepsDone finishes the procedure', async () => {
  const clean = QemuModel.primaryInColo();
  await withModel(clean, (qmp) => primaryFailover(qmp));
  assert.deepEqual(clean.log, [
    'x-blockdev-change remove',
    `hmp drive_del ${IDS.replicationNode}`,
    ...[IDS.compare, IDS.iothread, IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut].map((id) => `object-del ${id}`),
    'x-colo-lost-heartbeat',
  ]);
  const s = clean.snapshot();
  assert.deepEqual([s.objects, s.nodes, s.quorum, s.colo], [[], ['disk-file'], [['children.0', 'disk-file']], 'none']);
  await everyStepLost(PRIMARY_FAILOVER, QemuModel.primaryInColo, (qmp, fromStep) => primaryFailover(qmp, undefined, { fromStep }));
});

test('secondary failover (with forwards and the chardevs of a future primary): every step may have its reply lost', async () => {
  const o = { forwards, prepareAsPrimary: endpoints };
  const clean = QemuModel.secondaryInColo();
  const recs = await withModel(clean, (qmp) => secondaryFailover(qmp, o));
  const s = clean.snapshot();
  assert.deepEqual(s.objects, [IDS.rewriter]);
  assert.deepEqual(s.chardevs, [IDS.compare0, IDS.compare0Client, IDS.compare1, IDS.compareOut, IDS.compareOutClient, IDS.mirrorChardev].sort());
  assert.deepEqual(s.forwards, ['tcp:127.0.0.1:8080-:80']);
  assert.equal(s.nbd, false);
  assert.equal(recs.length, clean.log.length, 'one command per step');
  assert.equal(recs.length, 13);
  await everyStepLost(SECONDARY_FAILOVER, QemuModel.secondaryInColo, (qmp, fromStep) => secondaryFailover(qmp, { ...o, fromStep }));
});

test('without the done checks, a retry after a lost reply fails (what the checks are for)', async () => {
  for (const lose of ['object-del m0', 'x-blockdev-change remove', `hmp drive_del ${IDS.replicationNode}`]) {
    const m = QemuModel.primaryInColo();
    m.lose = lose;
    await withModel(m, async (qmp) => {
      const steps = primaryFailoverSteps(qmp).map(({ done: _done, ...s }) => s);
      const err = await runSteps(PRIMARY_FAILOVER, steps).catch((e: unknown) => e);
      assert.ok(err instanceof ColoStepError);
      if (lose === 'x-blockdev-change remove') {
        // This one tolerates QEMU's "does not have child" by itself.
        await runSteps(PRIMARY_FAILOVER, steps, { fromStep: err.stepsDone });
      } else {
        await assert.rejects(runSteps(PRIMARY_FAILOVER, steps, { fromStep: err.stepsDone }), /not found/);
      }
    });
  }
  const m = QemuModel.secondaryInColo();
  m.lose = 'hmp hostfwd_add hn0 tcp:127.0.0.1:8080-:80';
  await withModel(m, async (qmp) => {
    const steps = secondaryFailoverSteps(qmp, { forwards }).map(({ done: _done, ...s }) => s);
    const err = (await runSteps(SECONDARY_FAILOVER, steps).catch((e: unknown) => e)) as ColoStepError;
    await assert.rejects(runSteps(SECONDARY_FAILOVER, steps, { fromStep: err.stepsDone }), /could not set up host forwarding rule/);
  });
});

test('nbd-server-stop and x-colo-lost-heartbeat on a node that did them already', async () => {
  const m = QemuModel.secondaryInColo();
  m.nbd = false;
  m.colo = 'none';
  await withModel(m, (qmp) => secondaryFailover(qmp));
  assert.deepEqual(m.log.slice(0, 2), ['nbd-server-stop', 'x-colo-lost-heartbeat'], 'sent, and their "already" errors taken as done');
});

test('info usernet: forwards are read from the netdev\'s own section in libslirp\'s table', () => {
  const text =
    'Hub -1 (other):\n' +
    '  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n' +
    '  TCP[HOST_FORWARD]   11       127.0.0.1  8080       10.0.2.15    81     0     0\n' +
    'Hub -1 (hn0):\n' +
    '  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n' +
    '  TCP[ESTABLISHED]    25       10.0.2.15    80        10.0.2.2 51234     0     0\n' +
    '  TCP[HOST_FORWARD]   12       127.0.0.1  8080       10.0.2.15    80     0     0\n' +
    '  UDP[HOST_FORWARD]   13               *  5353       10.0.2.15    53     0     0\n' +
    '  UDP[236 sec]        14       10.0.2.15   123         1.2.3.4   123     0     0\n';
  assert.deepEqual(parseUsernetForwards(text, 'hn0'), [
    { proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 8080, guestAddr: '10.0.2.15', guestPort: 80 },
    { proto: 'udp', hostAddr: '*', hostPort: 5353, guestAddr: '10.0.2.15', guestPort: 53 },
  ]);
  assert.equal(parseUsernetForwards('some other format', 'hn0'), undefined, 'unknown format: nothing can be concluded');
  assert.deepEqual(parseUsernetForwards('Hub 0 (hn0):\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n', 'hn0'), []);
});

// ---------------------------------------------------------------------------
// Resume replication and taking it back

const resumeOpts = { mirrorTimeoutMs: 5000, mirrorStallMs: 2000, migrationTimeoutMs: 5000 };
const target = { host: endpoints.secondaryHost, nbdPort: endpoints.nbdPort, migrationPort: endpoints.migrationPort, tls: undefined };

test('resume replication: runs through to COLO; a lost reply of any step after the mirror is retried safely', async () => {
  const clean = QemuModel.primaryAlone();
  const r = await withModel(clean, (qmp) => resumeReplication(qmp, endpoints, target, resumeOpts));
  assert.equal(r.steps.length, 13);
  const s = clean.snapshot();
  assert.deepEqual([s.colo, s.migration, s.status, s.job], ['primary', 'colo', 'running', undefined]);
  assert.deepEqual(s.quorum, [['children.0', 'disk-file'], ['children.1', IDS.replicationNode]]);
  assert.ok(r.steps.find((x) => x.name === 'migrate-set-capabilities x-colo')?.alreadyDone, 'x-colo stayed on after the failover');
  // drive_add, x-blockdev-change attach, the five object-adds, migrate: each reply lost in turn.
  for (const lose of ['hmp drive_add replication0', 'x-blockdev-change attach', ...['m0', 'redire0', 'redire1', 'iothread1', 'comp0'].map((id) => `object-add ${id}`), 'migrate']) {
    const m = QemuModel.primaryAlone();
    m.lose = lose;
    await withModel(m, async (qmp) => {
      const err = await resumeReplication(qmp, endpoints, target, resumeOpts).catch((e: unknown) => e);
      assert.ok(err instanceof ColoStepError, `${lose}: ${String(err)}`);
      await resumeReplication(qmp, endpoints, target, { ...resumeOpts, fromStep: err.stepsDone });
    });
    assert.equal(m.log.filter((l) => l === lose).length, 1, `${lose} was not sent again`);
    assert.deepEqual(m.snapshot(), s, `${lose}: the same end state (in particular one replication child, not two)`);
  }
});

test('resume replication with TLS: the mirror, the replication child and the migration name the client credentials, also on a node whose migration had the server\'s', async () => {
  const m = QemuModel.primaryAlone();
  m.tlsCreds = IDS.tlsServer; // it was a secondary: its incoming migration had the listening side's credentials
  const tls = { dir: '/var/lib/lockstep/vms/web/tls' };
  const r = await withModel(m, (qmp) => resumeReplication(qmp, { ...endpoints, tls }, { ...target, tls }, resumeOpts));
  assert.equal(r.steps.length, 14, 'one step more: the migration\'s credentials');
  assert.equal(m.snapshot().colo, 'primary');
  const [mirror, driveAdd, migrate] = m.peerArgs;
  const t = JSON.parse(mirror!.slice('drive-mirror json:'.length)) as { file: Record<string, unknown> };
  assert.deepEqual(t.file, { driver: 'nbd', server: { type: 'inet', host: endpoints.secondaryHost, port: String(endpoints.nbdPort) }, export: IDS.secondaryParent, 'tls-creds': IDS.tlsClient });
  assert.match(driveAdd!, new RegExp(`file\\.tls-creds=${IDS.tlsClient},`));
  assert.equal(migrate, `migrate tls-creds=${IDS.tlsClient}`);
});

test('resume replication: a lost drive-mirror reply is followed by waiting for that job, not by a second mirror', async () => {
  const m = QemuModel.primaryAlone();
  m.lose = 'drive-mirror';
  await withModel(m, async (qmp) => {
    const err = (await resumeReplication(qmp, endpoints, target, resumeOpts).catch((e: unknown) => e)) as ColoStepError;
    assert.equal(err.stepsDone, 0);
    await resumeReplication(qmp, endpoints, target, { ...resumeOpts, fromStep: 0 });
  });
  assert.equal(m.log.filter((l) => l === 'drive-mirror').length, 1);
});

/** The block-job-cancel step as it was: any end event of the job was taken as success. */
async function oldCancelStep(qmp: QmpClient): Promise<void> {
  const done = qmp.listen((ev) => ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'].includes(ev.event) && (ev.data as { device?: string } | undefined)?.device === RESYNC_JOB);
  try {
    await qmp.execute('block-job-cancel', { device: RESYNC_JOB });
    await done.next(5000, 'the mirror job to end');
  } finally {
    done.close();
  }
}

test('live resume replication: the RAM goes over while the VM runs; the mirror ends, the replication child and the proxy come while QEMU is paused before its switchover; the VM stopped only from its last pass to COLO', async () => {
  const m = QemuModel.primaryAlone();
  const r = await withModel(m, (qmp) => resumeReplication(qmp, endpoints, target, { ...resumeOpts, live: true }));
  assert.equal(r.live, true);
  const s = m.snapshot();
  assert.deepEqual([s.colo, s.migration, s.status, s.job], ['primary', 'colo', 'running', undefined]);
  assert.deepEqual(s.quorum, [['children.0', 'disk-file'], ['children.1', IDS.replicationNode]]);
  // The order that keeps the new secondary exact: the migration starts with the mirror running, nothing of the
  // replication or the proxy exists before the pause, and the switchover comes last.
  const at = (k: string) => m.log.indexOf(k);
  assert.ok(at('drive-mirror') < at('migrate'), 'the mirror runs during the migration');
  assert.ok(at('migrate') < at('block-job-cancel'), 'the mirror ends only at the pause');
  assert.ok(at('hmp drive_add replication0') < at('migrate') && at('object-add comp0') < at('migrate'), 'what redirects nothing is made while the VM runs');
  assert.ok(at('block-job-cancel') < at('x-blockdev-change attach'), 'the replication child is attached only once the mirror ended, at the pause');
  assert.ok(at('block-job-cancel') < at('object-add m0') && at('object-add redire1') < at('migrate-continue'), 'the filters come at the pause, before the switchover into COLO');
  assert.ok(!m.log.includes('stop'), 'lockstep never stops the VM itself: QEMU does, for the last pass');
  assert.ok(r.stoppedMs >= 0 && r.stoppedMs < 1000, `stopped ${r.stoppedMs} ms, from QEMU's STOP to its RESUME`);
  // Each reply after the mirror lost in turn: retried from where it stopped, to the same end.
  for (const lose of ['hmp drive_add replication0', 'object-add comp0', 'migrate-set-capabilities', 'migrate', 'block-job-cancel', 'x-blockdev-change attach', 'object-add m0', 'migrate-continue']) {
    const n = QemuModel.primaryAlone();
    n.lose = lose;
    await withModel(n, async (qmp) => {
      const err = await resumeReplication(qmp, endpoints, target, { ...resumeOpts, live: true }).catch((e: unknown) => e);
      assert.ok(err instanceof ColoStepError, `${lose}: ${String(err)}`);
      if (lose === 'block-job-cancel') {
        // Its outcome unknown once the job is gone: the retry fails, and the resume is taken back (below).
        await assert.rejects(resumeReplication(qmp, endpoints, target, { ...resumeOpts, live: true, fromStep: err.stepsDone }), /mirror job is gone/);
        await abortResume(qmp);
        assert.deepEqual([n.status, n.migration], ['running', 'cancelled'], 'taken back from the pause: the migration cancelled, the VM running');
        return;
      }
      await resumeReplication(qmp, endpoints, target, { ...resumeOpts, live: true, fromStep: err.stepsDone });
    });
    if (lose !== 'block-job-cancel') assert.deepEqual(n.snapshot(), { ...s, caps: n.snapshot().caps }, `${lose}: the same end state`);
  }
});

test('live resume taken back while paused before its switchover: the migration cancelled, the VM running, its capabilities off', async () => {
  const m = QemuModel.primaryAlone();
  m.lose = 'object-add m0';
  await withModel(m, async (qmp) => {
    await assert.rejects(resumeReplication(qmp, endpoints, target, { ...resumeOpts, live: true }), ColoStepError);
    assert.deepEqual([m.migration, m.status], ['pre-switchover', 'finish-migrate']);
    const undone = await abortResume(qmp);
    assert.ok(undone.includes('migrate_cancel') && undone.includes('x-colo off'), undone.join(', '));
  });
  const s = m.snapshot();
  assert.deepEqual([s.objects, s.quorum, s.status, s.caps], [[], [['children.0', 'disk-file']], 'running', []]);
});

test('live resume taken back at its pause where the VM may not run: the migration is left paused, the VM stopped in it; cancelled before the VM may run again, QEMU runs it', async () => {
  const m = QemuModel.primaryAlone();
  m.lose = 'object-add m0';
  await withModel(m, async (qmp) => {
    await assert.rejects(resumeReplication(qmp, endpoints, target, { ...resumeOpts, live: true }), ColoStepError);
    const undone: string[] = [];
    const failures: string[] = [];
    await runSteps(ABORT_RESUME, abortResumeTolerantSteps(qmp, undone, (step) => failures.push(step), { cont: false }));
    assert.deepEqual(failures, []);
    // migrate_cancel would let QEMU run the VM again (it ran before the last pass): not done, nor the capabilities.
    assert.ok(!undone.includes('migrate_cancel') && !undone.includes('x-colo off'), undone.join(', '));
    assert.deepEqual([m.migration, m.status, m.objects.size, m.quorum.size], ['pre-switchover', 'finish-migrate', 0, 1]);
    // Until the VM may run again (unfence): the migration cancelled, QEMU runs the VM; then cont is harmless.
    await runSteps('unfence', [cancelPausedMigrationStep(qmp)]);
    assert.deepEqual([m.migration, m.status], ['cancelled', 'running']);
    const again = await runSteps('unfence', [cancelPausedMigrationStep(qmp)]);
    assert.equal(again[0]?.alreadyDone, true, 'no migration waits: skipped');
    // The rest of the take-back now goes through.
    assert.ok((await abortResume(qmp)).includes('x-colo off'));
  });
  assert.deepEqual(m.snapshot().caps, []);
});

test('live resume: the switchover waits while the VM may not run alone (a failed switchover would let QEMU run it again): the step fails, the VM stays stopped in the pause', async () => {
  const m = QemuModel.primaryAlone();
  let may = false;
  await withModel(m, async (qmp) => {
    const err = await resumeReplication(qmp, endpoints, target, { ...resumeOpts, live: true, mayRunAlone: () => may }).catch((e: unknown) => e);
    assert.ok(err instanceof ColoStepError, String(err));
    assert.equal(err.step, 'migrate-continue pre-switchover: the switchover into COLO');
    assert.match(err.message, /may not run alone/);
    assert.ok(!m.log.includes('migrate-continue'), 'nothing sent');
    assert.deepEqual([m.migration, m.status], ['pre-switchover', 'finish-migrate']);
    // Once it may (the lease ours again), a retry from there goes on into COLO.
    may = true;
    await resumeReplication(qmp, endpoints, target, { ...resumeOpts, live: true, mayRunAlone: () => may, fromStep: err.stepsDone });
  });
  assert.deepEqual([m.colo, m.migration, m.status], ['primary', 'colo', 'running']);
});

test('resume replication (documented order): a lost stop reply is retried, stopping the stopped VM again, without waiting for a STOP that does not come', async () => {
  const m = QemuModel.primaryAlone();
  m.lose = 'stop';
  await withModel(m, async (qmp) => {
    const err = await resumeReplication(qmp, endpoints, target, resumeOpts).catch((e: unknown) => e);
    assert.ok(err instanceof ColoStepError && err.step === 'stop', String(err));
    assert.equal(m.status, 'paused');
    const r = await resumeReplication(qmp, endpoints, target, { ...resumeOpts, fromStep: err.stepsDone });
    assert.equal(r.live, false);
    assert.equal(r.stoppedMs, 0, 'the STOP came before this attempt listened: not timed');
  });
  assert.deepEqual([m.colo, m.migration, m.status], ['primary', 'colo', 'running']);
});

test('resume replication: a migration that ends instead of entering COLO fails the last step even though the VM runs again', async () => {
  const m = QemuModel.primaryAlone();
  const orig = m.handle.bind(m);
  // The switchover fails after QEMU stopped the VM for the last pass: QEMU runs the VM again (RESUME), out of COLO.
  m.handle = (c, conn) =>
    c.execute === 'migrate-continue'
      ? ((m.migration = 'failed'), (m.status = 'running'), setImmediate(() => conn.event('RESUME')), conn.reply(c, {}))
      : orig(c, conn);
  await withModel(m, async (qmp) => {
    const err = await resumeReplication(qmp, endpoints, target, { ...resumeOpts, live: true }).catch((e: unknown) => e);
    assert.ok(err instanceof ColoStepError, String(err));
    assert.equal(err.step, 'migration to the new secondary, until the VM runs again in COLO');
    assert.match(err.message, /ended \(failed\) instead of entering COLO/);
  });
});

test('resume replication: a final mirror pass that ends with an error, or a cancelled mirror, fails the block-job-cancel step', async () => {
  for (const end of ['error', 'cancelled'] as const) {
    // The old step passed: the VM would have entered COLO with a secondary whose disk is not in sync.
    const old = QemuModel.primaryAlone();
    old.mirrorEnd = end;
    old.job = { device: RESYNC_JOB, type: 'mirror', offset: 4096, len: 4096, ready: true, status: 'ready' };
    await withModel(old, (qmp) => oldCancelStep(qmp));

    const m = QemuModel.primaryAlone();
    m.mirrorEnd = end;
    await withModel(m, async (qmp) => {
      const err = await resumeReplication(qmp, endpoints, target, resumeOpts).catch((e: unknown) => e);
      assert.ok(err instanceof ColoStepError, String(err));
      assert.equal(err.step, `block-job-cancel ${RESYNC_JOB}`);
      assert.equal(err.stepIndex, 2);
      assert.match(err.message, end === 'error' ? /final pass failed: Input\/output error .*not in sync/ : /cancelled instead of completing .*not in sync/);
      assert.ok(!m.log.some((l) => l.startsWith('hmp drive_add') || l === 'migrate'), 'nothing after the failed step ran');
      // The caller takes the resume back: the VM runs on alone.
      const undone = await abortResume(qmp);
      assert.deepEqual(undone, ['x-colo off', 'cont']);
    });
    assert.equal(m.status, 'running');
  }
});

test('resume replication: a retry from block-job-cancel after the job is gone fails, as its outcome is unknown', async () => {
  const m = QemuModel.primaryAlone();
  await withModel(m, async (qmp) => {
    await assert.rejects(resumeReplication(qmp, endpoints, target, { ...resumeOpts, fromStep: 2 }), /mirror job is gone before it was ended/);
  });
});

test('abortResume takes a half-done resume back, best effort, and is safe to run again', async () => {
  const m = QemuModel.primaryAlone();
  m.lose = 'object-add comp0';
  await withModel(m, async (qmp) => {
    await assert.rejects(resumeReplication(qmp, endpoints, target, resumeOpts), ColoStepError);
    assert.equal(m.status, 'paused');
    const progress: number[] = [];
    const undone = await abortResume(qmp, { onProgress: (n) => progress.push(n) });
    assert.deepEqual(undone, [
      ...[IDS.compare, IDS.iothread, IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut].map((id) => `object-del ${id}`),
      'x-blockdev-change remove replication child',
      `drive_del ${IDS.replicationNode}`,
      'x-colo off',
      'cont',
    ]);
    assert.equal(progress.at(-1), 12);
    assert.deepEqual(await abortResume(qmp), [], 'nothing left to undo');
  });
  const s = m.snapshot();
  assert.deepEqual([s.objects, s.nodes, s.quorum, s.status, s.caps], [[], ['disk-file'], [['children.0', 'disk-file']], 'running', []]);

  // A part that cannot be undone does not keep the VM from running again.
  const b = QemuModel.primaryAlone();
  b.status = 'paused';
  b.objects.add(IDS.compare);
  const orig = b.handle.bind(b);
  b.handle = (c, conn) => (c.execute === 'object-del' ? conn.error(c, 'GenericError', 'object is in use') : orig(c, conn));
  const failures: string[] = [];
  await withModel(b, (qmp) => abortResume(qmp, { onFailure: (step) => failures.push(step) }));
  assert.deepEqual(failures, [`object-del ${IDS.compare}`]);
  assert.equal(b.status, 'running');
});

test('a yank while the main loop is stuck finds the NBD client\'s node out of band and shuts it too (a replication cut in the middle of a checkpoint: the drain waited for its requests)', async () => {
  // A QEMU whose main loop never answers: in-band commands time out; out-of-band ones are answered by the monitor's thread.
  const sent: Array<{ cmd: string; oob: boolean; args?: unknown }> = [];
  const qmp = {
    oobEnabled: true,
    async execute<T>(cmd: string, args?: Record<string, unknown>, o: { oob?: boolean; timeoutMs?: number } = {}): Promise<T> {
      sent.push({ cmd, oob: !!o.oob, args });
      if (!o.oob) {
        await new Promise((r) => setTimeout(r, Math.min(o.timeoutMs ?? 10, 10)));
        throw new Error(`${cmd}: no answer within ${o.timeoutMs} ms`);
      }
      if (cmd === 'query-yank') return [{ type: 'migration' }, { type: 'chardev', id: IDS.mirrorChardev }, { type: 'chardev', id: IDS.compare1 }, { type: 'block-node', 'node-name': '#block412' }] as T;
      return {} as T;
    },
    hmp: async () => '',
    listen: () => () => {},
  } as unknown as Parameters<typeof yankLinksToSecondary>[0];
  const yanked = await yankLinksToSecondary(qmp);
  assert.ok(yanked.includes('block-node #block412'), `the NBD client's node is yanked (${yanked.join(', ')})`);
  assert.deepEqual(sent.filter((s) => !s.oob).map((s) => s.cmd), [], 'nothing asked in band of a stuck main loop');
  assert.deepEqual(yanked.sort(), ['block-node #block412', `chardev ${IDS.compare1}`, `chardev ${IDS.mirrorChardev}`, 'migration'].sort());
});
