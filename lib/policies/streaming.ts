/**
 * StreamingLLM (Xiao et al., 2023, arXiv:2309.17453): the baseline. Keep the
 * first `sinks` positions and the most recent C - sinks; at decode, once the
 * budget is full, each new token evicts the oldest non-sink token.
 */
import { KvsqRangeError } from '../errors';
import { Budget, BudgetOptions, budgetParams, checkInt, parseBudget, resolveBudget, checkOptions } from './budget';
import { concat, range } from './positions';
import type { DecodeHeadView, DecodePolicy, PrefillContext, PrefillDecision, PrefillPolicy } from './types';

export interface StreamingLLMOptions extends BudgetOptions {
  /** Attention sinks kept from the start (default 4). */
  sinks?: number;
}

export class StreamingLLM implements PrefillPolicy, DecodePolicy {
  readonly name = 'streamingllm';
  readonly accumulate = null;
  readonly wantsPrefillScores = false;
  readonly quest = null;
  readonly sinks: number;
  readonly budget: Budget;

  constructor(o: StreamingLLMOptions = {}) {
    o = checkOptions(o, 'StreamingLLM');
    this.budget = parseBudget(o, 'StreamingLLM', 2048);
    this.sinks = checkInt(o.sinks ?? 4, 'StreamingLLM: sinks', 0);
    if ('tokens' in this.budget && this.budget.tokens <= this.sinks)
      throw new KvsqRangeError(`StreamingLLM: budget ${this.budget.tokens} must exceed sinks ${this.sinks}`);
  }

  get params() {
    return { ...budgetParams(this.budget), sinks: this.sinks };
  }

  /** The budget in tokens for a prompt of length L. */
  capacity(seqLen: number): number {
    return Math.max(this.sinks + 1, resolveBudget(this.budget, seqLen));
  }

  select(ctx: PrefillContext): PrefillDecision {
    const L = ctx.seqLen;
    const C = this.capacity(L);
    if (L <= C) return { kept: null };
    const kept = concat(range(0, this.sinks), range(L - (C - this.sinks), L));
    return { kept: Array.from({ length: ctx.numKvHeads }, () => kept.slice()) };
  }

  evict(views: DecodeHeadView[]): number[] {
    return views.map((v) => this.evictOne(v));
  }

  private evictOne(view: DecodeHeadView): number {
    const C = this.capacity(view.promptLength);
    if (view.length <= C) return -1;
    // The oldest non-sink position.
    let best = -1;
    let bestPos = Infinity;
    for (let s = 0; s < view.length; s++) {
      const p = view.positions[s];
      if (p >= this.sinks && p < bestPos) {
        bestPos = p;
        best = s;
      }
    }
    return best;
  }
}
