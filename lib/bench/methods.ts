/**
 * Method-level rows of `kvsqueeze bench` (CPU): what a method costs through
 * the cache, not one kernel.
 *
 * Prefill: per method (makeMethod's policies), the wall time of
 * seq.prefill for one layer of a fresh PagedKVCache (median of 3, fresh
 * random inputs each run; making the cache and the inputs is not timed), the
 * pages freed against a full cache (seq.stats(): bytesSaved / bytesFull) and
 * the tokens kept. H2O's prefill scores are the full causal column sums,
 * O(L^2): it is timed at L / 4 first and at L only when 16x that is under
 * 60 s; otherwise the row is at L / 4 and says so.
 *
 * Decode: per method, a one-layer cache holding a prompt of L tokens (kept
 * whole, or compressed by the method's prefill), then cache.decode for one
 * token (B = 1, fresh q/k/v per step) timed step by step, the steps going
 * round-robin over the methods' caches (same machine load for every row; each
 * step finds its K/V out of the CPU caches, as between a model's layers): the
 * median is ms per layer per token. Two ratios with their targets: the H2O
 * step (attention + score accumulation + eviction) against a plain step over
 * the same kept tokens (<= 1.2), and dense decode over all L against Quest at
 * its budget, denseLayers 0 (>= 5; per query head, and with share). One more
 * ratio without a target, for comparison with the Quest paper's accounting:
 * dense decode over K/V repeated to Hq heads (as research code serves GQA:
 * Hq / Hkv times the bytes) against Quest per query head.
 *
 * Selection (--method): row ids, 'prefill', 'decode', 'all', or a method
 * name; a ratio's comparison row comes along with the row it compares.
 */
import { H2O } from '../policies';
import type { PrefillContext, PrefillDecision, PrefillPolicy } from '../policies/types';
import { makeMethod, MethodOptions } from '../methods';
import { PagedKVCache, Sequence } from '../cache/paged-cache';
import { KvsqRangeError } from '../errors';
import { Tensor } from '../tensor';
import { randomF32 } from './kernels';

export interface MethodRow {
  /** 'prefill': compression at prefill; 'decode': one decode step */
  kind: 'prefill' | 'decode';
  /** id for --method */
  id: string;
  /** method name (makeMethod) or 'none' (no policy) */
  method: string;
  /** the setup: L (or context), heads, head dim, page size, layer */
  shape: string;
  /** the method's parameters (budget, shots, ...) */
  params: string;
  dtype: string;
  /** prompt length the row was measured at */
  L: number;
  /** median wall ms: seq.prefill of one layer, or one decode step of one layer (ms per layer per token) */
  ms: number;
  runs: number;
  /** tokens held per KV head (mean over heads): after the prefill, or after the timed decode steps */
  tokensKept: number;
  /** prefill rows: memory against a cache that keeps the whole prompt */
  memory?: { bytesFull: number; bytesHeld: number; bytesSaved: number; freedPct: number; pagesFreed: number; bytesPerPage: number };
  note?: string;
}

export interface MethodRatio {
  id: string;
  what: string;
  value: number;
  /** e.g. '<= 1.2'; absent for a ratio shown for comparison only */
  target?: string;
  met?: boolean;
}

export interface MethodShape {
  L: number;
  Hq: number;
  Hkv: number;
  D: number;
  P: number;
  /** prefill budget C (tokens per head, the window included) */
  C: number;
  heavy: number;
  recent: number;
  /** ShotKV: shot segments in the middle of the prompt */
  shots: Array<[number, number]>;
  /** the cache the prefill rows use: layer `layer` of `layers` (PyramidKV's budget depends on it) */
  layers: number;
  layer: number;
  /** decode: H2O heavy + recent, StreamingLLM and Quest budget */
  decodeBudget: number;
  warmSteps: number;
  steps: number;
  prefillRuns: number;
  /** H2O: time at L only when its estimate from L / 4 is under this */
  h2oLimitMs: number;
}

function shotsInMiddle(L: number, n: number, len: number): Array<[number, number]> {
  const start = Math.floor((L - n * len) / 2);
  return Array.from({ length: n }, (_, i) => [start + i * len, start + (i + 1) * len] as [number, number]);
}

