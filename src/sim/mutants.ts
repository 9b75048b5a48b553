/**
 * The kept mutants (node/mutants.ts) and how the simulator must catch each:
 * by the invariant that names its rule, within the budget of schedules of
 * `npm run sim -- --mutants`.
 */
import type { MutantName } from '../node/mutants.js';
import type { ViolationKind } from './invariants.js';
import type { Schedule } from './schedule-types.js';
import { scheduleFor } from './schedule.js';

export interface MutantCheck {
  /** The invariants that name the rule the mutant removes. */
  caughtBy: ViolationKind[];
  /** Planted with it: rules that cover this one, removed so that it is tested alone. */
  alongside?: MutantName[];
}

export const MUTANT_CHECKS: Record<MutantName, MutantCheck> = {
  'write-alone-without-lease': { caughtBy: ['lease-before-writing-alone'] },
  'take-back-runs-vm-without-lease': { caughtBy: ['lease-before-writing-alone'] },
  'ignore-replica-write-errors': { caughtBy: ['acked-write-kept', 'replica-exact'] },
  'takeover-with-unknown-epoch': { caughtBy: ['liveness-during-faults', 'liveness-after-faults'] },
  'unfence-with-unknown-epoch': { caughtBy: ['epoch-before-writing-alone'] },
  'trust-timed-out-commands': { caughtBy: ['liveness-during-faults', 'liveness-after-faults', 'single-writer', 'lease-before-writing-alone'] },
  'take-back-leaves-colo-running': { caughtBy: ['lease-before-writing-alone'] },
};

/** The schedules a mutant is checked with. */
export function mutantSchedule(_m: MutantName, seed: number): Schedule {
  return scheduleFor(seed);
}
