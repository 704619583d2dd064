/**
 * Bad inputs for every op (better-sqlite3 style: the failures first). Every
 * failure is a KvsqError with the expected code, from the sync form and, with
 * the same code, as a rejection of the Async form; nothing crashes; the
 * in-place ops (append, gather, pageMeta, decode attention's score pool)
 * leave every pool byte for byte as it was.
 */
import { Tensor, ops, KvsqError } from '../lib';
import type { DType } from '../lib';

type OpName = 'decodeAttention' | 'windowScores' | 'pool1d' | 'chunkScores' | 'topk' | 'questBounds' | 'append' | 'gather' | 'pageMeta';
type AnyOp = (...a: unknown[]) => unknown;
const OPS = ops as unknown as Record<string, AnyOp>;

function rand(n: number): Float32Array {
  return Float32Array.from({ length: n }, () => Math.random() * 2 - 1);
}
const f = (shape: number[], dtype: DType = 'f32') => Tensor.from(rand(shape.reduce((a, b) => a * b, 1)), shape, { dtype });
const i = (v: number[]) => Tensor.from(Int32Array.from(v), [v.length]);
const disposed = (t: Tensor) => {
  t.dispose();
  return t;
};

function syncCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvsqError);
    return (e as KvsqError).code;
  }
  return 'no error';
}
async function asyncCode(fn: () => unknown): Promise<string> {
  try {
    await fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvsqError);
    return (e as KvsqError).code;
  }
  return 'no error';
}

/** [name, op, fresh arguments, expected code] */
type Case = [string, OpName, () => unknown[], string];

function runCases(title: string, cases: Case[]) {
  describe(title, () => {
    it.each(cases)('%s', async (_name, op, args, code) => {
      expect(syncCode(() => OPS[op](...args()))).toBe(code);
      expect(await asyncCode(() => OPS[op + 'Async'](...args()))).toBe(code);
    });
  });
}

// ------------------------------------------------------------------ decode attention
// B 1, Hq 4, Hkv 2, D 16, P 4, 6 pages; list 0 = pages [0, 1] (5 slots), list 1 = [2, 3] (8 slots)
function dec(over: Record<string, unknown> = {}) {
  return {
    q: f([1, 4, 16]),
    kPool: f([6, 4, 16], 'f16'),
    vPool: f([6, 4, 16], 'f16'),
    pageIndptr: i([0, 2, 4]),
    pageIds: i([1, 0, 3, 2]),
    kvLen: i([5, 8]),
    numKvHeads: 2,
    ...over,
  };
}
const D = (over: Record<string, unknown>) => () => [dec(over)];

