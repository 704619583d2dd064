/**
 * Plain TypeScript float64 reference implementations of every kernel of
 * native/core/ops.h, written from spec/methods.md and the ops.h comments:
 * simple loops, no blocking, no SIMD, no cleverness. They are the oracles of
 * test/ops.test.ts and the baselines of `kvsqueeze bench`.
 *
 * Inputs are plain arrays (Float64Array, Float32Array, number[] ...) plus the
 * sizes the native kernel receives; f16/bf16 inputs must be given as the
 * values the tensor really holds (read back with tensor.toFloat32()), so the
 * only difference to a kernel is the kernel's own fp32 arithmetic. The
 * in-place kernels (append, gather, pageMeta, decode attention's score
 * accumulation) update the arrays they are given.
 *
 * Layouts are those of ops.h: a list l's slot s lives in physical page
 * pageIds[pageIndptr[l] + floor(s / P)], row s % P; K row of slot r of page p
 * at (p * P + r) * D; Quest metadata of page p at p * 2 * D (kmin[D], kmax[D]).
 */
import { KvsqRangeError, NaNError } from '../errors';

export type Vec = ArrayLike<number>;
/** A writable array of numbers (Float64Array, Float32Array, number[] ...). */
export interface MutVec {
  [i: number]: number;
  readonly length: number;
}
export type Reduce = 'mean' | 'sum' | 'max';
export type PoolMode = 'max' | 'avg';

function reduceOf(vals: number[], how: Reduce): number {
  if (how === 'max') {
    let m = -Infinity;
    for (const v of vals) if (v > m) m = v;
    return m;
  }
  let s = 0;
  for (const v of vals) s += v;
  return how === 'sum' ? s : s / vals.length;
}

type Fast = Float64Array | Float32Array;
/** The array itself when it is a typed float array of this realm, else a float64 copy (fast hot loops). */
function f64(a: Vec): Fast {
  return a instanceof Float64Array || a instanceof Float32Array ? a : Float64Array.from(a as ArrayLike<number>);
}

function dot(a: Fast, ao: number, b: Fast, bo: number, D: number): number {
  let s = 0;
  for (let d = 0; d < D; d++) s += a[ao + d] * b[bo + d];
  return s;
}

/** Physical slot (page * P + row) of slot s of list l. */
export function physSlot(pageIndptr: Vec, pageIds: Vec, P: number, l: number, s: number): number {
  return pageIds[pageIndptr[l] + Math.floor(s / P)] * P + (s % P);
}

// ------------------------------------------------------------------ decode attention

export interface DecodeAttentionRefArgs {
  batch: number;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  /** [B, Hq, D] */
  q: Vec;
  /** [pages, P, D] */
  kPool: Vec;
  vPool: Vec;
  /** [B*Hkv + 1], [...], [B*Hkv] */
  pageIndptr: Vec;
  pageIds: Vec;
  kvLen: Vec;
  /** default 1/sqrt(D) */
  scale?: number;
  /** Quest subset: [B*Hq + 1] and the logical pages of each query head. */
  selIndptr?: Vec;
  selPages?: Vec;
  /** [pages * P], updated in place: += reduce over the group of this step's probabilities. */
  scorePool?: MutVec;
  reduce?: Reduce;
}
export interface DecodeAttentionRefResult {
  /** [B, Hq, D] */
  o: Float64Array;
  /** [B, Hq], natural log; -Infinity when nothing is attended */
  lse: Float64Array;
}

