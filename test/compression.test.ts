// gzip on /metrics (agent/export/compression.ts): the real agent answers a scraper that accepts
// gzip with the same exposition, compressed, and leaves the others (and web.compression: false)
// uncompressed. The Prometheus tests (prometheus-e2e, native-histograms) scrape it gzipped too:
// Prometheus sends Accept-Encoding: gzip on every scrape.
import test from 'ava';
import { request } from 'node:http';
import { gunzipSync } from 'node:zlib';
import { spawnSync } from 'node:child_process';
import { acceptsGzip } from '../agent/export/compression.js';
import { decodeProtobufExposition, PROTOBUF_CONTENT_TYPE } from '../agent/export/metrics-proto.js';
import { AgentProcess, parseExposition, writeConfig } from './helpers/agent.js';

interface Raw {
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** node:http, not fetch: fetch asks for gzip itself and hides the encoding. */
function get(port: number, headers: Record<string, string>): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics', headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(parts) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Series identities (name and labels), not values: counters move between two scrapes. */
const series = (text: string): string[] =>
  parseExposition(text)
    .map((s) => `${s.name}${JSON.stringify(s.labels)}`)
    .sort();

test('Accept-Encoding: gzip, x-gzip and * admit gzip unless q=0; identity, deflate, absent or malformed do not', (t) => {
  for (const h of ['gzip', 'GZIP', 'x-gzip', 'deflate, gzip;q=0.5', '*', 'br;q=1, *;q=0.1', 'gzip;q=0.001']) t.true(acceptsGzip(h), h);
  for (const h of [undefined, '', 'identity', 'deflate', 'br', 'gzip;q=0', 'gzip;q=0.000', '*;q=0', 'gzip;q=0, *', ';;,']) t.false(acceptsGzip(h), String(h));
});

test.serial('the real agent gzips text and protobuf for a scraper that asks, with Vary; the same series come out; promtool accepts the text', async (t) => {
  const agent = await AgentProcess.start([]);
  t.teardown(() => agent.stop());
  const plain = await get(agent.port, { 'accept-encoding': 'identity' });
  t.is(plain.headers['content-encoding'], undefined);
  const zipped = await get(agent.port, { 'accept-encoding': 'gzip' });
  t.is(zipped.headers['content-encoding'], 'gzip');
  t.is(zipped.headers['vary'], 'Accept-Encoding');
  const text = gunzipSync(zipped.body).toString();
  t.deepEqual(series(text), series(plain.body.toString()));
  t.true(zipped.body.length * 3 < plain.body.length, `gzip ${zipped.body.length} B vs ${plain.body.length} B`);
  const lint = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  t.is(lint.status, 0, lint.stderr);

  const pb = await get(agent.port, { accept: PROTOBUF_CONTENT_TYPE, 'accept-encoding': 'gzip' });
  t.is(pb.headers['content-encoding'], 'gzip');
  t.is(pb.headers['content-type'], PROTOBUF_CONTENT_TYPE);
  const families = decodeProtobufExposition(new Uint8Array(gunzipSync(pb.body)));
  t.true(families.some((f) => f.name === 'hvwatch_collect_duration_seconds'));
});

test.serial('web.compression: false: no gzip even when asked', async (t) => {
  const agent = await AgentProcess.start(['--config', writeConfig('web:\n  compression: false\n')]);
  t.teardown(() => agent.stop());
  const r = await get(agent.port, { 'accept-encoding': 'gzip' });
  t.is(r.headers['content-encoding'], undefined);
  t.true(series(r.body.toString()).length > 0, 'a plain exposition');
});
