/**
 * Re-protection after a failover: the VM runs alone on the survivor. A new
 * secondary is started on the other node (fresh replica and active/hidden
 * buffers, "Startup qemu" steps 2 and 3: prepareSecondary, run on the
 * target's host), the survivor mirrors its disk to it and re-enters COLO
 * ("Primary/Secondary resume replication": resumeOnSurvivor), and the state
 * records the pair as protected again with the survivor as its primary
 * (recordResync). The node agents do this by themselves; `lockstep resync`
 * (resync()) does it by hand.
 *
 * Never the wrong way: the source is the node that runs the VM, and the
 * target's disk must be provably older than the source's or the same
 * (mayResyncTowards on their epochs: never a newer, divergent, other-run or
 * unknown disk). Afterwards the target's record takes the source's epoch.
 * The target's old disk is not read: it is replaced by a new replica in the
 * target's data directory (the user's image is never written).
 *
 * A failure at any step leaves the survivor running alone, as before: the
 * new secondary is ended and the survivor's half-done resume is taken back
 * (abortResume), so a retry starts clean.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ResolvedConfig } from '../config/load.js';
import { QmpClient, type QmpCommands } from '../qmp/client.js';
import { QemuProcess, isOurQemu, stopPid } from '../qemu/process.js';
import { createImage, imageInfo } from '../qemu/images.js';
import { createBuffers, removeBuffers } from './buffers.js';
import { ensurePrivateDir } from '../util/files.js';
import { detachTap } from '../qemu/tap.js';
import { secondaryEnterColoSteps, waitColoMode, firstCheckpoint, queryColoStatus } from '../colo/startup.js';
import { resumeReplicationProcedure, abortResumeTolerantSteps, canPauseIntoColo, type MirrorProgress, type ResumeResult } from '../colo/resume.js';
import { runSteps, type Step } from '../colo/steps.js';
import { primaryFailover, yankStep } from '../colo/failover.js';
import { LockstepError, errorMessage } from '../util/errors.js';
import { waitFor } from '../util/time.js';
import { planPair, type PairPlan } from './plan.js';
import { launchNode } from './launch.js';
import { prepareDataPlaneKey } from './keys.js';
import { readState, updateState, writeState, type PairState } from './state.js';
import { agentsRunning, startAgents, stopAgents, waitAgentsProtected } from './agents.js';
import { generationFile, readDiskRecord, writeEpoch, type ReadDisk } from './generation.js';
import { compareEpochs, formatEpoch, mayResyncTowards, type Epoch } from './epoch.js';

export interface ResyncOptions {
  onStep?: (msg: string) => void;
  onUpdate?: (msg: string) => void;
  onMirror?: (p: MirrorProgress) => void;
}

export interface ResyncResult {
  from: string;
  to: string;
  /** Whole resync: start → protected again. */
  ms: number;
  mirrorMs: number;
  mirrorBytes: number;
  /** How long the VM was stopped for the switch into COLO. */
  stoppedMs: number;
  /** The epoch both disks hold now (the source's). */
  epoch: Epoch;
  /** Its generation (epoch.gen). */
  generation: number;
}

export interface PreparedSecondary {
  proc: QemuProcess;
  qmp: QmpClient;
  plan: PairPlan;
}

export const PREPARE_SECONDARY = 'prepare a new secondary';
export const RESUME_ON_SURVIVOR = 'resume replication on the survivor';
export const TAKE_BACK_RESUME = 'take back a resume';

/** A resync's mirror that makes no progress for this long is given up (a cut link to the new secondary). */
export const MIRROR_STALL_MS = 10_000;
/** COLO reported running as primary after the migration: waited for this long. */
const COLO_MODE_MS = 30_000;
/** Images and buffers of a new secondary (qemu-img create). */
const IMAGES_STEP_MS = 30_000;
/** Starting a QEMU: its QMP socket within 15 s, or it is ended again (launch.ts). */
const LAUNCH_STEP_MS = 20_000;
const TAP_STEP_MS = 5_000;

