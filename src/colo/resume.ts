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
 *
 * Both are step lists (resumeReplicationProcedure, abortResumeSteps) that
 * can be continued with `fromStep`. Their steps are safe to run again where
 * QEMU can tell: an existing mirror job is waited for instead of started
 * again; object-add, drive_add, x-blockdev-change, x-colo and migrate are
 * skipped when their effect is there; stop is harmless to repeat. One is
 * not: block-job-cancel. Once the mirror job is gone, nothing in QEMU says
 * whether its final pass completed, so a retry from that step fails when
 * the job is gone (the resume is then taken back and started again).
 */
import type { QmpCommands } from '../qmp/client.js';
import { IDS, peerTlsCreds, primaryProxyObjectSpecs, type ColoEndpoints } from '../qemu/cmdline.js';
import { runSteps, hasObject, capabilityOn, type Step, type StepRecord } from './steps.js';
import { attachReplicationSteps, migrateIntoColoSteps, queryColoStatus } from './startup.js';
import { LockstepError } from '../util/errors.js';
import { sleep, withTimeout } from '../util/time.js';
import { yankLinksToSecondary, objectDelStep, detachReplicationSteps } from './failover.js';

/** The bound of one QMP command of the resume (and of most of its steps). */
export const RESUME_STEP_MS = 10_000;
const STEP_MS = RESUME_STEP_MS;
export const RESYNC_JOB = 'resync';
export const RESUME_REPLICATION = 'resume replication';
export const ABORT_RESUME = 'take back a resume';

export interface ResumeTarget {
  /** The new secondary's address (its NBD export and incoming migration). */
  host: string;
  nbdPort: number;
  migrationPort: number;
  /** The pair's data-plane TLS (the endpoints' tls). */
  tls: ColoEndpoints['tls'];
}

/**
 * The mirror's target: the new secondary's NBD export, as a json: filename
 * (an nbd:// URL cannot name TLS credentials). The format (raw) is
 * drive-mirror's; the protocol node below it is the NBD client.
 */
export function mirrorTarget(t: ResumeTarget): string {
  const nbd = { driver: 'nbd', server: { type: 'inet', host: t.host, port: String(t.nbdPort) }, export: IDS.secondaryParent, ...peerTlsCreds(t, 'client') };
  return `json:${JSON.stringify({ file: nbd })}`;
}

export interface MirrorProgress {
  /** Bytes copied so far and the disk's length, as query-block-jobs reports them. */
  offset: number;
  len: number;
}

export interface ResumeOptions {
  onStep?: (name: string, index: number, total: number) => void;
  /** Called about five times a second while the disk is mirrored. */
  onMirror?: (p: MirrorProgress) => void;
  /** How long the mirror may take to reach the ready state. */
  mirrorTimeoutMs: number;
  /** How long the mirror may make no progress at all before the resync is given up. */
  mirrorStallMs: number;
  /** How long the migration into COLO may take (the VM is stopped meanwhile). */
  migrationTimeoutMs: number;
  /** Continue at this step (0-based): the stepsDone of an earlier attempt. */
  fromStep?: number;
  /** After each step that is done: how many are done now. */
  onProgress?: (stepsDone: number) => void;
}

