/**
 * Recompress: periodic decode-time re-compression, a decode policy of its own
 * (docs/methods.md "Composition"). Every `interval` decode steps of a
 * (sequence, layer), after the step, each KV head list holding more than
 * `target` tokens is re-scored by `scorer` (any prefill policy: SnapKV,
 * PyramidKV, ChunkKV, StreamingLLM, ShotKV...) as if the held tokens were a
 * prompt of length n (in ascending position order), and compacted to what the
 * scorer keeps, with the scorer's own budget semantics (configure the
 * scorer's budget as the size to compress down to, e.g.
 * `new Recompress({ interval: 64, target: 1024, scorer: new SnapKV({ budget: 1024 }) })`).
 *
 * Observation window: the cache keeps the queries of the last `window`
 * (default 32) decode steps of each (sequence, layer) in a ring buffer
 * (f32 copies, [Hq, D] each; window * Hq * D * 4 bytes per sequence and
 * layer). The scorer gets them as ctx.q [Hq, w, D] (oldest first, w = the
 * steps seen, at most `window`): they are the queries of the most recent
 * decode tokens, which are the last held positions as long as the recent
 * tokens are held (true for the eviction policies of this library), so the
 * scorer's causal window mask lines up. ctx.k [Hkv, n, D] is gathered from the
 * pool in position order. When the KV heads of a list hold different counts,
 * the scorer runs once per head that is over `target` (ctx.q = that head's
 * query group, numKvHeads = 1) instead of padding.
 *
 * What carries over: accumulated scores (H2O/ShotKV) of the kept tokens are
 * copied along (the scorer's own `scores` are discarded); frozen tokens
 * (ShotKV prefill) may be dropped by the scorer, the survivors stay frozen.
 * ctx.state is fresh per call (no ChunkKV reuse across layers).
 *
 * An optional inner `decode` policy (H2O, StreamingLLM, ShotKV, Quest) still
 * runs every step; Recompress delegates eviction, accumulation and Quest to
 * it. Without one nothing is evicted between re-compressions.
 */
import { ArgumentError, KvsqRangeError } from '../errors';
import type { Reduce } from '../ops';
import { checkInt, checkOptions } from './budget';
import type { DecodeHeadView, DecodePolicy, PrefillPolicy, QuestConfig, RecompressConfig } from './types';

export interface RecompressOptions {
  /** Decode steps between re-compressions (integer >= 1). */
  interval: number;
  /** Trigger size in tokens per KV head (integer >= 1). */
  target: number;
  /** The prefill policy that decides what to keep. */
  scorer: PrefillPolicy;
  /** Decode-step queries kept as the scorer's observation window (default 32). */
  window?: number;
  /** Inner decode policy run every step (default: none, nothing evicted between re-compressions). */
  decode?: DecodePolicy | null;
}

export class Recompress implements DecodePolicy {
  readonly name = 'recompress';
  readonly recompress: RecompressConfig;
  readonly inner: DecodePolicy | null;

  constructor(o: RecompressOptions) {
    if (o === undefined) throw new ArgumentError('Recompress: options { interval, target, scorer } are required');
    o = checkOptions(o, 'Recompress');
    const interval = checkInt(o.interval, 'Recompress: interval', 1);
    const target = checkInt(o.target, 'Recompress: target', 1);
    const window = checkInt(o.window ?? 32, 'Recompress: window', 1, 65536);
    const scorer = o.scorer;
    if (!scorer || typeof scorer !== 'object' || typeof (scorer as PrefillPolicy).select !== 'function')
      throw new ArgumentError('Recompress: scorer must be a prefill policy (SnapKV, PyramidKV, ChunkKV, StreamingLLM, ...)');
    if (scorer.name === 'h2o')
      throw new ArgumentError('Recompress: H2O cannot be a scorer (its scores are causal column sums over every query, not a window); use it as the inner decode policy');
    // A scorer with an observation window needs that many query rows at the first trigger.
    const sw = (scorer as { win?: { window?: unknown } }).win?.window;
    if (typeof sw === 'number' && sw > Math.min(window, interval))
      throw new KvsqRangeError(`Recompress: the scorer's window ${sw} exceeds the ${Math.min(window, interval)} decode queries available at the first trigger (min(window ${window}, interval ${interval}))`);
    const inner = o.decode ?? null;
    if (inner !== null) {
      if (typeof inner !== 'object' || typeof (inner as DecodePolicy).evict !== 'function')
        throw new ArgumentError('Recompress: decode must be a decode policy (H2O, StreamingLLM, ...)');
      if (inner.recompress) throw new ArgumentError('Recompress: the inner decode policy cannot itself re-compress');
    }
    this.inner = inner;
    this.recompress = Object.freeze({ interval, target, window, scorer });
  }

  get accumulate(): Reduce | null {
    return this.inner?.accumulate ?? null;
  }
  get wantsPrefillScores(): boolean {
    return this.inner?.wantsPrefillScores ?? false;
  }
  get quest(): QuestConfig | null {
    return this.inner?.quest ?? null;
  }

  get params() {
    const { interval, target, window, scorer } = this.recompress;
    return {
      interval,
      target,
      window,
      scorer: { method: scorer.name, ...scorer.params },
      ...(this.inner ? { decode: { method: this.inner.name, ...this.inner.params } } : {}),
    };
  }

  evict(views: DecodeHeadView[], layer: number): number[] {
    return this.inner ? this.inner.evict(views, layer) : views.map(() => -1);
  }

  /** The inner policy's kernel-side eviction rule, when it has one. */
  get evictionLimit(): ((view: DecodeHeadView, layer: number) => number | null) | undefined {
    const inner = this.inner;
    return inner?.evictionLimit ? (view, layer) => inner.evictionLimit!(view, layer) : undefined;
  }
}
