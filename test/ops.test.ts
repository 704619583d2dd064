/**
 * Every kernel against its float64 reference (lib/reference/kernels.ts) on
 * fresh random inputs (Math.random, new every run) of awkward sizes.
 *
 * f16/bf16 inputs: the reference gets the values the tensors really hold
 * (tensor.toFloat32()), so the only differences left are the kernel's own fp32
 * arithmetic and the rounding of its outputs. u = 2^-24 (fp32 unit roundoff).
 *
 * Tolerances (per element; |.| of the reference value unless said otherwise):
 * - decodeAttention: o within max|v| * 2 * (2*dz + 8*sqrt(n)*u + 8u) plus half
 *   an ulp of the output dtype, where dz = (D+4)*u*scale*max||q||*max||k||
 *   (Cauchy-Schwarz bound of sum_d |q_d k_d|) bounds the fp32 error of a logit (recursive summation of D products; the 2*dz is
 *   the resulting relative error of every probability after normalisation,
 *   sqrt(n)*u the summation of n positive weights, 8u the exp polynomial);
 *   lse within 2 * (dz + 8*sqrt(n)*u + 8u*|lse|); the score increments within
 *   2 * (2*dz + 8*sqrt(n)*u + 8u) relative plus 4u of the accumulated value.
 *   Same formula as the kernel's own suite (native/cpu/decode_attention.cc),
 *   with a factor 2 of margin.
 * - windowScores: every output is a sum of positive probabilities, each with
 *   relative error <= 2*dz + 8*sqrt(L)*u + 8u (same dz with D and scale); the
 *   sum over w rows and g heads adds (w+g)*u: relative tolerance twice that,
 *   plus 1e-30 absolute for probabilities below fp32's normal range.
 * - pool1d: max is exact (a selection); avg is a sum of k fp32 values divided
 *   by k: (k+2)*u*max|x| absolute.
 * - chunkScores: a sum of m = rows*chunk fp32 values in any order is within
 *   (m-1)*u*sum|x| of the exact sum (the worst-case bound of any summation
 *   order); we allow (m+1)*u*sum|x|.
 * - topk: exact (a selection of indices; ties to the lower index).
 * - questBounds: a sum of D fp32 products, each rounded once: (D+2)*u*sum_d
 *   max(|q kmin|, |q kmax|); -Infinity entries exactly.
 * - append, gather, pageMeta: exact (bits are copied, min/max selects).
 *
 * Tests never assert timings.
 */
import { Tensor, ops, backend, KvsqError } from '../lib';
import type { DType } from '../lib';
import * as ref from '../lib/reference/kernels';
import { rand, randInt, type FDType } from './helpers';

const U = 2 ** -24;

// ------------------------------------------------------------------ helpers

function shuffle<T>(a: T[]): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}
/** A float tensor of `dtype` from f32 data, and the values it really holds. */
function ftensor(data: Float32Array, shape: number[], dtype: FDType): { t: Tensor; v: Float32Array } {
  const t = Tensor.from(data, shape, { dtype });
  return { t, v: t.toFloat32() };
}
function i32(data: number[] | Int32Array, shape?: number[]): Tensor {
  const a = data instanceof Int32Array ? data : Int32Array.from(data);
  return Tensor.from(a, shape ?? [a.length]);
}
function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}
/** max over rows of D elements of the row's Euclidean norm (Cauchy-Schwarz bound of sum |q_d k_d|). */
function maxRowNorm(a: ArrayLike<number>, D: number): number {
  let m = 0;
  for (let r = 0; r < a.length / D; r++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += a[r * D + d] ** 2;
    m = Math.max(m, Math.sqrt(s));
  }
  return m;
}
/** Half an ulp of `dtype` at magnitude x (rounding of an output). */
function halfUlp(dtype: DType, x: number): number {
  const ax = Math.abs(x);
  if (dtype === 'f16') return Math.max(ax * 2 ** -11, 2 ** -25);
  if (dtype === 'bf16') return ax * 2 ** -8 + 2 ** -134;
  return ax * U + 2 ** -150;
}

/**
 * Elementwise comparison; on failure throws with the worst offenders (index,
 * expected, got, tolerance). NaN never passes; equal infinities do.
 */
function expectClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number, want: number) => number): void {
  expect(got.length).toBe(want.length);
  const bad: string[] = [];
  let nbad = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i];
    const w = want[i];
    if (g === w) continue;
    const t = tol(i, w);
    if (!(Math.abs(g - w) <= t)) {
      nbad++;
      if (bad.length < 8) bad.push(`[${i}] want ${w} got ${g} (|diff| ${Math.abs(g - w)} > tol ${t})`);
    }
  }
  if (nbad) throw new Error(`${what}: ${nbad} of ${want.length} elements out of tolerance\n  ${bad.join('\n  ')}`);
}
function expectExact(what: string, got: ArrayLike<number>, want: ArrayLike<number>): void {
  expectClose(what, got, want, () => 0);
}

// ------------------------------------------------------------------ paged lists

interface Paged {
  P: number;
  numPages: number;
  /** per list: physical pages */
  lists: number[][];
  lens: number[];
  pageIndptr: number[];
  pageIds: number[];
}
/**
 * Lists of the given lengths over a pool with shuffled physical pages; each
 * list gets ceil(len/P) pages plus, sometimes, a spare one (kvLen may be less
 * than the capacity), and the pool has unused pages.
 */
function makePaged(lens: number[], P: number): Paged {
  const counts = lens.map((n) => Math.ceil(n / P) + (Math.random() < 0.3 ? 1 : 0));
  const total = counts.reduce((a, b) => a + b, 0);
  const numPages = total + randInt(1, 5);
  const perm = shuffle([...Array(numPages).keys()]);
  const lists: number[][] = [];
  const pageIndptr = [0];
  let o = 0;
  for (const c of counts) {
    lists.push(perm.slice(o, o + c));
    o += c;
    pageIndptr.push(o);
  }
  return { P, numPages, lists, lens, pageIndptr, pageIds: lists.flat() };
}

// ------------------------------------------------------------------ decode attention

interface DecodeCase {
  name: string;
  B: number;
  Hq: number;
  Hkv: number;
  D: number;
  P: number;
  /** per list (B*Hkv) */
  lens: number[];
  qd: FDType;
  kvd: FDType;
  quest?: boolean;
  score?: boolean;
  reduce?: 'mean' | 'sum' | 'max';
  lse?: boolean;
  scale?: number;
}

