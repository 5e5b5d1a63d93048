// Panel and variable helpers over @grafana/grafana-foundation-sdk. Every panel helper
// takes a unit and a description (the types make them mandatory), queries the data source
// chosen in $datasource, and gets a stable id, so the generated JSON diffs cleanly.
import * as dash from '@grafana/grafana-foundation-sdk/dashboard';
import type * as cog from '@grafana/grafana-foundation-sdk/cog';
import { DataqueryBuilder, PromQueryFormat } from '@grafana/grafana-foundation-sdk/prometheus';
import * as timeseries from '@grafana/grafana-foundation-sdk/timeseries';
import * as heatmap from '@grafana/grafana-foundation-sdk/heatmap';
import * as stat from '@grafana/grafana-foundation-sdk/stat';
import * as table from '@grafana/grafana-foundation-sdk/table';
import * as bargauge from '@grafana/grafana-foundation-sdk/bargauge';
import {
  BarGaugeDisplayMode,
  BigValueGraphMode,
  GraphDrawStyle,
  LegendDisplayMode,
  LegendPlacement,
  ReduceDataOptionsBuilder,
  SortOrder,
  StackingConfigBuilder,
  StackingMode,
  TooltipDisplayMode,
  VizLegendOptionsBuilder,
  VizOrientation,
  VizTooltipOptionsBuilder,
} from '@grafana/grafana-foundation-sdk/common';

/** Every panel and variable queries the Prometheus picked in the dashboard's $datasource. */
export const DS = { type: 'prometheus', uid: '${datasource}' } as const;

/** Units: Grafana's ids where one fits, `suffix:` custom units for counts of things. */
export const U = {
  seconds: 's',
  bytes: 'bytes',
  fraction: 'percentunit',
  count: 'none',
  perSecond: (what: string) => `suffix: ${what}/s`,
  of: (what: string) => `suffix: ${what}`,
} as const;

export interface Query {
  expr: string;
  legend?: string;
}

export interface PanelSpec {
  title: string;
  description: string;
  unit: string;
  queries: Query[];
  /** Width in grid columns (of 24). */
  w?: number;
  h?: number;
}

const REF_IDS = 'ABCDEFGHIJ';

function targets(qs: Query[], opts: { format?: PromQueryFormat; instant?: boolean } = {}): cog.Builder<cog.Dataquery>[] {
  if (!qs.length || qs.length > REF_IDS.length) throw new Error(`a panel has 1..${REF_IDS.length} queries`);
  return qs.map((q, i) => {
    const b = new DataqueryBuilder()
      .datasource(DS)
      .refId(REF_IDS[i]!)
      .expr(q.expr)
      .legendFormat(q.legend ?? '__auto');
    if (opts.format) b.format(opts.format);
    if (opts.instant) b.instant();
    else b.range();
    return b;
  });
}

type AnyPanel = {
  datasource(d: typeof DS): unknown;
  title(t: string): unknown;
  description(d: string): unknown;
  unit(u: string): unknown;
  span(w: number): unknown;
  height(h: number): unknown;
};

function common<T extends AnyPanel>(p: T, s: PanelSpec, defaults: { w: number; h: number }): T {
  if (!s.description.trim()) throw new Error(`panel ${s.title}: a description is required`);
  if (!s.unit.trim()) throw new Error(`panel ${s.title}: a unit is required`);
  p.datasource(DS);
  p.title(s.title);
  p.description(s.description);
  p.unit(s.unit);
  p.span(s.w ?? defaults.w);
  p.height(s.h ?? defaults.h);
  return p;
}

export function graph(s: PanelSpec & { stacked?: boolean; bars?: boolean; min?: number }): timeseries.PanelBuilder {
  const p = common(new timeseries.PanelBuilder(), s, { w: 12, h: 8 })
    .targets(targets(s.queries))
    .fillOpacity(s.stacked ? 30 : 10)
    .lineWidth(1)
    // Series are per node, cgroup or VM: the legend names them, the tooltip compares them.
    .legend(new VizLegendOptionsBuilder().showLegend(true).displayMode(LegendDisplayMode.List).placement(LegendPlacement.Bottom))
    .tooltip(new VizTooltipOptionsBuilder().mode(TooltipDisplayMode.Multi).sort(SortOrder.Descending));
  if (s.stacked) p.stacking(new StackingConfigBuilder().mode(StackingMode.Normal).group('A'));
  if (s.bars) p.drawStyle(GraphDrawStyle.Bars);
  p.min(s.min ?? 0);
  return p;
}

/** A heatmap of a Prometheus histogram: one row per `le` bucket, counts per interval. */
export function heat(s: PanelSpec): heatmap.PanelBuilder {
  return common(new heatmap.PanelBuilder(), s, { w: 12, h: 8 })
    .targets(
      targets(
        s.queries.map((q) => ({ ...q, legend: q.legend ?? '{{le}}' })),
        { format: PromQueryFormat.Heatmap },
      ),
    )
    .calculate(false)
    .yAxis(new heatmap.YAxisConfigBuilder().unit(s.unit))
    .cellValues(new heatmap.CellValuesBuilder().unit('none'))
    .color(new heatmap.HeatmapColorOptionsBuilder().mode(heatmap.HeatmapColorMode.Scheme).scheme('Oranges').fill('dark-orange').exponent(0.5).steps(64));
}

