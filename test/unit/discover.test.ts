import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseVersionOutput, featuresFrom, assertColoCapable, type QemuInfo } from '../../src/qemu/discover.js';

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
