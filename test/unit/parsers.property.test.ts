/**
 * Every parser that reads the network or a file, fed random and mutated
 * input (fast-check): each gives a clean refusal (its own error type, or a
 * refusal value), never an exception that escapes as something else, and
 * never takes what it should refuse. The seed of a failing run is printed
 * by fast-check; FC_SEED=N replays it.
 *
 * - the wire: a link's frames (FrameCodec.decode), the handshake lines, and
 *   every channel's schema (agent, session, witness);
 * - the API: bodies of PUT /v1/vms/NAME and every route, through the real
 *   daemon's routes (a 4xx JSON answer, never a 500);
 * - the VM file, the host file, the one-host config;
 * - the witness's record files, a node's disk record, a VM's state file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import YAML from 'yaml';
import { FrameCodec, signFrame, helloSchema, clientAuthSchema, serverAuthSchema } from '../../src/node/link.js';
import { MAX_LINE_BYTES, peerMessageSchema, sessionMessageSchema, witnessRequestSchema, witnessReplySchema, type PeerMessage } from '../../src/node/wire.js';
import { parseVmFile } from '../../src/config/vm.js';
import { parseHostFile } from '../../src/config/host.js';
import { parseConfig, ConfigError } from '../../src/config/load.js';
import { loadWitnessRecord, witnessVmsDir } from '../../src/node/witness.js';
import { readDiskRecord } from '../../src/pair/generation.js';
import { readState } from '../../src/pair/state.js';
import { LockstepError } from '../../src/util/errors.js';
import { packageRoot } from '../../src/util/paths.js';
import { hostInit } from '../../src/daemon/host-init.js';
import { loadHostFile } from '../../src/config/host.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { apiApp } from '../../src/daemon/api.js';

const seed = process.env.FC_SEED === undefined ? {} : { seed: Number(process.env.FC_SEED) };
const runs = (n: number) => ({ numRuns: n, ...seed });

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-prop-'));

/** Text mutated the way a broken disk or a hostile peer would: bytes flipped, cut, repeated, spliced. */
function mutated(base: string): fc.Arbitrary<string> {
  const edit = fc.oneof(
    fc.record({ k: fc.constant('flip' as const), at: fc.nat(), c: fc.integer({ min: 0, max: 0x10ffff }) }),
    fc.record({ k: fc.constant('cut' as const), at: fc.nat(), n: fc.nat({ max: 64 }) }),
    fc.record({ k: fc.constant('dup' as const), at: fc.nat(), n: fc.nat({ max: 64 }) }),
    fc.record({ k: fc.constant('insert' as const), at: fc.nat(), s: fc.oneof(fc.string(), fc.constantFrom('{', '}', '[', ']', ':', ',', '"', '\n', '\0', '__proto__', 'constructor', '1e309', '-1', '99999', '0.0.0.0', '../..', '*a', '&a', '!!js/function', '~')) }),
  );
  return fc.array(edit, { minLength: 1, maxLength: 6 }).map((edits) => {
    let s = base;
    for (const e of edits) {
      const at = s.length ? e.at % (s.length + 1) : 0;
      if (e.k === 'flip') s = s.slice(0, at) + String.fromCodePoint(e.c) + s.slice(at + 1);
      else if (e.k === 'cut') s = s.slice(0, at) + s.slice(at + e.n);
      else if (e.k === 'dup') s = s.slice(0, at) + s.slice(at, at + e.n) + s.slice(at);
      else s = s.slice(0, at) + e.s + s.slice(at);
    }
    return s;
  });
}

/** Any JSON value, with the keys and values a hostile sender would try. */
const hostileJson = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.constantFrom(null, true, false, 0, -1, 1e308, -0, 2 ** 53, 'x', '', '__proto__', 'constructor', '../../etc/shadow', '0.0.0.0', 'a'.repeat(300)),
    fc.double(),
    fc.string(),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.oneof(fc.string(), fc.constantFrom('__proto__', 'constructor', 'prototype', 't', 'vm', 'run', 'disk', 'lease', 'id', 'k', 'body', 'hosts', 'secret')), tie('value'), { maxKeys: 6 }),
  ),
})).value;

// ---- the wire ----

/** The fields that name a VM, a node, a run or a lease: never a reserved name once parsed. */
const NAME_KEYS = new Set(['vm', 'lease', 'run', 'by', 'holder', 'primary']);

function reservedName(v: unknown): string | undefined {
  if (Array.isArray(v)) return v.map(reservedName).find((x) => x !== undefined);
  if (v === null || typeof v !== 'object') return undefined;
  for (const [k, x] of Object.entries(v)) {
    if (NAME_KEYS.has(k) && typeof x === 'string' && ['__proto__', 'constructor', 'prototype'].includes(x)) return `${k}: ${x}`;
    const inner = reservedName(x);
    if (inner !== undefined) return inner;
  }
  return undefined;
}