/** The shapes: L 32K, Hq 32, Hkv 8, D 128, f16, C 1024. */
export function fullMethodShape(): MethodShape {
  const L = 32768;
  return {
    L, Hq: 32, Hkv: 8, D: 128, P: 16, C: 1024, heavy: 512, recent: 512,
    shots: shotsInMiddle(L, 20, 1000), layers: 32, layer: 16, decodeBudget: 2048,
    warmSteps: 3, steps: 50, prefillRuns: 3, h2oLimitMs: 60000,
  };
}

/** --quick: small shapes, well under a second in all. */
export function quickMethodShape(): MethodShape {
  const L = 2048;
  return {
    L, Hq: 8, Hkv: 2, D: 64, P: 16, C: 256, heavy: 128, recent: 128,
    shots: shotsInMiddle(L, 8, 100), layers: 4, layer: 2, decodeBudget: 512,
    warmSteps: 2, steps: 20, prefillRuns: 3, h2oLimitMs: 60000,
  };
}

export const PREFILL_IDS = ['prefill-none', 'prefill-streamingllm', 'prefill-snapkv', 'prefill-pyramidkv', 'prefill-chunkkv', 'prefill-shotkv', 'prefill-h2o'] as const;
export const DECODE_IDS = ['decode-dense', 'decode-dense-repeat', 'decode-quest', 'decode-quest-share', 'decode-dense-kept', 'decode-h2o', 'decode-streamingllm', 'decode-shotkv'] as const;
export const METHOD_IDS: readonly string[] = [...PREFILL_IDS, ...DECODE_IDS];
/** Rows a ratio needs besides the one named. */
const NEEDS: Record<string, string[]> = {
  'decode-h2o': ['decode-dense-kept'],
  'decode-quest': ['decode-dense', 'decode-dense-repeat'],
  'decode-quest-share': ['decode-dense'],
};

/**
 * Expands --method names: row ids, 'prefill', 'decode', 'all', or a method
 * name (h2o, quest, ...: every row of that method), plus the rows their
 * ratios compare with.
 */
export function selectMethodIds(names: readonly string[]): string[] {
  const want = new Set<string>();
  const methodOf = (id: string) => id.replace(/^(prefill|decode)-/, '').replace(/-share$/, '');
  for (const n of names) {
    if (n === 'all') METHOD_IDS.forEach((i) => want.add(i));
    else if (n === 'prefill') PREFILL_IDS.forEach((i) => want.add(i));
    else if (n === 'decode') DECODE_IDS.forEach((i) => want.add(i));
    else if (METHOD_IDS.includes(n)) want.add(n);
    else {
      const hits = METHOD_IDS.filter((i) => methodOf(i) === n);
      if (!hits.length)
        throw new KvsqRangeError(`bench: unknown method row '${n}': expected all, prefill, decode, a method name or one of ${METHOD_IDS.join(', ')}`);
      hits.forEach((i) => want.add(i));
    }
  }
  for (const i of [...want]) for (const d of NEEDS[i] ?? []) want.add(d);
  return METHOD_IDS.filter((i) => want.has(i));
}

// ------------------------------------------------------------------ helpers

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

/**
 * n random f16 values as bits, magnitudes in [1/32, 1), random sign (fast:
 * no f32 round trip for the 10^8 values of a 32K prompt).
 */
export function randomF16Bits(n: number): Uint16Array {
  const a = new Uint16Array(n);
  let x = (Math.random() * 0xffffffff) >>> 0 || 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    // sign (bit 15) and mantissa (bits 0-9) from x; exponent field 10..14
    a[i] = (x & 0x83ff) | ((10 + ((x >>> 16) % 5)) << 10);
  }
  return a;
}
const f16 = (shape: number[]) => Tensor.from(randomF16Bits(shape.reduce((a, b) => a * b, 1)), shape, { dtype: 'f16' });

interface Prompt {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  dispose(): void;
}
function prompt(s: MethodShape, L: number): Prompt {
  const q = f16([s.Hq, L, s.D]);
  const k = f16([s.Hkv, L, s.D]);
  const v = f16([s.Hkv, L, s.D]);
  return { q, k, v, dispose: () => [q, k, v].forEach((t) => t.dispose()) };
}