function decodeCase(c: DecodeCase) {
  const pg = makePaged(c.lens, c.P);
  const q = ftensor(rand(c.B * c.Hq * c.D, -2, 2), [c.B, c.Hq, c.D], c.qd);
  const k = ftensor(rand(pg.numPages * c.P * c.D), [pg.numPages, c.P, c.D], c.kvd);
  const v = ftensor(rand(pg.numPages * c.P * c.D), [pg.numPages, c.P, c.D], c.kvd);
  let selIndptr: number[] | undefined;
  let selPages: number[] | undefined;
  if (c.quest) {
    selIndptr = [0];
    selPages = [];
    const g = c.Hq / c.Hkv;
    for (let b = 0; b < c.B; b++)
      for (let h = 0; h < c.Hq; h++) {
        const n = Math.ceil(c.lens[b * c.Hkv + Math.floor(h / g)] / c.P);
        // a random ascending subset, sometimes empty, always with the last page when there is one
        for (let p = 0; p < n; p++) if (p === n - 1 || Math.random() < 0.4) selPages.push(p);
        if (h % 5 === 3) selPages.splice(selIndptr[selIndptr.length - 1]); // this head selects nothing
        selIndptr.push(selPages.length);
      }
  }
  const score0 = c.score ? rand(pg.numPages * c.P, 0, 3) : undefined;
  return { pg, q, k, v, selIndptr, selPages, score0 };
}
type DecodeInputs = ReturnType<typeof decodeCase>;

function decodeArgs(c: DecodeCase, x: DecodeInputs, scorePool?: Tensor) {
  return {
    q: x.q.t,
    kPool: x.k.t,
    vPool: x.v.t,
    pageIndptr: i32(x.pg.pageIndptr),
    pageIds: i32(x.pg.pageIds),
    kvLen: i32(c.lens),
    numKvHeads: c.Hkv,
    scale: c.scale,
    selIndptr: x.selIndptr ? i32(x.selIndptr) : undefined,
    selPages: x.selPages ? i32(x.selPages) : undefined,
    scorePool,
    reduce: c.reduce,
    lse: c.lse,
  };
}

function decodeRef(c: DecodeCase, x: DecodeInputs) {
  const scorePool = x.score0 ? Float64Array.from(x.score0) : undefined;
  const r = ref.decodeAttention({
    batch: c.B,
    numQHeads: c.Hq,
    numKvHeads: c.Hkv,
    headDim: c.D,
    pageSize: c.P,
    q: x.q.v,
    kPool: x.k.v,
    vPool: x.v.v,
    pageIndptr: x.pg.pageIndptr,
    pageIds: x.pg.pageIds,
    kvLen: c.lens,
    scale: c.scale,
    selIndptr: x.selIndptr,
    selPages: x.selPages,
    scorePool,
    reduce: c.reduce,
  });
  return { ...r, scorePool };
}

function checkDecode(c: DecodeCase, x: DecodeInputs, want: ReturnType<typeof decodeRef>, got: { o: Tensor; lse?: Tensor }, scorePool?: Tensor) {
  const scale = c.scale ?? 1 / Math.sqrt(c.D);
  const dz = (c.D + 4) * U * Math.abs(scale) * maxRowNorm(x.q.v, c.D) * maxRowNorm(x.k.v, c.D);
  const n = Math.max(...c.lens, 1);
  const eps = 2 * dz + 8 * Math.sqrt(n) * U + 8 * U;
  const vmax = maxAbs(x.v.v);
  expect(got.o.dtype).toBe(c.qd);
  expect(got.o.shape).toEqual([c.B, c.Hq, c.D]);
  expectClose(`${c.name}: o`, got.o.toFloat32(), want.o, (_i, w) => {
    const e = 2 * vmax * eps;
    return e + halfUlp(c.qd, Math.abs(w) + e) * 1.01;
  });
  if (c.lse) {
    expect(got.lse).toBeDefined();
    expectClose(`${c.name}: lse`, got.lse!.toFloat32(), want.lse, (_i, w) => 2 * (dz + 8 * Math.sqrt(n) * U + 8 * U * Math.abs(w)) + halfUlp('f32', w));
  } else {
    expect(got.lse).toBeUndefined();
  }
  if (scorePool) {
    const s0 = x.score0!;
    expectClose(`${c.name}: scorePool`, scorePool.toFloat32(), want.scorePool!, (i, w) => 2 * eps * Math.abs(w - s0[i]) + 4 * U * Math.abs(w) + 1e-30);
  }
}

const decodeCases: DecodeCase[] = [
  { name: 'MHA g1, D16, L1, f32', B: 1, Hq: 4, Hkv: 4, D: 16, P: 16, lens: [1, 1, 1, 1], qd: 'f32', kvd: 'f32', lse: true },
  { name: 'g2, D40, L17, f16 q and K/V', B: 1, Hq: 4, Hkv: 2, D: 40, P: 16, lens: [17, 17], qd: 'f16', kvd: 'f16', lse: true },
  {
    name: 'g4, D64, ragged batch of 3 (1000/17/1/0...), f32 q, bf16 K/V',
    B: 3,
    Hq: 8,
    Hkv: 2,
    D: 64,
    P: 16,
    lens: [1000, 993, 17, 5, 1, 0],
    qd: 'f32',
    kvd: 'bf16',
    lse: true,
  },
  {
    name: 'g8, D128, L4097, f16, H2O mean accumulation, lse',
    B: 1,
    Hq: 16,
    Hkv: 2,
    D: 128,
    P: 16,
    lens: [4097, 4000],
    qd: 'f16',
    kvd: 'f16',
    score: true,
    reduce: 'mean',
    lse: true,
  },
  {
    name: 'Quest subsets per query head, g4, D128, f32, score max',
    B: 2,
    Hq: 8,
    Hkv: 2,
    D: 128,
    P: 16,
    lens: [1000, 777, 1, 300],
    qd: 'f32',
    kvd: 'f32',
    quest: true,
    score: true,
    reduce: 'max',
    lse: true,
  },
  {
    name: 'P 8, D96, g2, score sum, bf16 q with f16 K/V, custom scale',
    B: 2,
    Hq: 4,
    Hkv: 2,
    D: 96,
    P: 8,
    lens: [33, 100, 8, 9],
    qd: 'bf16',
    kvd: 'f16',
    score: true,
    reduce: 'sum',
    scale: 0.05,
  },
  { name: 'P 7 (odd page), D24, g1, quest, bf16', B: 1, Hq: 2, Hkv: 2, D: 24, P: 7, lens: [50, 13], qd: 'bf16', kvd: 'bf16', quest: true, lse: true },
];

