// The HTTP(S) server around the express app: TLS and basic auth from the web config file,
// and the bounds that keep a slow, oversized or flooding client from taking the endpoint
// (or the agent's CPU) away from Prometheus. Every refusal is counted by reason.
import * as http from 'node:http';
import * as https from 'node:https';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { AuthCache, basicCredentials, socketAllowed, type WebConfig, type WebConfigSource } from './webconfig.js';
import { log } from '../log.js';

export const REJECT_REASONS = ['concurrency', 'unauthorized', 'timeout', 'header_too_large', 'body', 'bad_request', 'connections', 'tls'] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

export interface GuardOptions {
  web?: WebConfigSource;
  /** Requests handled at once; more get 503 at once (0: no cap). */
  maxRequests: number;
  /** Open connections; more are closed on accept (0: no cap). */
  maxConnections: number;
  /** Time for a client to send its request headers (and, on TLS, to finish the handshake). */
  headersTimeoutMs: number;
  /** Time for a whole request to arrive, and for the agent to answer it. */
  requestTimeoutMs: number;
  /** Request line plus headers. */
  maxHeaderBytes: number;
  onReject: (reason: RejectReason) => void;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

function refuse(res: http.ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close', ...headers });
  res.end(`${text}\n`);
}

function guard(app: Handler, o: GuardOptions): Handler {
  const auth = new AuthCache();
  let inFlight = 0;
  return (req, res) => {
    if (o.maxRequests > 0 && inFlight >= o.maxRequests) {
      o.onReject('concurrency');
      refuse(res, 503, 'too many requests in flight', { 'Retry-After': '1' });
      return;
    }
    inFlight++;
    // 'close' fires once per response, whether it finished or the client went away.
    res.once('close', () => inFlight--);
    // The agent answering too slowly: the socket is closed rather than answered late (a
    // handler still running could not write to a response already sent).
    const timer = setTimeout(() => {
      o.onReject('timeout');
      res.destroy();
    }, o.requestTimeoutMs);
    res.once('close', () => clearTimeout(timer));

    const cfg: WebConfig | undefined = o.web?.current;
    for (const [k, v] of cfg?.headers ?? []) res.setHeader(k, v);
    // Only GET and HEAD are served: a request body has no use and is never read. Other
    // methods get the app's 405, on a connection then closed rather than drained.
    const hasBody = (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') || req.headers['transfer-encoding'] !== undefined;
    if (req.method !== 'GET' && req.method !== 'HEAD') res.setHeader('Connection', 'close');
    else if (hasBody) {
      o.onReject('body');
      refuse(res, 413, 'request bodies are not accepted');
      return;
    }
    if (!cfg || cfg.users.size === 0) {
      app(req, res);
      return;
    }
    const creds = basicCredentials(req.headers.authorization);
    const deny = (): void => {
      o.onReject('unauthorized');
      refuse(res, 401, 'unauthorized', { 'WWW-Authenticate': 'Basic realm="hvwatch", charset="UTF-8"' });
    };
    if (!creds) {
      deny();
      return;
    }
    auth.verify(cfg.users, creds.user, creds.pass).then(
      (ok) => {
        if (res.destroyed) return;
        if (ok) app(req, res);
        else deny();
      },
      (e: unknown) => {
        log('error', 'basic auth check failed', { error: (e as Error).message });
        if (!res.destroyed) deny();
      },
    );
  };
}

/** Creates the server (HTTPS when the web config has tls_server_config) with every bound set. */
export function createGuardedServer(app: Handler, o: GuardOptions): http.Server {
  const base: http.ServerOptions = {
    headersTimeout: o.headersTimeoutMs,
    requestTimeout: o.requestTimeoutMs,
    keepAliveTimeout: 5_000,
    maxHeaderSize: o.maxHeaderBytes,
    // Node checks header and request deadlines on this period (default 30 s): check often
    // enough that a short headersTimeout is kept.
    connectionsCheckingInterval: Math.max(100, Math.min(1000, o.headersTimeoutMs / 2)),
  };
  const handler = guard(app, o);
  const first = o.web?.current;
  let server: http.Server;
  if (first?.tls) {
    let applied = first;
    const s = https.createServer({ ...base, ...first.tls, handshakeTimeout: o.headersTimeoutMs }, handler);
    // Before Node's own listener builds the TLS socket: a changed certificate, key or CA
    // takes effect from the very next handshake.
    s.prependListener('connection', () => {
      const cur = o.web!.current;
      if (cur !== applied && cur.tls) {
        s.setSecureContext(cur.tls);
        applied = cur;
      }
    });
    s.on('secureConnection', (sock: TLSSocket) => {
      const why = socketAllowed(o.web!.current, sock);
      if (why) {
        o.onReject('tls');
        log('debug', 'TLS client refused', { remote: sock.remoteAddress, reason: why });
        sock.destroy();
      }
    });
    s.on('tlsClientError', (err: Error) => {
      o.onReject('tls');
      log('debug', 'TLS handshake failed', { error: err.message });
    });
    server = s;
  } else {
    server = http.createServer(base, handler);
  }
  if (o.maxConnections > 0) server.maxConnections = o.maxConnections;
  server.on('drop', () => o.onReject('connections'));
  // With a listener here Node no longer answers by itself: answer as it would, and count.
  server.on('clientError', (err: NodeJS.ErrnoException, sock: Duplex) => {
    const code = err.code ?? '';
    const [reason, status]: [RejectReason, string] =
      code === 'HPE_HEADER_OVERFLOW'
        ? ['header_too_large', '431 Request Header Fields Too Large']
        : code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? ['timeout', '408 Request Timeout']
          : ['bad_request', '400 Bad Request'];
    // A client that went away (ECONNRESET) is not an attack; count only what the server refused.
    if (code !== 'ECONNRESET') o.onReject(reason);
    const s = sock as Socket;
    if (s.writable && s.bytesWritten === 0) s.write(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    s.destroy();
  });
  return server;
}