export function single(s: PanelSpec & { redAbove?: number }): stat.PanelBuilder {
  const p = common(new stat.PanelBuilder(), s, { w: 4, h: 4 })
    .targets(targets(s.queries, { instant: true }))
    .graphMode(BigValueGraphMode.None)
    .reduceOptions(new ReduceDataOptionsBuilder().calcs(['lastNotNull']));
  if (s.redAbove !== undefined) {
    p.thresholds(
      new dash.ThresholdsConfigBuilder().mode(dash.ThresholdsMode.Absolute).steps([
        { value: null, color: 'green' },
        { value: s.redAbove, color: 'red' },
      ]),
    );
  }
  return p;
}

export function tableOf(s: PanelSpec & { hide?: string[] }): table.PanelBuilder {
  const p = common(new table.PanelBuilder(), s, { w: 12, h: 8 }).targets(targets(s.queries, { format: PromQueryFormat.Table, instant: true }));
  // Hide the columns every instant table has and nobody reads.
  p.withTransformation({
    id: 'organize',
    options: { excludeByName: Object.fromEntries(['Time', '__name__', 'job', ...(s.hide ?? [])].map((c) => [c, true])) },
  });
  return p;
}

export function bars(s: PanelSpec): bargauge.PanelBuilder {
  return common(new bargauge.PanelBuilder(), s, { w: 12, h: 8 })
    .targets(targets(s.queries, { instant: true }))
    .orientation(VizOrientation.Horizontal)
    .displayMode(BarGaugeDisplayMode.Gradient)
    .reduceOptions(new ReduceDataOptionsBuilder().calcs(['lastNotNull']));
}

// ---- template variables ----
export const datasourceVar = (): dash.DatasourceVariableBuilder =>
  new dash.DatasourceVariableBuilder('datasource').label('Data source').type('prometheus').description('The Prometheus that scrapes the hvwatch agents.');

/** A multi-value label variable whose "All" is `.*`, so `label=~"$var"` always works. */
export function labelVar(name: string, label: string, query: string, description: string): dash.QueryVariableBuilder {
  return new dash.QueryVariableBuilder(name)
    .label(label)
    .description(description)
    .datasource(DS)
    .query(query)
    .definition(query)
    .refresh(dash.VariableRefresh.OnTimeRangeChanged)
    .sort(dash.VariableSort.AlphabeticalAsc)
    .multi(true)
    .includeAll(true)
    .allValue('.*')
    .current({ text: 'All', value: '$__all' });
}

export type Section = { row: string; panels: cog.Builder<dash.Panel>[] };

export interface DashboardSpec {
  uid: string;
  title: string;
  description: string;
  variables: cog.Builder<dash.VariableModel>[];
  sections: Section[];
}

/** The dashboard, with ids assigned in layout order (rows included). */
export function dashboard(spec: DashboardSpec): dash.Dashboard {
  const b = new dash.DashboardBuilder(spec.title)
    .uid(spec.uid)
    .description(spec.description)
    .tags(['hvwatch'])
    .time({ from: 'now-1h', to: 'now' })
    .refresh('30s')
    .tooltip(dash.DashboardCursorSync.Crosshair)
    .link(new dash.DashboardLinkBuilder('hvwatch').type(dash.DashboardLinkType.Dashboards).tags(['hvwatch']).asDropdown(true).keepTime(true).includeVars(true));
  for (const v of spec.variables) b.withVariable(v);
  for (const s of spec.sections) {
    b.withRow(new dash.RowBuilder(s.row));
    for (const p of s.panels) b.withPanel(p);
  }
  const d = b.build();
  layout(d.panels ?? []);
  (d.panels ?? []).forEach((p, i) => ((p as { id?: number }).id = i + 1));
  return d;
}

/**
 * Grid positions, left to right, wrapping a panel that does not fit in what is left of the
 * 24 columns. The SDK's builder (0.0.21) wraps only after a line is full, so a 12-wide panel
 * after 20 columns landed at x=20, half off the grid.
 */
function layout(panels: dash.Panel[] | dash.RowPanel[] | (dash.Panel | dash.RowPanel)[]): void {
  let x = 0;
  let y = 0;
  let lineH = 0;
  const newline = (): void => {
    y += lineH;
    x = 0;
    lineH = 0;
  };
  for (const p of panels as { type: string; gridPos?: dash.GridPos }[]) {
    const g = p.gridPos ?? (p.gridPos = { x: 0, y: 0, w: 12, h: 8 });
    if (p.type === 'row') {
      if (x > 0) newline();
      Object.assign(g, { x: 0, y, w: 24, h: 1 });
      y += 1;
      continue;
    }
    if (x + g.w > 24) newline();
    g.x = x;
    g.y = y;
    x += g.w;
    lineH = Math.max(lineH, g.h);
    if (x >= 24) newline();
  }
}