describe('decodeAttention vs reference', () => {
  it.each(decodeCases.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const x = decodeCase(c);
    const want = decodeRef(c, x);
    const sp = x.score0 ? Tensor.from(x.score0, [x.pg.numPages, c.P]) : undefined;
    const got = ops.decodeAttention(decodeArgs(c, x, sp));
    checkDecode(c, x, want, got, sp);
  });

  it.each(decodeCases.filter((c) => c.score).map((c) => [c.name, c] as const))(
    'scoresBefore / scoresAfter are the pool read before and after the step (%s)',
    (_n, c) => {
      const x = decodeCase(c);
      const sp = Tensor.from(x.score0!, [x.pg.numPages, c.P]);
      const args = decodeArgs(c, x, sp);
      const total = c.lens.reduce((a, b) => a + b, 0);
      const read = () => ops.readScores({ scorePool: sp, pageIndptr: args.pageIndptr, pageIds: args.pageIds, kvLen: args.kvLen }).toFloat32();
      const was = read();
      // Larger than needed (a reused buffer): the tail stays as it was.
      const before = Tensor.from(new Float32Array(total + 3).fill(-5), [total + 3]);
      const after = Tensor.from(new Float32Array(total + 3).fill(-5), [total + 3]);
      ops.decodeAttention({ ...args, scoresBefore: before, scoresAfter: after });
      const into = new Float32Array(total + 3);
      expect(before.toFloat32(into)).toBe(into);
      expect(Array.from(into.subarray(0, total))).toEqual(Array.from(was));
      expect(Array.from(into.subarray(total))).toEqual([-5, -5, -5]);
      expect(Array.from(after.toFloat32().subarray(0, total))).toEqual(Array.from(read()));
      // Writing the before-record back undoes the step exactly.
      ops.writeScores({ scorePool: sp, pageIndptr: args.pageIndptr, pageIds: args.pageIds, kvLen: args.kvLen, values: before });
      expect(Array.from(read())).toEqual(Array.from(was));
    },
  );

  it.each(decodeCases.filter((c) => c.score).map((c) => [c.name, c] as const))(
    'evictSlots: the lowest score after the add among positions <= the max, ties to the lower position (%s)',
    (_n, c) => {
      const x = decodeCase(c);
      const sp = Tensor.from(x.score0!, [x.pg.numPages, c.P]);
      const args = decodeArgs(c, x, sp);
      const total = c.lens.reduce((a, b) => a + b, 0);
      // positions: a shuffled 0..len-1 per list (times 2), some equal scores forced below
      const pos = new Int32Array(total);
      const maxPos = new Int32Array(c.lens.length);
      let off = 0;
      c.lens.forEach((n, l) => {
        const perm = Array.from({ length: n }, (_, i) => i).sort(() => Math.random() - 0.5);
        perm.forEach((p, i) => (pos[off + i] = 2 * p));
        maxPos[l] = l % 3 === 0 ? -(2 ** 31) : randInt(0, 2 * n);
        off += n;
      });
      const r = ops.decodeAttention({ ...args, evictPositions: Tensor.from(pos, [total]), evictMaxPos: Tensor.from(maxPos, [maxPos.length]) });
      const after = ops.readScores({ scorePool: sp, pageIndptr: args.pageIndptr, pageIds: args.pageIds, kvLen: args.kvLen }).toFloat32();
      const got = Array.from(r.evictSlots!.toArray());
      const want: number[] = [];
      off = 0;
      c.lens.forEach((n, l) => {
        let best = -1;
        for (let s = 0; s < n; s++) {
          if (pos[off + s] > maxPos[l]) continue;
          const v = after[off + s];
          if (best < 0 || v < after[off + best] || (v === after[off + best] && pos[off + s] < pos[off + best])) best = s;
        }
        want[l] = best;
        off += n;
      });
      expect(got).toEqual(want);
    },
  );

  it('the Async form gives the same results', async () => {
    const c = decodeCases[4];
    const x = decodeCase(c);
    const want = decodeRef(c, x);
    const sp = Tensor.from(x.score0!, [x.pg.numPages, c.P]);
    const got = await ops.decodeAttentionAsync(decodeArgs(c, x, sp));
    checkDecode(c, x, want, got, sp);
  });
});

// ------------------------------------------------------------------ window scores

interface WindowCase {
  name: string;
  Hq: number;
  Hkv: number;
  D: number;
  L: number;
  w: number;
  qRows: number;
  dtype: FDType;
  reduce?: 'mean' | 'sum' | 'max';
  scale?: number;
}
const windowCases: WindowCase[] = [
  { name: 'L1 w1, MHA, D16, f32', Hq: 2, Hkv: 2, D: 16, L: 1, w: 1, qRows: 1, dtype: 'f32' },
  { name: 'L17 w=L, g2, D40, f16, sum', Hq: 4, Hkv: 2, D: 40, L: 17, w: 17, qRows: 17, dtype: 'f16', reduce: 'sum' },
  { name: 'L1000 w32 (q has 40 rows), g4, D64, bf16, max', Hq: 8, Hkv: 2, D: 64, L: 1000, w: 32, qRows: 40, dtype: 'bf16', reduce: 'max' },
  { name: 'L1000 w7, g8, D128, f32, mean', Hq: 8, Hkv: 1, D: 128, L: 1000, w: 7, qRows: 7, dtype: 'f32', reduce: 'mean' },
  { name: 'L4097 w=L (H2O columns), MHA, D16, f16', Hq: 1, Hkv: 1, D: 16, L: 4097, w: 4097, qRows: 4097, dtype: 'f16' },
  { name: 'L4097 w32, g2, D128, f32, sum, scale 0.2', Hq: 4, Hkv: 2, D: 128, L: 4097, w: 32, qRows: 32, dtype: 'f32', reduce: 'sum', scale: 0.2 },
];

