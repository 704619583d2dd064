/**
 * PagedKVCache: a paged, head-wise KV cache. Every KV head of every layer of
 * every sequence has its own page list (so heads may keep different
 * positions), pages come from one pool per cache, and compressing or removing
 * a sequence returns whole pages to the pool: the memory saved is real.
 *
 * Bookkeeping per (sequence, layer, KV head): the pages in slot order, the
 * number of slots held, the position each slot holds, and at most one hole (a
 * slot evicted at the end of a decode step, refilled by the next token).
 *
 * Failure atomicity: every operation checks its inputs and takes all the pages
 * it needs before it changes anything; a kernel failure afterwards gives the
 * pages back. A failed call leaves the cache exactly as it was.
 */
import { ArgumentError, DTypeError, DisposedError, KvsqRangeError, NaNError, ShapeError, StateError, UnsupportedError, show } from '../errors';
import { ops, Reduce } from '../ops';
import type { DecodeHeadView, DecodePolicy, PrefillContext, PrefillDecision, PrefillPolicy, RecompressConfig } from '../policies/types';
import { DType, Tensor } from '../tensor';
import { native } from '../native';
import { PagePool } from './page-pool';

export interface PagedKVCacheOptions {
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Storage dtype of K and V (default f16). */
  dtype?: DType;
  /** 'cpu' (default) or 'cuda:N'. */
  device?: string;
  /** Slots per page (default 16). */
  pageSize?: number;
  /** Pages in the pool (default 8192). */
  pages?: number;
  /** Query heads (default kvHeads): fixes the GQA group size for scoring. */
  qHeads?: number;
  /** The model's softmax scale (default 1/sqrt(headDim)): attention and scoring use it. */
  scale?: number;
}

/** One policy for every layer, or one per layer. */
export type PerLayer<T> = T | readonly T[];

export interface SequenceOptions {
  /** Prefill policy (default: keep the whole prompt). */
  prefill?: PerLayer<PrefillPolicy | null>;
  /** Decode policy (default: append, never evict). */
  decode?: PerLayer<DecodePolicy | null>;
}

export interface CacheStats {
  pages: { total: number; used: number; free: number; pageSize: number; bytesPerPage: number };
  bytes: { pool: number; held: number; full: number; saved: number };
  sequences: number;
  /** tokens[layer][head]: tokens held, summed over sequences. */
  tokens: number[][];
}

export interface SequenceStats {
  id: number;
  promptLength: number;
  /** tokens[layer][head] */
  tokens: number[][];
  pages: number;
  bytesHeld: number;
  /** What the same sequence would hold with no compression. */
  bytesFull: number;
  bytesSaved: number;
}

/** A decode step's record of the scores attention changed: written back if the step fails. */
interface ScoreUndo {
  tables: { indptr: Tensor; ids: Tensor; len: Tensor };
  values: Tensor;
}

/** What a decode step's attention leaves for eviction and undo. */
interface StepScores {
  undo: ScoreUndo[];
  /** Scores after the add, per list (policies that scan them in evict()). */
  views: Map<HeadList, Float32Array>;
  /** The kernel's eviction candidate, per list (policies with evictionLimit()). */
  fast: Map<HeadList, number>;
  /** Whether a group of this step already holds the cache's reusable page tables. */
  tablesTaken?: boolean;
}

/** Reusable page-table tensors (host, i32) and the host copy of the ids they are filled from. */
interface TableBuffers {
  hostIds: Int32Array;
  indptr: Tensor | null;
  ids: Tensor | null;
  len: Tensor | null;
}

const INT32_MIN = -(2 ** 31);

/**
 * A per-step buffer reused across decode steps: `cur` when it holds at least
 * n elements, else a new one grown by doubling (the old one disposed), so a
 * step allocates nothing once the buffers have grown.
 */
function grown(cur: Tensor | null | undefined, n: number, dtype: DType, device: string): Tensor {
  if (cur && cur.numel >= n) return cur;
  const t = Tensor.zeros([Math.max(n, 2 * (cur?.numel ?? 0), 1024)], { dtype, device });
  cur?.dispose();
  return t;
}

class HeadList {
  pages: number[] = [];
  /** Bumped at every change of `pages` (push, undo, replacement): keys the typed copy below. */
  ver = 0;
  private typed: Int32Array | null = null;
  private typedVer = -1;
  /** `pages` as an Int32Array, rebuilt only after a change (page tables are built every step). */
  pageIds(): Int32Array {
    if (this.typedVer !== this.ver || !this.typed) {
      this.typed = Int32Array.from(this.pages);
      this.typedVer = this.ver;
    }
    return this.typed;
  }
  len = 0; // slots in use, the hole included
  pos: Int32Array = new Int32Array(16);
  hole = -1; // slot evicted last step, to be refilled first
  frozen = 0; // slots written at prefill and frozen (ShotKV)

  setPos(slot: number, p: number): void {
    if (slot >= this.pos.length) {
      const n = new Int32Array(Math.max(slot + 1, this.pos.length * 2));
      n.set(this.pos);
      this.pos = n;
    }
    this.pos[slot] = p;
  }
  /** Held positions, ascending. */
  kept(): Int32Array {
    const out: number[] = [];
    for (let s = 0; s < this.len; s++) if (s !== this.hole) out.push(this.pos[s]);
    return Int32Array.from(out).sort();
  }
  held(): number {
    return this.len - (this.hole >= 0 ? 1 : 0);
  }
}

interface LayerState {
  heads: HeadList[];
  nextPos: number; // position of the next token
  steps: number;
  /** Recompress: the last decode-step queries (f32 [window][Hq * D] ring). */
  ring?: QueryRing;
}

interface QueryRing {
  buf: Float32Array;
  head: number; // next row written
  count: number; // rows held (<= window)
}

/** One list's re-compression, planned before anything changes. */
interface CompactPlan {
  list: HeadList;
  /** Old slots to keep, in their new slot order (frozen first, then by position). */
  slots: number[];
  frozen: number;
}

const FLOAT: readonly DType[] = ['f32', 'f16', 'bf16'];

function pick<T>(x: PerLayer<T> | undefined, layer: number, layers: number, what: string): T | undefined {
  if (x === undefined) return undefined;
  if (Array.isArray(x)) {
    if (x.length !== layers) throw new ShapeError(`${what}: ${x.length} policies given for ${layers} layers`);
    return x[layer] as T;
  }
  return x as T;
}

export class Sequence {
  readonly id: number;
  readonly cache: PagedKVCache;
  /** @internal */ readonly layers: (LayerState | undefined)[];
  /** @internal per-sequence policy state (ChunkKV index reuse). */ readonly state = new Map<string, unknown>();
  /** Prompt length (set by the first prefill). */
  promptLength = -1;
  private readonly prefillPolicies: (PrefillPolicy | null | undefined)[];
  private readonly decodePolicies: (DecodePolicy | null | undefined)[];
  /** @internal */ removed = false;

