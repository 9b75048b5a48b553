import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseVersionOutput, featuresFrom, assertColoCapable, installedPackages, chosenQemu, type QemuInfo } from '../../src/qemu/discover.js';
import { controlFile, dependsField } from '../../src/lab/qemu-package.js';

test('installed lockstep-qemu packages are found under their prefix, the newest line first; a directory without the binary is not one', () => {
  const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-pkgs-'));
  try {
    assert.deepEqual(installedPackages(prefix), []);
    assert.deepEqual(installedPackages(path.join(prefix, 'missing')), []);
    for (const line of ['7.2', '10.0', '9.2']) {
      fs.mkdirSync(path.join(prefix, `qemu-${line}`, 'bin'), { recursive: true });
      if (line !== '9.2') fs.writeFileSync(path.join(prefix, `qemu-${line}`, 'bin', 'qemu-system-x86_64'), '#!/bin/sh\n', { mode: 0o755 });
    }
    fs.mkdirSync(path.join(prefix, 'qemu-latest'));
    assert.deepEqual(
      installedPackages(prefix).map((p) => p.line),
      ['10.0', '7.2'],
    );
    assert.equal(installedPackages(prefix)[0]!.binary, path.join(prefix, 'qemu-10.0', 'bin', 'qemu-system-x86_64'));
  } finally {
    fs.rmSync(prefix, { recursive: true, force: true });
  }
});

test('the QEMU chosen for lockstep: the config\'s before $LOCKSTEP_QEMU; a named one that is not executable is an error that says where it came from', () => {
  const saved = process.env.LOCKSTEP_QEMU;
  try {
    process.env.LOCKSTEP_QEMU = '/bin/true';
    assert.deepEqual(chosenQemu({ configured: '/bin/sh' }), { binary: '/bin/sh', source: 'config' });
    assert.deepEqual(chosenQemu(), { binary: '/bin/true', source: 'env' });
    process.env.LOCKSTEP_QEMU = '/nonexistent/qemu';
    assert.throws(() => chosenQemu(), /\/nonexistent\/qemu \(from \$LOCKSTEP_QEMU\) is not an executable file/);
  } finally {
    if (saved === undefined) delete process.env.LOCKSTEP_QEMU;
    else process.env.LOCKSTEP_QEMU = saved;
  }
});

test('the package\'s control file: dpkg-shlibdeps\' libraries plus Debian\'s firmware packages, nothing it replaces', () => {
  const depends = dependsField('libc6 (>= 2.34), libglib2.0-0 (>= 2.67.3)');
  assert.equal(depends, 'libc6 (>= 2.34), libglib2.0-0 (>= 2.67.3), seabios, ipxe-qemu, qemu-system-data');
  const c = controlFile({ name: 'lockstep-qemu-10.0', version: '1:10.0.13+ds-0+deb13u1+lockstep.768ada23fd2e3477', architecture: 'amd64', depends, installedSizeKiB: 20000, line: '10.0', sourceVersion: '10.0.13+ds-0+deb13u1', fixes: ['P1', 'P2', 'P3'] });
  assert.match(c, /^Package: lockstep-qemu-10\.0$/m);
  assert.match(c, /^Depends: libc6 .*qemu-system-data$/m);
  assert.match(c, /^Description: QEMU 10\.0 with lockstep's COLO fixes \(P1, P2, P3\)$/m);
  assert.doesNotMatch(c, /^(Conflicts|Replaces|Provides|Breaks):/m);
  // Every description line after the first starts with a space (deb822 continuation), and the file ends with a newline.
  const desc = c.split('\n').slice(c.split('\n').findIndex((l) => l.startsWith('Description:')) + 1).filter(Boolean);
  assert.ok(desc.length > 0 && desc.every((l) => l.startsWith(' ')));
  assert.ok(c.endsWith('\n'));
});

test('reads the version and package from -version output', () => {
  const v = parseVersionOutput('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n');
  assert.deepEqual(v, { major: 7, minor: 2, micro: 22, package: 'Debian 1:7.2+dfsg-7+deb12u18+b3' });
  assert.deepEqual(parseVersionOutput('QEMU emulator version 9.2.0\n'), { major: 9, minor: 2, micro: 0, package: '' });
  assert.throws(() => parseVersionOutput('not qemu'), /cannot read a QEMU version/);
});

const schema = [
  { name: 'x-colo-lost-heartbeat', 'meta-type': 'command' },
  { name: 'query-colo-status', 'meta-type': 'command' },
  { name: 'yank', 'meta-type': 'command' },
  { name: '1', 'meta-type': 'enum', values: ['xbzrle', 'x-colo', 'postcopy-ram'] },
  { name: '2', 'meta-type': 'enum', values: ['qcow2', 'quorum', 'raw', 'replication', 'nbd'] },
  { name: '3', 'meta-type': 'object', members: [{ name: 'reconnect' }, { name: 'server' }] },
];
const types = ['colo-compare', 'filter-mirror', 'filter-redirector', 'filter-rewriter', 'tcg-accel', 'kvm-accel'];

test('derives COLO abilities from the QMP schema and QOM types', () => {
  const f = featuresFrom(schema, types);
  assert.equal(f.colo, true);
  assert.equal(f.coloProxy, true);
  assert.equal(f.replication, true);
  assert.equal(f.yank, true);
  assert.equal(f.reconnectMs, false);
  assert.deepEqual(f.accelerators, ['kvm', 'tcg']);
  const newer = featuresFrom([...schema, { name: '4', 'meta-type': 'object', members: [{ name: 'reconnect-ms' }] }], types);
  assert.equal(newer.reconnectMs, true);
});

test('a QEMU without the replication driver is refused with what is missing', () => {
  const noRepl = featuresFrom(
    schema.map((e) => (e.values?.includes('replication') ? { ...e, values: ['qcow2', 'quorum', 'raw'] } : e)),
    types,
  );
  const info: QemuInfo = { binary: '/x/qemu', source: 'explicit', version: { major: 7, minor: 2, micro: 0 }, package: '', features: noRepl };
  assert.throws(() => assertColoCapable(info), /lacks the replication block driver/);
});

test('a QEMU without TLS (built without GnuTLS) is refused for a data plane with TLS, and says what to do', () => {
  const withTls = featuresFrom(schema, [...types, 'tls-creds-psk', 'tls-creds-x509']);
  const without = featuresFrom(schema, types);
  assert.deepEqual([withTls.tlsPsk, without.tlsPsk], [true, false]);
  const info = (features: typeof without): QemuInfo => ({ binary: '/x/qemu', source: 'explicit', version: { major: 7, minor: 2, micro: 0 }, package: '', features });
  assert.doesNotThrow(() => assertColoCapable(info(withTls), { tls: true }));
  assert.doesNotThrow(() => assertColoCapable(info(without), { tls: false }), 'with TLS refused explicitly, it is not needed');
  assert.throws(() => assertColoCapable(info(without), { tls: true }), (err: Error & { hint?: string }) => /has no TLS/.test(err.message) && /replication\.tls: false/.test(err.hint ?? ''));
});