function windowInputs(c: WindowCase) {
  const q = ftensor(rand(c.Hq * c.qRows * c.D), [c.Hq, c.qRows, c.D], c.dtype);
  const k = ftensor(rand(c.Hkv * c.L * c.D), [c.Hkv, c.L, c.D], c.dtype);
  const want = ref.windowScores({
    numQHeads: c.Hq,
    numKvHeads: c.Hkv,
    headDim: c.D,
    seqLen: c.L,
    window: c.w,
    qRows: c.qRows,
    q: q.v,
    k: k.v,
    scale: c.scale,
    reduce: c.reduce,
  });
  const scale = c.scale ?? 1 / Math.sqrt(c.D);
  const dz = (c.D + 4) * U * Math.abs(scale) * maxRowNorm(q.v, c.D) * maxRowNorm(k.v, c.D);
  const g = c.Hq / c.Hkv;
  const rel = 2 * (2 * dz + 8 * Math.sqrt(c.L) * U + 8 * U + (c.w + g) * U);
  return { q, k, want, tol: (_i: number, w: number) => rel * Math.abs(w) + 1e-30 };
}

describe('windowScores vs reference', () => {
  it.each(windowCases.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const x = windowInputs(c);
    const out = ops.windowScores(x.q.t, x.k.t, { window: c.w, reduce: c.reduce, scale: c.scale });
    expect(out.dtype).toBe('f32');
    expect(out.shape).toEqual([c.Hkv, c.L]);
    expectClose(c.name, out.toFloat32(), x.want, x.tol);
  });

  it('default window is min(rows of q, L); the Async form agrees', async () => {
    const c: WindowCase = { name: 'default window', Hq: 4, Hkv: 1, D: 48, L: 300, w: 20, qRows: 20, dtype: 'f32' };
    const x = windowInputs(c);
    expectClose('sync default', ops.windowScores(x.q.t, x.k.t).toFloat32(), x.want, x.tol);
    expectClose('async', (await ops.windowScoresAsync(x.q.t, x.k.t, { window: 20 })).toFloat32(), x.want, x.tol);
  });
});

// ------------------------------------------------------------------ pool1d / chunk scores

describe('pool1d vs reference', () => {
  const cases: [string, number, number, number, number, 'max' | 'avg'][] = [
    // name, rows, width, n, kernel, mode
    ['n1 k7 max', 1, 1, 1, 7, 'max'],
    ['n17 k3 avg', 2, 17, 17, 3, 'avg'],
    ['n1000 of 1032 k7 max', 8, 1032, 1000, 7, 'max'],
    ['n1000 of 1032 k5 avg', 8, 1032, 1000, 5, 'avg'],
    ['n4097 k1 max (identity)', 3, 4097, 4097, 1, 'max'],
    ['n4097 k31 avg', 3, 4100, 4097, 31, 'avg'],
    ['n10 k41 (kernel wider than the prefix) avg', 2, 12, 10, 41, 'avg'],
    ['n10 k41 max', 2, 12, 10, 41, 'max'],
  ];
  it.each(cases)('%s', (_n, rows, width, n, kernel, mode) => {
    const x = rand(rows * width, -5, 5);
    const t = Tensor.from(x, [rows, width]);
    const want = ref.pool1d({ rows, n, inStride: width, kernel, mode, x });
    const out = ops.pool1d(t, { n, kernel, mode });
    expect(out.shape).toEqual([rows, n]);
    const m = maxAbs(x);
    expectClose('pool1d', out.toFloat32(), want, () => (mode === 'max' ? 0 : (kernel + 2) * U * m));
  });

  it('1-D input, defaults (whole row, k 7, max); Async agrees', async () => {
    const x = rand(333);
    const t = Tensor.from(x, [333]);
    const want = ref.pool1d({ rows: 1, n: 333, inStride: 333, kernel: 7, mode: 'max', x });
    const out = ops.pool1d(t);
    expect(out.shape).toEqual([333]);
    expectExact('pool1d 1-D', out.toFloat32(), want);
    expectExact('pool1d async', (await ops.pool1dAsync(t)).toFloat32(), want);
  });
});

describe('chunkScores vs reference', () => {
  const cases: [string, number, number, number, number][] = [
    // name, rows, width, n, chunk
    ['n1 chunk 10', 1, 1, 1, 10],
    ['n17 chunk 10 (partial last chunk)', 4, 17, 17, 10],
    ['n1000 of 1032 chunk 7', 8, 1032, 1000, 7],
    ['n4097 chunk 1', 2, 4097, 4097, 1],
    ['n4097 chunk 64', 8, 4100, 4097, 64],
    ['chunk longer than n', 3, 50, 45, 1000],
  ];
  it.each(cases)('%s', (_n, rows, width, n, chunk) => {
    const x = rand(rows * width, -2, 3);
    const t = Tensor.from(x, [rows, width]);
    const want = ref.chunkScores({ rows, n, inStride: width, chunk, x });
    const out = ops.chunkScores(t, { n, chunk });
    expect(out.shape).toEqual([Math.ceil(n / chunk)]);
    const m = rows * chunk;
    const sumAbs = (c: number) => {
      let s = 0;
      for (let r = 0; r < rows; r++) for (let i = c * chunk; i < Math.min(n, (c + 1) * chunk); i++) s += Math.abs(x[r * width + i]);
      return s;
    };
    expectClose('chunkScores', out.toFloat32(), want, (c) => (m + 1) * U * sumAbs(c));
  });

  it('1-D input, default chunk 10; Async agrees', async () => {
    const x = rand(95);
    const t = Tensor.from(x, [95]);
    const want = ref.chunkScores({ rows: 1, n: 95, inStride: 95, chunk: 10, x });
    const tol = () => 11 * U * 10;
    expectClose('chunk 1-D', ops.chunkScores(t).toFloat32(), want, tol);
    expectClose('chunk async', (await ops.chunkScoresAsync(t)).toFloat32(), want, tol);
  });
});

// ------------------------------------------------------------------ top-k

