/**
 * The low-level kernels, each callable on its own with Tensors (the policies
 * in lib/policies are built on these). Semantics: spec/methods.md; layouts:
 * native/core/ops.h. Every op checks its arguments here first (types,
 * dtypes, ranks, option ranges) and again in native code (sizes against each
 * other, index ranges), so bad input is a KvsqError with a code, never a
 * crash. Each op has a Promise form (`...Async`) that runs the kernel on
 * libuv's thread pool, for servers that must not block the event loop.
 */
import { ArgumentError, DTypeError, KvsqRangeError, ShapeError, show } from './errors';
import { native, NativeTensorHandle } from './native';
import { DType, Tensor } from './tensor';

export type Reduce = 'mean' | 'sum' | 'max';
export type PoolMode = 'max' | 'avg';

function tensor(t: unknown, what: string, dtypes?: readonly DType[], rank?: number | readonly number[]): Tensor {
  if (!(t instanceof Tensor)) throw new ArgumentError(`${what} must be a Tensor`);
  t.assertLive(what);
  if (dtypes && !dtypes.includes(t.dtype)) throw new DTypeError(`${what} has dtype ${t.dtype}; expected ${dtypes.join(' or ')}`);
  if (rank !== undefined) {
    const ranks = typeof rank === 'number' ? [rank] : rank;
    if (!ranks.includes(t.shape.length))
      throw new ShapeError(`${what} has shape [${t.shape.join(', ')}]; expected ${ranks.join(' or ')} dimensions`);
  }
  return t;
}
function optTensor(t: unknown, what: string, dtypes?: readonly DType[], rank?: number | readonly number[]): Tensor | undefined {
  return t === undefined || t === null ? undefined : tensor(t, what, dtypes, rank);
}
function int(x: unknown, what: string, lo: number, hi = 2 ** 31 - 1): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < lo || x > hi)
    throw new KvsqRangeError(`${what} = ${show(x)}: expected an integer in [${lo}, ${hi}]`);
  return x;
}
function optInt(x: unknown, what: string, lo: number, hi?: number): number | undefined {
  return x === undefined ? undefined : int(x, what, lo, hi);
}
function finite(x: unknown, what: string): number | undefined {
  if (x === undefined) return undefined;
  if (typeof x !== 'number' || !Number.isFinite(x)) throw new KvsqRangeError(`${what} must be a finite number`);
  return x;
}
function oneOf<T extends string>(x: unknown, what: string, allowed: readonly T[]): T | undefined {
  if (x === undefined) return undefined;
  if (typeof x !== 'string' || !(allowed as readonly string[]).includes(x))
    throw new KvsqRangeError(`${what} = ${show(x)}: expected one of ${allowed.join(', ')}`);
  return x as T;
}
function object(o: unknown, what: string): Record<string, unknown> {
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new ArgumentError(`${what}: expected an options object`);
  return o as Record<string, unknown>;
}

const FLOAT: readonly DType[] = ['f32', 'f16', 'bf16'];
const I32: readonly DType[] = ['i32'];
const F32: readonly DType[] = ['f32'];
const REDUCE: readonly Reduce[] = ['mean', 'sum', 'max'];

type Native = Record<string, (o: Record<string, unknown>) => unknown>;
const N = native as unknown as Native;
const h = (t: Tensor | undefined): NativeTensorHandle | undefined => t?.handle;
const wrap = (x: unknown): Tensor => Tensor.fromHandle(x as NativeTensorHandle);

// ------------------------------------------------------------------ decode attention

