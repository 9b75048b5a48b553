/**
 * Network namespaces as lab hosts. Everything is created with names unique
 * to this process and removed by the same code that created it.
 */
import crypto from 'node:crypto';
import { run } from '../util/exec.js';
import { LockstepError } from '../util/errors.js';

/** Runs `ip ARGS` (bounded; a failure names the command). */
export async function ip(args: string[]): Promise<void> {
  await run('ip', args, { timeoutMs: 10_000, what: `ip ${args.join(' ')}` });
}

export function uniqueName(prefix: string): string {
  return `${prefix}${process.pid % 10000}${crypto.randomBytes(2).toString('hex')}`;
}

export interface BridgedNetns {
  name: string;
  bridge: string;
  bridgeAddress: string;
  taps: string[];
  remove(): Promise<void>;
}

/**
 * One namespace with a bridge (holding `bridgeAddress`, e.g. the guest's
 * gateway 10.0.2.2/24) and unattached taps, loopback up.
 */
export async function createBridgedNetns(o: { taps: string[]; bridgeAddress?: string; prefix?: string }): Promise<BridgedNetns> {
  if (process.getuid?.() !== 0) throw new LockstepError('network namespaces need root', { hint: 'run as root (the lab creates namespaces, bridges and taps)' });
  const name = uniqueName(o.prefix ?? 'ls');
  const bridge = 'br0';
  const bridgeAddress = o.bridgeAddress ?? '10.0.2.2/24';
  await ip(['netns', 'add', name]);
  const remove = async () => {
    await run('ip', ['netns', 'del', name], { allowFailure: true, timeoutMs: 10_000 });
  };
  try {
    await ip(['-n', name, 'link', 'set', 'lo', 'up']);
    await ip(['-n', name, 'link', 'add', bridge, 'type', 'bridge']);
    await ip(['-n', name, 'addr', 'add', bridgeAddress, 'dev', bridge]);
    await ip(['-n', name, 'link', 'set', bridge, 'up']);
    for (const t of o.taps) {
      await ip(['-n', name, 'tuntap', 'add', t, 'mode', 'tap']);
      await ip(['-n', name, 'link', 'set', t, 'up']);
    }
  } catch (err) {
    await remove();
    throw err;
  }
  return { name, bridge, bridgeAddress, taps: o.taps, remove };
}