/**
 * The migration of the VM's RAM over the replication link (a resync's switch into COLO, with the VM stopped, or
 * running in the live order; a checkpoint's first, full one): 10 s plus the RAM at 50 MiB/s.
 */
export function ramTransferBoundMs(memoryBytes: number): number {
  return 10_000 + Math.round((memoryBytes / (50 * 2 ** 20)) * 1000);
}

/**
 * A QMP connection that a step of the same list makes (the new secondary's):
 * the steps that use it are built before it exists, and ask it only when they run.
 */
function lateQmp(get: () => QmpClient | undefined, what: string): QmpCommands {
  const need = (): QmpClient => {
    const q = get();
    if (!q) throw new LockstepError(`${what} is not started`);
    return q;
  };
  return {
    execute: (command, args, opts) => need().execute(command, args, opts),
    hmp: (line, opts) => need().hmp(line, opts),
    listen: (filter) => need().listen(filter),
    get oobEnabled() {
      return need().oobEnabled;
    },
  };
}

export interface PrepareSecondaryProcedure {
  steps: Step[];
  /** The new secondary, once the list ran to its end. */
  prepared(): PreparedSecondary | undefined;
  /** After a failed step: ends what the list started, so that nothing of it is left. */
  cleanup(): Promise<void>;
}

/**
 * On the target's host: a new secondary for the pair whose primary is
 * `primary`: a fresh replica of `sizeBytes` and buffers, the tap off the
 * bridge, QEMU started and waiting in COLO's incoming state with its replica
 * exported over NBD ("Startup qemu" steps 2 and 3). Always run from its
 * first step; after a failure, cleanup() leaves nothing of it.
 */
export function prepareSecondaryProcedure(c: ResolvedConfig, s: PairState, primary: string, sizeBytes: number): PrepareSecondaryProcedure {
  const plan = planPair(c, s.runtime, primary);
  const tp = plan.secondary;
  let launched: { proc: QemuProcess; qmp: QmpClient } | undefined;
  let done = false;
  const tap = tp.tap;
  const steps: Step[] = [
    {
      name: `new replica and buffers for ${tp.name}`,
      timeoutMs: IMAGES_STEP_MS,
      run: async () => {
        if (!(sizeBytes > 0)) throw new LockstepError(`the survivor ${primary} asked for a replica of ${sizeBytes} bytes: it does not know its disk's size`, { hint: "see the survivor's agent log" });
        ensurePrivateDir(tp.dataDir, { parents: true });
        fs.rmSync(tp.serialLog, { force: true });
        await createImage(tp.disk, sizeBytes, { format: c.vm.disk.format, overwrite: true });
        await createBuffers(plan.buffers, sizeBytes);
      },
    },
    ...(tap ? [{ name: `tap ${tap.tap} off bridge ${tap.bridge}`, timeoutMs: TAP_STEP_MS, run: () => detachTap(tap) }] : []),
    {
      name: `start a new secondary on ${tp.name}`,
      timeoutMs: LAUNCH_STEP_MS,
      run: async () => {
        prepareDataPlaneKey(c);
        launched = await launchNode(tp, s.runtime.binary, `secondary ${tp.name}`);
      },
    },
    ...secondaryEnterColoSteps(lateQmp(() => launched?.qmp, 'the new secondary'), { nbdHost: plan.endpoints.secondaryHost, nbdPort: plan.endpoints.nbdPort, tls: plan.endpoints.tls }).map(
      (st, i, all): Step => (i === all.length - 1 ? { ...st, run: async () => (await st.run(), (done = true)) } : st),
    ),
  ];
  return {
    steps,
    prepared: () => (done && launched ? { ...launched, plan } : undefined),
    cleanup: async () => {
      const l = launched;
      launched = undefined;
      l?.qmp.destroy();
      if (l) await dropSecondary({ proc: l.proc, plan });
      else removeBuffers([plan.buffers.active, plan.buffers.hidden]);
    },
  };
}