  /** @internal use cache.addSequence */
  constructor(cache: PagedKVCache, id: number, o: SequenceOptions) {
    this.cache = cache;
    this.id = id;
    this.layers = new Array(cache.numLayers).fill(undefined);
    this.prefillPolicies = [];
    this.decodePolicies = [];
    for (let l = 0; l < cache.numLayers; l++) {
      this.prefillPolicies.push(pick(o.prefill, l, cache.numLayers, 'addSequence: prefill'));
      this.decodePolicies.push(pick(o.decode, l, cache.numLayers, 'addSequence: decode'));
    }
    for (const p of this.prefillPolicies)
      if (p && typeof (p as PrefillPolicy).select !== 'function') throw new ArgumentError('addSequence: prefill must be a prefill policy (SnapKV, PyramidKV, ...)');
    for (const p of this.decodePolicies)
      if (p && typeof (p as DecodePolicy).evict !== 'function') throw new ArgumentError('addSequence: decode must be a decode policy (H2O, Quest, ...)');
  }

  prefillPolicy(layer: number): PrefillPolicy | null {
    return this.prefillPolicies[layer] ?? null;
  }
  decodePolicy(layer: number): DecodePolicy | null {
    return this.decodePolicies[layer] ?? null;
  }

  /** @internal */
  live(): void {
    if (this.removed) throw new DisposedError(`sequence ${this.id} was removed`);
    this.cache.live();
  }

  /**
   * Stores layer `layer`'s prompt, compressed by the layer's prefill policy.
   * q [Hq, L, D], k and v [Hkv, L, D] (any float dtype; converted to the
   * cache dtype when they differ). Returns the kept positions per KV head.
   */
  prefill(layer: number, q: Tensor, k: Tensor, v: Tensor): Int32Array[] {
    this.live();
    return this.cache.prefillSequence(this, layer, q, k, v);
  }

  /** Positions held per KV head at a layer, ascending. */
  kept(layer: number): Int32Array[] {
    this.live();
    this.cache.checkLayer(layer);
    const st = this.layers[layer];
    return st ? st.heads.map((h) => h.kept()) : [];
  }

  /** Slot -> position of each KV head's list at a layer (holes hold -1). */
  slots(layer: number): Int32Array[] {
    this.live();
    this.cache.checkLayer(layer);
    const st = this.layers[layer];
    if (!st) return [];
    return st.heads.map((h) => {
      const p = h.pos.slice(0, h.len);
      if (h.hole >= 0) p[h.hole] = -1;
      return p;
    });
  }

  /** Next position at a layer (prompt length + decoded tokens). */
  length(layer: number): number {
    this.cache.checkLayer(layer);
    return this.layers[layer]?.nextPos ?? 0;
  }

  stats(): SequenceStats {
    this.live();
    return this.cache.sequenceStats(this);
  }

  /** Frees every page of this sequence. */
  remove(): void {
    if (this.removed) return;
    this.cache.removeSequence(this);
  }
}

export class PagedKVCache {
  readonly numLayers: number;
  readonly numKvHeads: number;
  readonly numQHeads: number;
  readonly headDim: number;
  readonly dtype: DType;
  readonly device: string;
  readonly pageSize: number;
  readonly scale: number;
  /** @internal */ readonly pool: PagePool;
  private readonly sequences = new Map<number, Sequence>();
  /**
   * Diagnostics: the Quest pages read by the last decode() call, per query
   * head (b * Hq + h), logical page indices ascending; null when that call
   * attended densely everywhere. Read from the selection kernel's output on
   * first access (a step does not copy it to the host otherwise).
   */
  get lastSelection(): Int32Array[] | null {
    const s = this.lastSel;
    if (!s) return null;
    if (!s.host) {
      const indptr = s.indptr.toArray() as Int32Array;
      const pages = s.pages.toArray() as Int32Array;
      s.host = Array.from({ length: indptr.length - 1 }, (_, i) => pages.slice(indptr[i], indptr[i + 1]));
    }
    return s.host;
  }
  private lastSel: { indptr: Tensor; pages: Tensor; host?: Int32Array[] } | null = null;
  private clearLastSelection(): void {
    this.lastSel?.indptr.dispose();
    this.lastSel?.pages.dispose();
    this.lastSel = null;
  }
  private nextId = 0;
  private disposed = false;
  private scoreRec: { before: Tensor | null; after: Tensor | null; host: Float32Array } | null = null;
  private posBuf: { host: Int32Array; pos: Tensor | null; max: Tensor | null } | null = null;
  private tableBuf: TableBuffers | null = null;

  constructor(o: PagedKVCacheOptions) {
    if (o === null || typeof o !== 'object') throw new ArgumentError('PagedKVCache: expected an options object');
    const int = (x: unknown, what: string, lo: number, hi = 2 ** 31 - 1) => {
      if (typeof x !== 'number' || !Number.isInteger(x) || x < lo || x > hi) throw new KvsqRangeError(`PagedKVCache: ${what} = ${show(x)}: expected an integer in [${lo}, ${hi}]`);
      return x;
    };
    this.numLayers = int(o.layers, 'layers', 1, 4096);
    this.numKvHeads = int(o.kvHeads, 'kvHeads', 1, 4096);
    this.numQHeads = int(o.qHeads ?? o.kvHeads, 'qHeads', 1, 65536);
    if (this.numQHeads % this.numKvHeads) throw new ShapeError(`PagedKVCache: qHeads ${this.numQHeads} is not a multiple of kvHeads ${this.numKvHeads}`);
    this.headDim = int(o.headDim, 'headDim', 1, 4096);
    this.pageSize = int(o.pageSize ?? 16, 'pageSize', 1, 4096);
    if (o.scale !== undefined && (typeof o.scale !== 'number' || !Number.isFinite(o.scale) || o.scale <= 0))
      throw new KvsqRangeError(`PagedKVCache: scale = ${show(o.scale)} must be a positive finite number`);
    this.scale = o.scale ?? 1 / Math.sqrt(this.headDim);
    const pages = int(o.pages ?? 8192, 'pages', 1);
    const dtype = o.dtype ?? 'f16';
    if (!FLOAT.includes(dtype)) throw new DTypeError(`PagedKVCache: dtype '${show(dtype)}' must be f32, f16 or bf16`);
    this.dtype = dtype;
    this.device = o.device ?? 'cpu';
    this.pool = new PagePool({ numPages: pages, pageSize: this.pageSize, headDim: this.headDim, dtype, device: this.device, meta: true, scores: true });
    this.device = this.pool.k.device;
    // What the CUDA kernels take, checked here rather than at the first
    // decode step (after a prefill that worked): K/V rows of whole 16-byte
    // vectors up to 512 bytes, f32 rows up to 1024 where the device has the
    // shared memory for them (the decode launcher decides: native.decodeRowCheck).
    if (this.device !== 'cpu') {
      const why = native.decodeRowCheck(Number(this.device.slice(this.device.indexOf(':') + 1)), dtype, this.headDim);
      if (why !== null) {
        this.pool.dispose();
        throw new UnsupportedError(`PagedKVCache: headDim ${this.headDim} in ${dtype} on ${this.device}: ${why}; use device 'cpu' for this model`);
      }
    }
  }

