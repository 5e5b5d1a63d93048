// Fleet overview: is every node observed, are probes attached, did any node see a race,
// and which VMs and cgroups stand out. Top-N panels read the recording rules, so they
// stay cheap across a fleet.
import { M } from '../agent/catalog.js';
import { RECORDING } from '../alerts/recording.js';
import { nodeVar } from './vars.js';

export { nodeVar };
import { JOB, by, re, recorded, series } from '../alerts/promql.js';
import { U, bars, dashboard, datasourceVar, graph, single, tableOf } from './lib.js';

const NODE = { instance: re('$node') };
// `up` is Prometheus' own series for every target: the one name not from the catalog.
const UP = `up{job="${JOB}"}`;
const UP_NODE = `up{job="${JOB}", instance=~"$node"}`;

export const fleet = () =>
  dashboard({
    uid: 'hvwatch-fleet',
    title: 'hvwatch / Fleet overview',
    description: 'Every hypervisor running hvwatch: agents up, probes attached, race indicators, the busiest VMs and the slowest cgroups.',
    variables: [datasourceVar(), nodeVar()],
    sections: [
      {
        row: 'Agents',
        panels: [
          single({
            title: 'Agents up',
            unit: U.count,
            description: `Scrape targets of job "${JOB}" that answered the last scrape.`,
            queries: [{ expr: `count(${UP} == 1) or vector(0)` }],
          }),
          single({
            title: 'Agents down',
            unit: U.count,
            redAbove: 1,
            description: `Scrape targets of job "${JOB}" that did not answer the last scrape (alert HvwatchDown after 2 minutes).`,
            queries: [{ expr: `count(${UP} == 0) or vector(0)` }],
          }),
          single({
            title: 'Probes not attached',
            unit: U.count,
            redAbove: 1,
            description:
              'Enabled probes that attached none of their candidates, over the selected nodes (alert HvwatchProbeNotAttached; `hvwatch probes` says why).',
            queries: [{ expr: `count(${series(M.probeAttached, NODE)} == 0) or vector(0)` }],
          }),
          single({
            title: 'Race indicators in range',
            unit: U.of('events'),
            redAbove: 1,
            description:
              "memcg writeback/uncharge race indicators counted on the selected nodes in the dashboard's time range (alert HvwatchMemcgRaceIndicator).",
            queries: [{ expr: `sum(increase(${series(M.memcgRaceEvents, NODE)}[$__range])) or vector(0)` }],
          }),
          single({
            title: 'Interrupts after teardown in range',
            unit: U.of('injections'),
            redAbove: 1,
            description:
              'Interrupt injections on a VM after its irqchip or device teardown began, on the selected nodes in the time range (alert HvwatchKvmIrqAfterTeardown).',
            queries: [{ expr: `sum(increase(${series(M.kvmIrqAfterTeardown, NODE)}[$__range])) or vector(0)` }],
          }),
          single({
            title: 'Ring-buffer drops in range',
            unit: U.of('events'),
            redAbove: 1,
            description: 'Events the BPF side dropped because a ring buffer was full, in the time range (counters stay exact; event details are lost).',
            queries: [{ expr: `sum(increase(${series(M.ringbufDropped, NODE)}[$__range])) or vector(0)` }],
          }),
          single({
            title: 'BPF CPU, busiest node',
            unit: U.fraction,
            redAbove: 0.05,
            description:
              'The highest in-kernel BPF run time of one node, as a fraction of one CPU (needs BPF run-time stats; alert HvwatchBpfBudgetExceeded above 5 %).',
            queries: [{ expr: `max(${recorded(RECORDING.bpfCpu, NODE)})` }],
          }),
          tableOf({
            title: 'Agent versions and kernels',
            unit: U.count,
            w: 24,
            h: 6,
            hide: ['Value'],
            description: 'One row per node: the agent version, the running kernel and the libbpf hvwatch uses.',
            queries: [{ expr: series(M.buildInfo, NODE) }],
          }),
        ],
      },
      {
        row: 'Probe health',
        panels: [
          tableOf({
            title: 'Attach tier per probe',
            unit: U.count,
            hide: ['Value'],
            description: 'Which attach candidate (fentry, kprobe, tp_btf, tracepoint) and target each attached probe took, per node.',
            queries: [{ expr: series(M.probeInfo, NODE) }],
          }),
          tableOf({
            title: 'Probes that did not attach',
            unit: U.count,
            hide: ['Value'],
            description:
              'Enabled probes with nothing attached, per node. A kernel that cannot have a probe: disable it (probes.disable) to make the gap a decision.',
            queries: [{ expr: `${series(M.probeAttached, NODE)} == 0` }],
          }),
          tableOf({
            title: 'Failed attach candidates',
            unit: U.of('candidates'),
            w: 24,
            h: 6,
            description:
              'Per node and probe, how many attach candidates failed before one worked (or all did). Non-zero with the probe attached is normal on kernels that refuse the faster tiers; `hvwatch probes` gives the reasons.',
            queries: [{ expr: `${series(M.probeAttachFailures, NODE)} > 0` }],
          }),
        ],
      },
      {
        row: 'Race indicators',
        panels: [
          graph({
            title: 'Race indicators by node and kind',
            unit: U.of('events'),
            bars: true,
            w: 24,
            description:
              'memcg race indicators per scrape interval, by node and kind (hvwatch docs/metrics.md "Race indicators"). Any bar deserves a look: GET /api/races on the node has the events.',
            queries: [
              {
                expr: `sum ${by(['instance', 'kind'], M.memcgRaceEvents)} (increase(${series(M.memcgRaceEvents, NODE)}[$__rate_interval])) > 0`,
                legend: '{{instance}} {{kind}}',
              },
            ],
          }),
          graph({
            title: 'Interrupts after teardown by node and VM',
            unit: U.of('injections'),
            bars: true,
            w: 24,
            description:
              "Interrupt injections after irqchip/device teardown began, per scrape interval, by node, VM and path. The introspection and interrupts dashboard has the VM's teardown steps.",
            queries: [
              {
                expr: `sum ${by(['instance', 'vm', 'path'], M.kvmIrqAfterTeardown)} (increase(${series(M.kvmIrqAfterTeardown, NODE)}[$__rate_interval])) > 0`,
                legend: '{{instance}} {{vm}} {{path}}',
              },
            ],
          }),
        ],
      },
      {
        row: 'Top VMs and cgroups',
        panels: [
          bars({
            title: 'Top VMs by exit rate',
            unit: U.perSecond('exits'),
            description: 'The 10 VMs with the most VM-exits per second (kvm:kvm_exit, 5-minute rate) on the selected nodes.',
            queries: [{ expr: `topk(10, ${recorded(RECORDING.exitRate, NODE)})`, legend: '{{instance}} {{vm}}' }],
          }),
          bars({
            title: 'Top VMs by userspace exits',
            unit: U.perSecond('exits'),
            description: 'The 10 VMs whose VMM gets the most KVM_RUN returns per second (device emulation in userspace; 5-minute rate).',
            queries: [{ expr: `topk(10, ${recorded(RECORDING.userspaceExitRate, NODE)})`, legend: '{{instance}} {{vm}}' }],
          }),
          bars({
            title: 'Top cgroups by writeback latency (p99)',
            unit: U.seconds,
            description:
              'The 10 cgroups with the highest p99 folio writeback latency (start to end, 5 minutes; function-tier probes). Alert HvwatchMemcgWritebackLatencyHigh above 2 s.',
            queries: [{ expr: `topk(10, ${recorded(RECORDING.writebackP99, NODE)})`, legend: '{{instance}} {{cgroup}}' }],
          }),
          bars({
            title: 'Top cgroups by pages written back',
            unit: U.perSecond('pages'),
            description: 'The 10 cgroups completing the most writeback pages per second (5-minute rate; tracepoint tier, hot probe memcg_writeback).',
            queries: [{ expr: `topk(10, ${recorded(RECORDING.writebackPages, NODE)})`, legend: '{{instance}} {{cgroup}}' }],
          }),
        ],
      },
      {
        row: 'Agent cost and health',
        panels: [
          graph({
            title: 'BPF CPU per node',
            unit: U.fraction,
            description:
              "CPU time the kernel spends in hvwatch's BPF programs, as a fraction of one CPU (needs BPF run-time stats: bpf.stats or kernel.bpf_stats_enabled).",
            queries: [{ expr: recorded(RECORDING.bpfCpu, NODE), legend: '{{instance}}' }],
          }),
          graph({
            title: 'BPF time per program run',
            unit: U.seconds,
            description:
              'Average in-kernel time of one run of each BPF program (run time / runs over the interval), per node; bench/RESULTS.md has the expected values. Needs BPF run-time stats.',
            queries: [
              {
                expr: `sum ${by(['instance', 'probe', 'program'], M.progRunSeconds)} (rate(${series(M.progRunSeconds, NODE)}[$__rate_interval])) / sum ${by(['instance', 'probe', 'program'], M.progRuns)} (rate(${series(M.progRuns, NODE)}[$__rate_interval]))`,
                legend: '{{instance}} {{program}}',
              },
            ],
          }),
          graph({
            title: 'BPF run-time stats enabled',
            unit: U.count,
            description:
              '1 where the kernel accounts BPF program run time (bpf.stats or kernel.bpf_stats_enabled); where it is 0 the BPF CPU panels and HvwatchBpfBudgetExceeded see nothing.',
            queries: [{ expr: series(M.bpfStatsEnabled, NODE), legend: '{{instance}}' }],
          }),
          graph({
            title: 'Ring-buffer events',
            unit: U.perSecond('events'),
            description: "Rare events (races, failures) received from each family's BPF ring buffer per second, per node.",
            queries: [
              {
                expr: `sum ${by(['instance', 'family'], M.ringbufEvents)} (rate(${series(M.ringbufEvents, NODE)}[$__rate_interval]))`,
                legend: '{{instance}} {{family}}',
              },
            ],
          }),
          graph({
            title: 'Ring-buffer drops',
            unit: U.perSecond('events'),
            description: 'Rare events (races, failures) the BPF side could not hand to the agent because its ring buffer was full, per node and family.',
            queries: [
              {
                expr: `sum ${by(['instance', 'family'], M.ringbufDropped)} (rate(${series(M.ringbufDropped, NODE)}[$__rate_interval]))`,
                legend: '{{instance}} {{family}}',
              },
            ],
          }),
          graph({
            title: 'Cardinality drops',
            unit: U.of('values'),
            bars: true,
            description: 'Label values (cgroups, VMs) refused by the cardinality budget per interval and reported as "_other".',
            queries: [
              {
                expr: `sum ${by(['instance', 'label'], M.cardinalityDropped)} (increase(${series(M.cardinalityDropped, NODE)}[$__rate_interval]))`,
                legend: '{{instance}} {{label}}',
              },
            ],
          }),
          graph({
            title: 'BPF map fill',
            unit: U.fraction,
            description:
              'Entries of each BPF map the agent reads against its capacity, per node. Near 100 %: updates fail (hvwatch_bpf_map_full_errors_total) or the LRU evicts.',
            queries: [{ expr: `${series(M.mapEntries, NODE)} / ${series(M.mapCapacity, NODE)}`, legend: '{{instance}} {{family}}/{{map}}' }],
          }),
          graph({
            title: 'Collection time per scrape',
            unit: U.seconds,
            description: 'Time the agent spent reading BPF maps and cgroupfs for the last scrape, per node.',
            queries: [{ expr: series(M.collectSeconds, NODE), legend: '{{instance}}' }],
          }),
          graph({
            title: 'Agents up',
            unit: U.count,
            description: `1 while Prometheus scrapes the node's agent, 0 when the scrape fails (job "${JOB}").`,
            queries: [{ expr: UP_NODE, legend: '{{instance}}' }],
          }),
        ],
      },
    ],
  });
