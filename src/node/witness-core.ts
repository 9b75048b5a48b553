/**
 * The witness's decisions, as a pure function: one writer lease per VM (the
 * lease named in each request), and the newest disk epoch of each run.
 *
 * - The lease is time-bounded. The holder renews it well before it runs
 *   out; the holder's own view of it starts when it *asked*, so it always
 *   ends before this one, and no lease is granted that someone still
 *   believes is theirs. A restarted witness grants nothing for a grace period
 *   (at least the longest lease), so a lease of its previous life runs out
 *   first.
 * - Every request carries the asker's disk epoch. A disk older than the
 *   newest recorded for its run (or of the same generation but begun by
 *   another node) is stale: no lease, ever, for it; it can only be resynced.
 * - A node about to write alone asks with `next`, its new epoch: granted
 *   only above the newest (or again for exactly the newest, when it asks a
 *   second time because the first answer was lost), and recorded with the
 *   grant, durably, before the answer goes out. So no two disks ever hold
 *   different data under one epoch.
 */
import type { Epoch } from '../pair/epoch.js';
import { compareEpochs, epochEquals, formatEpoch } from '../pair/epoch.js';
import type { WitnessReply, WitnessRequest } from './wire.js';
import { planted } from './mutants.js';

/**
 * Runs remembered, the most recently recorded kept: one per VM protected
 * with this witness, and those of VMs brought up again (a new run each).
 * Forgetting the run of a VM that still runs would let a stale disk of it
 * be granted a lease, so this bounds how many VMs one witness may serve.
 */
export const RUNS_KEPT = 4096;
/** Leases held at once (one per VM); a lease that ran out takes no room. */
export const LEASES_MAX = 1024;

export interface WitnessState {
  startedAt: number;
  graceMs: number;
  /** The holder of each VM's lease (expired ones linger until room is needed). */
  holders: Record<string, { node: string; until: number }>;
  /** The newest epoch per run, oldest run first (insertion order). */
  newest: Record<string, Epoch>;
}

export interface WitnessTransition {
  state: WitnessState;
  reply: WitnessReply;
  /** `newest` changed: write it durably before sending the reply. */
  persist: boolean;
  log: string | null;
}

export function initWitness(now: number, graceMs: number, newest: Record<string, Epoch> = {}): WitnessState {
  return { startedAt: now, graceMs, holders: Object.create(null) as WitnessState['holders'], newest: Object.assign(Object.create(null) as Record<string, Epoch>, newest) };
}

/** The newest epoch recorded for `run` (own properties only: a run is data, never a key of Object's prototype). */
export function newestOf(s: WitnessState, run: string): Epoch | undefined {
  return Object.hasOwn(s.newest, run) ? s.newest[run] : undefined;
}

function record(newest: Record<string, Epoch>, e: Epoch): Record<string, Epoch> {
  const next: Record<string, Epoch> = Object.assign(Object.create(null) as Record<string, Epoch>, newest);
  delete next[e.run];
  next[e.run] = e;
  const runs = Object.keys(next);
  for (const r of runs.slice(0, Math.max(0, runs.length - RUNS_KEPT))) delete next[r];
  return next;
}

/** Who holds VM `lease`'s lease now, and for how long still. */
export function holderOf(s: WitnessState, lease: string, now: number): { node: string; remainingMs: number } | null {
  const h = Object.hasOwn(s.holders, lease) ? s.holders[lease] : undefined;
  return h && h.until > now ? { node: h.node, remainingMs: h.until - now } : null;
}

/** The holders with `lease` set to `holder` (null: removed), without those that ran out. */
function withHolder(s: WitnessState, now: number, lease: string, holder: { node: string; until: number } | null): WitnessState['holders'] {
  const next = Object.create(null) as WitnessState['holders'];
  for (const [k, h] of Object.entries(s.holders)) if (h.until > now && k !== lease) next[k] = h;
  if (holder) next[lease] = holder;
  return next;
}