/**
 * Random f16 K or V of shape [...lead, Hkv, ...rest], or with `repeat`
 * [...lead, Hq, ...rest] with each KV head's values repeated Hq / Hkv times
 * (the layout of research code that repeats K/V for GQA; lead is [] or [1]).
 */
function randomKv(s: MethodShape, rest: number[], repeat: boolean, lead: number[] = []): Tensor {
  const n = rest.reduce((a, b) => a * b, 1);
  const bits = randomF16Bits(s.Hkv * n);
  if (!repeat) return Tensor.from(bits, [...lead, s.Hkv, ...rest], { dtype: 'f16' });
  const g = s.Hq / s.Hkv;
  const out = new Uint16Array(s.Hq * n);
  for (let h = 0; h < s.Hq; h++) out.set(bits.subarray(Math.floor(h / g) * n, (Math.floor(h / g) + 1) * n), h * n);
  return Tensor.from(out, [...lead, s.Hq, ...rest], { dtype: 'f16' });
}

function newCache(s: MethodShape, L: number, layers: number, extraTokens = 0): PagedKVCache {
  const perHead = Math.ceil((L + extraTokens) / s.P) + 2;
  return new PagedKVCache({ layers, kvHeads: s.Hkv, qHeads: s.Hq, headDim: s.D, dtype: 'f16', pageSize: s.P, pages: s.Hkv * perHead });
}

function keptPerHead(seq: Sequence, layer: number): number {
  const t = seq.stats().tokens[layer];
  return t.reduce((a, b) => a + b, 0) / t.length;
}

function methodOptions(s: MethodShape, name: string): MethodOptions {
  switch (name) {
    case 'h2o':
      return { heavy: s.heavy, recent: s.recent };
    case 'shotkv':
      return { shots: s.shots, prefillBudget: s.C };
    default:
      return { budget: s.C };
  }
}

// ------------------------------------------------------------------ prefill rows

interface PrefillTiming {
  ms: number;
  runs: number;
  times: number[];
  kept: number;
  memory: NonNullable<MethodRow['memory']>;
}

/** seq.prefill of one layer, `runs` times on fresh inputs; stops early once `stopAfterMs` is passed. */
function timePrefill(s: MethodShape, name: string, L: number, runs: number, stopAfterMs = Infinity): PrefillTiming {
  const times: number[] = [];
  let kept = 0;
  let memory: PrefillTiming['memory'] | undefined;
  for (let r = 0; r < runs; r++) {
    const p = prompt(s, L);
    const cache = newCache(s, L, s.layers);
    try {
      const m = name === 'none' ? { prefill: null, decode: null } : makeMethod(name, methodOptions(s, name));
      const seq = cache.addSequence({ prefill: m.prefill, decode: m.decode });
      const t0 = nowMs();
      seq.prefill(s.layer, p.q, p.k, p.v);
      times.push(nowMs() - t0);
      const st = seq.stats();
      const bpp = cache.stats().pages.bytesPerPage;
      kept = keptPerHead(seq, s.layer);
      memory = {
        bytesFull: st.bytesFull,
        bytesHeld: st.bytesHeld,
        bytesSaved: st.bytesSaved,
        freedPct: st.bytesFull ? (100 * st.bytesSaved) / st.bytesFull : 0,
        pagesFreed: st.bytesSaved / bpp,
        bytesPerPage: bpp,
      };
    } finally {
      cache.dispose();
      p.dispose();
    }
    if (times[times.length - 1] >= stopAfterMs) break;
  }
  return { ms: median(times), runs: times.length, times, kept, memory: memory! };
}