export function decodeAttention(a: DecodeAttentionRefArgs): DecodeAttentionRefResult {
  const { batch: B, numQHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P } = a;
  const g = Hq / Hkv;
  const scale = a.scale ?? 1 / Math.sqrt(D);
  const reduce = a.reduce ?? 'mean';
  const q = f64(a.q);
  const kPool = f64(a.kPool);
  const vPool = f64(a.vPool);
  const o = new Float64Array(B * Hq * D);
  const lse = new Float64Array(B * Hq).fill(-Infinity);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < Hkv; j++) {
      const l = b * Hkv + j;
      const n = a.kvLen[l];
      // probs[hh][s]: probability of slot s for the group's head hh (0 when not attended)
      const probs: Float64Array[] = [];
      const touched = new Uint8Array(n);
      for (let hh = 0; hh < g; hh++) {
        const h = j * g + hh;
        const qo = (b * Hq + h) * D;
        // the attended slots
        const slots: number[] = [];
        if (a.selIndptr && a.selPages) {
          for (let i = a.selIndptr[b * Hq + h]; i < a.selIndptr[b * Hq + h + 1]; i++) {
            const p = a.selPages[i];
            for (let s = p * P; s < Math.min(n, (p + 1) * P); s++) slots.push(s);
          }
        } else {
          for (let s = 0; s < n; s++) slots.push(s);
        }
        const pr = new Float64Array(n);
        probs.push(pr);
        if (slots.length === 0) continue;
        const z = slots.map((s) => scale * dot(q, qo, kPool, physSlot(a.pageIndptr, a.pageIds, P, l, s) * D, D));
        let m = -Infinity;
        for (const v of z) if (v > m) m = v;
        let sum = 0;
        for (const v of z) sum += Math.exp(v - m);
        lse[b * Hq + h] = m + Math.log(sum);
        for (let i = 0; i < slots.length; i++) {
          const p = Math.exp(z[i] - m) / sum;
          pr[slots[i]] = p;
          touched[slots[i]] = 1;
          const vo = physSlot(a.pageIndptr, a.pageIds, P, l, slots[i]) * D;
          for (let d = 0; d < D; d++) o[qo + d] += p * vPool[vo + d];
        }
      }
      if (a.scorePool) {
        for (let s = 0; s < n; s++) {
          if (!touched[s]) continue;
          const vals: number[] = [];
          for (let hh = 0; hh < g; hh++) vals.push(probs[hh][s]);
          a.scorePool[physSlot(a.pageIndptr, a.pageIds, P, l, s)] += reduceOf(vals, reduce);
        }
      }
    }
  }
  return { o, lse };
}

// ------------------------------------------------------------------ window scores

export interface WindowScoresRefArgs {
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  /** L */
  seqLen: number;
  /** w, 1..L */
  window: number;
  /** rows per head of q (>= w); the last w are the window */
  qRows: number;
  /** [Hq, qRows, D] */
  q: Vec;
  /** [Hkv, L, D] */
  k: Vec;
  scale?: number;
  reduce?: Reduce;
}

/** S [Hkv, L]: group-reduced sums over the window rows of the causal-in-window softmax. */
export function windowScores(a: WindowScoresRefArgs): Float64Array {
  const { numQHeads: Hq, numKvHeads: Hkv, headDim: D, seqLen: L, window: w, qRows } = a;
  const g = Hq / Hkv;
  const scale = a.scale ?? 1 / Math.sqrt(D);
  const reduce = a.reduce ?? 'mean';
  const q = f64(a.q);
  const k = f64(a.k);
  const out = new Float64Array(Hkv * L);
  const A = new Float64Array(g * L);
  const z = new Float64Array(L);
  for (let j = 0; j < Hkv; j++) {
    A.fill(0);
    for (let hh = 0; hh < g; hh++) {
      const h = j * g + hh;
      for (let i = 0; i < w; i++) {
        const p = L - w + i;
        const qo = (h * qRows + qRows - w + i) * D;
        let m = -Infinity;
        for (let t = 0; t <= p; t++) {
          z[t] = scale * dot(q, qo, k, (j * L + t) * D, D);
          if (z[t] > m) m = z[t];
        }
        let sum = 0;
        for (let t = 0; t <= p; t++) sum += Math.exp(z[t] - m);
        for (let t = 0; t <= p; t++) A[hh * L + t] += Math.exp(z[t] - m) / sum;
      }
    }
    const vals: number[] = new Array(g);
    for (let t = 0; t < L; t++) {
      for (let hh = 0; hh < g; hh++) vals[hh] = A[hh * L + t];
      out[j * L + t] = reduceOf(vals, reduce);
    }
  }
  return out;
}

// ------------------------------------------------------------------ pool1d / chunk scores

export interface Pool1dRefArgs {
  rows: number;
  /** prefix length pooled */
  n: number;
  /** elements between rows of x (>= n) */
  inStride: number;
  /** odd */
  kernel: number;
  mode: PoolMode;
  x: Vec;
}

/** [rows, n]: max of the in-range neighbours, or their sum / kernel (zero padding). */
export function pool1d(a: Pool1dRefArgs): Float64Array {
  const { rows, n, inStride, kernel: k, mode } = a;
  const r2 = (k - 1) / 2;
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    for (let t = 0; t < n; t++) {
      let acc = mode === 'max' ? -Infinity : 0;
      for (let u = Math.max(0, t - r2); u <= Math.min(n - 1, t + r2); u++) {
        const x = a.x[r * inStride + u];
        acc = mode === 'max' ? Math.max(acc, x) : acc + x;
      }
      out[r * n + t] = mode === 'max' ? acc : acc / k;
    }
  }
  return out;
}

