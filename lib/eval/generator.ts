/**
 * Seeded synthetic traces whose attention has the structure real LLM
 * attention has (docs/eval-traces.md gives every formula):
 *   - attention sinks on positions 0 .. sinks-1,
 *   - recency (keys are a drifting AR(1) walk, queries sit near the current key),
 *   - heavy hitters (about 2% of positions with a large key component along a
 *     direction that every query of the KV group has a component along),
 *   - needles (planted key/value pairs retrieved by specific decode-step
 *     queries and, for some, by observation-window queries),
 *   - GQA groups (the g query heads of a KV head share structure and noise),
 *   - RoPE (rotate-half, pairs (i, i + D/2)) on q and k at their positions,
 *   - few-shot segments (metadata.shots) inside which the walk is continuous.
 *
 * Same options -> identical bytes: a splitmix32-seeded mulberry32 stream per
 * (purpose, layer, head) and Box-Muller normals, no Math.random anywhere.
 * The default size (4 layers, 32/8 heads, D 128, L 4096, 16 decode steps) is
 * 386 MiB of f32 and takes about 1.5 s of CPU to generate.
 */
import { ArgumentError, KvsqRangeError, show } from '../errors';
import type { SafetensorsEntry } from '../io/safetensors';
import type { Trace } from '../trace';

/** Logit-scale strengths of the planted components (see docs/eval-traces.md). */
export interface GeneratorGains {
  /** Logit boost of a sink key for an average query at the last layer (default 8; layer 0 gets half). */
  sink: number;
  /** Logit boost of an average heavy-hitter key for an average query (default 3). */
  heavy: number;
  /** Logit of a query's own-position key from the shared walk, before RoPE decorrelation (default 6). */
  recency: number;
  /** Logit of a needle key for a query that asks for it (default 16). */
  needle: number;
  /** Standard deviation of the query-key noise logit (default 1). */
  noise: number;
}

export interface GeneratorOptions {
  /** PRNG seed, an integer (default 1). */
  seed?: number;
  /** Layers (default 4: "an 8B model with fewer layers"). */
  layers?: number;
  /** Query heads (default 32). */
  qHeads?: number;
  /** KV heads (default 8; must divide qHeads). */
  kvHeads?: number;
  /** Head dimension, even, >= 8 (default 128). */
  headDim?: number;
  /** Prompt length L (default 4096). */
  seqLen?: number;
  /** Decode steps T at positions L, L+1, ... (default 16; 0 = none). */
  decodeSteps?: number;
  /** Attention sinks at positions 0 .. sinks-1 (default 4). */
  sinks?: number;
  /** Planted needles (default 8; fewer when the prompt has no room). */
  needles?: number;
  /** Few-shot segments in the middle of the prompt (default 6; 0 = no metadata.shots). */
  shots?: number;
  /** RoPE base (default 10000). */
  ropeTheta?: number;
  /** Fraction of prompt positions that are heavy hitters (default 0.02). */
  heavyFraction?: number;
  /** Observation window: the last `window` prompt queries may ask for needles; needles lie before L - 2*window (default 32). */
  window?: number;
  /** false: return the vectors before RoPE (the same ones the default rotates; for tests and inspection). Default true. */
  rope?: boolean;
  /** Strengths of the planted components. */
  gains?: Partial<GeneratorGains>;
}

export interface NeedleTruth {
  /** Prompt position of the needle key/value. */
  position: number;
  layer: number;
  kvHead: number;
  /** Decode steps whose queries (all g heads of the group) ask for it, ascending. */
  steps: number[];
  /** True when some observation-window queries ask for it. */
  windowQueried: boolean;
  /** The prompt positions (inside the last `window`) whose queries ask for it, ascending. */
  windowQueries: number[];
}

export interface TraceTruth {
  sinks: number;
  needles: NeedleTruth[];
  /** Heavy-hitter positions, ascending (the same at every layer and KV head). */
  heavy: number[];
  /** Few-shot segments [start, end), ascending and disjoint (also in trace.metadata.shots). */
  shots: Array<[number, number]>;
  /** The observation window used for window-queried needles. */
  window: number;
  /** The effective options (defaults filled in). */
  options: Required<Omit<GeneratorOptions, 'gains'>> & { gains: GeneratorGains };
}

export const DEFAULT_GAINS: Readonly<GeneratorGains> = Object.freeze({ sink: 8, heavy: 3, recency: 6, needle: 16, noise: 1 });

