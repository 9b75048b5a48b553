/**
 * A schedule: everything a simulated run depends on, as plain data. A
 * schedule is the unit the simulator runs, replays and stores: a failing one
 * is kept as JSON (test/sim-regressions/) and replays whatever the generator
 * (schedule.ts) becomes. The model's own randomness (delays, which QMP step
 * fails) comes from `seed`, split into one stream per concern, so that a
 * change in one part of the model moves as little as possible elsewhere.
 */

export type NodeName = 'a' | 'b';
/** The witness and the client, as ends of links. */
export type End = NodeName | 'w' | 'c';
export type LinkName = 'heartbeat' | 'replication' | 'witness-a' | 'witness-b' | 'lan-a' | 'lan-b';
export const LINKS: LinkName[] = ['heartbeat', 'replication', 'witness-a', 'witness-b', 'lan-a', 'lan-b'];
/** The link between node `n` and the witness. */
export function witnessLink(n: NodeName): LinkName {
  return n === 'a' ? 'witness-a' : 'witness-b';
}
/** Each link's two ends. */
export const LINK_ENDS: Record<LinkName, readonly [End, End]> = {
  heartbeat: ['a', 'b'],
  replication: ['a', 'b'],
  'witness-a': ['a', 'w'],
  'witness-b': ['b', 'w'],
  'lan-a': ['c', 'a'],
  'lan-b': ['c', 'b'],
};

export type Fault =
  | { at: number; kind: 'kill-qemu'; node: NodeName }
  /** SIGSTOP of the QEMU process alone. */
  | { at: number; kind: 'freeze-qemu'; node: NodeName; ms: number }
  | { at: number; kind: 'kill-agent'; node: NodeName; ms: number }
  | { at: number; kind: 'power-loss'; node: NodeName; ms: number }
  | { at: number; kind: 'reboot'; node: NodeName; ms: number }
  /** The host loses power and never comes back. */
  | { at: number; kind: 'host-gone'; node: NodeName }
  /** The whole host stops (agent, QEMU, kernel: a hypervisor pause), then goes on; its clock runs on meanwhile. */
  | { at: number; kind: 'host-pause'; node: NodeName; ms: number }
  /** Cables cut for `ms`; with `from`, only what leaves that end (a one-way cut). */
  | { at: number; kind: 'cut'; links: LinkName[]; ms: number; from?: End }
  | { at: number; kind: 'garbage'; link: LinkName }
  | { at: number; kind: 'slow-link'; link: LinkName; ms: number; delayMs: number }
  | { at: number; kind: 'witness-down'; ms: number }
  | { at: number; kind: 'witness-restart' }
  /** The witness restarts with nothing on record (its state lost). Not in the generator: see README. */
  | { at: number; kind: 'witness-amnesia' }
  | { at: number; kind: 'witness-slow'; ms: number; delayMs: number }
  /** The witness records, but its answers get lost (it crashes between its write and its reply, a link that drops). */
  | { at: number; kind: 'witness-lossy'; ms: number }
  /** The client asks nothing for `ms` (a guest that neither writes nor answers: its disk and network are idle). */
  | { at: number; kind: 'client-idle'; ms: number }
  /** The replication connections are reset (a firewall, a restarted switch): both ends see COLO_EXIT. */
  | { at: number; kind: 'reset-replication' }
  /** The node's disk fails writes (EIO, ENOSPC) with probability `p`: a secondary's replica, a primary's own disk. */
  | { at: number; kind: 'disk-errors'; node: NodeName; ms: number; p: number }
  /** The node's disk record (generation.json) is lost or damaged, and its agent restarted (it reads the record again). */
  | { at: number; kind: 'record-lost'; node: NodeName; how: 'missing' | 'unreadable' }
  /** QMP commands on the node take effect only after the runtime gave up on them (their step timed out). */
  | { at: number; kind: 'qmp-late'; node: NodeName; ms: number }
  /** The node's disk record takes this long to write (fsync stalls on a loaded disk). */
  | { at: number; kind: 'slow-disk'; node: NodeName; ms: number; delayMs: number };

export type FaultKind = Fault['kind'];

export interface Schedule {
  version: 2;
  /** The model's own randomness. */
  seed: number;
  witness: boolean;
  paths: 1 | 2;
  /** The rates of a's, b's and the witness's monotonic clocks (1: exact). */
  clocks: { a: number; b: number; w: number };
  /** Probability that a procedure step fails (before or after taking effect), while faults last. */
  stepFailP: number;
  /** Checkpoints that hold the big lock for seconds (large RAM, slow link). */
  slowCheckpoints: boolean;
  /**
   * What QEMU does when the secondary's replica fails a write forwarded to it
   * (qemu.ts, [P5]). 'p5': lockstep's QEMU: QUORUM_REPORT_BAD at once, and
   * the primary's next checkpoint fails, which ends COLO. 'reported': the
   * report alone, checkpoints go on, so that only the agents' rules keep a
   * replica a checkpoint made short out; absent (schedules stored before P5):
   * 'reported'.
   */
  replicaErrors?: 'p5' | 'reported';
  faults: Fault[];
  /** An operator's `lockstep resync NAME` reaching a node's agent (it counts only where the VM runs alone). */
  operatorResyncs: Array<{ at: number; node: NodeName }>;
  /** When the last fault is over: everything healed, but for hosts gone for good. */
  quietAt: number;
  /**
   * Which nodes' QEMUs can pause before their switchover into COLO (QEMU 10.0; 7.2 with patch 0004): a resync from
   * such a node takes the live order (colo/resume.ts). Absent: neither (the documented order).
   */
  pauseIntoColo?: { a: boolean; b: boolean };
  /**
   * The agents' writer lease (agents.leaseMs). Absent (schedules stored before its default became 500 ms): 1000, the
   * lease they were found with.
   */
  leaseMs?: number;
}

/** The lease of a schedule stored without one (schedule-types.ts, Schedule.leaseMs). */
export const STORED_LEASE_MS = 1000;

/** How long a fault lasts (0: an instant; Infinity: for good). */
export function faultMs(f: Fault): number {
  if (f.kind === 'host-gone') return Infinity;
  return 'ms' in f ? f.ms : 0;
}
