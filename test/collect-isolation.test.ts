// One family's failure stays that family's (issue 19): a probe family whose scrape-time
// collect throws is counted (hvwatch_collect_errors_total) and logged within a rate limit,
// and its maps, the families after it and the agent's own metrics are still exported.
// A real agent: the real families loaded into this kernel, the real HTTP exporter, a real
// guest on /dev/kvm for a later family's counts. The only thing changed is the first
// family's `collect`, replaced by one that throws (the Agent takes its family list).
import test from 'ava';
import type { AddressInfo } from 'node:net';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { M } from '../agent/catalog.js';
import { declaredFamilies, FAMILY_MODULES, moduleOf } from '../agent/families.js';
import { checkDecoders } from '../agent/aggregate/collect.js';
import type { FamilySpec } from '../agent/model/family.js';
import type { Source } from '../agent/sources/source.js';
import { buildApp, listen } from '../agent/export/server.js';
import { parseExposition, pick, value } from './helpers/agent.js';
import { kvmUsable, startGuest } from './helpers/kvm.js';

const skip = kvmUsable();

/** Lines the agent writes to stderr while `fn` runs (the agent logs in-process). */
async function stderrOf<T>(fn: () => Promise<T>): Promise<{ result: T; lines: string[] }> {
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    lines.push(...String(chunk).split('\n').filter(Boolean));
    return (write as (c: string | Uint8Array, ...r: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  try {
    return { result: await fn(), lines };
  } finally {
    process.stderr.write = write;
  }
}

(skip ? test.skip : test.serial)(
  `a family whose collect throws is counted and logged (rate-limited); its maps, the later families and the self-metrics still export${skip ? ` (skipped: ${skip})` : ''}`,
  async (t) => {
    const first = FAMILY_MODULES[0];
    t.is(first.name, 'memcg', 'the failing family comes before kvm, so "the families after it" is tested');
    const failing = moduleOf((config, services) => ({
      ...first.create(config, services),
      collect: () => {
        throw new Error('injected failure in memcg collect');
      },
    }));
    const agent = new Agent(configSchema.parse({}), [failing, ...FAMILY_MODULES.slice(1)]);
    agent.start();
    t.teardown(() => agent.stop());
    const server = await listen(buildApp(agent), '127.0.0.1', 0);
    t.teardown(() => new Promise<void>((r) => server.close(() => r())));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`;

    const name = `hvwatch-isolation-${process.pid}`;
    const N = 300;
    const guest = await startGuest({ name, writes: N, holdMs: 60_000 });
    t.teardown(() => guest.kill());
    guest.go();
    t.is((await guest.result).io_exits, N);

    const SCRAPES = 8;
    const { result: bodies, lines } = await stderrOf(async () => {
      const out: string[] = [];
      for (let i = 0; i < SCRAPES; i++) {
        const r = await fetch(url);
        t.is(r.status, 200, 'the scrape succeeds although a family throws');
        out.push(await r.text());
      }
      return out;
    });
    const s = parseExposition(bodies.at(-1)!);

    // Counted at every scrape, under its family and stage; nothing else failed.
    t.is(value(s, M.collectErrors.name, { family: 'memcg', stage: 'collect' }), SCRAPES);
    const loaded = agent.source.families.map((f) => f.spec.name).filter((n) => n !== 'memcg');
    t.true(loaded.includes('kvm'), `loaded families: ${loaded.join(', ')}`);
    for (const f of loaded) t.is(value(s, M.collectErrors.name, { family: f }), 0, `${f} had no collect error`);
    // Logged a burst of 3 times, the rest counted as suppressed (the limit is one a minute after that).
    const logged = lines.filter((l) => l.includes('level=error') && l.includes('family=memcg') && l.includes('stage=collect'));
    t.is(logged.length, 3, lines.join('\n'));
    t.true(
      logged.every((l) => l.includes('injected failure in memcg collect')),
      'the line carries the error',
    );
    t.is(value(s, M.logLinesSuppressed.name, { reason: 'collect_error' }), SCRAPES - 3);

    // A later family: the guest's port writes, exactly.
    t.is(value(s, M.kvmPio.name, { vm: name, direction: 'out' }), N);
    t.is(value(s, M.kvmUserspaceExits.name, { vm: name, reason: 'IO' }), N);
    // The failing family's other steps: its hv_errors map is still read after its collect threw.
    t.is(value(s, M.mapFull.name, { family: 'memcg' }), 0);
    // The self-metrics, written after every family.
    t.truthy(pick(s, M.collectSeconds.name).length, 'hvwatch_collect_duration_seconds');
    t.truthy(pick(s, M.bpfStatsEnabled.name).length, 'hvwatch_bpf_stats_enabled');
    t.true(pick(s, M.progRuns.name).length > 0, 'hvwatch_bpf_program_runs_total');
    t.is(value(s, M.buildInfo.name), 1);
  },
);

test('a family naming an unknown label decoder is refused when the agent is built, before any BPF is loaded', (t) => {
  const base = declaredFamilies().find((f) => f.name === 'memcg')!;
  const withDecoder = (decoder: string): FamilySpec => ({
    ...base,
    maps: base.maps.map((e, i) => (i === 0 ? { ...e, labels: e.labels.map((l, j) => (j === 0 ? { ...l, decoder } : l)) } : e)),
  });
  const map = base.maps[0]!.map;
  for (const bad of ['cgroups', 'constructor', 'toString']) {
    t.throws(
      () => checkDecoders(withDecoder(bad)),
      { message: new RegExp(`^family memcg, label cgroup of map ${map}: unknown label decoder "${bad}" \\(known: cgroup, number\\)$`) },
      bad,
    );
    // The Agent constructor refuses it before it touches its source (nothing is loaded):
    // the source given here records every property read.
    const touched: string[] = [];
    const source = new Proxy({}, { get: (_o, k) => void touched.push(String(k)) }) as Source;
    const e = t.throws(() => new Agent(configSchema.parse({}), [moduleOf(withDecoder(bad))], () => source));
    t.regex(e!.message, /unknown label decoder/);
    t.deepEqual(touched, []);
  }
  t.notThrows(() => checkDecoders(withDecoder('number')));
  for (const f of declaredFamilies()) t.notThrows(() => checkDecoders(f), f.name);
});