export interface DecodeAttentionArgs {
  /** [B, Hq, D], f32/f16/bf16; the output has the same dtype. */
  q: Tensor;
  /** [pages, P, D] K and V pools (one dtype). */
  kPool: Tensor;
  vPool: Tensor;
  /** i32 [B*Hkv + 1]: list l's pages are pageIds[pageIndptr[l] .. pageIndptr[l+1]). */
  pageIndptr: Tensor;
  pageIds: Tensor;
  /** i32 [B*Hkv]: valid slots per list. */
  kvLen: Tensor;
  numKvHeads: number;
  /** Softmax scale; default 1/sqrt(D). */
  scale?: number;
  /** Quest: i32 [B*Hq + 1] and the selected logical pages (ascending) per query head. */
  selIndptr?: Tensor;
  selPages?: Tensor;
  /** H2O: f32 [pages, P], this step's group-reduced probabilities are added in place. */
  scorePool?: Tensor;
  reduce?: Reduce;
  /** Also return the log-sum-exp per (b, h). */
  lse?: boolean;
  /**
   * With scorePool: f32 tensors (at least sum(kvLen) values, on the pool's
   * device) that receive the pool values of every valid slot of every list
   * before and after this step's add (flat, readScores' layout): a caller's
   * undo record and eviction view without two more passes. Caller-owned, so
   * a decode loop can reuse them.
   */
  scoresBefore?: Tensor;
  scoresAfter?: Tensor;
  /**
   * With scorePool: i32 positions of every valid slot (flat, at least
   * sum(kvLen)) and i32 [B*Hkv] maxima: the result's evictSlots holds, per
   * list, the slot with the lowest score after the add among those at a
   * position <= its maximum (ties: the lower position; -1 if none; a maximum
   * of -2^31 excludes every slot). H2O's eviction without the scores on the host.
   */
  evictPositions?: Tensor;
  evictMaxPos?: Tensor;
}

function decodeArgs(a: DecodeAttentionArgs) {
  const o = object(a, 'decodeAttention');
  const q = tensor(o.q, 'decodeAttention: q', FLOAT, 3);
  const kPool = tensor(o.kPool, 'decodeAttention: kPool', FLOAT, 3);
  const vPool = tensor(o.vPool, 'decodeAttention: vPool', FLOAT, 3);
  const numKvHeads = int(o.numKvHeads, 'decodeAttention: numKvHeads', 1);
  if (q.shape[1] % numKvHeads !== 0) throw new ShapeError(`decodeAttention: ${q.shape[1]} query heads are not a multiple of numKvHeads ${numKvHeads}`);
  if ((o.scoresBefore !== undefined || o.scoresAfter !== undefined) && o.scorePool === undefined)
    throw new ArgumentError('decodeAttention: scoresBefore / scoresAfter need scorePool');
  if ((o.evictPositions === undefined) !== (o.evictMaxPos === undefined))
    throw new ArgumentError('decodeAttention: evictPositions and evictMaxPos go together');
  if (o.evictPositions !== undefined && o.scorePool === undefined) throw new ArgumentError('decodeAttention: evictPositions needs scorePool');
  return {
    q: q.handle,
    kPool: kPool.handle,
    vPool: vPool.handle,
    pageIndptr: tensor(o.pageIndptr, 'decodeAttention: pageIndptr', I32).handle,
    pageIds: tensor(o.pageIds, 'decodeAttention: pageIds', I32).handle,
    kvLen: tensor(o.kvLen, 'decodeAttention: kvLen', I32).handle,
    numKvHeads,
    scale: finite(o.scale, 'decodeAttention: scale'),
    selIndptr: h(optTensor(o.selIndptr, 'decodeAttention: selIndptr', I32)),
    selPages: h(optTensor(o.selPages, 'decodeAttention: selPages', I32)),
    scorePool: h(optTensor(o.scorePool, 'decodeAttention: scorePool', F32, 2)),
    reduce: oneOf(o.reduce, 'decodeAttention: reduce', REDUCE),
    lse: o.lse === undefined ? undefined : Boolean(o.lse),
    scoresBefore: h(optTensor(o.scoresBefore, 'decodeAttention: scoresBefore', F32, 1)),
    scoresAfter: h(optTensor(o.scoresAfter, 'decodeAttention: scoresAfter', F32, 1)),
    evictPositions: h(optTensor(o.evictPositions, 'decodeAttention: evictPositions', I32, 1)),
    evictMaxPos: h(optTensor(o.evictMaxPos, 'decodeAttention: evictMaxPos', I32, 1)),
  };
}
export interface DecodeAttentionResult {
  /** [B, Hq, D] */
  o: Tensor;
  /** f32 [B, Hq] when requested */
  lse?: Tensor;
  /** i32 [B*Hkv] with evictPositions: each list's eviction candidate slot or -1. */
  evictSlots?: Tensor;
}
function decodeResult(r: unknown): DecodeAttentionResult {
  const x = r as { o: unknown; lse?: unknown; evictSlots?: unknown };
  return { o: wrap(x.o), lse: x.lse ? wrap(x.lse) : undefined, evictSlots: x.evictSlots ? wrap(x.evictSlots) : undefined };
}