  /** @internal */
  live(): void {
    if (this.disposed) throw new DisposedError('the cache was disposed');
  }
  /** @internal */
  checkLayer(layer: number): void {
    if (typeof layer !== 'number' || !Number.isInteger(layer) || layer < 0 || layer >= this.numLayers)
      throw new KvsqRangeError(`layer = ${show(layer)}: expected an integer in [0, ${this.numLayers})`);
  }

  addSequence(o: SequenceOptions = {}): Sequence {
    this.live();
    if (o === null || typeof o !== 'object') throw new ArgumentError('addSequence: expected an options object');
    const s = new Sequence(this, this.nextId, o);
    this.nextId++;
    this.sequences.set(s.id, s);
    return s;
  }

  /** @internal */
  removeSequence(s: Sequence): void {
    this.live();
    if (s.cache !== this || !this.sequences.has(s.id)) throw new StateError(`sequence ${s.id} does not belong to this cache`);
    const pages: number[] = [];
    for (const st of s.layers) if (st) for (const h of st.heads) pages.push(...h.pages);
    this.pool.release(pages);
    this.sequences.delete(s.id);
    s.removed = true;
  }

  /** Every sequence currently held. */
  get size(): number {
    return this.sequences.size;
  }

  // ---------------------------------------------------------------- prefill

  /** Tensor in the cache dtype (a converted copy when it differs; the caller disposes copies). */
  private asDType(t: Tensor, dtype: DType): Tensor {
    if (t.dtype === dtype) return t;
    return Tensor.from(t.toFloat32(), t.shape, { dtype, device: t.device });
  }

  /** @internal */
  prefillSequence(seq: Sequence, layer: number, q: Tensor, k: Tensor, v: Tensor): Int32Array[] {
    this.checkLayer(layer);
    if (seq.layers[layer]) throw new StateError(`sequence ${seq.id}: layer ${layer} was already prefilled`);
    for (const [t, n] of [[q, 'q'], [k, 'k'], [v, 'v']] as const) {
      if (!(t instanceof Tensor)) throw new ArgumentError(`prefill: ${n} must be a Tensor`);
      t.assertLive(`prefill: ${n}`);
      if (!FLOAT.includes(t.dtype)) throw new DTypeError(`prefill: ${n} has dtype ${t.dtype}; expected f32, f16 or bf16`);
      if (t.shape.length !== 3) throw new ShapeError(`prefill: ${n} must be 3-D, got [${t.shape.join(', ')}]`);
      if (t.device !== this.device) throw new ShapeError(`prefill: ${n} is on ${t.device}, the cache on ${this.device}`);
    }
    const [Hq, L, D] = q.shape;
    if (D !== this.headDim) throw new ShapeError(`prefill: head dim ${D} differs from the cache's ${this.headDim}`);
    if (Hq !== this.numQHeads) throw new ShapeError(`prefill: q has ${Hq} heads; the cache was made with qHeads ${this.numQHeads}`);
    const want = [this.numKvHeads, L, D];
    for (const [t, n] of [[k, 'k'], [v, 'v']] as const)
      if (t.shape.join() !== want.join()) throw new ShapeError(`prefill: ${n} has shape [${t.shape.join(', ')}]; expected [${want.join(', ')}]`);
    if (L < 1) throw new ShapeError('prefill: the prompt is empty');
    if (seq.promptLength >= 0 && seq.promptLength !== L)
      throw new ShapeError(`prefill: layer ${layer} has ${L} tokens but earlier layers had ${seq.promptLength}`);

    const Hkv = this.numKvHeads;
    const kc = this.asDType(k, this.dtype);
    const vc = this.asDType(v, this.dtype);
    const qc = this.asDType(q, this.dtype);
    const temps = [kc, vc, qc].filter((t, i) => t !== [k, v, q][i]);
    let decision: PrefillDecision | undefined;
    let initScores: Tensor | undefined;
    try {
      // After conversion: a value beyond the cache dtype's range became Inf there.
      this.checkFinite([[qc, 'q'], [kc, 'k'], [vc, 'v']], 'prefill');
      // Policy state is staged and kept only if the prefill succeeds (a failed
      // call must not leave, say, ChunkKV's reused indices behind).
      const staged = new Map(seq.state);
      const ctx = { layer, numLayers: this.numLayers, q: qc, k: kc, seqLen: L, numQHeads: Hq, numKvHeads: Hkv, headDim: D, state: staged, scale: this.scale };
      const policy = seq.prefillPolicy(layer);
      decision = policy ? policy.select(ctx) : { kept: null };
      const kept = decision.kept ?? Array.from({ length: Hkv }, () => {
        const a = new Int32Array(L);
        for (let i = 0; i < L; i++) a[i] = i;
        return a;
      });
      if (kept.length !== Hkv) throw new StateError(`prefill policy returned ${kept.length} heads; expected ${Hkv}`);
      // Scores the decode policy starts from.
      const dec = seq.decodePolicy(layer);
      if (dec?.accumulate) {
        if (dec.wantsPrefillScores) {
          initScores = decision.scores ?? ops.windowScores(qc, kc, { window: L, reduce: dec.accumulate, scale: this.scale });
          if (initScores === decision.scores) decision.scores = undefined;
        } else {
          initScores = Tensor.zeros([Hkv, L], { dtype: 'f32', device: this.device });
        }
      }

      // Take every page first: a pool that cannot hold the result changes nothing.
      const P = this.pageSize;
      const counts = kept.map((h) => Math.ceil(h.length / P));
      const pages = this.pool.alloc(counts.reduce((a, b) => a + b, 0));
      const heads: HeadList[] = [];
      try {
        const total = kept.reduce((n, h) => n + h.length, 0);
        const src = new Int32Array(total);
        const dst = new Int32Array(total);
        const metaPages: number[] = [];
        const metaFill: number[] = [];
        let o = 0;
        let pi = 0;
        for (let j = 0; j < Hkv; j++) {
          const h = new HeadList();
          h.pages = pages.slice(pi, pi + counts[j]);
          pi += counts[j];
          const pos = kept[j];
          for (let i = 0; i < pos.length; i++) {
            if (i > 0 && pos[i] <= pos[i - 1]) throw new StateError(`prefill policy returned unsorted positions for head ${j}`);
            if (pos[i] < 0 || pos[i] >= L) throw new StateError(`prefill policy returned position ${pos[i]} outside [0, ${L})`);
            src[o] = j * L + pos[i];
            dst[o] = h.pages[Math.floor(i / P)] * P + (i % P);
            h.setPos(i, pos[i]);
            o++;
          }
          h.len = pos.length;
          if (decision.frozen) h.frozen = pos.length;
          h.pages.forEach((p, idx) => {
            metaPages.push(p);
            metaFill.push(Math.min(P, pos.length - idx * P));
          });
          heads.push(h);
        }
        const srcT = Tensor.from(src, [total]);
        const dstT = Tensor.from(dst, [total]);
        const mp = Tensor.from(Int32Array.from(metaPages), [metaPages.length]);
        const mf = Tensor.from(Int32Array.from(metaFill), [metaFill.length]);
        const scoreSrc = initScores ? initScores : undefined;
        try {
          ops.gather({
            kSrc: kc, vSrc: vc, srcRow: srcT, kPool: this.pool.k, vPool: this.pool.v, dstSlot: dstT,
            scoreSrc, scorePool: scoreSrc ? this.pool.scores : undefined,
          });
          if (metaPages.length) ops.pageMeta({ kPool: this.pool.k, metaPool: this.pool.meta!, pageIds: mp, fill: mf });
        } finally {
          for (const t of [srcT, dstT, mp, mf]) t.dispose();
        }
      } catch (e) {
        this.pool.release(pages);
        throw e;
      }
      seq.layers[layer] = { heads, nextPos: L, steps: 0 };
      seq.state.clear();
      for (const [key, value] of staged) seq.state.set(key, value);
      if (seq.promptLength < 0) seq.promptLength = L;
      return heads.map((h) => h.kept());
    } finally {
      decision?.scores?.dispose();
      initScores?.dispose();
      for (const t of temps) t.dispose();
    }
  }