function topkCheck(name: string, scores: Float32Array, rows: number, stride: number, k: number | number[], lengths?: number[], oneD = false) {
  const t = Tensor.from(scores, oneD ? [stride] : [rows, stride]);
  const want = ref.topk({ rows, rowStride: stride, scores, lengths, k: typeof k === 'number' ? k : k });
  const r = ops.topk(t, typeof k === 'number' ? k : i32(k), lengths ? { lengths: i32(lengths) } : {});
  expect(r.indices.dtype).toBe('i32');
  expect(r.indices.shape).toEqual(oneD ? [want.width] : [rows, want.width]);
  expectExact(`${name}: counts`, r.counts.toArray(), want.counts);
  expectExact(`${name}: indices`, r.indices.toArray(), want.indices);
  return { t, want };
}

describe('topk vs reference', () => {
  it('distinct random scores, one k, L 4097', () => {
    topkCheck('random', rand(4 * 4097), 4, 4097, 300);
  });
  it('heavy ties (5 distinct values): the lower index wins', () => {
    const s = Float32Array.from({ length: 3 * 1000 }, () => Math.floor(Math.random() * 5));
    topkCheck('ties', s, 3, 1000, 417);
  });
  it('all equal: the first k positions', () => {
    const s = new Float32Array(2 * 17).fill(1.5);
    const { want } = topkCheck('all equal', s, 2, 17, 5);
    expect(Array.from(want.indices.slice(0, 5))).toEqual([0, 1, 2, 3, 4]);
  });
  it('ragged lengths and per-row k (0, > length, = length, empty row)', () => {
    const rows = 6;
    const stride = 1000;
    const s = Float32Array.from({ length: rows * stride }, () => Math.floor(Math.random() * 50) / 7);
    topkCheck('ragged', s, rows, stride, [0, 2000, 17, 1, 999, 10], [1000, 17, 17, 1, 1000, 0]);
  });
  it('infinities are ordinary scores', () => {
    const s = rand(2 * 100);
    s[3] = Infinity;
    s[50] = -Infinity;
    s[150] = -Infinity;
    s[151] = -Infinity;
    s[160] = Infinity;
    topkCheck('inf', s, 2, 100, 99);
  });
  it('signed zeros are equal scores (ties to the lower index)', () => {
    const s = Float32Array.from([-0, 0, -0, 0, 1, -1, 0, -0]);
    topkCheck('zeros', s, 1, 8, 4, undefined, true);
  });
  it('1-D scores, k 1 and k = L; large row 128K with k 2048', () => {
    topkCheck('1-D k1', rand(17), 1, 17, 1, undefined, true);
    topkCheck('1-D k=L', rand(17), 1, 17, 17, undefined, true);
    topkCheck('128K', rand(131072), 1, 131072, 2048, undefined, true);
  });
  it('the Async form gives the same results', async () => {
    const s = Float32Array.from({ length: 4 * 513 }, () => Math.floor(Math.random() * 9));
    const t = Tensor.from(s, [4, 513]);
    const want = ref.topk({ rows: 4, rowStride: 513, scores: s, k: [1, 100, 513, 0] });
    const r = await ops.topkAsync(t, i32([1, 100, 513, 0]));
    expectExact('async counts', r.counts.toArray(), want.counts);
    expectExact('async indices', r.indices.toArray(), want.indices);
  });
});

// ------------------------------------------------------------------ Quest bounds

interface QuestCase {
  name: string;
  B: number;
  Hq: number;
  Hkv: number;
  D: number;
  P: number;
  lens: number[];
  qd: FDType;
  md: FDType;
  share: boolean;
}
const questCases: QuestCase[] = [
  { name: 'MHA, D16, lengths 1/16/17, f32', B: 1, Hq: 3, Hkv: 3, D: 16, P: 16, lens: [1, 16, 17], qd: 'f32', md: 'f32', share: false },
  { name: 'g2, D40, f16 meta, ragged batch with an empty list', B: 2, Hq: 4, Hkv: 2, D: 40, P: 16, lens: [1000, 0, 33, 1], qd: 'f32', md: 'f16', share: false },
  { name: 'g4 shared, D128, 4097 tokens, bf16', B: 1, Hq: 8, Hkv: 2, D: 128, P: 16, lens: [4097, 2000], qd: 'bf16', md: 'bf16', share: true },
  { name: 'g8 per head, D128, f16 q and meta', B: 1, Hq: 16, Hkv: 2, D: 128, P: 16, lens: [513, 4097], qd: 'f16', md: 'f16', share: false },
  { name: 'g8 shared, P 8, D64', B: 2, Hq: 8, Hkv: 1, D: 64, P: 8, lens: [100, 57], qd: 'f32', md: 'f16', share: true },
];

function questInputs(c: QuestCase) {
  const pg = makePaged(c.lens, c.P);
  const q = ftensor(rand(c.B * c.Hq * c.D, -2, 2), [c.B, c.Hq, c.D], c.qd);
  const a = rand(pg.numPages * c.D);
  const b = rand(pg.numPages * c.D);
  const meta = new Float32Array(pg.numPages * 2 * c.D);
  for (let p = 0; p < pg.numPages; p++)
    for (let d = 0; d < c.D; d++) {
      meta[p * 2 * c.D + d] = Math.min(a[p * c.D + d], b[p * c.D + d]);
      meta[p * 2 * c.D + c.D + d] = Math.max(a[p * c.D + d], b[p * c.D + d]);
    }
  const m = ftensor(meta, [pg.numPages, 2, c.D], c.md);
  const args = {
    q: q.t,
    metaPool: m.t,
    pageIndptr: i32(pg.pageIndptr),
    pageIds: i32(pg.pageIds),
    kvLen: i32(c.lens),
    numKvHeads: c.Hkv,
    pageSize: c.P,
    share: c.share,
  };
  const want = ref.questBounds({
    batch: c.B,
    numQHeads: c.Hq,
    numKvHeads: c.Hkv,
    headDim: c.D,
    pageSize: c.P,
    q: q.v,
    metaPool: m.v,
    pageIndptr: pg.pageIndptr,
    pageIds: pg.pageIds,
    kvLen: c.lens,
    share: c.share,
  });
  // tolerance per output: (D+2) u sum_d max|q kmin|,|q kmax| (max over the group when shared)
  const H = c.share ? c.Hkv : c.Hq;
  const g = c.Hq / c.Hkv;
  const tol = new Float64Array(want.out.length);
  for (let bb = 0; bb < c.B; bb++)
    for (let h = 0; h < c.Hq; h++) {
      const j = Math.floor(h / g);
      const l = bb * c.Hkv + j;
      const row = (bb * H + (c.share ? j : h)) * want.width;
      for (let p = 0; p < Math.ceil(c.lens[l] / c.P) - 1; p++) {
        const mo = pg.pageIds[pg.pageIndptr[l] + p] * 2 * c.D;
        let s = 0;
        for (let d = 0; d < c.D; d++) {
          const qd = q.v[(bb * c.Hq + h) * c.D + d];
          s += Math.max(Math.abs(qd * m.v[mo + d]), Math.abs(qd * m.v[mo + c.D + d]));
        }
        tol[row + p] = Math.max(tol[row + p], (c.D + 2) * U * s);
      }
    }
  return { args, want, tol, shape: [c.B, H, want.width] };
}

