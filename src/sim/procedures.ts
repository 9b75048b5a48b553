/**
 * The procedures, run step by step: the simulator builds the very step lists
 * the agent runtime runs (node/procedures.ts, from colo/ and pair/) and
 * models each step, by its name, on the simulated QEMUs and hosts. A step
 * whose runtime version checks first whether QEMU already shows its effect
 * (its `done`) has the same check here; a step's bound is its own timeoutMs.
 * A list with a step the model does not know fails loudly (stepModel), and
 * test/unit/sim.test.ts checks every list of every procedure against the
 * models.
 *
 * Faults on steps: while faults last, a step may fail before it takes effect
 * or after (its reply lost: a QMP timeout), and on a host with the qmp-late
 * fault a command may take effect only after the runtime gave up on it.
 */
import { IDS } from '../qemu/cmdline.js';
import { procedurePlan } from '../node/procedures.js';
import type { Procedure } from '../node/core/types.js';
import type { Step } from '../colo/steps.js';
import { MIRROR_STALL_MS } from '../pair/resync.js';
import { RESUME_STEP_MS } from '../colo/resume.js';
import { unaskedHost } from './setup.js';
import { planted } from '../node/mutants.js';
import { mayBeginAlone } from '../node/core/core.js';
import type { World, Host } from './world.js';
import type { SimQemu } from './qemu.js';
import type { SimAgent } from './agents.js';
import type { NodeName } from './schedule-types.js';

/** The longest the runtime waits for one QMP command's reply within a step (the resume's; a failover's steps are bounded at 5 s). */
const QMP_COMMAND_MS = RESUME_STEP_MS;

export interface StepContext {
  w: World;
  h: Host;
  procedure: Procedure;
  /** The step's name. */
  name: string;
}

export interface StepModel {
  /** Which QEMU the step talks to: ours, the new secondary we prepared, or none (the host's own work). */
  on: 'ours' | 'prepared' | 'none';
  /** Out of band (answered while the main loop is stuck). */
  oob?: boolean;
  /** The runtime's check before the step: its effect is already in place. */
  done?: (q: SimQemu, c: StepContext) => boolean;
  /** The runtime's own check before it sends anything (not QEMU's): a string fails the step, nothing sent. */
  precheck?: (c: StepContext) => string | undefined;
  /** Takes effect. A string: QEMU's error; 'wait': not yet, asked again within the step's bound. */
  run: (q: SimQemu | null, c: StepContext) => string | void | 'wait';
  /** How long the step takes in the model beyond QMP's round trip, at most (ms). */
  ms?: number;
}

const objectDel: StepModel = {
  on: 'ours',
  done: (q, c) => !q.objects.has(objectId(c)),
  run: (q, c) => {
    const id = objectId(c);
    q!.objects.delete(id);
    // [compare] colo-compare gone: what it held leaves (finalize flushes it).
    if (id === IDS.compare) c.w.client.released(q!);
  },
};

/** A take-back that may not let the VM run: it leaves a live resume's migration paused before its switchover (colo/resume.ts). */
function leavesPaused(c: StepContext): boolean {
  return c.procedure.kind === 'abort-resume' && !c.procedure.cont && !planted('take-back-cancels-paused-migration');
}

/** The object, chardev or node a step names (its last word). */
function lastWord(c: StepContext): string {
  return c.name.split(' ').at(-1)!;
}
const objectId = lastWord;

/**
 * [live] The switchover of a migration whose last pass QEMU has made (the VM stopped): the device state goes over and
 * COLO starts, the VM running again in it; or, the new secondary gone or cut off, the migration fails and the VM runs
 * again alone.
 */
