/**
 * The lockstep config: one YAML file describing the VM, the two nodes and the
 * replication tuning. Everything has a safe default except what only the
 * user can know (which disk image holds their data).
 */
import { z } from 'zod';

const SIZE_RE = /^(\d+)\s*([KMGT]i?B?|B)?$/i;

/** "512M", "2G", "65536K", or a plain number of bytes; undefined unless a whole number of bytes that is a safe integer. */
export function parseSize(v: string | number): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v > 0 ? v : undefined;
  if (v.length > 32) return undefined;
  const m = SIZE_RE.exec(v.trim());
  if (!m) return undefined;
  const unit = (m[2] ?? 'B').toUpperCase()[0]!;
  const mult = { B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[unit] ?? 1;
  const n = Number(m[1]) * mult;
  return Number.isSafeInteger(n) ? n : undefined;
}

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const TiB = 1024 ** 4;

/** agents.leaseMs's default (the reasoning is at the field). */
export const DEFAULT_LEASE_MS = 500;
/** agents.heartbeatTimeoutMs's default. */
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 500;

/** A size in bytes between `min` and `max` (and a multiple of `multiple`), said with units in errors. */
export const size = (what: string, o: { min?: number; max?: number; multiple?: number } = {}) =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const n = parseSize(v);
    const min = o.min ?? 1;
    const max = o.max ?? Number.MAX_SAFE_INTEGER;
    if (n === undefined || n < min || n > max) {
      const range = o.min !== undefined || o.max !== undefined ? ` from ${human(min)} to ${human(max)}` : '';
      ctx.addIssue({ code: 'custom', message: `expected ${what}${range} like 512M or 2G, got ${JSON.stringify(v)}` });
      return z.NEVER;
    }
    if (o.multiple !== undefined && n % o.multiple !== 0) {
      ctx.addIssue({ code: 'custom', message: `expected ${what} in whole ${human(o.multiple)}, got ${JSON.stringify(v)}` });
      return z.NEVER;
    }
    return n;
  });

function human(n: number): string {
  for (const [u, m] of [['T', TiB], ['G', GiB], ['M', MiB], ['K', 1024]] as const) if (n >= m && n % m === 0) return `${n / m}${u}`;
  return `${n} bytes`;
}

/** A VM's memory: QEMU's -m is in MiB, so whole MiB, from 16 MiB (less boots nothing) to 1 TiB. */
export const memorySize = size('a memory size', { min: 16 * MiB, max: TiB, multiple: MiB });
/** A disk: from 1 MiB to 64 TiB (qcow2's own bound), in whole 512-byte sectors. */
export const diskSize = size('a disk size', { min: MiB, max: 64 * TiB, multiple: 512 });

export const port = z.number().int().min(1).max(65535);

/** Whether `s` is a dotted IPv4 address, each part 0-255 without leading zeros. */
export function isIpv4(s: string): boolean {
  const parts = s.split('.');
  return parts.length === 4 && parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255);
}

export const ipv4 = z.string().max(15).refine(isIpv4, 'expected an IPv4 address like 127.0.0.2 (four numbers of 0-255)');
/** An address a host listens on or is reached at: not 0.0.0.0 (every address) nor 255.255.255.255 (broadcast). */
export const hostIpv4 = ipv4.refine((a) => a !== '0.0.0.0' && a !== '255.255.255.255', 'expected one address of this host, not 0.0.0.0 (every address) or 255.255.255.255');

/**
 * Names that would be properties of a plain object's prototype, and which the wire refuses (wire.ts): refused
 * as names of VMs, hosts and nodes too, so that a name the config takes is one the wire carries.
 */
export const RESERVED_NAMES: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype', 'hasOwnProperty', 'toString', 'valueOf']);
export const nodeName = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,30}$/, 'expected a short lower-case name (letters, digits, "-")')
  .refine((n) => !RESERVED_NAMES.has(n), 'a reserved name: choose another');

/**
 * A path QEMU is given on its command line: no commas (option syntax: a comma would end the value and begin
 * another option, e.g. ",server=on" or a second monitor) and no control characters.
 */
export function qemuPathProblem(p: string): string | undefined {
  if (p.includes(',')) return 'contains a comma, which QEMU reads as the start of another option';
  if (/[\u0000-\u001f\u007f]/.test(p)) return 'contains a control character';
  if (p.length > 1024) return 'is longer than 1024 characters';
  return undefined;
}

