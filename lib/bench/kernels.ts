/**
 * The kernel cases of `kvsqueeze bench`: per kernel, fresh random inputs of
 * the target shape (or a small one with --quick), the native call, the bytes
 * it must move and the flops it must do, and its plain TypeScript reference
 * (lib/reference/kernels.ts) as the baseline.
 */
import { ops } from '../ops';
import { DType, Tensor } from '../tensor';
import * as ref from '../reference/kernels';

type FD = 'f32' | 'f16' | 'bf16';
const BYTES: Record<FD, number> = { f32: 4, f16: 2, bf16: 2 };

/** Uniform random floats in [lo, hi) (xorshift32 seeded from Math.random: fresh every run, fast for 10^8 values). */
export function randomF32(n: number, lo = -1, hi = 1): Float32Array {
  const a = new Float32Array(n);
  let x = (Math.random() * 0xffffffff) >>> 0 || 0x9e3779b9;
  const s = (hi - lo) / 4294967296;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    a[i] = lo + (x >>> 0) * s;
  }
  return a;
}
function shuffled(n: number): Int32Array {
  const a = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    const t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
  return a;
}
/** Tensor makers on one device ('cpu' or 'cuda:N'): every tensor of a case lives where its kernel runs. */
function makers(device: string) {
  return {
    i32: (a: Int32Array | number[]) => Tensor.from(a instanceof Int32Array ? a : Int32Array.from(a), [a.length], { device }),
    ft: (n: number, shape: number[], dtype: DType, lo = -1, hi = 1) => Tensor.from(randomF32(n, lo, hi), shape, { dtype, device }),
    from: (a: Float32Array, shape: number[], dtype: DType = 'f32') => Tensor.from(a, shape, { dtype, device }),
  };
}

/** The reference on a shape with its work divided by `div` (div = 1: the full shape). */
export interface Baseline {
  run(div: number): void;
  /** the largest divisor available (1: only the full shape) */
  maxDiv: number;
  shapeAt(div: number): string;
}

export interface OrtSpec {
  Hq: number;
  Hkv: number;
  D: number;
  L: number;
  kvDtype: 'f32' | 'f16';
  q: Float32Array;
  k: Float32Array | Uint16Array;
  v: Float32Array | Uint16Array;
  /** our output, to compare ORT's with */
  ours(): Float32Array;
}

export interface Prepared {
  run(): void;
  /** bytes the kernel must move (compulsory traffic) */
  bytes: number;
  /** flops it must do, when that is the meaningful bound */
  flops?: number;
  baseline: Baseline;
  ort?: OrtSpec;
  dispose(): void;
}

export interface KernelCase {
  /** id for --kernel */
  id: string;
  kernel: string;
  shape: string;
  dtype: string;
  /** memory-bound (GB/s vs copy) or compute-bound (GFLOP/s vs FMA peak) */
  bound: 'memory' | 'compute';
  setup(): Prepared;
}

function disposeAll(ts: (Tensor | undefined)[]) {
  for (const t of ts) t?.dispose();
}

// ------------------------------------------------------------------ decode attention

