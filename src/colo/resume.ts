/**
 * Resume replication, as in the COLO documentation ("Primary resume
 * replication", "Secondary resume replication"): on the node that carries
 * the VM alone, once a new secondary waits (started as in "Startup qemu"
 * steps 2 and 3): mirror the disk to the new secondary's NBD export until
 * it is in sync, stop the VM, end the mirror, attach the replication child,
 * add the proxy objects and migrate with x-colo. Where QEMU can pause before
 * its switchover into COLO (canPauseIntoColo), the RAM goes over while the
 * VM runs instead (the live order: resumeReplicationProcedure).
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
 * again; object-add, drive_add, x-blockdev-change, x-colo (with
 * pause-before-switchover), migrate and migrate-continue are skipped when
 * their effect is there; stop and migrate-set-parameters are harmless to
 * repeat; the wait for the pause before the switchover is skipped once QEMU
 * is paused there. One is not: block-job-cancel. Once the mirror job is
 * gone, nothing in QEMU says whether its final pass completed, so a retry
 * from that step fails when the job is gone (the resume is then taken back
 * and started again).
 */
import type { QmpCommands } from '../qmp/client.js';
import { IDS, peerTlsCreds, primaryProxyObjectSpecs, type ColoEndpoints } from '../qemu/cmdline.js';
import { runSteps, hasObject, capabilityOn, type Step, type StepRecord } from './steps.js';
import { attachReplicationSteps, migrateIntoColoSteps, migrationIntoColoStarted, queryColoStatus } from './startup.js';
import { LockstepError } from '../util/errors.js';
import { fixesOf } from '../qemu/fixes.js';
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
  /** How long the migration into COLO may take (the VM stopped meanwhile, unless `live`). */
  migrationTimeoutMs: number;
  /**
   * The RAM goes over while the VM runs (the live order, below): for a QEMU that can pause before its switchover into
   * COLO (canPauseIntoColo: 10.0; 7.2 with patch 0004). Otherwise the documented order: the VM stopped before the
   * mirror ends, for the whole migration.
   */
  live?: boolean;
  /**
   * Live: whether the VM may run alone now (its lease ahead, its disk's epoch known), asked before the switchover: a
   * switchover that fails lets QEMU run the VM again by itself, alone. Absent: it may.
   */
  mayRunAlone?: () => boolean;
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
  /** ms the VM was stopped: from its STOP until COLO runs it again (RESUME), by QEMU's clock (0 when not both were seen here). */
  stoppedMs: number;
  /** Whether the RAM went over while the VM ran (ResumeOptions.live). */
  live: boolean;
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
        {
          device: IDS.disk,
          'job-id': RESYNC_JOB,
          target: mirrorTarget(t),
          mode: 'existing',
          format: 'raw',
          sync: 'full',
          // copy-mode background (QEMU's default): a guest write never waits for the new secondary. write-blocking would
          // keep the mirror closer in sync, but a link that goes silent would then hold every guest write until the
          // mirror is given up (10.7 s in the lab's cut-cable test); the dirty rest is copied at the end, the VM stopped.
        },
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
  figures(): { mirrorMs: number; mirrorBytes: number; stoppedMs: number; live: boolean };
  /** Releases its event listeners: call once the steps are run, whatever the outcome. */
  close(): void;
}

/** The migration's status ("pre-switchover" while paused before its switchover). */
async function migrationStatus(qmp: QmpCommands): Promise<string | undefined> {
  return (await qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs: 5000 })).status;
}

const PRE_SWITCHOVER = 'pre-switchover';
const MIGRATION_ENDED = ['completed', 'failed', 'cancelled', 'none'];
/**
 * The live resume's migration: the replication network is the pair's own, so no cap on its bandwidth (QEMU 7.2's
 * default is 32 MiB/s), and a short last pass: the VM is stopped for it.
 */
const LIVE_MIGRATION = { 'max-bandwidth': 10 * 2 ** 30, 'downtime-limit': 50 };

