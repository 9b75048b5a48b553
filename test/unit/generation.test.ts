import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generationFile, readDiskRecord, readEpoch, readReplicaNote, replicaNoteFile, writeDiskRecord, writeEpoch, writeReplicaNote } from '../../src/pair/generation.js';
import { compareEpochs, epochEquals, formatEpoch, mayResyncTowards, nextEpoch, type Epoch } from '../../src/pair/epoch.js';
import { counterProblems } from '../../src/lab/client-driver.js';

function withDir(fn: (dir: string) => void): void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-gen-'));
  try {
    fn(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('disk records: a missing file is "missing", never generation 0', () => {
  withDir((dir) => {
    assert.deepEqual(readDiskRecord(path.join(dir, 'none')), { state: 'missing' });
    assert.equal(readEpoch(path.join(dir, 'none')), undefined);
  });
});

test('disk records: written durably and read back; writeEpoch clears a pending epoch; no temporary files left', () => {
  withDir((dir) => {
    const e: Epoch = { run: 'r1', gen: 4, by: 'up' };
    const rec = writeEpoch(dir, e, 'up: primary');
    assert.deepEqual(rec.epoch, e);
    assert.deepEqual(readEpoch(dir), e);
    const r = readDiskRecord(dir);
    assert.equal(r.state, 'ok');
    assert.equal(r.state === 'ok' && r.record.why, 'up: primary');

    const next = nextEpoch(e, 'b');
    writeDiskRecord(dir, { epoch: e, pending: next, at: new Date().toISOString(), why: 'asking the witness' });
    const p = readDiskRecord(dir);
    assert.deepEqual(p.state === 'ok' && [p.record.epoch, p.record.pending], [e, next]);
    writeEpoch(dir, next, 'takeover: primary lost');
    const q = readDiskRecord(dir);
    assert.deepEqual(q.state === 'ok' && [q.record.epoch, q.record.pending], [next, undefined]);
    assert.deepEqual(fs.readdirSync(dir), ['generation.json'], 'no temporary files left');
    // The directory is created when needed.
    writeEpoch(path.join(dir, 'sub', 'node'), e, 'up');
    assert.deepEqual(readEpoch(path.join(dir, 'sub', 'node')), e);
  });
});

test('replica notes: none until written; written durably and read back; a damaged one says the disk lacks both; a new epoch written by up, a resync or a failover by hand clears it', () => {
  withDir((dir) => {
    assert.deepEqual(readReplicaNote(dir), { note: undefined });
    writeReplicaNote(dir, { missedWrite: false, forwardedWriteFailed: true, why: 'a said a write it forwarded to our disk failed' });
    const n = readReplicaNote(dir);
    assert.equal(n.error, undefined);
    assert.deepEqual(n.note && [n.note.missedWrite, n.note.forwardedWriteFailed, n.note.why], [false, true, 'a said a write it forwarded to our disk failed']);
    for (const text of ['', 'not json', '{"missedWrite": "no", "forwardedWriteFailed": false, "at": "", "why": ""}']) {
      fs.writeFileSync(replicaNoteFile(dir), text);
      const r = readReplicaNote(dir);
      assert.ok(r.error && r.error.length > 0, text);
      assert.deepEqual(r.note && [r.note.missedWrite, r.note.forwardedWriteFailed], [true, true], `${text}: taken to lack both`);
    }
    writeEpoch(dir, { run: 'r1', gen: 5, by: 'up' }, 'resync from a');
    const cleared = readReplicaNote(dir);
    assert.deepEqual(cleared.note && [cleared.note.missedWrite, cleared.note.forwardedWriteFailed], [false, false]);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['generation.json', 'replica-note.json'], 'no temporary files left');
  });
  withDir((dir) => {
    writeEpoch(dir, { run: 'r1', gen: 1, by: 'up' }, 'up');
    assert.deepEqual(fs.readdirSync(dir), ['generation.json'], 'no note written where there was none');
  });
});

test('disk records: a damaged file is "unreadable", never a known epoch', () => {
  withDir((dir) => {
    for (const text of ['{"generation": -3, "pair": "x", "at": "", "why": ""}', 'not json', '{"epoch": {"run": "r", "gen": 1.5, "by": "a"}, "at": "", "why": ""}', '{"epoch": {"run": "r", "gen": 1, "by": ""}, "at": "", "why": ""}', '']) {
      fs.writeFileSync(generationFile(dir), text);
      const r = readDiskRecord(dir);
      assert.equal(r.state, 'unreadable', text);
      assert.ok(r.state === 'unreadable' && r.error.length > 0);
      assert.equal(readEpoch(dir), undefined, `${text}: unknown, not "generation 0"`);
    }
    fs.mkdirSync(path.join(dir, 'd', 'generation.json'), { recursive: true });
    assert.equal(readDiskRecord(path.join(dir, 'd')).state, 'unreadable', 'a directory in its place');
  });
});

test('disk records: the legacy format (generation + pair) is read as an epoch begun by up', () => {
  withDir((dir) => {
    fs.writeFileSync(generationFile(dir), JSON.stringify({ generation: 7, pair: 'run-1', at: '2024-01-01T00:00:00.000Z', why: 'resync from a' }) + '\n');
    const r = readDiskRecord(dir);
    assert.deepEqual(r, { state: 'ok', record: { epoch: { run: 'run-1', gen: 7, by: 'up' }, at: '2024-01-01T00:00:00.000Z', why: 'resync from a' } });
  });
});

test('epochs: order within a run, divergence, other runs, unknown', () => {
  const up: Epoch = { run: 'r', gen: 1, by: 'up' };
  const a2 = nextEpoch(up, 'a');
  const b2 = nextEpoch(up, 'b');
  assert.deepEqual(a2, { run: 'r', gen: 2, by: 'a' });
  assert.equal(compareEpochs(up, { ...up }), 'same');
  assert.equal(compareEpochs(a2, up), 'newer');
  assert.equal(compareEpochs(up, a2), 'older');
  assert.equal(compareEpochs(a2, b2), 'divergent');
  assert.equal(compareEpochs(a2, { ...a2, run: 'other' }), 'other-run');
  assert.equal(compareEpochs(a2, undefined), 'unknown');
  assert.equal(compareEpochs(undefined, a2), 'unknown');
  assert.equal(compareEpochs(undefined, undefined), 'unknown');
  assert.ok(epochEquals(a2, { ...a2 }));
  assert.ok(!epochEquals(a2, b2));
  assert.equal(formatEpoch(a2), '2/a');
  assert.equal(formatEpoch(undefined), 'unknown');
});

test('a resync may only go towards an older or identical disk', () => {
  const up: Epoch = { run: 'r', gen: 1, by: 'up' };
  const a2 = nextEpoch(up, 'a');
  const b2 = nextEpoch(up, 'b');
  assert.equal(mayResyncTowards(a2, up), true, 'newer source');
  assert.equal(mayResyncTowards(a2, { ...a2 }), true, 'the same data');
  assert.equal(mayResyncTowards(up, a2), false, 'never over newer data');
  assert.equal(mayResyncTowards(a2, b2), false, 'never between divergent disks');
  assert.equal(mayResyncTowards(a2, { ...up, run: 'old' }), false, 'never across runs');
  assert.equal(mayResyncTowards(a2, undefined), false, 'never over a disk of unknown epoch');
  assert.equal(mayResyncTowards(undefined, up), false, 'never from a disk of unknown epoch');
});

test('the counter check allows one skip per kill, never a step back', () => {
  assert.equal(counterProblems([1, 2, 3, 5, 6]), undefined);
  assert.match(counterProblems([1, 2, 3, 5, 6, 8])!, /skipped 2 values, more than 1/);
  assert.equal(counterProblems([1, 2, 3, 5, 6, 8], 2), undefined);
  assert.match(counterProblems([1, 2, 3, 2, 4], 5)!, /went back or repeated at answers 0-/);
  assert.match(counterProblems([1, 2, 6], 5)!, /skipped acknowledged values/);
});