  /**
   * The cache refuses NaN and +-Inf in Q, K and V (KVSQ_NAN) before it changes
   * anything: a non-finite key would poison its page's Quest bounds for good,
   * and non-finite scores would never be evicted. The standalone ops
   * propagate instead (docs/reliability.md).
   */
  private checkFinite(ts: Array<[Tensor, string]>, what: string): void {
    // One count for all of them (on a GPU one wait per step, not one per
    // tensor); only a failure counts them one by one, for the message.
    if (ts.every(([t]) => t.device === ts[0][0].device) && !ops.countNonFinite(ts.map(([t]) => t))) return;
    for (const [t, name] of ts) {
      const bad = ops.countNonFinite(t);
      if (bad) throw new NaNError(`${what}: ${name} holds ${bad} NaN or infinite values; the cache accepts finite values only`);
    }
  }

  // ---------------------------------------------------------------- page tables

  /**
   * @internal i32 tensors describing the lists of `seqs` at `layer` (b * Hkv + j
   * order): fresh ones (the caller disposes them), or with `reuse` the cache's
   * own, refilled in place (`ids` may then be longer than the lists need: the
   * ops read it through `indptr`). Three fresh tensors per step cost a decode
   * step 50-70 us on this stack (the 64 KB id array's allocation, freed and
   * faulted in again every step), as much as a short list's attention.
   */
  pageTables(seqs: readonly Sequence[], layer: number, reuse?: TableBuffers): { indptr: Tensor; ids: Tensor; len: Tensor; lists: HeadList[] } {
    const lists: HeadList[] = [];
    for (const s of seqs) {
      const st = s.layers[layer];
      if (!st) throw new StateError(`sequence ${s.id}: layer ${layer} has not been prefilled`);
      lists.push(...st.heads);
    }
    const indptr = new Int32Array(lists.length + 1);
    lists.forEach((h, i) => (indptr[i + 1] = indptr[i] + h.pages.length));
    const total = indptr[lists.length];
    const len = Int32Array.from(lists.map((h) => h.len));
    if (reuse && reuse.hostIds.length < total) reuse.hostIds = new Int32Array(Math.max(total, 2 * reuse.hostIds.length));
    const ids = reuse ? reuse.hostIds : new Int32Array(total);
    lists.forEach((h, i) => ids.set(h.pageIds(), indptr[i]));
    if (!reuse) return { indptr: Tensor.from(indptr, [indptr.length]), ids: Tensor.from(ids, [ids.length]), len: Tensor.from(len, [len.length]), lists };
    reuse.ids = grown(reuse.ids, total, 'i32', 'cpu');
    if (total) reuse.ids.write(ids.subarray(0, total));
    const exact = (cur: Tensor | null, src: Int32Array): Tensor => {
      if (cur?.numel === src.length) return cur.write(src);
      cur?.dispose();
      return Tensor.from(src, [src.length]);
    };
    reuse.indptr = exact(reuse.indptr, indptr);
    reuse.len = exact(reuse.len, len);
    return { indptr: reuse.indptr, ids: reuse.ids, len: reuse.len, lists };
  }

  private checkBatch(seqs: readonly Sequence[], what: string): void {
    if (!Array.isArray(seqs) || seqs.length === 0) throw new ArgumentError(`${what}: sequences must be a non-empty array`);
    const seen = new Set<number>();
    for (const s of seqs) {
      if (!(s instanceof Sequence)) throw new ArgumentError(`${what}: every element must be a Sequence`);
      if (s.cache !== this) throw new StateError(`${what}: sequence ${s.id} belongs to another cache`);
      s.live();
      if (seen.has(s.id)) throw new ArgumentError(`${what}: sequence ${s.id} appears twice in the batch`);
      seen.add(s.id);
    }
  }

  private checkStepTensor(t: unknown, name: string, heads: number, B: number): Tensor {
    if (!(t instanceof Tensor)) throw new ArgumentError(`${name} must be a Tensor`);
    t.assertLive(name);
    if (!FLOAT.includes(t.dtype)) throw new DTypeError(`${name} has dtype ${t.dtype}; expected f32, f16 or bf16`);
    const want = [B, heads, this.headDim];
    if (t.shape.join() !== want.join()) throw new ShapeError(`${name} has shape [${t.shape.join(', ')}]; expected [${want.join(', ')}]`);
    if (t.device !== this.device) throw new ShapeError(`${name} is on ${t.device}, the cache on ${this.device}`);
    return t;
  }

  /**
   * Attention of q [B, Hq, D] over what the sequences hold at `layer`, without
   * appending anything. Returns [B, Hq, D] in q's dtype.
   */
  attend(layer: number, seqs: readonly Sequence[], q: Tensor): Tensor {
    this.live();
    this.checkLayer(layer);
    this.checkBatch(seqs, 'attend');
    this.checkStepTensor(q, 'attend: q', this.numQHeads, seqs.length);
    const t = this.pageTables(seqs, layer);
    // A hole (evicted last step) must not be attended: attend() is between steps.
    if (t.lists.some((h) => h.hole >= 0 && h.hole < h.len - 1)) {
      for (const x of [t.indptr, t.ids, t.len]) x.dispose();
      throw new StateError('attend: a list has an evicted slot pending refill; call decode() for the next token instead');
    }
    const lenArr = Int32Array.from(t.lists.map((h) => h.len - (h.hole === h.len - 1 ? 1 : 0)));
    const len = Tensor.from(lenArr, [lenArr.length]);
    try {
      return ops.decodeAttention({ q, kPool: this.pool.k, vPool: this.pool.v, pageIndptr: t.indptr, pageIds: t.ids, kvLen: len, numKvHeads: this.numKvHeads, scale: this.scale }).o;
    } finally {
      for (const x of [t.indptr, t.ids, t.len, len]) x.dispose();
    }
  }

  // ---------------------------------------------------------------- decode