/** prepareSecondaryProcedure, run; on failure nothing of it is left. */
export async function prepareSecondary(c: ResolvedConfig, s: PairState, primary: string, sizeBytes: number, step: (m: string) => void = () => {}): Promise<PreparedSecondary> {
  const p = prepareSecondaryProcedure(c, s, primary, sizeBytes);
  try {
    await runSteps(PREPARE_SECONDARY, p.steps, { onStep: step });
    return p.prepared()!;
  } catch (err) {
    await p.cleanup();
    throw err;
  }
}

/** Ends a prepared secondary that will not be used, and removes its buffers. */
export async function dropSecondary(p: { proc: QemuProcess; plan: PairPlan }): Promise<void> {
  await p.proc.stop(2000);
  removeBuffers([p.plan.buffers.active, p.plan.buffers.hidden]);
}

export interface ResumeOnSurvivorProcedure {
  steps: Step[];
  figures(): { mirrorMs: number; mirrorBytes: number; stoppedMs: number; live: boolean };
  /** Releases the procedure's event listeners: call once its steps are run, whatever the outcome. */
  close(): void;
}

/**
 * On the survivor, once the new secondary waits: resume replication
 * (colo/resume.ts), then wait until this node reports COLO running as
 * primary and a first checkpoint completes. Always run from its first step
 * (a failure is taken back: takeBackResumeSteps). `live`: the RAM goes over
 * while the VM runs (our QEMU can pause before its switchover into COLO:
 * canPauseIntoColo, asked by the caller), else the documented order;
 * `mayRunAlone`: the agent's word before a live switchover.
 */
export function resumeOnSurvivorProcedure(
  c: ResolvedConfig,
  qmp: QmpCommands,
  plan: PairPlan,
  o: { onUpdate?: (m: string) => void; onMirror?: (p: MirrorProgress) => void; live?: boolean; mayRunAlone?: () => boolean } = {},
): ResumeOnSurvivorProcedure {
  const r = resumeReplicationProcedure(
    qmp,
    plan.endpoints,
    { host: plan.endpoints.secondaryHost, nbdPort: plan.endpoints.nbdPort, migrationPort: plan.endpoints.migrationPort, tls: plan.endpoints.tls },
    {
      onStep: o.onUpdate,
      onMirror: o.onMirror,
      mirrorTimeoutMs: c.replication.resyncTimeoutMs,
      mirrorStallMs: MIRROR_STALL_MS,
      // The RAM goes over at 50 MiB/s or more (while the VM runs where QEMU allows: live), with 10 s to spare.
      migrationTimeoutMs: ramTransferBoundMs(c.vm.memory),
      live: o.live,
      mayRunAlone: o.mayRunAlone,
    },
  );
  const delayMs = c.replication.checkpointDelayMs;
  return {
    steps: [
      ...r.steps,
      { name: 'COLO running as primary', timeoutMs: COLO_MODE_MS + 1000, run: () => waitColoMode(qmp, 'primary', COLO_MODE_MS) },
      // firstCheckpoint waits delayMs + 15 s for the STOP, then 15 s for the RESUME.
      { name: 'first checkpoint', timeoutMs: delayMs + 31_000, run: () => firstCheckpoint(qmp, delayMs) },
    ],
    figures: r.figures,
    close: r.close,
  };
}

/**
 * resumeOnSurvivorProcedure, run (live where our QEMU can pause before its switchover into COLO); on failure the
 * half-done resume is taken back and the VM runs on alone.
 */