/** An absolute path (host file lists of what VMs may use). */
export const absolutePath = z
  .string()
  .min(1)
  .max(1024)
  .refine((p) => p.startsWith('/'), 'expected an absolute path')
  .refine((p) => qemuPathProblem(p) === undefined, 'expected a path without commas or control characters');
const ifname = z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, 'expected an interface name of up to 15 letters, digits, "_", "." or "-"');

const forward = z
  .object({
    host: ipv4.default('127.0.0.1').describe('address clients connect to'),
    port: port.describe('port clients connect to'),
    guestPort: port.describe('port of the service in the guest'),
    proto: z.enum(['tcp', 'udp']).default('tcp'),
  })
  .strict();

/** A unicast MAC address: both VMs of a pair have the same one; every VM on a LAN needs its own. */
const mac = z
  .string()
  .regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, 'expected a MAC address like 52:54:00:12:34:56 (lower case)')
  .refine((m) => (parseInt(m.slice(0, 2), 16) & 1) === 0, 'expected a unicast MAC address (the first byte even)')
  .describe("the VM's MAC address (default: one derived from the VM's name)");

const network = z.discriminatedUnion('mode', [
  z
    .object({
      mode: z.literal('user'),
      forwards: z.array(forward).default([]),
      mac: mac.optional(),
    })
    .strict(),
  z
    .object({
      mode: z.literal('tap'),
      bridge: ifname,
      /** Tap interface per node name (a VM file may leave a host out: its daemon makes one). */
      taps: z.record(z.string(), ifname).default({}),
      /**
       * After a takeover, QEMU's announce-self tells the switches and neighbours
       * that the VM's MAC is behind the survivor's port now. Off only to measure
       * what it saves: a switch that still sends the VM's traffic to the dead
       * host's port loses it until the guest itself sends a packet.
       */
      announce: z.boolean().default(true),
      mac: mac.optional(),
    })
    .strict(),
]);

const node = z
  .object({
    name: nodeName,
    address: ipv4.describe('where this node listens for its peer (COLO proxy, migration, NBD)'),
    dataDir: z.string().optional().describe('where this node keeps its disk replica and logs'),
    /** Run this node's QEMU in a network namespace (the lab's hosts). */
    netns: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'expected a network namespace name').optional(),
  })
  .strict();

/** Whether `s` is ADDRESS:PORT with an IPv4 address and a port of 1-65535. */
export function isEndpoint(s: string): boolean {
  const i = s.lastIndexOf(':');
  const portText = s.slice(i + 1);
  return i > 0 && isIpv4(s.slice(0, i)) && /^[1-9][0-9]{0,4}$/.test(portText) && Number(portText) <= 65535;
}

export const endpoint = z.string().max(21).refine(isEndpoint, 'expected ADDRESS:PORT like 10.0.0.3:7900 (an IPv4 address, a port of 1-65535)');
/** An endpoint a host listens on: not on 0.0.0.0. */
export const hostEndpoint = endpoint.refine((e) => hostIpv4.safeParse(e.slice(0, e.lastIndexOf(':'))).success, 'expected one address of this host, not 0.0.0.0');

