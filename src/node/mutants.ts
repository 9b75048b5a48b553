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
