/**
 * An attacker on the replication network, for the lab (node hostile-data.js
 * SPEC-JSON): against one VM's data plane it tries, round after round until
 * its time is up, what a process without the pair's key might:
 *
 * - the secondary's NBD export: read and write a block with no TLS, and with
 *   TLS but a key of its own (qemu-io, as any NBD client);
 * - the secondary's incoming migration port: a migration stream's header and
 *   junk (a QEMU that took it would load it as the VM's state);
 * - the primary's proxy ports (mirror0 carries the VM's outgoing packets,
 *   compare1 takes the secondary's): connect and listen, then send junk.
 *
 * Prints one JSON line: per kind, how many attempts, how many got through
 * (qemu-io succeeded) and how many bytes of data came back (a TLS alert, the
 * only thing a TLS end sends someone without the key, is counted apart).
 * Given the pair's own key directory, it first reads the export once with
 * it: the control that shows the attempts would get through with the key.
 */
import net from 'node:net';
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { run } from '../util/exec.js';
import { sleep } from '../util/time.js';
import { writePskDir } from '../qemu/tls.js';
import { TLS_PSK_USERNAME } from '../qemu/cmdline.js';

export interface HostileDataSpec {
  nbd: { host: string; port: number; export: string };
  migration: { host: string; port: number };
  proxy: Array<{ host: string; port: number }>;
  durationMs: number;
  /** The pair's own key directory: one read with it first, to show that the attempts could get through with the key. */
  controlKeyDir?: string;
}

export interface HostileDataKind {
  attempts: number;
  /** qemu-io read or wrote the export. */
  through: number;
  /** Bytes received that were not a TLS alert. */
  dataBytes: number;
  /** Connections that got only a TLS alert before being closed. */
  alerts: number;
}

export type HostileDataReport = Record<string, HostileDataKind>;

function nbdOpts(s: HostileDataSpec, creds?: string): string {
  return `driver=nbd,server.type=inet,server.host=${s.nbd.host},server.port=${s.nbd.port},export=${s.nbd.export}${creds ? `,tls-creds=${creds}` : ''}`;
}

async function qemuIo(s: HostileDataSpec, command: string, readOnly: boolean, keyDir?: string): Promise<boolean> {
  const args = [
    ...(keyDir ? ['--object', `tls-creds-psk,id=mallory,endpoint=client,dir=${keyDir},username=${TLS_PSK_USERNAME}`] : []),
    ...(readOnly ? ['-r'] : []),
    '--image-opts',
    nbdOpts(s, keyDir ? 'mallory' : undefined),
    '-c',
    command,
  ];
  const r = await run('qemu-io', args, { timeoutMs: 15_000, allowFailure: true });
  // What qemu-io prints when the command went through ("read 4096/4096 bytes at offset 0", "wrote ...").
  return /^(read|wrote) \d+\/\d+ bytes/m.test(r.stdout);
}

/** Connects, sends `send` (if any), listens for `listenMs`; what came back. */
function probe(host: string, port: number, send: Buffer | undefined, listenMs: number): Promise<{ dataBytes: number; alert: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = net.createConnection({ host, port });
    const done = () => {
      s.destroy();
      const all = Buffer.concat(chunks);
      // A TLS record of type 21 (alert), 2 bytes of payload: the end refusing the handshake.
      const alert = all.length > 0 && all[0] === 0x15 && all.length <= 7;
      resolve({ dataBytes: alert ? 0 : all.length, alert });
    };
    const timer = setTimeout(done, listenMs);
    s.on('connect', () => {
      if (send) s.write(send);
    });
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      done();
    });
  });
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as HostileDataSpec;
  const keyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-mallory-'));
  writePskDir(keyDir, crypto.randomBytes(32).toString('hex'));
  const report: HostileDataReport = {};
  const note = (kind: string, r: { through?: boolean; dataBytes?: number; alert?: boolean }) => {
    const k = (report[kind] ??= { attempts: 0, through: 0, dataBytes: 0, alerts: 0 });
    k.attempts++;
    if (r.through) k.through++;
    k.dataBytes += r.dataBytes ?? 0;
    if (r.alert) k.alerts++;
  };
  // A migration stream's start (QEMU_VM_FILE_MAGIC, version 3), then junk.
  const migration = Buffer.concat([Buffer.from('QEVM'), Buffer.from([0, 0, 0, 3]), crypto.randomBytes(4096)]);
  const deadline = Date.now() + spec.durationMs;
  // Three attackers at once, so that the short moments matter too (a new secondary waits for its
  // migration for a second or two; a proxy port listens between a failover and the next secondary).
  const loop = async (round: () => Promise<void>) => {
    while (Date.now() < deadline) await round();
  };
  if (spec.controlKeyDir) note("control: nbd read with the pair's key", { through: await qemuIo(spec, 'read 0 4k', true, spec.controlKeyDir) });
  try {
    await Promise.all([
      loop(async () => {
        note('nbd read, no TLS', { through: await qemuIo(spec, 'read 0 4k', true) });
        note('nbd write, no TLS', { through: await qemuIo(spec, 'write -P 0x55 0 4k', false) });
        note('nbd read, wrong key', { through: await qemuIo(spec, 'read 0 4k', true, keyDir) });
        note('nbd write, wrong key', { through: await qemuIo(spec, 'write -P 0x55 0 4k', false, keyDir) });
      }),
      loop(async () => {
        note('migration stream', await probe(spec.migration.host, spec.migration.port, migration, 200));
        await sleep(10); // a closed port refuses at once: about 100 attempts a second, not thousands
      }),
      loop(async () => {
        for (const p of spec.proxy) {
          note(`proxy ${p.port} listen`, await probe(p.host, p.port, undefined, 200));
          note(`proxy ${p.port} junk`, await probe(p.host, p.port, crypto.randomBytes(512), 200));
        }
      }),
    ]);
  } finally {
    fs.rmSync(keyDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(report) + '\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  main().catch((err: unknown) => {
    process.stderr.write(`hostile-data: ${(err as Error).message}\n`);
    process.exit(1);
  });
}