export interface ResumeResult {
  steps: StepRecord[];
  /** ms from drive-mirror to BLOCK_JOB_READY, and the bytes the job covered (0 when that step was not run here). */
  mirrorMs: number;
  mirrorBytes: number;
  /** ms the VM was stopped: from `stop` until COLO runs it again after the migration (0 when not both were seen here). */
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

async function resyncJob(qmp: QmpCommands): Promise<BlockJob | undefined> {
  const jobs = await qmp.execute<BlockJob[]>('query-block-jobs', undefined, { timeoutMs: 5000 });
  return jobs.find((j) => j.device === RESYNC_JOB);
}

function jobReady(j: BlockJob | undefined): boolean {
  return j !== undefined && (j.ready === true || j.status === 'ready');
}

/**
 * Mirrors colo-disk0 to the target's export and waits until the job is
 * ready (in sync, mirroring new writes). A mirror job of an earlier attempt
 * (its drive-mirror reply lost) is waited for, not started again.
 */
async function mirrorUntilReady(qmp: QmpCommands, t: ResumeTarget, o: ResumeOptions): Promise<{ ms: number; bytes: number }> {
  const ready = qmp.listen((e) => e.event === 'BLOCK_JOB_READY' && (e.data as { device?: string } | undefined)?.device === RESYNC_JOB);
  const t0 = performance.now();
  try {
    if (!(await resyncJob(qmp))) {
      await qmp.execute(
        'drive-mirror',
        { device: IDS.disk, 'job-id': RESYNC_JOB, target: mirrorTarget(t), mode: 'existing', format: 'raw', sync: 'full' },
        { timeoutMs: STEP_MS },
      );
    }
    const deadline = Date.now() + o.mirrorTimeoutMs;
    let bytes = 0;
    let offset = -1;
    let progressAt = Date.now();
    for (;;) {
      const got = await ready.next(200).then(() => true, () => false);
      const job = await resyncJob(qmp);
      if (got || jobReady(job)) return { ms: performance.now() - t0, bytes: job?.len ?? bytes };
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

interface JobEndEvent {
  device?: string;
  offset?: number;
  len?: number;
  /** BLOCK_JOB_COMPLETED only, on failure (qapi/block-core.json). */
  error?: string;
}

/**
 * Ends the ready mirror with block-job-cancel, which for a ready mirror
 * completes it: the target then holds the source's data as of the stop.
 * Only BLOCK_JOB_COMPLETED without `error` means that. BLOCK_JOB_COMPLETED
 * with `error` (the final copy failed) and BLOCK_JOB_CANCELLED (the job
 * was cancelled before it was in sync) leave the target out of sync.
 */
export async function finishMirror(qmp: QmpCommands, timeoutMs: number): Promise<void> {
  const ended = qmp.listen((ev) => ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'].includes(ev.event) && (ev.data as JobEndEvent | undefined)?.device === RESYNC_JOB);
  try {
    const job = await resyncJob(qmp);
    if (!job) {
      throw new LockstepError('the mirror job is gone before it was ended: whether the new secondary\'s disk is in sync is unknown', {
        hint: 'the resume has to be taken back and started again (its mirror copies the disk again)',
      });
    }
    if (!jobReady(job)) throw new LockstepError(`the mirror job is not in sync (${job.status ?? 'not ready'}, ${job.offset} of ${job.len} bytes): ending it now would leave the new secondary's disk incomplete`);
    await qmp.execute('block-job-cancel', { device: RESYNC_JOB });
    const ev = await ended.next(timeoutMs, 'the mirror job to end');
    const d = (ev.data ?? {}) as JobEndEvent;
    if (ev.event === 'BLOCK_JOB_CANCELLED') {
      throw new LockstepError(`the mirror job was cancelled instead of completing (${d.offset ?? '?'} of ${d.len ?? '?'} bytes): the new secondary's disk is not in sync`);
    }
    if (d.error !== undefined) {
      throw new LockstepError(`the mirror's final pass failed: ${d.error} (${d.offset ?? '?'} of ${d.len ?? '?'} bytes): the new secondary's disk is not in sync`, {
        hint: 'the link to the new secondary or its disk failed; the resume is taken back and can be tried again',
      });
    }
  } finally {
    ended.close();
  }
}

/** Whether this node runs the VM in COLO as a primary again (the migration into COLO is over). */
async function runningInColo(qmp: QmpCommands): Promise<boolean> {
  if ((await queryColoStatus(qmp)).mode !== 'primary') return false;
  const mig = await qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs: 5000 });
  if (mig.status !== 'colo') return false;
  const st = await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: 5000 });
  return st.status === 'running';
}

export interface ResumeProcedure {
  steps: Step[];
  /** Whether the filters went before the filter-rewriter (this node used to be a secondary); known once they were added. */
  afterRewriter(): boolean;
  /** The figures the steps gathered so far. */
  figures(): { mirrorMs: number; mirrorBytes: number; stoppedMs: number };
  /** Releases its event listener: call once the steps are run, whatever the outcome. */
  close(): void;
}

/**
 * The steps of resume replication towards a new secondary that waits
 * (steps 2 and 3 done), for runSteps(RESUME_REPLICATION, p.steps, { fromStep }).
 * The list is the same on every call for the same target, and building it
 * asks QEMU nothing (what depends on QEMU's state is asked when a step runs).
 */
export function resumeReplicationProcedure(qmp: QmpCommands, e: ColoEndpoints, t: ResumeTarget, o: ResumeOptions): ResumeProcedure {
  // Whether this node used to be a secondary (it still has the filter-rewriter): asked once, by the first object-add.
  let afterRewriter: boolean | undefined;
  const rewriterHere = async (): Promise<boolean> => (afterRewriter ??= await hasObject(qmp, IDS.rewriter));
  const mirror = { ms: 0, bytes: 0 };
  let stoppedAt = 0;
  let stoppedMs = 0;
  // The RESUME that ends the migration: listened for from the stop on (or from whichever later step a retry starts at).
  let resumed: ReturnType<QmpCommands['listen']> | undefined;
  const listenResume = () => (resumed ??= qmp.listen('RESUME'));
  const steps: Step[] = [
    {
      name: `drive-mirror to nbd://${t.host}:${t.nbdPort}/${IDS.secondaryParent}${t.tls ? ' (TLS)' : ''}, until in sync`,
      timeoutMs: o.mirrorTimeoutMs + STEP_MS,
      done: async () => jobReady(await resyncJob(qmp)),
      run: async () => Object.assign(mirror, await mirrorUntilReady(qmp, t, o)),
    },
    {
      // Stopping a stopped VM succeeds in QEMU: safe to repeat.
      name: 'stop',
      timeoutMs: STEP_MS,
      run: async () => {
        listenResume();
        await qmp.execute('stop');
        stoppedAt = performance.now();
      },
    },
    {
      name: `block-job-cancel ${RESYNC_JOB}`,
      timeoutMs: STEP_MS,
      run: () => finishMirror(qmp, STEP_MS),
    },
    ...attachReplicationSteps(qmp, t.host, t.nbdPort, t.tls, STEP_MS),
    ...primaryProxyObjectSpecs(e).map(
      (spec): Step => ({
        name: `object-add ${spec.qomType} ${spec.props.id}`,
        timeoutMs: STEP_MS,
        done: () => hasObject(qmp, String(spec.props.id)),
        run: async () => {
          listenResume();
          const before = spec.qomType.startsWith('filter-') && (await rewriterHere());
          await qmp.execute('object-add', { 'qom-type': spec.qomType, ...spec.props, ...(before ? { insert: 'before', position: `id=${IDS.rewriter}` } : {}) });
        },
      }),
    ),
    ...migrateIntoColoSteps(qmp, t.host, t.migrationPort, t.tls, STEP_MS).map((s): Step => ({ ...s, run: () => (listenResume(), s.run()) })),
    {
      // The migration runs with the VM stopped; COLO starts the VM again once the new secondary has its state.
      name: 'migration to the new secondary, until the VM runs again in COLO',
      timeoutMs: o.migrationTimeoutMs,
      done: () => runningInColo(qmp),
      run: async () => {
        await listenResume().next(o.migrationTimeoutMs, 'the VM to run again in COLO after the migration');
        if (stoppedAt) stoppedMs = performance.now() - stoppedAt;
      },
    },
  ];
  return {
    steps,
    afterRewriter: () => afterRewriter ?? false,
    figures: () => ({ mirrorMs: mirror.ms, mirrorBytes: mirror.bytes, stoppedMs }),
    close: () => resumed?.close(),
  };
}

/** Resume replication on the node that runs the VM alone, towards a new secondary that waits (steps 2 and 3 done). */
export async function resumeReplication(qmp: QmpCommands, e: ColoEndpoints, t: ResumeTarget, o: ResumeOptions): Promise<ResumeResult> {
  const p = resumeReplicationProcedure(qmp, e, t, o);
  try {
    const steps = await runSteps(RESUME_REPLICATION, p.steps, { fromStep: o.fromStep, onStep: o.onStep, onProgress: o.onProgress });
    return { steps, ...p.figures(), afterRewriter: p.afterRewriter() };
  } finally {
    p.close();
  }
}

const MIGRATION_ENDED = ['completed', 'failed', 'cancelled', 'none'];

async function migrating(qmp: QmpCommands): Promise<boolean> {
  const mig = await qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs: 5000 });
  return mig.status !== undefined && !MIGRATION_ENDED.includes(mig.status);
}

