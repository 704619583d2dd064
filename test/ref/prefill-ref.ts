/**
 * Independent float64 references for the prefill methods of
 * docs/methods.md, written from the spec only: no import of
 * lib/policies or lib/ops, plain loops, float64 arithmetic throughout.
 *
 * Inputs are the values the cache really sees: when the cache stores f16 or
 * bf16, round q and k through that dtype first (see `rounded`), so the only
 * differences left against the library are its fp32 kernel arithmetic.
 *
 * Every method returns kept positions per KV head (ascending) together with
 * the score each position was ranked by (`rank[j][t]`, NaN where no ranking
 * was involved: the window, always-kept tokens), so a test can tell a genuine
 * disagreement from a near-tie that fp32 arithmetic may flip.
 */
import { Tensor } from '../../lib';

export type Reduce = 'mean' | 'sum' | 'max';
export type PoolMode = 'max' | 'avg';
type Arr = ArrayLike<number>;

export interface Dims {
  Hq: number;
  Hkv: number;
  L: number;
  D: number;
}

export interface RefResult {
  /** Kept positions per KV head, ascending. */
  kept: Int32Array[];
  /** Per KV head: the score position t was ranked by (NaN: not ranked). */
  rank: Float64Array[];
}

/** The values a tensor of `dtype` holds for f32 data (identity for f32). */
export function rounded(data: Float32Array, dtype: 'f32' | 'f16' | 'bf16'): Float32Array {
  if (dtype === 'f32') return data;
  const t = Tensor.from(data, [data.length], { dtype });
  try {
    return t.toFloat32();
  } finally {
    t.dispose();
  }
}

/** Budget in tokens: an integer count, or ceil(ratio * L) (methods.md "Notation"). */
export function budgetTokens(b: { budget?: number; ratio?: number }, L: number, dflt: number): number {
  if (b.ratio !== undefined) return Math.ceil(b.ratio * L);
  return b.budget ?? dflt;
}

function range(a: number, b: number): number[] {
  const out: number[] = [];
  for (let i = a; i < b; i++) out.push(i);
  return out;
}
function all(L: number, Hkv: number): RefResult {
  return {
    kept: Array.from({ length: Hkv }, () => Int32Array.from(range(0, L))),
    rank: Array.from({ length: Hkv }, () => new Float64Array(L).fill(NaN)),
  };
}
function sortedI32(x: Iterable<number>): Int32Array {
  return Int32Array.from([...x].sort((a, b) => a - b));
}

// ---------------------------------------------------------------- building blocks

/**
 * Window scores S [Hkv][L] (methods.md "Window scores"): the last w queries,
 * row i at position p = L - w + i sees keys t <= p; A_h[t] = sum_i softmax(z)[t];
 * group reduce over the g query heads of each KV head. With w = L this is the
 * H2O column sum of the full causal attention.
 */
export function windowScores(q: Arr, k: Arr, d: Dims, w: number, reduce: Reduce = 'mean', scale?: number): Float64Array[] {
  const { Hq, Hkv, L, D } = d;
  const g = Hq / Hkv;
  const s = scale ?? 1 / Math.sqrt(D);
  const A: Float64Array[] = [];
  const z = new Float64Array(L);
  for (let h = 0; h < Hq; h++) {
    const j = Math.floor(h / g);
    const a = new Float64Array(L);
    for (let i = 0; i < w; i++) {
      const p = L - w + i;
      const qo = (h * L + p) * D;
      let m = -Infinity;
      for (let t = 0; t <= p; t++) {
        const ko = (j * L + t) * D;
        let dot = 0;
        for (let x = 0; x < D; x++) dot += q[qo + x] * k[ko + x];
        z[t] = s * dot;
        if (z[t] > m) m = z[t];
      }
      let sum = 0;
      for (let t = 0; t <= p; t++) {
        z[t] = Math.exp(z[t] - m);
        sum += z[t];
      }
      for (let t = 0; t <= p; t++) a[t] += z[t] / sum;
    }
    A.push(a);
  }
  const S: Float64Array[] = [];
  for (let j = 0; j < Hkv; j++) {
    const r = new Float64Array(L);
    for (let t = 0; t < L; t++) {
      let acc = reduce === 'max' ? -Infinity : 0;
      for (let x = 0; x < g; x++) {
        const v = A[j * g + x][t];
        acc = reduce === 'max' ? Math.max(acc, v) : acc + v;
      }
      r[t] = reduce === 'mean' ? acc / g : acc;
    }
    S.push(r);
  }
  return S;
}

