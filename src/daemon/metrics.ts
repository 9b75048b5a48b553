/**
 * The daemon's Prometheus metrics (prom-client, a registry of its own). In
 * Prometheus' conventions: the `lockstep_` prefix, base units in the name
 * (seconds, bytes, a ratio), `_total` on counters, and a state as one 0/1
 * gauge per value of a label (`lockstep_vm_role{role="primary"} 1`), as
 * ha_cluster_exporter does. Counters count from the daemon's start (rate()
 * and increase() take restarts in their stride); gauges are read from the
 * VMs' status at each scrape. The README's table lists every name.
 *
 * Not exported, because QEMU does not give them: the reason of a checkpoint
 * (periodic or a miscompare: QEMU 7.2 and 10.0 emit no event and keep no
 * count of either), the bytes a checkpoint sends (query-migrate says only
 * "colo" during COLO), and the packets colo-compare compared or held (it
 * exposes no counter, only trace points).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { FAILOVER_REASONS, witnessReachable, type VmCounters, type FailoverReason } from './observe.js';
import type { VmStatus, HostInfo } from './api-types.js';

const ROLES = ['primary', 'secondary', 'alone', 'fenced', 'down'] as const;
const PHASES = ['defined', 'starting', 'running', 'failed', 'stopping', 'stopped'] as const;

/** What a scrape reads of the daemon at that moment. */
export interface MetricsSource {
  host: string;
  version: string;
  /** When the daemon started (wall clock, ms). */
  startedAtMs: number;
  healthProblems(): string[];
  vms(): Array<{ status: VmStatus; heartbeatTimeoutMs: number; leaseMs: number }>;
  sessions(): NonNullable<HostInfo['heartbeatSessions']>;
  /** The journal's size, the records appended and the writes and flushes that failed since the daemon started. */
  journal(): { bytes: number; records: number; writeErrors: number };
  dashboardClients(): number;
}

const s = (ms: number) => ms / 1000;

export class DaemonMetrics implements VmCounters {
  readonly registry = new Registry();
  private readonly checkpointsTotal: Counter<'vm'>;
  private readonly pauseSeconds: Histogram<'vm'>;
  private readonly failoversTotal: Counter<'vm' | 'kind' | 'reason'>;
  private readonly failoverDetection: Histogram<'vm'>;
  private readonly failoverProcedure: Histogram<'vm'>;
  private readonly fencesTotal: Counter<'vm' | 'reason'>;
  private readonly restartsTotal: Counter<'vm' | 'reason'>;
  private readonly resyncsTotal: Counter<'vm' | 'outcome'>;
  private readonly resyncSeconds: Histogram<'vm'>;
  private readonly decisionsTotal: Counter<'vm' | 'action'>;
  private readonly coloExitsTotal: Counter<'vm' | 'reason'>;
  private readonly droppedTotal: Counter<'vm'>;
  private readonly heartbeatGapSeconds: Histogram<'vm'>;
  private readonly witnessRoundTripSeconds: Histogram<'vm'>;
  private readonly operatorTotal: Counter<'command' | 'code'>;

