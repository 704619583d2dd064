/**
 * ChunkKV (Liu et al., 2025, arXiv:2502.00299): window scores summed over
 * chunks of c tokens and over all KV heads; keep the top floor((C - w) / c)
 * chunks plus the window, the same positions for every head of the layer.
 * Layer-wise index reuse: with reuse = N, layer l with l % N == 0 scores its
 * chunks and the next N - 1 layers reuse them without scoring.
 */
import { ops } from '../ops';
import { Budget, BudgetOptions, budgetParams, checkInt, parseBudget, resolveBudget, checkOptions } from './budget';
import { chunkPositions, concat, range, topkRows } from './positions';
import type { PrefillContext, PrefillDecision, PrefillPolicy } from './types';
import { effectiveWindow, WindowConfig, windowConfig, WindowOptions, windowScores } from './window';

export interface ChunkKVOptions extends BudgetOptions, WindowOptions {
  /** Chunk length in tokens (default 10). */
  chunk?: number;
  /** Layer-wise index reuse N (default 1 = off). */
  reuse?: number;
}

export class ChunkKV implements PrefillPolicy {
  readonly name = 'chunkkv';
  readonly budget: Budget;
  readonly win: WindowConfig;
  readonly chunk: number;
  readonly reuse: number;

  constructor(o: ChunkKVOptions = {}) {
    o = checkOptions(o, 'ChunkKV');
    this.budget = parseBudget(o, 'ChunkKV', 2048);
    this.win = windowConfig(o, 'ChunkKV');
    this.chunk = checkInt(o.chunk ?? 10, 'ChunkKV: chunk', 1);
    this.reuse = checkInt(o.reuse ?? 1, 'ChunkKV: reuse', 1);
  }

  get params() {
    return { ...budgetParams(this.budget), window: this.win.window, chunk: this.chunk, reuse: this.reuse, gqa: this.win.gqa };
  }

  select(ctx: PrefillContext): PrefillDecision {
    const L = ctx.seqLen;
    const C = resolveBudget(this.budget, L);
    if (L <= C) return { kept: null };
    const w = effectiveWindow(this.win, L);
    const prefix = L - w;
    const source = ctx.layer - (ctx.layer % this.reuse);
    const key = `chunkkv:${source}`;
    let kept = source !== ctx.layer ? (ctx.state.get(key) as Int32Array | undefined) : undefined;
    if (!kept) {
      // Reuse falls back to scoring when the source layer was not prefilled in this sequence.
      const nChunks = Math.floor(Math.max(0, C - w) / this.chunk);
      let chosen: Int32Array = new Int32Array(0);
      if (prefix > 0 && nChunks > 0) {
        const s = windowScores(ctx, this.win);
        let chunks;
        try {
          chunks = ops.chunkScores(s, { n: prefix, chunk: this.chunk });
        } finally {
          s.dispose();
        }
        try {
          chosen = topkRows(chunks, nChunks)[0];
        } finally {
          chunks.dispose();
        }
      }
      kept = concat(chunkPositions(chosen, this.chunk, prefix), range(prefix, L));
      ctx.state.set(key, kept);
    }
    return { kept: Array.from({ length: ctx.numKvHeads }, () => kept!.slice()) };
  }
}
