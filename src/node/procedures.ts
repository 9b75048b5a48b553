/**
 * Every procedure the agent core asks for (core/types.ts, Procedure) as one
 * list of named, time-bounded steps (colo/steps.ts): the list the agent
 * runtime runs (agent.ts) and the list the simulator models, step by step,
 * by name (../sim/procedures.ts). The core counts `stepsDone` in this list
 * and a retry continues at `fromStep` in it, so everything a procedure does
 * is a step of it: the tap put on the bridge before a takeover, the
 * announcement after it, the `cont` of a VM that was stopped.
 *
 * The lists come from colo/ and pair/ (the COLO documentation's procedures,
 * the resync, the restart); what only an agent does (ending its own QEMU,
 * keeping the new secondary it prepared, taking its monitor over) goes
 * through ProcedureHost. Building a list asks QEMU nothing and runs nothing:
 * the simulator builds them with a host and a QMP that are never asked, to
 * read their steps.
 */
import type { ResolvedConfig } from '../config/load.js';
import type { QmpCommands } from '../qmp/client.js';
import { primaryFailoverSteps, yankLinks, yankStep, PRIMARY_FAILOVER, SECONDARY_FAILOVER } from '../colo/failover.js';
import type { Step } from '../colo/steps.js';
import { LockstepError } from '../util/errors.js';
import { secondaryTakeoverSteps } from '../pair/failover.js';
import { restartAloneSteps, RESTART } from '../pair/restart.js';
import { prepareSecondaryProcedure, resumeOnSurvivorProcedure, takeBackResumeSteps, recordResync, PREPARE_SECONDARY, RESUME_ON_SURVIVOR, TAKE_BACK_RESUME, type PreparedSecondary } from '../pair/resync.js';
import { planPair } from '../pair/plan.js';
import type { NodeState, PairState } from '../pair/state.js';
import { cancelPausedMigrationStep, type MirrorProgress } from '../colo/resume.js';
import type { Procedure } from './core/types.js';
import { planted } from './mutants.js';

const QMP_STEP_MS = 5_000;
/** Ending a QEMU: SIGTERM, 1 s, SIGKILL, then up to 5 s for it to go (qemu/process.ts, stopPid). */
const END_QEMU_STEP_MS = 8_000;
/** Attaching to a QEMU we just started (it answers: it was started with its monitor up). */
const ATTACH_STEP_MS = 15_000;

/** What a procedure's steps need of the agent beyond QMP. */
export interface ProcedureHost {
  readonly config: ResolvedConfig;
  /** This node's name. */
  readonly name: string;
  /** The pair's record as it is now. */
  pair(): PairState;
  /** Our QEMU's monitor (throws when we are not attached to it). */
  qmp(): QmpCommands;
  /**
   * Whether our QEMU can pause before its switchover into COLO (colo/resume.ts, canPauseIntoColo), as found when we
   * attached to it: its resume then takes the live order.
   */
  canPauseIntoColo(): boolean;
  /** Whether our VM may run alone now (the core's word: its lease ahead, its disk's epoch known). */
  mayRunAlone(): boolean;
  /** Ends our own QEMU on purpose (a restart or a resync replaces it): no re-attach. */
  endOurQemu(why: string): Promise<void>;
  /** The new secondary this node prepared for its peer's resync, if any. */
  prepared(): PreparedSecondary | undefined;
  setPrepared(p: PreparedSecondary | undefined): void;
  /** Ends the prepared new secondary, if any. */
  dropPrepared(): Promise<void>;
  /** Fails unless the prepared new secondary is in COLO, as a secondary. */
  checkPreparedInColo(): Promise<void>;
  /** The prepared new secondary becomes our QEMU: recorded as ours, its monitor and events ours, the core told. */
  adoptPrepared(): Promise<number>;
  /** Attaches to our (new) QEMU and tells the core what it found. */
  attach(): Promise<void>;
}

export interface ProcedureEvents {
  onUpdate?: (what: string) => void;
  onMirror?: (m: MirrorProgress) => void;
}

export interface ProcedurePlan {
  /** The procedure's name in errors (ColoStepError). */
  name: string;
  steps: Step[];
  /** The QEMU it started, once its steps ran (restart, prepare-secondary, adopt-secondary). */
  pid(): number | undefined;
  /** After a failed step: what the procedure must not leave behind (prepare-secondary). */
  cleanup(): Promise<void>;
  /** Once its steps are run, whatever the outcome. */
  close(): void;
}

function plan(name: string, steps: Step[], more: Partial<Pick<ProcedurePlan, 'pid' | 'cleanup' | 'close'>> = {}): ProcedurePlan {
  return { name, steps, pid: more.pid ?? (() => undefined), cleanup: more.cleanup ?? (async () => {}), close: more.close ?? (() => {}) };
}

function nodesOf(h: ProcedureHost): { s: PairState; me: NodeState; peer: NodeState } {
  const s = h.pair();
  const me = s.nodes.find((n) => n.name === h.name);
  const peer = s.nodes.find((n) => n.name !== h.name);
  if (!me || !peer) throw new LockstepError(`node "${h.name}" is not in the pair's record`);
  return { s, me, peer };
}

