import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { patchSeries, patchesDir, buildKey } from '../../src/lab/qemu-build.js';

test('the series lists every patch file, in order, and nothing else', () => {
  const series = patchSeries();
  const files = fs.readdirSync(patchesDir()).filter((f) => f.endsWith('.patch')).sort();
  assert.deepEqual([...series].sort(), files);
  assert.deepEqual(series, files, 'numbered in series order');
  assert.ok(series.length >= 2);
});

test('each patch is a reviewable, explained diff', () => {
  for (const p of patchSeries()) {
    const text = fs.readFileSync(path.join(patchesDir(), p), 'utf8');
    assert.match(text, /^Subject: \[PATCH[^\]]*\] .+/m, `${p}: subject line`);
    const header = text.slice(0, text.indexOf('\n---\n'));
    assert.ok(header.split('\n').length > 12, `${p}: the header explains the reason`);
    assert.match(text, /^diff --git a\//m, `${p}: a diff`);
  }
});

test('the P2 backport credits upstream', () => {
  const p2 = fs.readFileSync(path.join(patchesDir(), patchSeries()[1]!), 'utf8');
  assert.match(p2, /Nicholas Piggin/);
  assert.match(p2, /03bfc2188f/);
});

test('the build cache key depends on the exact patch set', () => {
  const all = patchSeries();
  assert.notEqual(buildKey(all), buildKey(all.slice(0, 1)));
  assert.notEqual(buildKey([]), buildKey(all.slice(0, 1)));
  assert.equal(buildKey(all), buildKey([...all]));
});
