// The HTTP endpoint's bounds against a real agent: a slow client (headers trickled), an
// oversized request, a request body, too many connections and too many requests in flight
// are each refused within the configured limits, counted by reason, and the agent goes on
// serving everyone else. Limits are set low in the config so the tests run in seconds; no
// assertion is about speed, only about the refusal happening at all.
import test from 'ava';
import * as net from 'node:net';
import bcrypt from 'bcryptjs';
import { AgentProcess, freePort, HVWATCH, parseExposition, until, value, writeConfig } from './helpers/agent.js';
import { spawn } from 'node:child_process';
import { allProbeNames } from '../agent/families.js';
import { M } from '../agent/catalog.js';

const WEB = `probes:
  disable: [${allProbeNames().join(', ')}]
web:
  headersTimeout: 2
  requestTimeout: 5
  maxConnections: 6
  maxRequests: 2
  maxHeaderBytes: 8192
`;

async function start(extraArgs: string[] = []): Promise<AgentProcess> {
  const port = await freePort();
  const proc = spawn(HVWATCH, ['run', '--listen', `127.0.0.1:${port}`, '--config', writeConfig(WEB), ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'] });
  const agent = new AgentProcess(proc, port);
  await until(
    async () => (agent.stderr.includes('hvwatch ready') ? true : proc.exitCode !== null ? Promise.reject(new Error(agent.stderr)) : undefined),
    20_000,
    'agent ready',
  );
  return agent;
}

/** Sends `chunks` on a raw connection, `gapMs` apart, and collects what comes back until the
 * server closes it (or `maxMs` passes: then `closed` is false). */
function raw(port: number, chunks: string[], gapMs = 0, maxMs = 20_000): Promise<{ data: string; closed: boolean; sent: number }> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let data = '';
    let sent = 0;
    let timer: NodeJS.Timeout | undefined;
    const give = (): void => {
      if (sent >= chunks.length || s.destroyed) return;
      s.write(chunks[sent++]!, () => (timer = setTimeout(give, gapMs)));
    };
    s.on('connect', give);
    s.on('data', (d) => (data += d.toString()));
    s.on('error', () => {
      /* reset by the server: as good as closed */
    });
    const deadline = setTimeout(() => {
      clearTimeout(timer);
      s.destroy();
      resolve({ data, closed: false, sent });
    }, maxMs);
    s.on('close', () => {
      clearTimeout(deadline);
      clearTimeout(timer);
      resolve({ data, closed: true, sent });
    });
  });
}

async function rejected(agent: AgentProcess, reason: string, auth?: string): Promise<number> {
  const r = await fetch(`${agent.url}/metrics`, auth ? { headers: { authorization: auth } } : {});
  return value(parseExposition(await r.text()), M.httpRejected.name, { reason }) ?? -1;
}

test.serial('slowloris: headers trickled one line every 300 ms are cut off (408) while others are served', async (t) => {
  const agent = await start();
  t.teardown(() => agent.stop());
  const lines = ['GET /metrics HTTP/1.1\r\nHost: x\r\n', ...Array.from({ length: 60 }, (_, i) => `X-Slow-${i}: y\r\n`)];
  const slow = raw(agent.port, lines, 300);
  await new Promise((r) => setTimeout(r, 500));
  t.is((await fetch(`${agent.url}/healthz`)).status, 200, 'served while the slow client holds a connection');
  const r = await slow;
  t.true(r.closed, 'the server closed the slow connection');
  t.true(r.sent < lines.length, `closed before the client finished (${r.sent}/${lines.length} lines sent)`);
  t.regex(r.data, /^HTTP\/1\.1 408 /);
  t.is(await rejected(agent, 'timeout'), 1);
});

test.serial('oversized request line or headers get 431 and the agent keeps serving', async (t) => {
  const agent = await start();
  t.teardown(() => agent.stop());
  const bigHeader = await raw(agent.port, [`GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`]);
  t.regex(bigHeader.data, /^HTTP\/1\.1 431 /);
  t.true(bigHeader.closed);
  const bigUrl = await raw(agent.port, [`GET /metrics?${'q'.repeat(100 * 1024)} HTTP/1.1\r\nHost: x\r\n\r\n`]);
  t.regex(bigUrl.data, /^HTTP\/1\.1 431 /);
  const many = await raw(agent.port, [`GET /metrics HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 2000 }, (_, i) => `X-H${i}: v\r\n`).join('')}\r\n`]);
  t.regex(many.data, /^HTTP\/1\.1 431 /);
  // A body on a GET is refused without being read.
  const body = await raw(agent.port, [`GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n${'b'.repeat(1000)}`]);
  t.regex(body.data, /^HTTP\/1\.1 413 /);
  t.is((await fetch(`${agent.url}/healthz`)).status, 200);
  t.is(await rejected(agent, 'header_too_large'), 3);
  t.is(await rejected(agent, 'body'), 1);
});

test.serial('connections past web.maxConnections are closed on accept, counted, and service resumes', async (t) => {
  const agent = await start();
  t.teardown(() => agent.stop());
  const idle: net.Socket[] = [];
  t.teardown(() => idle.forEach((s) => s.destroy()));
  for (let i = 0; i < 6; i++) {
    const s = net.connect(agent.port, '127.0.0.1');
    s.on('error', () => {});
    await new Promise((r) => s.once('connect', r));
    idle.push(s);
  }
  await new Promise((r) => setTimeout(r, 200)); // let the agent accept all six
  const extra = await raw(agent.port, ['GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'], 0, 5_000);
  t.true(extra.closed);
  t.is(extra.data, '', 'closed without an answer');
  idle.splice(0).forEach((s) => s.destroy());
  const n = await until(
    async () => {
      try {
        const v = await rejected(agent, 'connections');
        return v >= 1 ? v : undefined;
      } catch {
        return undefined;
      }
    },
    10_000,
    'service to resume after the idle connections closed',
  );
  t.true(n >= 1);
});

test.serial('requests past --web.max-requests get 503 at once and are counted (bcrypt keeps the first one busy)', async (t) => {
  // Cost 12: each wrong password keeps its request in flight for a few hundred ms of bcrypt.
  const hash = bcrypt.hashSync('right', 12);
  const webFile = writeConfig(`basic_auth_users:\n  prom: ${hash}\n`);
  // The flag overrides web.maxRequests (2) from the config: one request at a time.
  const agent = await start(['--web.config.file', webFile, '--web.max-requests', '1']);
  t.teardown(() => agent.stop());
  const bad = `Basic ${Buffer.from('prom:wrong').toString('base64')}`;
  const replies = await Promise.all(
    Array.from(
      { length: 5 }, // below web.maxConnections (6)
      () => fetch(`${agent.url}/metrics`, { headers: { authorization: bad } }),
    ),
  );
  const codes = replies.map((r) => r.status);
  const n503 = codes.filter((c) => c === 503).length;
  const n401 = codes.filter((c) => c === 401).length;
  t.log(`5 concurrent wrong-password requests, cap 1: ${n401} x 401, ${n503} x 503`);
  t.is(n401 + n503, 5);
  t.true(n401 >= 1, 'the first was let through to bcrypt');
  t.true(n503 >= 1, 'the rest found the cap full');
  t.is(replies.find((r) => r.status === 503)?.headers.get('retry-after'), '1');
  const good = `Basic ${Buffer.from('prom:right').toString('base64')}`;
  t.is(await rejected(agent, 'concurrency', good), n503);
  t.is(await rejected(agent, 'unauthorized', good), n401);
});