// ------------------------------------------------------------------ scores

export interface WindowScoresOptions {
  /** Observation window w (the last w rows of q are used); default min(rows of q, L). */
  window?: number;
  scale?: number;
  reduce?: Reduce;
}
function windowArgs(q: Tensor, k: Tensor, opt: WindowScoresOptions = {}) {
  const o = object(opt, 'windowScores options');
  tensor(q, 'windowScores: q', FLOAT, 3);
  tensor(k, 'windowScores: k', FLOAT, 3);
  return {
    q: q.handle,
    k: k.handle,
    window: optInt(o.window, 'windowScores: window', 1),
    scale: finite(o.scale, 'windowScores: scale'),
    reduce: oneOf(o.reduce, 'windowScores: reduce', REDUCE),
  };
}

export interface Pool1dOptions {
  /** Prefix length pooled (default: the whole row). */
  n?: number;
  /** Odd kernel size (default 7). */
  kernel?: number;
  mode?: PoolMode;
}
function poolArgs(x: Tensor, opt: Pool1dOptions = {}) {
  const o = object(opt, 'pool1d options');
  tensor(x, 'pool1d: x', F32, [1, 2]);
  const kernel = optInt(o.kernel, 'pool1d: kernel', 1);
  if (kernel !== undefined && kernel % 2 === 0) throw new KvsqRangeError(`pool1d: kernel = ${kernel} must be odd`);
  return { x: x.handle, n: optInt(o.n, 'pool1d: n', 0), kernel, mode: oneOf(o.mode, 'pool1d: mode', ['max', 'avg'] as const) };
}

export interface ChunkScoresOptions {
  n?: number;
  /** Chunk length in tokens (default 10). */
  chunk?: number;
}
function chunkArgs(x: Tensor, opt: ChunkScoresOptions = {}) {
  const o = object(opt, 'chunkScores options');
  tensor(x, 'chunkScores: x', F32, [1, 2]);
  return { x: x.handle, n: optInt(o.n, 'chunkScores: n', 0), chunk: optInt(o.chunk, 'chunkScores: chunk', 1) };
}

// ------------------------------------------------------------------ top-k

export interface TopkOptions {
  /** i32 [rows]: per-row lengths (default: the whole row). */
  lengths?: Tensor;
}
export interface TopkResult {
  /** i32 [rows, width] (or [width] for 1-D scores): positions ascending, -1 padded. */
  indices: Tensor;
  /** i32 [rows]: min(k, length) per row. */
  counts: Tensor;
}
function topkArgs(scores: Tensor, k: number | Tensor, opt: TopkOptions = {}) {
  const o = object(opt, 'topk options');
  tensor(scores, 'topk: scores', F32, [1, 2]);
  const kk = typeof k === 'number' ? int(k, 'topk: k', 0) : tensor(k, 'topk: k', I32, 1).handle;
  return { scores: scores.handle, k: kk, lengths: h(optTensor(o.lengths, 'topk: lengths', I32, 1)) };
}
function topkResult(r: unknown): TopkResult {
  const x = r as { indices: unknown; counts: unknown };
  return { indices: wrap(x.indices), counts: wrap(x.counts) };
}

// ------------------------------------------------------------------ Quest bounds