// Math functions as module constants: inside a vm context (jest) every global
// lookup in a hot loop goes through the context's interceptors, 10x slower.
const { imul, exp, cos, sin, sqrt, log, max, floor, pow } = Math;

// ---------------------------------------------------------------------------
// PRNG: splitmix32 to seed, mulberry32 to draw, Box-Muller for normals.

function mix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  x = imul(x ^ (x >>> 16), 0x85ebca6b);
  x = imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Inverse standard-normal CDF (Acklam's rational approximation, relative error < 1.2e-9). */
function normalQuantile(p: number): number {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716, 2.506628277459239];
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572];
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = sqrt(-2 * log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  if (p > 1 - lo) return -normalQuantile(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/** NORMAL_TABLE[i] = quantile((i + 0.5) / 2^16), then rescaled to unit variance. */
const NORMAL_TABLE = (() => {
  const n = 65536;
  const t = new Float64Array(n);
  let ss = 0;
  for (let i = 0; i < n; i++) {
    t[i] = normalQuantile((i + 0.5) / n);
    ss += t[i] * t[i];
  }
  const f = 1 / sqrt(ss / n);
  for (let i = 0; i < n; i++) t[i] *= f;
  return t;
})();

class Rng {
  private s: number;
  private spare = 0;
  private hasSpare = false;
  /** A stream for (seed, tags...): streams for different tags are independent. */
  constructor(seed: number, ...tags: number[]) {
    let h = mix32(seed | 0);
    h = mix32(h ^ floor(seed / 2 ** 32));
    for (const t of tags) h = mix32(h ^ mix32(t));
    this.s = h;
  }
  /** Uniform 32-bit integer (mulberry32). */
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) | 0);
    t = imul(t ^ (t >>> 15), t | 1);
    t ^= t + imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /**
   * dst[off .. off+n) = mul * bulk normals for the noise terms: two per
   * 32-bit draw, each the standard-normal quantile of one of 2^16
   * equal-probability cells (|x| <= 4.2, rescaled to unit variance); about
   * 10x faster than Box-Muller.
   */
  fillNormal(dst: Float64Array, off: number, n: number, mul: number): void {
    let st = this.s;
    const tab = NORMAL_TABLE;
    for (let i = 0; i < n; i += 2) {
      let t = (st = (st + 0x6d2b79f5) | 0);
      t = imul(t ^ (t >>> 15), t | 1);
      t ^= t + imul(t ^ (t >>> 7), t | 61);
      const x = (t ^ (t >>> 14)) >>> 0;
      dst[off + i] = mul * tab[x & 0xffff];
      if (i + 1 < n) dst[off + i + 1] = mul * tab[x >>> 16];
    }
    this.s = st;
  }
  /** Uniform in [0, 1). */
  next(): number {
    return this.u32() / 4294967296;
  }
  int(n: number): number {
    return floor(this.next() * n);
  }
  /** Standard normal (Box-Muller, both outputs used). */
  gauss(): number {
    if (this.hasSpare) {
      this.hasSpare = false;
      return this.spare;
    }
    const u = 1 - this.next(); // (0, 1]
    const r = sqrt(-2 * log(u));
    const a = 2 * Math.PI * this.next();
    this.spare = r * sin(a);
    this.hasSpare = true;
    return r * cos(a);
  }
  /** k distinct items of xs (partial Fisher-Yates; xs is shuffled in place). */
  sample<T>(xs: T[], k: number): T[] {
    k = Math.min(k, xs.length);
    for (let i = 0; i < k; i++) {
      const j = i + this.int(xs.length - i);
      const tmp = xs[i];
      xs[i] = xs[j];
      xs[j] = tmp;
    }
    return xs.slice(0, k);
  }
}

// Stream purposes.
const S_PLAN = 1;
const S_GROUP = 2;
const S_QHEAD = 3;
const S_DIRS = 4;

// ---------------------------------------------------------------------------
// RoPE

function invFreqs(D: number, theta: number): Float64Array {
  const half = D / 2;
  const f = new Float64Array(half);
  for (let i = 0; i < half; i++) f[i] = pow(theta, (-2 * i) / D);
  return f;
}

/**
 * RoPE at position `pos`, rotate-half convention (pairs (i, i + D/2), angle
 * pos * theta^(-2i/D)): out[i] = x[i] cos - x[i+D/2] sin, out[i+D/2] =
 * x[i+D/2] cos + x[i] sin. Returns a new Float64Array (pos may be negative).
 */
