// The registry: every probe family the agent knows, in load order (a shared hook's chain is
// headed by the family loaded first: kvm's kvm_ioctl before kvm_irq's, agent/hook-chain.ts).
// A family is a folder, families/<name>/ (docs/ARCHITECTURE.md "Where a new family goes"):
// adding one is its folder plus one line in FAMILY_MODULES. Everything else that lists families (the
// agent, the catalog, the alert groups, the dashboards, the benches) derives the list from
// this one, and test/family-locality.test.ts fails when a family is named elsewhere.
import type { FamilyModule } from '../agent/model/family.js';
// One line per family: its module (families/<name>/family.ts) in load order.
export const FAMILY_MODULES = [
  await import('./memcg/family.js'),
  await import('./memcg_fn/family.js'),
  await import('./kvm/family.js'),
  await import('./kvmi/family.js'),
  await import('./kvm_irq/family.js'),
  await import('./ima/family.js'),
] as const satisfies readonly FamilyModule[];
