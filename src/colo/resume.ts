/**
 * Resume replication, as in the COLO documentation ("Primary resume
 * replication", "Secondary resume replication"): on the node that carries
 * the VM alone, once a new secondary waits (started as in "Startup qemu"
 * steps 2 and 3): mirror the disk to the new secondary's NBD export until
 * it is in sync, stop the VM, end the mirror, attach the replication child,
 * add the proxy objects and migrate with x-colo.
 *
 * When this node used to be a secondary it still has the filter-rewriter
 * rew0 on its netdev; the documentation's note applies: the new filters go
 * before it ("insert": "before", "position": "id=rew0").
 *
 * abortResume() takes a half-done resume back, so that the VM runs on alone
 * and a later attempt starts from a clean state.
 */
import type { QmpClient } from '../qmp/client.js';
import { IDS, primaryProxyObjectSpecs, type ColoEndpoints } from '../qemu/cmdline.js';
import { runSteps, type StepRecord } from './steps.js';
import { attachReplicationSteps, migrateIntoColoSteps } from './startup.js';
import { LockstepError } from '../util/errors.js';
import { sleep } from '../util/time.js';
import { yankLinksToSecondary } from './failover.js';

const STEP_MS = 10_000;
export const RESYNC_JOB = 'resync';

export interface ResumeTarget {
  /** The new secondary's address (its NBD export and incoming migration). */
  host: string;
  nbdPort: number;
  migrationPort: number;
}

export interface MirrorProgress {
  /** Bytes copied so far and the disk's length, as query-block-jobs reports them. */
  offset: number;
  len: number;
}

export interface ResumeOptions {
  onStep?: (name: string) => void;
  /** Called about five times a second while the disk is mirrored. */
  onMirror?: (p: MirrorProgress) => void;
  /** How long the mirror may take to reach the ready state. */
  mirrorTimeoutMs: number;
  /** How long the mirror may make no progress at all before the resync is given up. */
  mirrorStallMs: number;
  /** How long the migration into COLO may take (the VM is stopped meanwhile). */
  migrationTimeoutMs: number;
}

export interface ResumeResult {
  steps: StepRecord[];
  /** ms from drive-mirror to BLOCK_JOB_READY, and the bytes the job covered. */
  mirrorMs: number;
  mirrorBytes: number;
  /** ms the VM was stopped: from `stop` until COLO runs it again after the migration. */
  stoppedMs: number;
  /** Whether the filters went before the filter-rewriter (this node used to be a secondary). */
  afterRewriter: boolean;
}

interface BlockJob {
  device: string;
  type: string;
  offset: number;
  len: number;
  ready?: boolean;
  status?: string;
}

async function resyncJob(qmp: QmpClient): Promise<BlockJob | undefined> {
  const jobs = await qmp.execute<BlockJob[]>('query-block-jobs', undefined, { timeoutMs: 5000 });
  return jobs.find((j) => j.device === RESYNC_JOB);
}

async function hasObject(qmp: QmpClient, id: string): Promise<boolean> {
  const list = await qmp.execute<Array<{ name: string }>>('qom-list', { path: '/objects' }, { timeoutMs: 5000 });
  return list.some((o) => o.name === id);
}

/** Mirrors colo-disk0 to the target's export and waits until the job is ready (in sync, mirroring new writes). */
async function mirrorUntilReady(qmp: QmpClient, t: ResumeTarget, o: ResumeOptions): Promise<{ ms: number; bytes: number }> {
  const ready = qmp.listen((e) => e.event === 'BLOCK_JOB_READY' && (e.data as { device?: string } | undefined)?.device === RESYNC_JOB);
  const t0 = performance.now();
  try {
    await qmp.execute(
      'drive-mirror',
      { device: IDS.disk, 'job-id': RESYNC_JOB, target: `nbd://${t.host}:${t.nbdPort}/${IDS.secondaryParent}`, mode: 'existing', format: 'raw', sync: 'full' },
      { timeoutMs: STEP_MS },
    );
    const deadline = Date.now() + o.mirrorTimeoutMs;
    let bytes = 0;
    let offset = -1;
    let progressAt = Date.now();
    for (;;) {
      const got = await ready.next(200).then(() => true, () => false);
      const job = await resyncJob(qmp);
      if (got || job?.ready) return { ms: performance.now() - t0, bytes: job?.len ?? bytes };
      if (!job) throw new LockstepError('the disk mirror ended before it was in sync (the new secondary\'s NBD export went away?)');
      bytes = job.len;
      o.onMirror?.({ offset: job.offset, len: job.len });
      if (job.offset !== offset) {
        offset = job.offset;
        progressAt = Date.now();
      } else if (Date.now() - progressAt > o.mirrorStallMs) {
        throw new LockstepError(`the disk mirror made no progress for ${Math.round(o.mirrorStallMs / 1000)} s (${job.offset} of ${job.len} bytes): the link to the new secondary is down?`);
      }
      if (Date.now() > deadline) {
        throw new LockstepError(`the disk mirror was not in sync after ${Math.round(o.mirrorTimeoutMs / 1000)} s (${job.offset} of ${job.len} bytes)`, {
          hint: 'a slow link to the new secondary, or a guest writing faster than it; raise replication.resyncTimeoutMs',
        });
      }
    }
  } finally {
    ready.close();
  }
}