export function applyRope(x: ArrayLike<number>, pos: number, theta = 10000): Float64Array {
  const D = x.length;
  if (D % 2) throw new ArgumentError(`applyRope: dimension ${D} is odd`);
  const half = D / 2;
  const out = new Float64Array(D);
  for (let i = 0; i < half; i++) {
    const a = pos * pow(theta, (-2 * i) / D);
    const c = cos(a);
    const s = sin(a);
    const x1 = x[i];
    const x2 = x[i + half];
    out[i] = x1 * c - x2 * s;
    out[i + half] = x2 * c + x1 * s;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Options

type Resolved = TraceTruth['options'];

function resolve(o: GeneratorOptions): Resolved {
  if (o === null || typeof o !== 'object') throw new ArgumentError('generateTrace: options must be an object');
  const int = (name: keyof GeneratorOptions, def: number, lo: number, hi = 2 ** 31 - 1): number => {
    const v = o[name] === undefined ? def : o[name];
    if (typeof v !== 'number' || !Number.isInteger(v)) throw new ArgumentError(`generateTrace: ${name} must be an integer, got ${show(v)}`);
    if (v < lo || v > hi) throw new KvsqRangeError(`generateTrace: ${name} must be in [${lo}, ${hi}], got ${v}`);
    return v;
  };
  const num = (name: string, v: unknown, def: number, lo: number, hi: number): number => {
    const x = v === undefined ? def : v;
    if (typeof x !== 'number' || !Number.isFinite(x)) throw new ArgumentError(`generateTrace: ${name} must be a finite number, got ${show(x)}`);
    if (x < lo || x > hi) throw new KvsqRangeError(`generateTrace: ${name} must be in [${lo}, ${hi}], got ${x}`);
    return x;
  };
  const seed = int('seed', 1, -(2 ** 53) + 1, 2 ** 53 - 1);
  const layers = int('layers', 4, 1, 1024);
  const qHeads = int('qHeads', 32, 1, 1024);
  const kvHeads = int('kvHeads', Math.min(8, qHeads), 1, 1024);
  if (qHeads % kvHeads) throw new KvsqRangeError(`generateTrace: qHeads ${qHeads} is not a multiple of kvHeads ${kvHeads}`);
  const headDim = int('headDim', 128, 8, 4096);
  if (headDim % 2) throw new KvsqRangeError(`generateTrace: headDim must be even, got ${headDim}`);
  const seqLen = int('seqLen', 4096, 1, 2 ** 24);
  const decodeSteps = int('decodeSteps', 16, 0, 2 ** 16);
  const sinks = int('sinks', Math.min(4, seqLen), 0, seqLen);
  const needles = int('needles', 8, 0, 2 ** 16);
  const shots = int('shots', 6, 0, 2 ** 16);
  const window = int('window', 32, 1, 2 ** 24);
  const ropeTheta = num('ropeTheta', o.ropeTheta, 10000, 1, 1e12);
  const heavyFraction = num('heavyFraction', o.heavyFraction, 0.02, 0, 1);
  if (o.rope !== undefined && typeof o.rope !== 'boolean') throw new ArgumentError('generateTrace: rope must be a boolean');
  const gIn = o.gains ?? {};
  if (gIn === null || typeof gIn !== 'object') throw new ArgumentError('generateTrace: gains must be an object');
  const gains: GeneratorGains = {
    sink: num('gains.sink', gIn.sink, DEFAULT_GAINS.sink, 0, 100),
    heavy: num('gains.heavy', gIn.heavy, DEFAULT_GAINS.heavy, 0, 100),
    recency: num('gains.recency', gIn.recency, DEFAULT_GAINS.recency, 0, 100),
    needle: num('gains.needle', gIn.needle, DEFAULT_GAINS.needle, 0, 100),
    noise: num('gains.noise', gIn.noise, DEFAULT_GAINS.noise, 0, 100),
  };
  const bytes = 4 * layers * headDim * (seqLen + decodeSteps) * (qHeads + 2 * kvHeads);
  if (bytes > 2 ** 32) throw new KvsqRangeError(`generateTrace: the trace would take ${(bytes / 2 ** 30).toFixed(1)} GiB (limit 4 GiB)`);
  return { seed, layers, qHeads, kvHeads, headDim, seqLen, decodeSteps, sinks, needles, shots, ropeTheta, heavyFraction, window, rope: o.rope ?? true, gains };
}

// ---------------------------------------------------------------------------
// Plan: shots, heavy hitters, needles (positions, heads, querying rows).

interface Plan {
  shots: Array<[number, number]>;
  heavy: number[];
  needles: NeedleTruth[];
  window: number;
}

function makePlan(o: Resolved): Plan {
  const rng = new Rng(o.seed, S_PLAN);
  const { seqLen: L, sinks, decodeSteps: T } = o;
  const window = Math.min(o.window, L);

  // Shots: the middle region [a, b) cut into contiguous segments of similar length.
  const shots: Array<[number, number]> = [];
  const a = max(sinks, floor(L / 8));
  const b = L - max(2 * window, floor(L / 8));
  const nShots = Math.min(o.shots, max(0, floor((b - a) / 4)));
  if (nShots > 0) {
    const len = (b - a) / nShots;
    const cuts = [a];
    for (let i = 1; i < nShots; i++) cuts.push(Math.round(a + (i + 0.6 * (rng.next() - 0.5)) * len));
    cuts.push(b);
    for (let i = 0; i < nShots; i++) shots.push([cuts[i], cuts[i + 1]]);
  }

  // Needles: prompt positions in [sinks, L - 2*window), away from each other.
  const lo = sinks;
  const hi = L - 2 * window;
  const cand: number[] = [];
  for (let t = lo; t < hi; t++) cand.push(t);
  const nNeedles = Math.min(o.needles, cand.length);
  const positions = rng.sample(cand, nNeedles).sort((x, y) => x - y);
  const isNeedle = new Set(positions);

  // Heavy hitters: round(heavyFraction * L) positions in [sinks, L - window), not needles.
  const hcand: number[] = [];
  for (let t = sinks; t < L - window; t++) if (!isNeedle.has(t)) hcand.push(t);
  const heavy = rng.sample(hcand, Math.round(o.heavyFraction * L)).sort((x, y) => x - y);

  // Heads: a shuffled cycle over all (layer, kvHead) pairs, so needles share a head only when there are more needles than heads.
  const pairs: Array<[number, number]> = [];
  for (let l = 0; l < o.layers; l++) for (let j = 0; j < o.kvHeads; j++) pairs.push([l, j]);
  rng.sample(pairs, pairs.length);
  const usedSteps = new Map<string, Set<number>>();
  const usedWin = new Map<string, Set<number>>();
  const order = rng.sample(Array.from({ length: nNeedles }, (_, i) => i), nNeedles);
  const winQueried = new Set(order.slice(0, Math.ceil(nNeedles / 2)));
  const needles: NeedleTruth[] = positions.map((position, i) => {
    const [layer, kvHead] = pairs[i % pairs.length];
    const key = `${layer},${kvHead}`;
    if (!usedSteps.has(key)) usedSteps.set(key, new Set());
    if (!usedWin.has(key)) usedWin.set(key, new Set());
    // Decode steps: 1 or 2, never a step that already asks for another needle of the same head.
    const steps: number[] = [];
    const used = usedSteps.get(key)!;
    const free: number[] = [];
    for (let s = 0; s < T; s++) if (!used.has(s)) free.push(s);
    for (const s of rng.sample(free, rng.next() < 0.5 ? 1 : 2)) {
      steps.push(s);
      used.add(s);
    }
    steps.sort((x, y) => x - y);
    // Observation-window queries: half the needles (all when there are no decode steps), 1 or 2 rows.
    const windowQueries: number[] = [];
    if (winQueried.has(i) || steps.length === 0) {
      const uw = usedWin.get(key)!;
      const wfree: number[] = [];
      for (let p = L - window; p < L; p++) if (!uw.has(p)) wfree.push(p);
      for (const p of rng.sample(wfree, rng.next() < 0.5 ? 1 : 2)) {
        windowQueries.push(p);
        uw.add(p);
      }
      windowQueries.sort((x, y) => x - y);
    }
    return { position, layer, kvHead, steps, windowQueried: windowQueries.length > 0, windowQueries };
  });
  return { shots, heavy, needles, window };
}

// ---------------------------------------------------------------------------
// Generation

/** Unit vector with gaussian entries on the dims of pairs [p0, p1) (both halves). */
function unitOnPairs(rng: Rng, D: number, p0: number, p1: number): Float64Array {
  const v = new Float64Array(D);
  const half = D / 2;
  let n = 0;
  for (let i = p0; i < p1; i++) {
    v[i] = rng.gauss();
    v[i + half] = rng.gauss();
    n += v[i] * v[i] + v[i + half] * v[i + half];
  }
  n = sqrt(n) || 1;
  for (let d = 0; d < D; d++) v[d] /= n;
  return v;
}

/** Rotate x (pre-RoPE frame) by angle pos * invFreq[i] on pair i, adding scale * result into out. */
function addRotated(out: Float64Array, x: Float64Array, pos: number, inv: Float64Array, scale: number, p0 = 0, p1 = inv.length): void {
  const half = inv.length;
  for (let i = p0; i < p1; i++) {
    const ang = pos * inv[i];
    const c = cos(ang);
    const s = sin(ang);
    const x1 = x[i];
    const x2 = x[i + half];
    out[i] += scale * (x1 * c - x2 * s);
    out[i + half] += scale * (x2 * c + x1 * s);
  }
}

// Hot loops as small monomorphic functions (V8 optimises them well).

function rotateRow(src: Float64Array, cosT: Float64Array, sinT: Float64Array, b: number, half: number, dst: Float32Array, off: number): void {
  for (let i = 0; i < half; i++) {
    const c = cosT[b + i];
    const s = sinT[b + i];
    const x1 = src[i];
    const x2 = src[i + half];
    dst[off + i] = x1 * c - x2 * s;
    dst[off + i + half] = x2 * c + x1 * s;
  }
}

function copyRow(src: Float64Array, D: number, dst: Float32Array, off: number): void {
  for (let d = 0; d < D; d++) dst[off + d] = src[d];
}

/** W[o1] = rho * W[o0] + innov * nz on the content pairs [0, cPairs) (o1 = o0: a fresh draw). */
function walkStep(W: Float64Array, o1: number, o0: number, rho: number, innov: number, nz: Float64Array, cPairs: number, half: number): void {
  for (let i = 0; i < cPairs; i++) {
    W[o1 + i] = rho * (o1 === o0 ? 0 : W[o0 + i]) + innov * nz[i];
    W[o1 + i + half] = rho * (o1 === o0 ? 0 : W[o0 + i + half]) + innov * nz[i + half];
  }
}

function queryBase(row: Float64Array, W: Float64Array, Z: Float64Array, wo: number, aR: number, sigQg: number, nz: Float64Array, D: number): void {
  for (let d = 0; d < D; d++) row[d] = aR * W[wo + d] + sigQg * Z[wo + d] + nz[d];
}

/**
 * A synthetic trace and what was planted in it. F32 data; q/k/v for the
 * prompt, dq/dk/dv for `decodeSteps` steps (omitted when 0).
 */
export function generateTrace(opts: GeneratorOptions = {}): { trace: Trace; truth: TraceTruth } {
  const o = resolve(opts);
  const { layers: NL, qHeads: Hq, kvHeads: Hkv, headDim: D, seqLen: L, decodeSteps: T, sinks, ropeTheta } = o;
  const g = Hq / Hkv;
  const N = L + T;
  const half = D / 2;
  const plan = makePlan(o);
  const scale = 1 / sqrt(D);
  const gains = o.gains;

  // Dim bands by RoPE pair (pair i has angle theta^(-2i/D) per token):
  //   heavy pairs [half - nLow, half): the slowest, nearly position-free;
  //   sink pairs [half - 2 nLow, half - nLow);  content pairs [0, half - 2 nLow).
  const nLow = max(1, Math.round(D / 32));
  const hp0 = half - nLow;
  const sp0 = half - 2 * nLow;
  const cPairs = sp0; // content pairs [0, sp0)
  const Dc = 2 * cPairs;

  // RoPE tables for positions 0 .. N-1.
  const inv = invFreqs(D, ropeTheta);
  const cosT = new Float64Array(N * half);
  const sinT = new Float64Array(N * half);
  for (let p = 0; p < N; p++)
    for (let i = 0; i < half; i++) {
      const a = p * inv[i];
      cosT[p * half + i] = cos(a);
      sinT[p * half + i] = sin(a);
    }
  const rope = o.rope;
  const ropeInto = (src: Float64Array, pos: number, dst: Float32Array, off: number) =>
    rope ? rotateRow(src, cosT, sinT, pos * half, half, dst, off) : copyRow(src, D, dst, off);

  // Walk resets: position 0, each shot start, the end of the shot region.
  const resets = new Set<number>([0]);
  for (const [s0, e0] of plan.shots) {
    resets.add(s0);
    resets.add(e0);
  }
  const heavySet = new Set(plan.heavy);

  const q = new Float32Array(NL * Hq * L * D);
  const k = new Float32Array(NL * Hkv * L * D);
  const v = new Float32Array(NL * Hkv * L * D);
  const dq = new Float32Array(NL * Hq * T * D);
  const dk = new Float32Array(NL * Hkv * T * D);
  const dv = new Float32Array(NL * Hkv * T * D);

  const W = new Float64Array(N * D); // walk, per group
  const Z = new Float64Array(N * D); // shared query noise, per group
  const row = new Float64Array(D);
  const nz = new Float64Array(D);

  // Amplitudes: a component with key amplitude A and query amplitude B adds scale*A*B to the logit.
  const sinkAmp = (l: number) => sqrt((gains.sink * (NL > 1 ? 0.5 + (0.5 * l) / (NL - 1) : 1)) / scale);
  const heavyAmp = sqrt(gains.heavy / scale);
  const needleAmp = sqrt(gains.needle / scale);
  const walkAmp = Dc > 0 ? sqrt(gains.recency / (scale * Dc)) : 0;
  const sigK = sqrt(gains.noise);
  const sigQg = 0.8 * sqrt(gains.noise);
  const sigQh = 0.6 * sqrt(gains.noise);
  const TAUS = [8, 32, 128];

  for (let l = 0; l < NL; l++) {
    const As = sinkAmp(l);
    for (let j = 0; j < Hkv; j++) {
      const rg = new Rng(o.seed, S_GROUP, l, j);
      const rd = new Rng(o.seed, S_DIRS, l, j);
      const eS = unitOnPairs(rd, D, sp0, hp0);
      const eH = unitOnPairs(rd, D, hp0, half);
      const mine = plan.needles.filter((nd) => nd.layer === l && nd.kvHead === j);
      const needleAt = new Map<number, Float64Array>(); // prompt position -> unit key direction (content pairs)
      for (const nd of mine) needleAt.set(nd.position, unitOnPairs(rd, D, 0, max(1, cPairs)));
      // Rows whose queries ask for a needle: position -> [needle key position, direction].
      const asks = new Map<number, Array<[number, Float64Array]>>();
      for (const nd of mine) {
        const u = needleAt.get(nd.position)!;
        for (const p of [...nd.windowQueries, ...nd.steps.map((s) => L + s)]) {
          if (!asks.has(p)) asks.set(p, []);
          asks.get(p)!.push([nd.position, u]);
        }
      }

      // Walk W (content pairs only) and shared query noise Z.
      const rho = exp(-1 / TAUS[j % TAUS.length]);
      const innov = sqrt(1 - rho * rho);
      W.fill(0);
      for (let t = 0; t < N; t++) {
        const o1 = t * D;
        rg.fillNormal(nz, 0, D, 1);
        if (resets.has(t)) walkStep(W, o1, o1, 0, 1, nz, cPairs, half);
        else walkStep(W, o1, o1 - D, rho, innov, nz, cPairs, half);
      }
      rg.fillNormal(Z, 0, N * D, 1);

      // Keys and values.
      for (let t = 0; t < N; t++) {
        const wo = t * D;
        rg.fillNormal(nz, 0, D, sigK);
        for (let d = 0; d < D; d++) row[d] = walkAmp * W[wo + d] + nz[d];
        if (t < sinks) for (let d = 0; d < D; d++) row[d] += As * eS[d];
        if (heavySet.has(t)) {
          const m = heavyAmp * (0.7 + 0.6 * rg.next());
          for (let d = 0; d < D; d++) row[d] += m * eH[d];
        }
        const u = needleAt.get(t);
        if (u) {
          // The needle key: its own direction plus the rest with the u component removed, so that its logit for an asking query is not shifted by one shared draw.
          let c = 0;
          for (let d = 0; d < D; d++) c += row[d] * u[d];
          for (let d = 0; d < D; d++) row[d] += (needleAmp - c) * u[d];
        }
        const vs = u ? 4 : 1; // needle values: 4x the norm
        if (t < L) {
          const off = ((l * Hkv + j) * L + t) * D;
          ropeInto(row, t, k, off);
          rg.fillNormal(nz, 0, D, vs);
          copyRow(nz, D, v, off);
        } else {
          const off = ((l * Hkv + j) * T + (t - L)) * D;
          ropeInto(row, t, dk, off);
          rg.fillNormal(nz, 0, D, 1);
          copyRow(nz, D, dv, off);
        }
      }

      // Queries of the g heads of this group.
      for (let r = 0; r < g; r++) {
        const h = j * g + r;
        const rq = new Rng(o.seed, S_QHEAD, l, h);
        const aS = As * (0.75 + 0.5 * rq.next());
        const aH = heavyAmp * (0.75 + 0.5 * rq.next());
        const aR = walkAmp * (0.8 + 0.4 * rq.next());
        for (let p = 0; p < N; p++) {
          const wo = p * D;
          rq.fillNormal(nz, 0, D, sigQh);
          queryBase(row, W, Z, wo, aR, sigQg, nz, D);
          const ask = asks.get(p);
          // Sink: R(-p) eS, which RoPE at p turns back into eS (the frame of position 0).
          // A query that asks for a needle puts half its sink weight on it instead.
          const sS = ask ? 0.5 * aS : aS;
          for (let i = sp0, b0 = p * half; i < hp0; i++) {
            const c = cosT[b0 + i];
            const sn = -sinT[b0 + i];
            const x1 = eS[i];
            const x2 = eS[i + half];
            row[i] += sS * (x1 * c - x2 * sn);
            row[i + half] += sS * (x2 * c + x1 * sn);
          }
          const b = aH * max(0, 1 + 0.3 * rq.gauss());
          for (let i = hp0; i < half; i++) {
            row[i] += b * eH[i];
            row[i + half] += b * eH[i + half];
          }
          if (ask) for (const [t, u] of ask) addRotated(row, u, t - p, inv, needleAmp); // R(t-p) u: RoPE at p gives R(t) u
          if (p < L) ropeInto(row, p, q, ((l * Hq + h) * L + p) * D);
          else ropeInto(row, p, dq, ((l * Hq + h) * T + (p - L)) * D);
        }
      }
    }
  }

  const entry = (shape: number[], data: Float32Array): SafetensorsEntry => ({ dtype: 'F32', shape, data });
  const metadata: Record<string, string> = {
    generator: 'kvsqueeze synthetic',
    seed: String(o.seed),
    rope_theta: String(ropeTheta),
    rope: String(rope),
  };
  if (plan.shots.length) metadata.shots = JSON.stringify(plan.shots);
  // Built directly (the same object traceFromEntries returns) so that this module never loads the native addon.
  const trace: Trace = {
    dtype: 'f32', numLayers: NL, numQHeads: Hq, numKvHeads: Hkv, seqLen: L, headDim: D, steps: T, metadata,
    q: entry([NL, Hq, L, D], q), k: entry([NL, Hkv, L, D], k), v: entry([NL, Hkv, L, D], v),
  };
  if (T > 0) Object.assign(trace, { dq: entry([NL, Hq, T, D], dq), dk: entry([NL, Hkv, T, D], dk), dv: entry([NL, Hkv, T, D], dv) });
  const truth: TraceTruth = { sinks, needles: plan.needles, heavy: plan.heavy, shots: plan.shots, window: plan.window, options: o };
  return { trace, truth };
}

// ---------------------------------------------------------------------------
// Helpers for tests and eval

/** Fraction of needles whose position is kept at their layer and KV head (1 when there are none). */
export function needleRecall(kept: (layer: number, kvHead: number) => ArrayLike<number>, truth: TraceTruth): number {
  if (!truth.needles.length) return 1;
  let hit = 0;
  for (const nd of truth.needles) {
    const ks = kept(nd.layer, nd.kvHead);
    for (let i = 0; i < ks.length; i++)
      if (ks[i] === nd.position) {
        hit++;
        break;
      }
  }
  return hit / truth.needles.length;
}

const F16 = (() => {
  const t = new Float32Array(65536);
  for (let b = 0; b < 65536; b++) {
    const s = b & 0x8000 ? -1 : 1;
    const e = (b >> 10) & 0x1f;
    const m = b & 0x3ff;
    t[b] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return t;
})();

/** Elements [start, start + n) of an entry as numbers (F32, F16 or BF16). */
function readRange(e: SafetensorsEntry, start: number, n: number): Float32Array {
  if (e.dtype === 'F32') return (e.data as Float32Array).subarray(start, start + n);
  const src = e.data as Uint16Array;
  const out = new Float32Array(n);
  if (e.dtype === 'F16') for (let i = 0; i < n; i++) out[i] = F16[src[start + i]];
  else if (e.dtype === 'BF16') {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u[i] = src[start + i] << 16;
  } else throw new ArgumentError(`trace: unsupported dtype ${e.dtype}`);
  return out;
}

/**
 * Full (uncompressed) attention of decode step `step` at `layer`, in float64:
 * probabilities [Hq, L + step + 1] over the L prompt keys then decode keys
 * 0 .. step (the step's own key included), scale 1/sqrt(D).
 */
export function fullAttention(trace: Trace, layer: number, step: number): Float64Array {
  const { numLayers: NL, numQHeads: Hq, numKvHeads: Hkv, seqLen: L, headDim: D, steps: T } = trace;
  if (!trace.dq || !trace.dk) throw new KvsqRangeError('fullAttention: the trace has no decode steps');
  if (!Number.isInteger(layer) || layer < 0 || layer >= NL) throw new KvsqRangeError(`fullAttention: layer ${layer} not in [0, ${NL})`);
  if (!Number.isInteger(step) || step < 0 || step >= T) throw new KvsqRangeError(`fullAttention: step ${step} not in [0, ${T})`);
  const g = Hq / Hkv;
  const n = L + step + 1;
  const out = new Float64Array(Hq * n);
  const scale = 1 / sqrt(D);
  for (let j = 0; j < Hkv; j++) {
    const K = readRange(trace.k, (layer * Hkv + j) * L * D, L * D);
    const DK = readRange(trace.dk, (layer * Hkv + j) * T * D, (step + 1) * D);
    for (let r = 0; r < g; r++) {
      const h = j * g + r;
      const qv = readRange(trace.dq, ((layer * Hq + h) * T + step) * D, D);
      softmaxRow(qv, [K, DK], [L, step + 1], D, scale, out, h * n);
    }
  }
  return out;
}

/**
 * Causal attention of the prompt query at position `pos` of `layer`, in
 * float64: probabilities [Hq, pos + 1] over prompt keys 0 .. pos (what an
 * observation-window row sees), scale 1/sqrt(D).
 */
export function promptAttention(trace: Trace, layer: number, pos: number): Float64Array {
  const { numLayers: NL, numQHeads: Hq, numKvHeads: Hkv, seqLen: L, headDim: D } = trace;
  if (!Number.isInteger(layer) || layer < 0 || layer >= NL) throw new KvsqRangeError(`promptAttention: layer ${layer} not in [0, ${NL})`);
  if (!Number.isInteger(pos) || pos < 0 || pos >= L) throw new KvsqRangeError(`promptAttention: position ${pos} not in [0, ${L})`);
  const g = Hq / Hkv;
  const n = pos + 1;
  const out = new Float64Array(Hq * n);
  const scale = 1 / sqrt(D);
  for (let j = 0; j < Hkv; j++) {
    const K = readRange(trace.k, (layer * Hkv + j) * L * D, n * D);
    for (let r = 0; r < g; r++) {
      const h = j * g + r;
      const qv = readRange(trace.q, ((layer * Hq + h) * L + pos) * D, D);
      softmaxRow(qv, [K], [n], D, scale, out, h * n);
    }
  }
  return out;
}

/** out[o .. o+sum(lens)) = softmax(scale * q . k) over the rows of the key blocks, in order. */
function softmaxRow(qv: Float32Array, blocks: Float32Array[], lens: number[], D: number, scale: number, out: Float64Array, o: number): void {
  let mx = -Infinity;
  let t = 0;
  for (let bi = 0; bi < blocks.length; bi++) {
    const src = blocks[bi];
    for (let i = 0; i < lens[bi]; i++, t++) {
      let z = 0;
      for (let d = 0, b = i * D; d < D; d++) z += qv[d] * src[b + d];
      z *= scale;
      out[o + t] = z;
      if (z > mx) mx = z;
    }
  }
  let sum = 0;
  for (let x = 0; x < t; x++) sum += out[o + x] = exp(out[o + x] - mx);
  for (let x = 0; x < t; x++) out[o + x] /= sum;
}

/**
 * Mean over query heads of the full-attention mass (decode step `step`,
 * `layer`) that falls on the kept prompt positions of each head's KV head,
 * as a fraction of the mass on the prompt (decode tokens are left out).
 */
export function attentionMassKept(trace: Trace, layer: number, step: number, kept: (kvHead: number) => ArrayLike<number>): number {
  const p = fullAttention(trace, layer, step);
  const { numQHeads: Hq, numKvHeads: Hkv, seqLen: L } = trace;
  const g = Hq / Hkv;
  const n = L + step + 1;
  let acc = 0;
  for (let j = 0; j < Hkv; j++) {
    const ks = kept(j);
    for (let r = 0; r < g; r++) {
      const o = (j * g + r) * n;
      let prompt = 0;
      for (let t = 0; t < L; t++) prompt += p[o + t];
      let m = 0;
      for (let i = 0; i < ks.length; i++) if (ks[i] >= 0 && ks[i] < L) m += p[o + ks[i]];
      acc += prompt > 0 ? m / prompt : 0;
    }
  }
  return acc / Hq;
}
