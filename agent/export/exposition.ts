// The /metrics writer: Prometheus text 0.0.4, OpenMetrics 1.0 text, and the delimited
// protobuf format that carries native histograms, all written straight from the
// MetricStore. It is a generator of chunks, so a scrape is streamed rather than built whole,
// and each series' label text (or protobuf bytes) is rendered once in its life (while its
// value is unchanged) and cached on the series object (export/store.ts keeps series objects across scrapes).
//
// prom-client is not on this path any more: at 2,000 cgroups x 200 VMs it built one object
// per sample and one string per label set per scrape (bench/RESULTS.md). The agent's own
// metrics are in the same catalog and go through this writer too. In protobuf each series is
// encoded once and its bytes reused while its value is unchanged (seriesBytes).
import type { MetricDef } from '../catalog.js';
import type { MetricStore, Series } from './store.js';
import { classicCumulative, classicLayout, formatNumber, nativeBuckets } from '../aggregate/histogram.js';
import protobuf from 'protobufjs';
import { METRIC_TYPE, MetricFamilyType, PROTOBUF_CONTENT_TYPE } from './metrics-proto.js';

export type Format = 'text' | 'openmetrics' | 'protobuf';

export const CONTENT_TYPES: Record<Format, string> = {
  text: 'text/plain; version=0.0.4; charset=utf-8',
  openmetrics: 'application/openmetrics-text; version=1.0.0; charset=utf-8',
  protobuf: PROTOBUF_CONTENT_TYPE,
};

const CHUNK = 64 * 1024;

interface MediaRange {
  type: string;
  params: Record<string, string>;
  q: number;
}

function parseAccept(accept: string): MediaRange[] {
  const out: MediaRange[] = [];
  for (const part of accept.split(',')) {
    const [type, ...rest] = part.split(';').map((x) => x.trim());
    if (!type) continue;
    const params: Record<string, string> = {};
    let q = 1;
    for (const p of rest) {
      const eq = p.indexOf('=');
      if (eq < 0) continue;
      const k = p.slice(0, eq).trim().toLowerCase();
      const v = p
        .slice(eq + 1)
        .trim()
        .replace(/^"|"$/g, '');
      if (k === 'q') q = Number(v);
      else params[k] = v;
    }
    if (Number.isFinite(q) && q > 0) out.push({ type: type.toLowerCase(), params, q });
  }
  return out;
}

function formatOf(m: MediaRange): Format | undefined {
  if (m.type === 'application/vnd.google.protobuf') {
    return m.params.proto === 'io.prometheus.client.MetricFamily' && m.params.encoding === 'delimited' ? 'protobuf' : undefined;
  }
  if (m.type === 'application/openmetrics-text') return 'openmetrics';
  if (m.type === 'text/plain' || m.type === 'text/*' || m.type === '*/*') return 'text';
  return undefined;
}

/** The format the scraper prefers by its Accept q-values; ties go to the richer format.
 * No Accept, or nothing we serve, gets text 0.0.4 (what every scraper reads). */
export function negotiate(accept: string | undefined): Format {
  if (!accept) return 'text';
  const rank: Record<Format, number> = { protobuf: 3, openmetrics: 2, text: 1 };
  let best: { f: Format; q: number } | undefined;
  for (const m of parseAccept(accept)) {
    const f = formatOf(m);
    if (!f) continue;
    if (!best || m.q > best.q || (m.q === best.q && rank[f] > rank[best.f])) best = { f, q: m.q };
  }
  return best?.f ?? 'text';
}