function decodeCase(Hq: number, Hkv: number, D: number, L: number, P: number, dt: FD, withOrt: boolean, dev = 'cpu'): KernelCase {
  const { i32, ft } = makers(dev);
  const g = Hq / Hkv;
  return {
    id: `decode-${dt}`,
    kernel: 'decodeAttention',
    shape: `B1 Hq${Hq} Hkv${Hkv} D${D} L${L} P${P}`,
    dtype: dt,
    bound: 'memory',
    setup() {
      const per = Math.ceil(L / P);
      const N = Hkv * per;
      const ids = shuffled(N);
      const indptr = Array.from({ length: Hkv + 1 }, (_, j) => j * per);
      const kPool = ft(N * P * D, [N, P, D], dt);
      const vPool = ft(N * P * D, [N, P, D], dt);
      const q = ft(Hq * D, [1, Hq, D], dt, -2, 2);
      const args = { q, kPool, vPool, pageIndptr: i32(indptr), pageIds: i32(ids), kvLen: i32(Array(Hkv).fill(L)), numKvHeads: Hkv };
      let last: Tensor | undefined;
      const kv = { k: kPool.toFloat32(), v: vPool.toFloat32(), q: q.toFloat32() };
      const baseline: Baseline = {
        maxDiv: Hkv,
        shapeAt: (div) => `Hq${Hq / div} Hkv${Hkv / div} D${D} L${L}`,
        run(div) {
          const hkv = Hkv / div;
          ref.decodeAttention({
            batch: 1,
            numQHeads: hkv * g,
            numKvHeads: hkv,
            headDim: D,
            pageSize: P,
            q: kv.q.subarray(0, hkv * g * D),
            kPool: kv.k,
            vPool: kv.v,
            pageIndptr: indptr.slice(0, hkv + 1),
            pageIds: ids,
            kvLen: Array(hkv).fill(L),
          });
        },
      };
      let ort: OrtSpec | undefined;
      if (withOrt && (dt === 'f32' || dt === 'f16')) {
        // dense [Hkv, L, D] copies of the lists for ORT (f16 as bits)
        const src = dt === 'f16' ? { k: kPool.toArray() as Uint16Array, v: vPool.toArray() as Uint16Array } : { k: kv.k, v: kv.v };
        const mk = () => (dt === 'f16' ? new Uint16Array(Hkv * L * D) : new Float32Array(Hkv * L * D));
        const k = mk();
        const v = mk();
        for (let j = 0; j < Hkv; j++)
          for (let s = 0; s < L; s++) {
            const phys = (ids[indptr[j] + Math.floor(s / P)] * P + (s % P)) * D;
            const o = (j * L + s) * D;
            k.set(src.k.subarray(phys, phys + D), o);
            v.set(src.v.subarray(phys, phys + D), o);
          }
        ort = { Hq, Hkv, D, L, kvDtype: dt, q: kv.q, k, v, ours: () => (last ? last.toFloat32() : new Float32Array(0)) };
      }
      return {
        run() {
          last?.dispose();
          last = ops.decodeAttention(args).o;
        },
        bytes: 2 * Hkv * L * D * BYTES[dt] + 2 * Hq * D * BYTES[dt] + Hkv * per * 4,
        flops: 4 * Hq * L * D,
        baseline,
        ort,
        dispose: () => disposeAll([last, ...Object.values(args).filter((x): x is Tensor => x instanceof Tensor)]),
      };
    },
  };
}

// ------------------------------------------------------------------ window scores

function windowCase(Hq: number, Hkv: number, D: number, L: number, w: number, dt: FD, dev = 'cpu'): KernelCase {
  const { ft } = makers(dev);
  const pairs = w * (L - w) + (w * (w + 1)) / 2;
  return {
    id: 'window',
    kernel: 'windowScores',
    shape: `Hq${Hq} Hkv${Hkv} D${D} L${L} w${w}`,
    dtype: dt,
    bound: 'compute',
    setup() {
      const q = ft(Hq * w * D, [Hq, w, D], dt);
      const k = ft(Hkv * L * D, [Hkv, L, D], dt);
      const qv = q.toFloat32();
      const kv = k.toFloat32();
      let last: Tensor | undefined;
      return {
        run() {
          last?.dispose();
          last = ops.windowScores(q, k, { window: w });
        },
        bytes: (Hq * w * D + Hkv * L * D) * BYTES[dt] + Hkv * L * 4,
        flops: 2 * Hq * D * pairs,
        baseline: {
          maxDiv: Hkv,
          shapeAt: (div) => `Hq${Hq / div} Hkv${Hkv / div} D${D} L${L} w${w}`,
          run(div) {
            const hq = Hq / div;
            const hkv = Hkv / div;
            ref.windowScores({ numQHeads: hq, numKvHeads: hkv, headDim: D, seqLen: L, window: w, qRows: w, q: qv.subarray(0, hq * w * D), k: kv.subarray(0, hkv * L * D) });
          },
        },
        dispose: () => disposeAll([q, k, last]),
      };
    },
  };
}

// ------------------------------------------------------------------ top-k

