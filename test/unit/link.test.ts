import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { listenLinks, connectLink, LinkAuthError, type Link, type Message } from '../../src/node/link.js';

const SECRET = 'correct horse battery staple';

async function server(secret = SECRET) {
  const links: Link[] = [];
  const rejects: string[] = [];
  const srv = await listenLinks({ name: 'b', secret, host: '127.0.0.1', port: 0, onLink: (l) => links.push(l), onReject: (_r, why) => rejects.push(why) });
  const port = (srv.address() as net.AddressInfo).port;
  return { srv, port, links, rejects };
}

test('both ends prove the shared secret and then exchange messages', async () => {
  const s = await server();
  try {
    const a = await connectLink({ name: 'a', secret: SECRET, host: '127.0.0.1', port: s.port });
    assert.equal(a.peer, 'b');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(s.links.length, 1);
    assert.equal(s.links[0]!.peer, 'a');
    const got: Message[] = [];
    s.links[0]!.on('message', (m) => got.push(m));
    a.send({ t: 'hb', seq: 1 });
    a.send({ t: 'hb', seq: 2 });
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(got, [{ t: 'hb', seq: 1 }, { t: 'hb', seq: 2 }]);
    const back: Message[] = [];
    a.on('message', (m) => back.push(m));
    s.links[0]!.send({ t: 'ack', seq: 2 });
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(back, [{ t: 'ack', seq: 2 }]);
    a.close();
  } finally {
    s.srv.close();
  }
});

test('a client with the wrong secret is rejected, logged, and never becomes a link', async () => {
  const s = await server();
  try {
    await assert.rejects(connectLink({ name: 'mallory', secret: 'not the secret at all', host: '127.0.0.1', port: s.port }), LinkAuthError);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(s.links.length, 0);
    assert.match(s.rejects[0]!, /authentication failed \(claimed name "mallory"\)/);
  } finally {
    s.srv.close();
  }
});

test('a server with the wrong secret is refused by the client', async () => {
  const s = await server('some other secret value');
  try {
    await assert.rejects(connectLink({ name: 'a', secret: SECRET, host: '127.0.0.1', port: s.port }), LinkAuthError);
  } finally {
    s.srv.close();
  }
});

test('garbage and silence are rejected without effect', async () => {
  const s = await server();
  try {
    const c = net.createConnection({ host: '127.0.0.1', port: s.port });
    await new Promise((r) => c.once('connect', r));
    c.write('GET / HTTP/1.0\r\n\r\n');
    await new Promise((r) => setTimeout(r, 100));
    c.destroy();
    assert.equal(s.links.length, 0);
    assert.match(s.rejects[0]!, /not JSON/);
  } finally {
    s.srv.close();
  }
});