/** Resume replication on the node that runs the VM alone, towards a new secondary that waits (steps 2 and 3 done). */
export async function resumeReplication(qmp: QmpClient, e: ColoEndpoints, t: ResumeTarget, o: ResumeOptions): Promise<ResumeResult> {
  const afterRewriter = await hasObject(qmp, IDS.rewriter);
  const mirror = { ms: 0, bytes: 0 };
  let stoppedAt = 0;
  let stoppedMs = 0;
  const resumed = qmp.listen('RESUME');
  try {
    const steps = await runSteps(
      'resume replication',
      [
        {
          name: `drive-mirror to nbd://${t.host}:${t.nbdPort}/${IDS.secondaryParent}, until in sync`,
          timeoutMs: o.mirrorTimeoutMs + STEP_MS,
          run: async () => Object.assign(mirror, await mirrorUntilReady(qmp, t, o)),
        },
        {
          name: 'stop',
          timeoutMs: STEP_MS,
          run: async () => {
            await qmp.execute('stop');
            stoppedAt = performance.now();
          },
        },
        {
          name: `block-job-cancel ${RESYNC_JOB}`,
          timeoutMs: STEP_MS,
          run: async () => {
            const done = qmp.listen((ev) => ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'].includes(ev.event) && (ev.data as { device?: string } | undefined)?.device === RESYNC_JOB);
            try {
              await qmp.execute('block-job-cancel', { device: RESYNC_JOB });
              // Cancelling a ready mirror completes it: the target holds the source's data as of the stop.
              await done.next(STEP_MS, 'the mirror job to end');
            } finally {
              done.close();
            }
          },
        },
        ...attachReplicationSteps(qmp, t.host, t.nbdPort, STEP_MS),
        ...primaryProxyObjectSpecs(e).map((spec) => ({
          name: `object-add ${spec.qomType} ${spec.props.id}${afterRewriter && spec.qomType.startsWith('filter-') ? ` before ${IDS.rewriter}` : ''}`,
          timeoutMs: STEP_MS,
          run: () =>
            qmp.execute('object-add', {
              'qom-type': spec.qomType,
              ...spec.props,
              ...(afterRewriter && spec.qomType.startsWith('filter-') ? { insert: 'before', position: `id=${IDS.rewriter}` } : {}),
            }),
        })),
        ...migrateIntoColoSteps(qmp, t.host, t.migrationPort, STEP_MS),
        {
          // The migration runs with the VM stopped; COLO starts the VM again once the new secondary has its state.
          name: 'migration to the new secondary, until the VM runs again in COLO',
          timeoutMs: o.migrationTimeoutMs,
          run: async () => {
            await resumed.next(o.migrationTimeoutMs, 'the VM to run again in COLO after the migration');
            stoppedMs = performance.now() - stoppedAt;
          },
        },
      ],
      o.onStep,
    );
    return { steps, mirrorMs: mirror.ms, mirrorBytes: mirror.bytes, stoppedMs, afterRewriter };
  } finally {
    resumed.close();
  }
}

/**
 * Takes back whatever a failed resume did on this node, each part only if it
 * is there: the mirror job, a migration under way, the proxy objects, the
 * replication child, the x-colo capability; and lets the VM run again if the
 * resume had stopped it. Returns what it undid.
 */
export async function abortResume(qmp: QmpClient): Promise<string[]> {
  const undone: string[] = [];
  const attempt = async (what: string, fn: () => Promise<unknown>) => {
    try {
      await fn();
      undone.push(what);
    } catch {
      // Not there: nothing to undo.
    }
  };
  const job = await resyncJob(qmp).catch(() => undefined);
  const mig = await qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs: 5000 }).catch(() => ({ status: undefined }));
  const migrating = mig.status !== undefined && !['completed', 'failed', 'cancelled', 'none'].includes(mig.status);
  if (job || migrating) {
    // Their I/O to a vanished secondary may never return (a cut link): shut those connections first.
    const yanked = await yankLinksToSecondary(qmp).catch(() => []);
    if (yanked.length) undone.push(`yank ${yanked.join(', ')}`);
  }
  if (job) {
    await attempt('block-job-cancel', () => qmp.execute('block-job-cancel', { device: RESYNC_JOB, force: true }));
    // The job must be gone before the replication child and a later mirror can use the same names.
    for (let i = 0; i < 50 && (await resyncJob(qmp).catch(() => undefined)); i++) await sleep(100);
  }
  if (migrating) await attempt('migrate_cancel', () => qmp.execute('migrate_cancel'));
  for (const id of [IDS.compare, IDS.iothread, IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut]) {
    if (await hasObject(qmp, id).catch(() => false)) await attempt(`object-del ${id}`, () => qmp.execute('object-del', { id }));
  }
  const nodes = await qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes', undefined, { timeoutMs: 5000 }).catch(() => []);
  if (nodes.some((n) => n['node-name'] === IDS.replicationNode)) {
    await attempt('x-blockdev-change remove replication child', () => qmp.execute('x-blockdev-change', { parent: IDS.disk, child: 'children.1' }));
    await attempt(`drive_del ${IDS.replicationNode}`, () => qmp.hmp(`drive_del ${IDS.replicationNode}`));
  }
  const caps = await qmp.execute<Array<{ capability: string; state: boolean }>>('query-migrate-capabilities', undefined, { timeoutMs: 5000 }).catch(() => []);
  if (caps.some((x) => x.capability === 'x-colo' && x.state)) {
    await attempt('x-colo off', () => qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-colo', state: false }] }));
  }
  const st = await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: 5000 }).catch(() => undefined);
  if (st?.status === 'paused') await attempt('cont', () => qmp.execute('cont'));
  return undone;
}
