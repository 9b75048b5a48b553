/**
 * What the CLI does with the daemons of a VM's two hosts: `up -f` hands the
 * VM's definition to both (each keeps its copy), has the secondary's host
 * start its agent and the primary's host start the VM alone, then follows
 * both until the agents say the VM is protected (the first sync goes over
 * the replication network); `status NAME` asks every host it knows.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { HostConfig } from '../config/host.js';
import { parseVmFile } from '../config/vm.js';
import { LockstepError } from '../util/errors.js';
import { sleep } from '../util/time.js';
import { ApiClient } from './client.js';
import type { VmStatus } from './api-types.js';
import type { PlacedVm } from './vm-host.js';

/** This host's daemon over its socket, another over TLS. */
export function clientFor(host: HostConfig, name: string, timeoutMs?: number): ApiClient {
  return name === host.name ? ApiClient.local(host, timeoutMs) : ApiClient.remote(host, name, timeoutMs);
}

export interface UpOnHostsResult {
  name: string;
  hosts: [string, string];
  ms: number;
  status: Record<string, VmStatus>;
}

const POLL_MS = 500;

/** One line of what a host is doing with the VM, for progress. */
export function vmLine(host: string, s: VmStatus | undefined): string {
  if (!s) return `${host}: no such VM`;
  const a = s.agent;
  if (s.phase !== 'running' || !a) return `${host}: ${s.phase}${s.detail ? ` (${s.detail})` : ''}`;
  const work = a.work ? `, ${a.work.kind}${a.work.step ? `: ${a.work.step}` : ''}${a.work.mirror ? ` ${((100 * a.work.mirror.offset) / Math.max(1, a.work.mirror.len)).toFixed(0)}%` : ''}` : '';
  return `${host}: ${a.role}${a.protected ? ' (protected)' : ''}${work}`;
}

export async function upOnHosts(host: HostConfig, file: string, o: { onStep?: (m: string) => void; onUpdate?: (m: string) => void; timeoutMs?: number } = {}): Promise<UpOnHostsResult> {
  const step = o.onStep ?? (() => {});
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new LockstepError(`cannot read the VM file ${file}: ${(err as Error).message}`, { hint: 'pass it with -f FILE' });
  }
  const vm = parseVmFile(text, file);
  const [p, s] = vm.hosts;
  const clients = { [p]: clientFor(host, p), [s]: clientFor(host, s) };
  step(`asking hosts ${p} and ${s} where they listen`);
  const infos = Object.fromEntries(await Promise.all(vm.hosts.map(async (h) => [h, await clients[h]!.host()] as const)));
  for (const h of vm.hosts) if (infos[h]!.name !== h) throw new LockstepError(`the daemon reached as "${h}" says it is "${infos[h]!.name}"`, { hint: 'fix the peers in this host file' });
  for (const h of vm.hosts) {
    const cur = await clients[h]!.vm(vm.name);
    if (cur && cur.phase !== 'defined') throw new LockstepError(`VM "${vm.name}" is ${cur.phase} on host ${h} already`, { hint: `see lockstep status ${vm.name}` });
  }
  const placed: PlacedVm = {
    vm,
    hosts: Object.fromEntries(vm.hosts.map((h) => [h, { replication: infos[h]!.addresses.replication, heartbeat: infos[h]!.addresses.heartbeat }])),
    run: crypto.randomUUID(),
    secret: vm.agents.secret ?? crypto.randomBytes(24).toString('base64url'),
    definedAt: new Date().toISOString(),
  };
  step(`handing the definition of "${vm.name}" to ${p} and ${s}`);
  for (const h of vm.hosts) await clients[h]!.defineVm(vm.name, placed);
  const t0 = performance.now();
  step(`starting: the agent on ${s}, the VM alone on ${p}`);
  await clients[s]!.startVm(vm.name);
  await clients[p]!.startVm(vm.name);
  step('protecting it: a new secondary on ' + s + ', synced from ' + p + ' over the replication network');
  const deadline = performance.now() + (o.timeoutMs ?? vm.replication.resyncTimeoutMs + 300_000);
  let last = '';
  for (;;) {
    const st: Record<string, VmStatus> = {};
    for (const h of vm.hosts) {
      const x = await clients[h]!.vm(vm.name);
      if (!x) throw new LockstepError(`host ${h} forgot VM "${vm.name}"`, { hint: 'see its log: journalctl -u lockstepd' });
      if (x.phase === 'failed') throw new LockstepError(`starting VM "${vm.name}" failed on host ${h}: ${x.detail ?? 'no detail'}`, { hint: `see its log (journalctl -u lockstepd) and ${vm.name}'s agent.log there` });
      st[h] = x;
    }
    const line = vm.hosts.map((h) => vmLine(h, st[h])).join('; ');
    if (line !== last) o.onUpdate?.(line);
    last = line;
    if (vm.hosts.every((h) => st[h]!.agent?.protected)) return { name: vm.name, hosts: vm.hosts, ms: performance.now() - t0, status: st };
    if (performance.now() > deadline) throw new LockstepError(`VM "${vm.name}" was not protected within ${Math.round((o.timeoutMs ?? 0) / 1000) || 'the resync timeout +300'} s: ${line}`, { hint: `see lockstep status ${vm.name}` });
    await sleep(POLL_MS);
  }
}

