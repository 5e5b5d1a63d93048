// Every probe family the agent knows. A new family adds one line here.
import type { FamilySpec } from './model.js';
import { memcgFamily } from './memcg.js';
import { memcgFnFamily } from './memcg-fn.js';
import { kvmFamily } from './kvm.js';

export const FAMILIES: readonly FamilySpec[] = [memcgFamily, memcgFnFamily, kvmFamily];

export function allProbeNames(): string[] {
  return FAMILIES.flatMap((f) => f.probes.map((p) => p.name));
}