  /**
   * One decode step for a batch of sequences at `layer`: appends each
   * sequence's new k/v [B, Hkv, D] (into an evicted slot or the end of the
   * list, with the Quest metadata update), attends q [B, Hq, D] over the held
   * tokens (Quest: over the selected pages), accumulates scores when the
   * policy needs them, and applies the policy's eviction. Returns [B, Hq, D].
   */
  decode(layer: number, seqs: readonly Sequence[], q: Tensor, k: Tensor, v: Tensor): Tensor {
    this.live();
    this.checkLayer(layer);
    this.checkBatch(seqs, 'decode');
    const B = seqs.length;
    this.checkStepTensor(q, 'decode: q', this.numQHeads, B);
    this.checkStepTensor(k, 'decode: k', this.numKvHeads, B);
    this.checkStepTensor(v, 'decode: v', this.numKvHeads, B);
    for (const s of seqs) if (!s.layers[layer]) throw new StateError(`decode: sequence ${s.id} has not been prefilled at layer ${layer}`);
    // Converted to the cache dtype first: a value beyond its range became Inf there.
    const kc = this.asDType(k, this.dtype);
    const vc = this.asDType(v, this.dtype);
    try {
      this.checkFinite([[q, 'q'], [kc, 'k'], [vc, 'v']], 'decode');
      return this.decodeStep(layer, seqs, q, kc, vc);
    } finally {
      if (kc !== k) kc.dispose();
      if (vc !== v) vc.dispose();
    }
  }

  /** decode() after its checks; k and v are in the cache dtype. */
  private decodeStep(layer: number, seqs: readonly Sequence[], q: Tensor, kc: Tensor, vc: Tensor): Tensor {
    const Hkv = this.numKvHeads;
    const P = this.pageSize;

    // Plan: the slot each (b, j) writes, and the pages that takes.
    const plan: { list: HeadList; slot: number; newPage: boolean }[] = [];
    for (const s of seqs)
      for (const h of s.layers[layer]!.heads) {
        if (h.hole >= 0) plan.push({ list: h, slot: h.hole, newPage: false });
        else plan.push({ list: h, slot: h.len, newPage: h.len === h.pages.length * P });
      }
    const fresh = this.pool.alloc(plan.filter((x) => x.newPage).length);
    this.clearLastSelection();
    // Undo record: a step changes each list in a few fields only (one slot,
    // its length, its hole, maybe one more page), so it saves those rather
    // than copying the lists.
    const before = seqs.map((s) => {
      const st = s.layers[layer]!;
      return { st, nextPos: st.nextPos, steps: st.steps };
    });
    const saved = plan.map((x) => ({
      pages: x.list.pages.length,
      len: x.list.len,
      hole: x.list.hole,
      pos: x.slot < x.list.pos.length ? x.list.pos[x.slot] : 0,
    }));
    const temps: Tensor[] = [];
    const track = <T extends Tensor>(t: T) => (temps.push(t), t);
    // What a failure after the kernels started must undo: the scores attention
    // added (restored from the kernel's before-record), and the page metadata
    // append widened.
    const step: StepScores = { undo: [], views: new Map(), fast: new Map() };
    const touched = new Set<number>();
    const ringUndo: (() => void)[] = [];
    try {
      let fi = 0;
      const slots = new Int32Array(plan.length);
      const reset = new Int32Array(plan.length);
      plan.forEach((x, i) => {
        if (x.newPage) {
          x.list.pages.push(fresh[fi++]);
          x.list.ver++;
        }
        const page = x.list.pages[Math.floor(x.slot / P)];
        if (!x.newPage) touched.add(page);
        slots[i] = page * P + (x.slot % P);
        reset[i] = x.newPage ? 1 : 0;
      });
      ops.append({
        kNew: kc, vNew: vc, dstSlot: track(Tensor.from(slots, [slots.length])), kPool: this.pool.k, vPool: this.pool.v,
        metaPool: this.pool.meta, resetMeta: track(Tensor.from(reset, [reset.length])), scorePool: this.pool.scores,
      });
      // Bookkeeping of the appended tokens.
      let pi = 0;
      for (const s of seqs) {
        const st = s.layers[layer]!;
        for (let j = 0; j < Hkv; j++) {
          const x = plan[pi++];
          x.list.setPos(x.slot, st.nextPos);
          if (x.slot === x.list.len) x.list.len++;
          x.list.hole = -1;
        }
      }

      // Attention; the policy of each sequence decides accumulation and Quest.
      // With accumulation the kernel also returns each list's scores after
      // the add (the eviction view) and before it (the undo record).
      const o = this.attendStep(layer, seqs, q, track, step);

      // Eviction, per sequence.
      for (const s of seqs) {
        const st = s.layers[layer]!;
        st.nextPos++;
        st.steps++;
        const pol = s.decodePolicy(layer);
        if (!pol) continue;
        const ev = pol.accumulate && pol.evictionLimit
          ? st.heads.map((h) => step.fast.get(h) ?? -1)
          : pol.evict(
              st.heads.map((h) => ({
                length: h.len,
                positions: h.pos.subarray(0, h.len),
                scores: pol.accumulate ? step.views.get(h) : undefined,
                frozenSlots: h.frozen,
                newest: st.nextPos - 1,
                promptLength: s.promptLength,
              })),
              layer,
            );
        ev.forEach((slot, j) => {
          if (slot < 0) return;
          const h = st.heads[j];
          if (slot >= h.len) throw new StateError(`decode policy ${pol.name} evicted slot ${slot} of ${h.len}`);
          h.hole = slot;
        });
      }
      // Periodic re-compression (Recompress) after the step: record this
      // step's queries, then plan, copy and commit (the commit cannot fail).
      if (seqs.some((s) => s.decodePolicy(layer)?.recompress)) {
        try {
          this.recompressStep(layer, seqs, q, ringUndo);
        } catch (e) {
          o.dispose();
          throw e;
        }
      }
      return o;
    } catch (e) {
      for (let i = ringUndo.length - 1; i >= 0; i--) ringUndo[i]();
      // Restore the bookkeeping, the scores and the metadata, and give back
      // the pages taken for this step.
      plan.forEach((x, i) => {
        const o = saved[i];
        if (x.list.pages.length !== o.pages) {
          x.list.pages.length = o.pages;
          x.list.ver++;
        }
        if (x.slot < x.list.pos.length) x.list.pos[x.slot] = o.pos;
        x.list.len = o.len;
        x.list.hole = o.hole;
      });
      for (const b of before) {
        b.st.nextPos = b.nextPos;
        b.st.steps = b.steps;
      }
      this.pool.release(fresh);
      this.undoStep(step.undo, touched, plan.map((x) => x.list));
      throw e;
    } finally {
      for (const t of temps) t.dispose();
    }
  }