const secs = (ms: number) => (ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(1)} s`);
const shapeOf = (s: MethodShape, L: number) => `L${L} Hq${s.Hq} Hkv${s.Hkv} D${s.D} P${s.P}, layer ${s.layer} of ${s.layers}`;

function prefillParams(s: MethodShape, name: string): string {
  switch (name) {
    case 'none':
      return 'keep all';
    case 'h2o':
      return `heavy ${s.heavy} + recent ${s.recent}`;
    case 'shotkv':
      return `C ${s.C}, ${s.shots.length} shots of ${s.shots[0][1] - s.shots[0][0]} in [${s.shots[0][0]}, ${s.shots[s.shots.length - 1][1]})`;
    case 'pyramidkv':
      return `C ${s.C} (mean over layers)`;
    default:
      return `C ${s.C}`;
  }
}

export function prefillRows(s: MethodShape, ids: readonly string[], log: (x: string) => void): MethodRow[] {
  const rows: MethodRow[] = [];
  for (const id of ids) {
    if (!id.startsWith('prefill-')) continue;
    const name = id.slice('prefill-'.length);
    let L = s.L;
    let t: PrefillTiming;
    const notes: string[] = [];
    if (name === 'h2o') {
      // O(L^2): time at L / 4 and extrapolate by 16 before committing to L.
      const Ls = Math.max(1, s.L >> 2);
      log(`prefill h2o at L ${Ls} (O(L^2) probe) ...`);
      const small = timePrefill(s, name, Ls, s.prefillRuns);
      const est = 16 * small.ms;
      if (est < s.h2oLimitMs) {
        log(`prefill h2o at L ${s.L} (estimated ${secs(est)} per run) ...`);
        const big = timePrefill(s, name, s.L, s.prefillRuns, s.h2oLimitMs);
        if (big.times[0] < s.h2oLimitMs) {
          t = big;
          notes.push(`H2O prefill is O(L^2) (full causal column sums): ${secs(est)} estimated from L ${Ls} (< ${secs(s.h2oLimitMs)}), so measured at L ${s.L}`);
        } else {
          L = Ls;
          t = small;
          notes.push(`H2O prefill is O(L^2): 1 run at L ${s.L} took ${secs(big.times[0])} (>= ${secs(s.h2oLimitMs)}), so timed at L ${Ls}`);
        }
      } else {
        L = Ls;
        t = small;
        notes.push(`H2O prefill is O(L^2) (full causal column sums): at L ${s.L} about ${secs(est)} per run (16 x the L ${Ls} median) >= ${secs(s.h2oLimitMs)}, so timed at L ${Ls}`);
      }
    } else {
      log(`prefill ${name} at L ${L} ...`);
      t = timePrefill(s, name, L, s.prefillRuns);
    }
    if (name === 'shotkv') {
      const inShots = s.shots.reduce((n, [a, b]) => n + (b - a), 0);
      const always = L - inShots;
      if (always >= s.C) notes.push(`C counts every kept prompt token: the ${always} tokens outside the shots are always kept (> C ${s.C}), so no shot fits`);
    }
    if (name === 'pyramidkv') notes.push(`one layer: layer ${s.layer} of ${s.layers} keeps ${t.kept} (the pyramid's budget varies by layer, mean about C)`);
    rows.push({
      kind: 'prefill',
      id,
      method: name,
      shape: shapeOf(s, L),
      params: prefillParams(s, name),
      dtype: 'f16',
      L,
      ms: t.ms,
      runs: t.runs,
      tokensKept: t.kept,
      memory: t.memory,
      ...(notes.length ? { note: notes.join('; ') } : {}),
    });
  }
  return rows;
}

// ------------------------------------------------------------------ decode rows

/**
 * A stand-in for H2O's prefill at context L: the layout H2O leaves (per KV
 * head, `heavy` positions from [0, L - recent) plus the last `recent`) and
 * random f32 scores for the pool, without the O(L^2) column sums (about a
 * minute at L 32K on two cores). The decode step reads only the kept tokens
 * and their scores, so it costs the same as after the real prefill.
 */
class H2OLayout implements PrefillPolicy {
  readonly name = 'h2o-layout';
  readonly params = {};
  constructor(
    private readonly heavy: number,
    private readonly recent: number,
    private readonly withScores: boolean,
  ) {}
  select(ctx: PrefillContext): PrefillDecision {
    const L = ctx.seqLen;
    const older = L - this.recent;
    const kept: Int32Array[] = [];
    for (let j = 0; j < ctx.numKvHeads; j++) {
      // a random `heavy`-subset of [0, older), ascending (partial Fisher-Yates)
      const a = Int32Array.from({ length: older }, (_, i) => i);
      for (let i = 0; i < this.heavy; i++) {
        const r = i + Math.floor(Math.random() * (older - i));
        const x = a[i];
        a[i] = a[r];
        a[r] = x;
      }
      const heads = a.slice(0, this.heavy).sort();
      const out = new Int32Array(this.heavy + this.recent);
      out.set(heads, 0);
      for (let i = 0; i < this.recent; i++) out[this.heavy + i] = older + i;
      kept.push(out);
    }
    return {
      kept,
      scores: this.withScores ? Tensor.from(randomF32(ctx.numKvHeads * L, 0, 1), [ctx.numKvHeads, L]) : undefined,
    };
  }
}