test('the wire: any line a link receives is accepted only if well-formed, MAC-checked and in sequence, else refused with a reason; decode never throws', () => {
  const key = Buffer.alloc(32, 7);
  const valid: PeerMessage = { t: 'hb', boot: 'b1', seq: 1, role: 'primary', qemu: 'alive', colo: 'ok', hearsPeer: true, disk: { run: 'r1', gen: 2, by: 'a' }, checkpointAgeMs: 10, busy: null };
  const good = signFrame(key, 'c2s', 1, JSON.stringify(valid));
  fc.assert(
    fc.property(fc.oneof(fc.string({ maxLength: 300 }), mutated(good), hostileJson.map((v) => signFrame(key, 'c2s', 1, JSON.stringify(v) ?? 'null'))), (line) => {
      const codec = new FrameCodec(key, 's2c', peerMessageSchema);
      const r = codec.decode(line);
      if (r.ok) {
        // Accepted: then it is exactly a valid message, signed with the key, seq 1.
        assert.equal(peerMessageSchema.safeParse(r.msg).success, true);
        const json = line.slice(line.indexOf(' ', line.indexOf(' ') + 1) + 1);
        assert.equal(line, signFrame(key, 'c2s', 1, json), 'exactly the frame the key signs for seq 1');
      } else {
        assert.equal(typeof r.why, 'string');
        assert.ok(r.why.length > 0 && r.why.length <= 400, r.why);
        assert.equal(codec.decode(good).ok, false, 'a refusal is final');
      }
    }),
    runs(2000),
  );
  const big = 'x'.repeat(MAX_LINE_BYTES + 1);
  assert.equal(new FrameCodec(key, 's2c', peerMessageSchema).decode(big).ok, false);
});

test('the wire: every schema (handshake, agent, session, witness) refuses any other JSON cleanly, and never lets a reserved name through', () => {
  const schemas = [helloSchema, clientAuthSchema, serverAuthSchema, peerMessageSchema, sessionMessageSchema, witnessRequestSchema, witnessReplySchema];
  fc.assert(
    fc.property(hostileJson, (v) => {
      for (const s of schemas) {
        const r = s.safeParse(v);
        if (r.success) assert.equal(reservedName(r.data), undefined, `${JSON.stringify(r.data)} took a reserved name`);
      }
    }),
    runs(3000),
  );
});

// ---- the API ----

test('the API: random and mutated bodies of PUT /v1/vms/NAME, and any route, get a 4xx JSON refusal with a message, never a 500', async (t) => {
  const dir = tmp();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'a', 'host.yaml');
  await hostInit({ file, name: 'a', replication: '127.0.0.1', stateDir: path.join(dir, 'a', 'state'), socket: path.join(dir, 'a', 'api.sock') });
  const d = new Daemon({ ...loadHostFile(file), allow: { images: ['/srv'] } });
  const app = apiApp(d, 'local');
  const validBody = {
    vm: parseVmFile('name: web\nhosts: [a, b]\nvm: { disk: { image: /srv/web.qcow2 } }\n', 'web.yaml'),
    hosts: { a: { replication: '10.0.1.1', heartbeat: ['10.0.1.1'] }, b: { replication: '10.0.1.2', heartbeat: ['10.0.1.2'] } },
    run: 'run-web-0123456789',
    secret: 'a secret of sixteen or more',
    definedAt: '2026-01-01T00:00:00Z',
  };
  const mutateObject = fc.tuple(fc.array(fc.constantFrom('vm', 'hosts', 'run', 'secret', 'definedAt', 'ports'), { minLength: 1, maxLength: 3 }), hostileJson).map(([keys, v]) => {
    const body = structuredClone(validBody) as Record<string, unknown>;
    let cur = body;
    for (const k of keys.slice(0, -1)) cur = (cur[k] && typeof cur[k] === 'object' ? cur[k] : (cur[k] = {})) as Record<string, unknown>;
    cur[keys.at(-1)!] = v;
    return JSON.stringify(body);
  });
  const bodies = fc.oneof(fc.string({ maxLength: 200 }), mutated(JSON.stringify(validBody)), hostileJson.map((v) => JSON.stringify(v) ?? 'null'), mutateObject);
  const names = fc.oneof(fc.constantFrom('web', 'constructor', '__proto__', 'prototype', '..', 'a%2Fb', 'x'.repeat(100)), fc.string({ maxLength: 20 }).map(encodeURIComponent));
  await fc.assert(
    fc.asyncProperty(names, bodies, fc.constantFrom('PUT', 'POST', 'GET'), fc.constantFrom('', '/start', '/stop', '/resync', '/end-qemu'), async (name, body, method, tail) => {
      const res = await app.request(`http://x/v1/vms/${name}${tail}`, { method, body: method === 'GET' ? undefined : body, headers: { 'content-type': 'application/json' } });
      const text = await res.text();
      assert.ok(res.status < 500, `${method} /v1/vms/${name}${tail} ${body.slice(0, 200)} → ${res.status} ${text}`);
      const json = JSON.parse(text) as { error?: unknown };
      if (res.status >= 400) assert.equal(typeof json.error, 'string');
    }),
    runs(400),
  );
});