/** Pooling over x[0 .. n) (methods.md "Pooling"): kernel k odd, padding k/2. */
export function pool(x: Arr, n: number, kernel: number, mode: PoolMode): Float64Array {
  const r = Math.floor(kernel / 2);
  const out = new Float64Array(n);
  for (let t = 0; t < n; t++) {
    if (mode === 'max') {
      let m = -Infinity;
      for (let u = t - r; u <= t + r; u++) if (u >= 0 && u < n && x[u] > m) m = x[u];
      out[t] = m;
    } else {
      let s = 0;
      for (let u = t - r; u <= t + r; u++) if (u >= 0 && u < n) s += x[u];
      out[t] = s / kernel;
    }
  }
  return out;
}

/** Top-k of x[0 .. n): larger wins, equal scores: lower index wins. Ascending indices. */
export function topk(x: Arr, n: number, k: number): Int32Array {
  const idx = range(0, n);
  idx.sort((a, b) => (x[b] - x[a]) || a - b);
  return sortedI32(idx.slice(0, Math.max(0, Math.min(k, n))));
}

// ---------------------------------------------------------------- methods

export interface StreamingRefOptions {
  budget?: number;
  ratio?: number;
  sinks?: number;
}
/** StreamingLLM: the first `sinks` and the last C - sinks positions (all when L <= C). */
export function streamingRef(d: Dims, o: StreamingRefOptions): RefResult {
  const { L, Hkv } = d;
  const C = budgetTokens(o, L, 2048);
  const sinks = o.sinks ?? 4;
  if (L <= C) return all(L, Hkv);
  const kept = Int32Array.from([...range(0, sinks), ...range(L - (C - sinks), L)]);
  return { kept: Array.from({ length: Hkv }, () => kept.slice()), rank: Array.from({ length: Hkv }, () => new Float64Array(L).fill(NaN)) };
}

export interface WindowRefOptions {
  window?: number;
  gqa?: Reduce;
  scale?: number;
}
export interface PoolRefOptions {
  kernel?: number;
  pool?: PoolMode;
}

/** Per KV head: the top `keep` pooled prefix positions plus the window [L-w, L). */
function pooledSelect(q: Arr, k: Arr, d: Dims, w: number, o: WindowRefOptions & PoolRefOptions, keep: number): RefResult {
  const { L, Hkv } = d;
  const S = windowScores(q, k, d, w, o.gqa ?? 'mean', o.scale);
  const n = L - w;
  const kept: Int32Array[] = [];
  const rank: Float64Array[] = [];
  for (let j = 0; j < Hkv; j++) {
    const pooled = pool(S[j], n, o.kernel ?? 7, o.pool ?? 'max');
    const top = topk(pooled, n, keep);
    kept.push(Int32Array.from([...top, ...range(n, L)]));
    const r = new Float64Array(L).fill(NaN);
    r.set(pooled);
    rank.push(r);
  }
  return { kept, rank };
}

export interface SnapRefOptions extends WindowRefOptions, PoolRefOptions {
  budget?: number;
  ratio?: number;
}
/** SnapKV: L <= C keeps all; else top C - w pooled prefix positions plus the window, per KV head. */
export function snapkvRef(q: Arr, k: Arr, d: Dims, o: SnapRefOptions): RefResult {
  const C = budgetTokens(o, d.L, 2048);
  if (d.L <= C) return all(d.L, d.Hkv);
  const w = Math.min(o.window ?? 32, d.L);
  return pooledSelect(q, k, d, w, o, C - w);
}

export interface PyramidRefOptions extends SnapRefOptions {
  beta?: number;
}
/** PyramidKV prefix capacity of `layer` (methods.md formula); null: keep all. */
export function pyramidCap(C: number, w: number, L: number, layer: number, NL: number, beta = 20): number | null {
  if (L < C) return null;
  const b = C - w;
  if (L < 2 * b) return b;
  let min = Math.floor(b / beta);
  let max = 2 * b - min;
  if (max >= L - w) {
    max = L - w;
    min = 2 * b - max;
  }
  const step = NL > 1 ? Math.floor((max - min) / (NL - 1)) : 0;
  return max - layer * step;
}
export function pyramidkvRef(q: Arr, k: Arr, d: Dims, layer: number, NL: number, o: PyramidRefOptions): RefResult {
  const C = budgetTokens(o, d.L, 2048);
  const w = Math.min(o.window ?? 32, d.L);
  const cap = pyramidCap(C, w, d.L, layer, NL, o.beta ?? 20);
  if (cap === null) return all(d.L, d.Hkv);
  return pooledSelect(q, k, d, w, o, cap);
}

