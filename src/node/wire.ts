/**
 * What lockstep processes say to each other, as typed messages parsed once,
 * at the boundary (zod). Two channels share the authenticated link of
 * link.ts: agent ↔ agent (`peer`) and agent ↔ witness (`witness`). Anything
 * that does not parse is refused where it arrives: the link logs it and
 * closes the connection, and no code behind it ever sees it.
 *
 * Requests carry an `id`, replies the `re` of the request they answer: one
 * request/reply mechanism for both channels.
 */
import { z } from 'zod';
import { RESERVED_NAMES } from '../config/schema.js';

/** The longest line either channel accepts (a heartbeat is ~400 bytes). */
export const MAX_LINE_BYTES = 64 * 1024;

/** Names and ids that are safe anywhere (object keys, file names, logs): no '__proto__' tricks, no control characters. */
const safe = /^[A-Za-z0-9._-]{1,64}$/;
const name = z.string().regex(safe).refine((x) => !RESERVED_NAMES.has(x), 'a reserved name');
const id = z.string().min(1).max(64).regex(/^[\x21-\x7e]+$/);
const ms = z.number().finite().min(0).max(86_400_000);
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

export const epochSchema = z.object({ run: name, gen: count, by: name });

export const roleSchema = z.enum(['primary', 'secondary', 'alone', 'fenced', 'down']);

// ---- agent ↔ agent ----

export const heartbeatSchema = z.object({
  t: z.literal('hb'),
  /** The sending agent's incarnation: a restarted agent numbers its heartbeats from 1 again. */
  boot: id,
  seq: count,
  role: roleSchema,
  qemu: z.enum(['alive', 'dead', 'unknown']),
  colo: z.enum(['ok', 'exited']),
  /** The sender heard us within its heartbeat timeout. */
  hearsPeer: z.boolean(),
  /** The sender's disk epoch; null when its generation file is missing or unreadable. */
  disk: epochSchema.nullable(),
  /** ms since the sender's QEMU last completed a checkpoint (null outside COLO). */
  checkpointAgeMs: ms.nullable(),
  /** The procedure the sender runs right now, if any (e.g. 'takeover'). */
  busy: z.string().max(64).nullable(),
  /**
   * A primary's word that its secondary's replica has missed no write (no QUORUM_REPORT_BAD since the COLO session
   * began): only the primary's QEMU sees a replica write fail, so the secondary calls the pair protected only on it.
   * Absent from an agent older than this field (read as the old rule: exact).
   */
  replicaExact: z.boolean().optional(),
  /**
   * A primary's word that a checkpoint completed after its secondary's replica failed a write: the secondary's disk
   * lacks that write for good and must never take over before a resync. Absent from an older agent.
   */
  replicaShort: z.boolean().optional(),
});

export const heartbeatAckSchema = z.object({ t: z.literal('hback'), seq: count });

export const resyncPrepareSchema = z.object({
  k: z.literal('resync-prepare'),
  /** The survivor, which will be the new primary. */
  primary: name,
  /** The survivor's disk epoch: the target refuses to be overwritten by an older disk. */
  disk: epochSchema,
  /** The disk's size: a replica of it is made (at most 64 TiB, qcow2's bound). */
  sizeBytes: z.number().int().min(1).max(64 * 1024 ** 4),
  /**
   * The survivor agent's incarnation (its heartbeats' boot): the target drops its new secondary once the survivor's
   * agent restarts, even when it asked before the target heard a heartbeat of it. Absent from an older agent.
   */
  boot: id.optional(),
});
export const resyncDoneSchema = z.object({ k: z.literal('resync-done'), disk: epochSchema });
export const resyncAbortSchema = z.object({ k: z.literal('resync-abort'), why: z.string().max(500) });

export const peerRequestSchema = z.object({
  t: z.literal('req'),
  id,
  body: z.discriminatedUnion('k', [resyncPrepareSchema, resyncDoneSchema, resyncAbortSchema]),
});