  /**
   * Recompress after a decode step (lib/policies/recompress.ts): records each
   * sequence's queries in its ring (undo closures pushed on `undo`), then, for
   * the (sequence, layer)s whose step count is a multiple of `interval`, runs
   * the scorer over the lists holding more than `target` tokens and compacts
   * them into fresh pages. All-or-nothing over the batch: every scorer runs
   * and every fresh page is taken and filled before any list changes; on a
   * failure the fresh pages go back and the lists are as they were.
   */
  private recompressStep(layer: number, seqs: readonly Sequence[], q: Tensor, undo: (() => void)[]): void {
    const Hq = this.numQHeads;
    const D = this.headDim;
    const row = Hq * D;
    const qf = q.toFloat32();
    const jobs: { st: LayerState; cfg: RecompressConfig }[] = [];
    seqs.forEach((s, b) => {
      const cfg = s.decodePolicy(layer)?.recompress;
      if (!cfg) return;
      const st = s.layers[layer]!;
      // Record this step's queries.
      const had = st.ring;
      const ring = had && had.buf.length === cfg.window * row ? had : { buf: new Float32Array(cfg.window * row), head: 0, count: 0 };
      const at = ring.head * row;
      const old = ring.buf.slice(at, at + row);
      const [head, count] = [ring.head, ring.count];
      ring.buf.set(qf.subarray(b * row, (b + 1) * row), at);
      ring.head = (ring.head + 1) % cfg.window;
      ring.count = Math.min(ring.count + 1, cfg.window);
      st.ring = ring;
      undo.push(() => {
        ring.buf.set(old, at);
        ring.head = head;
        ring.count = count;
        st.ring = had;
      });
      if (st.steps % cfg.interval === 0 && st.heads.some((h) => h.held() > cfg.target)) jobs.push({ st, cfg });
    });
    if (!jobs.length) return;

    // Plan: the scorer's kept positions per list, mapped back to slots.
    const plans: CompactPlan[] = [];
    for (const { st, cfg } of jobs) plans.push(...this.planRecompress(layer, st, cfg));
    if (!plans.length) return;

    // Take every fresh page first (KVSQ_OOM here changes nothing), then copy.
    const P = this.pageSize;
    const counts = plans.map((p) => Math.ceil(p.slots.length / P));
    const fresh = this.pool.alloc(counts.reduce((a, b) => a + b, 0));
    const newPages: number[][] = [];
    try {
      const total = plans.reduce((n, p) => n + p.slots.length, 0);
      const src = new Int32Array(total);
      const dst = new Int32Array(total);
      const metaPages: number[] = [];
      const metaFill: number[] = [];
      let o = 0;
      let fi = 0;
      plans.forEach((p, i) => {
        const pages = fresh.slice(fi, fi + counts[i]);
        fi += counts[i];
        newPages.push(pages);
        p.slots.forEach((slot, r) => {
          src[o] = p.list.pages[Math.floor(slot / P)] * P + (slot % P);
          dst[o] = pages[Math.floor(r / P)] * P + (r % P);
          o++;
        });
        pages.forEach((pg, idx) => {
          metaPages.push(pg);
          metaFill.push(Math.min(P, p.slots.length - idx * P));
        });
      });
      if (total > 0) {
        const t = [Tensor.from(src, [total]), Tensor.from(dst, [total]), Tensor.from(Int32Array.from(metaPages), [metaPages.length]), Tensor.from(Int32Array.from(metaFill), [metaFill.length])];
        try {
          ops.gather({
            kSrc: this.pool.k, vSrc: this.pool.v, srcRow: t[0], kPool: this.pool.k, vPool: this.pool.v, dstSlot: t[1],
            scoreSrc: this.pool.scores, scorePool: this.pool.scores,
          });
          if (this.pool.meta) ops.pageMeta({ kPool: this.pool.k, metaPool: this.pool.meta, pageIds: t[2], fill: t[3] });
        } finally {
          for (const x of t) x.dispose();
        }
      }
    } catch (e) {
      this.pool.release(fresh);
      throw e;
    }

    // Commit: plain bookkeeping.
    const freed: number[] = [];
    plans.forEach((p, i) => {
      const h = p.list;
      const pos = p.slots.map((slot) => h.pos[slot]);
      freed.push(...h.pages);
      h.pages = newPages[i];
      h.ver++;
      h.pos = new Int32Array(Math.max(16, pos.length));
      h.pos.set(pos);
      h.len = pos.length;
      h.hole = -1;
      h.frozen = p.frozen;
    });
    this.pool.release(freed);
  }

  /** The scorer's decisions for one (sequence, layer): lists to compact (kept all: none). */
  private planRecompress(layer: number, st: LayerState, cfg: RecompressConfig): CompactPlan[] {
    const Hkv = this.numKvHeads;
    const g = this.numQHeads / Hkv;
    const D = this.headDim;
    const row = this.numQHeads * D;
    // Held slots of each list in ascending position order.
    const sorted = st.heads.map((h) => {
      const slots: number[] = [];
      for (let s = 0; s < h.len; s++) if (s !== h.hole) slots.push(s);
      return slots.sort((a, b) => h.pos[a] - h.pos[b]);
    });
    const n0 = sorted[0].length;
    // Equal counts: one scorer call over every head; else one per head over target.
    const calls: number[][] = sorted.every((x) => x.length === n0)
      ? [Array.from({ length: Hkv }, (_, j) => j)]
      : sorted.map((x, j) => (x.length > cfg.target ? [j] : [])).filter((x) => x.length);
    const ring = st.ring!;
    const w = ring.count;
    const plans: CompactPlan[] = [];
    for (const heads of calls) {
      const n = sorted[heads[0]].length;
      const hk = heads.length;
      const hq = hk * g;
      // ctx.q [hq, w, D]: the ring's rows oldest first, the query heads of `heads`.
      const qa = new Float32Array(hq * w * D);
      for (let i = 0; i < w; i++) {
        const r = ((ring.head - w + i + cfg.window) % cfg.window) * row;
        heads.forEach((j, jj) => {
          for (let x = 0; x < g; x++) {
            const hSrc = j * g + x;
            const hDst = jj * g + x;
            qa.set(ring.buf.subarray(r + hSrc * D, r + (hSrc + 1) * D), (hDst * w + i) * D);
          }
        });
      }
      const temps: Tensor[] = [];
      let decision: PrefillDecision | undefined;
      try {
        const qt = Tensor.from(qa, [hq, w, D], { dtype: this.dtype, device: this.device });
        temps.push(qt);
        // ctx.k [hk, n, D]: the held K rows in position order (V goes along: gather copies both).
        const kt = Tensor.zeros([hk, n, D], { dtype: this.dtype, device: this.device });
        temps.push(kt);
        const vt = Tensor.zeros([hk, n, D], { dtype: this.dtype, device: this.device });
        temps.push(vt);
        const src = new Int32Array(hk * n);
        const dst = new Int32Array(hk * n);
        heads.forEach((j, jj) => {
          const h = st.heads[j];
          sorted[j].forEach((slot, i) => {
            src[jj * n + i] = h.pages[Math.floor(slot / this.pageSize)] * this.pageSize + (slot % this.pageSize);
            dst[jj * n + i] = jj * n + i;
          });
        });
        const srcT = Tensor.from(src, [src.length]);
        temps.push(srcT);
        const dstT = Tensor.from(dst, [dst.length]);
        temps.push(dstT);
        ops.gather({ kSrc: this.pool.k, vSrc: this.pool.v, srcRow: srcT, kPool: kt, vPool: vt, dstSlot: dstT });
        const ctx: PrefillContext = { layer, numLayers: this.numLayers, q: qt, k: kt, seqLen: n, numQHeads: hq, numKvHeads: hk, headDim: D, state: new Map(), scale: this.scale };
        decision = cfg.scorer.select(ctx);
        if (!decision || decision.kept === null || decision.kept === undefined) continue;
        const kept = decision.kept;
        if (!Array.isArray(kept) || kept.length !== hk) throw new StateError(`recompress: scorer ${cfg.scorer.name} returned ${Array.isArray(kept) ? kept.length : 'no'} heads; expected ${hk}`);
        heads.forEach((j, jj) => {
          const idx = kept[jj];
          for (let i = 0; i < idx.length; i++) {
            if (idx[i] < 0 || idx[i] >= n) throw new StateError(`recompress: scorer ${cfg.scorer.name} returned index ${idx[i]} outside [0, ${n})`);
            if (i > 0 && idx[i] <= idx[i - 1]) throw new StateError(`recompress: scorer ${cfg.scorer.name} returned unsorted indices for head ${j}`);
          }
          if (idx.length === n) return; // keeps everything: leave the list as it is
          const h = st.heads[j];
          const slots = Array.from(idx, (i) => sorted[j][i]);
          const frozen = slots.filter((s) => s < h.frozen);
          plans.push({ list: h, slots: [...frozen, ...slots.filter((s) => s >= h.frozen)], frozen: frozen.length });
        });
      } finally {
        decision?.scores?.dispose();
        for (const t of temps) t.dispose();
      }
    }
    return plans;
  }

