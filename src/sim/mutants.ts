/**
 * The kept mutants (node/mutants.ts) and how the simulator catches each: by
 * the invariant that names its rule (invariants.ts), within the budget of
 * schedules of `npm run sim -- --mutants`, drawn around the situation the
 * rule exists for (a focus on the faults that make it). Where another rule
 * covers a rule, so that its absence alone loses nothing, the covering rule
 * is planted away too (`alongside`) and the rule is tested alone there.
 * Each mutant's first catch is kept as a stored schedule
 * (test/sim-regressions/), which `npm test` replays.
 */
import type { MutantName } from '../node/mutants.js';
import type { ViolationKind } from './invariants.js';
import type { Schedule } from './schedule-types.js';
import { scheduleFor, type Focus } from './schedule.js';

export interface MutantCheck {
  /** The invariants that name the rule the mutant removes. */
  caughtBy: ViolationKind[];
  focus: Focus;
  /** Rules that cover this one, planted away with it so that it is tested alone, and why. */
  alongside?: { mutants: MutantName[]; why: string };
}

/** Agent restarts, with checkpoints that may take seconds, or with two heartbeat paths (restart-kept's mutants). */
const restartsSlowCheckpoints: Focus = { witness: true, slowCheckpoints: true, weights: { 'kill-agent': 12, 'kill-qemu': 1 } };
const restartsTwoPaths: Focus = { witness: true, paths: 2, weights: { 'kill-agent': 12, 'kill-qemu': 1 } };
const partitions: Focus['weights'] = { cut: 8, 'kill-qemu': 3, 'power-loss': 2, 'witness-down': 2, 'witness-slow': 2 };

/** The two rules that cover each other for a pending epoch the witness recorded: one check, each planted with the other. */
const pendingEpochCheck: Omit<MutantCheck, 'alongside'> = {
  caughtBy: ['liveness-during-faults', 'liveness-after-faults'],
  focus: { witness: true, weights: { 'witness-lossy': 8, 'kill-agent': 4, 'kill-qemu': 4 } },
};

