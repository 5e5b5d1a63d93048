// The web config file (--web.config.file), in the format of Prometheus' exporter-toolkit
// (docs/web-configuration.md there; node_exporter --web.config.file): TLS, basic auth with
// bcrypt hashes, and extra response headers. One file works for hvwatch and node_exporter.
// What Node's TLS cannot do the same way is refused by name rather than silently ignored.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import type { SecureContextOptions, TlsOptions } from 'node:tls';
import bcrypt from 'bcryptjs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

export class WebConfigError extends Error {}

// exporter-toolkit's names (crypto/tls constant names in Go) -> OpenSSL's. Go applies
// cipher_suites to TLS 1.0-1.2 only; TLS 1.3 suites are not configurable there, so the
// TLS 1.3 defaults are always appended (else Node would cap the protocol at TLS 1.2).
const CIPHERS: Record<string, string> = {
  TLS_RSA_WITH_AES_128_CBC_SHA: 'AES128-SHA',
  TLS_RSA_WITH_AES_256_CBC_SHA: 'AES256-SHA',
  TLS_RSA_WITH_AES_128_GCM_SHA256: 'AES128-GCM-SHA256',
  TLS_RSA_WITH_AES_256_GCM_SHA384: 'AES256-GCM-SHA384',
  TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA: 'ECDHE-ECDSA-AES128-SHA',
  TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA: 'ECDHE-ECDSA-AES256-SHA',
  TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA: 'ECDHE-RSA-AES128-SHA',
  TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA: 'ECDHE-RSA-AES256-SHA',
  TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: 'ECDHE-ECDSA-AES128-GCM-SHA256',
  TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: 'ECDHE-ECDSA-AES256-GCM-SHA384',
  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: 'ECDHE-RSA-AES128-GCM-SHA256',
  TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384: 'ECDHE-RSA-AES256-GCM-SHA384',
  TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256: 'ECDHE-RSA-CHACHA20-POLY1305',
  TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: 'ECDHE-ECDSA-CHACHA20-POLY1305',
  TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305: 'ECDHE-RSA-CHACHA20-POLY1305',
  TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305: 'ECDHE-ECDSA-CHACHA20-POLY1305',
};
const TLS13_SUITES = 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256';
const CURVES: Record<string, string> = { CurveP256: 'P-256', CurveP384: 'P-384', CurveP521: 'P-521', X25519: 'X25519' };
const VERSIONS = { TLS10: 'TLSv1', TLS11: 'TLSv1.1', TLS12: 'TLSv1.2', TLS13: 'TLSv1.3' } as const;
const CLIENT_AUTH = ['NoClientCert', 'RequestClientCert', 'RequireAnyClientCert', 'VerifyClientCertIfGiven', 'RequireAndVerifyClientCert'] as const;
// exporter-toolkit allows exactly these headers (web/config.go, v0.13).
const HEADERS = ['Content-Security-Policy', 'X-Frame-Options', 'X-Content-Type-Options', 'X-XSS-Protection', 'Strict-Transport-Security'];

const enumOf = (names: readonly string[]) =>
  z.string().refine(
    (s) => names.includes(s),
    (s) => ({ message: `${JSON.stringify(s)} is not one of ${names.join(', ')}` }),
  );