export async function resumeOnSurvivor(
  c: ResolvedConfig,
  qmp: QmpClient,
  plan: PairPlan,
  o: { onUpdate?: (m: string) => void; onMirror?: (p: MirrorProgress) => void } = {},
): Promise<Omit<ResumeResult, 'steps' | 'afterRewriter'>> {
  const p = resumeOnSurvivorProcedure(c, qmp, plan, { ...o, live: await canPauseIntoColo(qmp) });
  try {
    await runSteps(RESUME_ON_SURVIVOR, p.steps, { onStep: o.onUpdate });
    return p.figures();
  } catch (err) {
    const undone = await takeBackResume(qmp).catch(() => []);
    if (undone.length) o.onUpdate?.(`took back: ${undone.join(', ')}`);
    throw err;
  } finally {
    p.close();
  }
}

const STOP_STEP_MS = 5_000;

/** The bound of "Primary Failover" run inside the take-back (9 steps of 5 s at most). */
const PRIMARY_FAILOVER_MS = 50_000;

/**
 * Takes a failed resume back on the survivor. If it got as far as COLO, the
 * COLO thread waits for a failover (colo.c, colo_exit_sem), which only
 * x-colo-lost-heartbeat gives it: so "Primary Failover" first (yanking the
 * links to the new secondary), then whatever else the resume left (best
 * effort: abortResumeTolerantSteps), ending with the VM let run again
 * (`cont`, the default) or stopped; stopped, a live resume's migration paused
 * before its switchover stays paused (its cancel would let QEMU run the VM:
 * `leavePaused`, the default). `undone` gets what was undone.
 */
export function takeBackResumeSteps(qmp: QmpCommands, undone: string[] = [], o: { cont?: boolean; stopFirst?: boolean; leavePaused?: boolean } = {}): Step[] {
  return [
    // Not to be let run: stopped before it leaves COLO (after the yank, so that no checkpoint starts it again).
    ...(o.cont === false && o.stopFirst !== false ? [yankStep(qmp, 'to-secondary'), { name: 'stop', timeoutMs: STOP_STEP_MS, run: () => qmp.execute('stop', undefined, { timeoutMs: STOP_STEP_MS }) }] : []),
    {
      name: 'primary failover, if the resume reached COLO',
      timeoutMs: PRIMARY_FAILOVER_MS,
      run: async () => {
        const colo = await queryColoStatus(qmp).catch(() => undefined);
        if (colo?.mode !== 'primary') return;
        await primaryFailover(qmp, undefined, { yank: true });
        undone.push('primary failover (the resume had reached COLO)');
      },
    },
    ...abortResumeTolerantSteps(qmp, undone, undefined, o),
  ];
}

export async function takeBackResume(qmp: QmpCommands): Promise<string[]> {
  const undone: string[] = [];
  await runSteps(TAKE_BACK_RESUME, takeBackResumeSteps(qmp, undone));
  return undone;
}

/** Records a finished resync: the survivor primary, the target its secondary with the new QEMU, and the figures. */
export function recordResync(c: ResolvedConfig, plan: PairPlan, targetPid: number, r: Omit<NonNullable<PairState['lastResync']>, 'at' | 'from' | 'to'>): PairState | undefined {
  const now = new Date().toISOString();
  return updateState(c.stateDir, (s) => ({
    ...s,
    endpoints: plan.endpoints,
    buffers: plan.buffers,
    // The survivor's QEMU keeps the buffers it had as a secondary open: `down` removes them.
    retiredBuffers: [...(s.retiredBuffers ?? []), s.buffers.active, s.buffers.hidden].filter((b) => b !== plan.buffers.active && b !== plan.buffers.hidden),
    nodes: s.nodes.map((n) =>
      n.name === plan.secondary.name
        ? { ...n, role: 'secondary' as const, pid: targetPid, disk: plan.secondary.disk, serialLog: plan.secondary.serialLog, qemuLog: plan.secondary.qemuLog }
        : { ...n, role: 'primary' as const },
    ),
    protectedAt: now,
    lastResync: { at: now, from: plan.primary.name, to: plan.secondary.name, ...r },
  }));
}

