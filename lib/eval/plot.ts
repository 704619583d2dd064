/**
 * SVG plots with vega-lite, rendered by vega on the server side (no browser,
 * no canvas: text is measured by vega's estimator). vega 6 ships as ES
 * modules only, so it is loaded with a real dynamic import.
 */

// TypeScript compiling to CommonJS would turn import() into require(); this keeps it an import.
const importESM = new Function('s', 'return import(s)') as (s: string) => Promise<any>;

export interface LinePoint {
  series: string;
  x: number;
  y: number;
}

export interface LinePlotOptions {
  title: string;
  xTitle: string;
  yTitle: string;
  logY?: boolean;
  width?: number;
  height?: number;
}

/** A line chart, one line per series, as an SVG string. */
export async function linePlotSVG(points: LinePoint[], o: LinePlotOptions): Promise<string> {
  const vega = await importESM('vega');
  const vl = await importESM('vega-lite');
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: o.title,
    width: o.width ?? 520,
    height: o.height ?? 320,
    background: 'white',
    data: { values: points },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'x', type: 'quantitative', title: o.xTitle, axis: { format: '~%' } },
      y: { field: 'y', type: 'quantitative', title: o.yTitle, scale: o.logY ? { type: 'log' } : { zero: true } },
      color: { field: 'series', type: 'nominal', title: 'method' },
    },
  };
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  try {
    return (await view.toSVG()) as string;
  } finally {
    view.finalize();
  }
}