const schema = z
  .object({
    tls_server_config: z
      .object({
        cert_file: z.string().min(1).optional(),
        key_file: z.string().min(1).optional(),
        cert: z.string().min(1).optional(),
        key: z.string().min(1).optional(),
        client_auth_type: enumOf(CLIENT_AUTH).default('NoClientCert'),
        client_ca_file: z.string().min(1).optional(),
        client_ca: z.string().min(1).optional(),
        client_allowed_sans: z.array(z.string()).optional(),
        min_version: enumOf(Object.keys(VERSIONS)).default('TLS12'),
        max_version: enumOf(Object.keys(VERSIONS)).default('TLS13'),
        cipher_suites: z.array(enumOf(Object.keys(CIPHERS))).optional(),
        curve_preferences: z.array(enumOf(Object.keys(CURVES))).optional(),
        // Accepted for compatibility; OpenSSL servers in Node always honour the server order.
        prefer_server_cipher_suites: z.boolean().optional(),
      })
      .strict()
      .optional(),
    http_server_config: z
      .object({
        http2: z.literal(false, { errorMap: () => ({ message: 'HTTP/2 is not served by hvwatch; set http2: false or remove it' }) }).optional(),
        headers: z.record(z.string(), z.string()).optional(),
      })
      .strict()
      .optional(),
    basic_auth_users: z.record(z.string(), z.string()).nullish(),
  })
  .strict();

export interface WebConfig {
  /** Node TLS server options, or undefined when the endpoint is plain HTTP. */
  tls?: TlsOptions & SecureContextOptions;
  clientAuth: (typeof CLIENT_AUTH)[number];
  allowedSans?: string[];
  users: Map<string, string>;
  headers: [string, string][];
  /** Files whose change triggers a reload (the config itself plus cert, key, CA). */
  files: string[];
}