function topkCase(rows: number, len: number, k: number, dev = 'cpu'): KernelCase {
  const { from } = makers(dev);
  return {
    id: 'topk',
    kernel: 'topk',
    shape: `${rows} x ${len}, k ${k}`,
    dtype: 'f32',
    bound: 'memory',
    setup() {
      const s = randomF32(rows * len);
      const t = from(s, [rows, len]);
      let last: { indices: Tensor; counts: Tensor } | undefined;
      return {
        run() {
          if (last) disposeAll([last.indices, last.counts]);
          last = ops.topk(t, k);
        },
        bytes: rows * len * 4 + rows * k * 4,
        baseline: {
          maxDiv: rows,
          shapeAt: (div) => `${rows / div} x ${len}, k ${k}`,
          run(div) {
            ref.topk({ rows: rows / div, rowStride: len, scores: s, k });
          },
        },
        dispose: () => disposeAll([t, last?.indices, last?.counts]),
      };
    },
  };
}

// ------------------------------------------------------------------ Quest bounds

/**
 * Quest bounds, or (select > 0) the whole page choice with `select` pages per
 * head (ops.questSelect: bounds + top pages + page lists); its bytes are the
 * same metadata read, its baseline the same TypeScript bounds.
 */
function questCase(Hq: number, Hkv: number, D: number, L: number, P: number, dt: FD, share: boolean, dev = 'cpu', select = 0): KernelCase {
  const { i32, ft, from } = makers(dev);
  const pages = Math.ceil(L / P);
  const id = `quest${select ? '-select' : ''}${share ? '-share' : ''}`;
  return {
    id,
    kernel: select ? 'questSelect' : 'questBounds',
    shape: `Hq${Hq} Hkv${Hkv} D${D} ${pages} pages of ${P}${share ? ', shared' : ''}${select ? `, ${select} pages per head` : ''}`,
    dtype: dt,
    bound: 'memory',
    setup() {
      const N = Hkv * pages;
      const ids = shuffled(N);
      const indptr = Array.from({ length: Hkv + 1 }, (_, j) => j * pages);
      const a = randomF32(N * D);
      const b = randomF32(N * D);
      const meta = new Float32Array(N * 2 * D);
      for (let p = 0; p < N; p++)
        for (let d = 0; d < D; d++) {
          meta[p * 2 * D + d] = Math.min(a[p * D + d], b[p * D + d]);
          meta[p * 2 * D + D + d] = Math.max(a[p * D + d], b[p * D + d]);
        }
      const metaPool = from(meta, [N, 2, D], dt);
      const q = ft(Hq * D, [1, Hq, D], dt, -2, 2);
      const mv = metaPool.toFloat32();
      const qv = q.toFloat32();
      const args = { q, metaPool, pageIndptr: i32(indptr), pageIds: i32(ids), kvLen: i32(Array(Hkv).fill(L)), numKvHeads: Hkv, pageSize: P, share };
      let last: Tensor[] = [];
      const g = Hq / Hkv;
      return {
        run() {
          disposeAll(last);
          if (select) {
            const r = ops.questSelect({ ...args, budgetPages: select });
            last = [r.selIndptr, r.selPages];
          } else {
            last = [ops.questBounds(args)];
          }
        },
        bytes: Hkv * (pages - 1) * 2 * D * BYTES[dt] + Hq * D * BYTES[dt] + (share ? Hkv : Hq) * (pages - 1) * 4,
        baseline: {
          maxDiv: Hkv,
          shapeAt: (div) => `Hq${Hq / div} Hkv${Hkv / div} D${D} ${pages} pages`,
          run(div) {
            const hkv = Hkv / div;
            ref.questBounds({
              batch: 1,
              numQHeads: hkv * g,
              numKvHeads: hkv,
              headDim: D,
              pageSize: P,
              q: qv.subarray(0, hkv * g * D),
              metaPool: mv,
              pageIndptr: indptr.slice(0, hkv + 1),
              pageIds: ids,
              kvLen: Array(hkv).fill(L),
              share,
            });
          },
        },
        dispose: () => disposeAll([...last, q, metaPool, args.pageIndptr, args.pageIds, args.kvLen]),
      };
    },
  };
}

