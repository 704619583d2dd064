/**
 * What a policy sees and answers. Policies decide (which positions to keep,
 * which slot to evict, which pages to read); kernels compute (lib/ops.ts);
 * the cache (lib/cache) does the bookkeeping.
 */
import type { Reduce } from '../ops';
import type { Tensor } from '../tensor';

export interface PrefillContext {
  layer: number;
  numLayers: number;
  /** [Hq, L, D] prompt queries (rotated as the model rotates them). */
  q: Tensor;
  /** [Hkv, L, D] prompt keys. */
  k: Tensor;
  seqLen: number;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Per-sequence state shared across layers (ChunkKV's index reuse). */
  state: Map<string, unknown>;
  /** The cache's softmax scale; a policy's own `scale` option overrides it for scoring. */
  scale?: number;
}

export interface PrefillDecision {
  /** Kept positions per KV head, ascending; null = keep the whole prompt. */
  kept: Int32Array[] | null;
  /**
   * Optional per-position scores [Hkv, L] f32 that a score-accumulating decode
   * policy starts from (H2O's column sums). The cache disposes it.
   */
  scores?: Tensor;
  /** Positions that decode may never evict (ShotKV freezes its prefill). */
  frozen?: boolean;
}

export interface PrefillPolicy {
  readonly name: string;
  readonly params: Readonly<Record<string, unknown>>;
  select(ctx: PrefillContext): PrefillDecision;
}

/** What a decode policy sees of one (sequence, layer) after a step's attention. */
export interface DecodeHeadView {
  /** Slots held by this KV head's list. */
  length: number;
  /** Position of each slot. */
  positions: Int32Array;
  /** Accumulated score of each slot (only when the policy accumulates). */
  scores?: Float32Array;
  /** Slots written at prefill and frozen (ShotKV): never evict these. */
  frozenSlots: number;
  /** The position of the newest token. */
  newest: number;
  /** Prompt length L of the sequence (ratio budgets are fixed from it). */
  promptLength: number;
}

export interface QuestConfig {
  /** Token budget; pages read per step = floor(budget / pageSize). */
  budget: number;
  /** The first denseLayers layers attend densely. */
  denseLayers: number;
  /** Select per KV head (max over the group) instead of per query head. */
  share: boolean;
}

export interface DecodePolicy {
  readonly name: string;
  readonly params: Readonly<Record<string, unknown>>;
  /** Accumulate this step's attention (group reduce) into the score pool. */
  readonly accumulate: Reduce | null;
  /** Initial scores from the prefill (H2O column sums); else new tokens and prompt start at 0. */
  readonly wantsPrefillScores: boolean;
  /** Quest page selection (no eviction). */
  readonly quest: QuestConfig | null;
  /** Called after each step with every KV head of the layer: per head, the slot to evict or -1. */
  evict(views: DecodeHeadView[], layer: number): number[];
  /**
   * Optional fast path for accumulating policies whose rule is "evict the
   * lowest accumulated score among tokens at positions <= some limit (ties:
   * the lower position)": return that limit for a KV head, or null to evict
   * nothing. The cache then has the attention kernel find the slot while it
   * adds the step's scores, and evict() is not called (the view carries no
   * scores; length and newest already count the token of this step). It must
   * choose exactly what evict() would.
   */
  evictionLimit?(view: DecodeHeadView, layer: number): number | null;
  /**
   * Periodic decode-time re-compression (lib/policies/recompress.ts): when
   * set, the cache keeps the last `window` decode queries of each (sequence,
   * layer) and, every `interval` steps, re-compresses lists holding more than
   * `target` tokens with `scorer`. The cache does the work (it owns the pages).
   */
  readonly recompress?: RecompressConfig | null;
}

export interface RecompressConfig {
  /** Decode steps between re-compressions (of a sequence at a layer). */
  interval: number;
  /** Trigger size: a list holding more than this many tokens is re-compressed. */
  target: number;
  /** Decode-step queries kept per (sequence, layer) as the scorer's observation window. */
  window: number;
  /** Decides what to keep, over the held tokens as if they were a prompt. */
  scorer: PrefillPolicy;
}
