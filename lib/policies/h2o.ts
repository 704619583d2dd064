/**
 * H2O (Zhang et al., 2023, arXiv:2306.14048): heavy hitters by accumulated
 * attention plus a recent window. Prefill scores are the full causal column
 * sums (window scores with w = L); at decode each step's attention is added to
 * the scores and, beyond heavy + recent tokens, the lowest-scoring token older
 * than the last `recent` positions is evicted (one per step; its slot takes
 * the next token).
 */
import { KvsqRangeError, show } from '../errors';
import { ops, Reduce } from '../ops';
import { checkChoice, checkOptions } from './budget';
import { concat, range, topkRows } from './positions';
import type { DecodeHeadView, DecodePolicy, PrefillContext, PrefillDecision, PrefillPolicy } from './types';

export interface H2OOptions {
  /** Heavy hitters: tokens (integer >= 1) or a ratio of L in (0, 1) (default 0.1). */
  heavy?: number;
  /** Recent window: tokens or a ratio of L (default 0.1). */
  recent?: number;
  /** Group reduce over the query heads of a KV head (default mean). */
  gqa?: Reduce;
  /** Softmax scale for the prefill scores (default: the cache's). */
  scale?: number;
}

function amount(x: number | undefined, what: string): number {
  const v = x ?? 0.1;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (v >= 1 && !Number.isInteger(v)))
    throw new KvsqRangeError(`H2O: ${what} = ${show(v)}: expected a ratio in [0, 1) or a whole number of tokens`);
  return v;
}
const tokens = (x: number, L: number) => (x < 1 ? Math.ceil(x * L) : x);

export class H2O implements PrefillPolicy, DecodePolicy {
  readonly name = 'h2o';
  readonly heavy: number;
  readonly recent: number;
  readonly gqa: Reduce;
  readonly scale: number | undefined;
  readonly wantsPrefillScores = true;
  readonly quest = null;

  constructor(o: H2OOptions = {}) {
    o = checkOptions(o, 'H2O');
    this.heavy = amount(o.heavy, 'heavy');
    this.recent = amount(o.recent, 'recent');
    if (this.heavy === 0 && this.recent === 0) throw new KvsqRangeError('H2O: heavy and recent cannot both be 0 (nothing would be kept)');
    this.gqa = checkChoice(o.gqa ?? 'mean', 'H2O: gqa', ['mean', 'sum', 'max'] as const);
    this.scale = o.scale;
  }

  get accumulate(): Reduce {
    return this.gqa;
  }

  get params() {
    return { heavy: this.heavy, recent: this.recent, gqa: this.gqa };
  }

  /** [heavy, recent] in tokens for a prompt of length L. */
  sizes(L: number): [number, number] {
    return [tokens(this.heavy, L), tokens(this.recent, L)];
  }

  select(ctx: PrefillContext): PrefillDecision {
    const L = ctx.seqLen;
    const [heavy, recent] = this.sizes(L);
    const scores = ops.windowScores(ctx.q, ctx.k, { window: L, reduce: this.gqa, scale: this.scale ?? ctx.scale });
    if (L <= heavy + recent) return { kept: null, scores };
    const older = L - recent;
    let top: Int32Array[];
    try {
      top = topkRows(scores, Math.min(heavy, older), older);
    } catch (e) {
      scores.dispose();
      throw e;
    }
    const tail = range(older, L);
    return { kept: top.map((t) => concat(t, tail)), scores };
  }

  evict(views: DecodeHeadView[]): number[] {
    return views.map((v) => this.evictOne(v));
  }

  /** The same rule for the kernel: lowest score among positions <= newest - recent, once over heavy + recent. */
  evictionLimit(view: DecodeHeadView): number | null {
    const [heavy, recent] = this.sizes(view.promptLength);
    return view.length <= heavy + recent ? null : view.newest - recent;
  }

  private evictOne(view: DecodeHeadView): number {
    const [heavy, recent] = this.sizes(view.promptLength);
    const scores = view.scores;
    if (view.length <= heavy + recent || !scores) return -1;
    // Lowest score among tokens older than the last `recent` positions; ties:
    // lower position. One pass with a strict compare finds the lowest score
    // and its first slot; ties are resolved by position only when a later
    // slot has the same score (rare with real-valued scores). This loop runs
    // every step over every kept token of every list: it is kept branch-light.
    const limit = view.newest - recent;
    const pos = view.positions;
    const n = view.length;
    let best = -1;
    let bestScore = Infinity;
    for (let s = 0; s < n; s++) {
      const sc = scores[s];
      if (sc < bestScore && pos[s] <= limit) {
        best = s;
        bestScore = sc;
      }
    }
    if (best < 0) return -1;
    let bestPos = pos[best];
    for (let s = best + 1; s < n; s++)
      if (scores[s] === bestScore && pos[s] < bestPos && pos[s] <= limit) {
        best = s;
        bestPos = pos[s];
      }
    return best;
  }
}
