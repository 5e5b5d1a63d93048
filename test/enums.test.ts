// C enums by enumerator name, from the object's BTF (FamilySpec.enums, agent/aggregate/enums.ts):
// every family's declarations resolve against its built object, a value is named by its
// enumerator whatever order the declaration lists them in, and a family naming an enum or
// enumerator its object does not have fails to load with that reason (its probes off, the
// other families unaffected).
import test from 'ava';
import * as path from 'node:path';
import { BpfObject } from '../bpf/libbpf.js';
import { Btf } from '../bpf/btf.js';
import { BPF_BUILD_DIR } from '../agent/loader.js';
import { declaredFamilies, FAMILY_MODULES, moduleOf } from '../agent/families.js';
import { EnumLabels, enumLabels } from '../agent/aggregate/enums.js';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { allProbeNames } from '../agent/families.js';
import { setLogLevel } from '../agent/log.js';

function objectBtf(object: string): Btf {
  const o = BpfObject.open(path.join(BPF_BUILD_DIR, object), {});
  try {
    return Btf.parse(o.rawBtf());
  } finally {
    o.close();
  }
}

test('every enum a family declares is in its object and names each declared enumerator, labels distinct', (t) => {
  const withEnums = declaredFamilies().filter((f) => f.enums?.length);
  t.true(withEnums.length >= 5, withEnums.map((f) => f.name).join(', '));
  for (const f of withEnums) {
    const btf = objectBtf(f.object);
    for (const d of f.enums!) {
      const e = enumLabels(btf, d);
      t.is(e.byValue.size, Object.keys(d.labels).length, `${f.name} ${d.enum}: one value per enumerator`);
      t.is(new Set(e.byValue.values()).size, e.byValue.size, `${f.name} ${d.enum}: labels distinct`);
      for (const [enumerator, label] of Object.entries(d.labels)) t.is(e.valueOf(label), Number(btf.enumValue(d.enum, enumerator)), `${d.enum} ${enumerator}`);
    }
  }
});

test('a value is named by its enumerator, not by where the declaration lists it', (t) => {
  const btf = objectBtf('memcg_fn.bpf.o');
  const reversed = new EnumLabels(
    {
      enum: 'race_kind',
      labels: { RACE_WB_END_ZERO_REFCOUNT: 'writeback_end_zero_refcount', RACE_UNCHARGE_DURING_WB_END: 'uncharge_during_writeback_end' },
    },
    btf,
  );
  t.is(reversed.label(0, '?'), 'uncharge_during_writeback_end');
  t.is(reversed.label(3, '?'), 'writeback_end_zero_refcount');
  t.is(reversed.label(1, 'kind_1'), 'kind_1', 'a value no declared enumerator has keeps its number');
  t.throws(() => new EnumLabels({ enum: 'race_kind', labels: { RACE_NOPE: 'nope' } }, btf), {
    message: /^enum race_kind has no enumerator RACE_NOPE \(it has RACE_UNCHARGE_DURING_WB_END, .*RACE_KINDS\)$/,
  });
  t.throws(() => new EnumLabels({ enum: 'no_such_enum', labels: {} }, btf), {
    message: "enum no_such_enum is not in the object's BTF (export it with EXPORT_BTF_ENUM(no_such_enum))",
  });
});

test.serial('a family whose declared enumerator is missing from its object fails to load with why; the others load', (t) => {
  setLogLevel('error');
  t.teardown(() => setLogLevel('info'));
  const fn = FAMILY_MODULES.find((m) => m.name === 'memcg_fn')!;
  const broken = moduleOf((config, services) => {
    const spec = fn.create(config, services);
    return { ...spec, enums: [...(spec.enums ?? []), { enum: 'race_kind', labels: { RACE_RENAMED_AWAY: 'renamed' } }] };
  });
  const memcg = FAMILY_MODULES.find((m) => m.name === 'memcg')!;
  const agent = new Agent(configSchema.parse({ probes: { disable: allProbeNames() } }), [memcg, broken]);
  agent.start();
  t.teardown(() => agent.stop());
  t.deepEqual(
    agent.loader.familyErrors.map((e) => e.family),
    ['memcg_fn'],
  );
  t.regex(agent.loader.familyErrors[0]!.error, /^enum race_kind has no enumerator RACE_RENAMED_AWAY/);
  t.truthy(agent.family('memcg'), 'the other family loaded');
  t.falsy(agent.family('memcg_fn'));
  const st = agent.status.filter((s) => s.family === 'memcg_fn');
  t.true(
    st.length > 0 && st.every((s) => s.skipped?.startsWith('family memcg_fn failed: enum race_kind has no enumerator RACE_RENAMED_AWAY')),
    JSON.stringify(st.map((s) => s.skipped)),
  );
});