/**
 * The steps of resume replication towards a new secondary that waits
 * (steps 2 and 3 done), for runSteps(RESUME_REPLICATION, p.steps, { fromStep }).
 * The list is the same on every call for the same target and `live`, and
 * building it asks QEMU nothing (what depends on QEMU's state is asked when a
 * step runs; whether QEMU can take the live order is the caller's to say:
 * canPauseIntoColo).
 *
 * Stopped (the documentation's order): drive-mirror until in sync; stop; end
 * the mirror; attach the replication child; add the proxy objects; migrate
 * with x-colo, the VM stopped for the whole of its RAM.
 *
 * Live (o.live), the way a live migration with a disk mirror is done: the
 * mirror runs on during the migration (in the background: a guest write
 * never waits for the new secondary, whose link may die); x-colo and
 * pause-before-switchover; migrate while the VM runs; once QEMU has stopped
 * the VM for the last pass and paused before its switchover, end the mirror,
 * attach the replication child (connected before, while the VM ran), add the
 * proxy's filters (its compare object is made before too: nothing feeds it
 * until the filters exist), and let the switchover into COLO go on
 * (migrate-continue). The disk: every write before the pause reaches the new
 * secondary's replica through the mirror, whose end (block-job-cancel of a
 * ready mirror) copies what is still dirty, none comes between the pause and
 * COLO (the VM is stopped), and from COLO on the replication child forwards
 * them. The network: the proxy is there from the first instant of COLO, as in
 * the documented order; before, the VM runs alone and its output is its own,
 * as before the resume. The VM is stopped only from the last pass to COLO.
 * A migration that fails or is cancelled after that stop lets the VM run
 * again by itself (QEMU's migration_iteration_finish: it was running when
 * the last pass began).
 */
