/**
 * The lockstep config: one YAML file describing the VM, the two nodes and the
 * replication tuning. Everything has a safe default except what only the
 * user can know (which disk image holds their data).
 */
import { z } from 'zod';

const SIZE_RE = /^(\d+)\s*([KMGT]i?B?|B)?$/i;

/** "512M", "2G", "65536K", or a plain number of bytes. */
export function parseSize(v: string | number): number | undefined {
  if (typeof v === 'number') return Number.isInteger(v) && v > 0 ? v : undefined;
  const m = SIZE_RE.exec(v.trim());
  if (!m) return undefined;
  const unit = (m[2] ?? 'B').toUpperCase()[0]!;
  const mult = { B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[unit] ?? 1;
  return Number(m[1]) * mult;
}

export const size = (what: string) =>
  z.union([z.string(), z.number()]).transform((v, ctx) => {
    const n = parseSize(v);
    if (n === undefined || n <= 0) {
      ctx.addIssue({ code: 'custom', message: `expected ${what} like 512M or 2G, got ${JSON.stringify(v)}` });
      return z.NEVER;
    }
    return n;
  });

export const port = z.number().int().min(1).max(65535);
export const ipv4 = z.string().regex(/^(\d{1,3})(\.\d{1,3}){3}$/, 'expected an IPv4 address like 127.0.0.2');
export const nodeName = z.string().regex(/^[a-z][a-z0-9-]{0,30}$/, 'expected a short lower-case name (letters, digits, "-")');
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

export const endpoint = z.string().regex(/^(\d{1,3})(\.\d{1,3}){3}:\d{1,5}$/, 'expected ADDRESS:PORT like 10.0.0.3:7900');

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
        memory: size('a memory size').default(128 * 1024 * 1024),
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
            size: size('a disk size').optional(),
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
         * addresses. List a dedicated network first and the replication network second to
         * survive the loss of either.
         */
        links: z.record(z.string(), z.array(ipv4).min(1, 'expected at least one address')).optional(),
        heartbeatIntervalMs: z.number().int().min(10).max(10_000).default(100),
        heartbeatTimeoutMs: z.number().int().min(50).max(60_000).default(500),
        /** The witness that grants the writer lease (split-brain safety). */
        witness: endpoint.optional(),
        /**
         * This VM's own key at the witness (`lockstep witness-key NAME` prints it): the agents then
         * prove it instead of sharing their secret with the witness, and VMs that share a witness
         * need not share a secret. Without it the witness checks agents.secret (its own secret).
         */
        witnessKey: z.string().regex(/^[0-9a-f]{64}$/, 'expected the 64 hex digits lockstep witness-key prints').optional(),
        leaseMs: z.number().int().min(200).max(60_000).default(1000),
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
        compareTimeoutMs: z.number().int().min(10).max(600_000).default(3000),
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
      .default({ checkpointDelayMs: 2000, compareTimeoutMs: 3000, bufferDir: '/dev/shm', resyncTimeoutMs: 600_000, tls: true }),
  })
  .strict();

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
