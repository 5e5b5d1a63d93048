// --web.config.file end to end: the real agent on an ephemeral port with real TLS
// (certificates made by openssl in a temp dir) and bcrypt basic auth; bad files exit 2
// naming the key; changes and SIGHUP reload it.
import test from 'ava';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as http from 'node:http';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { AgentProcess, freePort, HVWATCH, parseExposition, runCli, until, value, writeConfig } from './helpers/agent.js';
import { allProbeNames } from '../agent/families.js';
import { M } from '../agent/catalog.js';
import { AuthCache, parseWebConfig, WebConfigError } from '../agent/export/webconfig.js';

const HAVE_OPENSSL = spawnSync('openssl', ['version']).status === 0;
const tlsTest = HAVE_OPENSSL ? test.serial : test.serial.skip; // skip reason: no openssl binary to make certificates

function sh(cmd: string, cwd: string): void {
  const r = spawnSync('sh', ['-c', cmd], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
}

/** A CA, a server certificate for 127.0.0.1, a client certificate with SAN DNS:prometheus
 * signed by the CA, one with DNS:other, and a self-signed client certificate. */
function makePki(): string {
  const d = mkdtempSync(join(tmpdir(), 'hvwatch-pki-'));
  const key = (name: string): string => `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ${name}.key`;
  sh(`${key('ca')} && openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj /CN=hvwatch-test-ca`, d);
  const signed = (name: string, cn: string, san: string): string =>
    `${key(name)} && openssl req -new -key ${name}.key -out ${name}.csr -subj /CN=${cn} && printf 'subjectAltName=${san}\\n' > ${name}.ext && ` +
    `openssl x509 -req -in ${name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out ${name}.pem -days 2 -extfile ${name}.ext`;
  sh(signed('server', '127.0.0.1', 'IP:127.0.0.1'), d);
  sh(signed('client', 'prometheus', 'DNS:prometheus'), d);
  sh(signed('other', 'other', 'DNS:other'), d);
  sh(`${key('rogue')} && openssl req -x509 -new -key rogue.key -out rogue.pem -days 2 -subj /CN=prometheus -addext subjectAltName=DNS:prometheus`, d);
  return d;
}

const HASH = (pw: string, cost = 6): string => bcrypt.hashSync(pw, cost).replace(/^\$2b\$/, '$2y$'); // htpasswd -B style

const NO_PROBES = `probes:\n  disable: [${allProbeNames().join(', ')}]\n`;

/** The agent with a web config: ready when it logs so (its /readyz needs credentials). */
async function startWith(webYaml: string, extraYaml = ''): Promise<{ agent: AgentProcess; file: string }> {
  const file = writeConfig(webYaml);
  const cfg = writeConfig(NO_PROBES + extraYaml);
  const port = await freePort();
  const proc = spawn(HVWATCH, ['run', '--listen', `127.0.0.1:${port}`, '--config', cfg, '--web.config.file', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  const agent = new AgentProcess(proc, port);
  await until(
    async () => (agent.stderr.includes('hvwatch ready') ? true : proc.exitCode !== null ? Promise.reject(new Error(agent.stderr)) : undefined),
    20_000,
    'agent ready',
  );
  return { agent, file };
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function get(url: string, opts: https.RequestOptions & { user?: string; pass?: string } = {}): Promise<Reply> {
  const { user, pass, ...o } = opts;
  const headers = { ...(o.headers ?? {}) } as Record<string, string>;
  if (user !== undefined) headers.authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
  const mod = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(url, { ...o, headers, agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

tlsTest('TLS + basic auth: right password 200, wrong 401, no TLS refused, every endpoint protected, headers set', async (t) => {
  const pki = makePki();
  const { agent } = await startWith(`
tls_server_config:
  cert_file: ${pki}/server.pem
  key_file: ${pki}/server.key
  min_version: TLS13
http_server_config:
  headers:
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  prometheus: ${HASH('s3cret')}
`);
  t.teardown(() => agent.stop());
  const ca = fs.readFileSync(`${pki}/ca.pem`);
  const base = `https://127.0.0.1:${agent.port}`;
  const ok = await get(`${base}/metrics`, { ca, user: 'prometheus', pass: 's3cret' });
  t.is(ok.status, 200);
  t.regex(ok.body, /^hvwatch_build_info\{/m);
  t.is(ok.headers['x-content-type-options'], 'nosniff');
  t.is(ok.headers['strict-transport-security'], 'max-age=31536000');

  const wrong = await get(`${base}/metrics`, { ca, user: 'prometheus', pass: 'guess' });
  t.is(wrong.status, 401);
  t.regex(String(wrong.headers['www-authenticate']), /^Basic realm="hvwatch"/);
  t.is((await get(`${base}/metrics`, { ca, user: 'nobody', pass: 's3cret' })).status, 401);
  for (const path of ['/metrics', '/healthz', '/readyz', '/api/probes', '/api/races']) {
    t.is((await get(`${base}${path}`, { ca })).status, 401, `${path} without credentials`);
  }
  t.is((await get(`${base}/api/probes`, { ca, user: 'prometheus', pass: 's3cret' })).status, 200);
  // Plain HTTP on the TLS port, and TLS 1.2 under min_version TLS13, are refused.
  await t.throwsAsync(get(`http://127.0.0.1:${agent.port}/metrics`, { user: 'prometheus', pass: 's3cret' }));
  await t.throwsAsync(get(`${base}/metrics`, { ca, maxVersion: 'TLSv1.2', user: 'prometheus', pass: 's3cret' }));
  // An untrusted client sees the server's certificate fail verification.
  await t.throwsAsync(get(`${base}/metrics`, { user: 'prometheus', pass: 's3cret' }));

  const s = parseExposition((await get(`${base}/metrics`, { ca, user: 'prometheus', pass: 's3cret' })).body);
  t.is(value(s, M.httpRejected.name, { reason: 'unauthorized' }), 7);
  t.true(value(s, M.httpRejected.name, { reason: 'tls' })! >= 2);
});

tlsTest('client certificates: RequireAndVerifyClientCert with client_allowed_sans', async (t) => {
  const pki = makePki();
  const { agent } = await startWith(`
tls_server_config:
  cert_file: ${pki}/server.pem
  key_file: ${pki}/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ${pki}/ca.pem
  client_allowed_sans: [prometheus]
`);
  t.teardown(() => agent.stop());
  const ca = fs.readFileSync(`${pki}/ca.pem`);
  const url = `https://127.0.0.1:${agent.port}/metrics`;
  const cert = (n: string) => ({ ca, cert: fs.readFileSync(`${pki}/${n}.pem`), key: fs.readFileSync(`${pki}/${n}.key`) });
  t.is((await get(url, cert('client'))).status, 200);
  await t.throwsAsync(get(url, { ca }), undefined, 'no client certificate');
  await t.throwsAsync(get(url, cert('rogue')), undefined, 'certificate not signed by client_ca_file');
  await t.throwsAsync(get(url, cert('other')), undefined, 'SAN not in client_allowed_sans');
  const s = parseExposition((await get(url, cert('client'))).body);
  t.true(value(s, M.httpRejected.name, { reason: 'tls' })! >= 3);
});

test.serial('a changed file is picked up, a broken one keeps the previous config (counted), SIGHUP reloads', async (t) => {
  const { agent, file } = await startWith(`basic_auth_users:\n  alice: ${HASH('one')}\n`);
  t.teardown(() => agent.stop());
  const url = `${agent.url}/metrics`;
  t.is((await get(url, { user: 'alice', pass: 'one' })).status, 200);
  fs.writeFileSync(file, `basic_auth_users:\n  alice: ${HASH('two')}\n`);
  await until(async () => ((await get(url, { user: 'alice', pass: 'two' })).status === 200 ? true : undefined), 10_000, 'new password accepted');
  t.is((await get(url, { user: 'alice', pass: 'one' })).status, 401);

  fs.writeFileSync(file, `basic_auth_users:\n  alice: ${HASH('three')}\nbasic_auth_user: {}\n`);
  const failed = await until(
    async () => {
      const r = await get(url, { user: 'alice', pass: 'two' });
      const v = value(parseExposition(r.body), M.webConfigReloads.name, { result: 'failure' }) ?? 0;
      return v >= 1 ? r : undefined;
    },
    10_000,
    'a failed reload counted',
  );
  t.is(failed.status, 200, 'the previous config stays in force');
  t.regex(agent.stderr, /web config reload failed.*key basic_auth_user: unknown key/);

  fs.writeFileSync(file, `basic_auth_users:\n  bob: ${HASH('four')}\n`);
  agent.proc.kill('SIGHUP');
  await until(async () => ((await get(url, { user: 'bob', pass: 'four' })).status === 200 ? true : undefined), 10_000, 'SIGHUP reload');
  const s = parseExposition((await get(url, { user: 'bob', pass: 'four' })).body);
  t.true(value(s, M.webConfigReloads.name, { result: 'success' })! >= 2);
  t.is(agent.proc.exitCode, null, 'SIGHUP does not end the agent');
});

const BAD: [string, string, RegExp][] = [
  ['unknown TLS key', 'tls_server_config:\n  cert_fil: x.pem\n', /key tls_server_config\.cert_fil: unknown key$/],
  ['unknown top-level key', 'basic_auth_user:\n  a: b\n', /key basic_auth_user: unknown key$/],
  ['not a bcrypt hash', 'basic_auth_users:\n  alice: plaintext\n', /key basic_auth_users\.alice: not a bcrypt hash/],
  ['header not allowed', 'http_server_config:\n  headers:\n    Server: x\n', /key http_server_config\.headers\.Server: header cannot be configured/],
  [
    'bad TLS version',
    'tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n',
    /key tls_server_config\.min_version: "SSL3" is not one of TLS10/,
  ],
  [
    'unreadable cert',
    'tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: /nonexistent/k.pem\n',
    /key tls_server_config\.cert_file: cannot read \/nonexistent\/c\.pem: ENOENT$/,
  ],
  ['http2', 'http_server_config:\n  http2: true\n', /key http_server_config\.http2: HTTP\/2 is not served/],
];
for (const [what, yaml, re] of BAD) {
  test(`a bad web config (${what}) exits 2 with one line naming the key`, async (t) => {
    const f = writeConfig(yaml);
    const r = await runCli(['run', '--listen', '127.0.0.1:0', '--web.config.file', f]);
    t.is(r.code, 2);
    const lines = r.stderr.trim().split('\n');
    t.is(lines.length, 1, r.stderr);
    t.regex(lines[0]!, re);
    t.true(lines[0]!.startsWith(`hvwatch: ${f}: key `));
  });
}

test('parseWebConfig: cipher suites, curves and versions map to OpenSSL names', (t) => {
  const d = mkdtempSync(join(tmpdir(), 'hvwatch-wc-'));
  fs.writeFileSync(join(d, 'c.pem'), 'C');
  fs.writeFileSync(join(d, 'k.pem'), 'K');
  const c = parseWebConfig(
    `tls_server_config:
  cert_file: c.pem
  key_file: k.pem
  min_version: TLS12
  max_version: TLS12
  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305]
  curve_preferences: [X25519, CurveP256]
`,
    join(d, 'web.yml'),
  );
  t.is(c.tls?.cert?.toString(), 'C', "relative paths resolve against the file's directory");
  t.is(c.tls?.minVersion, 'TLSv1.2');
  t.is(c.tls?.maxVersion, 'TLSv1.2');
  t.regex(String(c.tls?.ciphers), /^ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:TLS_AES_256_GCM_SHA384/);
  t.is(c.tls?.ecdhCurve, 'X25519:P-256');
  t.deepEqual(c.files, [join(d, 'web.yml'), join(d, 'c.pem'), join(d, 'k.pem')]);
  t.throws(() => parseWebConfig('tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  min_version: TLS13\n  max_version: TLS12\n', join(d, 'w.yml')), {
    instanceOf: WebConfigError,
    message: /min_version: TLS13 is above max_version TLS12/,
  });
  t.throws(
    () => parseWebConfig('tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  client_auth_type: RequireAndVerifyClientCert\n', join(d, 'w.yml')),
    { message: /client_ca_file: client_auth_type RequireAndVerifyClientCert needs client_ca_file/ },
  );
});

test('AuthCache: real bcrypt; successes cached (bounded, LRU), failures and unknown users never', async (t) => {
  const users = new Map([
    ['a', HASH('pa', 4)],
    ['b', HASH('pb', 4)],
    ['c', HASH('pc', 4)],
  ]);
  const cache = new AuthCache(2);
  t.true(await cache.verify(users, 'a', 'pa'));
  t.false(await cache.verify(users, 'a', 'wrong'));
  t.false(await cache.verify(users, 'zed', 'pa'));
  t.is(cache.size, 1);
  t.true(await cache.verify(users, 'b', 'pb'));
  t.true(await cache.verify(users, 'c', 'pc'));
  t.is(cache.size, 2, 'bounded');
  // A changed hash for the same user and password is a new key: the old success does not carry over.
  t.false(await cache.verify(new Map([['c', HASH('other', 4)]]), 'c', 'pc'));
});