export interface QuestBoundsArgs {
  /** [B, Hq, D] */
  q: Tensor;
  /** [pages, 2, D]: kmin, kmax per page, in the K dtype. */
  metaPool: Tensor;
  pageIndptr: Tensor;
  pageIds: Tensor;
  kvLen: Tensor;
  numKvHeads: number;
  pageSize: number;
  /** One row per KV head (max over the group) instead of per query head. */
  share?: boolean;
}
function questArgs(a: QuestBoundsArgs, op = 'questBounds') {
  const o = object(a, op);
  return {
    q: tensor(o.q, `${op}: q`, FLOAT, 3).handle,
    metaPool: tensor(o.metaPool, `${op}: metaPool`, FLOAT, 3).handle,
    pageIndptr: tensor(o.pageIndptr, `${op}: pageIndptr`, I32).handle,
    pageIds: tensor(o.pageIds, `${op}: pageIds`, I32).handle,
    kvLen: tensor(o.kvLen, `${op}: kvLen`, I32).handle,
    numKvHeads: int(o.numKvHeads, `${op}: numKvHeads`, 1),
    pageSize: int(o.pageSize, `${op}: pageSize`, 1, 1 << 20),
    share: o.share === undefined ? undefined : Boolean(o.share),
  };
}

export interface QuestSelectArgs extends QuestBoundsArgs {
  /** Pages read per query head: floor(budget / pageSize), at least 1. */
  budgetPages: number;
  /**
   * @internal The caller has already checked that q is finite (the cache
   * does for a whole decode step): on a GPU the selection then reads nothing
   * back and does not wait for the device. Without it a non-finite q is a
   * KVSQ_NAN error, as on the CPU.
   */
  qChecked?: boolean;
}
export interface QuestSelectResult {
  /** i32 [B*Hq + 1]: row r's pages are selPages[selIndptr[r] .. selIndptr[r+1]). */
  selIndptr: Tensor;
  /** i32: logical pages, ascending per row; decodeAttention's selIndptr/selPages. */
  selPages: Tensor;
}
function questSelectArgs(a: QuestSelectArgs) {
  const o = object(a, 'questSelect');
  return {
    ...questArgs(a, 'questSelect'),
    budgetPages: int(o.budgetPages, 'questSelect: budgetPages', 1),
    qChecked: o.qChecked === undefined ? undefined : Boolean(o.qChecked),
  };
}
function questSelectResult(r: unknown): QuestSelectResult {
  const x = r as { selIndptr: unknown; selPages: unknown };
  return { selIndptr: wrap(x.selIndptr), selPages: wrap(x.selPages) };
}

function nonFiniteArg(x: unknown) {
  if (!Array.isArray(x)) return tensor(x, 'countNonFinite: x', FLOAT).handle;
  if (x.length < 1 || x.length > 64) throw new ArgumentError('countNonFinite: x must be a Tensor or an array of 1 to 64 Tensors');
  return x.map((t, i) => tensor(t, `countNonFinite: x[${i}]`, FLOAT).handle);
}

// ------------------------------------------------------------------ append / gather / page meta

export interface AppendArgs {
  /** [count, D] (any shape whose last dimension is D) in the pools' dtype. */
  kNew: Tensor;
  vNew: Tensor;
  /** i32 [count]: physical slot = page * P + row, distinct. */
  dstSlot: Tensor;
  kPool: Tensor;
  vPool: Tensor;
  /** Quest metadata [pages, 2, D], widened (or reset) in the same pass. */
  metaPool?: Tensor;
  /** i32 [count]: 1 = the page's metadata restarts from this key (default: when the slot is row 0). */
  resetMeta?: Tensor;
  /** f32 [pages, P]: the new slots' scores are zeroed. */
  scorePool?: Tensor;
}
function appendArgs(a: AppendArgs) {
  const o = object(a, 'append');
  return {
    kNew: tensor(o.kNew, 'append: kNew', FLOAT).handle,
    vNew: tensor(o.vNew, 'append: vNew', FLOAT).handle,
    dstSlot: tensor(o.dstSlot, 'append: dstSlot', I32).handle,
    kPool: tensor(o.kPool, 'append: kPool', FLOAT, 3).handle,
    vPool: tensor(o.vPool, 'append: vPool', FLOAT, 3).handle,
    metaPool: h(optTensor(o.metaPool, 'append: metaPool', FLOAT, 3)),
    resetMeta: h(optTensor(o.resetMeta, 'append: resetMeta', I32)),
    scorePool: h(optTensor(o.scorePool, 'append: scorePool', F32, 2)),
  };
}