runCases('decodeAttention: bad inputs', [
  ['not an object', 'decodeAttention', () => [42], 'KVSQ_ARG'],
  ['null', 'decodeAttention', () => [null], 'KVSQ_ARG'],
  ['an array', 'decodeAttention', () => [[dec()]], 'KVSQ_ARG'],
  ['q missing', 'decodeAttention', D({ q: undefined }), 'KVSQ_ARG'],
  ['q not a Tensor', 'decodeAttention', D({ q: rand(64) }), 'KVSQ_ARG'],
  ['kPool missing', 'decodeAttention', D({ kPool: undefined }), 'KVSQ_ARG'],
  ['pageIds missing', 'decodeAttention', D({ pageIds: undefined }), 'KVSQ_ARG'],
  ['q i32', 'decodeAttention', D({ q: i(Array(64).fill(0)) }), 'KVSQ_DTYPE'],
  ['vPool dtype differs from kPool', 'decodeAttention', D({ vPool: f([6, 4, 16], 'bf16') }), 'KVSQ_DTYPE'],
  ['pageIndptr f32', 'decodeAttention', D({ pageIndptr: f([3]) }), 'KVSQ_DTYPE'],
  ['kvLen f32', 'decodeAttention', D({ kvLen: f([2]) }), 'KVSQ_DTYPE'],
  ['q rank 2', 'decodeAttention', D({ q: f([4, 16]) }), 'KVSQ_SHAPE'],
  ['kPool rank 2', 'decodeAttention', D({ kPool: f([24, 16], 'f16') }), 'KVSQ_SHAPE'],
  ['kPool head dim differs from q', 'decodeAttention', D({ kPool: f([6, 4, 8], 'f16'), vPool: f([6, 4, 8], 'f16') }), 'KVSQ_SHAPE'],
  ['vPool shape differs', 'decodeAttention', D({ vPool: f([5, 4, 16], 'f16') }), 'KVSQ_SHAPE'],
  ['numKvHeads missing', 'decodeAttention', D({ numKvHeads: undefined }), 'KVSQ_RANGE'],
  ['numKvHeads 0', 'decodeAttention', D({ numKvHeads: 0 }), 'KVSQ_RANGE'],
  ['numKvHeads 1.5', 'decodeAttention', D({ numKvHeads: 1.5 }), 'KVSQ_RANGE'],
  ['Hq not a multiple of numKvHeads', 'decodeAttention', D({ numKvHeads: 3, pageIndptr: i([0, 1, 2, 4]), kvLen: i([4, 4, 8]) }), 'KVSQ_SHAPE'],
  ['kvLen of the wrong length', 'decodeAttention', D({ kvLen: i([5, 8, 1]) }), 'KVSQ_SHAPE'],
  ['pageIndptr of the wrong length', 'decodeAttention', D({ pageIndptr: i([0, 4]) }), 'KVSQ_SHAPE'],
  ['pageIndptr decreasing', 'decodeAttention', D({ pageIndptr: i([0, 3, 2]) }), 'KVSQ_RANGE'],
  ['pageIndptr past the end of pageIds', 'decodeAttention', D({ pageIndptr: i([0, 2, 5]) }), 'KVSQ_RANGE'],
  ['pageIndptr[0] negative', 'decodeAttention', D({ pageIndptr: i([-1, 2, 4]) }), 'KVSQ_RANGE'],
  ['page id past the pool', 'decodeAttention', D({ pageIds: i([1, 0, 3, 6]) }), 'KVSQ_RANGE'],
  ['negative page id', 'decodeAttention', D({ pageIds: i([1, -1, 3, 2]) }), 'KVSQ_RANGE'],
  // A kvLen beyond its list's pages is an index error (KVSQ_RANGE), as in questBounds.
  ['kvLen larger than its pages hold', 'decodeAttention', D({ kvLen: i([5, 9]) }), 'KVSQ_RANGE'],
  ['negative kvLen', 'decodeAttention', D({ kvLen: i([-1, 8]) }), 'KVSQ_RANGE'],
  ['selIndptr without selPages', 'decodeAttention', D({ selIndptr: i([0, 1, 2, 3, 4]) }), 'KVSQ_ARG'],
  ['selIndptr of the wrong length', 'decodeAttention', D({ selIndptr: i([0, 1, 2]), selPages: i([0, 1]) }), 'KVSQ_SHAPE'],
  ['selIndptr decreasing', 'decodeAttention', D({ selIndptr: i([0, 2, 1, 2, 2]), selPages: i([0, 1]) }), 'KVSQ_RANGE'],
  ['selIndptr past the end of selPages', 'decodeAttention', D({ selIndptr: i([0, 1, 2, 3, 5]), selPages: i([0, 1, 0, 1]) }), 'KVSQ_RANGE'],
  ['selected page beyond the list', 'decodeAttention', D({ selIndptr: i([0, 1, 2, 3, 4]), selPages: i([0, 2, 0, 1]) }), 'KVSQ_RANGE'],
  ['selected pages not ascending', 'decodeAttention', D({ selIndptr: i([0, 2, 2, 2, 2]), selPages: i([1, 0]) }), 'KVSQ_RANGE'],
  ['selected page repeated', 'decodeAttention', D({ selIndptr: i([0, 2, 2, 2, 2]), selPages: i([1, 1]) }), 'KVSQ_RANGE'],
  ['scorePool f16', 'decodeAttention', D({ scorePool: f([6, 4], 'f16') }), 'KVSQ_DTYPE'],
  ['scorePool rank 1', 'decodeAttention', D({ scorePool: f([24]) }), 'KVSQ_SHAPE'],
  ['scorePool of the wrong shape', 'decodeAttention', D({ scorePool: f([6, 5]) }), 'KVSQ_SHAPE'],
  ['reduce unknown', 'decodeAttention', D({ reduce: 'median' }), 'KVSQ_RANGE'],
  ['scale NaN', 'decodeAttention', D({ scale: NaN }), 'KVSQ_RANGE'],
  ['scale a string', 'decodeAttention', D({ scale: '0.1' }), 'KVSQ_RANGE'],
  ['disposed q', 'decodeAttention', D({ q: disposed(f([1, 4, 16])) }), 'KVSQ_DISPOSED'],
  ['disposed vPool', 'decodeAttention', D({ vPool: disposed(f([6, 4, 16], 'f16')) }), 'KVSQ_DISPOSED'],
  ['disposed pageIds', 'decodeAttention', D({ pageIds: disposed(i([1, 0, 3, 2])) }), 'KVSQ_DISPOSED'],
]);

// ------------------------------------------------------------------ window scores

