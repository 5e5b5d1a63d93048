// HTTP surface: /metrics (0.0.4 text, OpenMetrics or protobuf with native histograms, by
// Accept), /healthz, /readyz and read-only JSON under /api. GET/HEAD only; everything else is
// refused early.
import express from 'express';
import type { Server } from 'node:http';
import type { Writable } from 'node:stream';
import { acceptsGzip, gzipStream } from './compression.js';
import type { Agent } from '../agent.js';
import { CONTENT_TYPES, exposition, negotiate } from './exposition.js';
import { log } from '../log.js';
import { createGuardedServer, REJECT_REASONS, type GuardOptions } from './guard.js';
import { WebConfigSource } from './webconfig.js';
import { parseListen, type Config } from '../config.js';
import { ALL_METRICS, M } from '../catalog.js';

export interface AppOptions {
  /** gzip /metrics for scrapers that accept it (the `web.compression` config). */
  compression: boolean;
}

export function buildApp(agent: Agent, opts: AppOptions = { compression: true }): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.use((req, res, next) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.status(405).set('Allow', 'GET, HEAD').type('text/plain').send('method not allowed\n');
      return;
    }
    next();
  });
  app.get('/metrics', async (req, res) => {
    try {
      await agent.collect();
    } catch (e) {
      log('error', 'scrape failed', { error: (e as Error).message });
      res
        .status(500)
        .type('text/plain')
        .send(`scrape failed: ${(e as Error).message}\n`);
      return;
    }
    const format = negotiate(req.get('accept'));
    const gzip = opts.compression && acceptsGzip(req.get('accept-encoding'));
    // res.write/end, not res.send: express would re-serialize the content type's parameters.
    res.status(200).set('Content-Type', CONTENT_TYPES[format]).set('Vary', 'Accept-Encoding');
    if (gzip) res.set('Content-Encoding', 'gzip');
    const sink: Writable = gzip ? gzipStream() : res;
    if (sink !== res) {
      sink.pipe(res);
      sink.on('error', (e) => res.destroy(e));
      res.on('close', () => sink.destroy());
    }
    try {
      // Streamed: the exposition is never held whole, and a slow reader is waited for.
      for (const chunk of exposition(format, ALL_METRICS, agent.store)) {
        if (!sink.write(chunk) && !res.destroyed) await drained(sink, res);
        if (res.destroyed) return;
      }
      sink.end();
    } catch (e) {
      // Headers are out: the only honest signal left is a cut connection.
      log('error', 'writing the exposition failed', { error: (e as Error).message, format });
      res.destroy(e as Error);
    }
  });
  app.get('/healthz', (_req, res) => void res.type('text/plain').send('ok\n'));
  app.get('/readyz', (_req, res) => {
    if (agent.ready) res.type('text/plain').send('ready\n');
    else res.status(503).type('text/plain').send('not ready\n');
  });
  app.get('/api/probes', (_req, res) => void res.json(agent.status));
  app.get('/api/races', (_req, res) => void res.json(agent.races));
  app.use((_req, res) => void res.status(404).type('text/plain').send('not found\n'));
  return app;
}

/** Resolves when the sink takes more, or the socket is gone (a scraper that hung up mid-body). */
function drained(sink: Writable, res: express.Response): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      sink.off('drain', done);
      res.off('close', done);
      resolve();
    };
    sink.on('drain', done);
    res.on('close', done);
  });
}

/** Bounds used when the caller gives none (the defaults of the `web` config section). */
export const DEFAULT_GUARD: Omit<GuardOptions, 'onReject'> = {
  maxRequests: 40,
  maxConnections: 256,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  maxHeaderBytes: 8192,
};

export function listen(app: express.Express, host: string | undefined, port: number, guard?: GuardOptions): Promise<Server> {
  return new Promise((resolve, reject) => {
    // Slow, oversized or too many clients must not pin sockets or CPU (agent/export/guard.ts).
    const server = createGuardedServer(app, guard ?? { ...DEFAULT_GUARD, onReject: () => {} });
    server.once('listening', () => resolve(server));
    server.once('error', reject);
    if (host) server.listen(port, host);
    else server.listen(port);
  });
}

/**
 * The agent's HTTP(S) endpoint as `run`, `record` and `replay` serve it: the web config
 * (TLS, basic auth; re-read on change and on SIGHUP), the request limits, and rejected
 * requests counted. Throws WebConfigError for a bad web config file, the listen error else.
 */
export async function serveAgent(agent: Agent, cfg: Config): Promise<Server> {
  const { host, port } = parseListen(cfg.listen);
  const web = openWebConfig(cfg, agent);
  for (const reason of REJECT_REASONS) agent.store.inc(M.httpRejected, { reason }, 0);
  const server = await listen(buildApp(agent, { compression: cfg.web.compression }), host, port, {
    web,
    maxRequests: cfg.web.maxRequests,
    maxConnections: cfg.web.maxConnections,
    headersTimeoutMs: cfg.web.headersTimeout * 1000,
    requestTimeoutMs: cfg.web.requestTimeout * 1000,
    maxHeaderBytes: cfg.web.maxHeaderBytes,
    onReject: (reason) => agent.store.inc(M.httpRejected, { reason }),
  });
  // Without a handler SIGHUP would end the process.
  process.on('SIGHUP', () => {
    if (web) web.reload();
    else log('info', 'SIGHUP: no web config file to reload');
  });
  return server;
}

function openWebConfig(cfg: Config, agent: Agent): WebConfigSource | undefined {
  if (!cfg.web.configFile) return undefined;
  const file = cfg.web.configFile;
  for (const result of ['success', 'failure']) agent.store.inc(M.webConfigReloads, { result }, 0);
  return new WebConfigSource(file, (ok, error) => {
    agent.store.inc(M.webConfigReloads, { result: ok ? 'success' : 'failure' });
    if (ok) log('info', 'web config reloaded', { file });
    else log('error', 'web config reload failed; the previous one stays in force', { error });
  });
}