describe('questBounds vs reference', () => {
  it.each(questCases.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const x = questInputs(c);
    const out = ops.questBounds(x.args);
    expect(out.dtype).toBe('f32');
    expect(out.shape).toEqual(x.shape);
    expectClose(c.name, out.toFloat32(), x.want.out, (i) => x.tol[i]);
  });
  it('the Async form gives the same results', async () => {
    const x = questInputs(questCases[3]);
    expectClose('async', (await ops.questBoundsAsync(x.args)).toFloat32(), x.want.out, (i) => x.tol[i]);
  });
});

describe('questSelect vs reference', () => {
  // Against the float64 bounds: counts min(n, budget); dense lists list every
  // page; otherwise ascending, ending with the last page, and the other
  // budget - 1 a top set of the reference bounds within their tolerance. And
  // exactly questBounds + topk + the assembly the cache used to do in JS.
  const budgets = (maxn: number) => [1, 2, Math.max(1, Math.floor(maxn / 3)), maxn, maxn + 3];
  it.each(questCases.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const x = questInputs(c);
    const g = c.Hq / c.Hkv;
    const nOf = (l: number) => Math.ceil(c.lens[l] / c.P);
    const maxn = Math.max(...c.lens.map((_, l) => nOf(l)));
    for (const budgetPages of budgets(maxn)) {
      const sel = ops.questSelect({ ...x.args, budgetPages });
      const ind = sel.selIndptr.toArray() as Int32Array;
      const pages = sel.selPages.toArray() as Int32Array;
      // the composition, for exact equality
      const bounds = ops.questBounds(x.args);
      const H = c.share ? c.Hkv : c.Hq;
      const lens = Int32Array.from({ length: c.B * H }, (_, r) => {
        const l = c.share ? r : Math.floor(r / c.Hq) * c.Hkv + Math.floor((r % c.Hq) / g);
        return nOf(l) > budgetPages ? nOf(l) - 1 : 0;
      });
      const flat = Tensor.from(bounds.toFloat32(), [c.B * H, x.want.width]);
      const top = ops.topk(flat, budgetPages - 1, { lengths: Tensor.from(lens, [lens.length]) });
      const tk = top.indices.toArray() as Int32Array;
      const tw = top.indices.shape[1];
      expect(ind[0]).toBe(0);
      for (let b = 0; b < c.B; b++)
        for (let h = 0; h < c.Hq; h++) {
          const r = b * c.Hq + h;
          const j = Math.floor(h / g);
          const l = b * c.Hkv + j;
          const n = nOf(l);
          const got = Array.from(pages.subarray(ind[r], ind[r + 1]));
          expect(got.length).toBe(Math.min(n, budgetPages));
          if (n <= budgetPages) {
            expect(got).toEqual(Array.from({ length: n }, (_, i) => i));
            continue;
          }
          const tr = c.share ? b * c.Hkv + j : r;
          expect(got).toEqual([...Array.from(tk.subarray(tr * tw, tr * tw + budgetPages - 1)), n - 1]);
          const row = (b * H + (c.share ? j : h)) * x.want.width;
          let lo = Infinity;
          let hi = -Infinity;
          let tol = 0;
          const chosen = new Set(got);
          for (let p = 0; p < n - 1; p++) {
            const u = x.want.out[row + p];
            tol = Math.max(tol, x.tol[row + p]);
            if (chosen.has(p)) lo = Math.min(lo, u);
            else hi = Math.max(hi, u);
          }
          expect(lo).toBeGreaterThanOrEqual(hi - 2 * tol);
        }
      for (const t of [sel.selIndptr, sel.selPages, bounds, flat, top.indices, top.counts]) t.dispose();
    }
  });
  it('the Async form gives the same results', async () => {
    const x = questInputs(questCases[3]);
    const a = ops.questSelect({ ...x.args, budgetPages: 2 });
    const b = await ops.questSelectAsync({ ...x.args, budgetPages: 2 });
    expect(Array.from(b.selIndptr.toArray())).toEqual(Array.from(a.selIndptr.toArray()));
    expect(Array.from(b.selPages.toArray())).toEqual(Array.from(a.selPages.toArray()));
  });
});

// ------------------------------------------------------------------ append / gather / pageMeta

function pools(N: number, P: number, D: number, dtype: FDType) {
  const k = ftensor(rand(N * P * D), [N, P, D], dtype);
  const v = ftensor(rand(N * P * D), [N, P, D], dtype);
  const m = ftensor(rand(N * 2 * D), [N, 2, D], dtype);
  const s = Tensor.from(rand(N * P, 0, 5), [N, P]);
  return { k, v, m, s, ref: { k: Float64Array.from(k.v), v: Float64Array.from(v.v), m: Float64Array.from(m.v), s: Float64Array.from(s.toFloat32()) } };
}

