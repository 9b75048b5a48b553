/**
 * The agent core's vocabulary: its configuration, its state, every input it
 * takes and every effect it asks for. The core (core.ts) is a pure function
 * `step(state, input) → { state, effects }`; the runtime (../agent.ts) and the
 * simulator (../../sim/) are the only things that do I/O, and they feed what
 * happened back as inputs. Time is an input (`now`, monotonic ms).
 */
import type { Epoch } from '../../pair/epoch.js';
import type { PeerLinks } from '../../colo/failover.js';
import type { Heartbeat, PeerRequestBody, PeerReply, WitnessReply } from '../wire.js';

export type Role = 'primary' | 'secondary' | 'alone' | 'fenced' | 'down';

/** Fixed for the life of an agent; derived from the pair's config (coreConfig in ../timings.ts). */
export interface CoreConfig {
  name: string;
  peer: string;
  /** Heartbeat paths to the peer (≥ 1). */
  paths: number;
  /**
   * The heartbeat path that runs over the replication network (both ends on the nodes' replication addresses), if
   * another path runs elsewhere: its silence while the peer is heard on another path is a cut replication link.
   */
  replicationPath: number | null;
  heartbeatIntervalMs: number;
  /** No heartbeat on any path for this long: the peer is silent. */
  heartbeatTimeoutMs: number;
  /** A witness is configured (split-brain safety through its lease). */
  witness: boolean;
  leaseMs: number;
  /** Re-protect (resync the peer) and restart the VM by ourselves. */
  reprotect: boolean;
  /** The longest gap between completed checkpoints that is still normal, outside a checkpoint. */
  stallMs: number;
  /** The longest a checkpoint may keep our QEMU busy (its RAM over the replication link). */
  checkpointTimeoutMs: number;
  /** QEMU leaving a query unanswered this long (outside a checkpoint) counts as hung. */
  hungMs: number;
  /**
   * QEMU leaving an out-of-band query unanswered this long counts as frozen (its monitor's own thread answers those,
   * whatever the main loop does: only a stopped process, or a host that stopped it, does not).
   */
  frozenMs: number;
  /** How long a prepared new secondary waits for the survivor's word before it is dropped. */
  joinTimeoutMs: number;
  /** The size of the VM's disk (for a new secondary's replica). */
  diskSizeBytes: number;
}

/** What our QEMU is, as far as the agent knows. */
export interface QemuView {
  /** 'attaching': the runtime is still connecting to it; 'gone': no process. */
  state: 'attaching' | 'alive' | 'gone';
  /** Since when we try to attach (a QEMU whose main loop never answers is ended: attachBoundMs). */
  attachingSince: number;
  /** Its QMP monitor supports out-of-band commands (the watchdog's liveness probe and yank). */
  oob: boolean;
  /** A COLO_EXIT arrived since COLO last started. */
  coloExitAt: number | null;
  /** When our QEMU last completed a checkpoint (RESUME after STOP), or COLO started. */
  lastCheckpointAt: number;
  /** A checkpoint completed since we attached to this QEMU or COLO (re)started: until then we cannot claim protection. */
  checkpointSeen: boolean;
  /** A checkpoint began (STOP) and has not completed (RESUME) yet. */
  checkpointSince: number | null;
  /** We stopped it (fenced); it does not run guest code. */
  paused: boolean;
  /** When a procedure on it last ended: what a query sent before says of its run state counts for nothing. */
  procedureEndedAt: number;
  /** The watchdog's probes: an in-band query-status, and an out-of-band query-yank. */
  inband: { id: string; sentAt: number } | null;
  oobProbe: { id: string; sentAt: number } | null;
  lastInbandAt: number;
  lastOobAt: number;
  /** The watchdog yanked our links to the peer because the main loop was stuck. */
  yankedAt: number | null;
  killedAt: number | null;
  /** A resync left things behind on our QEMU (found at attach): to be taken back. */
  leftovers: boolean;
  /**
   * A primary: since when the secondary's replica misses a write of this COLO
   * session (QUORUM_REPORT_BAD of the replication child): the secondary's disk
   * is no longer an exact copy.
   */
  replicaBadAt: number | null;
  /**
   * A checkpoint completed (its RESUME seen) after the replica failed a write: the secondary's disk lacks that write
   * for good. Until then a failover to it loses nothing, as its VM goes on from the last checkpoint, which the
   * failed write is not part of (QEMU says QUORUM_REPORT_BAD as the write completes, and a checkpoint drains every
   * write before its RESUME, on the same monitor, in order).
   */
  replicaShort: boolean;
}

