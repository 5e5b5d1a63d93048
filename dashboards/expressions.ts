// Every PromQL expression of a generated dashboard: panel targets (rows included) and
// query variables. The catalog check and the README summary read dashboards through this.

export interface DashboardJson {
  uid?: string;
  title?: string;
  description?: string;
  panels?: PanelJson[];
  templating?: { list?: VariableJson[] };
}

export interface PanelJson {
  id?: number;
  type: string;
  title?: string;
  description?: string;
  panels?: PanelJson[];
  targets?: { refId?: string; expr?: string; legendFormat?: string; format?: string; instant?: boolean }[];
  fieldConfig?: { defaults?: { unit?: string } };
  gridPos?: { x: number; y: number; w: number; h: number };
}

export interface VariableJson {
  type: string;
  name: string;
  label?: string;
  query?: string | { query?: string };
  description?: string;
}

export function allPanels(d: DashboardJson): PanelJson[] {
  return (d.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]);
}

export function variableQuery(v: VariableJson): string | undefined {
  return typeof v.query === 'string' ? v.query : v.query?.query;
}

export function dashboardExpressions(d: DashboardJson): { where: string; expr: string }[] {
  const out: { where: string; expr: string }[] = [];
  for (const v of d.templating?.list ?? []) {
    const q = variableQuery(v);
    if (v.type === 'query' && q) out.push({ where: `${d.uid} variable ${v.name}`, expr: q });
  }
  for (const p of allPanels(d)) {
    for (const t of p.targets ?? []) if (t.expr) out.push({ where: `${d.uid} panel "${p.title}" ${t.refId ?? ''}`.trim(), expr: t.expr });
  }
  return out;
}