export const configSchema = z
  .object({
    name: nodeName.default('lockstep'),
    stateDir: z.string().optional(),
    qemu: z
      .object({
        binary: z.string().optional(),
        accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
        /** Run COLO on a QEMU that lacks a fix it needs (lockstep qemu info lists them), with the risk each names. */
        allowMissingFixes: z.boolean().default(false),
      })
      .strict()
      .default({ accel: 'auto', allowMissingFixes: false }),
    vm: z
      .object({
        memory: memorySize.default(128 * 1024 * 1024),
        cpus: z.number().int().min(1).max(64).default(1),
        /** A kernel to boot directly, or "demo" for lockstep's demo guest. */
        kernel: z.string().optional(),
        initrd: z.string().optional(),
        append: z.string().optional(),
        disk: z
          .object({
            image: z.string().describe("the primary's disk image: the VM's data"),
            format: z.enum(['qcow2', 'raw']).default('qcow2'),
            /** Create an empty image of `size` if `image` does not exist yet. */
            create: z.boolean().default(false),
            size: diskSize.optional(),
          })
          .strict(),
        network: network.default({ mode: 'user', forwards: [] }),
      })
      .strict(),
    nodes: z.array(node).length(2, 'expected exactly two nodes: the primary first, then the secondary'),
    ports: z
      .object({
        comparePrimary: port.default(9001),
        mirror: port.default(9003),
        compare: port.default(9004),
        compareOut: port.default(9005),
        migration: port.default(9998),
        nbd: port.default(9999),
      })
      .strict()
      .default({ comparePrimary: 9001, mirror: 9003, compare: 9004, compareOut: 9005, migration: 9998, nbd: 9999 }),
    agents: z
      .object({
        /** Shared secret of the agents and the witness (HMAC-authenticated links). At least 16 characters. */
        secret: z.string().min(16, 'expected a shared secret of at least 16 characters'),
        /** Where each agent listens for its peer: on the node's address. */
        port: port.default(7800),
        /**
         * The heartbeat paths: per node name, the addresses its agent uses, one path per
         * position (a's first with b's first, ...). Default: one path between the nodes'
         * addresses. List a dedicated network first and the replication network second (the
         * nodes' addresses) to survive the loss of either, and to see a cut replication link within
         * a heartbeat timeout: the path over it falls silent while the other is heard.
         */
        links: z.record(z.string(), z.array(ipv4).min(1, 'expected at least one address')).optional(),
        heartbeatIntervalMs: z.number().int().min(10).max(10_000).default(100),
        heartbeatTimeoutMs: z.number().int().min(50).max(60_000).default(DEFAULT_HEARTBEAT_TIMEOUT_MS),
        /** The witness that grants the writer lease (split-brain safety). */
        witness: endpoint.optional(),
        /**
         * This VM's own key at the witness (`lockstep witness-key NAME` prints it): the agents then
         * prove it instead of sharing their secret with the witness, and VMs that share a witness
         * need not share a secret. Without it the witness checks agents.secret (its own secret).
         */
        witnessKey: z.string().regex(/^[0-9a-f]{64}$/, 'expected the 64 hex digits lockstep witness-key prints').optional(),
        /**
         * The writer lease's length at the witness. A secondary whose primary's host is lost takes over once the
         * primary's lease has run out (at most this long after its last renewal, which comes every quarter of it);
         * a node that writes alone stops its VM once less than a quarter is left without a renewal. 500 ms: under
         * the lab's load the witness answered within 100 ms every time (2,715 round trips in 10 minutes, 3 over
         * 50 ms), and a fence stopped the VM in 10-17 ms, both well inside the quarter (125 ms).
         */
        leaseMs: z.number().int().min(200).max(60_000).default(DEFAULT_LEASE_MS),
        /**
         * After a failover, protect the VM again by themselves: as soon as the other
         * node's agent is back (its QEMU gone or fenced, its disk not newer), the
         * survivor's agent has it start a new secondary and resyncs it.
         */
        reprotect: z.boolean().default(true),
      })
      .strict()
      .optional(),
    replication: z
      .object({
        checkpointDelayMs: z.number().int().min(100).max(3_600_000).default(2000),
        /**
         * How long colo-compare holds a packet that the other VM has not produced yet before it asks for a checkpoint
         * (which releases it), and how often it looks for such packets (its expired_scan_cycle): together they bound
         * that wait whatever checkpointDelayMs is. QEMU's defaults; `npm run bench` compares them with 300 / 100 ms.
         */
        compareTimeoutMs: z.number().int().min(10).max(600_000).default(3000),
        compareScanMs: z.number().int().min(10).max(60_000).default(1000),
        /** Active and hidden buffers of the secondary: a RAM disk is best. */
        bufferDir: z.string().default('/dev/shm'),
        /** How long a resync's disk mirror may take to catch up with the running VM. */
        resyncTimeoutMs: z.number().int().min(1000).max(86_400_000).default(600_000),
        /**
         * TLS on the data plane (migration, NBD, the proxy's sockets between the hosts), with a
         * key only the pair has. Off only on a network nobody else can reach: without it, anyone
         * who reaches the ports reads the VM's memory and network traffic and writes its disk.
         */
        tls: z.boolean().default(true),
      })
      .strict()
      .default({ checkpointDelayMs: 2000, compareTimeoutMs: 3000, compareScanMs: 1000, bufferDir: '/dev/shm', resyncTimeoutMs: 600_000, tls: true }),
  })
  .strict();

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