  constructor(src: MetricsSource) {
    const registers = [this.registry];
    // The process: CPU, memory, event loop delay (a daemon whose loop stalls delays every heartbeat), file descriptors.
    collectDefaultMetrics({ register: this.registry });
    // Gauges that prom-client names with _total, against the conventions (promtool check metrics refuses them).
    for (const name of this.registry.getMetricsAsArray().map((m) => m.name)) if (name.endsWith('_total') && this.registry.getSingleMetric(name)?.constructor.name !== 'Counter') this.registry.removeSingleMetric(name);

    // ---- counters and histograms, moved by what the agents do ----
    this.checkpointsTotal = new Counter({ name: 'lockstep_checkpoints_total', help: "COLO checkpoints completed (QEMU's STOP then RESUME while in COLO), seen by this host's agent", labelNames: ['vm'], registers });
    this.pauseSeconds = new Histogram({
      name: 'lockstep_checkpoint_pause_seconds',
      help: 'How long each checkpoint stopped the VM on this host (STOP to RESUME)',
      labelNames: ['vm'],
      buckets: [0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5],
      registers,
    });
    this.failoversTotal = new Counter({
      name: 'lockstep_failovers_total',
      help: 'Failovers this host carried out: kind takeover (the primary was lost) or primary-failover (the secondary was lost), by reason',
      labelNames: ['vm', 'kind', 'reason'],
      registers,
    });
    this.failoverDetection = new Histogram({ name: 'lockstep_failover_detection_seconds', help: "From the VM's last checkpoint to the failover decision", labelNames: ['vm'], buckets: [0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30], registers });
    this.failoverProcedure = new Histogram({ name: 'lockstep_failover_procedure_seconds', help: 'From the failover decision to the VM carried on (lease, epoch, the QMP procedure)', labelNames: ['vm'], buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30], registers });
    this.fencesTotal = new Counter({ name: 'lockstep_fences_total', help: "Times this host stopped its VM so that it could not be a second writer, by reason", labelNames: ['vm', 'reason'], registers });
    this.restartsTotal = new Counter({ name: 'lockstep_restarts_total', help: "Times this host restarted the VM alone from its disk (the whole pair was down), by reason", labelNames: ['vm', 'reason'], registers });
    this.resyncsTotal = new Counter({ name: 'lockstep_resyncs_total', help: 'Resyncs this host ran as the survivor, by outcome (done: protected again; failed: given up, to be tried again)', labelNames: ['vm', 'outcome'], registers });
    this.resyncSeconds = new Histogram({ name: 'lockstep_resync_duration_seconds', help: 'From the decision to resync until protected again', labelNames: ['vm'], buckets: [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800], registers });
    this.decisionsTotal = new Counter({ name: 'lockstep_decisions_total', help: "The agent's decisions, by action", labelNames: ['vm', 'action'], registers });
    this.coloExitsTotal = new Counter({ name: 'lockstep_colo_exits_total', help: "COLO_EXIT events of this host's QEMU, by QEMU's reason (request, error)", labelNames: ['vm', 'reason'], registers });
    // What the agents' timings must allow for, measured where they run: the heartbeat timeout (default 500 ms) must
    // exceed the longest gap between two heartbeats, and the lease's stop margin (a quarter of the lease) the witness's
    // round trip.
    this.heartbeatGapSeconds = new Histogram({
      name: 'lockstep_heartbeat_gap_seconds',
      help: "The time between two heartbeats heard from the peer's agent, on any path (sent every heartbeatIntervalMs; silent after heartbeatTimeoutMs)",
      labelNames: ['vm'],
      buckets: [0.11, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2, 5],
      registers,
    });
    this.witnessRoundTripSeconds = new Histogram({
      name: 'lockstep_witness_round_trip_seconds',
      help: 'From a request to the witness (the lease, or how things stand) to its answer',
      labelNames: ['vm'],
      buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2],
      registers,
    });
    this.droppedTotal = new Counter({ name: 'lockstep_journal_records_dropped_total', help: 'Records of changes seen left out of the journal (more than a burst allows)', labelNames: ['vm'], registers });
    // The journal keeps its own counts; each scrape moves these counters by what changed since the last.
    const countedElsewhere = (name: string, help: string, read: () => number) => {
      let seen = 0;
      new Counter({
        name,
        help,
        registers,
        collect() {
          const n = read();
          if (n > seen) this.inc(n - seen);
          seen = n;
        },
      });
    };
    countedElsewhere('lockstep_journal_records_total', 'Records appended to the event journal since the daemon started', () => src.journal().records);
    countedElsewhere('lockstep_journal_write_errors_total', 'Journal writes and flushes to disk that failed since the daemon started', () => src.journal().writeErrors);
    this.operatorTotal = new Counter({ name: 'lockstep_operator_commands_total', help: "Operators' commands through the API, by command and the answer's HTTP status", labelNames: ['command', 'code'], registers });

    // ---- gauges, read from the VMs' status at each scrape ----
    const perVm = <L extends string>(name: string, help: string, labelNames: L[], fill: (set: (labels: Record<L, string>, v: number) => void, v: { status: VmStatus; heartbeatTimeoutMs: number; leaseMs: number }) => void) =>
      new Gauge<L | 'vm'>({
        name,
        help,
        labelNames: ['vm', ...labelNames],
        registers,
        collect() {
          this.reset();
          for (const v of src.vms()) fill((labels, x) => this.set({ ...labels, vm: v.status.name } as Record<L | 'vm', string>, x), v);
        },
      });
    const one = (set: (l: Record<never, string>, v: number) => void, x: number | null | undefined) => {
      if (x !== null && x !== undefined) set({}, x);
    };
    perVm('lockstep_vm_protected', 'The VM is protected as this host sees it: COLO runs and its checkpoints flow (1), or not (0)', [], (set, v) => one(set, v.status.agent?.protected ? 1 : 0));
    perVm('lockstep_vm_role', "This host's role for the VM: 1 for the current role, 0 for the others (none is 1 while no agent runs)", ['role'], (set, v) => {
      for (const r of ROLES) set({ role: r }, v.status.agent?.role === r ? 1 : 0);
    });
    perVm('lockstep_vm_phase', "The VM's phase on this host's daemon: 1 for the current one", ['phase'], (set, v) => {
      for (const p of PHASES) set({ phase: p }, v.status.phase === p ? 1 : 0);
    });
    perVm('lockstep_vm_degraded_conditions', "What this host's agent sees amiss about the VM, counted (status lists them in words)", [], (set, v) => one(set, v.status.agent?.degraded.length));
    perVm('lockstep_qemu_up', "This host's QEMU of the VM runs and its agent is attached to it", [], (set, v) => one(set, v.status.agent ? (v.status.agent.qemu.state === 'alive' ? 1 : 0) : null));
    perVm('lockstep_checkpoint_age_seconds', 'Since the last completed checkpoint (only while in COLO)', [], (set, v) => one(set, v.status.agent?.qemu.checkpointAgeMs == null ? null : s(v.status.agent.qemu.checkpointAgeMs)));
    perVm('lockstep_resync_in_progress', 'A resync of the VM runs from this host (1), or not (0)', [], (set, v) => one(set, v.status.agent ? (v.status.agent.work?.kind === 'reprotect' ? 1 : 0) : null));
    perVm('lockstep_resync_progress_ratio', "The disk mirror's progress of the resync under way (0 to 1; 0 when none)", [], (set, v) => {
      const m = v.status.agent?.work?.kind === 'reprotect' ? v.status.agent.work.mirror : null;
      one(set, v.status.agent ? (m ? Math.min(1, m.offset / Math.max(1, m.len)) : 0) : null);
    });
    perVm('lockstep_resync_running_seconds', 'Since the resync under way began (absent when none)', [], (set, v) => one(set, v.status.agent?.work?.kind === 'reprotect' ? s(v.status.agent.work.runningMs) : null));
    perVm('lockstep_heartbeat_path_up', "The peer's agent is heard on this heartbeat path (within the heartbeat timeout)", ['path'], (set, v) => {
      v.status.agent?.peer.paths.forEach((p, i) => set({ path: String(i + 1) }, p.lastHeardMs !== null && p.lastHeardMs < v.heartbeatTimeoutMs ? 1 : 0));
    });
    perVm('lockstep_heartbeat_last_seen_seconds', "Since the peer's agent was last heard on this path (absent if never)", ['path'], (set, v) => {
      v.status.agent?.peer.paths.forEach((p, i) => {
        if (p.lastHeardMs !== null) set({ path: String(i + 1) }, s(p.lastHeardMs));
      });
    });
    perVm('lockstep_heartbeat_round_trip_seconds', "The heartbeats' round trip to the peer's agent, newest", [], (set, v) => one(set, v.status.agent?.peer.rttMs == null ? null : s(v.status.agent.peer.rttMs)));
    perVm('lockstep_peer_hears_this_host', "The peer's agent says it hears this host's agent", [], (set, v) => one(set, v.status.agent ? (v.status.agent.peer.hearsUs ? 1 : 0) : null));
    perVm('lockstep_lease_held', "This host's agent holds the VM's writer lease at the witness", [], (set, v) => one(set, v.status.agent?.lease.witness ? (v.status.agent.lease.held ? 1 : 0) : null));
    perVm('lockstep_lease_remaining_seconds', "The writer lease's time left, as this host counts it (absent when not held)", [], (set, v) => one(set, v.status.agent?.lease.remainingMs == null ? null : s(v.status.agent.lease.remainingMs)));
    perVm('lockstep_witness_reachable', "The witness (the lease's arbiter) answers this host's agent (its last answer within the query interval and some slack)", [], (set, v) => {
      const r = v.status.agent ? witnessReachable(v.status.agent, v.leaseMs) : null;
      one(set, r === null ? null : r ? 1 : 0);
    });
    perVm('lockstep_witness_last_answer_seconds', "Since the witness's last answer (absent if never)", [], (set, v) => one(set, v.status.agent?.lease.witnessAnswerMs == null ? null : s(v.status.agent.lease.witnessAnswerMs)));
    perVm('lockstep_disk_epoch', "The generation of this host's disk epoch (it rises at each failover, restart and resync)", [], (set, v) => one(set, v.status.agent?.disk.epoch?.gen));
    perVm('lockstep_disk_epoch_pending', 'A new epoch is asked of the witness and not confirmed yet (1), or not (0)', [], (set, v) => one(set, v.status.agent ? (v.status.agent.disk.pending ? 1 : 0) : null));

    // ---- the host ----
    new Gauge({
      name: 'lockstep_host_info',
      help: "This host's name and lockstep's version (always 1)",
      labelNames: ['host', 'version'],
      registers,
      collect() {
        this.reset();
        this.set({ host: src.host, version: src.version }, 1);
      },
    });
    new Gauge({
      name: 'lockstep_daemon_healthy',
      help: "The daemon can do its work (1): its journal is writable and no VM's agent stopped on its own failure",
      registers,
      collect() {
        this.set(src.healthProblems().length === 0 ? 1 : 0);
      },
    });
    new Gauge({
      name: 'lockstep_daemon_start_time_seconds',
      help: 'When the daemon started (Unix time)',
      registers,
      collect() {
        this.set(src.startedAtMs / 1000);
      },
    });
    new Gauge({
      name: 'lockstep_vms',
      help: 'The VMs defined on this host, by phase',
      labelNames: ['phase'],
      registers,
      collect() {
        this.reset();
        const vms = src.vms();
        for (const p of PHASES) this.set({ phase: p }, vms.filter((v) => v.status.phase === p).length);
      },
    });
    const perSession = (name: string, help: string, value: (x: ReturnType<MetricsSource['sessions']>[number]) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['peer', 'path'],
        registers,
        collect() {
          this.reset();
          for (const x of src.sessions()) this.set({ peer: x.peer, path: x.path }, value(x));
        },
      });
    perSession('lockstep_heartbeat_session_up', "This host's heartbeat session with a peer host on one path is connected", (x) => (x.up ? 1 : 0));
    perSession('lockstep_heartbeat_session_vms', 'The VMs a heartbeat session carries now', (x) => x.vms.length);
    new Gauge({
      name: 'lockstep_journal_size_bytes',
      help: "The event journal's files, in bytes (bounded: rotated by size)",
      registers,
      collect() {
        this.set(src.journal().bytes);
      },
    });
    new Gauge({
      name: 'lockstep_dashboard_clients',
      help: "Live views connected to this daemon's stream (dashboards; bounded)",
      registers,
      collect() {
        this.set(src.dashboardClients());
      },
    });
  }

  /** The exposition text (Prometheus' text format 0.0.4) and its content type. */
  async text(): Promise<{ body: string; contentType: string }> {
    return { body: await this.registry.metrics(), contentType: this.registry.contentType };
  }

  // ---- VmCounters ----

  checkpoint(vm: string, pauseMs: number): void {
    this.checkpointsTotal.inc({ vm });
    this.pauseSeconds.observe({ vm }, s(pauseMs));
  }

  failover(vm: string, kind: string, reason: FailoverReason, detectionMs: number | null, procedureMs: number): void {
    this.failoversTotal.inc({ vm, kind, reason });
    if (detectionMs !== null) this.failoverDetection.observe({ vm }, s(detectionMs));
    this.failoverProcedure.observe({ vm }, s(procedureMs));
  }

  fence(vm: string, reason: string): void {
    this.fencesTotal.inc({ vm, reason });
  }

  restart(vm: string, reason: string): void {
    this.restartsTotal.inc({ vm, reason });
  }

  resync(vm: string, outcome: 'done' | 'failed', ms: number | null): void {
    this.resyncsTotal.inc({ vm, outcome });
    if (outcome === 'done' && ms !== null) this.resyncSeconds.observe({ vm }, s(ms));
  }

  decision(vm: string, action: string): void {
    this.decisionsTotal.inc({ vm, action });
  }

  coloExit(vm: string, reason: string): void {
    this.coloExitsTotal.inc({ vm, reason });
  }

  recordsDropped(vm: string, n: number): void {
    this.droppedTotal.inc({ vm }, n);
  }

  heartbeatGap(vm: string, gapMs: number): void {
    this.heartbeatGapSeconds.observe({ vm }, s(gapMs));
  }

  witnessRoundTrip(vm: string, ms: number): void {
    this.witnessRoundTripSeconds.observe({ vm }, s(ms));
  }

  operatorCommand(command: string, code: number): void {
    this.operatorTotal.inc({ command, code: String(code) });
  }

  /**
   * The counters of a VM start at 0 as soon as it is defined (a series that
   * appears only at its first increase is invisible to increase() and rate()).
   */
  initVm(vm: string): void {
    this.checkpointsTotal.inc({ vm }, 0);
    for (const outcome of ['done', 'failed']) this.resyncsTotal.inc({ vm, outcome }, 0);
    for (const kind of ['takeover', 'primary-failover']) for (const reason of FAILOVER_REASONS) this.failoversTotal.inc({ vm, kind, reason }, 0);
  }
}