/**
 * The steps that take a half-done resume back, each skipped when there is
 * nothing of its kind to undo (so the list is safe to run again from the
 * start): links yanked (if a mirror or migration still talks to a maybe
 * vanished secondary), the mirror job, a migration under way, the proxy
 * objects, the replication child, x-colo; and the VM let run again if the
 * resume had stopped it. Each step that undid something adds its name to
 * `undone`.
 */
export function abortResumeSteps(qmp: QmpCommands, undone: string[] = [], o: { cont?: boolean } = {}): Step[] {
  const did = (what: string) => undone.push(what);
  const cont = o.cont ?? true;
  return [
    {
      // Their I/O to a vanished secondary may never return (a cut link): shut those connections first.
      name: 'yank the links to the new secondary',
      timeoutMs: STEP_MS,
      done: async () => !(await resyncJob(qmp)) && !(await migrating(qmp)),
      run: async () => {
        const yanked = await yankLinksToSecondary(qmp);
        if (yanked.length) did(`yank ${yanked.join(', ')}`);
      },
    },
    {
      name: 'block-job-cancel',
      timeoutMs: STEP_MS,
      done: async () => !(await resyncJob(qmp)),
      run: async () => {
        await qmp.execute('block-job-cancel', { device: RESYNC_JOB, force: true });
        did('block-job-cancel');
        // The job must be gone before the replication child and a later mirror can use the same names.
        for (let i = 0; i < 50 && (await resyncJob(qmp)); i++) await sleep(100);
      },
    },
    {
      name: 'migrate_cancel',
      timeoutMs: STEP_MS,
      done: async () => !(await migrating(qmp)),
      run: async () => {
        await qmp.execute('migrate_cancel');
        did('migrate_cancel');
      },
    },
    ...[IDS.compare, IDS.iothread, IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut].map((id): Step => {
      const s = objectDelStep(qmp, id, STEP_MS);
      return { ...s, run: async () => (await s.run(), did(s.name)) };
    }),
    ...detachReplicationSteps(qmp, STEP_MS).map((s): Step => ({ ...s, run: async () => (await s.run(), did(s.name)) })),
    {
      name: 'x-colo off',
      timeoutMs: STEP_MS,
      done: async () => !(await capabilityOn(qmp, 'x-colo')),
      run: async () => {
        await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-colo', state: false }] });
        did('x-colo off');
      },
    },
    cont
      ? {
          name: 'cont',
          timeoutMs: STEP_MS,
          done: async () => (await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: 5000 })).status !== 'paused',
          run: async () => {
            await qmp.execute('cont');
            did('cont');
          },
        }
      : {
          // The caller may not let the VM run (its lease ran out): stopped, whether or not the resume had stopped it.
          name: 'stop',
          timeoutMs: STEP_MS,
          run: async () => {
            await qmp.execute('stop');
            did('stop');
          },
        },
  ];
}