function describeRecord(r: ReadDisk): string {
  if (r.state === 'ok') return `epoch ${formatEpoch(r.record.epoch)} of run ${r.record.epoch.run}`;
  return r.state === 'missing' ? 'no epoch (its record is missing)' : `no readable epoch (its record is damaged: ${r.error})`;
}

/**
 * The source and target of a resync of `s`, checked: the source runs the VM
 * alone, and the target's disk may be overwritten by it (mayResyncTowards:
 * the source's epoch is newer than the target's, or the same). Otherwise it
 * refuses, saying why and what to do.
 */
export function resyncParties(c: ResolvedConfig, s: PairState): { source: PairState['nodes'][number]; target: PairState['nodes'][number]; epoch: Epoch } {
  const source = s.nodes.find((n) => n.role === 'primary')!;
  const target = s.nodes.find((n) => n !== source)!;
  if (!isOurQemu(source.pid, source.qmpSocket)) {
    throw new LockstepError(`the VM is not running on ${source.name}: there is nothing to resync from`, { hint: `see lockstep status -c ${c.file}` });
  }
  const srcDir = path.dirname(source.qmpSocket);
  const tgtDir = path.dirname(target.qmpSocket);
  const src = readDiskRecord(srcDir);
  const tgt = readDiskRecord(tgtDir);
  const se = src.state === 'ok' ? src.record.epoch : undefined;
  const te = tgt.state === 'ok' ? tgt.record.epoch : undefined;
  if (se && mayResyncTowards(se, te)) return { source, target, epoch: se };

  const both = `${source.name} (runs the VM) has ${describeRecord(src)}; ${target.name} has ${describeRecord(tgt)}`;
  const inspect = `the records are ${generationFile(srcDir)} and ${generationFile(tgtDir)}; lockstep status -c ${c.file} and the agent logs in ${c.stateDir} tell what happened`;
  // Saying "the target's disk may go" is an explicit act: give it the source's record, then resync.
  const giveUp = `if ${target.name}'s disk ${target.disk} holds nothing you need, say so by copying ${source.name}'s record over its own (cp ${generationFile(srcDir)} ${generationFile(tgtDir)}) and run lockstep resync again`;
  if (!se) {
    throw new LockstepError(`cannot resync from ${source.name}: the epoch of the disk it runs (${source.disk}) is unknown, so it cannot be shown to be at least as new as ${target.name}'s (${both})`, {
      hint: `nothing was changed; ${inspect}`,
    });
  }
  const order = compareEpochs(se, te);
  switch (order) {
    case 'older':
      throw new LockstepError(`node ${target.name} holds newer data than ${source.name}, which runs the VM (${both}): resyncing would overwrite it`, {
        hint: `nothing was changed; find out why ${source.name} runs the VM on older data before anything else: ${inspect}`,
      });
    case 'divergent':
      throw new LockstepError(`the disks of ${source.name} and ${target.name} diverged: both wrote alone in generation ${se.gen} (${both}); neither may overwrite the other`, {
        hint: `nothing was changed; decide which node's data to keep (${inspect}). ${giveUp}`,
      });
    case 'other-run':
      throw new LockstepError(`the disk of ${target.name} is from another run of the pair than ${source.name}'s (${both}): they cannot be compared`, {
        hint: `nothing was changed; ${inspect}. ${giveUp}`,
      });
    default:
      throw new LockstepError(`the epoch of ${target.name}'s disk ${target.disk} is unknown (${both}): it is never overwritten on a guess`, {
        hint: `nothing was changed; ${inspect}. ${giveUp}`,
      });
  }
}

/**
 * lockstep resync. With agents that re-protect by themselves, it waits for
 * them (they are already at it, or will be once the other node's agent is
 * back); otherwise it runs the resync itself, with the agents paused.
 */