const W = (q: unknown, k: unknown, opt?: unknown) => () => [q, k, opt];
runCases('windowScores: bad inputs', [
  ['q not a Tensor', 'windowScores', W({}, f([2, 10, 16])), 'KVSQ_ARG'],
  ['k missing', 'windowScores', W(f([4, 8, 16]), undefined), 'KVSQ_ARG'],
  ['options not an object', 'windowScores', W(f([4, 8, 16]), f([2, 10, 16]), 5), 'KVSQ_ARG'],
  ['options null', 'windowScores', W(f([4, 8, 16]), f([2, 10, 16]), null), 'KVSQ_ARG'],
  ['q i32', 'windowScores', W(i(Array(4 * 8 * 16).fill(0)), f([2, 10, 16])), 'KVSQ_DTYPE'],
  ['k dtype differs from q', 'windowScores', W(f([4, 8, 16]), f([2, 10, 16], 'f16')), 'KVSQ_DTYPE'],
  ['q rank 2', 'windowScores', W(f([8, 16]), f([2, 10, 16])), 'KVSQ_SHAPE'],
  ['k rank 4', 'windowScores', W(f([4, 8, 16]), f([1, 2, 10, 16])), 'KVSQ_SHAPE'],
  ['k head dim differs', 'windowScores', W(f([4, 8, 16]), f([2, 10, 8])), 'KVSQ_SHAPE'],
  ['Hq not a multiple of Hkv', 'windowScores', W(f([4, 8, 16]), f([3, 10, 16])), 'KVSQ_SHAPE'],
  ['window 0', 'windowScores', W(f([4, 8, 16]), f([2, 10, 16]), { window: 0 }), 'KVSQ_RANGE'],
  ['window > rows of q', 'windowScores', W(f([4, 8, 16]), f([2, 10, 16]), { window: 9 }), 'KVSQ_RANGE'],
  ['window > L', 'windowScores', W(f([4, 12, 16]), f([2, 10, 16]), { window: 11 }), 'KVSQ_RANGE'],
  ['window fractional', 'windowScores', W(f([4, 8, 16]), f([2, 10, 16]), { window: 2.5 }), 'KVSQ_RANGE'],
  ['reduce unknown', 'windowScores', W(f([4, 8, 16]), f([2, 10, 16]), { reduce: 'min' }), 'KVSQ_RANGE'],
  ['scale Infinity', 'windowScores', W(f([4, 8, 16]), f([2, 10, 16]), { scale: Infinity }), 'KVSQ_RANGE'],
  ['disposed k', 'windowScores', W(f([4, 8, 16]), disposed(f([2, 10, 16]))), 'KVSQ_DISPOSED'],
]);

// ------------------------------------------------------------------ pool1d / chunk scores

runCases('pool1d: bad inputs', [
  ['x not a Tensor', 'pool1d', () => [[1, 2, 3]], 'KVSQ_ARG'],
  ['options a string', 'pool1d', () => [f([2, 20]), 'max'], 'KVSQ_ARG'],
  ['x i32', 'pool1d', () => [i([1, 2, 3])], 'KVSQ_DTYPE'],
  ['x f16', 'pool1d', () => [f([2, 20], 'f16')], 'KVSQ_DTYPE'],
  ['x rank 3', 'pool1d', () => [f([2, 2, 20])], 'KVSQ_SHAPE'],
  ['even kernel', 'pool1d', () => [f([2, 20]), { kernel: 4 }], 'KVSQ_RANGE'],
  ['kernel 0', 'pool1d', () => [f([2, 20]), { kernel: 0 }], 'KVSQ_RANGE'],
  ['kernel -3', 'pool1d', () => [f([2, 20]), { kernel: -3 }], 'KVSQ_RANGE'],
  ['n past the row', 'pool1d', () => [f([2, 20]), { n: 21 }], 'KVSQ_RANGE'],
  ['n negative', 'pool1d', () => [f([2, 20]), { n: -1 }], 'KVSQ_RANGE'],
  ['mode unknown', 'pool1d', () => [f([2, 20]), { mode: 'min' }], 'KVSQ_RANGE'],
  ['disposed x', 'pool1d', () => [disposed(f([2, 20]))], 'KVSQ_DISPOSED'],
]);

runCases('chunkScores: bad inputs', [
  ['x not a Tensor', 'chunkScores', () => [new Float32Array(3)], 'KVSQ_ARG'],
  ['options not an object', 'chunkScores', () => [f([2, 20]), 10], 'KVSQ_ARG'],
  ['x bf16', 'chunkScores', () => [f([2, 20], 'bf16')], 'KVSQ_DTYPE'],
  ['x rank 3', 'chunkScores', () => [f([1, 2, 20])], 'KVSQ_SHAPE'],
  ['chunk 0', 'chunkScores', () => [f([2, 20]), { chunk: 0 }], 'KVSQ_RANGE'],
  ['chunk fractional', 'chunkScores', () => [f([2, 20]), { chunk: 2.5 }], 'KVSQ_RANGE'],
  ['n past the row', 'chunkScores', () => [f([2, 20]), { n: 40 }], 'KVSQ_RANGE'],
  ['disposed x', 'chunkScores', () => [disposed(f([2, 20]))], 'KVSQ_DISPOSED'],
]);

// ------------------------------------------------------------------ top-k

