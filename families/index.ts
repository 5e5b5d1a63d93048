// Every probe family the agent knows. A new family adds one line here.
import type { FamilySpec } from './model.js';
import { memcgFamily } from './memcg.js';
import { memcgFnFamily } from './memcg-fn.js';
import { kvmFamily } from './kvm.js';
import { kvmiFamily } from './kvmi.js';
import { kvmIrqFamily } from './kvm-irq.js';
import { imaFamily } from './ima.js';

export const FAMILIES: readonly FamilySpec[] = [memcgFamily, memcgFnFamily, kvmFamily, kvmiFamily, kvmIrqFamily, imaFamily];

export function allProbeNames(): string[] {
  return FAMILIES.flatMap((f) => f.probes.map((p) => p.name));
}
