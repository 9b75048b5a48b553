/**
 * The files QEMU's tls-creds-psk objects read (crypto/tlscredspsk.c): in
 * their `dir`, keys.psk ("IDENTITY:HEXKEY" lines; the listening side looks
 * the client's identity up, the connecting side sends its own) and
 * dh-params.pem. Without dh-params.pem QEMU generates 2048-bit parameters
 * for every listening credential object it creates (about 0.5 s of a core
 * here); the file holds RFC 3526's group 14 instead, a published group that
 * is as good for this and costs nothing.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { TLS_PSK_USERNAME } from './cmdline.js';
import { writeFileAtomic } from '../util/files.js';

/** A DER length. */
function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function derInteger(v: Buffer): Buffer {
  const body = v[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), v]) : v;
  return Buffer.concat([Buffer.from([0x02]), derLength(body.length), body]);
}

/** PKCS #3 DHParameter (prime, base) as PEM, for the RFC 3526 2048-bit MODP group. */
export function dhParamsPem(): string {
  const dh = crypto.getDiffieHellman('modp14');
  const body = Buffer.concat([derInteger(dh.getPrime()), derInteger(dh.getGenerator())]);
  const der = Buffer.concat([Buffer.from([0x30]), derLength(body.length), body]);
  const b64 = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN DH PARAMETERS-----\n${b64}-----END DH PARAMETERS-----\n`;
}

/** Writes a private file unless it holds `text` already (a running QEMU may be reading the old one). */
function writePrivate(file: string, text: string): void {
  try {
    if (fs.readFileSync(file, 'utf8') === text) return;
  } catch {
    /* write it */
  }
  writeFileAtomic(file, text, { mode: 0o600, durable: true });
}

/** The key QEMU reads for the pair, as hex (the form keys.psk holds), if the directory has one. */
export function readPskKey(dir: string): string | undefined {
  try {
    const line = fs.readFileSync(path.join(dir, 'keys.psk'), 'utf8').split('\n').find((l) => l.startsWith(`${TLS_PSK_USERNAME}:`));
    return line?.slice(TLS_PSK_USERNAME.length + 1).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Writes `dir` (0700) with keys.psk (0600) holding `keyHex` and dh-params.pem; unchanged files are left alone. */
export function writePskDir(dir: string, keyHex: string): void {
  assert(/^[0-9a-f]{64}$/.test(keyHex), 'a data-plane key is 32 bytes in lower-case hex');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  writePrivate(path.join(dir, 'keys.psk'), `${TLS_PSK_USERNAME}:${keyHex}\n`);
  writePrivate(path.join(dir, 'dh-params.pem'), dhParamsPem());
}