export interface ChunkRefOptions extends WindowRefOptions {
  budget?: number;
  ratio?: number;
  chunk?: number;
  reuse?: number;
}
/**
 * ChunkKV for one layer that scores (no reuse): chunk score = sum over KV
 * heads and chunk positions of S; top floor((C - w) / c) chunks plus the
 * window, the same positions for every head. rank[t] = the chunk's score.
 */
export function chunkkvRef(q: Arr, k: Arr, d: Dims, o: ChunkRefOptions): RefResult {
  const { L, Hkv } = d;
  const C = budgetTokens(o, L, 2048);
  if (L <= C) return all(L, Hkv);
  const w = Math.min(o.window ?? 32, L);
  const c = o.chunk ?? 10;
  const n = L - w;
  const nChunks = Math.floor(Math.max(0, C - w) / c);
  const rank = new Float64Array(L).fill(NaN);
  const kept: number[] = [];
  if (n > 0 && nChunks > 0) {
    const S = windowScores(q, k, d, w, o.gqa ?? 'mean', o.scale);
    const m = Math.ceil(n / c);
    const cs = new Float64Array(m);
    for (let ch = 0; ch < m; ch++)
      for (let j = 0; j < Hkv; j++) for (let t = ch * c; t < Math.min(n, (ch + 1) * c); t++) cs[ch] += S[j][t];
    for (let t = 0; t < n; t++) rank[t] = cs[Math.floor(t / c)];
    for (const ch of topk(cs, m, nChunks)) kept.push(...range(ch * c, Math.min(n, (ch + 1) * c)));
  }
  kept.push(...range(n, L));
  return { kept: Array.from({ length: Hkv }, () => Int32Array.from(kept)), rank: Array.from({ length: Hkv }, () => rank.slice()) };
}
/** ChunkKV over all layers with index reuse N: layer l reuses layer l - l % N. */
export function chunkkvLayersRef(layers: { q: Arr; k: Arr }[], d: Dims, o: ChunkRefOptions): RefResult[] {
  const N = o.reuse ?? 1;
  const out: RefResult[] = [];
  for (let l = 0; l < layers.length; l++) {
    const src = l - (l % N);
    out.push(src === l ? chunkkvRef(layers[l].q, layers[l].k, d, o) : out[src]);
  }
  return out;
}

export interface ShotRefOptions extends WindowRefOptions {
  shots: ReadonlyArray<readonly [number, number]>;
  prefillBudget?: number;
  prefillRatio?: number;
}
/**
 * ShotKV prefill: token score = window scores summed over KV heads; shot
 * score = mean over its tokens; shots visited best first (ties: earlier shot)
 * and kept whole when they fit in what remains of C_prefill, which counts the
 * always-kept tokens (outside every shot). Same positions for every head.
 * Also returns the shot scores and the visiting order.
 */
export function shotkvRef(q: Arr, k: Arr, d: Dims, o: ShotRefOptions): RefResult & { shotScores: number[]; order: number[] } {
  const { L, Hkv } = d;
  const cap = o.prefillRatio !== undefined ? Math.ceil((1 - o.prefillRatio) * L) : o.prefillBudget ?? 2048;
  const w = Math.min(o.window ?? 32, L);
  const S = windowScores(q, k, d, w, o.gqa ?? 'mean', o.scale);
  const tok = new Float64Array(L);
  for (let j = 0; j < Hkv; j++) for (let t = 0; t < L; t++) tok[t] += S[j][t];
  const shotScores = o.shots.map(([a, b]) => {
    let s = 0;
    for (let t = a; t < b; t++) s += tok[t];
    return s / (b - a);
  });
  const order = range(0, o.shots.length).sort((x, y) => shotScores[y] - shotScores[x] || o.shots[x][0] - o.shots[y][0]);
  const inShot = new Uint8Array(L);
  for (const [a, b] of o.shots) inShot.fill(1, a, b);
  let always = 0;
  for (let t = 0; t < L; t++) if (!inShot[t]) always++;
  let remaining = cap - always;
  const keep = new Uint8Array(L);
  for (let t = 0; t < L; t++) if (!inShot[t]) keep[t] = 1;
  for (const i of order) {
    const [a, b] = o.shots[i];
    if (b - a <= remaining) {
      keep.fill(1, a, b);
      remaining -= b - a;
    }
  }
  const kept = Int32Array.from(range(0, L).filter((t) => keep[t]));
  const rank = new Float64Array(L).fill(NaN);
  o.shots.forEach(([a, b], i) => rank.fill(shotScores[i], a, b));
  return { kept: Array.from({ length: Hkv }, () => kept.slice()), rank: Array.from({ length: Hkv }, () => rank.slice()), shotScores, order };
}

