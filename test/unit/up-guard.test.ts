/**
 * `up` copies vm.disk.image over the secondary's replica. These tests call
 * its disk checks (checkDisksBeforeUp, the part of up's preflight that
 * decides about the disks) on files in a temporary directory: no VMs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseConfig, type ResolvedConfig } from '../../src/config/load.js';
import { planPair, replicaPath, type PairPlan, type Runtime } from '../../src/pair/plan.js';
import { checkDisksBeforeUp, decideDisks, readStateStrict, type DiskFacts } from '../../src/pair/up.js';
import { writeEpoch, readEpoch, generationFile } from '../../src/pair/generation.js';
import { stateFile } from '../../src/pair/state.js';
import type { Epoch } from '../../src/pair/epoch.js';

const rt: Runtime = { binary: '/usr/bin/qemu-system-x86_64', accel: 'tcg', dataDirs: [], reconnectMs: false };

interface Lab {
  dir: string;
  c: ResolvedConfig;
  plan: PairPlan;
  image: string;
  replica: string;
}

function lab(fn: (l: Lab) => void): void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-up-'));
  try {
    const yaml = `
name: web
vm:
  memory: 128M
  disk: { image: disks/web.qcow2 }
nodes:
  - { name: a, address: 127.0.0.1 }
  - { name: b, address: 127.0.0.2 }
replication: { bufferDir: ${dir}/shm }
`;
    const c = parseConfig(yaml, path.join(dir, 'web.yaml'));
    const plan = planPair(c, rt);
    fs.mkdirSync(path.dirname(c.vm.disk.image), { recursive: true });
    fs.mkdirSync(plan.secondary.dataDir, { recursive: true });
    fn({ dir, c, plan, image: c.vm.disk.image, replica: plan.secondary.disk });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const run = 'run-1';
const up1: Epoch = { run, gen: 1, by: 'up' };
const b2: Epoch = { run, gen: 2, by: 'b' };
const a2: Epoch = { run, gen: 2, by: 'a' };

function disks(l: Lab, image: string, replica: string): void {
  fs.writeFileSync(l.image, image);
  fs.writeFileSync(l.replica, replica);
}

test('state.json deleted after a takeover by the secondary: up refuses, and the newer replica is untouched', () => {
  lab((l) => {
    // up gave both disks epoch 1; b took over (epoch 2) and wrote alone; then state.json was lost.
    disks(l, 'old data', 'newest data');
    writeEpoch(l.plan.primary.dataDir, up1, 'up: primary');
    writeEpoch(l.plan.secondary.dataDir, b2, 'failover: primary lost');
    assert.equal(fs.existsSync(stateFile(l.c.stateDir)), false);
    const before = fs.statSync(l.replica).mtimeMs;
    assert.throws(
      () => checkDisksBeforeUp(l.c, l.plan),
      (err: Error & { hint?: string }) => {
        assert.match(err.message, new RegExp(`the replica ${l.replica} holds newer data than ${l.image}`));
        assert.match(err.message, /epoch 1\/up of run run-1/);
        assert.match(err.message, /epoch 2\/b of run run-1/);
        assert.match(err.hint ?? '', /lockstep up --adopt-newest .* copies .*replica\.qcow2 over .*web\.qcow2/);
        return true;
      },
    );
    assert.equal(fs.readFileSync(l.replica, 'utf8'), 'newest data');
    assert.equal(fs.readFileSync(l.image, 'utf8'), 'old data');
    assert.equal(fs.statSync(l.replica).mtimeMs, before);
  });
});

test('--adopt-newest copies the newer replica over the image first, and the image takes its epoch', () => {
  lab((l) => {
    disks(l, 'old data', 'newest data');
    writeEpoch(l.plan.primary.dataDir, up1, 'up: primary');
    writeEpoch(l.plan.secondary.dataDir, b2, 'failover: primary lost');
    const steps: string[] = [];
    const d = checkDisksBeforeUp(l.c, l.plan, { adoptNewest: true, step: (m) => steps.push(m) });
    assert.deepEqual(d.adopt, { from: l.replica, epoch: b2 });
    assert.equal(fs.readFileSync(l.image, 'utf8'), 'newest data');
    assert.deepEqual(readEpoch(l.plan.primary.dataDir), b2);
    assert.match(steps[0]!, /copying the newest disk/);
    // A second look finds nothing to adopt.
    assert.deepEqual(checkDisksBeforeUp(l.c, l.plan), {});
  });
});

test('a damaged state.json: up refuses and names the file', () => {
  lab((l) => {
    disks(l, 'data', 'data');
    fs.mkdirSync(l.c.stateDir, { recursive: true });
    fs.writeFileSync(stateFile(l.c.stateDir), '{"version": 1, "nodes": [');
    for (const fn of [() => checkDisksBeforeUp(l.c, l.plan), () => readStateStrict(l.c)]) {
      assert.throws(fn, (err: Error & { hint?: string }) => {
        assert.match(err.message, new RegExp(`${stateFile(l.c.stateDir).replace(/[.]/g, '\\.')}, exists but cannot be read: it is not valid JSON`));
        assert.match(err.hint ?? '', /move it away \(mv .*state\.json .*state\.json\.damaged\)/);
        return true;
      });
    }
    fs.writeFileSync(stateFile(l.c.stateDir), '[]');
    assert.throws(() => readStateStrict(l.c), /no "nodes" list/);
    fs.rmSync(stateFile(l.c.stateDir));
    assert.equal(readStateStrict(l.c), undefined, 'no state file: nothing to go by but the epochs');
  });
});

test('what up may do without asking: first up, same epochs, an older replica, no replica', () => {
  lab((l) => {
    disks(l, 'data', 'other');
    assert.deepEqual(checkDisksBeforeUp(l.c, l.plan), {}, 'no records at all: the first up');
    writeEpoch(l.plan.primary.dataDir, up1, 'up: primary');
    writeEpoch(l.plan.secondary.dataDir, up1, 'up: secondary');
    assert.deepEqual(checkDisksBeforeUp(l.c, l.plan), {}, 'the same epoch');
    writeEpoch(l.plan.primary.dataDir, a2, 'failover: secondary lost');
    assert.deepEqual(checkDisksBeforeUp(l.c, l.plan), {}, 'the primary carried on alone: the replica is older');
    writeEpoch(l.plan.secondary.dataDir, b2, 'failover');
    fs.rmSync(l.replica);
    assert.deepEqual(checkDisksBeforeUp(l.c, l.plan), {}, 'no replica file: nothing to lose');
  });
});

test('no disk provably newer: refused even with --adopt-newest, saying how to choose', () => {
  const cases: Array<[string, Epoch | 'damaged' | undefined, Epoch | 'damaged' | undefined, RegExp]> = [
    ['divergent', a2, b2, /divergent/],
    ['other runs', up1, { ...up1, run: 'run-2' }, /different runs/],
    ['replica record missing', up1, undefined, /no epoch \(no record\)/],
    ['image record missing', undefined, up1, /no epoch \(no record\)/],
    ['replica record damaged', up1, 'damaged', /damaged record/],
  ];
  for (const [label, ea, eb, why] of cases) {
    lab((l) => {
      disks(l, 'image data', 'replica data');
      for (const [dir, e] of [[l.plan.primary.dataDir, ea], [l.plan.secondary.dataDir, eb]] as const) {
        if (e === 'damaged') fs.writeFileSync(generationFile(dir), '{oops');
        else if (e) writeEpoch(dir, e, 'test');
      }
      for (const adoptNewest of [false, true]) {
        assert.throws(
          () => checkDisksBeforeUp(l.c, l.plan, { adoptNewest }),
          (err: Error & { hint?: string }) => {
            assert.match(err.message, /cannot tell which disk holds the newest data/, label);
            assert.match(err.message, why, label);
            assert.ok(err.message.includes(l.image) && err.message.includes(l.replica), `${label}: names both disks`);
            assert.match(err.hint ?? '', /--adopt-newest cannot choose/);
            return true;
          },
        );
      }
      assert.equal(fs.readFileSync(l.replica, 'utf8'), 'replica data', label);
      assert.equal(fs.readFileSync(l.image, 'utf8'), 'image data', label);
    });
  }
});

test('state.json naming the survivor\'s disk: refused without the flag, adopted with it (as before)', () => {
  lab((l) => {
    disks(l, 'old', 'newest');
    writeEpoch(l.plan.primary.dataDir, up1, 'up');
    writeEpoch(l.plan.secondary.dataDir, b2, 'failover');
    fs.mkdirSync(l.c.stateDir, { recursive: true });
    fs.writeFileSync(stateFile(l.c.stateDir), JSON.stringify({ version: 1, name: 'web', nodes: [], authoritativeDisk: l.replica, lastFailover: { at: 'T', from: 'a', to: 'b', reason: 'r', ms: 1 } }));
    assert.throws(() => checkDisksBeforeUp(l.c, l.plan), /the newest data of pair "[^"]+" is in .*replica\.qcow2 \(node b took over at T\)/);
    checkDisksBeforeUp(l.c, l.plan, { adoptNewest: true });
    assert.equal(fs.readFileSync(l.image, 'utf8'), 'newest');
  });
});

test('the first node last ran from its own replica (it was a resync target): the image is older than that', () => {
  lab((l) => {
    // up; b took over; a was resynced from b as the new secondary (its own replica); then a took over again.
    disks(l, 'oldest', 'b data');
    const aReplica = replicaPath(l.c, l.c.nodes[0]!);
    fs.mkdirSync(path.dirname(aReplica), { recursive: true });
    fs.writeFileSync(aReplica, 'newest');
    const past = new Date(Date.now() - 60_000);
    fs.utimesSync(l.image, past, past);
    writeEpoch(l.plan.primary.dataDir, { run, gen: 3, by: 'a' }, 'failover');
    writeEpoch(l.plan.secondary.dataDir, b2, 'failover');
    assert.throws(() => checkDisksBeforeUp(l.c, l.plan), (err: Error & { hint?: string }) => {
      assert.match(err.message, /does not hold the newest data of pair "[^"]+": the first node last ran from .*a\/replica\.qcow2 \(epoch 3\/a/);
      assert.match(err.hint ?? '', /--adopt-newest .* copies .*a\/replica\.qcow2 over/);
      return true;
    });
    assert.equal(fs.readFileSync(l.replica, 'utf8'), 'b data');
    checkDisksBeforeUp(l.c, l.plan, { adoptNewest: true });
    assert.equal(fs.readFileSync(l.image, 'utf8'), 'newest');
    assert.deepEqual(checkDisksBeforeUp(l.c, l.plan), {}, 'the image is now the newest');
  });
});

test('decideDisks: the replica is never adopted when state.json names a disk the replica is newer than', () => {
  const base: DiskFacts = {
    image: '/i',
    replica: '/r',
    replicaExists: true,
    imageRecord: { state: 'ok', record: { epoch: a2, at: '', why: '' } },
    imageRecordFile: '/a/generation.json',
    replicaRecord: { state: 'ok', record: { epoch: { run, gen: 3, by: 'b' }, at: '', why: '' } },
    replicaRecordFile: '/b/generation.json',
    firstReplica: '/a/replica',
    authoritative: { disk: '/a/replica', why: '' },
    adoptNewest: true,
    configFile: '/c.yaml',
    pairName: 'p',
  };
  assert.throws(() => decideDisks(base), /the replica is newer/);
  assert.deepEqual(decideDisks({ ...base, replicaRecord: { state: 'ok', record: { epoch: up1, at: '', why: '' } } }), { adopt: { from: '/a/replica', epoch: a2 } });
});
