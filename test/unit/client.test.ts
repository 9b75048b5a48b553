import { test } from 'node:test';
import assert from 'node:assert/strict';
import { counterGaps } from '../../src/lab/client-driver.js';

type R = [number, number, number, number | null, string | null];
const ok = (id: number, count: number): R => [id, id * 100, 10, count, null];
const failed = (id: number): R => [id, id * 100, 15_000, null, 'timeout'];

test('the counter check accounts for every skipped value with a failed request in between', () => {
  assert.equal(counterGaps([ok(1, 1), ok(2, 2), ok(3, 3)]), undefined);
  assert.equal(counterGaps([ok(1, 1), failed(2), ok(3, 3)]), undefined, 'the failed request may have run');
  assert.match(counterGaps([ok(1, 1), ok(2, 3)])!, /1 value\(s\) skipped, but only 0 request\(s\) failed/, 'a skip without a failure is a lost write');
  assert.match(counterGaps([ok(1, 1), failed(2), ok(3, 4)])!, /2 value\(s\) skipped, but only 1/);
  assert.match(counterGaps([ok(1, 5), ok(2, 5)])!, /went back or repeated/);
  assert.match(counterGaps([ok(1, 5), ok(2, 4)])!, /went back or repeated/);
});
