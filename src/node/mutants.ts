/**
 * Planted bugs, for the simulator's mutation check (npm run sim -- --mutants):
 * each switches off one safety or liveness rule of the agent core or the
 * witness core, at the one place that rule is decided. None is ever planted
 * in a lockstep process: only the simulator plants them, one at a time, to
 * show that it catches the absence of each rule, by the invariant that names
 * the rule (sim/mutants.ts says which).
 */
export const MUTANTS = {
  'write-alone-without-lease': 'a node begins to write alone (takeover, primary failover, restart) without holding the lease (and the core\'s own assertion of it removed)',
  'take-back-runs-vm-without-lease': 'the take-back of a failed resync lets the VM it had stopped run again although the lease ran out meanwhile',
  'ignore-replica-write-errors': 'the core ignores QUORUM_REPORT_BAD and the replication child\'s failed writes: the secondary\'s replica is still called exact',
  'takeover-with-unknown-epoch': 'a node whose disk epoch is unknown keeps trying to take over (asking for a lease it cannot use), so the node with the newest disk waits for it for ever',
  'unfence-with-unknown-epoch': 'a fenced node whose disk epoch is unknown lets its VM run again (without a witness, on the peer\'s word alone)',
  'trust-timed-out-commands': 'the core believes a stop or cont that timed out did nothing, and never checks the run state QEMU reports',
  'take-back-leaves-colo-running': 'a take-back that may not let the VM run stops it only at its end, after its Primary Failover made it write alone',
} as const;

export type MutantName = keyof typeof MUTANTS;

let active: ReadonlySet<string> = new Set();

/** Whether mutant `m` is planted (never, outside the simulator's mutation check). */
export function planted(m: MutantName): boolean {
  return active.size > 0 && active.has(m);
}

/** Plants exactly these mutants (the simulator's mutation check only). */
export function plant(ms: readonly MutantName[]): void {
  active = new Set(ms);
}
