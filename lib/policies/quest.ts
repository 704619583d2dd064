/**
 * Quest (Tang et al., 2024, arXiv:2406.10774): query-aware page selection at
 * decode, no eviction. Each page keeps the channel-wise min and max of its
 * keys; a step reads, per query head, the pages whose bound
 * sum_d max(q_d * kmax_d, q_d * kmin_d) is largest (floor(budget / P) - 1 of
 * them) plus the current page, and attends exactly over their tokens.
 */
import { checkInt, checkOptions } from './budget';
import type { DecodeHeadView, DecodePolicy, QuestConfig } from './types';

export interface QuestOptions {
  /** Tokens read per step (default 2048). */
  budget?: number;
  /** The first layers stay dense (default 2). */
  denseLayers?: number;
  /** Select per KV head with the bound's max over the group (one read serves the group). */
  share?: boolean;
}

export class Quest implements DecodePolicy {
  readonly name = 'quest';
  readonly accumulate = null;
  readonly wantsPrefillScores = false;
  readonly quest: QuestConfig;

  constructor(o: QuestOptions = {}) {
    o = checkOptions(o, 'Quest');
    this.quest = {
      budget: checkInt(o.budget ?? 2048, 'Quest: budget', 1),
      denseLayers: checkInt(o.denseLayers ?? 2, 'Quest: denseLayers', 0),
      share: Boolean(o.share ?? false),
    };
  }

  get params() {
    return { ...this.quest };
  }

  evict(views: DecodeHeadView[]): number[] {
    return views.map(() => -1);
  }
}