/** One request from the authenticated node `from`. */
export function witnessStep(s: WitnessState, now: number, from: string, req: WitnessRequest): WitnessTransition {
  const cur = holderOf(s, req.lease, now);
  if (req.t === 'query') {
    const newest = req.run === null ? null : (newestOf(s, req.run) ?? null);
    return { state: s, reply: { t: 'state', re: req.id, holder: cur?.node ?? null, remainingMs: cur?.remainingMs ?? 0, newest }, persist: false, log: null };
  }
  if (req.t === 'release') {
    const released = cur?.node === from;
    return {
      state: released ? { ...s, holders: withHolder(s, now, req.lease, null) } : s,
      reply: { t: 'released', re: req.id },
      persist: false,
      log: released ? `lease of ${req.lease} released by ${from}` : null,
    };
  }
  const refuse = (reason: string, extra: { remainingMs?: number } = {}): WitnessTransition => ({
    state: s,
    reply: { t: 'lease', re: req.id, granted: false, holder: cur?.node ?? null, reason, newest: req.disk ? (newestOf(s, req.disk.run) ?? null) : null, ...extra },
    persist: false,
    log: null,
  });
  const disk = req.disk;
  if (!disk) return refuse('unknown disk: the asking node does not know its disk epoch');
  const newest = newestOf(s, disk.run);
  const next = req.next;
  // Asking again for exactly the newest epoch, which this node began: the first answer was lost.
  const again = next !== null && newest !== undefined && epochEquals(next, newest) && next.by === from;
  if (next !== null && !again) {
    if (next.run !== disk.run || compareEpochs(next, disk) !== 'newer') return refuse(`bad request: a new epoch ${formatEpoch(next)} must be a later one of the disk's run`);
    if (next.by !== from) return refuse(`bad request: ${from} cannot begin an epoch for ${next.by}`);
  }
  if (!again && newest !== undefined && !planted('witness-grants-stale-disk')) {
    const o = compareEpochs(disk, newest);
    if (o === 'older' || o === 'divergent') return refuse(`stale disk: epoch ${formatEpoch(disk)}, the newest of its run is ${formatEpoch(newest)}`);
    if (next !== null && next.gen <= newest.gen) return refuse(`stale disk: epoch ${formatEpoch(next)} is not above the newest, ${formatEpoch(newest)}`);
  }
  if (now - s.startedAt < s.graceMs && cur?.node !== from && !planted('witness-no-grace')) return refuse('witness just started (grace period)');
  if (cur && cur.node !== from) return refuse(`held by ${cur.node}`, { remainingMs: Math.round(cur.remainingMs) });
  const holders = withHolder(s, now, req.lease, { node: from, until: now });
  if (Object.keys(holders).length > LEASES_MAX) return refuse(`the witness holds ${LEASES_MAX} leases, its most: no room for ${req.lease}'s`);
  // Never longer than the grace period: a restarted witness must outwait every lease of its previous life.
  const ttl = Math.min(Math.max(req.ttlMs, 50), 60_000, s.graceMs > 0 ? s.graceMs : 60_000);
  // Record the new epoch with the grant; a disk newer than what we knew (a witness that lost its record) too.
  const toRecord = next ?? (newest === undefined || compareEpochs(disk, newest) === 'newer' ? disk : null);
  const changed = toRecord !== null && !epochEquals(toRecord, newest);
  holders[req.lease] = { node: from, until: now + ttl };
  const state: WitnessState = { ...s, holders, newest: changed ? record(s.newest, toRecord) : s.newest };
  const logs = [cur?.node !== from ? `lease of ${req.lease} granted to ${from} (${ttl} ms)` : null, changed ? `newest epoch of run ${toRecord.run}: ${formatEpoch(toRecord)}` : null].filter(Boolean);
  return {
    state,
    reply: { t: 'lease', re: req.id, granted: true, holder: from, ttlMs: ttl, newest: newestOf(state, disk.run) ?? null },
    persist: changed,
    log: logs.length ? logs.join('; ') : null,
  };
}