function switchIntoColo(c: StepContext, pq: SimQemu, t: SimQemu): void {
  c.w.after(c.w.rng.proc.range(5, 50), () => {
    if (pq.migration !== 'active' || !pq.alive) return;
    if (!t.alive || !t.incoming || !c.w.net.up('replication')) return c.w.qemu.migrationFailed(pq, 'the switchover into COLO failed');
    pq.lastPass = null;
    // [colo.c] the first checkpoint's vm_start: RESUME on both ends.
    c.w.qemu.runState(pq, false);
    c.w.qemu.runState(t, false);
    c.w.qemu.startSession(pq.node, t.node, pq, t);
  });
}

/** The models, by step name. Order matters: the first that matches is the step's. */
const MODELS: Array<[RegExp, StepModel]> = [
  // ---- yank ([freeze]: out of band) ----
  [/^yank the links to the new secondary$/, { on: 'ours', oob: true, done: (q) => q.mirror === null && q.migration !== 'active' && q.migration !== 'pre-switchover', run: (q, c) => c.w.qemu.yank(q!) }],
  [/^yank the links to the (primary|secondary)(, the COLO stream among them)?$/, { on: 'ours', oob: true, run: (q, c) => c.w.qemu.yank(q!) }],
  // ---- Primary Failover and the take-back ----
  [/^x-blockdev-change remove replication child$/, { on: 'ours', done: (q) => q.replication !== 'child', run: (q) => void (q!.replication = 'node') }],
  [/^drive_del replication0$/, { on: 'ours', done: (q) => q.replication === 'none', run: (q) => void (q!.replication = 'none') }],
  [/^object-del \S+$/, objectDel],
  [/^x-colo-lost-heartbeat$/, { on: 'ours', run: (q, c) => c.w.qemu.leaveColo(q!) }],
  [
    /^primary failover, if the resume reached COLO$/,
    {
      on: 'ours',
      run: (q, c) => {
        if (q!.colo !== 'primary') return;
        c.w.qemu.yank(q!);
        q!.replication = 'none';
        for (const id of [IDS.compare, IDS.iothread, IDS.filterMirror, IDS.redirectorIn, IDS.redirectorOut]) q!.objects.delete(id);
        c.w.qemu.leaveColo(q!);
      },
    },
  ],
  [/^block-job-cancel$/, { on: 'ours', run: (q) => void (q!.mirror = null) }],
  // [live] a migration paused before its switchover is let go and cancelled: a VM QEMU stopped for the last pass runs
  // again. A take-back that may not let the VM run leaves it paused (and its capabilities on: QEMU changes none then).
  [
    /^migrate_cancel$/,
    {
      on: 'ours',
      run: (q, c) => {
        if (q!.migration === 'pre-switchover' && leavesPaused(c)) return;
        if (q!.migration === 'active' || q!.migration === 'pre-switchover') c.w.qemu.migrationFailed(q!, 'migrate_cancel');
      },
    },
  ],
  [/^x-colo and pause-before-switchover off$/, { on: 'ours', run: (q, c) => void ((q!.migration === 'pre-switchover' && leavesPaused(c)) || ((q!.xColo = false), (q!.pauseBeforeSwitchover = false))) }],
  [/^migrate_cancel of a migration paused before its switchover$/, { on: 'ours', done: (q) => q.migration !== 'pre-switchover', run: (q, c) => c.w.qemu.migrationFailed(q!, 'migrate_cancel') }],
  // ---- Secondary Failover ----
  [/^tap \S+ on bridge \S+(, \S+ off)?$/, { on: 'none', run: (_q, c) => void (c.h.tapOn = true) }],
  [/^nbd-server-stop$/, { on: 'ours', run: (q) => void (q!.nbdServer = false) }],
  [/^chardev-remove \S+$/, { on: 'ours', done: (q, c) => !q.chardevs.has(lastWord(c)), run: (q, c) => void q!.chardevs.delete(lastWord(c)) }],
  [/^chardev-add \S+$/, { on: 'ours', done: (q, c) => q.chardevs.has(lastWord(c)), run: (q, c) => void q!.chardevs.add(lastWord(c)) }],
  [/^announce-self$/, { on: 'ours', run: () => {} }],
  // ---- fence, unfence ----
  // [live] refused during a migration's last pass (qmp_cont: "Migration is not finalized yet").
  [/^cont$/, { on: 'ours', run: (q, c) => (q!.lastPass ? 'Migration is not finalized yet' : c.w.qemu.runState(q!, false)) }],
  [/^stop$/, { on: 'ours', run: (q, c) => c.w.qemu.runState(q!, true) }],
  // ---- restart ----
  [/^end our QEMU \(.*\)$/, { on: 'none', run: (_q, c) => void (c.h.qemu && c.w.qemu.end(c.h.qemu, true, 'ended by its agent for a restart or resync')) }],
  [
    /^start the VM alone from .*$/,
    {
      on: 'none',
      ms: 300,
      run: (_q, c) => {
        // launchAlone: the process, its monitor, cont.
        const q = c.w.qemu.create(c.h.name, 'alone');
        c.h.qemu = q;
        c.w.trace(`${c.h.name}: QEMU ${q.pid} starts alone`);
      },
    },
  ],
  [
    /^attach to the new QEMU$/,
    {
      on: 'ours',
      run: (q, c) => {
        const ag = c.h.agent;
        if (!ag) return 'no agent';
        ag.attached = q!.pid;
        c.w.agents.input(c.h.name, { t: 'qemu-found', found: c.w.agents.found(q) });
      },
    },
  ],
  // ---- a new secondary (the target of a resync) ----
  [/^drop an earlier new secondary$|^end the new secondary$/, { on: 'none', run: (_q, c) => void (c.h.prepared && c.w.qemu.end(c.h.prepared, true, 'the new secondary is dropped')) }],
  [
    /^new replica and buffers for \S+$/,
    {
      on: 'none',
      run: (_q, c) => {
        if (c.procedure.kind !== 'prepare-secondary') return 'not a resync';
        c.w.check.resyncTowards(c.h, c.procedure.primary as NodeName);
        c.h.disk = new Set();
        c.h.ownSinceCheckpoint.clear();
      },
    },
  ],
  [/^tap \S+ off bridge \S+$/, { on: 'none', run: (_q, c) => void (c.h.tapOn = false) }],
  [
    /^start a new secondary on \S+$/,
    {
      on: 'none',
      ms: 200,
      run: (_q, c) => {
        const q = c.w.qemu.create(c.h.name, 'incoming');
        c.h.prepared = q;
        c.w.trace(`${c.h.name}: new secondary ${q.pid} starts, waiting for its migration`);
      },
    },
  ],
  [/^nbd-server-start$/, { on: 'prepared', run: () => {} }],
  [/^nbd-server-add parent0$/, { on: 'prepared', run: (q) => void (q!.nbdServer = true) }],
  [/^keep the new secondary$/, { on: 'none', run: () => {} }],
  // ---- resume replication (on the survivor) ----
  [
    /^drive-mirror to /,
    {
      on: 'ours',
      done: (q) => q.mirror?.ready === true,
      run: (q, c) => {
        const t = c.w.hosts[c.h.peer].prepared;
        if (!q!.mirror) {
          if (!t?.alive || !t.incoming || !t.nbdServer) return 'the new secondary\'s NBD export cannot be reached';
          q!.mirror = { target: t, startedAt: c.w.now, ready: false, stalledSince: null };
        }
        const m = q!.mirror;
        if (!m.target.alive) return 'the disk mirror ended before it was in sync (the new secondary\'s NBD export went away?)';
        // [resync] a cut cable stalls the mirror; no progress for MIRROR_STALL_MS → given up.
        if (!c.w.net.up('replication') || m.stalledSince === -Infinity) {
          m.stalledSince ??= c.w.now;
          if (c.w.now - m.stalledSince > MIRROR_STALL_MS) return `the disk mirror made no progress for ${MIRROR_STALL_MS / 1000} s`;
          return 'wait';
        }
        m.stalledSince = null;
        if (c.w.now - m.startedAt < 300) return 'wait';
        m.ready = true;
      },
    },
  ],
  [
    /^block-job-cancel resync$/,
    {
      on: 'ours',
      run: (q, c) => {
        const m = q!.mirror;
        if (!m) return 'the mirror job is gone before it was ended: whether the new secondary\'s disk is in sync is unknown';
        q!.mirror = null;
        const th = c.w.hosts[m.target.node];
        if (!m.ready || !m.target.alive || !c.w.net.up('replication') || m.stalledSince !== null) return 'the mirror\'s final pass failed: the new secondary\'s disk is not in sync';
        // The final pass can fail (the target's disk; a link that drops): BLOCK_JOB_COMPLETED with an error (resume.ts).
        if ((th.diskErrors && c.w.now < th.diskErrors.until) || (c.w.faultsOn() && c.w.rng.proc.chance(c.w.sched.stepFailP / 2))) return 'the mirror\'s final pass failed: Input/output error';
        th.disk = new Set(c.h.disk);
      },
    },
  ],
  [
    /^drive_add replication child$/,
    {
      on: 'ours',
      done: (q) => q.replication !== 'none',
      run: (q) => void (q!.replication = 'node'),
    },
  ],
  [/^x-blockdev-change attach replication child$/, { on: 'ours', done: (q) => q.replication === 'child', run: (q) => void (q!.replication = 'child') }],
  [/^object-add \S+ \S+$/, { on: 'ours', done: (q, c) => q.objects.has(lastWord(c)), run: (q, c) => void q!.objects.add(lastWord(c)) }],
  [/^migrate-set-parameters tls-creds \S+$/, { on: 'ours', done: (q) => q.migrationTlsClient, run: (q) => void (q!.migrationTlsClient = true) }],
  [/^migrate-set-capabilities x-colo$/, { on: 'ours', done: (q) => q.xColo, run: (q) => void (q!.xColo = true) }],
  // ---- the live order of resume replication ([live] in qemu.ts) ----
  [/^migrate-set-parameters (tls-creds \S+, )?max-bandwidth \d+, downtime-limit \d+$/, { on: 'ours', run: (q, c) => void (c.name.includes(' tls-creds ') && (q!.migrationTlsClient = true)) }],
  [
    /^migrate-set-capabilities x-colo, pause-before-switchover$/,
    { on: 'ours', done: (q) => q.xColo && q.pauseBeforeSwitchover, run: (q) => void ((q!.xColo = true), (q!.pauseBeforeSwitchover = true)) },
  ],
  [
    /^migrate, the VM running$/,
    {
      on: 'ours',
      done: (q) => q.migration === 'active' || q.migration === 'pre-switchover' || (q.migration === 'colo' && q.colo === 'primary'),
      run: (q, c) => {
        const t = c.w.hosts[c.h.peer].prepared;
        if (c.w.qemu.migrationBusy(q!)) return 'There\'s a migration process in progress';
        if (!t?.alive || !t.incoming || !c.w.net.up('replication')) return 'migration to the new secondary failed';
        q!.migration = 'active';
        const pq = q!;
        // The RAM goes over while the VM runs (and dirties some of it again); then QEMU stops the VM for the last pass.
        c.w.after(c.w.rng.proc.range(500, 3000), () => {
          if (pq.migration !== 'active' || !pq.alive) return;
          if (!t.alive || !t.incoming || !c.w.net.up('replication')) return c.w.qemu.migrationFailed(pq, 'the new secondary cannot be reached');
          pq.lastPass = { ranBefore: !pq.paused };
          // [migration.c] vm_stop_force_state: STOP only where the VM ran.
          c.w.qemu.runState(pq, true);
          if (pq.pauseBeforeSwitchover) {
            pq.migration = 'pre-switchover';
            return;
          }
          // Without the pause: straight on into COLO.
          switchIntoColo(c, pq, t);
        });
      },
    },
  ],
  [
    /^the RAM copied while the VM runs, until QEMU stops it for the last pass and pauses before the switchover$/,
    {
      on: 'ours',
      done: (q) => q.migration === 'pre-switchover',
      run: (q) => (q!.migration === 'pre-switchover' ? undefined : q!.migration === 'active' ? 'wait' : `the migration to the new secondary ended (${q!.migration}) before its switchover into COLO`),
    },
  ],
  [
    /^migrate-continue pre-switchover: the switchover into COLO$/,
    {
      on: 'ours',
      done: (q) => q.migration !== 'pre-switchover' && (q.migration === 'active' || (q.migration === 'colo' && q.colo === 'primary')),
      // The runtime asks its core first: the VM may run alone now (colo/resume.ts).
      precheck: (c) => {
        const core = c.h.agent?.driver.core;
        return core && !mayBeginAlone(core) && !planted('live-switchover-without-lease') ? 'the VM may not run alone now: the switchover waits' : undefined;
      },
      run: (q, c) => {
        if (q!.migration !== 'pre-switchover') return `Migration not in expected state: ${q!.migration}`;
        q!.migration = 'active';
        const t = c.w.hosts[c.h.peer].prepared;
        if (!t) return void c.w.after(1, () => q!.migration === 'active' && c.w.qemu.migrationFailed(q!, 'the new secondary is gone'));
        switchIntoColo(c, q!, t);
      },
    },
  ],
  [
    /^migrate$/,
    {
      on: 'ours',
      done: (q) => q.migration === 'active' || (q.migration === 'colo' && q.colo === 'primary'),
      run: (q, c) => {
        const t = c.w.hosts[c.h.peer].prepared;
        if (c.w.qemu.migrationBusy(q!)) return 'There\'s a migration process in progress';
        if (!t?.alive || !t.incoming || !c.w.net.up('replication')) return 'migration to the new secondary failed';
        q!.migration = 'active';
        const pq = q!;
        // The RAM goes over with the VM stopped ([resync]: ~0.8 s for the demo guest).
        c.w.after(c.w.rng.proc.range(300, 1000), () => {
          if (pq.migration !== 'active' || !pq.alive) return;
          if (!t.alive || !t.incoming || !c.w.net.up('replication')) {
            pq.migration = 'cancelled';
            return;
          }
          // [colo.c] the first checkpoint's vm_start: RESUME on both ends.
          c.w.qemu.runState(pq, false);
          c.w.qemu.runState(t, false);
          c.w.qemu.startSession(pq.node, t.node, pq, t);
        });
      },
    },
  ],
  [
    /^migration to the new secondary, until the VM runs again in COLO$/,
    {
      on: 'ours',
      done: (q) => q.colo === 'primary' && q.migration === 'colo' && !q.paused,
      run: (q) => (q!.migration === 'colo' && q!.colo === 'primary' && !q!.paused ? undefined : q!.migration === 'active' ? 'wait' : 'the migration to the new secondary failed'),
    },
  ],
  [/^COLO running as primary$/, { on: 'ours', run: (q) => (q!.colo === 'primary' && q!.migration === 'colo' ? undefined : 'COLO does not run: not a primary') }],
  [
    /^first checkpoint$/,
    {
      on: 'ours',
      run: (q, c) => {
        const s = c.w.qemu.session;
        if (!s || s.pq !== q || s.over) return 'COLO ended before the first checkpoint';
        return s.lastCheckpointAt > s.startedAt ? undefined : 'wait';
      },
    },
  ],
  [/^record the resync in the pair's state$/, { on: 'none', run: () => {} }],
  // ---- adopt the new secondary ----
  [/^query-colo-status: the new secondary is in COLO$/, { on: 'prepared', run: (q) => (q!.colo === 'secondary' && !q!.broken ? undefined : `the new secondary is not in COLO (${q!.colo})`) }],
  [
    /^the new secondary becomes our QEMU$/,
    {
      on: 'prepared',
      run: (q, c) => {
        const h = c.h;
        h.qemu = q;
        h.prepared = null;
        const ag = h.agent;
        if (!ag) return 'no agent';
        ag.attached = q!.pid;
        const found = c.w.agents.found(q);
        c.w.after(0.5, () => h.agent === ag && c.w.agents.input(h.name, { t: 'qemu-found', found }));
      },
    },
  ],
];

/** The model of a step, by its name (the prepare's QMP steps talk to the new secondary). Throws for a step the model does not know. */
export function stepModel(p: Procedure, name: string): StepModel {
  const hit = MODELS.find(([re]) => re.test(name));
  if (!hit) throw new Error(`the simulator has no model of step "${name}" (procedure ${p.kind}): add one to sim/procedures.ts`);
  const m = hit[1];
  // A new secondary's start-up steps run once, on a fresh QEMU, without checks (colo/startup.ts).
  if (p.kind === 'prepare-secondary' && m.on === 'ours') return { on: 'prepared', run: m.run, ...(m.ms !== undefined ? { ms: m.ms } : {}) };
  return m;
}

/** The take-back's steps after its first are best effort: a failure of one is reported, not a failure of the list (colo/resume.ts). */
function tolerant(p: Procedure, index: number): boolean {
  return p.kind === 'abort-resume' && index > 0;
}

export class Procedures {
  /** Step lists per node and procedure, as the runtime builds them (built once: they depend only on the pair's config). */
  private readonly lists = new Map<string, Step[]>();

  constructor(private readonly w: World) {}

  steps(node: NodeName, p: Procedure): Step[] {
    const key = `${node} ${JSON.stringify(p)}`;
    let l = this.lists.get(key);
    if (!l) {
      l = procedurePlan(p, unaskedHost(this.w.setup, node)).steps;
      this.lists.set(key, l);
    }
    return l;
  }

  /** Runs procedure `p` of agent `ag` from `fromStep`, reporting to it as the runtime would. */
  run(h: Host, ag: SimAgent, id: string, p: Procedure, fromStep: number): void {
    const w = this.w;
    const steps = this.steps(h.name, p);
    const models = steps.map((s) => stepModel(p, s.name));
    let i = fromStep;
    if (fromStep > steps.length) return w.check.violation('procedure-steps', `${h.name}: ${p.kind} resumed at step ${fromStep} of ${steps.length}`);
    // Steps a retry skips must really be done: the core recorded them as done.
    for (let k = 0; k < fromStep; k++) {
      const m = models[k]!;
      const q = this.target(h, m);
      if (m.done && q && !m.done(q, { w, h, procedure: p, name: steps[k]!.name })) {
        return w.check.violation('procedure-steps', `${h.name}: ${p.kind} skipped step "${steps[k]!.name}" (${k + 1}/${steps.length}), which is not done`);
      }
    }
    w.trace(`${h.name}: run ${p.kind}${fromStep ? ` from step ${fromStep + 1}` : ''}`);
    const mine = () => h.agent === ag && h.up;
    const running = { kind: p.kind, startedAt: w.now, record: h.record };
    h.procedure = running;
    const over = () => {
      if (h.procedure === running) h.procedure = null;
    };
    const fail = (error: string) => {
      over();
      w.trace(`${h.name}: ${p.kind} failed at step ${i + 1}/${steps.length} "${steps[i]?.name}": ${error}`);
      if (h.agent === ag) w.agents.input(h.name, { t: 'proc-failed', id, stepsDone: i, error });
    };
    const next = () => {
      if (!mine()) return over(); // the agent died: the procedure stops where it is
      if (h.paused) return void h.onResume.push(next);
      if (i >= steps.length) {
        over();
        const pid = p.kind === 'prepare-secondary' ? h.prepared?.pid : p.kind === 'restart' || p.kind === 'adopt-secondary' ? h.qemu?.pid : undefined;
        return w.agents.input(h.name, { t: 'proc-done', id, ...(pid !== undefined ? { pid } : {}) });
      }
      const st = steps[i]!;
      const m = models[i]!;
      const c = { w, h, procedure: p, name: st.name };
      const started = w.now;
      // A step may fail before it took effect, or after (its reply lost: a QMP timeout).
      const r = w.rng.proc.next();
      const failP = w.faultsOn() ? w.sched.stepFailP : 0;
      const failBefore = r < failP / 2;
      const failAfter = !failBefore && r < failP;
      // qmp-late: an in-band command takes effect only after the runtime gave up on it (out of band, the monitor's own
      // thread answers at once).
      const late = m.on !== 'none' && !m.oob && h.qmpLate !== null && w.now < h.qmpLate.until && w.rng.proc.chance(0.5);
      const attempt = () => {
        // A command already sent still runs in QEMU when its agent dies meanwhile; the next step is never sent.
        if (!h.up || (h.agent !== ag && w.now - started > 5)) return;
        if (h.paused) return void h.onResume.push(attempt);
        const q = this.target(h, m);
        if (m.on !== 'none' && !q?.alive) return fail(m.on === 'prepared' ? 'the new secondary is not started' : 'not attached to our QEMU');
        if (q && m.on !== 'none' && !w.qemu.responsive(q, m.oob === true)) {
          if (w.now - started >= st.timeoutMs) return fail(`step "${st.name}" timed out after ${st.timeoutMs} ms`);
          return void w.after(50, attempt);
        }
        // In-band commands sent before this one, whose replies never came, take effect first.
        if (q && !m.oob) w.qemu.runLate(q);
        if (failBefore && !tolerant(p, i)) return fail(`step "${st.name}": injected error`);
        if (m.precheck && !(m.done && q && m.done(q, c))) {
          const refused = m.precheck(c);
          if (refused !== undefined) return fail(refused);
        }
        if (late && q) {
          // The reply does not come within the command's bound; the effect lands later, or before the next command.
          const boundMs = Math.min(st.timeoutMs, QMP_COMMAND_MS);
          const effect = () => {
            if (q.alive && !(m.done && m.done(q, c))) {
              w.trace(`${h.name}: step "${st.name}" of ${p.kind} takes effect now, after its timeout`);
              h.effectOf = running;
              h.effectAt = w.now;
              m.run(q, c);
            }
          };
          q.late.push(effect);
          w.after(boundMs + w.rng.proc.range(0, 5000), () => {
            const k = q.late.indexOf(effect);
            if (k >= 0) q.late.splice(0, k + 1).forEach((fn) => fn());
          });
          return void w.after(boundMs, () => fail(`step "${st.name}": its QMP command timed out after ${boundMs} ms`));
        }
        // The runtime's check: already done → skipped (an idempotent retry).
        if (!(m.done && q && m.done(q, c))) {
          let res: string | void | 'wait';
          try {
            h.effectOf = running;
            h.effectAt = w.now;
            res = m.run(q ?? null, c);
          } catch (err) {
            res = (err as Error).message;
          }
          if (res === 'wait') return void w.after(50, () => (w.now - started > st.timeoutMs ? fail(`step "${st.name}" timed out after ${st.timeoutMs} ms`) : attempt()));
          if (typeof res === 'string' && !tolerant(p, i)) return fail(res);
          if (typeof res === 'string') w.trace(`${h.name}: ${p.kind}: "${st.name}" could not be undone: ${res}`);
        }
        if (failAfter && !tolerant(p, i)) return fail(`step "${st.name}": reply lost (it took effect)`);
        i++;
        if (h.agent === ag) w.agents.input(h.name, { t: 'proc-progress', id, stepsDone: i, step: st.name });
        w.after(w.rng.proc.range(0.5, m.ms ?? 10), next);
      };
      w.after(w.rng.proc.range(0.5, 5), attempt);
    };
    w.after(0.1, next);
  }

  private target(h: Host, m: StepModel): SimQemu | null {
    return m.on === 'ours' ? h.qemu : m.on === 'prepared' ? h.prepared : null;
  }
}