export const MUTANT_CHECKS: Record<MutantName, MutantCheck> = {
  // ---- the lease ----
  'write-alone-without-lease': { caughtBy: ['lease-before-writing-alone'], focus: { witness: true, weights: { 'slow-disk': 8, 'kill-qemu': 4, 'power-loss': 2, 'host-pause': 2 } } },
  'unfence-without-lease': { caughtBy: ['lease-before-writing-alone'], focus: { witness: true, weights: partitions } },
  'alone-without-lease-runs-on': {
    caughtBy: ['single-writer'],
    // A paused host cannot fence itself, whatever the rule: only the epochs keep the other node out then.
    focus: { witness: true, weights: { cut: 8, 'kill-qemu': 6, 'power-loss': 2, 'host-pause': 0 } },
    alongside: { mutants: ['witness-grants-stale-disk'], why: 'a node runs alone under an epoch of its own, so the witness refuses the peer\'s older disk the lease until it is resynced: its stale-disk checks cover this rule' },
  },
  'lease-from-reply': { caughtBy: ['single-writer', 'lease-before-writing-alone'], focus: { witness: true, weights: { 'witness-slow': 8, 'slow-link': 4, cut: 6, 'kill-qemu': 3 } } },
  'take-back-runs-vm-without-lease': { caughtBy: ['lease-before-writing-alone', 'epoch-before-writing-alone'], focus: { witness: true, stepFailP: 0.08, weights: { 'kill-qemu': 4, cut: 6, 'witness-down': 4 } } },
  'take-back-leaves-colo-running': { caughtBy: ['lease-before-writing-alone'], focus: { witness: true, stepFailP: 0.08, weights: { 'kill-qemu': 4, 'witness-down': 6, 'qmp-late': 3 } } },
  // Both only in the live order of a resume: every QEMU able to pause before its switchover.
  'live-switchover-without-lease': {
    caughtBy: ['lease-before-writing-alone', 'epoch-before-writing-alone'],
    focus: { witness: true, stepFailP: 0.08, pauseIntoColo: { a: true, b: true }, weights: { 'witness-down': 8, 'witness-lossy': 4, cut: 8, 'reset-replication': 4, 'kill-qemu': 3, 'host-pause': 3 } },
  },
  'take-back-cancels-paused-migration': {
    caughtBy: ['lease-before-writing-alone', 'epoch-before-writing-alone'],
    focus: { witness: true, stepFailP: 0.08, pauseIntoColo: { a: true, b: true }, weights: { 'record-lost': 4, 'kill-agent': 4, 'witness-down': 6, 'kill-qemu': 3 } },
  },
  'witness-no-grace': {
    caughtBy: ['single-writer', 'lease-before-writing-alone'],
    focus: { witness: true, weights: { 'witness-restart': 8, 'witness-down': 4, cut: 6, 'kill-qemu': 3 } },
    alongside: { mutants: ['witness-grants-stale-disk'], why: 'whoever held the lease before the restart runs alone under the newest epoch, so the other node\'s disk is stale and refused anyway: the stale-disk checks cover the grace period' },
  },
  // ---- disk epochs ----
  'witness-grants-stale-disk': { caughtBy: ['acked-write-kept', 'single-writer'], focus: { witness: true, weights: partitions } },
  'resync-towards-newer': {
    caughtBy: ['resync-direction'],
    focus: { witness: true, weights: partitions },
    alongside: { mutants: ['witness-grants-stale-disk'], why: 'with a witness a node only runs alone while its epoch is the newest on record, so its peer never holds a newer disk: the witness\'s stale-disk checks cover this rule' },
  },
  'takeover-with-older-disk': { caughtBy: ['acked-write-kept'], focus: { witness: false, weights: { cut: 8, 'kill-qemu': 6, 'power-loss': 2 } } },
  // The four rules of a replica a checkpoint made short: with lockstep's QEMU (P5) no checkpoint follows a write the
  // replica failed, so no replica is ever short and these rules carry no weight; each is tested where P5 is absent, with
  // a QEMU that reports the failed write at once and checkpoints on (replicaErrors 'reported').
  'takeover-with-short-replica': { caughtBy: ['acked-write-kept'], focus: { witness: true, stepFailP: 0.08, replicaErrors: 'reported', weights: { 'disk-errors': 8, 'witness-down': 8, 'witness-lossy': 4 } } },
  // With P5 too: a write the replica failed before any checkpoint, the primary fenced with the witness down.
  'restart-from-short-replica': { caughtBy: ['acked-write-kept'], focus: { witness: true, stepFailP: 0.08, weights: { 'disk-errors': 12, 'witness-down': 12, 'freeze-qemu': 6, 'kill-qemu': 6 } } },
  'replica-note-forgotten': { caughtBy: ['acked-write-kept'], focus: { witness: true, stepFailP: 0.08, weights: { 'disk-errors': 12, 'witness-down': 12, 'kill-agent': 10, 'freeze-qemu': 4, 'kill-qemu': 6 } } },
  'short-replica-after-own-takeover': { caughtBy: ['liveness-during-faults', 'liveness-after-faults'], focus: { witness: true, stepFailP: 0.03, weights: { 'disk-errors': 10, 'qmp-late': 8, 'witness-down': 4, 'record-lost': 4 } } },
  'resume-checkpoint-not-short': { caughtBy: ['acked-write-kept'], focus: { witness: true, stepFailP: 0.08, replicaErrors: 'reported', weights: { 'disk-errors': 10, 'kill-qemu': 6, 'witness-down': 6 } } },
  'short-replica-on-first-word': { caughtBy: ['liveness-during-faults', 'liveness-after-faults'], focus: { witness: true, stepFailP: 0.08, replicaErrors: 'reported', weights: { 'disk-errors': 8, 'record-lost': 6, 'host-pause': 4, 'kill-qemu': 2 } } },
  'takeover-with-unknown-epoch': {
    caughtBy: ['liveness-during-faults', 'liveness-after-faults'],
    focus: { witness: true, weights: { 'record-lost': 6, 'power-loss': 4, cut: 4 } },
    alongside: { mutants: ['peer-stuck-from-its-last-attempt'], why: 'the node with the newest disk gives a peer whose VM has not run for long up and asks the witness itself, however often the peer tries: that covers a peer that tries in vain' },
  },
  'unfence-with-unknown-epoch': { caughtBy: ['epoch-before-writing-alone'], focus: { witness: false, stepFailP: 0.08, weights: { 'record-lost': 6, 'kill-qemu': 4, cut: 4 } } },
  'unfence-before-recorded-epoch-on-disk': { caughtBy: ['epoch-before-writing-alone'], focus: { witness: true, stepFailP: 0.08, weights: { 'disk-errors': 10, 'kill-qemu': 8, 'power-loss': 2 } } },
  'pending-epoch-not-carried': {
    ...pendingEpochCheck,
    alongside: {
      mutants: ['recorded-epoch-never-committed'],
      why: 'a writer whose record request went unanswered fences itself; the witness\'s refusal of its older disk then names the pending epoch as the newest, and the fenced node writes it on its disk (commit-recorded) and asks again: that covers a lease request without it',
    },
  },
  'recorded-epoch-never-committed': {
    ...pendingEpochCheck,
    alongside: {
      mutants: ['pending-epoch-not-carried'],
      why: 'the fenced node\'s lease request carries its pending epoch, which the witness confirms with the grant, and the grant commits it: that covers a fenced node that does not write it itself',
    },
  },
  // ---- without a witness ----
  'takeover-on-silence-without-witness': { caughtBy: ['single-writer'], focus: { witness: false, weights: { cut: 10, 'kill-qemu': 2 } } },
  'begun-takeover-waits-for-peer': { caughtBy: ['liveness-during-faults'], focus: { witness: false, stepFailP: 0.15, weights: { 'kill-qemu': 6, 'host-gone': 4, 'qmp-late': 3 } } },
  'failed-failover-fences-without-witness': { caughtBy: ['liveness-during-faults', 'liveness-after-faults'], focus: { witness: false, stepFailP: 0.08, weights: { 'host-gone': 6, 'power-loss': 4, 'kill-qemu': 2 } } },
  // ---- what QEMU did ----
  // Where P5 is absent (see takeover-with-short-replica).
  'ignore-replica-write-errors': { caughtBy: ['acked-write-kept', 'replica-exact'], focus: { replicaErrors: 'reported', weights: { 'disk-errors': 10, 'kill-qemu': 3, 'power-loss': 2 } } },
  'unattachable-qemu-left-running': { caughtBy: ['liveness-during-faults', 'liveness-after-faults', 'protected-after-faults'], focus: { witness: false, weights: { 'kill-agent': 6, cut: 8, 'freeze-qemu': 2 } } },
  // ---- liveness ----
  'never-take-over-on-silence': { caughtBy: ['liveness-during-faults', 'liveness-after-faults'], focus: { witness: true, weights: { 'host-gone': 6, 'power-loss': 6, cut: 4 } } },
  'probe-at-heartbeat-timeout': { caughtBy: ['prompt-takeover'], focus: { witness: true, weights: { 'power-loss': 6, 'host-gone': 4, 'host-pause': 4, reboot: 2 } } },
  'takeover-waits-for-stall': { caughtBy: ['prompt-takeover'], focus: { witness: true, weights: { 'power-loss': 6, 'host-gone': 4, 'host-pause': 4, reboot: 2 } } },
  'slow-checkpoint-of-a-silent-primary-taken-for-its-loss': { caughtBy: ['restart-kept'], focus: restartsSlowCheckpoints },
  'slow-checkpoint-of-a-silent-secondary-taken-for-its-loss': { caughtBy: ['restart-kept'], focus: restartsSlowCheckpoints },
  'grace-from-start-only': { caughtBy: ['restart-kept'], focus: restartsSlowCheckpoints },
  'cut-when-the-peer-falls-silent': { caughtBy: ['restart-kept'], focus: restartsTwoPaths },
  'hung-from-a-query-across-a-checkpoint': { caughtBy: ['restart-kept'], focus: restartsSlowCheckpoints },
  'cut-from-before-the-peer-was-back': { caughtBy: ['restart-kept'], focus: restartsTwoPaths },
  'cut-from-us-unseen': { caughtBy: ['prompt-cut'], focus: { witness: true, paths: 2, weights: { cut: 12, 'kill-qemu': 1 } } },
  'cut-waits-for-stall': { caughtBy: ['prompt-cut'], focus: { witness: true, paths: 2, weights: { cut: 12, 'kill-qemu': 2 } } },
  'never-restart-on-silence': { caughtBy: ['liveness-during-faults', 'liveness-after-faults'], focus: { witness: true, weights: { 'host-gone': 6, 'power-loss': 6, 'kill-qemu': 4 } } },
  'found-stopped-waits-for-peer': { caughtBy: ['liveness-during-faults'], focus: { witness: false, stepFailP: 0.15, weights: { 'host-gone': 6, 'kill-qemu': 8, 'qmp-late': 6, cut: 4 } } },
  'peer-stuck-from-its-last-attempt': { caughtBy: ['liveness-during-faults'], focus: { witness: true, weights: { cut: 8, 'kill-qemu': 6, 'kill-agent': 3 } } },
  'never-unfence': { caughtBy: ['liveness-during-faults', 'liveness-after-faults', 'protected-after-faults'], focus: { weights: partitions } },
  'join-waits-for-a-gone-survivor': { caughtBy: ['protected-after-faults', 'liveness-after-faults', 'liveness-during-faults'], focus: { weights: { 'kill-agent': 8, 'power-loss': 4, 'kill-qemu': 6 } } },
  'resync-target-ignores-survivor-boot': { caughtBy: ['protected-after-faults', 'liveness-after-faults'], focus: { weights: { 'kill-agent': 10, 'power-loss': 6, 'kill-qemu': 4 } } },
  'take-back-retried-as-resync': { caughtBy: ['liveness-during-faults', 'liveness-after-faults'], focus: { witness: false, stepFailP: 0.15, weights: { 'kill-qemu': 8, cut: 6, garbage: 4 } } },
  'resync-done-said-once': { caughtBy: ['protected-after-faults', 'liveness-during-faults'], focus: { weights: { cut: 10, garbage: 8, 'kill-qemu': 8 } } },
  // ---- status ----
  'protected-despite-stall': { caughtBy: ['status-truth'], focus: { weights: { cut: 8 } } },
  // Where P5 is absent (see takeover-with-short-replica).
  'secondary-protected-without-primary-word': { caughtBy: ['replica-exact'], focus: { stepFailP: 0.15, replicaErrors: 'reported', weights: { 'disk-errors': 10, 'slow-disk': 10 } } },
  'protected-after-colo-exit': { caughtBy: ['status-truth'], focus: { weights: { 'reset-replication': 6, 'kill-qemu': 6 } } },
  // Only while the guest writes nothing: a write to the broken replica says the same (QUORUM_REPORT_BAD).
  'resume-forgets-its-colo-exit': { caughtBy: ['status-truth'], focus: { weights: { 'reset-replication': 6, 'kill-qemu': 6, cut: 3, 'client-idle': 6 } } },
  'stall-bound-x3': { caughtBy: ['status-truth'], focus: { weights: { cut: 8 } } },
};

/** The schedules mutant `m` is checked with: the generator's, drawn around its rule's situation. */
export function mutantSchedule(m: MutantName, seed: number): Schedule {
  return scheduleFor(seed, MUTANT_CHECKS[m].focus);
}
