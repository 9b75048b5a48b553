/**
 * The witness's decisions, as a pure function: one writer lease per VM (the
 * lease named in each request), and the newest disk epoch of each run of
 * each VM.
 *
 * Who may touch what: every request names a VM (its lease). A client that
 * proved a VM's own key may name that VM only (witness.ts refuses anything
 * else before it gets here), and every record a request reads or writes is
 * that VM's: records are kept per (VM, run), so the `run` of a request's
 * `disk` or `next` is a run *of the VM named*; another VM's run of the same
 * name is another record, which no request of this VM can reach.
 *
 * The rules:
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
 * - **A run on record is vouched for; any other run is not.** A run the
 *   witness has no record of is either new (brought up since) or one it
 *   forgot: its record was lost (a new disk, a reinstall, a state file moved
 *   away) or evicted (below). The witness cannot tell the two apart, so it
 *   treats both alike: for a run of VM x it has no record of, it grants the
 *   lease (and records an epoch) only once
 *     (1) it has heard, in this life, from another node of VM x about that
 *         run: an acquire (its disk) or a query naming the run (its disk
 *         if the query carries it, else only that it holds the run), and
 *     (2) no node of VM x it heard from said it holds a disk of that run
 *         newer than the asker's, or of the same generation begun by
 *         another node (divergent);
 *   and then records the asker's `next` (or its disk) as the run's newest.
 *   So a witness that forgot never hands the lease to the first node that
 *   asks: a node that is gone (its disk perhaps the newest) has said
 *   nothing, and nothing is granted until it speaks, or an operator decides.
 *   What each node said is kept in memory only (`heard`), per (VM, run), at
 *   most HEARD_NODES_MAX nodes and HEARD_RUNS_PER_VM runs per VM (the oldest
 *   forgotten first: forgetting what a node said only withholds grants), and
 *   is dropped once the run is on record.
 *   A query that names the run but carries no disk (an agent older than
 *   the ones that send their disk with their queries) counts for (1) but
 *   says nothing for (2): such a node is taken at its word that it holds
 *   the run, not at its disk.
 * - Bounds, and what they never drop: at most RUNS_PER_VM runs per VM on
 *   record (one per `up` of the VM; the oldest evicted first, never the run
 *   of a lease that is held, nor the one being recorded); at most VMS_MAX
 *   VMs on record (a VM beyond is refused, nobody else's record is
 *   dropped); at most LEASES_MAX leases held at once. An evicted run is a
 *   forgotten one: the rule above applies to it.
 * - Records read from a state file of an earlier version, which did not say
 *   whose runs they are (`legacy`), are a floor only: a disk older than such
 *   a record is stale for any VM; they are never changed, and a VM's own
 *   record of the run takes their place for that VM.
 */
import type { Epoch } from '../pair/epoch.js';
import { compareEpochs, epochEquals, formatEpoch } from '../pair/epoch.js';
import type { WitnessReply, WitnessRequest } from './wire.js';
import { planted } from './mutants.js';

/** Runs on record per VM: one for each `up` of it; the oldest evicted first (never a held lease's). */
export const RUNS_PER_VM = 8;
/** VMs on record at most: a new VM beyond is refused (no other VM's record is ever dropped for it). */
export const VMS_MAX = 1024;
/** Leases held at once (one per VM); a lease that ran out takes no room. */
export const LEASES_MAX = 1024;
/** Nodes remembered per unvouched (VM, run): a VM has two; the oldest forgotten first. */
export const HEARD_NODES_MAX = 4;
/** Unvouched runs remembered per VM; the oldest forgotten first. */
export const HEARD_RUNS_PER_VM = 4;
/** Unvouched (VM, run)s remembered in all; the oldest forgotten first. */
export const HEARD_MAX = HEARD_RUNS_PER_VM * VMS_MAX;

/** The key of VM `vm`'s record of run `run` (neither may contain '/': both are wire names). */
export function recordKey(vm: string, run: string): string {
  return `${vm}/${run}`;
}

/** The VM and run of a record key. */
export function splitRecordKey(key: string): { vm: string; run: string } {
  const i = key.indexOf('/');
  return { vm: key.slice(0, i), run: key.slice(i + 1) };
}