// ------------------------------------------------------------------ pool1d / chunk scores

function poolCase(rows: number, width: number, n: number, kernel: number, mode: 'max' | 'avg', dev = 'cpu'): KernelCase {
  const { from } = makers(dev);
  return {
    id: `pool1d-${mode}`,
    kernel: 'pool1d',
    shape: `${rows} x ${n} (row ${width}), k ${kernel} ${mode}`,
    dtype: 'f32',
    bound: 'memory',
    setup() {
      const x = randomF32(rows * width);
      const t = from(x, [rows, width]);
      let last: Tensor | undefined;
      return {
        run() {
          last?.dispose();
          last = ops.pool1d(t, { n, kernel, mode });
        },
        bytes: 2 * rows * n * 4,
        baseline: { maxDiv: 1, shapeAt: () => `${rows} x ${n}`, run: () => void ref.pool1d({ rows, n, inStride: width, kernel, mode, x }) },
        dispose: () => disposeAll([t, last]),
      };
    },
  };
}

function chunkCase(rows: number, width: number, n: number, chunk: number, dev = 'cpu'): KernelCase {
  const { from } = makers(dev);
  return {
    id: 'chunk',
    kernel: 'chunkScores',
    shape: `${rows} x ${n} (row ${width}), chunk ${chunk}`,
    dtype: 'f32',
    bound: 'memory',
    setup() {
      const x = randomF32(rows * width);
      const t = from(x, [rows, width]);
      let last: Tensor | undefined;
      return {
        run() {
          last?.dispose();
          last = ops.chunkScores(t, { n, chunk });
        },
        bytes: rows * n * 4 + Math.ceil(n / chunk) * 4,
        baseline: { maxDiv: 1, shapeAt: () => `${rows} x ${n}`, run: () => void ref.chunkScores({ rows, n, inStride: width, chunk, x }) },
        dispose: () => disposeAll([t, last]),
      };
    },
  };
}

// ------------------------------------------------------------------ append / gather

function appendCase(heads: number, D: number, P: number, poolPages: number, dt: FD, dev = 'cpu'): KernelCase {
  const { i32, ft } = makers(dev);
  return {
    id: 'append',
    kernel: 'append',
    shape: `1 token x ${heads} KV heads, D${D}, pool ${poolPages} pages of ${P}, meta + scores`,
    dtype: dt,
    bound: 'memory',
    setup() {
      const N = poolPages;
      const kPool = ft(N * P * D, [N, P, D], dt);
      const vPool = ft(N * P * D, [N, P, D], dt);
      const metaPool = ft(N * 2 * D, [N, 2, D], dt);
      const scorePool = ft(N * P, [N, P], 'f32');
      const pages = shuffled(N).subarray(0, heads);
      const slots = Array.from(pages, (p) => p * P + 1 + Math.floor(Math.random() * (P - 1))); // mid-page: widen
      const kNew = ft(heads * D, [heads, 1, D], dt);
      const vNew = ft(heads * D, [heads, 1, D], dt);
      const args = { kNew, vNew, dstSlot: i32(slots), kPool, vPool, metaPool, scorePool };
      const r = { k: kPool.toFloat32(), v: vPool.toFloat32(), m: metaPool.toFloat32(), s: scorePool.toFloat32(), kn: kNew.toFloat32(), vn: vNew.toFloat32() };
      return {
        run: () => ops.append(args),
        // read k/v rows, write them; read + write the page metadata; write the score
        bytes: 2 * 2 * heads * D * BYTES[dt] + 2 * heads * 2 * D * BYTES[dt] + heads * 4,
        baseline: {
          maxDiv: 1,
          shapeAt: () => `1 token x ${heads} heads`,
          run: () =>
            ref.append({ count: heads, headDim: D, pageSize: P, kNew: r.kn, vNew: r.vn, dstSlot: slots, kPool: r.k, vPool: r.v, metaPool: r.m, scorePool: r.s }),
        },
        dispose: () => disposeAll(Object.values(args)),
      };
    },
  };
}

