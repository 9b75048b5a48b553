/**
 * Chaos actions for lab tests: things that go wrong on real hosts, done to
 * processes and namespaces the lab itself created.
 *
 * Link cuts are policy-routing rules in the lab's namespace that send TCP
 * traffic to or from given ports into a blackhole: packets of established
 * connections vanish without RST or ICMP, like behind a pulled cable, and
 * new connections fail. Other ports keep flowing, so one kind of traffic can
 * be cut while the rest goes on (e.g. the agents' heartbeat link, not the
 * replication). The rules sit before the local table, which is moved from
 * priority 0 to LOCAL_PREF once per namespace (rules cannot go below 0).
 */
import { run } from '../util/exec.js';

const LOCAL_PREF = 100;
let nextPref = 10;

async function ip(netns: string, args: string[], allowFailure = false): Promise<string> {
  const r = await run('ip', ['-n', netns, ...args], { timeoutMs: 10_000, allowFailure, what: `ip -n ${netns} ${args.join(' ')}` });
  return r.stdout;
}

async function moveLocalTable(netns: string): Promise<void> {
  const rules = await ip(netns, ['rule', 'show']);
  if (!/^0:\s+from all lookup local/m.test(rules)) return;
  await ip(netns, ['rule', 'add', 'pref', String(LOCAL_PREF), 'table', 'local']);
  await ip(netns, ['rule', 'del', 'pref', '0', 'table', 'local']);
}

export interface LinkCut {
  ports: number[];
  /** Lets the traffic through again. */
  restore(): Promise<void>;
}

/** Blackholes TCP traffic to or from `ports` inside the namespace until restored. */
export async function cutPorts(netns: string, ports: number[]): Promise<LinkCut> {
  await moveLocalTable(netns);
  const prefs: number[] = [];
  const remove = async () => {
    for (const p of prefs.splice(0)) await ip(netns, ['rule', 'del', 'pref', String(p)], true);
  };
  try {
    for (const port of ports) {
      for (const dir of ['dport', 'sport']) {
        const pref = nextPref++;
        if (nextPref >= LOCAL_PREF) nextPref = 10;
        await ip(netns, ['rule', 'add', 'pref', String(pref), 'ipproto', 'tcp', dir, String(port), 'blackhole']);
        prefs.push(pref);
      }
    }
  } catch (err) {
    await remove();
    throw err;
  }
  return { ports, restore: remove };
}