export interface H2ORefOptions {
  heavy?: number;
  recent?: number;
  gqa?: Reduce;
  scale?: number;
}
/** Heavy/recent in tokens: a ratio in (0, 1) is ceil(ratio * L), else a count. */
export function h2oSizes(o: H2ORefOptions, L: number): [number, number] {
  const t = (x: number) => (x < 1 ? Math.ceil(x * L) : x);
  return [t(o.heavy ?? 0.1), t(o.recent ?? 0.1)];
}
/**
 * H2O prefill: S = group-reduced column sums of the full causal attention;
 * L <= heavy + recent keeps all; else [L - recent, L) plus the top `heavy`
 * of S over [0, L - recent), per KV head. Also returns S.
 */
export function h2oRef(q: Arr, k: Arr, d: Dims, o: H2ORefOptions): RefResult & { S: Float64Array[] } {
  const { L, Hkv } = d;
  const [heavy, recent] = h2oSizes(o, L);
  const S = windowScores(q, k, d, L, o.gqa ?? 'mean', o.scale);
  if (L <= heavy + recent) return { ...all(L, Hkv), S };
  const older = L - recent;
  const kept: Int32Array[] = [];
  const rank: Float64Array[] = [];
  for (let j = 0; j < Hkv; j++) {
    kept.push(Int32Array.from([...topk(S[j], older, heavy), ...range(older, L)]));
    const r = new Float64Array(L).fill(NaN);
    r.set(S[j].subarray(0, older));
    rank.push(r);
  }
  return { kept, rank, S };
}

// ---------------------------------------------------------------- comparison

/**
 * Differences between the library's kept positions and the reference's, per
 * head, that are not explained by a near-tie: a position only the library
 * keeps (x) and one only the reference keeps (y) are a near-tie when their
 * reference scores differ, by at most `rel` of the larger magnitude (plus
 * `abs`). Exactly equal reference scores must follow the lower-index rule,
 * so they never excuse a difference. Returns human-readable problems ([] = ok)
 * and the count of excused swaps.
 */
export function compareKept(got: Int32Array[], ref: RefResult, rel = 1e-5, abs = 1e-30): { problems: string[]; excused: number } {
  const problems: string[] = [];
  let excused = 0;
  if (got.length !== ref.kept.length) return { problems: [`heads: got ${got.length}, expected ${ref.kept.length}`], excused };
  for (let j = 0; j < got.length; j++) {
    const g = Array.from(got[j]);
    for (let i = 1; i < g.length; i++) if (g[i] <= g[i - 1]) problems.push(`head ${j}: not ascending at ${i}`);
    const gs = new Set(g);
    const rs = new Set(ref.kept[j]);
    if (gs.size !== rs.size) {
      problems.push(`head ${j}: kept ${gs.size} positions, expected ${rs.size}`);
      continue;
    }
    const onlyGot = g.filter((t) => !rs.has(t));
    const onlyRef = Array.from(ref.kept[j]).filter((t) => !gs.has(t));
    const r = ref.rank[j];
    for (const x of onlyGot)
      for (const y of onlyRef) {
        const a = r[x];
        const b = r[y];
        if (Number.isNaN(a) || Number.isNaN(b) || a === b || Math.abs(a - b) > rel * Math.max(Math.abs(a), Math.abs(b)) + abs) {
          problems.push(`head ${j}: kept ${x} (ref score ${a}) instead of ${y} (ref score ${b})`);
          if (problems.length > 20) return { problems, excused };
        }
      }
    excused += onlyGot.length;
  }
  return { problems, excused };
}
