/**
 * What the daemon's API says, as zod schemas: the daemon builds its answers
 * as these types, and the CLI parses every answer with them where it
 * arrives (a daemon of another version may say something else).
 */
import { z } from 'zod';
import { agentStatusSchema } from '../pair/agents.js';

export const API_VERSION = 'v1';

/** Every error answer: what failed, and what to do. */
export const apiErrorSchema = z.object({ error: z.string(), hint: z.string().optional() });
export type ApiError = z.infer<typeof apiErrorSchema>;

export const hostInfoSchema = z.object({
  name: z.string(),
  version: z.string(),
  pid: z.number(),
  startedAt: z.string(),
  uptimeMs: z.number(),
  /** heartbeatPort: where its daemon listens for heartbeat sessions (absent from daemons before them). */
  addresses: z.object({ replication: z.string(), heartbeat: z.array(z.string()), heartbeatPort: z.number().optional() }),
  api: z.object({ socket: z.string(), listen: z.string().nullable() }),
  /** The hosts this one trusts, with their certificates' SHA-256 fingerprints. */
  peers: z.array(z.object({ name: z.string(), api: z.string(), fingerprint: z.string() })),
  /** Who asked: "root on this host" over the socket, else the trusted host's name. */
  caller: z.string(),
  vms: z.array(z.string()),
  /** The ports this host gives its VMs, and those its VMs hold (every defined VM, started or not). */
  ports: z.object({ first: z.number(), last: z.number(), used: z.array(z.number()) }),
  /** The memory this host gives its VMs, and what its defined VMs take of it (estimated: each VM's memory + QEMU's own). */
  memory: z.object({ forVmsBytes: z.number(), usedBytes: z.number() }),
  /** Its heartbeat sessions: one per peer host and path, and the VMs each carries now (absent from daemons before them). */
  heartbeatSessions: z.array(z.object({ peer: z.string(), path: z.string(), up: z.boolean(), vms: z.array(z.string()) })).optional(),
});
export type HostInfo = z.infer<typeof hostInfoSchema>;

export const vmStatusSchema = z.object({
  name: z.string(),
  hosts: z.tuple([z.string(), z.string()]),
  /** What this host is to the VM as defined: the first host starts as the primary. */
  definedRole: z.enum(['primary', 'secondary']),
  phase: z.enum(['defined', 'starting', 'running', 'failed', 'stopping', 'stopped']),
  /** The start step under way, or the error that ended it. */
  detail: z.string().nullable(),
  agent: agentStatusSchema.nullable(),
  /** How the VM's data plane crosses the replication network: TLS with the pair's key, or plain TCP (replication.tls: false). Absent from daemons before it. */
  dataPlane: z.enum(['tls', 'plain']).optional(),
});
export type VmStatus = z.infer<typeof vmStatusSchema>;

export const vmListSchema = z.array(vmStatusSchema);

/** The answer to a definition: whether it was new, replaced an earlier one, or the same again. */
export const defineAnswerSchema = z.object({ name: z.string(), outcome: z.enum(['created', 'replaced', 'unchanged']) });

export const stopAnswerSchema = z.object({ name: z.string(), host: z.string(), qemu: z.string() });

/** A figure of a journal record: a number (base units in its name: ms, bytes), a word, a flag, or nothing. */
export const figureSchema = z.union([z.string(), z.number(), z.boolean(), z.null()]);
export type Figure = z.infer<typeof figureSchema>;

/**
 * One record of a host's event journal: a decision with its reason, what a
 * procedure did, a change seen (protection, role, lease, heartbeat path,
 * witness), an operator's command. `seq` counts the host's records, without
 * gaps, across daemon restarts; `at` is the host's wall clock (ISO 8601, UTC).
 * `kind` is a word from JOURNAL_KINDS (a string here: a newer daemon may say
 * more); `vm` is null for what concerns the whole host (its daemon).
 */
export const journalRecordSchema = z.object({
  seq: z.number().int().min(1),
  at: z.string(),
  host: z.string(),
  vm: z.string().nullable(),
  kind: z.string(),
  reason: z.string(),
  figures: z.record(z.string(), figureSchema),
});
export type JournalRecord = z.infer<typeof journalRecordSchema>;

