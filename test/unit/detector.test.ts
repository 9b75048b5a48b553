import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decide, type Observation } from '../../src/node/detector.js';

const healthy = (role: Observation['role']): Observation => ({
  role,
  qemuAlive: true,
  coloExited: false,
  peerFresh: true,
  peerQemu: 'alive',
  peerHearsUs: true,
  witness: true,
  leaseValid: role === 'primary',
});

test('a healthy pair does nothing', () => {
  assert.equal(decide(healthy('primary')).action, 'none');
  assert.equal(decide(healthy('secondary')).action, 'none');
});

test('secondary: COLO_EXIT with a silent primary → take over; with a dead primary QEMU → take over', () => {
  assert.equal(decide({ ...healthy('secondary'), coloExited: true, peerFresh: false, peerQemu: 'unknown' }).action, 'takeover');
  assert.equal(decide({ ...healthy('secondary'), coloExited: true, peerQemu: 'dead' }).action, 'takeover');
});

test('secondary: a dead primary agent next to a healthy primary VM is not a dead VM', () => {
  const d = decide({ ...healthy('secondary'), peerFresh: false, peerQemu: 'unknown' });
  assert.equal(d.action, 'none');
  assert.match(d.why!, /agent is down, not its VM/);
});

test('secondary: COLO_EXIT while the primary lives (replication link cut) → fence, never a second writer', () => {
  assert.equal(decide({ ...healthy('secondary'), coloExited: true }).action, 'fence');
  assert.equal(decide({ ...healthy('secondary'), coloExited: true, coloExitAgeMs: 600, settleMs: 500 }).action, 'fence');
});

test('secondary: right after COLO_EXIT it waits for the primary\'s word before judging', () => {
  const d = decide({ ...healthy('secondary'), coloExited: true, coloExitAgeMs: 5, settleMs: 500 });
  assert.equal(d.action, 'none');
  assert.equal(decide({ ...healthy('secondary'), coloExited: true, coloExitAgeMs: 5, settleMs: 500, peerQemu: 'dead' }).action, 'takeover');
});

test('primary: a dead secondary → primary failover, by report or by COLO_EXIT', () => {
  assert.equal(decide({ ...healthy('primary'), peerQemu: 'dead' }).action, 'primary-failover');
  assert.equal(decide({ ...healthy('primary'), coloExited: true }).action, 'primary-failover');
});

test('primary: silence → probe the secondary\'s QEMU; failover only if it does not answer', () => {
  const silent = { ...healthy('primary'), peerFresh: false, peerQemu: 'unknown' as const, peerHearsUs: false };
  assert.equal(decide(silent).action, 'probe');
  assert.equal(decide({ ...silent, probe: 'alive' }).action, 'none');
  assert.equal(decide({ ...silent, probe: 'dead' }).action, 'primary-failover');
});

test('primary: without the lease it runs on only while the secondary hears it', () => {
  assert.equal(decide({ ...healthy('primary'), leaseValid: false }).action, 'none');
  assert.equal(decide({ ...healthy('primary'), leaseValid: false, peerHearsUs: false }).action, 'fence');
  assert.equal(decide({ ...healthy('primary'), leaseValid: false, peerFresh: false, probe: 'alive' }).action, 'fence');
  assert.equal(decide({ ...healthy('primary'), witness: false, leaseValid: false, peerFresh: false, probe: 'alive' }).action, 'none');
});

test('a node whose QEMU is gone decides nothing', () => {
  assert.equal(decide({ ...healthy('secondary'), qemuAlive: false, coloExited: true, peerFresh: false }).action, 'none');
});

test('secondary: no heartbeat and no checkpoint for longer than a stall (a partition) → ask the witness and take over', () => {
  const silent = { ...healthy('secondary'), peerFresh: false, peerQemu: 'unknown' as const, stallMs: 5500 };
  const d = decide({ ...silent, checkpointAgeMs: 6000 });
  assert.equal(d.action, 'takeover');
  assert.match(d.why!, /no checkpoint for 6000 ms/);
  // Checkpoints still coming: only the primary's agent is gone.
  assert.equal(decide({ ...silent, checkpointAgeMs: 1500 }).action, 'none');
  // The heartbeat is there: the primary's word counts, whatever the checkpoints do.
  assert.equal(decide({ ...silent, peerFresh: true, peerQemu: 'alive', checkpointAgeMs: 60_000 }).action, 'none');
  // Without a witness a partition cannot be told from a dead primary: never a second writer.
  const noWitness = decide({ ...silent, witness: false, checkpointAgeMs: 60_000 });
  assert.equal(noWitness.action, 'none');
  assert.match(noWitness.why!, /no witness/);
});

test('primary: right after the agent starts, no lease yet and no word from the peer is no evidence', () => {
  const fresh = { ...healthy('primary'), leaseValid: false, peerHearsUs: false };
  assert.equal(decide({ ...fresh, starting: true }).action, 'none');
  assert.equal(decide({ ...fresh, starting: false }).action, 'fence');
  assert.equal(decide({ ...healthy('alone'), leaseValid: false, peerFresh: false, starting: true }).action, 'none');
});

test('alone: re-protects once the peer agent is back without a VM (or fenced) and its disk is not newer; never towards a newer disk', () => {
  const alone = { ...healthy('alone'), leaseValid: true, reprotect: true, generation: 3 };
  assert.equal(decide({ ...alone, peerRole: 'down', peerQemu: 'dead', peerGeneration: 2 }).action, 'reprotect');
  assert.equal(decide({ ...alone, peerRole: 'fenced', peerGeneration: 3 }).action, 'reprotect', 'a fenced node with the same generation never wrote alone');
  const newer = decide({ ...alone, peerRole: 'down', peerGeneration: 4 });
  assert.equal(newer.action, 'none');
  assert.match(newer.why!, /not older than ours/);
  assert.equal(decide({ ...alone, peerRole: 'down', peerGeneration: undefined }).action, 'none', 'an unknown generation is not older');
  assert.equal(decide({ ...alone, peerRole: 'down', peerGeneration: 2, reprotect: false }).action, 'none', 'off, or backing off');
  assert.equal(decide({ ...alone, peerRole: 'down', peerGeneration: 2, peerFresh: false }).action, 'none', 'no peer agent to start a secondary');
  assert.equal(decide({ ...alone, peerRole: 'secondary', peerGeneration: 2 }).action, 'none');
});

test('down: the whole pair down → the newest disk restarts the VM (of two equal ones, the first name); never while the peer runs or a newer disk is there', () => {
  const down = { ...healthy('primary'), role: 'down' as const, qemuAlive: false, peerRole: 'down' as const, peerQemu: 'dead' as const, restart: true, tieBreakFirst: false };
  assert.equal(decide({ ...down, generation: 5, peerGeneration: 4 }).action, 'restart');
  assert.equal(decide({ ...down, generation: 4, peerGeneration: 5 }).action, 'none');
  assert.equal(decide({ ...down, generation: 5, peerGeneration: 5 }).action, 'none', 'equal disks: the other name restarts');
  assert.equal(decide({ ...down, generation: 5, peerGeneration: 5, tieBreakFirst: true }).action, 'restart');
  assert.equal(decide({ ...down, generation: 5, peerGeneration: 4, peerRole: 'alone' }).action, 'none', 'the peer runs the VM');
  assert.equal(decide({ ...down, generation: 5, peerGeneration: 4, peerFresh: false }).action, 'none', 'no word from the peer: it may run the VM');
  assert.equal(decide({ ...down, generation: 5, peerGeneration: 4, restart: false }).action, 'none', 'joining, backing off, or off');
});
