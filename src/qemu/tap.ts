/**
 * Bridge membership of a node's tap. While in COLO only the primary's tap is
 * on the bridge: the secondary gets its input from the primary's mirror and
 * its output goes to colo-compare, never to the wire. At failover the
 * survivor's tap joins the bridge and the dead primary's leaves it.
 */
import fs from 'node:fs';
import { run } from '../util/exec.js';
import { LockstepError } from '../util/errors.js';

export interface TapPlace {
  tap: string;
  bridge: string;
  /** The network namespace the tap and bridge live in (none: this one). */
  netns?: string;
}

function ip(netns: string | undefined, args: string[]) {
  const [cmd, ...rest] = netns ? ['ip', '-n', netns, ...args] : ['ip', ...args];
  return run(cmd!, rest, { timeoutMs: 10_000, what: `ip ${args.join(' ')}${netns ? ` (netns ${netns})` : ''}` });
}

async function exists(netns: string | undefined, dev: string): Promise<boolean> {
  if (!netns) return fs.existsSync(`/sys/class/net/${dev}`);
  const r = await run('ip', ['-n', netns, 'link', 'show', 'dev', dev], { allowFailure: true, timeoutMs: 10_000 });
  return r.code === 0;
}

export async function checkTap(p: TapPlace, field: string): Promise<void> {
  const where = p.netns ? ` in network namespace ${p.netns}` : '';
  if (!(await exists(p.netns, p.tap))) {
    throw new LockstepError(`tap ${p.tap} (${field}) does not exist${where}`, { hint: `create it: ip${p.netns ? ` -n ${p.netns}` : ''} tuntap add ${p.tap} mode tap` });
  }
  if (!(await exists(p.netns, p.bridge))) {
    throw new LockstepError(`bridge ${p.bridge} (vm.network.bridge) does not exist${where}`, {
      hint: `create it: ip${p.netns ? ` -n ${p.netns}` : ''} link add ${p.bridge} type bridge && ip link set ${p.bridge} up`,
    });
  }
}

/**
 * Makes tap `name` (persistent, in this network namespace) unless it
 * exists, and brings it up, off any bridge; says whether it made it.
 */
export async function ensureTap(name: string): Promise<boolean> {
  const made = !(await exists(undefined, name));
  if (made) await ip(undefined, ['tuntap', 'add', 'dev', name, 'mode', 'tap']);
  await ip(undefined, ['link', 'set', name, 'up']);
  return made;
}

/** Whether network interface `name` exists in this network namespace. */
export function interfaceExists(name: string): boolean {
  return fs.existsSync(`/sys/class/net/${name}`);
}

/** Puts the tap on the bridge (the node serves the wire) and brings it up. */
export async function attachTap(p: TapPlace): Promise<void> {
  await ip(p.netns, ['link', 'set', p.tap, 'master', p.bridge]);
  await ip(p.netns, ['link', 'set', p.tap, 'up']);
}

/** Takes the tap off the bridge (a secondary, or a dead primary). */
export async function detachTap(p: TapPlace): Promise<void> {
  if (!(await exists(p.netns, p.tap))) return;
  await ip(p.netns, ['link', 'set', p.tap, 'nomaster']);
  await ip(p.netns, ['link', 'set', p.tap, 'up']);
}
