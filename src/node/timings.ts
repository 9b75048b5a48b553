/**
 * Every timing of an agent, from the pair's config: the runtime (agent.ts)
 * and the simulator (../sim/) both take the core's configuration from here,
 * so that the simulated agents wait exactly as long as real ones.
 */
import type { ResolvedConfig } from '../config/load.js';
import { LockstepError } from '../util/errors.js';
import { ramTransferBoundMs } from '../pair/resync.js';
import type { CoreConfig } from './core/types.js';

/** How long a resync's new secondary may wait for its survivor beyond the mirror's own bound: the stop, the migration, the first checkpoint. */
const JOIN_SLACK_MS = 120_000;

/**
 * The heartbeat path whose two ends are the nodes' replication addresses (the README's advice: a dedicated network
 * first, the replication network second), when there is another path to hear the peer on; otherwise null.
 */
function replicationPathOf(c: Pick<ResolvedConfig, 'agents' | 'nodes'>, name: string, peer: string, paths: number): number | null {
  const links = c.agents?.links;
  const ours = c.nodes.find((n) => n.name === name)?.address;
  const theirs = c.nodes.find((n) => n.name === peer)?.address;
  if (!links || paths < 2 || ours === undefined || theirs === undefined) return null;
  for (let i = 0; i < paths; i++) if (links[name]?.[i] === ours && links[peer]?.[i] === theirs) return i;
  return null;
}

/** The core's configuration for node `name` of the pair (its peer `peer`), whose disk is `diskSizeBytes` long. */
export function coreConfig(c: Pick<ResolvedConfig, 'file' | 'agents' | 'replication' | 'vm' | 'nodes'>, name: string, peer: string, diskSizeBytes: number): CoreConfig {
  const a = c.agents;
  if (!a) throw new LockstepError(`${c.file}: no agents section`, { hint: 'add agents: { secret: ... } to run node agents' });
  const mine = a.links?.[name]?.length ?? 1;
  const theirs = a.links?.[peer]?.length ?? 1;
  const paths = Math.max(1, Math.min(mine, theirs));
  return {
    name,
    peer,
    paths,
    replicationPath: replicationPathOf(c, name, peer, paths),
    heartbeatIntervalMs: a.heartbeatIntervalMs,
    heartbeatTimeoutMs: a.heartbeatTimeoutMs,
    witness: a.witness !== undefined,
    leaseMs: a.leaseMs,
    reprotect: a.reprotect,
    // The periodic checkpoint interval twice, a checkpoint's own time, and the heartbeat timeout.
    stallMs: 2 * c.replication.checkpointDelayMs + a.heartbeatTimeoutMs + 1000,
    // A checkpoint holds the big lock while the dirty RAM goes over: at most the whole RAM.
    checkpointTimeoutMs: ramTransferBoundMs(c.vm.memory),
    hungMs: Math.max(3000, 3 * a.heartbeatTimeoutMs),
    // The monitor's own thread answers an out-of-band query within milliseconds even while a checkpoint holds the main
    // loop: a second without it is a stopped process (the outage bench's SIGSTOP: 3.3 s to decide with hungMs).
    frozenMs: Math.max(1000, 2 * a.heartbeatTimeoutMs),
    joinTimeoutMs: c.replication.resyncTimeoutMs + JOIN_SLACK_MS,
    diskSizeBytes,
  };
}
