/**
 * The methods by name, with the policies each one puts at prefill and decode
 * (used by `select` and `eval`). Options not given take the defaults of
 * methods.md.
 */
import { KvsqRangeError } from './errors';
import { ChunkKV, H2O, PyramidKV, Quest, Recompress, ShotKV, SnapKV, StreamingLLM } from './policies';
import type { DecodePolicy, PrefillPolicy } from './policies/types';
import type { PoolMode, Reduce } from './ops';

export const METHODS = ['streamingllm', 'snapkv', 'pyramidkv', 'chunkkv', 'h2o', 'quest', 'shotkv'] as const;
export type MethodName = (typeof METHODS)[number];
export const DECODE_METHODS = ['none', 'h2o', 'quest', 'streamingllm', 'recompress'] as const;
export type DecodeMethodName = (typeof DECODE_METHODS)[number];
/** Prefill methods that can score held tokens for `recompress` (their budget is the target). */
export const SCORER_METHODS = ['snapkv', 'pyramidkv', 'chunkkv', 'streamingllm'] as const;

export interface MethodOptions {
  budget?: number;
  ratio?: number;
  window?: number;
  kernel?: number;
  pool?: PoolMode;
  gqa?: Reduce;
  beta?: number;
  chunk?: number;
  reuse?: number;
  sinks?: number;
  prefillBudget?: number;
  prefillRatio?: number;
  decodeBudget?: number;
  heavy?: number;
  recent?: number;
  denseLayers?: number;
  share?: boolean;
  shots?: Array<[number, number]>;
  /** Compose a decode policy on top of a prefill method (default: the method's own). */
  decode?: DecodeMethodName;
  /** recompress: steps between re-compressions, trigger size (also the scorer's budget), scorer method. */
  interval?: number;
  target?: number;
  scorer?: string;
}

export interface MethodPolicies {
  prefill: PrefillPolicy | null;
  decode: DecodePolicy | null;
  params: Record<string, unknown>;
}

const defined = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));

export function makeMethod(name: string, o: MethodOptions = {}): MethodPolicies {
  if (!(METHODS as readonly string[]).includes(name)) throw new KvsqRangeError(`unknown method '${name}' (expected one of ${METHODS.join(', ')})`);
  const win = defined({ window: o.window, gqa: o.gqa });
  const pool = defined({ kernel: o.kernel, pool: o.pool });
  const budget = defined({ budget: o.budget, ratio: o.ratio });
  let prefill: PrefillPolicy | null = null;
  let decode: DecodePolicy | null = null;
  switch (name as MethodName) {
    case 'streamingllm': {
      const s = new StreamingLLM({ ...budget, ...defined({ sinks: o.sinks }) });
      prefill = s;
      decode = s;
      break;
    }
    case 'snapkv':
      prefill = new SnapKV({ ...budget, ...win, ...pool });
      break;
    case 'pyramidkv':
      prefill = new PyramidKV({ ...budget, ...win, ...pool, ...defined({ beta: o.beta }) });
      break;
    case 'chunkkv':
      prefill = new ChunkKV({ ...budget, ...win, ...defined({ chunk: o.chunk, reuse: o.reuse }) });
      break;
    case 'h2o': {
      const h = new H2O(defined({ heavy: o.heavy, recent: o.recent, gqa: o.gqa }));
      prefill = h;
      decode = h;
      break;
    }
    case 'quest':
      decode = new Quest(defined({ budget: o.budget, denseLayers: o.denseLayers, share: o.share }));
      break;
    case 'shotkv': {
      if (!o.shots) throw new KvsqRangeError('shotkv needs shot segments (the trace metadata "shots", or --shots)');
      const s = new ShotKV({ shots: o.shots, ...win, ...defined({ prefillBudget: o.prefillBudget, prefillRatio: o.prefillRatio, decodeBudget: o.decodeBudget }) });
      prefill = s;
      decode = s;
      break;
    }
  }
  if (o.decode !== undefined) {
    if (!(DECODE_METHODS as readonly string[]).includes(o.decode)) throw new KvsqRangeError(`unknown decode method '${o.decode}' (expected one of ${DECODE_METHODS.join(', ')})`);
    if (o.decode === 'none') decode = null;
    else if (o.decode === 'h2o') decode = new H2O(defined({ heavy: o.heavy, recent: o.recent, gqa: o.gqa }));
    else if (o.decode === 'quest') decode = new Quest(defined({ budget: o.budget, denseLayers: o.denseLayers, share: o.share }));
    else if (o.decode === 'recompress') decode = makeRecompress(o, decode);
    else decode = new StreamingLLM({ ...budget, ...defined({ sinks: o.sinks }) });
  }
  const params: Record<string, unknown> = { ...(prefill?.params ?? {}) };
  if (decode && decode !== (prefill as unknown)) params.decode = { method: decode.name, ...decode.params };
  return { prefill, decode, params };
}

/**
 * `--decode recompress`: Recompress wrapping the method's own decode policy
 * (e.g. h2o's H2O), scoring with `scorer` at budget = target.
 */
function makeRecompress(o: MethodOptions, inner: DecodePolicy | null): DecodePolicy {
  if (o.interval === undefined || o.target === undefined) throw new KvsqRangeError('recompress needs --interval and --target');
  const scorer = o.scorer ?? 'snapkv';
  if (!(SCORER_METHODS as readonly string[]).includes(scorer)) throw new KvsqRangeError(`unknown scorer '${scorer}' (expected one of ${SCORER_METHODS.join(', ')})`);
  const win = defined({ window: o.window, gqa: o.gqa });
  const pool = defined({ kernel: o.kernel, pool: o.pool });
  const budget = { budget: o.target };
  let s: PrefillPolicy;
  if (scorer === 'snapkv') s = new SnapKV({ ...budget, ...win, ...pool });
  else if (scorer === 'pyramidkv') s = new PyramidKV({ ...budget, ...win, ...pool, ...defined({ beta: o.beta }) });
  else if (scorer === 'chunkkv') s = new ChunkKV({ ...budget, ...win, ...defined({ chunk: o.chunk }) });
  else s = new StreamingLLM({ ...budget, ...defined({ sinks: o.sinks }) });
  return new Recompress({ interval: o.interval, target: o.target, scorer: s, ...defined({ window: o.window }), decode: inner });
}