function gatherCase(rowsPerHead: number, heads: number, L: number, D: number, P: number, dt: FD, dev = 'cpu'): KernelCase {
  const { i32, ft } = makers(dev);
  const count = rowsPerHead * heads;
  return {
    id: 'gather',
    kernel: 'gather',
    shape: `${rowsPerHead} rows x ${heads} heads from [${heads}, ${L}, ${D}] into fresh pages of ${P}`,
    dtype: dt,
    bound: 'memory',
    setup() {
      const kSrc = ft(heads * L * D, [heads, L, D], dt);
      const vSrc = ft(heads * L * D, [heads, L, D], dt);
      const src: number[] = [];
      for (let j = 0; j < heads; j++) {
        const pos = Array.from(shuffled(L).subarray(0, rowsPerHead)).sort((a, b) => a - b);
        for (const t of pos) src.push(j * L + t);
      }
      const N = Math.ceil(count / P) + 8;
      const pages = shuffled(N);
      const dst = Array.from({ length: count }, (_, i) => pages[Math.floor(i / P)] * P + (i % P));
      const kPool = ft(N * P * D, [N, P, D], dt);
      const vPool = ft(N * P * D, [N, P, D], dt);
      const args = { kSrc, vSrc, srcRow: i32(src), kPool, vPool, dstSlot: i32(dst) };
      const r = { ks: kSrc.toFloat32(), vs: vSrc.toFloat32(), k: kPool.toFloat32(), v: vPool.toFloat32() };
      return {
        run: () => ops.gather(args),
        bytes: 2 * 2 * count * D * BYTES[dt],
        baseline: {
          maxDiv: 1,
          shapeAt: () => `${count} rows`,
          run: () => ref.gather({ count, headDim: D, kSrc: r.ks, vSrc: r.vs, srcRow: src, kPool: r.k, vPool: r.v, dstSlot: dst }),
        },
        dispose: () => disposeAll(Object.values(args)),
      };
    },
  };
}

// ------------------------------------------------------------------ the lists

/** The issue's target shapes, with tensors on `dev` (ORT, a CPU baseline, only on the CPU). */
export function fullCases(dev = 'cpu'): KernelCase[] {
  const ort = dev === 'cpu';
  return [
    decodeCase(32, 8, 128, 32768, 16, 'f16', ort, dev),
    decodeCase(32, 8, 128, 32768, 16, 'f32', ort, dev),
    topkCase(8, 131072, 2048, dev),
    windowCase(32, 8, 128, 32768, 32, 'f16', dev),
    questCase(32, 8, 128, 32768, 16, 'f16', false, dev),
    questCase(32, 8, 128, 32768, 16, 'f16', true, dev),
    questCase(32, 8, 128, 32768, 16, 'f16', false, dev, 128),
    questCase(32, 8, 128, 32768, 16, 'f16', true, dev, 128),
    poolCase(8, 32768, 32736, 7, 'max', dev),
    poolCase(8, 32768, 32736, 5, 'avg', dev),
    chunkCase(8, 32768, 32736, 10, dev),
    appendCase(8, 128, 16, 16384, 'f16', dev),
    gatherCase(1024, 8, 32768, 128, 16, 'f16', dev),
  ];
}

/** Small shapes (--quick): a few seconds in all. */
export function quickCases(dev = 'cpu'): KernelCase[] {
  const ort = dev === 'cpu';
  return [
    decodeCase(8, 2, 64, 2048, 16, 'f16', ort, dev),
    decodeCase(8, 2, 64, 2048, 16, 'f32', ort, dev),
    topkCase(2, 8192, 256, dev),
    windowCase(4, 2, 64, 1024, 16, 'f16', dev),
    questCase(8, 2, 64, 2048, 16, 'f16', false, dev),
    questCase(8, 2, 64, 2048, 16, 'f16', true, dev),
    questCase(8, 2, 64, 2048, 16, 'f16', true, dev, 16),
    poolCase(2, 2048, 2032, 7, 'max', dev),
    poolCase(2, 2048, 2032, 5, 'avg', dev),
    chunkCase(2, 2048, 2032, 10, dev),
    appendCase(2, 64, 16, 256, 'f16', dev),
    gatherCase(64, 2, 2048, 64, 16, 'f16', dev),
  ];
}