function escapeLabel(v: string): string {
  return /[\\"\n]/.test(v) ? v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n') : v;
}

// An empty label value and an absent label are the same series to Prometheus (data model),
// so empty values are left out: a cgroup without Kubernetes labels keeps only `cgroup`.
function labelText(def: MetricDef, s: Series): string {
  const c = (s.cache ??= {});
  if (c.text !== undefined) return c.text;
  let t = '';
  for (const l of def.labels) {
    const v = s.labels[l];
    if (v === undefined || v === '') continue;
    t += `${t ? ',' : ''}${l}="${escapeLabel(v)}"`;
  }
  return (c.text = t);
}

// Not cached: they are needed only when a series' bytes are re-encoded (seriesBytes), and
// kept per series they were the largest part of the live heap at fleet scale (an array and
// an object per label for each of ~11,000 series, ~2.5 MB).
function labelPairs(def: MetricDef, s: Series): { name: string; value: string }[] {
  const pairs: { name: string; value: string }[] = [];
  for (const l of def.labels) {
    const v = s.labels[l];
    if (v !== undefined && v !== '') pairs.push({ name: l, value: v });
  }
  return pairs;
}

/** OpenMetrics names a counter family without `_total`; its samples keep it. */
function familyName(def: MetricDef, format: Format): string {
  return format === 'openmetrics' && def.type === 'counter' ? def.name.replace(/_total$/, '') : def.name;
}

function helpText(def: MetricDef, format: Format): string {
  const h = def.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
  return format === 'openmetrics' ? h.replace(/"/g, '\\"') : h;
}

/** The exposition in chunks of about 64 KiB (text formats: strings; protobuf: bytes). */
export function* exposition(format: Format, defs: readonly MetricDef[], store: MetricStore): Generator<string | Uint8Array> {
  if (format === 'protobuf') {
    yield* protobufChunks(defs, store);
    return;
  }
  let out = '';
  const cum: number[] = [];
  for (const def of defs) {
    const fam = familyName(def, format);
    out +=
      format === 'openmetrics'
        ? `# TYPE ${fam} ${def.type}\n# HELP ${fam} ${helpText(def, format)}\n`
        : `# HELP ${fam} ${helpText(def, format)}\n# TYPE ${fam} ${def.type}\n`;
    const name = def.name;
    if (def.type !== 'histogram') {
      for (const s of store.each(def)) {
        const lt = labelText(def, s);
        out += lt ? `${name}{${lt}} ${formatNumber(s.value)}\n` : `${name} ${formatNumber(s.value)}\n`;
        if (out.length >= CHUNK) {
          yield out;
          out = '';
        }
      }
      continue;
    }
    for (const s of store.each(def)) {
      const h = s.hist;
      if (!h) continue;
      const lt = labelText(def, s);
      const pre = `${name}_bucket{${lt}${lt ? ',' : ''}le="`;
      const les = classicLayout(h.range).text;
      classicCumulative(h, cum);
      for (let b = 0; b < les.length; b++) out += `${pre}${les[b]}"} ${cum[b]}\n`;
      out += `${pre}+Inf"} ${h.count}\n`;
      const braces = lt ? `{${lt}}` : '';
      out += `${name}_sum${braces} ${formatNumber(h.sum)}\n${name}_count${braces} ${h.count}\n`;
      if (out.length >= CHUNK) {
        yield out;
        out = '';
      }
    }
  }
  if (format === 'openmetrics') out += '# EOF\n';
  if (out) yield out;
}

const ZERO_THRESHOLD = 2 ** -128;

/** What a series' protobuf message is, for a value and the exporter's encoding of it. */
function metricMessage(def: MetricDef, s: Series): object | undefined {
  const label = labelPairs(def, s);
  if (def.type === 'counter') return { label, counter: { value: s.value } };
  if (def.type === 'gauge') return { label, gauge: { value: s.value } };
  const h = s.hist;
  if (!h) return undefined;
  const { spans, deltas } = nativeBuckets(h);
  return {
    label,
    histogram: {
      // zero_threshold 2^-128 is client_golang's default (DefNativeHistogramZeroThreshold);
      // it is also what makes a histogram without observations read as native in
      // Prometheus 2.40-2.46, whose parser needs a delta, a zero count or a threshold
      // (model/textparse/protobufparse.go isNativeHistogram): a series first scraped as
      // classic there never became native. Later servers also accept a (0, 0) span.
      sampleCount: h.count,
      sampleSum: h.sum,
      schema: 0,
      zeroThreshold: ZERO_THRESHOLD,
      zeroCount: 0,
      positiveSpan: spans.length ? spans : [{ offset: 0, length: 0 }],
      positiveDelta: deltas,
    },
  };
}

/**
 * A series' bytes inside its family: MetricFamily{metric: [this series]} as protobufjs encodes
 * it. Protobuf concatenates repeated fields, so a family is its header message followed by
 * these, and each is encoded once and reused while the series' value stays the same (most do
 * between two scrapes at fleet scale). A histogram is the same while its count and sum are:
 * its slots only grow (BPF log2 counts), so an observation changes the count.
 */
function seriesBytes(def: MetricDef, s: Series): Uint8Array | undefined {
  const c = (s.cache ??= {});
  const h = s.hist;
  const v = h ? h.count : s.value;
  const sum = h ? h.sum : 0;
  if (c.pbBytes && Object.is(c.pbValue, v) && Object.is(c.pbSum, sum)) return c.pbBytes;
  const m = metricMessage(def, s);
  if (!m) return undefined;
  c.pbValue = v;
  c.pbSum = sum;
  return (c.pbBytes = MetricFamilyType.encode({ metric: [m] }).finish());
}

const familyHeaders = new WeakMap<MetricDef, Uint8Array>();

function* protobufChunks(defs: readonly MetricDef[], store: MetricStore): Generator<Uint8Array> {
  for (const def of defs) {
    if (store.size(def) === 0) continue; // an empty family carries nothing in protobuf
    let header = familyHeaders.get(def);
    if (!header) familyHeaders.set(def, (header = MetricFamilyType.encode({ name: def.name, help: def.help, type: METRIC_TYPE[def.type] }).finish()));
    const parts: Uint8Array[] = [header];
    let len = header.length;
    for (const s of store.each(def)) {
      const b = seriesBytes(def, s);
      if (!b) continue;
      parts.push(b);
      len += b.length;
    }
    // Delimited: the family's length as a varint (protobufjs' writer), then the family.
    parts.unshift(protobuf.Writer.create().uint32(len).finish());
    // About CHUNK bytes at a time, so a scrape is streamed rather than held whole.
    let batch: Uint8Array[] = [];
    let batchLen = 0;
    for (const p of parts) {
      batch.push(p);
      batchLen += p.length;
      if (batchLen >= CHUNK) {
        yield Buffer.concat(batch, batchLen);
        batch = [];
        batchLen = 0;
      }
    }
    if (batchLen) yield Buffer.concat(batch, batchLen);
  }
}

/** The whole text exposition as one string (`hvwatch replay --print`, tests). */
export function renderText(defs: readonly MetricDef[], store: MetricStore, format: Exclude<Format, 'protobuf'> = 'text'): string {
  let s = '';
  for (const c of exposition(format, defs, store)) s += c as string;
  return s;
}