export interface ChunkScoresRefArgs {
  rows: number;
  n: number;
  inStride: number;
  chunk: number;
  x: Vec;
}

/** [ceil(n / chunk)]: sums over all rows and the chunk's positions. */
export function chunkScores(a: ChunkScoresRefArgs): Float64Array {
  const { rows, n, inStride, chunk } = a;
  const out = new Float64Array(Math.ceil(n / chunk));
  for (let c = 0; c < out.length; c++) {
    let s = 0;
    for (let r = 0; r < rows; r++) for (let t = c * chunk; t < Math.min(n, (c + 1) * chunk); t++) s += a.x[r * inStride + t];
    out[c] = s;
  }
  return out;
}

// ------------------------------------------------------------------ top-k

export interface TopkRefArgs {
  rows: number;
  rowStride: number;
  /** [rows, rowStride] */
  scores: Vec;
  /** per-row lengths; default rowStride */
  lengths?: Vec;
  /** one k for all rows, or one per row */
  k: number | Vec;
}
export interface TopkRefResult {
  /** [rows, width], ascending, -1 padded */
  indices: Int32Array;
  counts: Int32Array;
  /** max over rows of min(k, len) */
  width: number;
}

/** Sort-based: order by (score desc, index asc), take k, sort ascending. NaN -> NaNError. */
export function topk(a: TopkRefArgs): TopkRefResult {
  const { rows, rowStride } = a;
  const kOf = (r: number) => (typeof a.k === 'number' ? a.k : a.k[r]);
  const lenOf = (r: number) => (a.lengths ? a.lengths[r] : rowStride);
  let width = 0;
  for (let r = 0; r < rows; r++) {
    if (kOf(r) < 0 || lenOf(r) < 0 || lenOf(r) > rowStride) throw new KvsqRangeError(`topk reference: row ${r}: bad k or length`);
    width = Math.max(width, Math.min(kOf(r), lenOf(r)));
  }
  const indices = new Int32Array(rows * width).fill(-1);
  const counts = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const len = lenOf(r);
    const idx: number[] = [];
    for (let t = 0; t < len; t++) {
      if (Number.isNaN(a.scores[r * rowStride + t])) throw new NaNError(`topk reference: NaN at row ${r}, position ${t}`);
      idx.push(t);
    }
    const s = (t: number) => a.scores[r * rowStride + t];
    idx.sort((x, y) => (s(x) !== s(y) ? (s(y) > s(x) ? 1 : -1) : x - y));
    const kept = idx.slice(0, Math.min(kOf(r), len)).sort((x, y) => x - y);
    counts[r] = kept.length;
    for (let i = 0; i < kept.length; i++) indices[r * width + i] = kept[i];
  }
  return { indices, counts, width };
}

// ------------------------------------------------------------------ Quest page bounds

export interface QuestBoundsRefArgs {
  batch: number;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  /** [B, Hq, D] */
  q: Vec;
  /** [pages, 2, D]: kmin then kmax */
  metaPool: Vec;
  pageIndptr: Vec;
  pageIds: Vec;
  kvLen: Vec;
  share?: boolean;
}
export interface QuestBoundsRefResult {
  /** [B, share ? Hkv : Hq, width]; -Infinity for the last page and beyond */
  out: Float64Array;
  /** max(1, max pages - 1) */
  width: number;
}

export function questBounds(a: QuestBoundsRefArgs): QuestBoundsRefResult {
  const { batch: B, numQHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P } = a;
  const g = Hq / Hkv;
  let maxPages = 0;
  for (let l = 0; l < B * Hkv; l++) maxPages = Math.max(maxPages, Math.ceil(a.kvLen[l] / P));
  const width = Math.max(1, maxPages - 1);
  const H = a.share ? Hkv : Hq;
  const out = new Float64Array(B * H * width).fill(-Infinity);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const j = Math.floor(h / g);
      const l = b * Hkv + j;
      const n = Math.ceil(a.kvLen[l] / P);
      const row = (b * H + (a.share ? j : h)) * width;
      for (let p = 0; p < n - 1; p++) {
        const mo = a.pageIds[a.pageIndptr[l] + p] * 2 * D;
        let u = 0;
        for (let d = 0; d < D; d++) {
          const qd = a.q[(b * Hq + h) * D + d];
          u += Math.max(qd * a.metaPool[mo + D + d], qd * a.metaPool[mo + d]);
        }
        out[row + p] = a.share ? Math.max(out[row + p], u) : u;
      }
    }
  }
  return { out, width };
}