interface DecodeCase {
  id: string;
  method: string;
  what: string;
  prefill: PrefillPolicy | null;
  decode: ReturnType<typeof makeMethod>['decode'];
  note?: string;
  /** K/V repeated to one head per query head (a cache of Hq KV heads) */
  repeatKv?: boolean;
}

function decodeCases(s: MethodShape): Record<string, () => DecodeCase> {
  const B = s.decodeBudget;
  const half = B >> 1;
  const shift = Math.round(s.warmSteps + (s.steps - 1) / 2);
  return {
    'decode-dense': () => ({ id: 'decode-dense', method: 'none', what: `dense over all ${s.L} (keep-all prefill, no decode policy)`, prefill: null, decode: null }),
    // The Quest paper's dense baseline: GQA served by repeating K/V, so dense
    // decode reads Hq / Hkv times the bytes of this library's GQA-native one.
    'decode-dense-repeat': () => ({
      id: 'decode-dense-repeat', method: 'none', repeatKv: true,
      what: `dense over all ${s.L} with K/V repeated to ${s.Hq} heads (GQA as research code serves it: ${s.Hq / s.Hkv}x the bytes)`,
      prefill: null, decode: null,
    }),
    'decode-quest': () => ({
      id: 'decode-quest', method: 'quest', what: `Quest budget ${B}, denseLayers 0, per query head, over all ${s.L}`,
      prefill: null, decode: makeMethod('quest', { budget: B, denseLayers: 0 }).decode,
    }),
    'decode-quest-share': () => ({
      id: 'decode-quest-share', method: 'quest', what: `Quest budget ${B}, denseLayers 0, share (per KV head), over all ${s.L}`,
      prefill: null, decode: makeMethod('quest', { budget: B, denseLayers: 0, share: true }).decode,
    }),
    // H2O attends B + 1 tokens every step (it evicts after attending); a
    // plain list grows by one per step, so it starts `shift` tokens short and
    // its median timed step attends the same B + 1.
    'decode-dense-kept': () => ({
      id: 'decode-dense-kept', method: 'none',
      what: `plain step over the same kept length (H2O's layout, ${half - shift} + ${half} at prefill, + 1 per step: the median step attends ${B + 1}, as H2O's), no decode policy`,
      prefill: new H2OLayout(half - shift, half, false), decode: null,
    }),
    'decode-h2o': () => ({
      id: 'decode-h2o', method: 'h2o', what: `H2O heavy ${half} + recent ${half}: attention + accumulation + eviction`,
      prefill: new H2OLayout(half, half, true), decode: new H2O({ heavy: half, recent: half }),
      note: `after a stand-in for H2O's prefill (H2O's kept layout, random scores: the O(L^2) column sums are timed in the prefill rows); the step reads only the kept tokens and their scores`,
    }),
    'decode-streamingllm': () => {
      const m = makeMethod('streamingllm', { budget: B });
      return { id: 'decode-streamingllm', method: 'streamingllm', what: `StreamingLLM ${B} (4 sinks), prefill and decode`, prefill: m.prefill, decode: m.decode };
    },
    'decode-shotkv': () => {
      const m = makeMethod('shotkv', { shots: s.shots, prefillBudget: s.C, decodeBudget: B });
      return {
        id: 'decode-shotkv', method: 'shotkv', what: `ShotKV prefill C ${s.C} (${s.shots.length} shots), decode budget ${B}: attention + accumulation + eviction scan`,
        prefill: m.prefill, decode: m.decode,
      };
    },
  };
}