const nanAt = (n: number, at: number) => {
  const a = rand(n);
  a[at] = NaN;
  return a;
};
runCases('topk: bad inputs', [
  ['scores not a Tensor', 'topk', () => [rand(10), 3], 'KVSQ_ARG'],
  ['options not an object', 'topk', () => [f([10]), 3, 7], 'KVSQ_ARG'],
  ['scores i32', 'topk', () => [i([1, 2, 3]), 1], 'KVSQ_DTYPE'],
  ['scores f16', 'topk', () => [f([10], 'f16'), 1], 'KVSQ_DTYPE'],
  ['scores rank 3', 'topk', () => [f([1, 2, 10]), 1], 'KVSQ_SHAPE'],
  ['negative k', 'topk', () => [f([2, 10]), -1], 'KVSQ_RANGE'],
  ['fractional k', 'topk', () => [f([2, 10]), 1.5], 'KVSQ_RANGE'],
  ['k NaN', 'topk', () => [f([2, 10]), NaN], 'KVSQ_RANGE'],
  ['k a string', 'topk', () => [f([2, 10]), '3'], 'KVSQ_ARG'],
  ['per-row k with a negative entry', 'topk', () => [f([2, 10]), i([3, -2])], 'KVSQ_RANGE'],
  ['per-row k of the wrong length', 'topk', () => [f([2, 10]), i([3, 2, 1])], 'KVSQ_SHAPE'],
  ['per-row k f32', 'topk', () => [f([2, 10]), f([2])], 'KVSQ_DTYPE'],
  ['per-row k rank 2', 'topk', () => [f([2, 10]), Tensor.from(Int32Array.from([1, 2]), [1, 2])], 'KVSQ_SHAPE'],
  ['lengths of the wrong length', 'topk', () => [f([2, 10]), 3, { lengths: i([10]) }], 'KVSQ_SHAPE'],
  ['lengths past the row', 'topk', () => [f([2, 10]), 3, { lengths: i([10, 11]) }], 'KVSQ_RANGE'],
  ['negative length', 'topk', () => [f([2, 10]), 3, { lengths: i([-1, 5]) }], 'KVSQ_RANGE'],
  ['lengths f32', 'topk', () => [f([2, 10]), 3, { lengths: f([2]) }], 'KVSQ_DTYPE'],
  ['NaN score', 'topk', () => [Tensor.from(nanAt(2 * 100, 157), [2, 100]), 5], 'KVSQ_NAN'],
  ['NaN score in the first slot of a 1-D row', 'topk', () => [Tensor.from(nanAt(1000, 0), [1000]), 999], 'KVSQ_NAN'],
  ['NaN score with k = 0 (still an input error)', 'topk', () => [Tensor.from(nanAt(50, 49), [50]), 0], 'KVSQ_NAN'],
  ['NaN inside a row\'s length', 'topk', () => [Tensor.from(nanAt(2 * 100, 103), [2, 100]), 5, { lengths: i([100, 4]) }], 'KVSQ_NAN'],
  ['disposed scores', 'topk', () => [disposed(f([10])), 3], 'KVSQ_DISPOSED'],
  ['disposed lengths', 'topk', () => [f([2, 10]), 3, { lengths: disposed(i([1, 2])) }], 'KVSQ_DISPOSED'],
]);

describe('topk: NaN beyond a row\'s length is not scanned', () => {
  it('no error, and the result ignores it', () => {
    const s = nanAt(2 * 100, 150); // row 1, position 50
    const r = ops.topk(Tensor.from(s, [2, 100]), 2, { lengths: i([100, 50]) });
    expect(Array.from(r.counts.toArray())).toEqual([2, 2]);
  });
});

// ------------------------------------------------------------------ Quest bounds
// B 1, Hq 4, Hkv 2, D 8, P 4, 6 pages; lists of 2 pages, kvLen 5 and 8
function qb(over: Record<string, unknown> = {}) {
  return {
    q: f([1, 4, 8]),
    metaPool: f([6, 2, 8], 'f16'),
    pageIndptr: i([0, 2, 4]),
    pageIds: i([4, 0, 5, 2]),
    kvLen: i([5, 8]),
    numKvHeads: 2,
    pageSize: 4,
    ...over,
  };
}
const Q = (over: Record<string, unknown>) => () => [qb(over)];
runCases('questBounds: bad inputs', [
  ['not an object', 'questBounds', () => ['q'], 'KVSQ_ARG'],
  ['metaPool missing', 'questBounds', Q({ metaPool: undefined }), 'KVSQ_ARG'],
  ['q i32', 'questBounds', Q({ q: i(Array(32).fill(1)) }), 'KVSQ_DTYPE'],
  ['metaPool i32', 'questBounds', Q({ metaPool: Tensor.from(new Int32Array(96), [6, 2, 8]) }), 'KVSQ_DTYPE'],
  ['kvLen f32', 'questBounds', Q({ kvLen: f([2]) }), 'KVSQ_DTYPE'],
  ['q rank 2', 'questBounds', Q({ q: f([4, 8]) }), 'KVSQ_SHAPE'],
  ['metaPool [pages, 3, D]', 'questBounds', Q({ metaPool: f([6, 3, 8]) }), 'KVSQ_SHAPE'],
  ['metaPool head dim differs', 'questBounds', Q({ metaPool: f([6, 2, 16]) }), 'KVSQ_SHAPE'],
  ['Hq not a multiple of numKvHeads', 'questBounds', Q({ numKvHeads: 3, pageIndptr: i([0, 1, 2, 4]), kvLen: i([4, 4, 8]) }), 'KVSQ_SHAPE'],
  ['kvLen of the wrong length', 'questBounds', Q({ kvLen: i([5]) }), 'KVSQ_SHAPE'],
  ['pageSize 0', 'questBounds', Q({ pageSize: 0 }), 'KVSQ_RANGE'],
  ['pageSize missing', 'questBounds', Q({ pageSize: undefined }), 'KVSQ_RANGE'],
  ['numKvHeads 0', 'questBounds', Q({ numKvHeads: 0 }), 'KVSQ_RANGE'],
  ['pageIndptr decreasing', 'questBounds', Q({ pageIndptr: i([0, 3, 2]) }), 'KVSQ_RANGE'],
  ['pageIndptr past the end', 'questBounds', Q({ pageIndptr: i([0, 2, 6]) }), 'KVSQ_RANGE'],
  ['page id past the pool', 'questBounds', Q({ pageIds: i([4, 0, 5, 6]) }), 'KVSQ_RANGE'],
  ['negative kvLen', 'questBounds', Q({ kvLen: i([-3, 8]) }), 'KVSQ_RANGE'],
  ['kvLen larger than its pages hold', 'questBounds', Q({ kvLen: i([5, 9]) }), 'KVSQ_RANGE'],
  // The output width comes from kvLen: a huge one must be refused before anything is sized.
  ['kvLen 2^31 - 1 (no 8 GB output first)', 'questBounds', Q({ kvLen: i([5, 2 ** 31 - 1]) }), 'KVSQ_RANGE'],
  ['disposed metaPool', 'questBounds', Q({ metaPool: disposed(f([6, 2, 8], 'f16')) }), 'KVSQ_DISPOSED'],
]);

