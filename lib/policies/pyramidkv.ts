/**
 * PyramidKV (Cai et al., 2024, arXiv:2406.02069): SnapKV's scoring with a
 * per-layer budget that shrinks linearly from the lowest layer to the top
 * (pyramidal information funnelling); the mean over layers is about C.
 */
import { Budget, BudgetOptions, budgetParams, checkInt, parseBudget, resolveBudget, checkOptions } from './budget';
import { selectWithWindow } from './snapkv';
import type { PrefillContext, PrefillDecision, PrefillPolicy } from './types';
import { effectiveWindow, PoolConfig, poolConfig, PoolOptions, WindowConfig, windowConfig, WindowOptions } from './window';

export interface PyramidKVOptions extends BudgetOptions, WindowOptions, PoolOptions {
  /** Ratio of the largest to the smallest layer budget scale (default 20). */
  beta?: number;
}

/** Prefix tokens kept at `layer` (methods.md "PyramidKV"), window excluded; null = keep all. */
export function pyramidCapacity(C: number, w: number, L: number, layer: number, numLayers: number, beta: number): number | null {
  if (L < C) return null;
  const b = C - w;
  if (L < 2 * b) return b;
  let min = Math.floor(b / beta);
  let max = 2 * b - min;
  if (max >= L - w) {
    max = L - w;
    min = 2 * b - max;
  }
  const step = numLayers > 1 ? Math.floor((max - min) / (numLayers - 1)) : 0;
  return max - layer * step;
}

export class PyramidKV implements PrefillPolicy {
  readonly name = 'pyramidkv';
  readonly budget: Budget;
  readonly win: WindowConfig;
  readonly pooling: PoolConfig;
  readonly beta: number;

  constructor(o: PyramidKVOptions = {}) {
    o = checkOptions(o, 'PyramidKV');
    this.budget = parseBudget(o, 'PyramidKV', 2048);
    this.win = windowConfig(o, 'PyramidKV');
    this.pooling = poolConfig(o, 'PyramidKV');
    this.beta = checkInt(o.beta ?? 20, 'PyramidKV: beta', 1);
  }

  get params() {
    return { ...budgetParams(this.budget), window: this.win.window, kernel: this.pooling.kernel, pool: this.pooling.pool, gqa: this.win.gqa, beta: this.beta };
  }

  select(ctx: PrefillContext): PrefillDecision {
    const L = ctx.seqLen;
    const C = resolveBudget(this.budget, L);
    const w = effectiveWindow(this.win, L);
    const cap = pyramidCapacity(C, w, L, ctx.layer, ctx.numLayers, this.beta);
    if (cap === null || cap + w >= L) return { kept: null };
    return { kept: selectWithWindow(ctx, this.win, this.pooling, Math.max(0, cap)) };
  }
}
