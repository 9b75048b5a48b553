/**
 * Planted bugs, for the simulator's mutation check (npm run sim -- --mutants):
 * each switches off one rule of the agent core or the witness core, at the
 * one place that rule is decided, and says which rule and where it came
 * from. None is ever planted in a lockstep process: only the simulator plants
 * them, to show that it catches the absence of each rule by the invariant
 * that names the rule (sim/mutants.ts says which, and which schedules).
 */
export const MUTANTS = {
  // ---- the lease: only its holder writes alone ----
  'write-alone-without-lease': 'a node begins to write alone (takeover, primary failover, restart) although the lease ran out while its epoch was recorded (and the core\'s own assertion of it removed); seed 34 of the first generator',
  'unfence-without-lease': 'a fenced node lets its VM run again without the lease',
  'alone-without-lease-runs-on': 'a node running alone keeps running after its lease ran out while it hears nobody',
  'lease-from-reply': 'the lease is counted from the witness\'s reply instead of from the request',
  'take-back-runs-vm-without-lease': 'the take-back of a failed resync lets the VM it had stopped run again although the lease ran out meanwhile (or its disk\'s epoch is unknown)',
  'take-back-leaves-colo-running': 'a take-back that may not let the VM run stops it only at its end, after its Primary Failover made it write alone',
  'live-switchover-without-lease': 'a live resume lets its switchover into COLO go on while the VM may not run alone, and a switchover that fails makes QEMU run the VM again alone',
  'take-back-cancels-paused-migration': 'a take-back that may not let the VM run cancels a live resume\'s migration paused before its switchover, and QEMU runs the VM it had stopped for the last pass again; seed 360 of the generator that first drew live resumes',
  'witness-no-grace': 'a restarted witness grants the lease at once, without waiting for the leases of its previous life to run out',
  // ---- disk epochs: never the wrong way ----
  'witness-grants-stale-disk': 'the witness grants the lease (and records a new epoch) for a disk older than the newest of its run: both of its stale-disk checks removed',
  'resync-towards-newer': 'a node running alone resyncs a peer whose disk is newer or divergent, and the peer lets it (both sides\' checks off)',
  'takeover-with-older-disk': 'a secondary takes over with a disk older than its peer\'s (as the peer last said); seed 1243 of the first generator',
  'takeover-with-short-replica': 'a secondary takes over with a disk its primary said missed a write it acknowledged; focus schedule 1,641 of unfence-before-recorded-epoch-on-disk',
  'resume-checkpoint-not-short': 'a checkpoint of a resume\'s new COLO session after the new secondary\'s replica failed a write does not make the primary say that replica is short; soak seed 12,002,203',
  'restart-from-short-replica': 'a replica whose primary said a forwarded write failed restarts the VM from its disk once its QEMU is gone, without that write (the witness was down, so the primary had fenced without a new epoch); soak seed 12,624,199',
  'short-replica-after-own-takeover': 'a replica told that a forwarded write failed never restarts, even under the epoch of a takeover of its own that began (and committed its VM\'s writes) before its QEMU ended: the primary\'s disk stale, nobody runs the VM; soak seed 12,705,157',
  'replica-note-forgotten': 'an agent started again forgets what its primary said its disk lacks (a missed or a failed forwarded write): the note on disk is not read, as when both were kept in memory only',
  'short-replica-on-first-word': 'a secondary told that its replica failed a write refuses to take over at once, before any checkpoint made that write part of its disk (with the primary\'s disk record lost, nobody runs the VM); focus schedule 86 of unfence-before-recorded-epoch-on-disk',
  'takeover-with-unknown-epoch': 'a node whose disk epoch is unknown keeps trying to take over (asking for a lease it cannot use), so the node with the newest disk waits for it for ever',
  'unfence-with-unknown-epoch': 'a fenced node whose disk epoch is unknown lets its VM run again (without a witness, on the peer\'s word alone)',
  'unfence-before-recorded-epoch-on-disk': 'a fenced node whose disk failed to take the epoch the witness recorded for it lets its VM run again under its older epoch; seed 1,014,094 of the soak',
  'pending-epoch-not-carried': 'a lease request does not carry the epoch we asked the witness to record and never heard back about',
  'recorded-epoch-never-committed': 'a fenced node whose pending epoch the witness says it recorded does not write it on its disk, and waits for a lease its older disk cannot get (unless the lease request carries that epoch)',
  // ---- without a witness ----
  'takeover-on-silence-without-witness': 'without a witness, a secondary takes over when its primary falls silent',
  'begun-takeover-waits-for-peer': 'without a witness, a secondary whose takeover (begun on the primary\'s word that its QEMU died) failed half-way waits for the primary\'s word again once it falls silent, for ever if its host is gone; focus schedule 1,642 of found-stopped-waits-for-peer',
  'failed-failover-fences-without-witness': 'without a witness, a failover that fails fences the VM (nobody else can have been granted anything)',
  // ---- what QEMU did ----
  'ignore-replica-write-errors': 'the core ignores QUORUM_REPORT_BAD: the secondary\'s replica is still called exact after it missed a write',
  'unattachable-qemu-left-running': 'a QEMU that cannot be attached is never ended (it can be neither watched nor stopped)',
  // ---- liveness ----
  'never-take-over-on-silence': 'a secondary never takes over while its primary is silent, witness or not',
  'probe-at-heartbeat-timeout': 'a silent peer is probed only once the heartbeat timeout has passed, so that the takeover (or a primary\'s failover) is decided a probe\'s bound later',
  'takeover-waits-for-stall': 'a secondary whose primary is silent on every path waits for the checkpoint stream to stall (5.5 s after the last checkpoint by default) although the primary\'s host answers nothing',
  'slow-checkpoint-of-a-silent-primary-taken-for-its-loss': 'a secondary whose primary is silent takes over once a checkpoint has been under way for the stall bound, though the primary\'s host answers (its agent may only be restarting, its checkpoint slow), instead of waiting for the checkpoint\'s own bound',
  'slow-checkpoint-of-a-silent-secondary-taken-for-its-loss': 'a primary whose secondary is silent carries on alone once a checkpoint has been under way for the stall bound, though the secondary\'s QEMU answers (its agent may only be restarting, the checkpoint slow), instead of waiting for the checkpoint\'s own bound',
  'grace-from-start-only': 'the start\'s grace counts from the agent\'s start only, not from its first attach to its QEMU: a restarted primary whose attach took long (its QEMU in a slow checkpoint) fences at once, its lease run out and the secondary not hearing it yet',
  'cut-when-the-peer-falls-silent': 'a primary takes the replication path\'s silence (or its unacked heartbeats) for a cut though the peer fell silent on its other path too, a heartbeat\'s jitter later (its agent killed): no margin between the silence and the last word heard elsewhere',
  'hung-from-a-query-across-a-checkpoint': 'the watchdog judges a QMP query sent during a checkpoint from when it was sent, even once the checkpoint has ended: a checkpoint longer than the hung bound is yanked as it ends, before the answer comes',
  'cut-from-before-the-peer-was-back': 'a primary takes a silence on the heartbeat path over the replication network that began before its secondary was heard again (its agent restarted, or every path silent) for a cut, while that path\'s session is not back yet',
  'cut-from-us-unseen': 'a primary takes no notice of its heartbeats over the replication network going unacked while its secondary\'s still come (a cut one way, from the primary: the checkpoint stream is stuck) and waits for the stall bound',
  'cut-waits-for-stall': 'a primary whose replication link alone is cut (the heartbeat over it silent, the peer heard on another path) waits for the checkpoint stream to stall (5.5 s after the last checkpoint by default, or a checkpoint\'s own bound) before it carries on alone',
  'never-restart-on-silence': 'a node whose QEMU is gone never restarts the VM while its peer is silent',
  'found-stopped-waits-for-peer': 'without a witness, a node writing alone whose VM was found stopped (a stop that took effect late) waits for its peer\'s word to let it run again, for ever if the peer is gone; focus schedule 1,480 of take-back-retried-as-resync',
  'peer-stuck-from-its-last-attempt': 'a node whose QEMU is gone measures how long its peer has not run the VM from the peer\'s last change of state, which each new takeover attempt resets: it waits for ever while the attempts keep failing; soak seed 2,012,113',
  'never-unfence': 'a fenced node never lets its VM run again',
  'join-waits-for-a-gone-survivor': 'a resync\'s target keeps its new secondary for a survivor whose agent restarted or gave the resync up; seed 21 of the first generator',
  'resync-target-ignores-survivor-boot': 'a resync\'s target knows the survivor\'s agent only from heartbeats, so a survivor that asked before any heartbeat arrived and then restarted goes unnoticed; focus schedule 513 of pending-epoch-not-carried',
  'take-back-retried-as-resync': 'a take-back of a failed resync that failed is tried again with a resync\'s back-off (up to 30 s) while the VM it stopped waits; focus schedule 1,473 of resync-done-said-once',
  'resync-done-said-once': 'the survivor tells its new secondary\'s agent once that the resync is done, and not again when that word is lost (review of the first core)',
  // ---- status ----
  'protected-despite-stall': 'status says PROTECTED while checkpoints have stalled',
  'secondary-protected-without-primary-word': 'a secondary says PROTECTED without its primary\'s current word that the replica missed no write; seed 1,019,804 of the soak',
  'protected-after-colo-exit': 'status says PROTECTED after COLO_EXIT',
  'resume-forgets-its-colo-exit': 'a resume that ends just after its new COLO session broke forgets that COLO_EXIT and calls the pair protected; seeds 2,012,518 and 2,041,753 of the soak',
  'stall-bound-x3': 'a stream counts as stalled only after three times the stall bound',
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
