// HTTP surface: /metrics (0.0.4 text, or OpenMetrics on request), /healthz, /readyz and
// read-only JSON under /api. GET/HEAD only; everything else is refused early.
import express from 'express';
import type { Server } from 'node:http';
import type { Agent } from '../agent.js';
import { pickRegistry } from './registry.js';
import { log } from '../log.js';

export function buildApp(agent: Agent): express.Express {
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
      const reg = pickRegistry(agent.registries, req.get('accept'));
      // res.end, not res.send: express would re-serialize the content type's parameters.
      res.status(200).set('Content-Type', reg.contentType).end(await reg.metrics());
    } catch (e) {
      log('error', 'scrape failed', { error: (e as Error).message });
      res.status(500).type('text/plain').send(`scrape failed: ${(e as Error).message}\n`);
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

export function listen(app: express.Express, host: string | undefined, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = host ? app.listen(port, host) : app.listen(port);
    server.once('listening', () => resolve(server));
    server.once('error', reject);
    // Slow or stuck clients must not pin sockets (slowloris): bounded header and request time.
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    server.keepAliveTimeout = 5_000;
  });
}
