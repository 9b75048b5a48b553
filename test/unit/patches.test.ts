import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { patchSeries, patchesDir, buildKey, patchCode, patchSteps, QEMU_LINES } from '../../src/lab/qemu-build.js';

for (const line of QEMU_LINES) {
  test(`QEMU ${line}: the series lists every patch file, in order, and nothing else`, () => {
    const series = patchSeries(line);
    const files = fs.readdirSync(patchesDir(line)).filter((f) => f.endsWith('.patch')).sort();
    assert.deepEqual([...series].sort(), files);
    assert.deepEqual(series, files, 'numbered in series order');
    assert.ok(series.length >= 2);
  });

  test(`QEMU ${line}: each patch is a reviewable, explained diff`, () => {
    for (const p of patchSeries(line)) {
      const text = fs.readFileSync(path.join(patchesDir(line), p), 'utf8');
      assert.match(text, /^Subject: \[PATCH[^\]]*\] .+/m, `${p}: subject line`);
      const header = text.slice(0, text.indexOf('\n---\n'));
      assert.ok(header.split('\n').length > 12, `${p}: the header explains the reason`);
      assert.match(text, /^diff --git a\//m, `${p}: a diff`);
    }
  });

  test(`QEMU ${line}: the P2 fix credits upstream`, () => {
    const p2 = fs.readFileSync(path.join(patchesDir(line), patchSeries(line)[1]!), 'utf8');
    assert.match(p2, /Nicholas Piggin/);
    assert.match(p2, /03bfc2188f/);
  });

  test(`QEMU ${line}: the same fixes, in the same order, as the other lines (P1-P3 and P5: the tests name them so); 7.2 has P4 too`, () => {
    const strip = (p: string) => p.replace(/^\d{4}-/, '');
    // P4 is 7.2's alone: later lines enter COLO from the device state by themselves.
    const shared = (l: typeof line) => patchSeries(l).filter((p) => !p.startsWith('0004-')).map(strip);
    assert.deepEqual(shared(line), shared('7.2'));
    assert.deepEqual(patchSeries(line).map((p) => p.slice(0, 4)), line === '7.2' ? ['0001', '0002', '0003', '0004', '0005'] : ['0001', '0002', '0003', '0005']);
  });
}

test('the build cache key depends on the exact patch set and the line', () => {
  const all = patchSeries('7.2');
  assert.notEqual(buildKey(all, '7.2'), buildKey(all.slice(0, 1), '7.2'));
  assert.notEqual(buildKey([], '7.2'), buildKey(all.slice(0, 1), '7.2'));
  assert.equal(buildKey(all, '7.2'), buildKey([...all], '7.2'));
  assert.notEqual(buildKey([], '7.2'), buildKey([], '10.0'));
});

test("a patch's message is not part of the build key, its code is", () => {
  const text = fs.readFileSync(path.join(patchesDir('7.2'), patchSeries('7.2')[0]!), 'utf8');
  const code = patchCode(text);
  assert.ok(code.startsWith('diff --git a/'));
  assert.equal(patchCode(text.replace(/^Subject: .*$/m, 'Subject: [PATCH] another wording')), code);
  assert.notEqual(patchCode(text.replace(/^\+(.*)$/m, '+$1 /* changed */')), code);
});

test('another patch set of a line from the kept tree: reverse down to the common prefix (last first), then apply in order', () => {
  const [a, b, c] = ['0001', '0002', '0003'];
  assert.deepEqual(patchSteps([a, b, c], [a, b]), { reverse: [c], apply: [] });
  assert.deepEqual(patchSteps([a, b, c], []), { reverse: [c, b, a], apply: [] });
  assert.deepEqual(patchSteps([a], [a, b, c]), { reverse: [], apply: [b, c] });
  assert.deepEqual(patchSteps([a, b], [a, c]), { reverse: [b], apply: [c] });
  assert.deepEqual(patchSteps([a, c], [a, b, c]), { reverse: [c], apply: [b, c] }, 'c was applied without b: it is reversed and applied again after b');
  assert.deepEqual(patchSteps([a, b], [a, b]), { reverse: [], apply: [] });
});