function readPem(config: string, file: string, base: string, key: string): Buffer {
  const p = path.resolve(base, file);
  try {
    return fs.readFileSync(p);
  } catch (e) {
    throw new WebConfigError(`${config}: key ${key}: cannot read ${p}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Parses and checks a web config text; relative paths resolve against the file's directory
 * (as exporter-toolkit does). Throws WebConfigError naming the key. */
export function parseWebConfig(text: string, file: string): WebConfig {
  let raw: unknown;
  try {
    raw = parseYaml(text, { prettyErrors: false }) ?? {};
  } catch (e) {
    throw new WebConfigError(`${file}: invalid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  const r = schema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const key = issue.code === 'unrecognized_keys' ? [...issue.path, issue.keys.join(',')] : issue.path;
    const msg = issue.code === 'unrecognized_keys' ? 'unknown key' : issue.message;
    throw new WebConfigError(`${file}: key ${key.join('.') || '(top level)'}: ${msg}`);
  }
  const c = r.data;
  const base = path.dirname(path.resolve(file));
  const files = [path.resolve(file)];
  const fail = (key: string, msg: string): never => {
    throw new WebConfigError(`${file}: key ${key}: ${msg}`);
  };

  const users = new Map<string, string>();
  for (const [u, h] of Object.entries(c.basic_auth_users ?? {})) {
    // $2a$/$2b$/$2y$, two-digit cost, 53 characters of salt and hash: what bcryptjs verifies.
    if (!/^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$/.test(h))
      fail(`basic_auth_users.${u}`, 'not a bcrypt hash (expected $2y$NN$ followed by 53 characters, e.g. from htpasswd -nBC 10)');
    if (u.includes(':')) fail(`basic_auth_users.${u}`, 'a user name cannot contain ":"');
    users.set(u, h);
  }

  const headers: [string, string][] = [];
  for (const [name, v] of Object.entries(c.http_server_config?.headers ?? {})) {
    const known = HEADERS.find((h) => h.toLowerCase() === name.toLowerCase());
    if (!known) fail(`http_server_config.headers.${name}`, `header cannot be configured (allowed: ${HEADERS.join(', ')})`);
    if (/[\r\n]/.test(v)) fail(`http_server_config.headers.${name}`, 'value contains a line break');
    if (known === 'X-Content-Type-Options' && v !== 'nosniff') fail(`http_server_config.headers.${name}`, 'only "nosniff" is allowed');
    if (known === 'X-Frame-Options' && !['deny', 'sameorigin'].includes(v.toLowerCase()))
      fail(`http_server_config.headers.${name}`, 'only "deny" or "sameorigin" are allowed');
    headers.push([known!, v]);
  }

  const t = c.tls_server_config;
  let tls: WebConfig['tls'];
  if (t) {
    if (!t.cert_file && !t.cert) fail('tls_server_config.cert_file', 'missing cert_file (or cert)');
    if (!t.key_file && !t.key) fail('tls_server_config.key_file', 'missing key_file (or key)');
    if (t.cert_file && t.cert) fail('tls_server_config.cert', 'set cert_file or cert, not both');
    if (t.key_file && t.key) fail('tls_server_config.key', 'set key_file or key, not both');
    if (t.client_ca_file && t.client_ca) fail('tls_server_config.client_ca', 'set client_ca_file or client_ca, not both');
    const verifying = t.client_auth_type === 'VerifyClientCertIfGiven' || t.client_auth_type === 'RequireAndVerifyClientCert';
    if (verifying && !t.client_ca_file && !t.client_ca) fail('tls_server_config.client_ca_file', `client_auth_type ${t.client_auth_type} needs client_ca_file`);
    const vs = Object.keys(VERSIONS);
    if (vs.indexOf(t.min_version) > vs.indexOf(t.max_version)) fail('tls_server_config.min_version', `${t.min_version} is above max_version ${t.max_version}`);
    const opts: WebConfig['tls'] = {
      cert: t.cert ?? readPem(file, t.cert_file!, base, 'tls_server_config.cert_file'),
      key: t.key ?? readPem(file, t.key_file!, base, 'tls_server_config.key_file'),
      minVersion: VERSIONS[t.min_version as keyof typeof VERSIONS],
      maxVersion: VERSIONS[t.max_version as keyof typeof VERSIONS],
      honorCipherOrder: true,
      requestCert: t.client_auth_type !== 'NoClientCert',
      // Verification is done after the handshake (socketAllowed), per client_auth_type.
      rejectUnauthorized: t.client_auth_type === 'RequireAndVerifyClientCert',
    };
    if (t.cert_file) files.push(path.resolve(base, t.cert_file));
    if (t.key_file) files.push(path.resolve(base, t.key_file));
    if (t.client_ca_file) {
      opts.ca = readPem(file, t.client_ca_file, base, 'tls_server_config.client_ca_file');
      files.push(path.resolve(base, t.client_ca_file));
    } else if (t.client_ca) opts.ca = t.client_ca;
    if (t.cipher_suites?.length) opts.ciphers = [...t.cipher_suites.map((s) => CIPHERS[s]!), TLS13_SUITES].join(':');
    if (t.curve_preferences?.length) opts.ecdhCurve = t.curve_preferences.map((s) => CURVES[s]!).join(':');
    tls = opts;
  }
  return { tls, clientAuth: (t?.client_auth_type ?? 'NoClientCert') as WebConfig['clientAuth'], allowedSans: t?.client_allowed_sans, users, headers, files };
}

/** Whether a finished TLS handshake satisfies client_auth_type and client_allowed_sans
 * (Node verifies the chain; the policy about missing or unverified certs is applied here). */
export function socketAllowed(
  cfg: WebConfig,
  sock: { authorized: boolean; getPeerCertificate(): { subjectaltname?: string; raw?: Buffer } | null },
): string | undefined {
  const cert = sock.getPeerCertificate();
  const has = !!cert && !!cert.raw;
  switch (cfg.clientAuth) {
    case 'RequireAnyClientCert':
      if (!has) return 'no client certificate';
      break;
    case 'VerifyClientCertIfGiven':
      if (has && !sock.authorized) return 'client certificate not verified by client_ca_file';
      break;
    case 'RequireAndVerifyClientCert':
      if (!has || !sock.authorized) return 'no verified client certificate';
      break;
    default:
  }
  if (cfg.allowedSans?.length && has) {
    const sans = (cert!.subjectaltname ?? '').split(/,\s*/).map((s) => s.replace(/^[A-Za-z ]+:/, ''));
    if (!cfg.allowedSans.some((a) => sans.includes(a))) return 'client certificate SAN not in client_allowed_sans';
  }
  return undefined;
}

// A valid bcrypt hash of a random string: unknown users are checked against it so that a
// wrong user name costs the same bcrypt time as a wrong password (exporter-toolkit does the
// same) and user names cannot be probed by timing.
const DUMMY_HASH = '$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi';

/** Successful (user, hash, password) checks, so that a scrape every few seconds does not pay
 * bcrypt's deliberate cost each time. Keyed by a SHA-256 of the three, never the password
 * itself; bounded, least recently used out first. Failures are not cached: each costs bcrypt. */
export class AuthCache {
  private readonly ok = new Map<string, true>();
  constructor(private readonly max = 256) {}

  private key(user: string, hash: string, pass: string): string {
    return createHash('sha256').update(user).update('\0').update(hash).update('\0').update(pass).digest('base64');
  }

  async verify(users: Map<string, string>, user: string, pass: string): Promise<boolean> {
    const hash = users.get(user);
    if (hash !== undefined) {
      const k = this.key(user, hash, pass);
      if (this.ok.has(k)) {
        this.ok.delete(k);
        this.ok.set(k, true);
        return true;
      }
      const good = await bcrypt.compare(pass, hash);
      if (good) {
        this.ok.set(k, true);
        while (this.ok.size > this.max) this.ok.delete(this.ok.keys().next().value!);
      }
      return good;
    }
    await bcrypt.compare(pass, DUMMY_HASH);
    return false;
  }

  get size(): number {
    return this.ok.size;
  }
}

/** The "user:password" of a Basic Authorization header, or undefined. */
export function basicCredentials(header: string | undefined): { user: string; pass: string } | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
  if (!m) return undefined;
  const s = Buffer.from(m[1]!, 'base64').toString('utf8');
  const i = s.indexOf(':');
  return i < 0 ? undefined : { user: s.slice(0, i), pass: s.slice(i + 1) };
}