describe('append vs reference', () => {
  const cases: [string, number, number, FDType, boolean, boolean][] = [
    // name, D, P, dtype, explicit resetMeta, with score pool
    ['D40 P16 f32, default reset at row 0, scores', 40, 16, 'f32', false, true],
    ['D128 P16 f16, explicit resetMeta', 128, 16, 'f16', true, false],
    ['D16 P8 bf16, default reset, scores', 16, 8, 'bf16', false, true],
    ['D128 P16 bf16, default reset', 128, 16, 'bf16', false, false],
  ];
  it.each(cases)('%s', (name, D, P, dtype, explicit, withScore) => {
    const N = 40;
    const p = pools(N, P, D, dtype);
    // a run of consecutive tokens of one list crossing page boundaries
    // (slots P-3 .. P+5 of a list with shuffled pages), plus single tokens of other pages
    const perm = shuffle([...Array(N).keys()]);
    const slots: number[] = [];
    for (let s = P - 3; s < 2 * P + 5; s++) slots.push(perm[Math.floor(s / P)] * P + (s % P));
    for (let i = 5; i < 13; i++) slots.push(perm[i] * P + randInt(0, P - 1));
    const count = slots.length;
    const reset = explicit ? slots.map(() => (Math.random() < 0.3 ? 1 : 0)) : undefined;
    const kn = ftensor(rand(count * D), [count, D], dtype);
    const vn = ftensor(rand(count * D), [count, D], dtype);
    ops.append({
      kNew: kn.t,
      vNew: vn.t,
      dstSlot: i32(slots),
      kPool: p.k.t,
      vPool: p.v.t,
      metaPool: p.m.t,
      resetMeta: reset ? i32(reset) : undefined,
      scorePool: withScore ? p.s : undefined,
    });
    ref.append({
      count,
      headDim: D,
      pageSize: P,
      kNew: kn.v,
      vNew: vn.v,
      dstSlot: slots,
      resetMeta: reset,
      kPool: p.ref.k,
      vPool: p.ref.v,
      metaPool: p.ref.m,
      scorePool: withScore ? p.ref.s : undefined,
    });
    expectExact(`${name}: kPool`, p.k.t.toFloat32(), p.ref.k);
    expectExact(`${name}: vPool`, p.v.t.toFloat32(), p.ref.v);
    expectExact(`${name}: metaPool`, p.m.t.toFloat32(), p.ref.m);
    expectExact(`${name}: scorePool`, p.s.toFloat32(), p.ref.s);
  });

  it('kNew of shape [Hkv, 1, D] (any leading shape) and the Async form', async () => {
    const D = 64;
    const P = 16;
    const p = pools(10, P, D, 'f16');
    const slots = [3 * P + 0, 7 * P + 9, 1 * P + 15];
    const kn = ftensor(rand(3 * D), [3, 1, D], 'f16');
    const vn = ftensor(rand(3 * D), [3, 1, D], 'f16');
    await ops.appendAsync({ kNew: kn.t, vNew: vn.t, dstSlot: i32(slots), kPool: p.k.t, vPool: p.v.t, metaPool: p.m.t, scorePool: p.s });
    ref.append({ count: 3, headDim: D, pageSize: P, kNew: kn.v, vNew: vn.v, dstSlot: slots, kPool: p.ref.k, vPool: p.ref.v, metaPool: p.ref.m, scorePool: p.ref.s });
    expectExact('kPool', p.k.t.toFloat32(), p.ref.k);
    expectExact('vPool', p.v.t.toFloat32(), p.ref.v);
    expectExact('metaPool', p.m.t.toFloat32(), p.ref.m);
    expectExact('scorePool', p.s.toFloat32(), p.ref.s);
  });
});

describe('gather vs reference', () => {
  const cases: [string, number, number, FDType, number, boolean][] = [
    // name, D, P, dtype, count, with scores
    ['D40 P16 f32, 100 rows with scores', 40, 16, 'f32', 100, true],
    ['D128 P16 f16, 1024 rows', 128, 16, 'f16', 1024, false],
    ['D16 P7 bf16, 1 row, scores', 16, 7, 'bf16', 1, true],
  ];
  it.each(cases)('from a prefill tensor: %s', (name, D, P, dtype, count, withScore) => {
    const Hkv = 3;
    const L = 1000;
    const N = Math.ceil(count / P) + 20;
    const p = pools(N, P, D, dtype);
    const ks = ftensor(rand(Hkv * L * D), [Hkv, L, D], dtype);
    const vs = ftensor(rand(Hkv * L * D), [Hkv, L, D], dtype);
    const sc = rand(Hkv * L, 0, 9);
    const srcRow = Array.from({ length: count }, () => randInt(0, Hkv * L - 1)); // repeats allowed
    const dst = shuffle([...Array(N * P).keys()]).slice(0, count);
    ops.gather({
      kSrc: ks.t,
      vSrc: vs.t,
      srcRow: i32(srcRow),
      kPool: p.k.t,
      vPool: p.v.t,
      dstSlot: i32(dst),
      scoreSrc: withScore ? Tensor.from(sc, [Hkv, L]) : undefined,
      scorePool: withScore ? p.s : undefined,
    });
    ref.gather({ count, headDim: D, kSrc: ks.v, vSrc: vs.v, srcRow, scoreSrc: withScore ? sc : undefined, kPool: p.ref.k, vPool: p.ref.v, scorePool: withScore ? p.ref.s : undefined, dstSlot: dst });
    expectExact(`${name}: kPool`, p.k.t.toFloat32(), p.ref.k);
    expectExact(`${name}: vPool`, p.v.t.toFloat32(), p.ref.v);
    expectExact(`${name}: scorePool`, p.s.toFloat32(), p.ref.s);
  });

  it('compaction within the pools (source = the pools, disjoint slots), Async', async () => {
    const D = 72;
    const P = 16;
    const N = 30;
    const p = pools(N, P, D, 'f16');
    const slots = shuffle([...Array(N * P).keys()]);
    const src = slots.slice(0, 150);
    const dst = slots.slice(150, 300);
    await ops.gatherAsync({ kSrc: p.k.t, vSrc: p.v.t, srcRow: i32(src), kPool: p.k.t, vPool: p.v.t, dstSlot: i32(dst), scoreSrc: p.s, scorePool: p.s });
    ref.gather({ count: 150, headDim: D, kSrc: p.ref.k, vSrc: p.ref.v, srcRow: src, scoreSrc: p.ref.s, kPool: p.ref.k, vPool: p.ref.v, scorePool: p.ref.s, dstSlot: dst });
    expectExact('kPool', p.k.t.toFloat32(), p.ref.k);
    expectExact('vPool', p.v.t.toFloat32(), p.ref.v);
    expectExact('scorePool', p.s.toFloat32(), p.ref.s);
  });
});

