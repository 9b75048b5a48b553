/**
 * A fake QMP server for protocol tests: speaks the greeting and negotiation,
 * then hands each command to a script the test provides.
 */
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface FakeCommand {
  execute?: string;
  'exec-oob'?: string;
  arguments?: Record<string, unknown>;
  id?: string;
}

export interface FakeConn {
  send(obj: unknown): void;
  reply(cmd: FakeCommand, ret: unknown): void;
  error(cmd: FakeCommand, cls: string, desc: string): void;
  event(name: string, data?: Record<string, unknown>): void;
  close(): void;
}

export interface FakeQmpOptions {
  greeting?: unknown;
  capabilities?: string[];
  /** Called for every command after negotiation. Return nothing to leave it unanswered. */
  onCommand?: (cmd: FakeCommand, conn: FakeConn) => void;
  /** Raw line handler instead of the protocol (for malformed-peer tests). */
  raw?: (socket: net.Socket) => void;
}

export class FakeQmp {
  readonly path: string;
  readonly received: FakeCommand[] = [];
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  conn: FakeConn | undefined;

  private constructor(opts: FakeQmpOptions) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fakeqmp-'));
    this.path = path.join(dir, 'qmp.sock');
    this.server = net.createServer((s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      if (opts.raw) {
        opts.raw(s);
        return;
      }
      const conn: FakeConn = {
        send: (o) => s.write(JSON.stringify(o) + '\r\n'),
        reply: (c, ret) => conn.send(c.id === undefined ? { return: ret } : { return: ret, id: c.id }),
        error: (c, cls, desc) => conn.send({ error: { class: cls, desc }, id: c.id }),
        event: (name, data) => {
          const t = Date.now();
          conn.send({ event: name, data: data ?? {}, timestamp: { seconds: Math.floor(t / 1000), microseconds: (t % 1000) * 1000 } });
        },
        close: () => s.destroy(),
      };
      this.conn = conn;
      conn.send(opts.greeting ?? { QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' }, capabilities: opts.capabilities ?? ['oob'] } });
      let buf = '';
      let negotiated = false;
      s.setEncoding('utf8');
      s.on('data', (d: string) => {
        buf += d;
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line.trim()) continue;
          const cmd = JSON.parse(line) as FakeCommand;
          this.received.push(cmd);
          if (!negotiated) {
            if (cmd.execute === 'qmp_capabilities') {
              negotiated = true;
              conn.reply(cmd, {});
            } else {
              conn.error(cmd, 'CommandNotFound', 'Expecting capabilities negotiation with \'qmp_capabilities\'');
            }
            continue;
          }
          opts.onCommand?.(cmd, conn);
        }
      });
    });
  }

  static async start(opts: FakeQmpOptions = {}): Promise<FakeQmp> {
    const f = new FakeQmp(opts);
    await new Promise<void>((r) => f.server.listen(f.path, r));
    return f;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
    fs.rmSync(path.dirname(this.path), { recursive: true, force: true });
  }
}