// ------------------------------------------------------------------ in-place ops: append, gather, pageMeta
// Pools: 5 pages of P 4, D 8, bf16; meta [5, 2, 8]; scores [5, 4]. Each case makes
// its own pools and checks after the failure that every byte is unchanged.

interface Pools {
  kPool: Tensor;
  vPool: Tensor;
  metaPool: Tensor;
  scorePool: Tensor;
}
function mkPools(): Pools {
  return { kPool: f([5, 4, 8], 'bf16'), vPool: f([5, 4, 8], 'bf16'), metaPool: f([5, 2, 8], 'bf16'), scorePool: f([5, 4]) };
}
const bytes = (t: Tensor) => {
  if (t.disposed) return null;
  const a = t.toArray();
  return Buffer.from(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
};

type InPlaceCase = [string, OpName, (p: Pools) => unknown[], string];
function runInPlace(title: string, cases: InPlaceCase[]) {
  describe(title, () => {
    it.each(cases)('%s', async (_name, op, args, code) => {
      for (const form of ['sync', 'async'] as const) {
        const p = mkPools();
        const before = Object.values(p).map(bytes);
        const a = args(p);
        const c = form === 'sync' ? syncCode(() => OPS[op](...a)) : await asyncCode(() => OPS[op + 'Async'](...a));
        expect(c).toBe(code);
        const after = Object.values(p).map(bytes);
        after.forEach((b, k) => {
          if (b && before[k]) expect(b.equals(before[k]!)).toBe(true);
        });
      }
    });
  });
}

const ap = (p: Pools, over: Record<string, unknown> = {}) => [
  { kNew: f([3, 8], 'bf16'), vNew: f([3, 8], 'bf16'), dstSlot: i([4, 5, 17]), ...p, ...over },
];
runInPlace('append: bad inputs leave the pools unchanged', [
  ['not an object', 'append', () => [undefined], 'KVSQ_ARG'],
  ['kNew missing', 'append', (p) => ap(p, { kNew: undefined }), 'KVSQ_ARG'],
  ['kPool missing', 'append', (p) => ap(p, { kPool: undefined }), 'KVSQ_ARG'],
  ['kNew dtype differs from the pools', 'append', (p) => ap(p, { kNew: f([3, 8], 'f16') }), 'KVSQ_DTYPE'],
  ['vNew f32', 'append', (p) => ap(p, { vNew: f([3, 8]) }), 'KVSQ_DTYPE'],
  ['dstSlot f32', 'append', (p) => ap(p, { dstSlot: f([3]) }), 'KVSQ_DTYPE'],
  ['metaPool dtype differs', 'append', (p) => ap(p, { metaPool: f([5, 2, 8], 'f16') }), 'KVSQ_DTYPE'],
  ['scorePool bf16', 'append', (p) => ap(p, { scorePool: f([5, 4], 'bf16') }), 'KVSQ_DTYPE'],
  ['kPool rank 2', 'append', (p) => ap(p, { kPool: f([20, 8], 'bf16') }), 'KVSQ_SHAPE'],
  ['vPool shape differs', 'append', (p) => ap(p, { vPool: f([4, 4, 8], 'bf16') }), 'KVSQ_SHAPE'],
  ['kNew last dim differs from D', 'append', (p) => ap(p, { kNew: f([3, 16], 'bf16'), vNew: f([3, 16], 'bf16') }), 'KVSQ_SHAPE'],
  ['vNew shape differs from kNew', 'append', (p) => ap(p, { vNew: f([8, 3], 'bf16') }), 'KVSQ_SHAPE'],
  ['dstSlot of the wrong length', 'append', (p) => ap(p, { dstSlot: i([4, 5]) }), 'KVSQ_SHAPE'],
  ['resetMeta of the wrong length', 'append', (p) => ap(p, { resetMeta: i([1, 0]) }), 'KVSQ_SHAPE'],
  ['metaPool of the wrong shape', 'append', (p) => ap(p, { metaPool: f([5, 2, 4], 'bf16') }), 'KVSQ_SHAPE'],
  ['scorePool of the wrong shape', 'append', (p) => ap(p, { scorePool: f([5, 5]) }), 'KVSQ_SHAPE'],
  ['slot past the pool (last row)', 'append', (p) => ap(p, { dstSlot: i([4, 5, 20]) }), 'KVSQ_RANGE'],
  ['negative slot', 'append', (p) => ap(p, { dstSlot: i([4, -1, 6]) }), 'KVSQ_RANGE'],
  ['repeated slot', 'append', (p) => ap(p, { dstSlot: i([4, 9, 4]) }), 'KVSQ_RANGE'],
  ['disposed kNew', 'append', (p) => ap(p, { kNew: disposed(f([3, 8], 'bf16')) }), 'KVSQ_DISPOSED'],
  ['disposed metaPool', 'append', (p) => ap(p, { metaPool: disposed(f([5, 2, 8], 'bf16')) }), 'KVSQ_DISPOSED'],
]);

// source: a prefill tensor [2, 6, 8] (12 rows)
const ga = (p: Pools, over: Record<string, unknown> = {}) => [
  {
    kSrc: f([2, 6, 8], 'bf16'),
    vSrc: f([2, 6, 8], 'bf16'),
    srcRow: i([0, 11, 3]),
    dstSlot: i([2, 7, 19]),
    kPool: p.kPool,
    vPool: p.vPool,
    ...over,
  },
];
runInPlace('gather: bad inputs leave the pools unchanged', [
  ['not an object', 'gather', () => [7], 'KVSQ_ARG'],
  ['srcRow missing', 'gather', (p) => ga(p, { srcRow: undefined }), 'KVSQ_ARG'],
  ['scoreSrc without scorePool', 'gather', (p) => ga(p, { scoreSrc: f([12]) }), 'KVSQ_ARG'],
  ['scorePool without scoreSrc', 'gather', (p) => ga(p, { scorePool: p.scorePool }), 'KVSQ_ARG'],
  ['kSrc dtype differs', 'gather', (p) => ga(p, { kSrc: f([2, 6, 8]) }), 'KVSQ_DTYPE'],
  ['srcRow f32', 'gather', (p) => ga(p, { srcRow: f([3]) }), 'KVSQ_DTYPE'],
  ['scoreSrc f16', 'gather', (p) => ga(p, { scoreSrc: f([12], 'f16'), scorePool: p.scorePool }), 'KVSQ_DTYPE'],
  ['kSrc last dim differs', 'gather', (p) => ga(p, { kSrc: f([2, 6, 4], 'bf16'), vSrc: f([2, 6, 4], 'bf16') }), 'KVSQ_SHAPE'],
  ['vSrc shape differs', 'gather', (p) => ga(p, { vSrc: f([2, 5, 8], 'bf16') }), 'KVSQ_SHAPE'],
  ['dstSlot of the wrong length', 'gather', (p) => ga(p, { dstSlot: i([2, 7]) }), 'KVSQ_SHAPE'],
  ['scoreSrc of the wrong length', 'gather', (p) => ga(p, { scoreSrc: f([11]), scorePool: p.scorePool }), 'KVSQ_SHAPE'],
  ['source row past the source', 'gather', (p) => ga(p, { srcRow: i([0, 12, 3]) }), 'KVSQ_RANGE'],
  ['negative source row', 'gather', (p) => ga(p, { srcRow: i([0, 1, -3]) }), 'KVSQ_RANGE'],
  ['destination past the pool', 'gather', (p) => ga(p, { dstSlot: i([2, 7, 20]) }), 'KVSQ_RANGE'],
  ['repeated destination', 'gather', (p) => ga(p, { dstSlot: i([2, 7, 2]) }), 'KVSQ_RANGE'],
  [
    'compaction whose destination overlaps its source',
    'gather',
    (p) => ga(p, { kSrc: p.kPool, vSrc: p.vPool, srcRow: i([3, 4, 5]), dstSlot: i([10, 5, 11]) }),
    'KVSQ_RANGE',
  ],
  ['disposed vSrc', 'gather', (p) => ga(p, { vSrc: disposed(f([2, 6, 8], 'bf16')) }), 'KVSQ_DISPOSED'],
]);

const pm = (p: Pools, over: Record<string, unknown> = {}) => [{ kPool: p.kPool, metaPool: p.metaPool, pageIds: i([3, 0]), fill: i([4, 1]), ...over }];
runInPlace('pageMeta: bad inputs leave the pools unchanged', [
  ['not an object', 'pageMeta', () => [true], 'KVSQ_ARG'],
  ['fill missing', 'pageMeta', (p) => pm(p, { fill: undefined }), 'KVSQ_ARG'],
  ['metaPool dtype differs', 'pageMeta', (p) => pm(p, { metaPool: f([5, 2, 8]) }), 'KVSQ_DTYPE'],
  ['pageIds f32', 'pageMeta', (p) => pm(p, { pageIds: f([2]) }), 'KVSQ_DTYPE'],
  ['metaPool of the wrong shape', 'pageMeta', (p) => pm(p, { metaPool: f([4, 2, 8], 'bf16') }), 'KVSQ_SHAPE'],
  ['fill of the wrong length', 'pageMeta', (p) => pm(p, { fill: i([4]) }), 'KVSQ_SHAPE'],
  ['fill 0', 'pageMeta', (p) => pm(p, { fill: i([4, 0]) }), 'KVSQ_RANGE'],
  ['fill > page size', 'pageMeta', (p) => pm(p, { fill: i([5, 1]) }), 'KVSQ_RANGE'],
  ['page id past the pool', 'pageMeta', (p) => pm(p, { pageIds: i([3, 5]) }), 'KVSQ_RANGE'],
  ['repeated page id', 'pageMeta', (p) => pm(p, { pageIds: i([3, 3]) }), 'KVSQ_RANGE'],
  ['disposed kPool', 'pageMeta', (p) => pm(p, { kPool: disposed(f([5, 4, 8], 'bf16')) }), 'KVSQ_DISPOSED'],
]);

// decode attention's score pool is written in place too
const da = (p: Pools, over: Record<string, unknown> = {}) => [
  {
    q: f([1, 4, 8], 'bf16'),
    kPool: p.kPool,
    vPool: p.vPool,
    pageIndptr: i([0, 2, 4]),
    pageIds: i([1, 0, 3, 2]),
    kvLen: i([5, 8]),
    numKvHeads: 2,
    scorePool: p.scorePool,
    ...over,
  },
];
runInPlace('decodeAttention with a score pool: failures leave it unchanged', [
  ['page id past the pool', 'decodeAttention', (p) => da(p, { pageIds: i([1, 0, 3, 5]) }), 'KVSQ_RANGE'],
  ['kvLen larger than its pages hold', 'decodeAttention', (p) => da(p, { kvLen: i([5, 9]) }), 'KVSQ_RANGE'],
  ['selected page beyond the list', 'decodeAttention', (p) => da(p, { selIndptr: i([0, 1, 2, 3, 4]), selPages: i([1, 0, 0, 2]) }), 'KVSQ_RANGE'],
  ['reduce unknown', 'decodeAttention', (p) => da(p, { reduce: 'avg' }), 'KVSQ_RANGE'],
]);

describe('the valid base arguments of these suites succeed', () => {
  it('every op runs on them', async () => {
    expect(ops.decodeAttention(dec()).o.shape).toEqual([1, 4, 16]);
    expect(ops.questBounds(qb()).shape).toEqual([1, 4, 1]);
    const p = mkPools();
    ops.append(ap(p)[0] as never);
    ops.gather(ga(p)[0] as never);
    ops.pageMeta(pm(p)[0] as never);
    ops.decodeAttention(da(p)[0] as never);
    await ops.decodeAttentionAsync(da(p)[0] as never);
    expect(ops.windowScores(f([4, 8, 16]), f([2, 10, 16])).shape).toEqual([2, 10]);
    expect(ops.topk(f([2, 10]), 3).indices.shape).toEqual([2, 3]);
  });
});

describe('readScores / writeScores: lengths are checked before the output is sized', () => {
  it('a kvLen beyond its pages (2^31 - 1) is KVSQ_RANGE, with nothing allocated for it', () => {
    const scorePool = Tensor.from(new Float32Array(8), [2, 4]);
    const pageIndptr = Tensor.from(new Int32Array([0, 1, 2]), [3]);
    const pageIds = Tensor.from(new Int32Array([0, 1]), [2]);
    const kvLen = Tensor.from(new Int32Array([4, 2 ** 31 - 1]), [2]);
    expect(() => ops.readScores({ scorePool, pageIndptr, pageIds, kvLen })).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    const values = Tensor.from(new Float32Array(4), [4]);
    expect(() => ops.writeScores({ scorePool, pageIndptr, pageIds, kvLen, values })).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    for (const t of [scorePool, pageIndptr, pageIds, kvLen, values]) t.dispose();
  });
});

describe('decodeAttention scoresBefore / scoresAfter and toFloat32(into): bad destinations', () => {
  const pools = () => ({
    q: Tensor.from(new Float32Array(8), [1, 2, 4]),
    kPool: Tensor.from(new Float32Array(32), [2, 4, 4]),
    vPool: Tensor.from(new Float32Array(32), [2, 4, 4]),
    pageIndptr: Tensor.from(new Int32Array([0, 1, 2]), [3]),
    pageIds: Tensor.from(new Int32Array([0, 1]), [2]),
    kvLen: Tensor.from(new Int32Array([4, 3]), [2]),
    numKvHeads: 2,
    scorePool: Tensor.from(new Float32Array(8).fill(1), [2, 4]),
  });
  it('without scorePool: KVSQ_ARG; too short: KVSQ_SHAPE; not f32: KVSQ_DTYPE; the pool unchanged', () => {
    const a = pools();
    const short = Tensor.from(new Float32Array(6), [6]);
    const half = Tensor.zeros([7], { dtype: 'f16' });
    const ok = Tensor.zeros([7]);
    expect(() => ops.decodeAttention({ ...a, scorePool: undefined, scoresAfter: ok })).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
    expect(() => ops.decodeAttention({ ...a, scoresBefore: short })).toThrow(expect.objectContaining({ code: 'KVSQ_SHAPE' }));
    expect(() => ops.decodeAttention({ ...a, scoresAfter: half })).toThrow(expect.objectContaining({ code: 'KVSQ_DTYPE' }));
    expect(Array.from(a.scorePool.toFloat32())).toEqual(new Array(8).fill(1));
    expect(Array.from(ok.toFloat32())).toEqual(new Array(7).fill(0));
  });
  it('evictPositions / evictMaxPos: one without the other or without scorePool is KVSQ_ARG; short or wrong dtype is typed', () => {
    const a = pools();
    const pos = Tensor.from(new Int32Array([0, 1, 2, 3, 4, 5, 6]), [7]);
    const max = Tensor.from(new Int32Array([3, 3]), [2]);
    expect(() => ops.decodeAttention({ ...a, evictPositions: pos })).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
    expect(() => ops.decodeAttention({ ...a, evictMaxPos: max })).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
    expect(() => ops.decodeAttention({ ...a, scorePool: undefined, evictPositions: pos, evictMaxPos: max })).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
    expect(() => ops.decodeAttention({ ...a, evictPositions: Tensor.from(new Int32Array(6), [6]), evictMaxPos: max })).toThrow(expect.objectContaining({ code: 'KVSQ_SHAPE' }));
    expect(() => ops.decodeAttention({ ...a, evictPositions: pos, evictMaxPos: Tensor.from(new Int32Array(3), [3]) })).toThrow(expect.objectContaining({ code: 'KVSQ_SHAPE' }));
    expect(() => ops.decodeAttention({ ...a, evictPositions: Tensor.from(new Float32Array(7), [7]), evictMaxPos: max })).toThrow(expect.objectContaining({ code: 'KVSQ_DTYPE' }));
    expect(Array.from(a.scorePool.toFloat32())).toEqual(new Array(8).fill(1));
    const r = ops.decodeAttention({ ...a, evictPositions: pos, evictMaxPos: max });
    expect(r.evictSlots!.shape).toEqual([2]);
  });
  it('toFloat32(into): not a Float32Array is KVSQ_ARG, too short is KVSQ_SHAPE', () => {
    const t = Tensor.from(new Float32Array([1, 2, 3]), [3]);
    expect(() => t.toFloat32(new Float64Array(3) as unknown as Float32Array)).toThrow(expect.objectContaining({ code: 'KVSQ_ARG' }));
    expect(() => t.toFloat32(new Float32Array(2))).toThrow(expect.objectContaining({ code: 'KVSQ_SHAPE' }));
    const into = new Float32Array(4).fill(9);
    expect(Array.from(t.toFloat32(into))).toEqual([1, 2, 3, 9]);
  });
});

describe('questSelect: bad arguments', () => {
  const base = () => ({
    q: Tensor.from(new Float32Array(2 * 4), [1, 2, 4]),
    metaPool: Tensor.from(new Float32Array(6 * 2 * 4), [6, 2, 4]),
    pageIndptr: Tensor.from(new Int32Array([0, 3, 6]), [3]),
    pageIds: Tensor.from(new Int32Array([0, 1, 2, 3, 4, 5]), [6]),
    kvLen: Tensor.from(new Int32Array([10, 12]), [2]),
    numKvHeads: 2,
    pageSize: 4,
    budgetPages: 2,
  });
  it('budgetPages missing, 0 or fractional: KVSQ_RANGE; a length beyond its pages: KVSQ_RANGE before any allocation', () => {
    const a = base();
    expect(() => ops.questSelect({ ...a, budgetPages: 0 })).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    expect(() => ops.questSelect({ ...a, budgetPages: 1.5 })).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    expect(() => ops.questSelect({ ...a, budgetPages: undefined as unknown as number })).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
    const kvLen = Tensor.from(new Int32Array([10, 2 ** 31 - 1]), [2]);
    expect(() => ops.questSelect({ ...a, kvLen })).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
  });
  it('wrong dtypes and shapes: typed errors', () => {
    const a = base();
    expect(() => ops.questSelect({ ...a, pageIds: Tensor.from(new Float32Array(6), [6]) })).toThrow(expect.objectContaining({ code: 'KVSQ_DTYPE' }));
    expect(() => ops.questSelect({ ...a, metaPool: Tensor.from(new Float32Array(6 * 3 * 4), [6, 3, 4]) })).toThrow(expect.objectContaining({ code: 'KVSQ_SHAPE' }));
    expect(() => ops.questSelect({ ...a, numKvHeads: 3 })).toThrow(expect.objectContaining({ code: 'KVSQ_SHAPE' }));
    expect(() => ops.questSelect({ ...a, pageIds: Tensor.from(new Int32Array([0, 1, 2, 3, 4, 9]), [6]) })).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
  });
  it('a valid call: per head min(n, budget) pages, the last page included', () => {
    const r = ops.questSelect(base());
    expect(Array.from(r.selIndptr.toArray())).toEqual([0, 2, 4]);
    const p = Array.from(r.selPages.toArray());
    expect([p[1], p[3]]).toEqual([2, 2]);
  });
});
