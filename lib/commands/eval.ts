/**
 * `kvsqueeze eval`: every method at several budgets on a synthetic trace (or
 * a user trace in the `select` format), on the embedded CPU default. Prints a
 * table, writes report.json and error-vs-budget.svg into --out.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command } from 'commander';
import { SingleBar } from 'cli-progress';
import type { CliIO } from '../cli';
import { ArgumentError, KvsqRangeError, show } from '../errors';
import { generateTrace, GeneratorOptions, TraceTruth } from '../eval/generator';
import { linePlotSVG } from '../eval/plot';
import { EvalReport, runEval } from '../eval/run';
import { METHODS, MethodName } from '../methods';
import type { DType } from '../tensor';
import { loadTrace, Trace } from '../trace';

function list<T>(what: string, parse: (s: string) => T) {
  return (v: string): T[] => {
    const items = v.split(',').map((s) => s.trim()).filter(Boolean);
    if (!items.length) throw new KvsqRangeError(`${what}: empty list`);
    return items.map(parse);
  };
}

const parseBudget = (s: string): number => {
  const pct = s.endsWith('%');
  const x = Number(pct ? s.slice(0, -1) : s);
  const f = pct ? x / 100 : x;
  if (!Number.isFinite(f) || f <= 0 || f > 1) throw new KvsqRangeError(`--budgets: '${s}' is not a fraction in (0, 1] or a percentage`);
  return f;
};
const parseMethod = (s: string): MethodName => {
  if (!(METHODS as readonly string[]).includes(s)) throw new KvsqRangeError(`--methods: unknown method '${s}' (expected ${METHODS.join(', ')})`);
  return s as MethodName;
};
const parseInt10 = (what: string, lo: number) => (s: string): number => {
  const x = Number(s);
  if (!Number.isInteger(x) || x < lo) throw new KvsqRangeError(`${what} must be an integer >= ${lo}, got '${s}'`);
  return x;
};

const fmtPct = (x: number) => `${(x * 100).toFixed(1)}%`;
const fmtBytes = (b: number) => (b >= 2 ** 20 ? `${(b / 2 ** 20).toFixed(1)} MiB` : `${(b / 1024).toFixed(0)} KiB`);

export function formatReport(r: EvalReport): string {
  const head = ['method', 'budget', 'err mean', 'err worst', 'mass kept', 'needles', 'memory', 'mem %', 'prefill ms/layer', 'decode ms/step'];
  const rows = r.rows.map((x) => [
    x.method,
    `${fmtPct(x.budget)} (${x.budgetTokens})`,
    x.errMean.toExponential(2),
    x.errWorst.toExponential(2),
    fmtPct(x.massKept),
    x.needleRecall === null ? '-' : fmtPct(x.needleRecall),
    fmtBytes(x.bytesHeld),
    `${x.memoryPct.toFixed(1)}%`,
    x.prefillMsPerLayer.toFixed(1),
    x.decodeMsPerStep.toFixed(2),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  const t = r.trace;
  return [
    `trace: ${t.source}, ${t.layers} layers, ${t.qHeads} q / ${t.kvHeads} kv heads, D ${t.headDim}, L ${t.seqLen}, ${t.steps} decode steps; cache ${r.dtype}`,
    `full cache (no compression): err mean ${r.fullCache.errMean.toExponential(2)}, worst ${r.fullCache.errWorst.toExponential(2)} (storage rounding floor)`,
    line(head),
    line(w.map((n) => '-'.repeat(n))),
    ...rows.map(line),
    `${r.rows.length} runs in ${r.seconds.toFixed(1)} s`,
  ].join('\n');
}

export async function writeArtifacts(r: EvalReport, dir: string): Promise<string[]> {
  fs.mkdirSync(dir, { recursive: true });
  const json = path.join(dir, 'report.json');
  fs.writeFileSync(json, JSON.stringify(r, null, 2) + '\n');
  const svg = path.join(dir, 'error-vs-budget.svg');
  const pts = r.rows.map((x) => ({ series: x.method, x: x.budget, y: Math.max(x.errMean, 1e-6) }));
  fs.writeFileSync(svg, await linePlotSVG(pts, { title: 'Attention output error vs KV budget', xTitle: 'budget (fraction of the prompt)', yTitle: 'mean relative error', logY: true }));
  return [json, svg];
}

export function registerEval(program: Command, io: CliIO): void {
  program
    .command('eval')
    .description('compare every method at several budgets: error, attention mass, needle recall, memory, time; table + report.json + SVG')
    .option('--out <dir>', 'directory for report.json and the SVG plot', 'kvsqueeze-eval')
    .option('--trace <file>', 'a trace in the select format (default: a synthetic trace)')
    .option('--methods <list>', `comma-separated (default: all: ${METHODS.join(',')})`, list('--methods', parseMethod))
    .option('--budgets <list>', 'fractions or percentages of the prompt (default 5%,10%,20%,50%)', list('--budgets', parseBudget))
    .option('--dtype <t>', 'cache dtype: f16, bf16 or f32 (default f16)')
    .option('--seed <n>', 'synthetic trace seed', parseInt10('--seed', 0))
    .option('--layers <n>', 'synthetic trace layers', parseInt10('--layers', 1))
    .option('--seq-len <n>', 'synthetic prompt length', parseInt10('--seq-len', 8))
    .option('--steps <n>', 'synthetic decode steps', parseInt10('--steps', 0))
    .option('--no-progress', 'no progress bar')
    .option('--json', 'print the report as JSON instead of the table')
    .action(async (opts: Record<string, unknown>) => {
      const dtype = (opts.dtype ?? 'f16') as DType;
      if (!['f16', 'bf16', 'f32'].includes(dtype)) throw new KvsqRangeError(`--dtype must be f16, bf16 or f32, got '${show(opts.dtype)}'`);
      let trace: Trace;
      let truth: TraceTruth | undefined;
      let source: string;
      if (opts.trace) {
        if (!fs.existsSync(opts.trace as string)) throw new ArgumentError(`eval: no such file '${show(opts.trace)}'`);
        trace = loadTrace(opts.trace as string);
        source = path.basename(opts.trace as string);
      } else {
        const g: GeneratorOptions = {};
        if (opts.seed !== undefined) g.seed = opts.seed as number;
        if (opts.layers !== undefined) g.layers = opts.layers as number;
        if (opts.seqLen !== undefined) g.seqLen = opts.seqLen as number;
        if (opts.steps !== undefined) g.decodeSteps = opts.steps as number;
        ({ trace, truth } = generateTrace(g));
        source = `synthetic (seed ${g.seed ?? 1})`;
      }
      const methods = (opts.methods as MethodName[] | undefined) ?? [...METHODS];
      const budgets = (opts.budgets as number[] | undefined) ?? [0.05, 0.1, 0.2, 0.5];
      const total = methods.length * budgets.length + 2;
      const bar = opts.progress !== false && !opts.json
        ? new SingleBar({ format: 'eval [{bar}] {value}/{total} {label}', stream: process.stderr, hideCursor: true, clearOnComplete: true })
        : null;
      bar?.start(total, 0, { label: '' });
      let report: EvalReport;
      try {
        report = runEval(trace, truth, { methods, budgets, dtype, onProgress: (label) => bar?.increment({ label }) }, source);
      } finally {
        bar?.stop();
      }
      const files = await writeArtifacts(report, opts.out as string);
      io.out((opts.json ? JSON.stringify(report, null, 2) : `${formatReport(report)}\nwrote ${files.join(', ')}`) + '\n');
    });
}
