/**
 * The data plane's key: what lets only the two hosts of a pair read and
 * write its migration stream, NBD export and proxy sockets (QEMU's TLS with
 * a pre-shared key, one per VM, so that the pair of one VM cannot reach
 * another VM's data plane even between the same two hosts).
 *
 * With agents (always, on real hosts) the key is derived from the agents'
 * secret, which both daemons got over their authenticated API when the VM
 * was defined: nothing more to hand out, and a new secret gives a new key.
 * A pair without agents (one machine, both nodes in one state directory)
 * gets a random key the first time, kept in its state directory.
 */
import crypto from 'node:crypto';
import path from 'node:path';
import type { ResolvedConfig } from '../config/load.js';
import { readPskKey, writePskDir } from '../qemu/tls.js';

/** Where a pair's QEMUs read their TLS key (the same path on both hosts, each host its own copy); undefined when TLS is off. */
export function dataPlaneTlsDir(c: ResolvedConfig): string | undefined {
  return c.replication.tls ? path.join(c.stateDir, 'tls') : undefined;
}

/** The key for VM `name` from the agents' secret: HMAC-SHA256(secret, "lockstep data plane|" + name), hex. */
export function deriveDataPlaneKey(secret: string, name: string): string {
  return crypto.createHmac('sha256', secret).update(`lockstep data plane|${name}`).digest('hex');
}

/** Writes this host's copy of the pair's key before a QEMU of the pair starts (nothing when TLS is off). */
export function prepareDataPlaneKey(c: ResolvedConfig): void {
  const dir = dataPlaneTlsDir(c);
  if (!dir) return;
  const key = c.agents?.secret ? deriveDataPlaneKey(c.agents.secret, c.name) : (readPskKey(dir) ?? crypto.randomBytes(32).toString('hex'));
  writePskDir(dir, key);
}