/** The VM as every host this one knows (itself, its peers) runs it; hosts that cannot be asked say why. */
export async function vmOnHosts(host: HostConfig, name: string, o: { only?: string } = {}): Promise<Array<{ host: string; status?: VmStatus; error?: string }>> {
  // This host only if its daemon runs (a management host has none).
  const names = o.only ? [o.only] : [...(fs.existsSync(host.api.socket) ? [host.name] : []), ...Object.keys(host.peers)];
  const out = await Promise.all(
    names.map(async (h) => {
      try {
        return { host: h, status: await clientFor(host, h, 5000).vm(name) };
      } catch (err) {
        return { host: h, error: (err as Error).message };
      }
    }),
  );
  // Hosts that answered without the VM are not part of it.
  return out.filter((x) => x.error !== undefined || x.status !== undefined);
}

export interface DownOnHostsResult {
  name: string;
  hosts: Array<{ host: string; role: string | null; qemu: string }>;
}

/**
 * lockstep down NAME: the agents of both hosts first (so that neither takes
 * the other's stop for a failure), then the secondary's QEMU (it must not
 * take over and write its buffers), then the primary's, whose disk holds
 * every acknowledged write. A host that cannot be reached is named.
 */
export async function downOnHosts(host: HostConfig, name: string, o: { onStep?: (m: string) => void } = {}): Promise<DownOnHostsResult> {
  const step = o.onStep ?? (() => {});
  const answers = await vmOnHosts(host, name);
  const known = answers.find((a) => a.status)?.status;
  if (!known) throw new LockstepError(`no host knows a VM "${name}"`, { hint: answers.length ? answers.map((a) => `${a.host}: ${a.error}`).join('; ') : 'see lockstep status NAME' });
  const unreachable = known.hosts.filter((h) => !answers.some((a) => a.host === h && a.status));
  if (unreachable.length) throw new LockstepError(`VM "${name}": host ${unreachable.join(' and ')} cannot be asked`, { hint: 'stop what runs there when it is back; nothing was stopped' });
  const role = (h: string) => answers.find((a) => a.host === h)?.status?.agent?.role ?? null;
  const stop = (h: string, agentOnly: boolean) => clientFor(host, h, 30_000).stopVm(name, { agentOnly });
  step(`stopping the agents on ${known.hosts.join(' and ')}`);
  for (const h of known.hosts) await stop(h, true);
  // The secondary (or a node without a VM) first, the primary last.
  const order = [...known.hosts].sort((x, y) => Number(role(x) === 'primary' || role(x) === 'alone') - Number(role(y) === 'primary' || role(y) === 'alone'));
  const out: DownOnHostsResult = { name, hosts: [] };
  for (const h of order) {
    step(`stopping the VM on ${h} (${role(h) ?? 'no agent'})`);
    out.hosts.push({ host: h, role: role(h), qemu: (await stop(h, false)).qemu });
  }
  return out;
}