export interface WitnessState {
  startedAt: number;
  graceMs: number;
  /** The holder of each VM's lease, and the run of its disk (expired ones linger until room is needed). */
  holders: Record<string, { node: string; until: number; run?: string }>;
  /** The newest epoch per (VM, run), keyed recordKey(vm, run), oldest recorded first (insertion order). Durable. */
  newest: Record<string, Epoch>;
  /**
   * What each node said of its disk, per unvouched (VM, run), keyed recordKey(vm, run), oldest first: an epoch,
   * or null (it named the run, not its disk). This life only.
   */
  heard: Record<string, Record<string, Epoch | null>>;
  /** Epochs of state files of earlier versions, per run, whoever's: a floor only, never changed. */
  legacy: Record<string, Epoch>;
}

export interface WitnessTransition {
  state: WitnessState;
  reply: WitnessReply;
  /** `newest` changed: write it durably before sending the reply. */
  persist: boolean;
  /** The VM whose record changed (persist), or null. */
  changedVm: string | null;
  log: string | null;
}

function bare<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

export function initWitness(now: number, graceMs: number, newest: Record<string, Epoch> = {}, legacy: Record<string, Epoch> = {}): WitnessState {
  return {
    startedAt: now,
    graceMs,
    holders: bare(),
    newest: Object.assign(bare<Epoch>(), newest),
    heard: bare(),
    legacy: Object.assign(bare<Epoch>(), legacy),
  };
}

/** VM `vm`'s newest epoch of `run` on record (own properties only: names are data, never keys of Object's prototype). */
export function newestOf(s: WitnessState, vm: string, run: string): Epoch | undefined {
  const k = recordKey(vm, run);
  if (Object.hasOwn(s.newest, k)) return s.newest[k];
  return Object.hasOwn(s.legacy, run) ? s.legacy[run] : undefined;
}

/** Every run of VM `vm` on record, oldest first. */
export function runsOf(s: WitnessState, vm: string): string[] {
  const prefix = `${vm}/`;
  return Object.keys(s.newest)
    .filter((k) => k.startsWith(prefix))
    .map((k) => k.slice(prefix.length));
}

/** The VMs with a record. */
export function vmsOnRecord(s: WitnessState): Set<string> {
  return new Set(Object.keys(s.newest).map((k) => splitRecordKey(k).vm));
}

/** Who holds VM `lease`'s lease now, and for how long still. */
export function holderOf(s: WitnessState, lease: string, now: number): { node: string; remainingMs: number; run?: string } | null {
  const h = Object.hasOwn(s.holders, lease) ? s.holders[lease] : undefined;
  return h && h.until > now ? { node: h.node, remainingMs: h.until - now, ...(h.run === undefined ? {} : { run: h.run }) } : null;
}

/** The holders with `lease` set to `holder` (null: removed), without those that ran out. */
function withHolder(s: WitnessState, now: number, lease: string, holder: WitnessState['holders'][string] | null): WitnessState['holders'] {
  const next = bare<WitnessState['holders'][string]>();
  for (const [k, h] of Object.entries(s.holders)) if (h.until > now && k !== lease) next[k] = h;
  if (holder) next[lease] = holder;
  return next;
}

/**
 * `newest` with `e` recorded as VM `vm`'s newest of its run, and the VM's
 * oldest runs evicted beyond RUNS_PER_VM, except `keep` (a held lease's
 * run) and the run recorded.
 */
function record(newest: Record<string, Epoch>, vm: string, e: Epoch, keep: string | undefined): Record<string, Epoch> {
  const next = Object.assign(bare<Epoch>(), newest);
  const key = recordKey(vm, e.run);
  delete next[key];
  next[key] = e;
  const prefix = `${vm}/`;
  const mine = Object.keys(next).filter((k) => k.startsWith(prefix));
  let over = mine.length - RUNS_PER_VM;
  for (const k of mine) {
    if (over <= 0) break;
    if (k === key || (keep !== undefined && k === recordKey(vm, keep))) continue;
    delete next[k];
    over--;
  }
  return next;
}

