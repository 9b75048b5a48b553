/**
 * Reading and checking a config file. Errors name the file, the field and
 * what is allowed there.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import type { z } from 'zod';
import { configSchema, qemuPathProblem, type Config } from './schema.js';
import { LockstepError } from '../util/errors.js';

export class ConfigError extends LockstepError {
  constructor(
    readonly file: string,
    readonly problems: string[],
    example = 'examples/one-host.yaml',
  ) {
    super(`${file}: ${problems.length === 1 ? problems[0] : `${problems.length} problems:\n  - ${problems.join('\n  - ')}`}`, {
      hint: `see ${example} for a complete, commented example`,
    });
    this.name = 'ConfigError';
  }
}

/** A config with every path absolute and the derived values filled in. */
export interface ResolvedConfig extends Config {
  file: string;
  stateDir: string;
  nodes: Array<Config['nodes'][number] & { dataDir: string }>;
}

function fieldPath(p: PropertyKey[]): string {
  return p.map((k, i) => (typeof k === 'number' ? `[${k}]` : `${i ? '.' : ''}${String(k)}`)).join('') || '(top level)';
}

function describeIssue(issue: z.core.$ZodIssue, doc: unknown): string {
  const where = fieldPath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    return `${where === '(top level)' ? '' : `${where}: `}unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  }
  if (issue.code === 'invalid_type') {
    let cur: unknown = doc;
    for (const k of issue.path) cur = cur && typeof cur === 'object' ? (cur as Record<PropertyKey, unknown>)[k] : undefined;
    if (cur === undefined) return `${where}: missing (expected ${issue.expected})`;
    return `${where}: expected ${issue.expected}, got ${JSON.stringify(cur)}`;
  }
  if (issue.code === 'invalid_value') return `${where}: expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  if (issue.code === 'invalid_union' && 'discriminator' in issue) return `${where}: ${issue.message}`;
  return `${where}: ${issue.message}`;
}

/** Semantic checks the schema cannot express. */
function crossCheck(c: Config, o: ParseOptions): string[] {
  const out: string[] = [];
  const [a, b] = c.nodes;
  if (a && b) {
    if (a.name === b.name) out.push(`nodes: the two nodes need different names (both are "${a.name}")`);
    if (a.address === b.address) {
      out.push(`nodes: the two nodes need different addresses (both are ${a.address}); on one host use 127.0.0.1 and 127.0.0.2`);
    }
  }
  const ports = Object.entries(c.ports);
  const seen = new Map<number, string>();
  for (const [k, v] of ports) {
    if (seen.has(v)) out.push(`ports.${k}: ${v} is also ports.${seen.get(v)}`);
    seen.set(v, k);
  }
  if (c.vm.network.mode === 'user') {
    for (const [i, f] of c.vm.network.forwards.entries()) {
      if (seen.has(f.port)) out.push(`vm.network.forwards[${i}].port: ${f.port} is also ports.${seen.get(f.port)}`);
    }
  } else {
    for (const n of c.nodes) {
      if (!c.vm.network.taps[n.name]) out.push(`vm.network.taps: no tap for node "${n.name}"`);
    }
    const names = Object.values(c.vm.network.taps);
    if (!o.separateHosts && new Set(names).size !== names.length) out.push('vm.network.taps: each node needs its own tap');
  }
  if (c.vm.initrd && !c.vm.kernel) out.push('vm.initrd: needs vm.kernel');
  const ag = c.agents;
  if (ag) {
    if (ag.heartbeatTimeoutMs < 2 * ag.heartbeatIntervalMs) {
      out.push(`agents.heartbeatTimeoutMs: ${ag.heartbeatTimeoutMs} must be at least twice agents.heartbeatIntervalMs (${ag.heartbeatIntervalMs})`);
    }
    if (ag.links) {
      for (const k of Object.keys(ag.links)) {
        if (!c.nodes.some((n) => n.name === k)) out.push(`agents.links.${k}: no node is named "${k}"`);
      }
      const missing = c.nodes.filter((n) => !ag.links![n.name]).map((n) => n.name);
      if (missing.length) out.push(`agents.links: also give the addresses of ${missing.join(' and ')} (one per heartbeat path, in the same order)`);
      const counts = c.nodes.map((n) => ag.links![n.name]?.length ?? 0);
      if (!missing.length && counts[0] !== counts[1]) out.push(`agents.links: the nodes have different numbers of paths (${counts.join(' vs ')}); each path needs an address on both nodes`);
    }
    if (seen.has(ag.port)) out.push(`agents.port: ${ag.port} is also ports.${seen.get(ag.port)}`);
  }
  if (c.vm.disk.create && c.vm.disk.size === undefined) out.push('vm.disk.size: needed with vm.disk.create: true (e.g. 64M)');
  return out;
}