  /** Best-effort undo of a failed step's writes (errors here would hide the original one). */
  private undoStep(scoreUndo: readonly ScoreUndo[], touched: Set<number>, heads: HeadList[]): void {
    try {
      for (const u of scoreUndo) ops.writeScores({ scorePool: this.pool.scores!, pageIndptr: u.tables.indptr, pageIds: u.tables.ids, kvLen: u.tables.len, values: u.values });
      if (touched.size && this.pool.meta) {
        const pages: number[] = [];
        const fill: number[] = [];
        for (const h of heads)
          h.pages.forEach((p, i) => {
            const n = Math.min(this.pageSize, h.len - i * this.pageSize);
            if (touched.has(p) && n > 0) {
              pages.push(p);
              fill.push(n);
            }
          });
        if (pages.length) {
          const pt = Tensor.from(Int32Array.from(pages), [pages.length]);
          const ft = Tensor.from(Int32Array.from(fill), [fill.length]);
          try {
            ops.pageMeta({ kPool: this.pool.k, metaPool: this.pool.meta, pageIds: pt, fill: ft });
          } finally {
            pt.dispose();
            ft.dispose();
          }
        }
      }
    } catch {
      // The original error is what the caller needs to see.
    }
  }

  /** Attention for a decode step: dense, with accumulation, or over Quest-selected pages. */
  private attendStep(layer: number, seqs: readonly Sequence[], q: Tensor, track: (t: Tensor) => Tensor, step: StepScores): Tensor {
    // Sequences of a batch may have different policies: group by (accumulate, quest) and run each group.
    const groups = new Map<string, number[]>();
    seqs.forEach((s, b) => {
      const p = s.decodePolicy(layer);
      const quest = p?.quest && layer >= p.quest.denseLayers ? p.quest : null;
      const key = `${p?.accumulate ?? ''}|${quest ? `${quest.budget}:${quest.share}` : ''}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key)!.push(b);
    });
    if (groups.size === 1) return this.attendGroup(layer, seqs, q, track, step);
    // Mixed batch: one launch per group, outputs scattered back in batch order.
    const B = seqs.length;
    const Hq = this.numQHeads;
    const D = this.headDim;
    const qf = q.toFloat32();
    const out = new Float32Array(B * Hq * D);
    for (const idx of groups.values()) {
      const sub = new Float32Array(idx.length * Hq * D);
      idx.forEach((b, i) => sub.set(qf.subarray(b * Hq * D, (b + 1) * Hq * D), i * Hq * D));
      const qs = track(Tensor.from(sub, [idx.length, Hq, D], { dtype: q.dtype, device: this.device }));
      const o = track(this.attendGroup(layer, idx.map((b) => seqs[b]), qs, track, step)).toFloat32();
      idx.forEach((b, i) => out.set(o.subarray(i * Hq * D, (i + 1) * Hq * D), b * Hq * D));
    }
    return Tensor.from(out, [B, Hq, D], { dtype: q.dtype, device: this.device });
  }

  private attendGroup(layer: number, seqs: readonly Sequence[], q: Tensor, track: (t: Tensor) => Tensor, step: StepScores): Tensor {
    const pol = seqs[0].decodePolicy(layer);
    // The first group of a step fills the cache's reusable tables; a mixed
    // batch's further groups get fresh ones (the first group's undo record
    // holds its tables until the step ends).
    let t: ReturnType<PagedKVCache['pageTables']>;
    if (!step.tablesTaken) {
      step.tablesTaken = true;
      t = this.pageTables(seqs, layer, (this.tableBuf ??= { hostIds: new Int32Array(0), indptr: null, ids: null, len: null }));
    } else {
      t = this.pageTables(seqs, layer);
      [t.indptr, t.ids, t.len].forEach(track);
    }
    const reduce: Reduce | undefined = pol?.accumulate ?? undefined;
    let selIndptr: Tensor | undefined;
    let selPages: Tensor | undefined;
    const quest = pol?.quest && layer >= pol.quest.denseLayers ? pol.quest : null;
    if (quest) {
      const sel = this.questSelect(q, t, quest, track);
      if (sel) [selIndptr, selPages] = sel;
    }
    let rec: { before: Tensor; after: Tensor; host: Float32Array } | undefined;
    let evictPositions: Tensor | undefined;
    let evictMaxPos: Tensor | undefined;
    let needViews = false;
    if (reduce) {
      let total = 0;
      for (const h of t.lists) total += h.len;
      // The first group of a step uses the cache's reusable record; a mixed
      // batch's further groups get their own (the first one's undo record
      // must survive until the step ends).
      rec = this.scoreRecord(total, step.undo.length === 0, track);
      // Policies with an eviction limit get their candidate from the kernel;
      // the others scan the scores after the add in evict().
      const Hkv = this.numKvHeads;
      const maxPos = new Int32Array(t.lists.length).fill(INT32_MIN);
      let fast = false;
      seqs.forEach((s, b) => {
        const p = s.decodePolicy(layer);
        if (!p?.evictionLimit) {
          needViews = true;
          return;
        }
        fast = true;
        const st = s.layers[layer]!;
        for (let j = 0; j < Hkv; j++) {
          const h = st.heads[j];
          const view = { length: h.len, positions: h.pos.subarray(0, h.len), frozenSlots: h.frozen, newest: st.nextPos, promptLength: s.promptLength };
          const lim = p.evictionLimit(view, layer);
          if (lim !== null) maxPos[b * Hkv + j] = lim;
        }
      });
      if (fast) {
        // Reused host buffer and tensors, refilled in place (a fresh 64 KB
        // tensor per step cost more than the kernel's eviction scan).
        const buf = this.positionBuffers(total, t.lists.length, step.undo.length === 0, track);
        let off = 0;
        for (const h of t.lists) {
          buf.host.set(h.pos.subarray(0, h.len), off);
          off += h.len;
        }
        evictPositions = buf.pos.write(buf.host.subarray(0, total));
        evictMaxPos = buf.max.write(maxPos);
      }
    }
    const r = ops.decodeAttention({
      q, kPool: this.pool.k, vPool: this.pool.v, pageIndptr: t.indptr, pageIds: t.ids, kvLen: t.len,
      numKvHeads: this.numKvHeads, scale: this.scale, scorePool: reduce ? this.pool.scores : undefined, reduce, selIndptr, selPages,
      scoresBefore: rec?.before, scoresAfter: needViews ? rec?.after : undefined, evictPositions, evictMaxPos,
    });
    if (rec) step.undo.push({ tables: t, values: rec.before });
    if (r.evictSlots) {
      const slots = track(r.evictSlots).toArray() as Int32Array;
      t.lists.forEach((h, i) => step.fast.set(h, slots[i]));
    }
    if (rec && needViews) {
      const after = rec.after.toFloat32(rec.host);
      let off = 0;
      for (const h of t.lists) {
        step.views.set(h, after.subarray(off, off + h.len));
        off += h.len;
      }
    }
    return r.o;
  }

  /**
   * The flat slot positions and per-list maxima a step hands to the kernel:
   * the cache's reusable ones for the first group of a step, fresh tracked
   * ones for a mixed batch's further groups. Host tensors whatever the
   * cache's device: index arrays are read on the host by the binding anyway
   * (and uploaded with the step's page tables).
   */
  private positionBuffers(total: number, lists: number, first: boolean, track: (t: Tensor) => Tensor): { host: Int32Array; pos: Tensor; max: Tensor } {
    if (!first) return { host: new Int32Array(total), pos: track(grown(null, total, 'i32', 'cpu')), max: track(Tensor.zeros([lists], { dtype: 'i32' })) };
    const b = (this.posBuf ??= { host: new Int32Array(0), pos: null, max: null });
    b.pos = grown(b.pos, total, 'i32', 'cpu');
    if (b.host.length < b.pos.numel) b.host = new Int32Array(b.pos.numel);
    if (b.max?.numel !== lists) {
      const max = Tensor.zeros([lists], { dtype: 'i32' });
      b.max?.dispose();
      b.max = max;
    }
    return { host: b.host, pos: b.pos, max: b.max };
  }

  /**
   * The before/after score record of a decode step: the cache's reusable one
   * for the first group of a step, fresh tracked ones for a mixed batch's
   * further groups (the first group's undo record must survive the step).
   */
  private scoreRecord(total: number, first: boolean, track: (t: Tensor) => Tensor): { before: Tensor; after: Tensor; host: Float32Array } {
    if (!first) {
      const after = track(grown(null, total, 'f32', this.device));
      return { before: track(grown(null, total, 'f32', this.device)), after, host: new Float32Array(after.numel) };
    }
    const r = (this.scoreRec ??= { before: null, after: null, host: new Float32Array(0) });
    r.before = grown(r.before, total, 'f32', this.device);
    r.after = grown(r.after, total, 'f32', this.device);
    if (r.host.length < r.after.numel) r.host = new Float32Array(r.after.numel);
    return { before: r.before, after: r.after, host: r.host };
  }

  /**
   * Quest page selection (methods.md): per query head (or per KV head with
   * share), the top pages - 1 pages by bound plus the last page; lists with at
   * most `pages` pages attend densely (every page listed).
   */
  private questSelect(
    q: Tensor,
    t: { indptr: Tensor; ids: Tensor; len: Tensor; lists: HeadList[] },
    cfg: { budget: number; share: boolean },
    track: (t: Tensor) => Tensor,
  ): [Tensor, Tensor] | null {
    const P = this.pageSize;
    const budgetPages = Math.max(1, Math.floor(cfg.budget / P));
    if (t.lists.every((h) => Math.ceil(h.len / P) <= budgetPages)) return null; // all dense
    // Bounds, top pages and the per-head lists in one kernel call (on the
    // cache's device: nothing comes back to the host but the diagnostics).
    // decode() has checked q (qChecked), so on a GPU nothing waits here.
    const sel = ops.questSelect({
      q, metaPool: this.pool.meta!, pageIndptr: t.indptr, pageIds: t.ids, kvLen: t.len,
      numKvHeads: this.numKvHeads, pageSize: P, share: cfg.share, budgetPages, qChecked: true,
    });
    // Kept (not tracked) until the next step: lastSelection reads them on demand.
    this.clearLastSelection();
    this.lastSel = { indptr: sel.selIndptr, pages: sel.selPages };
    return [sel.selIndptr, sel.selPages];
  }

  // ---------------------------------------------------------------- accounting

  /** @internal */
  sequenceStats(s: Sequence): SequenceStats {
    const tokens: number[][] = [];
    let pages = 0;
    let fullPages = 0;
    for (const st of s.layers) {
      if (!st) {
        tokens.push([]);
        continue;
      }
      tokens.push(st.heads.map((h) => h.held()));
      for (const h of st.heads) pages += h.pages.length;
      fullPages += this.numKvHeads * Math.ceil(st.nextPos / this.pageSize);
    }
    const bpp = this.pool.bytesPerPage;
    return {
      id: s.id,
      promptLength: s.promptLength,
      tokens,
      pages,
      bytesHeld: pages * bpp,
      bytesFull: fullPages * bpp,
      bytesSaved: (fullPages - pages) * bpp,
    };
  }

  stats(): CacheStats {
    this.live();
    const tokens: number[][] = Array.from({ length: this.numLayers }, () => new Array(this.numKvHeads).fill(0));
    let full = 0;
    for (const s of this.sequences.values()) {
      const ss = this.sequenceStats(s);
      full += ss.bytesFull;
      ss.tokens.forEach((row, l) => row.forEach((n, j) => (tokens[l][j] += n)));
    }
    const bpp = this.pool.bytesPerPage;
    const held = this.pool.used * bpp;
    return {
      pages: { total: this.pool.numPages, used: this.pool.used, free: this.pool.free, pageSize: this.pageSize, bytesPerPage: bpp },
      bytes: { pool: this.pool.numPages * bpp, held, full, saved: full - held },
      sequences: this.sequences.size,
      tokens,
    };
  }

  /** Frees the pools. Every later call throws KVSQ_DISPOSED. */
  dispose(): void {
    if (this.disposed) return;
    for (const s of this.sequences.values()) s.removed = true;
    this.sequences.clear();
    this.pool.dispose();
    this.clearLastSelection();
    for (const t of [this.posBuf?.pos, this.posBuf?.max, this.scoreRec?.before, this.scoreRec?.after, this.tableBuf?.indptr, this.tableBuf?.ids, this.tableBuf?.len]) t?.dispose();
    this.posBuf = null;
    this.scoreRec = null;
    this.tableBuf = null;
    this.disposed = true;
  }
}