export interface DiskView {
  /** Our disk's committed epoch; undefined when unknown (missing or unreadable record). */
  epoch: Epoch | undefined;
  /** An epoch we asked the witness to record and have not heard back about. */
  pending: Epoch | undefined;
  /** A write of the record under way. */
  persisting: { id: string; epoch: Epoch | undefined; pending: Epoch | undefined } | null;
  /** Our disk's size, as last seen (a new secondary of a resync gets a replica of this size). */
  sizeBytes: number;
  /**
   * When our primary said our disk, its replica, missed a write it acknowledged (QUORUM_REPORT_BAD on its side):
   * such a disk never takes over, until a resync makes it whole. Kept on disk too (ReplicaNote): an agent started again
   * remembers it, from its start.
   */
  missedWriteAt: number | null;
  /**
   * When our primary said a write it forwarded to our disk failed (replicaExact false), checkpoint or not: our running
   * VM made that write itself and may take over, but our disk may lack it, so it restarts no VM before a resync. Kept
   * on disk too, like missedWriteAt.
   */
  forwardedWriteFailedAt: number | null;
}

/**
 * What a replica's disk may lack, kept on disk beside its record (disk.missedWriteAt and
 * disk.forwardedWriteFailedAt, whose times an agent started again takes as its own start).
 */
export interface ReplicaNote {
  missedWrite: boolean;
  forwardedWriteFailed: boolean;
}

export interface PathView {
  readonly up: boolean;
  readonly lastHeardAt: number | null;
  /**
   * The last ack of one of our heartbeats that came back on this path (the peer acks each on the path it came by):
   * what we send over it arrives. Acks that stop while the peer is heard on it: the path is cut one way, from us.
   */
  readonly lastAckAt: number | null;
}

export interface PeerView {
  paths: readonly PathView[];
  /** The peer agent's incarnation and the last heartbeat number taken from it. */
  boot: string | null;
  seq: number;
  /** Its newest heartbeat, and when it arrived. */
  hb: Heartbeat | null;
  hbAt: number | null;
  /** Since when the peer has said the same of itself (role, QEMU, work): how long it has not moved. */
  since: number | null;
  /**
   * Since when the peer has said that its VM does not run (its QEMU gone, or fenced), whatever it tried meanwhile: a
   * takeover that keeps failing changes `since` at each attempt, not this.
   */
  vmStoppedSince: number | null;
  rttMs: number | null;
  /**
   * When the peer was heard again after being silent on every path, or first heard from a new incarnation of its agent
   * (a restarted daemon): what a path said before then says nothing of it now, since its session may not be back yet.
   */
  heardAgainAt: number | null;
  /**
   * A direct probe, when every heartbeat path is silent: a primary asks whether the secondary's QEMU answers (its NBD
   * port accepts), a secondary with a witness whether the primary's host answers at all (ProbeWhat).
   */
  probe: { id: string; sentAt: number; what: ProbeWhat } | null;
  /** `sentAt`: when its probe went out (a result speaks only for a silence it was sent in: core.ts, probeResult). */
  probeResult: { alive: boolean; at: number; sentAt: number; what: ProbeWhat } | null;
}