/** A YAML file's text checked against `schema`: every problem named with its field, in one error. */
export function parseYamlFile<S extends z.ZodType>(schema: S, text: string, file: string, example?: string): z.output<S> {
  let doc: unknown;
  try {
    doc = YAML.parse(text, { prettyErrors: true });
  } catch (err) {
    throw new ConfigError(file, [`not valid YAML: ${(err as Error).message.split('\n')[0]}`], example);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(file, ['expected a YAML mapping (key: value lines) at the top level'], example);
  const r = schema.safeParse(doc);
  if (!r.success) throw new ConfigError(file, r.error.issues.map((i) => describeIssue(i, doc)), example);
  return r.data;
}

export interface ParseOptions {
  /** The nodes are separate machines (a VM placed by the daemons): each may name its tap alike. */
  separateHosts?: boolean;
}

export function parseConfig(text: string, file: string, o: ParseOptions = {}): ResolvedConfig {
  const data = parseYamlFile(configSchema, text, file);
  const problems = crossCheck(data, o);
  if (problems.length) throw new ConfigError(file, problems);
  const base = path.dirname(path.resolve(file));
  const abs = (p: string) => (path.isAbsolute(p) ? p : path.resolve(base, p));
  const c = data;
  const stateDir = abs(c.stateDir ?? path.join('.lockstep', c.name));
  const resolved: ResolvedConfig = {
    ...c,
    file: path.resolve(file),
    stateDir,
    vm: {
      ...c.vm,
      kernel: c.vm.kernel === undefined || c.vm.kernel === 'demo' ? c.vm.kernel : abs(c.vm.kernel),
      initrd: c.vm.initrd === undefined ? undefined : abs(c.vm.initrd),
      disk: { ...c.vm.disk, image: abs(c.vm.disk.image) },
    },
    qemu: { ...c.qemu, binary: c.qemu.binary === undefined ? undefined : c.qemu.binary.includes('/') ? abs(c.qemu.binary) : c.qemu.binary },
    replication: { ...c.replication, bufferDir: abs(c.replication.bufferDir) },
    nodes: c.nodes.map((n) => ({ ...n, dataDir: abs(n.dataDir ?? path.join(stateDir, n.name)) })),
  };
  // Every path QEMU is given, as resolved (a comma in the directory of the file counts too).
  const paths: Array<[string, string | undefined]> = [
    ['stateDir', resolved.stateDir],
    ['vm.disk.image', resolved.vm.disk.image],
    ['vm.kernel', resolved.vm.kernel === 'demo' ? undefined : resolved.vm.kernel],
    ['vm.initrd', resolved.vm.initrd],
    ['qemu.binary', resolved.qemu.binary],
    ['replication.bufferDir', resolved.replication.bufferDir],
    ...resolved.nodes.map((n, i): [string, string] => [`nodes[${i}].dataDir`, n.dataDir]),
  ];
  const bad = paths.flatMap(([field, p]) => {
    const why = p === undefined ? undefined : qemuPathProblem(p);
    return why ? [`${field}: "${p}" ${why}`] : [];
  });
  if (bad.length) throw new ConfigError(file, bad);
  return resolved;
}

export function loadConfig(file: string): ResolvedConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new LockstepError(`cannot read config ${file}: ${code === 'ENOENT' ? 'no such file' : (err as Error).message}`, {
      hint: 'pass the config with -c FILE; examples/one-host.yaml is a complete example',
    });
  }
  return parseConfig(text, file);
}
