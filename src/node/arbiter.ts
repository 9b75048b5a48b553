/**
 * Arbitration: which node may write a VM's disk alone. One small interface,
 * one lease per VM, with the disk epoch as the fencing token, so that the
 * agent core does not care what grants it: the built-in witness
 * (witness.ts, WitnessArbiter) is the first implementation, the simulator
 * drives its own (sim/witness.ts), and an existing engine (etcd's leases and
 * transactions) can serve fleets of hosts next.
 *
 * What any implementation must keep (the core relies on it):
 * - a lease is granted to one node of a VM at a time, for at most its ttl,
 *   counted from when the request was *received* (the node counts from when
 *   it sent, so its view ends first);
 * - no lease for a disk older than the newest epoch on record for its run;
 * - `next`, a new epoch, is recorded durably with the grant, and only above
 *   the newest (or again, exactly, by the node that began it);
 * - every request is answered at most once, by its `id`, through the reply
 *   callback the implementation was made with; an unanswered one is the
 *   core's to time out.
 */
import type { Epoch } from '../pair/epoch.js';
import type { WitnessReply } from './wire.js';

export interface Arbiter {
  /** Asks for this VM's lease for `ttlMs`, or renews it; `disk` fences, `next` is a new epoch to record with the grant. */
  acquire(id: string, ttlMs: number, disk: Epoch | null, next: Epoch | null): void;
  /** Gives the lease back, if we hold it. */
  release(id: string): void;
  /**
   * How things stand: who holds the lease, and the newest epoch of `run` on record. `disk`, this node's disk epoch:
   * a witness that has no record of the run learns which disk this node holds (witness-core's rule for runs it
   * does not vouch for).
   */
  query(id: string, run: string | null, disk?: Epoch | null): void;
  close(): void;
}

/** What an arbiter answers (the witness's replies, the common language of every implementation). */
export type ArbiterReply = WitnessReply;