// ------------------------------------------------------------------ append / gather / page meta

export interface AppendRefArgs {
  count: number;
  headDim: number;
  pageSize: number;
  /** [count, D] */
  kNew: Vec;
  vNew: Vec;
  /** physical slots page * P + row */
  dstSlot: Vec;
  /** per row: nonzero = the page's metadata restarts from this key; default: slot is row 0 */
  resetMeta?: Vec;
  kPool: MutVec;
  vPool: MutVec;
  metaPool?: MutVec;
  scorePool?: MutVec;
}

/** In place, rows in order: copy K/V, reset or widen the page's kmin/kmax, zero the slot's score. */
export function append(a: AppendRefArgs): void {
  const { count, headDim: D, pageSize: P } = a;
  for (let i = 0; i < count; i++) {
    const slot = a.dstSlot[i];
    for (let d = 0; d < D; d++) {
      a.kPool[slot * D + d] = a.kNew[i * D + d];
      a.vPool[slot * D + d] = a.vNew[i * D + d];
    }
    if (a.metaPool) {
      const mo = Math.floor(slot / P) * 2 * D;
      const reset = a.resetMeta ? a.resetMeta[i] !== 0 : slot % P === 0;
      for (let d = 0; d < D; d++) {
        const x = a.kNew[i * D + d];
        if (reset) {
          a.metaPool[mo + d] = x;
          a.metaPool[mo + D + d] = x;
        } else {
          if (x < a.metaPool[mo + d]) a.metaPool[mo + d] = x;
          if (x > a.metaPool[mo + D + d]) a.metaPool[mo + D + d] = x;
        }
      }
    }
    if (a.scorePool) a.scorePool[slot] = 0;
  }
}

export interface GatherRefArgs {
  count: number;
  headDim: number;
  /** source rows (row r at r * D) */
  kSrc: Vec;
  vSrc: Vec;
  srcRow: Vec;
  /** one score per source row */
  scoreSrc?: Vec;
  kPool: MutVec;
  vPool: MutVec;
  scorePool?: MutVec;
  dstSlot: Vec;
}

/** In place: row srcRow[i] of the source into physical slot dstSlot[i] (all reads before any write). */
export function gather(a: GatherRefArgs): void {
  const { count, headDim: D } = a;
  const k = new Float64Array(count * D);
  const v = new Float64Array(count * D);
  const sc = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const r = a.srcRow[i];
    for (let d = 0; d < D; d++) {
      k[i * D + d] = a.kSrc[r * D + d];
      v[i * D + d] = a.vSrc[r * D + d];
    }
    if (a.scoreSrc) sc[i] = a.scoreSrc[r];
  }
  for (let i = 0; i < count; i++) {
    const s = a.dstSlot[i];
    for (let d = 0; d < D; d++) {
      a.kPool[s * D + d] = k[i * D + d];
      a.vPool[s * D + d] = v[i * D + d];
    }
    if (a.scorePool) a.scorePool[s] = sc[i];
  }
}

export interface PageMetaRefArgs {
  count: number;
  headDim: number;
  pageSize: number;
  kPool: Vec;
  metaPool: MutVec;
  pageIds: Vec;
  /** valid rows of each page, 1..P */
  fill: Vec;
}

/** In place: kmin/kmax of each listed page over its first fill rows. */
export function pageMeta(a: PageMetaRefArgs): void {
  const { count, headDim: D, pageSize: P } = a;
  for (let i = 0; i < count; i++) {
    const p = a.pageIds[i];
    const mo = p * 2 * D;
    for (let d = 0; d < D; d++) {
      let mn = a.kPool[p * P * D + d];
      let mx = mn;
      for (let r = 1; r < a.fill[i]; r++) {
        const x = a.kPool[(p * P + r) * D + d];
        if (x < mn) mn = x;
        if (x > mx) mx = x;
      }
      a.metaPool[mo + d] = mn;
      a.metaPool[mo + D + d] = mx;
    }
  }
}