/**
 * A probe of the peer (a TCP connect) that has no answer in this time says "no answer". A host that is up answers a
 * connect on the same link in well under a millisecond (an accept, or a reset from its kernel); 300 ms leaves room
 * for a loaded host and a lost SYN is retransmitted only after 1 s, so a probe on a lossy link may say "no answer":
 * a secondary then only asks the witness for the lease early, which it grants only once the primary's has run out.
 * The core sends its probe this long before the peer counts as silent, so that the answer is in by then.
 */
export const PROBE_TIMEOUT_MS = 300;

/**
 * What a probe of the peer asks, with a TCP connect to the VM's NBD port on the peer's replication address:
 * - `qemu`: does the secondary's QEMU answer (its NBD server accepts)?
 * - `host`: does the primary's host answer anything (an accept, or a refusal from its kernel)? No answer at all
 *   means the host is gone, or cut off from us.
 */
export type ProbeWhat = 'qemu' | 'host';

export interface LeaseView {
  /** Our own view: the lease is ours while now < until (counted from when we asked). */
  until: number;
  /** When we may ask next (renewal, or another try while taking over). */
  nextAskAt: number;
  /** When a node that holds no lease asks the witness next how things stand. */
  nextQueryAt: number;
  /** The witness's last answer of any kind (it is reachable). */
  lastAnswerAt: number | null;
  lastRefusal: { at: number; reason: string; holder: string | null } | null;
  /** The newest epoch the witness knows of our run (from its last answer). */
  newest: Epoch | null;
  /** When we last released the lease: a grant for a request sent before counts for nothing. */
  releasedAt: number;
}

/** A request we sent and whose reply we wait for. */
export interface Pending {
  id: string;
  to: 'peer' | 'witness';
  what: 'lease' | 'release' | 'query' | 'resync-prepare' | 'resync-done' | 'resync-abort';
  sentAt: number;
  /** After this, the request's purpose gives up (a late lease reply still counts, conservatively). */
  deadline: number;
  /** Lease requests: the epoch asked to be recorded. */
  next?: Epoch | null;
  /** Past its deadline (the work waiting for it was told); kept a while for a late lease reply. */
  expired?: boolean;
}

/**
 * Which of our QEMU's links to the peer a yank shuts (QMP yank, out of band):
 * those to the primary (we are, or were, its secondary: the incoming stream,
 * the proxy's sockets) or those to the secondary (the migration stream, the
 * proxy's sockets, the NBD client). colo/failover.ts names them.
 */
export type { PeerLinks };

export type Procedure =
  /** The secondary is gone: carry on alone ("Primary Failover"). */
  | { kind: 'primary-failover'; yank: boolean }
  /** The primary is gone: take the VM over ("Secondary Failover"); `resume`: the VM was stopped (fenced). */
  | { kind: 'takeover'; yank: boolean; resume: boolean }
  /** Stop our VM so that it cannot be a second writer (yank the links to the peer first if in COLO). */
  | { kind: 'fence'; yank: PeerLinks | null }
  /** Let our stopped VM run again. */
  | { kind: 'unfence' }
  /** The whole pair is down: start the VM alone from our disk (ending a stopped QEMU of ours first). */
  | { kind: 'restart' }
  /**
   * Resume replication towards the peer's new secondary ("Primary/Secondary resume replication").
   * `targetPid`: the new secondary's QEMU as its agent reported it, for the pair's record (0: not reported).
   */
  | { kind: 'resume'; targetPid: number }
  /**
   * Take a failed resume back on our QEMU; `cont`: let the VM run again (the resume may have stopped it), else stop
   * it (the lease ran out meanwhile: a VM may begin to run alone only while we hold it).
   */
  | { kind: 'abort-resume'; cont: boolean }
  /** Resync target: end our old QEMU, start a new secondary waiting for the survivor. */
  | { kind: 'prepare-secondary'; primary: string; sizeBytes: number }
  /** Resync target: end the prepared secondary (the resync was given up). */
  | { kind: 'drop-secondary' }
  /** Resync target: the survivor is in COLO with our new secondary: own it from now on. */
  | { kind: 'adopt-secondary' }
  /** Watchdog: our QEMU's main loop is stuck: yank its links to the peer, out of band. */
  | { kind: 'yank'; links: PeerLinks };

