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
