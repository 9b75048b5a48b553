/**
 * The demo guest, on a plain VM: it boots to its services, its counter lives
 * on its disk and counts by one, /cgi-bin/info differs on every call, and
 * the echo service echoes over one connection.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startPlainVm, type PlainVm } from '../../src/lab/plain.js';
import { readImageBytes } from '../../src/qemu/images.js';
import { readSerial } from '../../src/qemu/serial.js';
import { runtime } from '../helpers/lab.js';
import { bumpCounter, httpGet, EchoClient } from '../helpers/clients.js';
import path from 'node:path';

let vm: PlainVm;

before(async () => {
  vm = await startPlainVm(await runtime());
});

after(async () => {
  await vm?.stop({ removeDir: true });
});

test('boots to its services and says so on the serial console', () => {
  assert.match(readSerial(vm.serialLog), /LOCKSTEP-GUEST-READY ip=10\.0\.2\.15\/24 disk=vda services=listening/);
  process.stderr.write(`# plain VM boot to ready: ${vm.bootMs} ms\n`);
});

test('the counter starts at 1, counts by one, and is on the disk', async () => {
  const seen: number[] = [];
  for (let i = 0; i < 5; i++) seen.push(await bumpCounter(vm.httpBase));
  assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  const get = await httpGet(`${vm.httpBase}/cgi-bin/get`);
  assert.equal(get.body.trim(), 'count=5', 'reading does not count');
  const sector = await readImageBytes(path.join(vm.dir, 'disk.qcow2'), 'qcow2', 512, 16);
  assert.equal(sector.toString('latin1').replace(/\0+$/, ''), 'counter=5\n');
});

test('concurrent increments are never lost or handed out twice', async () => {
  const start = await bumpCounter(vm.httpBase);
  const got = await Promise.all(Array.from({ length: 8 }, () => bumpCounter(vm.httpBase)));
  assert.deepEqual([...got].sort((a, b) => a - b), Array.from({ length: 8 }, (_, i) => start + 1 + i));
});

test('/cgi-bin/info differs on every call', async () => {
  const a = (await httpGet(`${vm.httpBase}/cgi-bin/info`)).body;
  const b = (await httpGet(`${vm.httpBase}/cgi-bin/info`)).body;
  assert.match(a, /^uptime=[\d.]+ random=[0-9a-f]{16}$/m);
  assert.notEqual(a, b);
});

test('the echo service echoes over one persistent connection', async () => {
  const c = await EchoClient.connect('127.0.0.1', vm.echoPort);
  try {
    for (let i = 0; i < 5; i++) await c.roundTrip(`hello ${i}`);
  } finally {
    c.close();
  }
});