export type ProcedureKind = Procedure['kind'];

/** What the runtime found when it (re)attached to our QEMU. */
export interface QemuFound {
  /** No QEMU process of ours. */
  running: boolean;
  /** query-colo-status mode. */
  colo: 'primary' | 'secondary' | 'none';
  /** query-status: the VM is stopped (by us, or in a checkpoint) or waiting for an incoming migration. */
  runState: 'running' | 'paused' | 'inmigrate' | 'other';
  /** The primary's replication child is attached (Primary Failover not done yet). */
  replicationChild: boolean;
  /** The secondary's redirectors are there (Secondary Failover not done yet). */
  secondaryFilters: boolean;
  /** A resync left behind (mirror job, proxy objects, migration). */
  resumeLeftovers: boolean;
  oob: boolean;
  /** The size of the disk our VM uses, when the runtime could read it (a replica made after the agent started). */
  diskSizeBytes?: number;
}

/** The work under way: at most one at a time. */
export type Work =
  | {
      /** Become the only writer: lease, then a new epoch recorded at the witness, then the procedure. */
      kind: 'primary-failover' | 'takeover' | 'restart';
      phase: 'lease' | 'persist-pending' | 'record' | 'commit' | 'procedure';
      why: string;
      startedAt: number;
      /** Give up on the lease after this (takeover waits for the primary's lease to run out). */
      leaseDeadline: number;
      /** A stalled-stream takeover: a refusal means "stay secondary", not "fence". */
      stalled: boolean;
      procedure: Procedure;
      procId: string | null;
      /** When its procedure (last) began: the lease and the new epoch's record took until then. */
      procedureAt: number | null;
      /** The epoch this work records and commits before its procedure. */
      next: Epoch | null;
    }
  | { kind: 'fence' | 'unfence'; why: string; startedAt: number; procedure: Procedure; procId: string | null; from: Role }
  | {
      kind: 'reprotect';
      phase: 'asking' | 'resuming' | 'aborting';
      why: string;
      startedAt: number;
      /**
       * When the new COLO session ran our VM again (the RESUME after the resume stopped it). A COLO_EXIT from then on
       * is the new session's; one before is the old session's, whose COLO thread ended late.
       */
      coloSince: number | null;
      reqId: string | null;
      procId: string | null;
      step: string | null;
      mirror: { offset: number; len: number } | null;
      error: string | null;
      /** Asking: given up if the peer has not answered by then. */
      deadline: number;
      /** The new secondary's QEMU, as the peer's answer to our request named it. */
      targetPid: number | null;
      /** Aborting: whether the take-back lets the VM run again (else it stops it). */
      cont: boolean;
    }
  | {
      /** As the target of the peer's resync. */
      kind: 'join';
      phase: 'dropping' | 'preparing' | 'ready' | 'persisting' | 'adopting' | 'leaving';
      why: string;
      startedAt: number;
      /** The survivor's request being answered. */
      reqId: string;
      primary: string;
      epoch: Epoch;
      procId: string | null;
      /** Ready: dropped if the survivor says nothing until then. */
      deadline: number;
      /** The survivor's agent incarnation that asked: another one knows nothing of this resync. */
      peerBoot: string | null;
      /** Its heartbeats up to this one were sent before it asked. */
      peerSeq: number;
      /** The size of the replica the survivor asked for. */
      sizeBytes: number;
      pid: number | null;
    };

export type WorkKind = Work['kind'];