export function decodeRows(s: MethodShape, ids: readonly string[], log: (x: string) => void): { rows: MethodRow[]; ratios: MethodRatio[] } {
  const want = ids.filter((i) => i.startsWith('decode-'));
  const rows: MethodRow[] = [];
  if (!want.length) return { rows, ratios: [] };
  const cases = decodeCases(s);
  // Every cache is built first (one shared prompt: the timed part is the step,
  // whose inputs are fresh each step), then the steps go round-robin over the
  // caches: every row sees the same machine load (the ratios compare rows),
  // and each step finds its layer's K/V out of the CPU caches, as in a model
  // whose other layers ran in between.
  log(`decode: a prompt of ${s.L} tokens, ${want.length} caches ...`);
  const p = prompt(s, s.L);
  const built: { c: DecodeCase; cache: PagedKVCache; seq: Sequence; times: number[] }[] = [];
  try {
    for (const id of want) {
      const c = cases[id]();
      const kvHeads = c.repeatKv ? s.Hq : s.Hkv;
      const cache = newCache({ ...s, Hkv: kvHeads }, s.L, 1, s.warmSteps + s.steps + s.P);
      built.push({ c, cache, seq: cache.addSequence({ prefill: c.prefill, decode: c.decode }), times: [] });
      const b = built[built.length - 1];
      if (c.repeatKv) {
        const rk = randomKv(s, [s.L, s.D], true);
        const rv = randomKv(s, [s.L, s.D], true);
        try {
          b.seq.prefill(0, p.q, rk, rv);
        } finally {
          rk.dispose();
          rv.dispose();
        }
      } else b.seq.prefill(0, p.q, p.k, p.v);
    }
    p.dispose();
    log(`decode: ${s.warmSteps} + ${s.steps} steps round-robin over ${want.join(', ')} ...`);
    for (let i = 0; i < s.warmSteps + s.steps; i++)
      for (const b of built) {
        const q = f16([1, s.Hq, s.D]);
        const k = randomKv(s, [s.D], b.c.repeatKv === true, [1]);
        const v = randomKv(s, [s.D], b.c.repeatKv === true, [1]);
        const t0 = nowMs();
        const o = b.cache.decode(0, [b.seq], q, k, v);
        const dt = nowMs() - t0;
        if (i >= s.warmSteps) b.times.push(dt);
        for (const t of [o, q, k, v]) t.dispose();
      }
    for (const { c, seq, times } of built)
      rows.push({
        kind: 'decode',
        id: c.id,
        method: c.method,
        shape: `context ${s.L}, Hq${s.Hq} Hkv${s.Hkv} D${s.D} P${s.P}, B1, 1 layer`,
        params: c.what,
        dtype: 'f16',
        L: s.L,
        ms: median(times),
        runs: times.length,
        tokensKept: keptPerHead(seq, 0),
        ...(c.note ? { note: c.note } : {}),
      });
  } finally {
    p.dispose();
    for (const b of built) b.cache.dispose();
  }
  const by = (id: string) => rows.find((r) => r.id === id);
  const ratios: MethodRatio[] = [];
  const h2o = by('decode-h2o');
  const plain = by('decode-dense-kept');
  if (h2o && plain)
    ratios.push({
      id: 'h2o-step-overhead',
      what: `H2O decode step / plain decode step over the same kept length (${s.decodeBudget} + the new token)`,
      value: h2o.ms / plain.ms,
      target: '<= 1.2',
      met: h2o.ms / plain.ms <= 1.2,
    });
  const dense = by('decode-dense');
  const repeated = by('decode-dense-repeat');
  const quest = by('decode-quest');
  if (repeated && quest)
    ratios.push({
      id: 'quest-speedup-repeated-kv',
      what: `dense decode over ${s.L} with K/V repeated (the Quest paper's baseline) / Quest per query head budget ${s.decodeBudget}`,
      value: repeated.ms / quest.ms,
    });
  for (const qid of ['decode-quest', 'decode-quest-share']) {
    const q = by(qid);
    if (q && dense)
      ratios.push({
        id: qid === 'decode-quest' ? 'quest-speedup' : 'quest-share-speedup',
        what: `dense decode over ${s.L} / Quest${qid.endsWith('share') ? ' (share)' : ''} budget ${s.decodeBudget} (denseLayers 0)`,
        value: dense.ms / q.ms,
        target: '>= 5',
        met: dense.ms / q.ms >= 5,
      });
  }
  return { rows, ratios };
}
