/**
 * `kvsqueeze select TRACE.safetensors --method M [options] --json OUT.json`:
 * trace replay. Runs one method on tensors dumped from any framework and
 * writes the kept positions per layer and KV head (and, for Quest, the pages
 * read at each decode step per query head); --out-tensors writes the decode
 * attention outputs o [NL, Hq, T, D].
 */
import * as fs from 'fs';
import { Command, Option } from 'commander';
import { PagedKVCache } from '../cache/paged-cache';
import type { CliIO } from '../cli';
import { ArgumentError, KvsqRangeError } from '../errors';
import { writeSafetensorsFile } from '../io/safetensors';
import { DECODE_METHODS, makeMethod, METHODS, MethodOptions, SCORER_METHODS } from '../methods';
import { layerTensors, loadTrace, stepTensors, Trace, traceShots } from '../trace';

export interface SelectResult {
  method: string;
  params: Record<string, unknown>;
  layers: Array<{ layer: number; heads: Array<{ kept: number[] }>; steps?: Array<{ heads: Array<{ pages: number[] }> }> }>;
}

export interface SelectOptions extends MethodOptions {
  pageSize?: number;
  /** Skip the trace's decode steps. */
  prefillOnly?: boolean;
}

/** Runs `method` over a trace; returns the JSON result and the decode outputs (f32, [NL, Hq, T, D]). */
export function runSelect(trace: Trace, method: string, o: SelectOptions = {}): { result: SelectResult; outputs?: Float32Array } {
  const shots = o.shots ?? traceShots(trace);
  const m = makeMethod(method, { ...o, shots });
  const { numLayers: NL, numQHeads: Hq, numKvHeads: Hkv, seqLen: L, headDim: D } = trace;
  const T = o.prefillOnly ? 0 : trace.steps;
  const P = o.pageSize ?? 16;
  const pages = NL * Hkv * (Math.ceil((L + T) / P) + 1);
  const cache = new PagedKVCache({ layers: NL, kvHeads: Hkv, qHeads: Hq, headDim: D, dtype: trace.dtype, pageSize: P, pages });
  try {
    const seq = cache.addSequence({ prefill: m.prefill, decode: m.decode });
    for (let l = 0; l < NL; l++) {
      const t = layerTensors(trace, l);
      try {
        seq.prefill(l, t.q, t.k, t.v);
      } finally {
        t.q.dispose();
        t.k.dispose();
        t.v.dispose();
      }
    }
    const quest = m.decode?.name === 'quest';
    const steps: SelectResult['layers'][number]['steps'][] = Array.from({ length: NL }, () => (quest ? [] : undefined));
    const outputs = T > 0 ? new Float32Array(NL * Hq * T * D) : undefined;
    for (let s = 0; s < T; s++) {
      for (let l = 0; l < NL; l++) {
        const t = stepTensors(trace, l, s);
        try {
          const out = cache.decode(l, [seq], t.q, t.k, t.v);
          const of = out.toFloat32();
          out.dispose();
          for (let h = 0; h < Hq; h++) outputs!.set(of.subarray(h * D, (h + 1) * D), ((l * Hq + h) * T + s) * D);
          if (quest) {
            // Pages of the lists at this step (after the append): a dense step lists every page.
            const held = seq.slots(l).map((x) => Math.ceil(x.length / P));
            const g = Hq / Hkv;
            const sel = cache.lastSelection;
            steps[l]!.push({
              heads: Array.from({ length: Hq }, (_, h) => ({
                pages: sel ? Array.from(sel[h]) : Array.from({ length: held[Math.floor(h / g)] }, (_, i) => i),
              })),
            });
          }
        } finally {
          t.q.dispose();
          t.k.dispose();
          t.v.dispose();
        }
      }
    }
    const result: SelectResult = {
      method,
      params: { ...m.params, pageSize: P },
      layers: Array.from({ length: NL }, (_, l) => ({
        layer: l,
        heads: seq.kept(l).map((k) => ({ kept: Array.from(k) })),
        ...(quest ? { steps: steps[l] } : {}),
      })),
    };
    return { result, outputs };
  } finally {
    cache.dispose();
  }
}