export interface AbortOptions {
  /** Start at this step (0-based). The list is safe to run from the start again; this only saves the checks. */
  fromStep?: number;
  onStep?: (name: string, index: number, total: number) => void;
  onProgress?: (stepsDone: number) => void;
  /** Called for a part that could not be undone (the others are still tried). */
  onFailure?: (step: string, error: unknown) => void;
}

/**
 * Takes back whatever a failed resume did on this node, each part only if it
 * is there (abortResumeSteps). Best effort: a part that cannot be undone (or
 * not checked) does not keep the others, above all letting the VM run again,
 * from being undone; it is reported through onFailure. Returns what it undid.
 */
export async function abortResume(qmp: QmpCommands, o: AbortOptions = {}): Promise<string[]> {
  const undone: string[] = [];
  await runSteps(ABORT_RESUME, abortResumeTolerantSteps(qmp, undone, o.onFailure), { fromStep: o.fromStep, onStep: o.onStep, onProgress: o.onProgress });
  return undone;
}

/**
 * abortResumeSteps, best effort: a part that cannot be undone (or checked)
 * is reported through onFailure and does not fail the list, so the parts
 * after it (above all letting the VM run again) are still undone.
 */
export function abortResumeTolerantSteps(qmp: QmpCommands, undone: string[], onFailure?: (step: string, error: unknown) => void, o: { cont?: boolean } = {}): Step[] {
  return abortResumeSteps(qmp, undone, o).map(
    (s): Step => ({
      name: s.name,
      // The inner bounds below keep a failure from reaching runSteps; this one is only a backstop.
      timeoutMs: 2 * s.timeoutMs + 1000,
      run: async () => {
        try {
          if (s.done && (await withTimeout(s.done(), s.timeoutMs, `${ABORT_RESUME}: is "${s.name}" needed?`))) return;
          await withTimeout(s.run(), s.timeoutMs, `${ABORT_RESUME}: ${s.name}`);
        } catch (err) {
          onFailure?.(s.name, err);
        }
      },
    }),
  );
}

