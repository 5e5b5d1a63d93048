// The registered families (families/index.ts) made into specs for one agent, and the probe
// names every command validates its --hot/--disable arguments against.
import { FAMILY_MODULES } from '../families/index.js';
import { configSchema, type Config } from './config.js';
import type { FamilyModule, FamilySpec, ProbeSpec } from './model/family.js';
import { AgentServices } from './services/index.js';

export { FAMILY_MODULES };

/** Each module's create(config, services), in registry order. */
export function createFamilies(config: Config, services: AgentServices, modules: readonly FamilyModule[] = FAMILY_MODULES): FamilySpec[] {
  return modules.map((m) => {
    const spec = m.create(config, services);
    if (m.name && spec.name !== m.name) throw new Error(`family module ${m.name} created a spec named ${spec.name}`);
    return spec;
  });
}

/** Every probe of every registered family (their declarations do not depend on the config). */
export function allProbes(): ProbeSpec[] {
  return declaredFamilies().flatMap((f) => f.probes);
}

export function allProbeNames(): string[] {
  return allProbes().map((p) => p.name);
}

/** The registered families' declarations, each made with the default config and services of
 * its own: for reading what they declare (probes, objects, maps). An agent makes its own. */
export function declaredFamilies(): FamilySpec[] {
  const cfg = configSchema.parse({});
  return createFamilies(cfg, new AgentServices(cfg));
}

/** A family module around a spec made elsewhere (tests: a family forced present, one that
 * throws, a spec with one program): what the Agent constructor takes. */
export function moduleOf(make: FamilySpec | ((config: Config, services: AgentServices) => FamilySpec)): FamilyModule {
  const create = typeof make === 'function' ? make : (): FamilySpec => make;
  const name = typeof make === 'function' ? '' : make.name;
  return {
    name,
    metrics: {},
    create: (config, services) => create(config, services as AgentServices),
  };
}