/** `heard` with what `node` said of its disk of (vm, run) (null: only that it holds the run), within its bounds. */
function hear(heard: WitnessState['heard'], vm: string, run: string, node: string, disk: Epoch | null): WitnessState['heard'] {
  const key = recordKey(vm, run);
  const before = Object.hasOwn(heard, key) ? heard[key]! : undefined;
  const said = before && Object.hasOwn(before, node) ? before[node]! : undefined;
  // Nothing new: a node that named the run without its disk keeps the disk it told before.
  if (said !== undefined && (disk === null || epochEquals(disk, said ?? undefined))) return heard;
  if (said === null && disk === null) return heard;
  const nodes = Object.assign(bare<Epoch | null>(), before ?? {});
  delete nodes[node];
  nodes[node] = disk ?? said ?? null;
  const names = Object.keys(nodes);
  for (const n of names.slice(0, Math.max(0, names.length - HEARD_NODES_MAX))) delete nodes[n];
  const next = Object.assign(bare<Record<string, Epoch | null>>(), heard);
  delete next[key];
  next[key] = nodes;
  const prefix = `${vm}/`;
  const ofVm = Object.keys(next).filter((k) => k.startsWith(prefix));
  for (const k of ofVm.slice(0, Math.max(0, ofVm.length - HEARD_RUNS_PER_VM))) delete next[k];
  const all = Object.keys(next);
  for (const k of all.slice(0, Math.max(0, all.length - HEARD_MAX))) delete next[k];
  return next;
}

/** `heard` without (vm, run): it is on record now. */
function forget(heard: WitnessState['heard'], vm: string, run: string): WitnessState['heard'] {
  const key = recordKey(vm, run);
  if (!Object.hasOwn(heard, key)) return heard;
  const next = Object.assign(bare<Record<string, Epoch | null>>(), heard);
  delete next[key];
  return next;
}

/** What the other nodes of VM `vm` said of their disks of `run`: [node, epoch or null]. */
function othersHeard(s: WitnessState, vm: string, run: string, from: string): Array<[string, Epoch | null]> {
  const key = recordKey(vm, run);
  const nodes = Object.hasOwn(s.heard, key) ? s.heard[key]! : undefined;
  return nodes ? Object.entries(nodes).filter(([n]) => n !== from) : [];
}