export function resumeReplicationProcedure(qmp: QmpCommands, e: ColoEndpoints, t: ResumeTarget, o: ResumeOptions): ResumeProcedure {
  const live = o.live === true;
  // Whether this node used to be a secondary (it still has the filter-rewriter): asked once, by the first filter's object-add.
  let afterRewriter: boolean | undefined;
  const rewriterHere = async (): Promise<boolean> => (afterRewriter ??= await hasObject(qmp, IDS.rewriter));
  const mirror = { ms: 0, bytes: 0 };
  // The VM's stop (the STOP of our `stop`, or of QEMU's last pass) and its run again in COLO (RESUME), by QEMU's clock
  // (the events' timestamps). Each listened for from the step that causes it on (or from whichever later step a retry
  // starts at: an event that came before is then not seen, and the figure stays 0).
  let stoppedMs = 0;
  let stops: ReturnType<QmpCommands['listen']> | undefined;
  let resumed: ReturnType<QmpCommands['listen']> | undefined;
  const listenStop = () => (stops ??= qmp.listen('STOP'));
  const listenResume = () => (resumed ??= qmp.listen('RESUME'));
  const mirrorStep: Step = {
    name: `drive-mirror to nbd://${t.host}:${t.nbdPort}/${IDS.secondaryParent}${t.tls ? ' (TLS)' : ''}, until in sync`,
    timeoutMs: o.mirrorTimeoutMs + STEP_MS,
    done: async () => jobReady(await resyncJob(qmp)),
    run: async () => Object.assign(mirror, await mirrorUntilReady(qmp, t, o)),
  };
  const endMirror: Step = { name: `block-job-cancel ${RESYNC_JOB}`, timeoutMs: STEP_MS, run: () => finishMirror(qmp, STEP_MS) };
  /** The primary's proxy objects, each added unless it is there (the filters before the filter-rewriter when this node was a secondary). */
  const objectSteps = (before: () => void): Step[] =>
    primaryProxyObjectSpecs(e).map(
      (spec): Step => ({
        name: `object-add ${spec.qomType} ${spec.props.id}`,
        timeoutMs: STEP_MS,
        done: () => hasObject(qmp, String(spec.props.id)),
        run: async () => {
          before();
          const first = spec.qomType.startsWith('filter-') && (await rewriterHere());
          await qmp.execute('object-add', { 'qom-type': spec.qomType, ...spec.props, ...(first ? { insert: 'before', position: `id=${IDS.rewriter}` } : {}) });
        },
      }),
    );
  const untilColo: Step = {
    // COLO starts the VM again once the new secondary has its state.
    name: 'migration to the new secondary, until the VM runs again in COLO',
    timeoutMs: o.migrationTimeoutMs,
    done: () => runningInColo(qmp),
    run: async () => {
      const ev = await listenResume().next(o.migrationTimeoutMs, 'the VM to run again in COLO after the migration');
      const stop = stops?.drain()[0];
      if (stop) stoppedMs = ev.time - stop.time;
      // A migration that failed after QEMU itself had stopped the VM runs it again too (live): that is no COLO.
      const st = await migrationStatus(qmp);
      if (st === undefined || MIGRATION_ENDED.includes(st)) throw new LockstepError(`the migration to the new secondary ended (${st ?? 'none'}) instead of entering COLO: the VM runs again alone`);
    },
  };
  const stopped: Step[] = [
    mirrorStep,
    {
      // Stopping a stopped VM succeeds in QEMU: safe to repeat.
      name: 'stop',
      timeoutMs: STEP_MS,
      run: async () => {
        listenStop();
        listenResume();
        await qmp.execute('stop');
      },
    },
    endMirror,
    ...attachReplicationSteps(qmp, t.host, t.nbdPort, t.tls, STEP_MS),
    ...objectSteps(listenResume),
    ...migrateIntoColoSteps(qmp, t.host, t.migrationPort, t.tls, STEP_MS).map((s): Step => ({ ...s, run: () => (listenResume(), s.run()) })),
    untilColo,
  ];
  if (!live) return procedure(stopped);

  const creds = peerTlsCreds({ tls: t.tls }, 'client')['tls-creds'];
  const paused = async () => (await migrationStatus(qmp)) === PRE_SWITCHOVER;
  // The parts of the switch that redirect nothing are made while the VM still runs: the replication child's NBD
  // connection (made, not attached: no write reaches it before COLO), and the compare object with its iothread (fed by
  // nothing until the filters exist). At the pause only the mirror's end, the child's attachment and the filters remain.
  const [driveAdd, attach] = attachReplicationSteps(qmp, t.host, t.nbdPort, t.tls, STEP_MS) as [Step, Step];
  const isFilter = (st: Step) => /^object-add filter-/.test(st.name);
  const liveSteps: Step[] = [
    mirrorStep,
    driveAdd,
    ...objectSteps(() => {}).filter((st) => !isFilter(st)),
    {
      name: `migrate-set-parameters${creds ? ` tls-creds ${creds},` : ''} max-bandwidth ${LIVE_MIGRATION['max-bandwidth']}, downtime-limit ${LIVE_MIGRATION['downtime-limit']}`,
      timeoutMs: STEP_MS,
      run: () => qmp.execute('migrate-set-parameters', { ...LIVE_MIGRATION, ...(creds ? { 'tls-creds': creds } : {}) }),
    },
    {
      name: 'migrate-set-capabilities x-colo, pause-before-switchover',
      timeoutMs: STEP_MS,
      done: async () => (await capabilityOn(qmp, 'x-colo')) && (await capabilityOn(qmp, 'pause-before-switchover')),
      run: () =>
        qmp.execute('migrate-set-capabilities', {
          capabilities: [
            { capability: 'x-colo', state: true },
            { capability: 'pause-before-switchover', state: true },
          ],
        }),
    },
    {
      name: 'migrate, the VM running',
      timeoutMs: STEP_MS,
      done: () => migrationIntoColoStarted(qmp),
      run: () => (listenStop(), qmp.execute('migrate', { uri: `tcp:${t.host}:${t.migrationPort}` })),
    },
    {
      name: 'the RAM copied while the VM runs, until QEMU stops it for the last pass and pauses before the switchover',
      timeoutMs: o.migrationTimeoutMs,
      done: paused,
      run: async () => {
        listenStop();
        const deadline = Date.now() + o.migrationTimeoutMs;
        for (;;) {
          const st = await migrationStatus(qmp);
          if (st === PRE_SWITCHOVER) return;
          if (st === undefined || MIGRATION_ENDED.includes(st)) throw new LockstepError(`the migration to the new secondary ended (${st ?? 'none'}) before its switchover into COLO`);
          if (Date.now() > deadline) throw new LockstepError(`the migration to the new secondary did not reach its switchover within ${Math.round(o.migrationTimeoutMs / 1000)} s`, { hint: 'the guest dirties its memory faster than the replication link carries it' });
          await sleep(5);
        }
      },
    },
    endMirror,
    attach,
    ...objectSteps(listenResume).filter(isFilter),
    {
      name: 'migrate-continue pre-switchover: the switchover into COLO',
      timeoutMs: STEP_MS,
      done: async () => !(await paused()) && (await migrationIntoColoStarted(qmp)),
      run: () => {
        // From here QEMU decides: COLO, or (the switchover failing) the VM running again alone.
        if (o.mayRunAlone && !o.mayRunAlone()) {
          throw new LockstepError('the VM may not run alone now (no lease ahead, or its disk\'s epoch unknown), and a switchover that fails would let QEMU run it again: the switchover waits', {
            hint: 'the resume is taken back, the VM left stopped in the pause until it may run again',
          });
        }
        listenResume();
        return qmp.execute('migrate-continue', { state: PRE_SWITCHOVER });
      },
    },
    untilColo,
  ];
  return procedure(liveSteps);

  function procedure(steps: Step[]): ResumeProcedure {
    return {
      steps,
      afterRewriter: () => afterRewriter ?? false,
      figures: () => ({ mirrorMs: mirror.ms, mirrorBytes: mirror.bytes, stoppedMs, live }),
      close: () => {
        stops?.close();
        resumed?.close();
      },
    };
  }
}