/** The kinds of journal records this version writes. */
export const JOURNAL_KINDS = [
  /** The daemon started or stopped (vm: null). */
  'daemon',
  /** A VM's agent started, or stopped. */
  'agent',
  /** An operator's command through the API (define, start, stop, end-qemu, resync), whoever asked, and its answer. */
  'operator',
  /** Every decision of the agent, with its reason (figures.action: what it decided). */
  'decision',
  /** What the agent waits for, when that changes (why it does not act yet). */
  'waiting',
  /** A failover done: the VM carried on by this host (figures: from, to, procedure, detectionMs, procedureMs, toProcedureMs: the lease and the new epoch, before the QMP procedure). */
  'failover',
  'fence',
  'unfence',
  /** The VM restarted alone from this host's disk (the whole pair was down). */
  'restart',
  /** A resync done: protected again (figures.ms). */
  'resync',
  /** A step of a resync under way (figures: mirror progress). */
  'resync-step',
  /** The VM became protected, or stopped being protected (the reason says why not). */
  'protection',
  'role',
  /** This host's agent took the writer lease, or lost it. */
  'lease',
  /** A heartbeat path to the peer went silent, or was heard again. */
  'heartbeat',
  /** The witness (the lease's arbiter) became unreachable, or reachable again. */
  'witness',
  /** Our QEMU: COLO ended (COLO_EXIT with QEMU's reason), it shut down, or the agent lost it. */
  'qemu',
  /** Something failed and will be tried again (figures: when). */
  'error',
] as const;
export type JournalKind = (typeof JOURNAL_KINDS)[number];

/** The answer to GET /v1/events: the host's records that matched, oldest first. */
export const eventsAnswerSchema = z.object({
  host: z.string(),
  records: z.array(journalRecordSchema),
  /** The newest record's number on this host (what --follow asks after next). */
  lastSeq: z.number(),
  /** More records matched than were sent: the oldest were left out. */
  truncated: z.boolean(),
});
export type EventsAnswer = z.infer<typeof eventsAnswerSchema>;

/** A checkpoint's pause as this host saw it: when it ended (wall-clock ms) and how long the VM was stopped (ms). */
export const pauseSchema = z.tuple([z.number(), z.number()]);

/** The checkpoint pauses of a VM on one host over the last minute, in ms. */
export const pauseStatsSchema = z.object({ count: z.number(), p50Ms: z.number().nullable(), p99Ms: z.number().nullable(), maxMs: z.number().nullable() });
export type PauseStats = z.infer<typeof pauseStatsSchema>;

/** One VM as this host runs it, for the live views: its status, and what the daemon saw of its checkpoints. */
export const vmOverviewSchema = vmStatusSchema.extend({
  /** The agents' heartbeat timeout: a path not heard for this long is silent. */
  heartbeatTimeoutMs: z.number(),
  /** The writer lease's length: a node without it asks the witness every 2 × leaseMs. */
  leaseMs: z.number(),
  /** Checkpoints completed since this daemon started. */
  checkpoints: z.number(),
  /** The last minute's pauses, summed up. */
  pauseStats: pauseStatsSchema,
  /** The recent pauses (the last minutes, bounded), oldest first. */
  pauses: z.array(pauseSchema),
});
export type VmOverview = z.infer<typeof vmOverviewSchema>;

/** GET /v1/overview: what one host says of itself and its VMs, for the dashboard and status --watch. */
export const overviewSchema = z.object({
  host: z.string(),
  version: z.string(),
  /** When this host made it (its wall clock, ms): how old the view is. */
  atMs: z.number(),
  uptimeMs: z.number(),
  /** The daemon can do its work: its journal is writable and no agent stopped on its own failure. */
  healthy: z.boolean(),
  healthProblems: z.array(z.string()),
  heartbeatSessions: hostInfoSchema.shape.heartbeatSessions,
  vms: z.array(vmOverviewSchema),
  /** The host's newest journal records, oldest first. */
  events: z.array(journalRecordSchema),
});
export type Overview = z.infer<typeof overviewSchema>;