export async function resync(c: ResolvedConfig, o: ResyncOptions = {}): Promise<ResyncResult> {
  const step = o.onStep ?? (() => {});
  const t0 = performance.now();
  const s = readState(c.stateDir);
  if (!s) throw new LockstepError(`pair "${c.name}" has not been started`, { hint: `start it with: lockstep up -c ${c.file}` });
  const { source, target, epoch } = resyncParties(c, s);
  let qmp = await QmpClient.connect(source.qmpSocket2, { timeoutMs: 5000 });
  try {
    const colo = await queryColoStatus(qmp);
    if (colo.mode !== 'none') throw new LockstepError(`pair "${c.name}" is in COLO already (${source.name} is ${colo.mode})`, { hint: 'nothing to resync' });
  } finally {
    qmp.destroy();
  }

  const hadAgents = agentsRunning(s);
  if (hadAgents && c.agents?.reprotect) {
    step(`the node agents re-protect the VM by themselves: waiting for them (the agent of ${target.name} must be running)`);
    const before = s.lastResync?.at;
    const done = await waitFor(
      'the agents to re-protect the VM',
      () => {
        const now = readState(c.stateDir)?.lastResync;
        return now && now.at !== before ? now : undefined;
      },
      { timeoutMs: c.replication.resyncTimeoutMs + 60_000, intervalMs: 200, hint: `see the agent logs: ${c.stateDir}/*/agent.log` },
    );
    return { from: done.from, to: done.to, ms: performance.now() - t0, mirrorMs: done.mirrorMs, mirrorBytes: done.mirrorBytes, stoppedMs: done.stoppedMs, epoch, generation: epoch.gen };
  }
  if (hadAgents) {
    // The agents would take the resync's stop, new QEMU and migration for failures.
    step('pausing the node agents for the resync');
    await stopAgents(s);
  }
  if (isOurQemu(target.pid, target.qmpSocket)) {
    step(`ending the stale QEMU on ${target.name} (pid ${target.pid}): its disk is replaced`);
    await stopPid(target.pid, target.qmpSocket, 2000);
  }
  let prepared: PreparedSecondary | undefined;
  qmp = await QmpClient.connect(source.qmpSocket, { timeoutMs: 5000 });
  try {
    prepared = await prepareSecondary(c, s, source.name, (await imageInfo(source.disk))['virtual-size'], step);
    step(`${source.name}: mirroring its disk to ${target.name}, then into COLO`);
    const r = await resumeOnSurvivor(c, qmp, prepared.plan, { onUpdate: o.onUpdate, onMirror: o.onMirror });
    // The target now holds the source's data: it takes the source's epoch.
    writeEpoch(prepared.plan.secondary.dataDir, epoch, `resync from ${source.name}`);
    const ms = performance.now() - t0;
    const next = recordResync(c, prepared.plan, prepared.proc.pid, { ms, mirrorMs: r.mirrorMs, mirrorBytes: r.mirrorBytes, stoppedMs: r.stoppedMs })!;
    // The agents take both QMP monitors over: each serves one client at a time.
    prepared.qmp.destroy();
    qmp.destroy();
    if (hadAgents) {
      step('starting the node agents again');
      next.agents = await startAgents(c, next);
      writeState(c.stateDir, next);
      step('waiting for the agents to see a checkpoint');
      await waitAgentsProtected(next, 2 * c.replication.checkpointDelayMs + 10_000);
    }
    return { from: source.name, to: target.name, ms, mirrorMs: r.mirrorMs, mirrorBytes: r.mirrorBytes, stoppedMs: r.stoppedMs, epoch, generation: epoch.gen };
  } catch (err) {
    step(`resync failed (${errorMessage(err)}): the VM runs on alone on ${source.name}`);
    if (prepared) await dropSecondary(prepared);
    // The agents take the QMP monitor over: it serves one client at a time.
    prepared?.qmp.destroy();
    qmp.destroy();
    if (hadAgents) {
      const again = readState(c.stateDir)!;
      again.agents = await startAgents(c, again).catch(() => undefined);
      writeState(c.stateDir, again);
    }
    throw err;
  } finally {
    prepared?.qmp.destroy();
    qmp.destroy();
  }
}