/** One request from the authenticated node `from`. */
export function witnessStep(s: WitnessState, now: number, from: string, req: WitnessRequest): WitnessTransition {
  const vm = req.lease;
  const cur = holderOf(s, vm, now);
  if (req.t === 'query') {
    const newest = req.run === null ? null : (newestOf(s, vm, req.run) ?? null);
    const reply: WitnessReply = { t: 'state', re: req.id, holder: cur?.node ?? null, remainingMs: cur?.remainingMs ?? 0, newest };
    // A node that names a run the witness does not vouch for: heard (its disk too, if it gave one of that run).
    const disk = req.disk !== undefined && req.disk !== null && req.run !== null && req.disk.run === req.run ? req.disk : null;
    const heard = req.run !== null && newest === null ? hear(s.heard, vm, req.run, from, disk) : s.heard;
    return { state: heard === s.heard ? s : { ...s, heard }, reply, persist: false, changedVm: null, log: null };
  }
  if (req.t === 'release') {
    const released = cur?.node === from;
    return {
      state: released ? { ...s, holders: withHolder(s, now, vm, null) } : s,
      reply: { t: 'released', re: req.id },
      persist: false,
      changedVm: null,
      log: released ? `lease of ${vm} released by ${from}` : null,
    };
  }
  const disk = req.disk;
  const newest = disk ? newestOf(s, vm, disk.run) : undefined;
  // What this node said is heard even when it is refused: for a run not on record, it is half of what a grant needs.
  const st: WitnessState = disk && newest === undefined ? { ...s, heard: hear(s.heard, vm, disk.run, from, disk) } : s;
  const refuse = (reason: string, extra: { remainingMs?: number } = {}): WitnessTransition => ({
    state: st,
    reply: { t: 'lease', re: req.id, granted: false, holder: cur?.node ?? null, reason, newest: newest ?? null, ...extra },
    persist: false,
    changedVm: null,
    log: null,
  });
  if (!disk) return refuse('unknown disk: the asking node does not know its disk epoch');
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
  if (newest === undefined) {
    // A run not on record: new, or forgotten. Granted only on the word of another node of the VM, whose disk is not newer.
    const others = othersHeard(st, vm, disk.run, from);
    const unvouched = `no record of run ${disk.run} of ${vm} (a new run, or one this witness lost or evicted)`;
    if (!others.length) return refuse(`${unvouched}: it grants once the other node has spoken too; waiting for it`);
    for (const [node, e] of others) {
      const o = e ? compareEpochs(disk, e) : 'same';
      if (o === 'older' || o === 'divergent') return refuse(`stale disk: epoch ${formatEpoch(disk)}, and ${node} holds ${formatEpoch(e ?? undefined)} (${unvouched})`);
    }
  }
  if (now - s.startedAt < s.graceMs && cur?.node !== from && !planted('witness-no-grace')) return refuse('witness just started (grace period)');
  if (cur && cur.node !== from) return refuse(`held by ${cur.node}`, { remainingMs: Math.round(cur.remainingMs) });
  const holders = withHolder(s, now, vm, { node: from, until: now, run: disk.run });
  if (Object.keys(holders).length > LEASES_MAX) return refuse(`the witness holds ${LEASES_MAX} leases, its most: no room for ${vm}'s`);
  // Record the new epoch with the grant; a disk newer than what we knew, or of a run not on record, too.
  const toRecord = next ?? (newest === undefined || compareEpochs(disk, newest) === 'newer' ? disk : null);
  const changed = toRecord !== null && !(Object.hasOwn(s.newest, recordKey(vm, toRecord.run)) && epochEquals(toRecord, newest));
  if (changed && runsOf(s, vm).length === 0 && vmsOnRecord(s).size >= VMS_MAX) {
    return refuse(`the witness keeps the record of ${VMS_MAX} VMs, its most: no room for ${vm}'s`);
  }
  // Never longer than the grace period: a restarted witness must outwait every lease of its previous life.
  const ttl = Math.min(Math.max(req.ttlMs, 50), 60_000, s.graceMs > 0 ? s.graceMs : 60_000);
  holders[vm] = { node: from, until: now + ttl, run: disk.run };
  const state: WitnessState = {
    ...st,
    holders,
    newest: changed ? record(s.newest, vm, toRecord, cur?.run) : s.newest,
    heard: changed ? forget(st.heard, vm, toRecord.run) : st.heard,
  };
  const logs = [cur?.node !== from ? `lease of ${vm} granted to ${from} (${ttl} ms)` : null, changed ? `newest epoch of ${vm}'s run ${toRecord.run}: ${formatEpoch(toRecord)}` : null].filter(Boolean);
  return {
    state,
    reply: { t: 'lease', re: req.id, granted: true, holder: from, ttlMs: ttl, newest: newestOf(state, vm, disk.run) ?? null },
    persist: changed,
    changedVm: changed ? vm : null,
    log: logs.length ? logs.join('; ') : null,
  };
}

/**
 * The state `base` with VM `vm`'s part (its lease, its records, what was
 * heard of its runs) taken from `from`: a decision about one VM applied
 * after its record was written, on top of decisions about other VMs made
 * meanwhile.
 */
export function withVmOf(base: WitnessState, from: WitnessState, vm: string): WitnessState {
  const prefix = `${vm}/`;
  const pick = <T>(a: Record<string, T>, b: Record<string, T>): Record<string, T> => {
    const out = bare<T>();
    for (const [k, v] of Object.entries(a)) if (!k.startsWith(prefix)) out[k] = v;
    for (const [k, v] of Object.entries(b)) if (k.startsWith(prefix)) out[k] = v;
    return out;
  };
  const holders = bare<WitnessState['holders'][string]>();
  for (const [k, h] of Object.entries(base.holders)) if (k !== vm) holders[k] = h;
  if (Object.hasOwn(from.holders, vm)) holders[vm] = from.holders[vm]!;
  return { ...base, holders, newest: pick(base.newest, from.newest), heard: pick(base.heard, from.heard) };
}