/** The steps of procedure `p` on this node (the same list for the same procedure and pair record). */
export function procedurePlan(p: Procedure, h: ProcedureHost, ev: ProcedureEvents = {}): ProcedurePlan {
  switch (p.kind) {
    case 'primary-failover':
      return plan(PRIMARY_FAILOVER, primaryFailoverSteps(h.qmp(), { yank: p.yank }));
    case 'takeover': {
      const { s, me, peer } = nodesOf(h);
      const qmp = h.qmp();
      return plan(SECONDARY_FAILOVER, [
        ...secondaryTakeoverSteps(qmp, s, me, peer, { yank: p.yank, onStep: ev.onUpdate }),
        // A VM we had stopped (fenced) runs again as the only one.
        ...(p.resume ? [contStep(qmp)] : []),
      ]);
    }
    case 'fence': {
      const qmp = h.qmp();
      const links = p.yank;
      return plan('fence', [
        ...(links
          ? [
              {
                name: `yank the links ${links === 'to-primary' ? 'to the primary' : 'to the secondary'}, the COLO stream among them`,
                timeoutMs: 2 * QMP_STEP_MS,
                run: async () => {
                  const yanked = await yankLinks(qmp, links);
                  // A checkpoint would start a stopped VM again (colo.c: vm_start at its end): the stream must be broken first.
                  const mig = await qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs: QMP_STEP_MS }).catch(() => ({ status: undefined }));
                  if (mig.status === 'colo' && !yanked.includes('migration')) throw new LockstepError(`fencing: the COLO stream could not be yanked (yanked: ${yanked.join(', ') || 'nothing'}), so a checkpoint could start our VM again`);
                },
              },
            ]
          : []),
        { name: 'stop', timeoutMs: QMP_STEP_MS, run: () => qmp.execute('stop', undefined, { timeoutMs: QMP_STEP_MS }) },
      ]);
    }
    case 'unfence': {
      // A take-back that could not let the VM run left a live resume's migration paused (colo/resume.ts).
      const qmp = h.qmp();
      return plan('unfence', [cancelPausedMigrationStep(qmp), contStep(qmp)]);
    }
    case 'yank':
      return plan('yank', [yankStep(h.qmp(), p.links)]);
    case 'restart': {
      const { s } = nodesOf(h);
      let pid: number | undefined;
      return plan(
        RESTART,
        [
          endOurQemuStep(h, 'replaced by a restart from our disk'),
          ...restartAloneSteps(h.config, s, h.name, (n) => (pid = n.pid)),
          { name: 'attach to the new QEMU', timeoutMs: ATTACH_STEP_MS, run: () => h.attach() },
        ],
        { pid: () => pid },
      );
    }
    case 'resume': {
      const { s } = nodesOf(h);
      const qmp = h.qmp();
      const pp = planPair(h.config, s.runtime, h.name);
      const t0 = performance.now();
      const r = resumeOnSurvivorProcedure(h.config, qmp, pp, { ...ev, live: h.canPauseIntoColo(), mayRunAlone: () => planted('live-switchover-without-lease') || h.mayRunAlone() });
      return plan(
        RESUME_ON_SURVIVOR,
        [
          ...r.steps,
          {
            name: 'record the resync in the pair\'s state',
            timeoutMs: QMP_STEP_MS,
            run: async () => void recordResync(h.config, pp, p.targetPid, { ms: performance.now() - t0, ...r.figures() }),
          },
        ],
        { close: r.close },
      );
    }
    case 'abort-resume':
      return plan(
        TAKE_BACK_RESUME,
        takeBackResumeSteps(h.qmp(), [], { cont: p.cont, stopFirst: !planted('take-back-leaves-colo-running'), leavePaused: !planted('take-back-cancels-paused-migration') }),
      );
    case 'prepare-secondary': {
      const { s } = nodesOf(h);
      const prep = prepareSecondaryProcedure(h.config, s, p.primary, p.sizeBytes);
      return plan(
        PREPARE_SECONDARY,
        [
          endOurQemuStep(h, 'its disk is replaced by a resync'),
          { name: 'drop an earlier new secondary', timeoutMs: END_QEMU_STEP_MS, run: () => h.dropPrepared() },
          ...prep.steps,
          { name: 'keep the new secondary', timeoutMs: QMP_STEP_MS, run: async () => h.setPrepared(prep.prepared()) },
        ],
        { pid: () => h.prepared()?.proc.pid, cleanup: prep.cleanup },
      );
    }
    case 'drop-secondary':
      return plan('drop the new secondary', [{ name: 'end the new secondary', timeoutMs: END_QEMU_STEP_MS, run: () => h.dropPrepared() }]);
    case 'adopt-secondary': {
      let pid: number | undefined;
      return plan(
        'adopt the new secondary',
        [
          // On failure it stays prepared: the core drops it.
          { name: 'query-colo-status: the new secondary is in COLO', timeoutMs: QMP_STEP_MS, run: () => h.checkPreparedInColo() },
          { name: 'the new secondary becomes our QEMU', timeoutMs: QMP_STEP_MS, run: async () => void (pid = await h.adoptPrepared()) },
        ],
        { pid: () => pid },
      );
    }
  }
}

function contStep(qmp: QmpCommands): Step {
  return { name: 'cont', timeoutMs: QMP_STEP_MS, run: () => qmp.execute('cont', undefined, { timeoutMs: QMP_STEP_MS }) };
}

function endOurQemuStep(h: ProcedureHost, why: string): Step {
  return { name: `end our QEMU (${why})`, timeoutMs: END_QEMU_STEP_MS, run: () => h.endOurQemu(why) };
}
