/**
 * The KVM probe (src/qemu/accel.ts) needs nothing but a QEMU and its
 * firmware: a boot sector lockstep makes itself, no guest to build or
 * download (a daemon on a real server decides with it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import os from 'node:os';
import { bootSector, probeKvm, PROBE_MARKER } from '../../src/qemu/accel.js';
import { which } from '../../src/util/exec.js';

test('the probe boot sector: 512 bytes, the boot signature, the marker in it', () => {
  const s = bootSector();
  assert.equal(s.length, 512);
  assert.deepEqual([s[510], s[511]], [0x55, 0xaa]);
  // mov si, imm16 points at the marker, loaded at 0x7C00.
  const si = s.readUInt16LE(7);
  assert.equal(s.subarray(si - 0x7c00, si - 0x7c00 + PROBE_MARKER.length).toString('latin1'), PROBE_MARKER);
});

const qemu = which('qemu-system-x86_64');
test('the probe boot sector runs: its marker on the serial console (under TCG, where KVM may be absent)', { skip: !qemu && 'no qemu-system-x86_64 on PATH' }, async () => {
  const r = await probeKvm({ binary: qemu!, accel: 'tcg', timeoutMs: 20_000 });
  assert.equal(r.works, true, r.reason);
});

test('without a usable KVM device the probe says so, and boots nothing', async () => {
  const r = await probeKvm({ binary: '/nonexistent/qemu', kvmDevice: path.join(os.tmpdir(), 'no-such-kvm-device'), fresh: true });
  assert.equal(r.works, false);
  assert.match(r.reason, /no-such-kvm-device is missing or not accessible/);
});
