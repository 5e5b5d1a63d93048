// Template variables more than one board shares: the node (every board) and the VM (the
// boards of the KVM-side families, from the vm info the VM label service publishes).
import { M } from '../agent/catalog.js';
import { VM_INFO } from '../agent/services/vm-labels.js';
import { re, series } from '../alerts/promql.js';
import { labelVar } from './lib.js';

export const nodeVar = (): ReturnType<typeof labelVar> =>
  labelVar('node', 'Node', `label_values(${series(M.buildInfo)}, instance)`, 'Agents (scrape targets) to show; every node runs one.');

export const vmVar = (): ReturnType<typeof labelVar> =>
  labelVar('vm', 'VM', `label_values(${series(VM_INFO, { instance: re('$node') })}, vm)`, 'VMs (VMM processes) seen by the KVM probes on the selected nodes.');
