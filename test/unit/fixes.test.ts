/**
 * Which fixes a QEMU binary has and needs (src/qemu/fixes.ts): a stock
 * binary is refused for COLO, naming each fix it lacks under the accelerator
 * it would run with; lockstep's builds are known by their package string.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fixesOf, assertColoFixes, fixesMarker, fixIdsOfPatches } from '../../src/qemu/fixes.js';
import { patchSeries, QEMU_LINES } from '../../src/lab/qemu-build.js';

const v = (s: string) => {
  const [major, minor, micro] = s.split('.').map(Number);
  return { major: major!, minor: minor!, micro: micro! };
};
const stock72 = { binary: '/usr/bin/qemu-system-x86_64', version: v('7.2.22'), package: 'Debian 1:7.2+dfsg-7+deb12u18+b3' };
const ours = (version: string, ids: string[]) => ({ binary: '/opt/lockstep/qemu', version: v(version), package: `lockstep 10.0 build, ${fixesMarker(ids)}` });
const missing = (info: Parameters<typeof fixesOf>[0], accel: 'kvm' | 'tcg') =>
  fixesOf(info, accel)
    .filter((f) => f.needed && !f.present)
    .map((f) => f.id);

test("stock QEMU: lacks lockstep's four fixes; under KVM only P3 and P5 matter", () => {
  assert.deepEqual(missing(stock72, 'tcg'), ['P1', 'P2', 'P3', 'P5']);
  assert.deepEqual(missing(stock72, 'kvm'), ['P3', 'P5']);
  assert.throws(() => assertColoFixes(stock72, 'tcg', false), (err: Error & { hint?: string }) => {
    assert.match(err.message, /lacks 4 fixes COLO needs under TCG:\n  P1 .*deadlocks.*\n  P2 .*diverges.*\n  P3 .*NIC can die.*\n  P5 .*loses that acknowledged write/);
    assert.match(err.hint ?? '', /lockstep lab build-qemu.*qemu.allowMissingFixes: true/);
    return true;
  });
  assert.throws(() => assertColoFixes(stock72, 'kvm', false), /lacks 2 fixes COLO needs under KVM:\n  P3 .*\n  P5 /);
  const warnings = assertColoFixes(stock72, 'kvm', true);
  assert.equal(warnings.length, 2);
  assert.match(warnings[0]!, /lacks P3 .*running anyway \(qemu.allowMissingFixes\)/);
});

test('the upstream COLO transition fix is known by release: 10.0.0-10.0.6 and 10.1 lack it', () => {
  assert.deepEqual(missing(ours('10.0.2', ['P1', 'P2', 'P3', 'P5']), 'tcg'), ['U1']);
  assert.deepEqual(missing(ours('10.0.13', ['P1', 'P2', 'P3', 'P5']), 'tcg'), []);
  assert.deepEqual(missing(ours('10.1.1', ['P1', 'P2', 'P3', 'P5']), 'kvm'), ['U1']);
  assert.deepEqual(missing(ours('10.2.0', ['P1', 'P2', 'P3', 'P5']), 'kvm'), []);
  assert.deepEqual(missing({ ...stock72, version: v('10.0.2') }, 'kvm'), ['P3', 'P5', 'U1']);
  assert.throws(() => assertColoFixes(ours('10.0.2', ['P1', 'P2', 'P3', 'P5']), 'tcg', false), /U1 .*never gets into COLO/);
});

test("lockstep's builds: the marker names the fixes of the patches applied, a partial build lacks the rest", () => {
  for (const line of QEMU_LINES) assert.deepEqual(fixIdsOfPatches(patchSeries(line)), line === '7.2' ? ['P1', 'P2', 'P3', 'P4', 'P5'] : ['P1', 'P2', 'P3', 'P5']);
  assert.deepEqual(fixIdsOfPatches(patchSeries('7.2').slice(0, 2)), ['P1', 'P2']);
  assert.throws(() => fixIdsOfPatches(['0009-something.patch']), /no fix lockstep knows/);
  assert.deepEqual(missing(ours('7.2.22', ['P1', 'P2']), 'tcg'), ['P3', 'P5']);
  assert.deepEqual(missing(ours('7.2.22', ['P1', 'P2']), 'kvm'), ['P3', 'P5']);
  assert.deepEqual(missing(ours('7.2.22', ['P1', 'P2', 'P3']), 'kvm'), ['P5']);
  assert.deepEqual(missing(ours('7.2.22', ['P1', 'P2', 'P3', 'P5']), 'tcg'), []);
  assert.deepEqual(missing(ours('7.2.22', []), 'tcg'), ['P1', 'P2', 'P3', 'P5']);
  // P4 is never needed (only faster re-protection): 7.2 has it by its marker, 10.0 by its release.
  const p4 = (i: { version: { major: number; minor: number; micro: number }; package: string }) => fixesOf(i).find((f) => f.id === 'P4')!;
  assert.deepEqual([p4(ours('7.2.22', ['P1', 'P2', 'P3', 'P4', 'P5'])).present, p4(ours('7.2.22', ['P1', 'P2', 'P3', 'P5'])).present, p4(ours('10.0.13', ['P1', 'P2', 'P3', 'P5'])).present], [true, false, true]);
  assert.ok(fixesOf(ours('7.2.22', []), 'tcg').every((f) => f.id !== 'P4' || !f.needed));
  // Only the marker counts: a package string that merely mentions a fix does not.
  assert.deepEqual(missing({ ...stock72, package: 'Debian, with P1 P2 P3 P5' }, 'tcg'), ['P1', 'P2', 'P3', 'P5']);
});