/**
 * Whether this QEMU can pause before its switchover into COLO, which the live
 * resume needs. QEMU 10.0 passes every migration through its device state and
 * enters COLO from there, after a pause too (migration.c,
 * migration_completion). 7.2 enters COLO only straight from the active state:
 * after a pause (state device) it completes a plain migration instead, and
 * the new secondary never gets COLO; lockstep's patch 0004 fixes that, and its
 * build says so (lockstep-fixes=...,P4).
 */
export async function canPauseIntoColo(qmp: QmpCommands): Promise<boolean> {
  const v = await qmp.execute<{ qemu: { major: number; minor: number; micro: number }; package: string }>('query-version', undefined, { timeoutMs: 5000 });
  return fixesOf({ version: v.qemu, package: v.package }).some((f) => f.id === 'P4' && f.present);
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

async function migrating(qmp: QmpCommands): Promise<boolean> {
  const mig = await qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs: 5000 });
  return mig.status !== undefined && !MIGRATION_ENDED.includes(mig.status);
}

/**
 * The steps that take a half-done resume back, each skipped when there is
 * nothing of its kind to undo (so the list is safe to run again from the
 * start): links yanked (if a mirror or migration still talks to a maybe
 * vanished secondary), the mirror job, a migration under way, the proxy
 * objects, the replication child, x-colo and pause-before-switchover; and
 * the VM let run again if the resume had stopped it. Each step that undid
 * something adds its name to `undone`.
 *
 * A live resume's migration paused before its switchover is cancelled too,
 * and QEMU then runs the VM again by itself (it ran when the last pass
 * stopped it: migration.c, migration_iteration_finish). Where the VM may
 * not run (`cont` false) that migration is left paused instead, the VM
 * stopped in it, until the VM may run again (cancelPausedMigrationStep);
 * its capabilities stay on meanwhile (QEMU changes none while a migration
 * is under way).
 */
export function abortResumeSteps(qmp: QmpCommands, undone: string[] = [], o: { cont?: boolean; leavePaused?: boolean } = {}): Step[] {
  const did = (what: string) => undone.push(what);
  const cont = o.cont ?? true;
  const leftPaused = async () => !cont && o.leavePaused !== false && (await migrationStatus(qmp)) === PRE_SWITCHOVER;
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
      done: async () => !(await migrating(qmp)) || (await leftPaused()),
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
      name: 'x-colo and pause-before-switchover off',
      timeoutMs: STEP_MS,
      done: async () => (await leftPaused()) || (!(await capabilityOn(qmp, 'x-colo')) && !(await capabilityOn(qmp, 'pause-before-switchover'))),
      run: async () => {
        await qmp.execute('migrate-set-capabilities', {
          capabilities: [
            { capability: 'x-colo', state: false },
            { capability: 'pause-before-switchover', state: false },
          ],
        });
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

/**
 * Before a VM that a take-back left stopped may run again (node/procedures.ts,
 * unfence): a live resume's migration it left paused before its switchover
 * (abortResumeSteps, `cont` false) is cancelled, and QEMU runs the VM again
 * by itself; waited for until it has left the migration's last pass (`cont`
 * is refused there: "Migration is not finalized yet"). Skipped when no
 * migration waits there.
 */
export function cancelPausedMigrationStep(qmp: QmpCommands): Step {
  return {
    name: 'migrate_cancel of a migration paused before its switchover',
    timeoutMs: STEP_MS,
    done: async () => (await migrationStatus(qmp)) !== PRE_SWITCHOVER,
    run: async () => {
      await qmp.execute('migrate_cancel');
      while ((await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: 5000 })).status === 'finish-migrate') await sleep(20);
    },
  };
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
export function abortResumeTolerantSteps(qmp: QmpCommands, undone: string[], onFailure?: (step: string, error: unknown) => void, o: { cont?: boolean; leavePaused?: boolean } = {}): Step[] {
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

