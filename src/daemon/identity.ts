/**
 * A host's TLS identity and the hosts it trusts. Each host has its own key
 * (P-256, made here, never leaving the host) and a self-signed certificate;
 * a host trusts another by pinning that host's certificate (`lockstep host
 * trust`), as SSH pins host keys: no CA to run, and a certificate that is
 * not pinned is refused whoever signed it. The daemon's TLS API asks every
 * caller for its certificate and accepts only pinned ones; the CLI accepts a
 * daemon only if it shows the certificate pinned under that host's name.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run } from '../util/exec.js';
import { LockstepError, errorMessage } from '../util/errors.js';
import { writeFileAtomic } from '../util/files.js';

/** SHA-256 of a certificate's DER, as `AB:CD:...` (what openssl and browsers show). */
export function fingerprint(certPem: string): string {
  return new crypto.X509Certificate(certPem).fingerprint256;
}

/** Parses a PEM certificate, or says what is wrong with it. */
export function readCertificate(pem: string, what: string): crypto.X509Certificate {
  try {
    return new crypto.X509Certificate(pem);
  } catch (err) {
    throw new LockstepError(`${what} is not a PEM certificate: ${errorMessage(err)}`, {
      hint: 'give the host.crt that lockstep host init wrote on that host (it begins with -----BEGIN CERTIFICATE-----)',
    });
  }
}

export interface NewIdentity {
  keyPem: string;
  certPem: string;
  fingerprint: string;
}

/**
 * Makes a key and a self-signed certificate for host `name`, valid for
 * `days`, naming it (CN and a DNS name) and its addresses (IP names). The key
 * is made by Node's crypto; openssl only signs the certificate (Node has no
 * API to write one), reading the key from a private temporary directory.
 */
export async function makeIdentity(name: string, addresses: string[], days = 3650): Promise<NewIdentity> {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lockstep-identity-'));
  try {
    const keyFile = path.join(dir, 'host.key');
    fs.writeFileSync(keyFile, keyPem, { mode: 0o600 });
    const san = [`DNS:${name}`, ...[...new Set(addresses)].map((a) => `IP:${a}`)].join(',');
    const r = await run(
      'openssl',
      ['req', '-new', '-x509', '-key', keyFile, '-days', String(days), '-subj', `/CN=${name}/O=lockstep`, '-addext', `subjectAltName=${san}`, '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'extendedKeyUsage=serverAuth,clientAuth'],
      { timeoutMs: 30_000, what: 'making the host certificate', hint: 'lockstep needs the openssl command (Debian: apt install openssl)' },
    );
    const certPem = r.stdout;
    return { keyPem, certPem, fingerprint: fingerprint(certPem) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Writes a key (0600) and its certificate (0644), each atomically; refuses to replace either without `force`. */
export function writeIdentity(keyFile: string, certFile: string, id: NewIdentity, force: boolean): void {
  for (const f of [keyFile, certFile]) {
    if (!force && fs.existsSync(f)) {
      throw new LockstepError(`${f} exists: this host already has an identity`, {
        hint: 'hosts that trust it would refuse a new one; pass --force to replace it (then trust the new certificate on the other hosts)',
      });
    }
  }
  fs.mkdirSync(path.dirname(keyFile), { recursive: true, mode: 0o700 });
  fs.mkdirSync(path.dirname(certFile), { recursive: true, mode: 0o755 });
  writeFileAtomic(keyFile, id.keyPem, { durable: true, mode: 0o600 });
  writeFileAtomic(certFile, id.certPem, { durable: true, mode: 0o644 });
}

/** Checks that a key file is private to its owner (no group or other bits), as ssh does. */
export function checkKeyFile(keyFile: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(keyFile);
  } catch (err) {
    throw new LockstepError(`cannot read the host key ${keyFile}: ${errorMessage(err)}`, { hint: 'make one with lockstep host init' });
  }
  if ((st.mode & 0o077) !== 0) {
    throw new LockstepError(`the host key ${keyFile} can be read by others (mode ${(st.mode & 0o777).toString(8)})`, { hint: `chmod 600 ${keyFile}` });
  }
}

/**
 * The secret two hosts share without ever sending it: ECDH of one host's key
 * and the other's pinned certificate (P-256), the same on both, derived to a
 * key for their heartbeat sessions. Only those two hosts can compute it; a
 * host that re-keys (host init --force) gets a new one once re-trusted.
 */
export function pairSecret(ownKeyPem: string, own: string, peerCertPem: string, peer: string): string {
  let shared: Buffer;
  try {
    shared = crypto.diffieHellman({ privateKey: crypto.createPrivateKey(ownKeyPem), publicKey: new crypto.X509Certificate(peerCertPem).publicKey });
  } catch (err) {
    throw new LockstepError(`cannot derive the heartbeat key shared with host "${peer}": ${errorMessage(err)}`, {
      hint: 'both hosts need identities made by lockstep host init (P-256 keys); trust that host again with its host.crt',
    });
  }
  const [x, y] = [own, peer].sort();
  return crypto.createHmac('sha256', shared).update(`lockstep heartbeat sessions|${x}|${y}`).digest('hex');
}
