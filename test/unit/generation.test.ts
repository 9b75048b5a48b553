import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readGeneration, writeGeneration, bumpGeneration } from '../../src/pair/generation.js';
import { counterProblems } from '../../src/lab/client-driver.js';

test('disk generations: 0 before any, written durably, bumped by one per takeover', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-gen-'));
  try {
    assert.equal(readGeneration(path.join(dir, 'none')).generation, 0);
    writeGeneration(dir, 4, 'up: primary');
    assert.equal(readGeneration(dir).generation, 4);
    const g = bumpGeneration(dir, 'takeover: primary lost');
    assert.deepEqual([g.generation, readGeneration(dir).generation, readGeneration(dir).why], [5, 5, 'takeover: primary lost']);
    fs.writeFileSync(path.join(dir, 'generation.json'), '{"generation": -3}');
    assert.equal(readGeneration(dir).generation, 0, 'a damaged file counts as no data, never as newer');
    assert.deepEqual(fs.readdirSync(dir), ['generation.json'], 'no temporary files left');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the counter check allows one skip per kill, never a step back', () => {
  assert.equal(counterProblems([1, 2, 3, 5, 6]), undefined);
  assert.match(counterProblems([1, 2, 3, 5, 6, 8])!, /skipped 2 values, more than 1/);
  assert.equal(counterProblems([1, 2, 3, 5, 6, 8], 2), undefined);
  assert.match(counterProblems([1, 2, 3, 2, 4], 5)!, /went back or repeated at answers 0-/);
  assert.match(counterProblems([1, 2, 6], 5)!, /skipped acknowledged values/);
});