function num(what: string, integer: boolean) {
  return (v: string): number => {
    const x = Number(v);
    if (v.trim() === '' || !Number.isFinite(x) || (integer && !Number.isInteger(x)))
      throw new KvsqRangeError(`${what} must be ${integer ? 'an integer' : 'a number'}, got '${v}'`);
    return x;
  };
}

export function registerSelect(program: Command, io: CliIO): void {
  program
    .command('select')
    .description('replay a trace (safetensors: q [NL,Hq,L,D], k, v [NL,Hkv,L,D], optional dq/dk/dv) through one method; write kept positions as JSON')
    .argument('<trace>', 'trace file (.safetensors)')
    .addOption(new Option('--method <m>', 'method').choices([...METHODS]).makeOptionMandatory())
    .option('--json <file>', 'write the result JSON here (default: stdout)')
    .option('--out-tensors <file>', 'write the decode attention outputs o [NL, Hq, T, D] (f32 safetensors)')
    .option('--budget <n>', 'per-head budget C in tokens, window included (Quest: tokens read per step)', num('--budget', true))
    .option('--ratio <r>', 'budget as a ratio of the prompt length', num('--ratio', false))
    .option('--window <w>', 'observation window (default 32)', num('--window', true))
    .option('--kernel <k>', 'pooling kernel, odd (default 7)', num('--kernel', true))
    .addOption(new Option('--pool <p>', 'pooling (default max)').choices(['max', 'avg']))
    .addOption(new Option('--gqa <r>', 'group reduce (default mean)').choices(['mean', 'sum', 'max']))
    .option('--beta <b>', 'PyramidKV beta (default 20)', num('--beta', true))
    .option('--chunk <c>', 'ChunkKV chunk length (default 10)', num('--chunk', true))
    .option('--reuse <n>', 'ChunkKV layer-wise index reuse (default 1 = off)', num('--reuse', true))
    .option('--sinks <s>', 'StreamingLLM sinks (default 4)', num('--sinks', true))
    .option('--prefill-budget <n>', 'ShotKV prefill budget in tokens', num('--prefill-budget', true))
    .option('--prefill-ratio <r>', 'ShotKV prefill compression ratio r (keeps ceil((1-r) L))', num('--prefill-ratio', false))
    .option('--decode-budget <n>', 'ShotKV decode budget in tokens (default 2048)', num('--decode-budget', true))
    .option('--heavy <n>', 'H2O heavy hitters: tokens or a ratio < 1 (default 0.1)', num('--heavy', false))
    .option('--recent <n>', 'H2O recent window: tokens or a ratio < 1 (default 0.1)', num('--recent', false))
    .option('--page-size <p>', 'cache page size (default 16)', num('--page-size', true))
    .option('--dense-layers <n>', 'Quest dense layers (default 2)', num('--dense-layers', true))
    .option('--share', 'Quest: select per KV head (max over the group)')
    .addOption(new Option('--decode <m>', 'compose a decode policy on top of the method (recompress wraps the method\'s own)').choices([...DECODE_METHODS]))
    .option('--interval <n>', 'recompress: decode steps between re-compressions', num('--interval', true))
    .option('--target <n>', 'recompress: re-compress lists holding more than n tokens, down to the scorer budget n', num('--target', true))
    .addOption(new Option('--scorer <m>', 'recompress: scoring method (default snapkv)').choices([...SCORER_METHODS]))
    .option('--prefill-only', 'ignore the trace decode steps')
    .action((file: string, opts: Record<string, unknown>) => {
      if (!fs.existsSync(file)) throw new ArgumentError(`select: no such file '${file}'`);
      const trace = loadTrace(file);
      const { result, outputs } = runSelect(trace, opts.method as string, opts as SelectOptions);
      const json = JSON.stringify(result);
      if (opts.json) fs.writeFileSync(opts.json as string, json + '\n');
      else io.out(json + '\n');
      if (opts.outTensors) {
        if (!outputs) throw new ArgumentError('select: --out-tensors needs decode steps (dq, dk, dv) in the trace');
        writeSafetensorsFile(opts.outTensors as string, { o: { dtype: 'F32', shape: [trace.numLayers, trace.numQHeads, trace.steps, trace.headDim], data: outputs } });
      }
    });
}