export interface GatherArgs {
  /** Source rows: any shape whose last dimension is D (e.g. prefill K [Hkv, L, D] or the pools). */
  kSrc: Tensor;
  vSrc: Tensor;
  /** i32 [count]: source row of each copy. */
  srcRow: Tensor;
  kPool: Tensor;
  vPool: Tensor;
  /** i32 [count]: destination physical slots, distinct. */
  dstSlot: Tensor;
  /** f32, one score per source row, copied into scorePool. */
  scoreSrc?: Tensor;
  scorePool?: Tensor;
}
function gatherArgs(a: GatherArgs) {
  const o = object(a, 'gather');
  return {
    kSrc: tensor(o.kSrc, 'gather: kSrc', FLOAT).handle,
    vSrc: tensor(o.vSrc, 'gather: vSrc', FLOAT).handle,
    srcRow: tensor(o.srcRow, 'gather: srcRow', I32).handle,
    kPool: tensor(o.kPool, 'gather: kPool', FLOAT, 3).handle,
    vPool: tensor(o.vPool, 'gather: vPool', FLOAT, 3).handle,
    dstSlot: tensor(o.dstSlot, 'gather: dstSlot', I32).handle,
    scoreSrc: h(optTensor(o.scoreSrc, 'gather: scoreSrc', F32)),
    scorePool: h(optTensor(o.scorePool, 'gather: scorePool', F32, 2)),
  };
}

export interface PageMetaArgs {
  kPool: Tensor;
  metaPool: Tensor;
  /** i32 [count] physical pages; fill: i32 [count] valid rows of each (1..P). */
  pageIds: Tensor;
  fill: Tensor;
}
function pageMetaArgs(a: PageMetaArgs) {
  const o = object(a, 'pageMeta');
  return {
    kPool: tensor(o.kPool, 'pageMeta: kPool', FLOAT, 3).handle,
    metaPool: tensor(o.metaPool, 'pageMeta: metaPool', FLOAT, 3).handle,
    pageIds: tensor(o.pageIds, 'pageMeta: pageIds', I32).handle,
    fill: tensor(o.fill, 'pageMeta: fill', I32).handle,
  };
}

export interface ReadScoresArgs {
  /** f32 [pages, P] */
  scorePool: Tensor;
  pageIndptr: Tensor;
  pageIds: Tensor;
  /** i32 [lists] */
  kvLen: Tensor;
}
function readScoresArgs(a: ReadScoresArgs) {
  const o = object(a, 'readScores');
  return {
    scorePool: tensor(o.scorePool, 'readScores: scorePool', F32, 2).handle,
    pageIndptr: tensor(o.pageIndptr, 'readScores: pageIndptr', I32).handle,
    pageIds: tensor(o.pageIds, 'readScores: pageIds', I32).handle,
    kvLen: tensor(o.kvLen, 'readScores: kvLen', I32).handle,
  };
}

export interface WriteScoresArgs extends ReadScoresArgs {
  /** f32, at least sum kvLen values: the lists' scores, concatenated (as readScores returns them); the first sum kvLen are used. */
  values: Tensor;
}
function writeScoresArgs(a: WriteScoresArgs) {
  const o = object(a, 'writeScores');
  return { ...readScoresArgs(a), values: tensor(o.values, 'writeScores: values', F32).handle };
}

// ------------------------------------------------------------------ the ops object