export const peerReplySchema = z.object({
  t: z.literal('rep'),
  re: id,
  ok: z.boolean(),
  why: z.string().max(2000).optional(),
  /** resync-prepare: the new secondary's QEMU. */
  pid: z.number().int().min(1).max(2 ** 31).optional(),
});

export const peerMessageSchema = z.discriminatedUnion('t', [heartbeatSchema, heartbeatAckSchema, peerRequestSchema, peerReplySchema]);

// ---- host ↔ host (one heartbeat session per pair of hosts and path, carrying every VM they share) ----

/**
 * A session's messages: a host announces each VM of its own that the session
 * carries (`join`) and each it stops carrying (`leave`); a VM's message goes
 * only to a VM the other side joined; `ping` keeps a session without traffic
 * from looking dead.
 */
export const sessionMessageSchema = z.discriminatedUnion('t', [
  z.object({ t: z.literal('join'), vm: name }),
  z.object({ t: z.literal('leave'), vm: name }),
  z.object({ t: z.literal('vm'), vm: name, m: peerMessageSchema }),
  z.object({ t: z.literal('ping') }),
]);

// ---- agent ↔ witness ----

/**
 * Every request names its lease: the VM's name. The witness keeps one lease
 * per VM, so the hosts of many VMs share one witness (and a node's name, the
 * host's, appears in several).
 */
export const acquireSchema = z.object({
  t: z.literal('acquire'),
  id,
  lease: name,
  ttlMs: z.number().int().min(50).max(60_000),
  /** The asking node's disk: no lease for a disk older than the newest the witness knows of its run. */
  disk: epochSchema.nullable(),
  /** Record this new epoch (the node is about to write alone) together with the grant. */
  next: epochSchema.nullable(),
});
export const releaseSchema = z.object({ t: z.literal('release'), id, lease: name });
/**
 * How things stand for a lease, and the newest epoch of `run` (the asker's, when it knows its disk). `disk`, the
 * asker's disk epoch (of `run`), lets a witness that has no record of the run hear which disk this node holds
 * (witness-core: a run not on record is granted only on the word of both nodes).
 */
export const querySchema = z.object({ t: z.literal('query'), id, lease: name, run: name.nullable(), disk: epochSchema.nullable().optional() });

export const witnessRequestSchema = z.discriminatedUnion('t', [acquireSchema, releaseSchema, querySchema]);

export const leaseReplySchema = z.object({
  t: z.literal('lease'),
  re: id,
  granted: z.boolean(),
  holder: name.nullable(),
  /** Granted: for how long, counted by the witness from when it received the request. */
  ttlMs: z.number().int().min(0).max(60_000).optional(),
  /** Refused: how long the holder's lease still runs. */
  remainingMs: ms.optional(),
  reason: z.string().max(500).optional(),
  /** The newest epoch the witness knows of the asker's run. */
  newest: epochSchema.nullable(),
});
export const releasedSchema = z.object({ t: z.literal('released'), re: id });
export const witnessStateSchema = z.object({
  t: z.literal('state'),
  re: id,
  holder: name.nullable(),
  remainingMs: ms,
  /** The newest epoch of the run asked about (null: none on record, or no run asked). */
  newest: epochSchema.nullable(),
});

export const witnessReplySchema = z.discriminatedUnion('t', [leaseReplySchema, releasedSchema, witnessStateSchema]);

export type Heartbeat = z.infer<typeof heartbeatSchema>;
export type PeerRequest = z.infer<typeof peerRequestSchema>;
export type PeerRequestBody = PeerRequest['body'];
export type PeerReply = z.infer<typeof peerReplySchema>;
export type PeerMessage = z.infer<typeof peerMessageSchema>;
export type SessionMessage = z.infer<typeof sessionMessageSchema>;
export type WitnessRequest = z.infer<typeof witnessRequestSchema>;
export type WitnessReply = z.infer<typeof witnessReplySchema>;
export type LeaseReply = z.infer<typeof leaseReplySchema>;
export type AcquireRequest = z.infer<typeof acquireSchema>;
