/**
 * SnapKV (Li et al., 2024, arXiv:2404.14469): window scores of the last w
 * queries, pooled over the prefix; per KV head keep the top C - w prefix
 * positions plus the whole window. Nothing is evicted at decode.
 */
import { Budget, BudgetOptions, budgetParams, parseBudget, resolveBudget, checkOptions } from './budget';
import { concat, range, topkRows } from './positions';
import type { PrefillContext, PrefillDecision, PrefillPolicy } from './types';
import { effectiveWindow, PoolConfig, poolConfig, PoolOptions, pooledPrefix, WindowConfig, windowConfig, WindowOptions, windowScores } from './window';

export interface SnapKVOptions extends BudgetOptions, WindowOptions, PoolOptions {}

/** Top `keep` pooled prefix positions per KV head plus the window. */
export function selectWithWindow(ctx: PrefillContext, win: WindowConfig, pool: PoolConfig, keep: number): Int32Array[] {
  const L = ctx.seqLen;
  const w = effectiveWindow(win, L);
  const prefix = L - w;
  const pooled = pooledPrefix(windowScores(ctx, win), prefix, pool);
  let top: Int32Array[];
  try {
    top = prefix > 0 ? topkRows(pooled, Math.max(0, Math.min(keep, prefix))) : Array.from({ length: ctx.numKvHeads }, () => new Int32Array(0));
  } finally {
    pooled.dispose();
  }
  const tail = range(prefix, L);
  return top.map((t) => concat(t, tail));
}

export class SnapKV implements PrefillPolicy {
  readonly name = 'snapkv';
  readonly budget: Budget;
  readonly win: WindowConfig;
  readonly pooling: PoolConfig;

  constructor(o: SnapKVOptions = {}) {
    o = checkOptions(o, 'SnapKV');
    this.budget = parseBudget(o, 'SnapKV', 2048);
    this.win = windowConfig(o, 'SnapKV');
    this.pooling = poolConfig(o, 'SnapKV');
  }

  get params() {
    return { ...budgetParams(this.budget), window: this.win.window, kernel: this.pooling.kernel, pool: this.pooling.pool, gqa: this.win.gqa };
  }

  select(ctx: PrefillContext): PrefillDecision {
    const C = resolveBudget(this.budget, ctx.seqLen);
    if (ctx.seqLen <= C) return { kept: null };
    const w = effectiveWindow(this.win, ctx.seqLen);
    return { kept: selectWithWindow(ctx, this.win, this.pooling, C - w) };
  }
}