export const ops = {
  /** Paged GQA decode attention, optional Quest subset and H2O score accumulation. */
  decodeAttention: (a: DecodeAttentionArgs): DecodeAttentionResult => decodeResult(N.decodeAttention(decodeArgs(a))),
  decodeAttentionAsync: async (a: DecodeAttentionArgs): Promise<DecodeAttentionResult> =>
    decodeResult(await N.decodeAttentionAsync(decodeArgs(a))),
  /** Window scores S [Hkv, L] (SnapKV/PyramidKV/ChunkKV/ShotKV; window = L gives H2O's column sums). */
  windowScores: (q: Tensor, k: Tensor, opt?: WindowScoresOptions): Tensor => wrap(N.windowScores(windowArgs(q, k, opt))),
  windowScoresAsync: async (q: Tensor, k: Tensor, opt?: WindowScoresOptions): Promise<Tensor> =>
    wrap(await N.windowScoresAsync(windowArgs(q, k, opt))),
  /** Max/avg pooling over the prefix of each row. */
  pool1d: (x: Tensor, opt?: Pool1dOptions): Tensor => wrap(N.pool1d(poolArgs(x, opt))),
  pool1dAsync: async (x: Tensor, opt?: Pool1dOptions): Promise<Tensor> => wrap(await N.pool1dAsync(poolArgs(x, opt))),
  /** ChunkKV chunk scores: sums over rows and chunk positions. */
  chunkScores: (x: Tensor, opt?: ChunkScoresOptions): Tensor => wrap(N.chunkScores(chunkArgs(x, opt))),
  chunkScoresAsync: async (x: Tensor, opt?: ChunkScoresOptions): Promise<Tensor> => wrap(await N.chunkScoresAsync(chunkArgs(x, opt))),
  /** Row-wise top-k: ties to the lower index, positions ascending. */
  topk: (scores: Tensor, k: number | Tensor, opt?: TopkOptions): TopkResult => topkResult(N.topk(topkArgs(scores, k, opt))),
  topkAsync: async (scores: Tensor, k: number | Tensor, opt?: TopkOptions): Promise<TopkResult> =>
    topkResult(await N.topkAsync(topkArgs(scores, k, opt))),
  /** Quest page upper bounds for every page but the last. */
  questBounds: (a: QuestBoundsArgs): Tensor => wrap(N.questBounds(questArgs(a))),
  questBoundsAsync: async (a: QuestBoundsArgs): Promise<Tensor> => wrap(await N.questBoundsAsync(questArgs(a))),
  /**
   * Quest's page choice for a decode step in one call: per query head, every
   * page of a list with at most budgetPages pages, else its budgetPages - 1
   * pages of largest bound (ties: the lower page; with share, the KV head's
   * bound) plus the last page, ascending. Same as questBounds + topk, without
   * the bounds leaving the kernel's memory.
   */
  questSelect: (a: QuestSelectArgs): QuestSelectResult => questSelectResult(N.questSelect(questSelectArgs(a))),
  questSelectAsync: async (a: QuestSelectArgs): Promise<QuestSelectResult> => questSelectResult(await N.questSelectAsync(questSelectArgs(a))),
  /** Writes new K/V rows into page slots, updating page min/max (in place). */
  append: (a: AppendArgs): void => void N.append(appendArgs(a)),
  appendAsync: async (a: AppendArgs): Promise<void> => void (await N.appendAsync(appendArgs(a))),
  /** Copies rows into page slots (prefill store, compaction), in place. */
  gather: (a: GatherArgs): void => void N.gather(gatherArgs(a)),
  gatherAsync: async (a: GatherArgs): Promise<void> => void (await N.gatherAsync(gatherArgs(a))),
  /** Recomputes page min/max over the first fill rows, in place. */
  pageMeta: (a: PageMetaArgs): void => void N.pageMeta(pageMetaArgs(a)),
  pageMetaAsync: async (a: PageMetaArgs): Promise<void> => void (await N.pageMetaAsync(pageMetaArgs(a))),
  /** Accumulated scores of each list's slots, lists concatenated: f32 [sum kvLen]. */
  readScores: (a: ReadScoresArgs): Tensor => wrap(N.readScores(readScoresArgs(a))),
  readScoresAsync: async (a: ReadScoresArgs): Promise<Tensor> => wrap(await N.readScoresAsync(readScoresArgs(a))),
  /**
   * Number of NaN and +-Inf elements of a float tensor, or their total over
   * several tensors on one device (on a GPU: one wait for all of them).
   */
  countNonFinite: (x: Tensor | readonly Tensor[]): number => N.countNonFinite({ x: nonFiniteArg(x) }) as number,
  countNonFiniteAsync: async (x: Tensor | readonly Tensor[]): Promise<number> => (await N.countNonFiniteAsync({ x: nonFiniteArg(x) })) as number,
  /** The inverse of readScores: writes the lists' scores back into the pool (in place). */
  writeScores: (a: WriteScoresArgs): void => void N.writeScores(writeScoresArgs(a)),
  writeScoresAsync: async (a: WriteScoresArgs): Promise<void> => void (await N.writeScoresAsync(writeScoresArgs(a))),
};