// ---- files ----

/** Parses `text` with `parse`: a success, or a refusal of the expected type; anything else fails the property. */
function cleanly(parse: () => unknown, refusal: (e: unknown) => boolean = (e) => e instanceof ConfigError): void {
  try {
    parse();
  } catch (err) {
    assert.ok(refusal(err), `not a clean refusal: ${err instanceof Error ? `${err.name}: ${err.message}\n${err.stack}` : String(err)}`);
  }
}

const yamlOf = (v: unknown) => {
  try {
    return YAML.stringify(v);
  } catch {
    return 'x';
  }
};

test('the VM file, the host file and the one-host config: random and mutated files are refused with a ConfigError naming the file, never another exception', () => {
  const two = fs.readFileSync(path.join(packageRoot(), 'examples', 'two-hosts.yaml'), 'utf8');
  const one = fs.readFileSync(path.join(packageRoot(), 'examples', 'one-host.yaml'), 'utf8');
  const host = 'name: a\naddresses: { replication: 10.0.1.1, heartbeat: [10.0.2.1] }\napi: { listen: "10.0.1.1:7700" }\nports: { first: 9000, last: 9999 }\nmemory: { forVms: 4G }\nallow: { images: [/srv] }\n';
  const files = (base: string) => fc.oneof(fc.string({ maxLength: 300 }), mutated(base), hostileJson.map(yamlOf));
  fc.assert(fc.property(files(two), (text) => cleanly(() => parseVmFile(text, '/etc/lockstep/web.yaml'))), runs(1500));
  fc.assert(fc.property(files(host), (text) => cleanly(() => parseHostFile(text, '/etc/lockstep/host.yaml'))), runs(1500));
  fc.assert(fc.property(files(one), (text) => cleanly(() => parseConfig(text, '/etc/lockstep/one.yaml'))), runs(1500));
});

test("the witness's record files, a node's disk record and a VM's state file: random and mutated content is refused cleanly (or read as unreadable), never another exception", () => {
  const dir = tmp();
  try {
    const witness = path.join(dir, 'witness.json');
    const own = JSON.stringify({ format: 2, instance: '0123abcd-0000-4000-8000-000000000000', createdAt: '2026-01-01T00:00:00.000Z' });
    const vmRecord = JSON.stringify({ vm: 'web', runs: { r1: { run: 'r1', gen: 2, by: 'a' } } });
    const old = JSON.stringify({ newest: { r1: { run: 'r1', gen: 3, by: 'up' } } });
    const content = (base: string) => fc.oneof(fc.string({ maxLength: 300 }), mutated(base), hostileJson.map((v) => JSON.stringify(v) ?? ''));
    fc.assert(
      fc.property(content(own), fc.option(content(vmRecord)), (ownText, vmText) => {
        fs.rmSync(witnessVmsDir(witness), { recursive: true, force: true });
        fs.writeFileSync(witness, ownText);
        if (vmText !== null) {
          fs.mkdirSync(witnessVmsDir(witness));
          fs.writeFileSync(path.join(witnessVmsDir(witness), 'web.json'), vmText);
        }
        cleanly(
          () => {
            const r = loadWitnessRecord(witness);
            // Taken: then every record is filed under its own run, of a VM whose file it came from.
            for (const [k, e] of Object.entries(r.newest)) assert.equal(k, `web/${e.run}`);
          },
          (e) => e instanceof LockstepError && e.message.startsWith(`the witness's record ${witness} `),
        );
      }),
      runs(1500),
    );
    fc.assert(fc.property(content(old), (text) => {
      fs.rmSync(witnessVmsDir(witness), { recursive: true, force: true });
      fs.writeFileSync(witness, text);
      cleanly(() => loadWitnessRecord(witness), (e) => e instanceof LockstepError);
    }), runs(800));
    const node = path.join(dir, 'node');
    fs.mkdirSync(node);
    const rec = JSON.stringify({ epoch: { run: 'r1', gen: 2, by: 'a' }, why: 'x', at: '2026-01-01T00:00:00Z' });
    fc.assert(
      fc.property(content(rec), (text) => {
        fs.writeFileSync(path.join(node, 'generation.json'), text);
        const r = readDiskRecord(node);
        assert.ok(r.state === 'ok' || r.state === 'unreadable', r.state);
      }),
      runs(1000),
    );
    fc.assert(
      fc.property(content(JSON.stringify({ version: 1, name: 'web', nodes: [] })), (text) => {
        fs.writeFileSync(path.join(dir, 'state.json'), text);
        cleanly(() => readState(dir), () => false);
      }),
      runs(500),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