describe('pageMeta vs reference', () => {
  it.each([
    ['D40 P16 f32', 40, 16, 'f32'],
    ['D128 P16 f16', 128, 16, 'f16'],
    ['D16 P5 bf16', 16, 5, 'bf16'],
  ] as [string, number, number, FDType][])('%s', async (name, D, P, dtype) => {
    const N = 50;
    const p = pools(N, P, D, dtype);
    const ids = shuffle([...Array(N).keys()]).slice(0, 30);
    const fill = ids.map((_, i) => (i === 0 ? 1 : i === 1 ? P : randInt(1, P)));
    ops.pageMeta({ kPool: p.k.t, metaPool: p.m.t, pageIds: i32(ids), fill: i32(fill) });
    ref.pageMeta({ count: ids.length, headDim: D, pageSize: P, kPool: p.ref.k, metaPool: p.ref.m, pageIds: ids, fill });
    expectExact(`${name}: metaPool`, p.m.t.toFloat32(), p.ref.m);
    // Async on other pages
    const ids2 = ids.slice(0, 10);
    const fill2 = ids2.map(() => randInt(1, P));
    await ops.pageMetaAsync({ kPool: p.k.t, metaPool: p.m.t, pageIds: i32(ids2), fill: i32(fill2) });
    ref.pageMeta({ count: ids2.length, headDim: D, pageSize: P, kPool: p.ref.k, metaPool: p.ref.m, pageIds: ids2, fill: fill2 });
    expectExact(`${name}: metaPool async`, p.m.t.toFloat32(), p.ref.m);
  });

  it('append then pageMeta over the same rows reproduce the same metadata', () => {
    const D = 32;
    const P = 16;
    const N = 8;
    const p = pools(N, P, D, 'bf16');
    const page = 5;
    const fill = 11;
    const kn = ftensor(rand(fill * D), [fill, D], 'bf16');
    const slots = Array.from({ length: fill }, (_, r) => page * P + r);
    ops.append({ kNew: kn.t, vNew: kn.t, dstSlot: i32(slots), kPool: p.k.t, vPool: p.v.t, metaPool: p.m.t });
    const appended = p.m.t.toArray().slice(page * 2 * D, (page + 1) * 2 * D);
    const m2 = Tensor.from(rand(N * 2 * D), [N, 2, D], { dtype: 'bf16' });
    ops.pageMeta({ kPool: p.k.t, metaPool: m2, pageIds: i32([page]), fill: i32([fill]) });
    expectExact('bits', m2.toArray().slice(page * 2 * D, (page + 1) * 2 * D), appended);
  });
});

// ------------------------------------------------------------------ portable path

describe('portable (non-SIMD) path agrees with the reference too', () => {
  beforeAll(() => backend.forceSimd(0));
  afterAll(() => backend.forceSimd(-1));

  it('decodeAttention (f16, g4, quest + score) and (bf16, g8, dense)', () => {
    for (const c of [decodeCases[4], { ...decodeCases[3], lens: [1000, 517] }, { ...decodeCases[2], kvd: 'f16' as FDType }]) {
      const x = decodeCase(c);
      const want = decodeRef(c, x);
      const sp = x.score0 ? Tensor.from(x.score0, [x.pg.numPages, c.P]) : undefined;
      checkDecode(c, x, want, ops.decodeAttention(decodeArgs(c, x, sp)), sp);
    }
  });
  it('windowScores', () => {
    for (const c of [windowCases[2], windowCases[1], { ...windowCases[3], dtype: 'f16' as FDType }]) {
      const x = windowInputs(c);
      expectClose(c.name, ops.windowScores(x.q.t, x.k.t, { window: c.w, reduce: c.reduce, scale: c.scale }).toFloat32(), x.want, x.tol);
    }
  });
  it('questBounds, topk, pool1d, chunkScores', () => {
    for (const c of [questCases[2], questCases[3]]) {
      const x = questInputs(c);
      expectClose(c.name, ops.questBounds(x.args).toFloat32(), x.want.out, (i) => x.tol[i]);
    }
    const s = Float32Array.from({ length: 2 * 999 }, () => Math.floor(Math.random() * 20));
    topkCheck('portable topk', s, 2, 999, [100, 998]);
    const x = rand(4 * 500);
    expectExact('portable pool', ops.pool1d(Tensor.from(x, [4, 500]), { n: 480, kernel: 7 }).toFloat32(), ref.pool1d({ rows: 4, n: 480, inStride: 500, kernel: 7, mode: 'max', x }));
    const cs = ref.chunkScores({ rows: 4, n: 480, inStride: 500, chunk: 10, x });
    expectClose('portable chunk', ops.chunkScores(Tensor.from(x, [4, 500]), { n: 480 }).toFloat32(), cs, () => 41 * U * 40);
  });
  it('append and pageMeta (f16 metadata widening)', () => {
    const D = 40;
    const P = 16;
    const p = pools(12, P, D, 'f16');
    const slots = [2 * P + 0, 2 * P + 1, 2 * P + 2, 9 * P + 7, 4 * P + 15];
    const kn = ftensor(rand(slots.length * D), [slots.length, D], 'f16');
    ops.append({ kNew: kn.t, vNew: kn.t, dstSlot: i32(slots), kPool: p.k.t, vPool: p.v.t, metaPool: p.m.t });
    ref.append({ count: slots.length, headDim: D, pageSize: P, kNew: kn.v, vNew: kn.v, dstSlot: slots, kPool: p.ref.k, vPool: p.ref.v, metaPool: p.ref.m });
    expectExact('meta', p.m.t.toFloat32(), p.ref.m);
    ops.pageMeta({ kPool: p.k.t, metaPool: p.m.t, pageIds: i32([2, 9, 0]), fill: i32([3, 16, 5]) });
    ref.pageMeta({ count: 3, headDim: D, pageSize: P, kPool: p.ref.k, metaPool: p.ref.m, pageIds: [2, 9, 0], fill: [3, 16, 5] });
    expectExact('pageMeta', p.m.t.toFloat32(), p.ref.m);
  });
});

// a sanity check of the helpers themselves: a wrong answer must fail
describe('the comparison helpers catch errors', () => {
  it('expectClose throws on a difference above tolerance and on NaN', () => {
    expect(() => expectClose('x', [1, 2], [1, 2.1], () => 0.05)).toThrow(/out of tolerance/);
    expect(() => expectClose('x', [NaN], [1], () => 1)).toThrow(/out of tolerance/);
    expect(() => expectClose('x', [Infinity], [Infinity], () => 0)).not.toThrow();
    expect(new KvsqError('x', 'KVSQ_RANGE').code).toBe('KVSQ_RANGE');
  });
});