export function loadWebConfig(file: string): WebConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new WebConfigError(`${file}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseWebConfig(text, file);
}

function fingerprint(files: string[]): string {
  return files
    .map((f) => {
      const st = fs.statSync(f, { throwIfNoEntry: false });
      return st ? `${st.ino}:${st.size}:${st.mtimeMs}` : '-';
    })
    .join('|');
}

/**
 * The current web config: re-read when the file or a certificate, key or CA file it names
 * changes (checked at most once per `checkMs`, on a new connection or request), or on
 * reload() (SIGHUP). A broken new version is reported and the previous one stays in force;
 * TLS cannot be switched on or off by a reload (that needs a restart, as in exporter-toolkit).
 */
export class WebConfigSource {
  private cfg: WebConfig;
  private print: string;
  private lastCheck = 0;

  constructor(
    readonly file: string,
    private readonly onReload: (ok: boolean, error?: string) => void,
    private readonly checkMs = 1000,
  ) {
    this.cfg = loadWebConfig(file);
    this.print = fingerprint(this.cfg.files);
  }

  get current(): WebConfig {
    const now = performance.now();
    if (now - this.lastCheck >= this.checkMs) {
      this.lastCheck = now;
      if (fingerprint(this.cfg.files) !== this.print) this.reload();
    }
    return this.cfg;
  }

  reload(): boolean {
    try {
      const next = loadWebConfig(this.file);
      if (!!next.tls !== !!this.cfg.tls)
        throw new WebConfigError(`${this.file}: TLS cannot be ${next.tls ? 'enabled' : 'disabled'} by a reload; restart hvwatch`);
      this.cfg = next;
      this.print = fingerprint(next.files);
      this.onReload(true);
      return true;
    } catch (e) {
      // Do not retry the same broken version on every connection.
      this.print = fingerprint(this.cfg.files);
      this.onReload(false, (e as Error).message);
      return false;
    }
  }
}