/** Retries of a kind of work after failures: back-off, and how far the procedure got. */
export interface Attempts {
  failures: number;
  notBefore: number;
  lastError: string | null;
  /** Steps of the procedure already done (a retry continues from there). */
  stepsDone: number;
  /** The new epoch this episode already raised (a retry does not raise it again). */
  raised?: Epoch;
  /** The procedure as first run: a retry runs the same steps (stepsDone counts in them). */
  procedure?: Procedure;
}

export interface Decision {
  at: number;
  action: string;
  why: string;
}

export interface CoreState {
  readonly cfg: CoreConfig;
  now: number;
  startedAt: number;
  /**
   * When this agent first knew what its QEMU is (attached to it): it says nothing before then (no heartbeat, no
   * lease request), so the start's grace counts from here too.
   */
  firstFoundAt: number | null;
  /** This agent's incarnation (heartbeats carry it). */
  boot: string;
  role: Role;
  roleSince: number;
  /** Why we fenced, and what we were before. */
  /** `foundStopped`: nothing was decided, our VM was only found stopped (a stop that took effect late, or at attach). */
  fence: { why: string; from: 'primary' | 'secondary' | 'alone'; at: number; foundStopped: boolean } | null;
  qemu: QemuView;
  disk: DiskView;
  peer: PeerView;
  lease: LeaseView;
  work: Work | null;
  attempts: Readonly<Partial<Record<string, Attempts>>>;
  pending: readonly Pending[];
  /** Our heartbeats: the next number, and when the recent ones were sent (for the round trip). */
  hbSeq: number;
  hbSent: ReadonlyArray<{ readonly seq: number; readonly at: number }>;
  nextHeartbeatAt: number;
  nextId: number;
  /** The newest decisions, newest last (bounded). */
  decisions: readonly Decision[];
  /** Why we wait, when nothing is to be done (for status; a decision is recorded when it changes). */
  waiting: string | null;
  /** After a resync: the new secondary's agent must learn our epoch (resync-done), told again until it answers. */
  handover: { epoch: Epoch; until: number } | null;
  /**
   * When an operator asked for a resync (lockstep resync NAME) and it has not
   * begun yet: it stands in for agents.reprotect once and skips the back-off;
   * every other rule of a resync still holds. Dropped when the resync begins
   * or we stop running the VM alone.
   */
  resyncAskedAt: number | null;
}

export type Input = { now: number } & (
  | { t: 'tick' }
  | { t: 'qemu-found'; found: QemuFound }
  /**
   * A QMP event; `ageMs`: how long before this input QEMU sent it (its QMP timestamp against the host's clock), which
   * is more than a moment when the agent could not read it (its host paused whole, its event loop blocked).
   */
  | { t: 'qemu-event'; event: 'STOP' | 'RESUME' | 'COLO_EXIT' | 'SHUTDOWN'; ageMs?: number }
  /**
   * QUORUM_REPORT_BAD: a child of our VM's disk quorum failed a write (block/quorum.c). With vote-threshold=1 the
   * write still completed on the other child: `replica`, the replication child (the secondary's replica missed it),
   * or `local`, our own disk.
   */
  | { t: 'quorum-bad'; child: 'replica' | 'local'; error: string }
  /** The QMP connection to our QEMU is gone; `processGone`: so is the process. */
  | { t: 'qemu-lost'; processGone: boolean }
  /** An answer to a query-qemu; in band, whether QEMU says the VM is stopped ('paused'; absent: another state). */
  | { t: 'qemu-answer'; id: string; paused?: boolean }
  | { t: 'peer-link'; path: number; up: boolean }
  | { t: 'peer-message'; path: number; msg: Heartbeat | { t: 'hback'; seq: number } | { t: 'req'; id: string; body: PeerRequestBody } | PeerReply }
  | { t: 'witness-reply'; reply: WitnessReply }
  | { t: 'proc-progress'; id: string; stepsDone: number; step: string; mirror?: { offset: number; len: number } }
  | { t: 'proc-done'; id: string; pid?: number }
  | { t: 'proc-failed'; id: string; stepsDone: number; error: string }
  | { t: 'disk-persisted'; id: string; ok: boolean; error?: string }
  | { t: 'probe-result'; id: string; alive: boolean }
  /** An operator asks for a resync now (when we run the VM alone). */
  | { t: 'operator-resync' }
);

