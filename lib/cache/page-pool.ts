/**
 * The page pool of one cache on one device: K, V (and Quest kmin/kmax, and
 * accumulated scores) for `numPages` pages of `pageSize` slots x `headDim`.
 * Pages are handed out from a free list; allocation is all-or-nothing, so a
 * request the pool cannot meet changes nothing (KVSQ_OOM). Freed pages are
 * checked against double frees: a bookkeeping bug fails loudly here instead
 * of corrupting another sequence's cache.
 */
import { OutOfMemoryError, StateError } from '../errors';
import { DType, Tensor } from '../tensor';

export interface PagePoolOptions {
  numPages: number;
  pageSize: number;
  headDim: number;
  dtype: DType;
  device: string;
  /** Allocate the Quest metadata pool ([pages, 2, D] kmin/kmax). */
  meta: boolean;
  /** Allocate the score pool (f32 [pages, P], for H2O/ShotKV accumulation). */
  scores: boolean;
}

export class PagePool {
  readonly numPages: number;
  readonly pageSize: number;
  readonly headDim: number;
  readonly dtype: DType;
  readonly device: string;
  readonly k: Tensor;
  readonly v: Tensor;
  readonly meta: Tensor | undefined;
  readonly scores: Tensor | undefined;
  /** Bytes one page holds across K, V, meta and scores. */
  readonly bytesPerPage: number;

  private readonly freeList: Int32Array;
  private freeCount: number;
  private readonly inUse: Uint8Array;

  constructor(o: PagePoolOptions) {
    this.numPages = o.numPages;
    this.pageSize = o.pageSize;
    this.headDim = o.headDim;
    this.dtype = o.dtype;
    this.device = o.device;
    const shape = [o.numPages, o.pageSize, o.headDim];
    const made: Tensor[] = [];
    try {
      this.k = Tensor.zeros(shape, { dtype: o.dtype, device: o.device });
      made.push(this.k);
      this.v = Tensor.zeros(shape, { dtype: o.dtype, device: o.device });
      made.push(this.v);
      this.meta = o.meta ? Tensor.zeros([o.numPages, 2, o.headDim], { dtype: o.dtype, device: o.device }) : undefined;
      if (this.meta) made.push(this.meta);
      this.scores = o.scores ? Tensor.zeros([o.numPages, o.pageSize], { dtype: 'f32', device: o.device }) : undefined;
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    }
    const es = o.dtype === 'f32' ? 4 : 2;
    this.bytesPerPage =
      2 * o.pageSize * o.headDim * es + (o.meta ? 2 * o.headDim * es : 0) + (o.scores ? 4 * o.pageSize : 0);
    // Lowest ids first: a fresh pool fills from the start.
    this.freeList = new Int32Array(o.numPages);
    for (let i = 0; i < o.numPages; i++) this.freeList[i] = o.numPages - 1 - i;
    this.freeCount = o.numPages;
    this.inUse = new Uint8Array(o.numPages);
  }

  get free(): number {
    return this.freeCount;
  }
  get used(): number {
    return this.numPages - this.freeCount;
  }

  /** n pages, or KVSQ_OOM with nothing taken. */
  alloc(n: number): number[] {
    if (n > this.freeCount)
      throw new OutOfMemoryError(`page pool exhausted: ${n} pages requested, ${this.freeCount} of ${this.numPages} free`);
    const out: number[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const p = this.freeList[--this.freeCount];
      this.inUse[p] = 1;
      out[i] = p;
    }
    return out;
  }

  release(pages: readonly number[]): void {
    for (const p of pages) {
      if (!Number.isInteger(p) || p < 0 || p >= this.numPages || !this.inUse[p])
        throw new StateError(`page ${p} released twice or never allocated (pool bookkeeping error)`);
    }
    for (const p of pages) {
      this.inUse[p] = 0;
      this.freeList[this.freeCount++] = p;
    }
  }

  /** Pages currently allocated (for invariant checks). */
  isAllocated(p: number): boolean {
    return this.inUse[p] === 1;
  }

  dispose(): void {
    this.k.dispose();
    this.v.dispose();
    this.meta?.dispose();
    this.scores?.dispose();
  }
}
