/**
 * ShotKV (Liu et al., 2025, arXiv:2502.01941, "Can LLMs maintain fundamental
 * abilities under KV cache compression?"): many-shot prompts compressed shot
 * by shot. No public code exists; this follows spec/methods.md.
 *
 * Prefill: token score = window scores summed over KV heads; shot score =
 * mean over the shot's tokens; shots are visited best first (ties: earlier
 * shot) and kept whole while they fit in what remains of C_prefill, which
 * counts every kept prompt token (positions outside every shot are always
 * kept). Kept prefill tokens are frozen. Decode: generated tokens accumulate
 * attention (summed over heads) and beyond C_decode the lowest-scoring
 * generated token is evicted; prompt tokens never are.
 */
import { KvsqRangeError, show } from '../errors';
import { ops } from '../ops';
import { checkInt, checkOptions } from './budget';
import { concat, range } from './positions';
import type { DecodeHeadView, DecodePolicy, PrefillContext, PrefillDecision, PrefillPolicy } from './types';
import { WindowConfig, windowConfig, WindowOptions, windowScores } from './window';

export interface ShotKVOptions extends WindowOptions {
  /** Shot segments [start, end): disjoint, inside the prompt. */
  shots: ReadonlyArray<readonly [number, number]>;
  /** Prefill budget in tokens (all kept prompt tokens). */
  prefillBudget?: number;
  /** Or the prefill compression ratio r: C_prefill = ceil((1 - r) * L). */
  prefillRatio?: number;
  /** Generated tokens held at decode (default 2048). */
  decodeBudget?: number;
}

export class ShotKV implements PrefillPolicy, DecodePolicy {
  readonly name = 'shotkv';
  readonly shots: Array<[number, number]>;
  readonly win: WindowConfig;
  readonly prefillBudget: number | undefined;
  readonly prefillRatio: number | undefined;
  readonly decodeBudget: number;
  readonly accumulate = 'sum' as const;
  readonly wantsPrefillScores = false;
  readonly quest = null;

  constructor(o: ShotKVOptions) {
    o = checkOptions(o, 'ShotKV');
    if (!o || !Array.isArray(o.shots)) throw new KvsqRangeError('ShotKV: shots must be an array of [start, end) pairs');
    const shots = o.shots.map((s, i) => {
      if (!Array.isArray(s) || s.length !== 2) throw new KvsqRangeError(`ShotKV: shots[${i}] must be [start, end)`);
      const a = checkInt(s[0], `ShotKV: shots[${i}][0]`, 0);
      const b = checkInt(s[1], `ShotKV: shots[${i}][1]`, a + 1);
      return [a, b] as [number, number];
    });
    const sorted = [...shots].sort((x, y) => x[0] - y[0]);
    for (let i = 1; i < sorted.length; i++)
      if (sorted[i][0] < sorted[i - 1][1]) throw new KvsqRangeError(`ShotKV: shots [${sorted[i - 1]}] and [${sorted[i]}] overlap`);
    this.shots = shots;
    this.win = windowConfig(o, 'ShotKV');
    if (o.prefillBudget !== undefined && o.prefillRatio !== undefined)
      throw new KvsqRangeError('ShotKV: give prefillBudget or prefillRatio, not both');
    if (o.prefillBudget !== undefined) this.prefillBudget = checkInt(o.prefillBudget, 'ShotKV: prefillBudget', 1);
    if (o.prefillRatio !== undefined) {
      if (typeof o.prefillRatio !== 'number' || !(o.prefillRatio >= 0 && o.prefillRatio < 1))
        throw new KvsqRangeError(`ShotKV: prefillRatio = ${show(o.prefillRatio)} must be in [0, 1)`);
      this.prefillRatio = o.prefillRatio;
    }
    if (this.prefillBudget === undefined && this.prefillRatio === undefined) this.prefillBudget = 2048;
    this.decodeBudget = checkInt(o.decodeBudget ?? 2048, 'ShotKV: decodeBudget', 0);
  }

  get params() {
    return { shots: this.shots, prefillBudget: this.prefillBudget, prefillRatio: this.prefillRatio, decodeBudget: this.decodeBudget, window: this.win.window, gqa: this.win.gqa };
  }

  prefillCapacity(L: number): number {
    return this.prefillBudget ?? Math.ceil((1 - (this.prefillRatio as number)) * L);
  }

  select(ctx: PrefillContext): PrefillDecision {
    const L = ctx.seqLen;
    for (const [a, b] of this.shots) if (b > L) throw new KvsqRangeError(`ShotKV: shot [${a}, ${b}) ends past the prompt (L = ${L})`);
    const cap = this.prefillCapacity(L);
    if (L <= cap) return { kept: null, frozen: true };
    // Token scores summed over KV heads: a chunk sum with chunk length 1.
    const s = windowScores(ctx, this.win);
    let tok: Float32Array;
    try {
      const summed = ops.chunkScores(s, { chunk: 1 });
      tok = summed.toFloat32();
      summed.dispose();
    } finally {
      s.dispose();
    }
    const inShot = new Uint8Array(L);
    for (const [a, b] of this.shots) inShot.fill(1, a, b);
    let remaining = L - this.shots.reduce((n, [a, b]) => n + (b - a), 0); // always-kept tokens
    remaining = cap - remaining;
    const order = this.shots
      .map(([a, b], i) => ({ a, b, i, score: meanOf(tok, a, b) }))
      .sort((x, y) => y.score - x.score || x.a - y.a);
    const keepShot = new Uint8Array(L);
    for (const s of order) {
      const len = s.b - s.a;
      if (len <= remaining) {
        keepShot.fill(1, s.a, s.b);
        remaining -= len;
      }
    }
    const parts: Int32Array[] = [];
    let run = -1;
    for (let t = 0; t <= L; t++) {
      const keep = t < L && (!inShot[t] || keepShot[t]);
      if (keep && run < 0) run = t;
      if (!keep && run >= 0) {
        parts.push(range(run, t));
        run = -1;
      }
    }
    const kept = concat(...parts);
    return { kept: Array.from({ length: ctx.numKvHeads }, () => kept.slice()), frozen: true };
  }

  /**
   * Scores are summed over all KV heads (each head's list holds the same
   * positions in the same slots: prefill keeps one set for all heads and
   * decode evicts one slot for all), so every head evicts the same token.
   */
  evict(views: DecodeHeadView[]): number[] {
    const v0 = views[0];
    // Generated tokens are those past the prompt, whatever prefill policy kept the prompt.
    let generated = 0;
    for (let s = 0; s < v0.length; s++) if (v0.positions[s] >= v0.promptLength) generated++;
    if (generated <= this.decodeBudget || views.some((v) => !v.scores)) return views.map(() => -1);
    let best = -1;
    let bestScore = Infinity;
    let bestPos = Infinity;
    for (let s = 0; s < v0.length; s++) {
      const p = v0.positions[s];
      if (p < v0.promptLength) continue; // prompt tokens are frozen
      let sc = 0;
      for (const v of views) sc += v.scores![s];
      if (sc < bestScore || (sc === bestScore && p < bestPos)) {
        best = s;
        bestScore = sc;
        bestPos = p;
      }
    }
    return views.map(() => best);
  }
}

/** Mean of x[a..b) in float64 (a shot's score). */
function meanOf(x: Float32Array, a: number, b: number): number {
  let s = 0;
  for (let i = a; i < b; i++) s += x[i];
  return s / (b - a);
}