/** An input without its time (the simulator and the runtime add `now` as they feed it). */
export type InputBody = Input extends infer I ? (I extends unknown ? Omit<I, 'now'> : never) : never;

export type Effect =
  | { t: 'send-peer'; path: number | 'all' | 'any'; msg: Heartbeat | { t: 'hback'; seq: number } | { t: 'req'; id: string; body: PeerRequestBody } | PeerReply }
  | { t: 'ask-witness'; id: string; ttlMs: number; disk: Epoch | null; next: Epoch | null }
  | { t: 'release-lease'; id: string }
  /** A node that does not hold the lease asks the witness how things stand (it is reachable; the newest epoch). */
  | { t: 'query-witness'; id: string; run: string | null; disk: Epoch | null }
  | { t: 'run'; id: string; procedure: Procedure; fromStep: number }
  | { t: 'query-qemu'; id: string; oob: boolean }
  | { t: 'kill-qemu'; why: string }
  | { t: 'persist-disk'; id: string; epoch: Epoch | undefined; pending: Epoch | undefined; why: string }
  /**
   * Writes, durably, what our primary said our disk, its replica, lacks (ReplicaNote), so that an agent started again
   * still knows it. Written whenever it changes; nothing is waited for (a write that fails is logged).
   */
  | { t: 'note-replica'; note: ReplicaNote; why: string }
  /** Probes the peer (ProbeWhat); reports probe-result, alive or not, within the driver's PROBE_TIMEOUT_MS. */
  | { t: 'probe-peer'; id: string; what: ProbeWhat }
  /** For the pair's record (state file) and the event journal. */
  | { t: 'record'; event: 'failover' | 'resync' | 'restart' | 'fence' | 'unfence'; detail: Record<string, string | number | boolean | null> }
  /** Every decision, with its reason: for logs, `status`, and the event journal. */
  | { t: 'decision'; action: string; why: string }
  | { t: 'log'; level: 'info' | 'warn' | 'error'; msg: string; fields?: Record<string, unknown> };

export interface Transition {
  state: CoreState;
  effects: Effect[];
}

/** What `status` shows of one agent: derived from the core state, nothing stored twice. */
export interface CoreStatus {
  node: string;
  role: Role;
  roleForMs: number;
  /** COLO is running and checkpoints flow, as far as this node can see. */
  protected: boolean;
  /** Everything that is not as it should be, each in words. */
  degraded: string[];
  fence: { why: string; from: string; forMs: number } | null;
  qemu: { state: QemuView['state']; coloExited: boolean; checkpointAgeMs: number | null; inCheckpointMs: number | null; paused: boolean };
  peer: {
    name: string;
    paths: Array<{ up: boolean; lastHeardMs: number | null }>;
    role: Role | null;
    qemu: 'alive' | 'dead' | 'unknown';
    hearsUs: boolean;
    rttMs: number | null;
    disk: Epoch | null;
  };
  lease: { witness: boolean; held: boolean; remainingMs: number | null; witnessAnswerMs: number | null; lastRefusal: string | null; stale: boolean };
  disk: { epoch: Epoch | null; pending: Epoch | null };
  work: { kind: string; phase: string | null; why: string; runningMs: number; step: string | null; mirror: { offset: number; len: number } | null } | null;
  retry: Array<{ kind: string; failures: number; inMs: number; lastError: string | null }>;
  lastDecision: string | null;
  /** What the agent waits for now, when it does nothing (why it does not act). */
  waiting: string | null;
}
