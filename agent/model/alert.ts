// What an alert is to the agent and to the rules generator alike: its identity (name,
// severity, texts) and, for the ones the agent also evaluates in process, the metric and the
// kind of condition. Below the families: a family declares its in-process conditions in its
// family.ts (`conditions`), and agent/alerting/conditions.ts gathers them with the agent's own.
import type { MetricDef } from './metric.js';

export type Severity = 'critical' | 'warning' | 'info';

type Text = (labels: Readonly<Record<string, string>>) => string;

export interface AlertIdentity {
  readonly name: string;
  readonly severity: Severity;
  readonly summary: Text;
  readonly description: Text;
}

export interface Condition extends AlertIdentity {
  readonly metric: MetricDef;
  /**
   * increase: fires when a series' value rose since the last evaluation and stays firing
   *           for holdSeconds after the last rise (a counter's events are instants);
   * zero:     fires while a series' value is 0 (a state).
   */
  readonly kind: 'increase' | 'zero';
}
