/**
 * The failure detector's decisions, as a pure function of what an agent
 * knows, so every case can be checked without VMs.
 *
 * Evidence, from strongest to weakest:
 * - QEMU itself: a COLO_EXIT event means this QEMU's checkpoint stream is
 *   gone (the secondary leaves COLO ~15 ms after its primary dies; the
 *   primary at its next checkpoint attempt after its secondary died);
 * - the peer agent's word: its heartbeats say whether its QEMU still runs;
 * - silence: no heartbeat within the timeout. Silence alone never triggers a
 *   failover: a dead agent next to a healthy VM must not be taken for a
 *   dead VM. The primary then probes the secondary's QEMU directly.
 * - the witness lease: only its holder may be the sole writer; a node that
 *   cannot hold it, and cannot see a healthy peer either, stops its VM.
 * - re-protection: a node running alone resyncs its peer as a new
 *   secondary once the peer's agent is back without a VM (or fenced), and
 *   only if the peer's disk generation is not newer than its own.
 * - the whole pair down (both QEMUs gone): the node with the newer disk
 *   starts the VM again alone; then re-protection as after a failover.
 * - a stalled checkpoint stream: when the link between the nodes is cut
 *   without a reset (a partition), QEMU 7.2's COLO threads wait forever and
 *   no COLO_EXIT comes. A secondary that has neither heartbeats nor
 *   checkpoints for a while may then take over, but only through the
 *   witness: the lease is granted only once the primary stopped renewing it.
 */

import type { AgentRole } from '../pair/agents.js';

export type Role = AgentRole;

export interface Observation {
  role: Role;
  /** This node's QEMU runs and answers. */
  qemuAlive: boolean;
  /** This node's QEMU reported COLO_EXIT since COLO started. */
  coloExited: boolean;
  /** How long ago that COLO_EXIT came (ms). */
  coloExitAgeMs?: number;
  /** How long to wait for the peer's word after a COLO_EXIT before judging (the heartbeat timeout). */
  settleMs?: number;
  /** A heartbeat from the peer arrived within the timeout. */
  peerFresh: boolean;
  /** The peer's last word about its own QEMU. */
  peerQemu: 'alive' | 'dead' | 'unknown';
  /** The peer's last heartbeat says it hears us (within its timeout). */
  peerHearsUs: boolean;
  /** A witness is configured. */
  witness: boolean;
  /** We hold a valid lease (always false without a witness). */
  leaseValid: boolean;
  /**
   * The agent has just started: its first lease answer and its peer's first
   * word may not have arrived yet, so their absence is no evidence.
   */
  starting?: boolean;
  /** Primary only: result of probing the secondary's QEMU directly, if done. */
  probe?: 'alive' | 'dead';
  /** Secondary only: ms since its last checkpoint (or since COLO started). */
  checkpointAgeMs?: number;
  /** Secondary only: a checkpoint gap longer than this means the stream is stalled. */
  stallMs?: number;
  /** The peer's role as its last heartbeat said. */
  peerRole?: Role;
  /** Disk generations: ours, and the peer's as its last heartbeat said. */
  generation?: number;
  peerGeneration?: number;
  /** Alone only: re-protect by ourselves, and the back-off after a failed attempt has passed. */
  reprotect?: boolean;
  /** Down only: may restart the VM by ourselves (re-protection on, not joining as a new secondary, no back-off). */
  restart?: boolean;
  /** Our name sorts before the peer's: which of two equal disks restarts. */
  tieBreakFirst?: boolean;
}

export type Decision =
  | { action: 'none'; why?: string }
  | { action: 'probe'; why: string }
  | { action: 'primary-failover'; why: string }
  | { action: 'takeover'; why: string }
  | { action: 'fence'; why: string }
  | { action: 'reprotect'; why: string }
  | { action: 'restart'; why: string };

export function decide(o: Observation): Decision {
  if (!o.qemuAlive) {
    // The whole pair down: the newest disk starts the VM again (of two equal ones, the first name's).
    if (o.role === 'down' && o.restart && o.peerFresh && o.peerRole === 'down' && o.generation !== undefined && o.peerGeneration !== undefined) {
      const newest = o.generation > o.peerGeneration || (o.generation === o.peerGeneration && o.tieBreakFirst === true);
      if (newest) return { action: 'restart', why: `no VM runs on either node, and our disk is the newest (generation ${o.generation}, the peer's ${o.peerGeneration})` };
    }
    return { action: 'none', why: 'our QEMU is gone' };
  }
  if (o.role === 'primary') {
    if (o.peerQemu === 'dead') return { action: 'primary-failover', why: 'the secondary reports its QEMU dead' };
    if (o.coloExited) return { action: 'primary-failover', why: 'COLO_EXIT: the checkpoint stream to the secondary broke' };
    if (!o.peerFresh) {
      if (o.probe === 'dead') return { action: 'primary-failover', why: 'no heartbeat and the secondary\'s QEMU does not answer' };
      if (o.probe === undefined) return { action: 'probe', why: 'no heartbeat from the secondary\'s agent' };
    }
    if (o.witness && !o.starting && !o.leaseValid && !(o.peerFresh && o.peerHearsUs)) {
      return { action: 'fence', why: 'the lease ran out and the secondary cannot vouch for us' };
    }
    return { action: 'none' };
  }
  if (o.role === 'secondary') {
    if (!o.coloExited) {
      if (o.peerFresh) return { action: 'none' };
      const stalled = o.checkpointAgeMs !== undefined && o.stallMs !== undefined && o.checkpointAgeMs > o.stallMs;
      if (!stalled) return { action: 'none', why: 'no heartbeat, but checkpoints continue: the primary\'s agent is down, not its VM' };
      // Without a witness a partition cannot be told from a dead primary: stay.
      if (!o.witness) return { action: 'none', why: 'no heartbeat and no checkpoints, but no witness to decide: staying secondary' };
      return { action: 'takeover', why: `no heartbeat and no checkpoint for ${Math.round(o.checkpointAgeMs!)} ms: the primary is unreachable` };
    }
    if (o.peerQemu === 'dead' || !o.peerFresh) return { action: 'takeover', why: o.peerQemu === 'dead' ? 'the primary reports its QEMU dead' : 'COLO_EXIT and no heartbeat from the primary' };
    // The stream can break a moment before the primary's agent reports its QEMU dead: give it time to say so.
    if ((o.coloExitAgeMs ?? Infinity) < (o.settleMs ?? 0)) return { action: 'none', why: 'COLO_EXIT: waiting for the primary\'s word' };
    return { action: 'fence', why: 'COLO_EXIT while the primary lives: the replication link broke; waiting to be resynced' };
  }
  if (o.role === 'alone') {
    if (o.witness && !o.starting && !o.leaseValid && !o.peerFresh) return { action: 'fence', why: 'running alone without the lease' };
    if (o.reprotect && o.peerFresh && (o.peerRole === 'down' || o.peerRole === 'fenced')) {
      // Only ever towards an older or equal disk: a peer with a newer one is not to be overwritten.
      if (o.generation === undefined || o.peerGeneration === undefined || o.peerGeneration > o.generation) {
        return { action: 'none', why: `not resyncing ${o.peerRole} peer: its disk generation ${o.peerGeneration ?? 'unknown'} is not older than ours (${o.generation ?? 'unknown'})` };
      }
      return { action: 'reprotect', why: `the peer's agent is back (${o.peerRole}, disk generation ${o.peerGeneration} ≤ ${o.generation}): resync it as our new secondary` };
    }
  }
  return { action: 'none' };
}
