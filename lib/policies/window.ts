/** Options and scoring shared by the observation-window methods (SnapKV, PyramidKV, ChunkKV, ShotKV). */
import { KvsqRangeError } from '../errors';
import { ops, PoolMode, Reduce } from '../ops';
import { Tensor } from '../tensor';
import { checkChoice, checkInt } from './budget';
import type { PrefillContext } from './types';

export interface WindowOptions {
  /** Observation window w: the last w prompt queries (default 32). */
  window?: number;
  /** Group reduce over the query heads of a KV head (default mean). */
  gqa?: Reduce;
  /** Softmax scale (default 1/sqrt(D)). */
  scale?: number;
}
export interface PoolOptions {
  /** Odd pooling kernel (default 7). */
  kernel?: number;
  /** max (default) or avg. */
  pool?: PoolMode;
}

export interface WindowConfig {
  window: number;
  gqa: Reduce;
  scale?: number;
}
export interface PoolConfig {
  kernel: number;
  pool: PoolMode;
}

export function windowConfig(o: WindowOptions, what: string): WindowConfig {
  const window = checkInt(o.window ?? 32, `${what}: window`, 1);
  const gqa = checkChoice(o.gqa ?? 'mean', `${what}: gqa`, ['mean', 'sum', 'max'] as const);
  if (o.scale !== undefined && (typeof o.scale !== 'number' || !Number.isFinite(o.scale)))
    throw new KvsqRangeError(`${what}: scale must be a finite number`);
  return { window, gqa, scale: o.scale };
}

export function poolConfig(o: PoolOptions, what: string, defaults: PoolConfig = { kernel: 7, pool: 'max' }): PoolConfig {
  const kernel = checkInt(o.kernel ?? defaults.kernel, `${what}: kernel`, 1);
  if (kernel % 2 === 0) throw new KvsqRangeError(`${what}: kernel = ${kernel} must be odd`);
  return { kernel, pool: checkChoice(o.pool ?? defaults.pool, `${what}: pool`, ['max', 'avg'] as const) };
}

/** The effective window for a prompt of length L (a window longer than the prompt is the prompt). */
export function effectiveWindow(cfg: WindowConfig, seqLen: number): number {
  return Math.min(cfg.window, seqLen);
}

/** Window scores S [Hkv, L] (methods.md "Window scores"). */
export function windowScores(ctx: PrefillContext, cfg: WindowConfig): Tensor {
  return ops.windowScores(ctx.q, ctx.k, { window: effectiveWindow(cfg, ctx.seqLen), reduce: cfg.gqa, scale: cfg.scale ?? ctx.scale });
}

/** Pooled prefix scores [Hkv, L - w] (methods.md "Pooling"). Disposes `scores`. */
export function pooledPrefix(scores: Tensor, prefix: number, pool: PoolConfig): Tensor {
  try {
    return ops.pool1d(scores, { n: prefix, kernel: pool.kernel, mode: pool.pool });
  } finally {
    scores.dispose();
  }
}
