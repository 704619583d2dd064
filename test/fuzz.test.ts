/**
 * Fuzzer for the N-API boundary and the public API: random wrong types,
 * shapes, dtypes, huge/negative/NaN sizes, disposed tensors, out-of-range
 * page tables and indices, for every exported function and constructor.
 * Every call must either succeed or throw a KvsqError with a known code;
 * anything else (a TypeError, a crash) fails the run.
 *
 * Bounded for `npm test`: KVSQ_FUZZ_CALLS (default 100000) calls, seeded by
 * KVSQ_FUZZ_SEED (default: fresh, printed).
 */
import * as k from '../lib';
import { native } from '../lib/native';

const CALLS = Number(process.env.KVSQ_FUZZ_CALLS ?? 100000);
const SEED = Number(process.env.KVSQ_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const CODES = new Set(Object.keys(k.errorClasses));

let state = SEED >>> 0 || 1;
function rnd(): number {
  // xorshift32
  state ^= state << 13;
  state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5;
  state >>>= 0;
  return state / 2 ** 32;
}
const ri = (n: number) => Math.floor(rnd() * n);
const pick = <T>(a: readonly T[]): T => a[ri(a.length)];

const live: k.Tensor[] = [];
const disposed: k.Tensor[] = [];

function smallShape(): number[] {
  const rank = ri(4);
  return Array.from({ length: rank }, () => pick([0, 1, 2, 3, 4, 7, 16]));
}
function tensor(): k.Tensor {
  const dtype = pick(['f32', 'f16', 'bf16', 'i32'] as const);
  const shape = smallShape();
  const n = shape.reduce((a, b) => a * b, 1);
  let t: k.Tensor;
  if (dtype === 'i32') t = k.Tensor.from(Int32Array.from({ length: n }, () => pick([-1, 0, 1, 2, 3, 5, 16, 2 ** 31 - 1, -(2 ** 31)])), shape);
  else t = k.Tensor.from(Float32Array.from({ length: n }, () => pick([0, 1, -1, 0.5, 1e30, -1e30, NaN, Infinity, rnd()])), shape, { dtype });
  return remember(t);
}
// Keeps a bounded set of live tensors for later calls to pick from (an
// unbounded one makes the run slower and slower as native memory piles up).
function remember<T extends k.Tensor>(t: T): T {
  live.push(t);
  if (live.length > 256) live.shift()!.dispose();
  return t;
}
function junk(depth = 0): unknown {
  switch (ri(16)) {
    case 0: return undefined;
    case 1: return null;
    case 2: return pick([NaN, Infinity, -Infinity, -1, 0, -0, 1.5, 2 ** 31, 2 ** 53, -(2 ** 40), 3, 16]);
    case 3: return pick(['f32', 'f16', 'bf16', 'i32', 'cpu', 'cuda:0', 'cuda:99', '', 'x', 'mean', 'max', 'avg']);
    case 4: return rnd() < 0.5;
    case 5: return depth < 2 ? Array.from({ length: ri(5) }, () => junk(depth + 1)) : [];
    case 6: return new Float32Array(ri(40));
    case 7: return new Uint16Array(ri(40));
    case 8: return new Int32Array(ri(40)).map(() => ri(50) - 5);
    case 9: return new Float64Array(ri(8));
    case 10: return depth < 2 ? { handle: junk(depth + 1), shape: [1] } : {};
    case 11: return disposed.length ? pick(disposed) : tensor();
    case 12: return () => 1;
    case 13: return Symbol('s');
    case 14: return BigInt(ri(10));
    default: return live.length && rnd() < 0.5 ? pick(live) : tensor();
  }
}
const maybe = (v: () => unknown) => (rnd() < 0.8 ? v() : junk());
function obj(keys: string[], value: (key: string) => unknown): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const key of keys) if (rnd() < 0.9) o[key] = value(key);
  if (rnd() < 0.1) o[pick(keys)] = junk();
  return o;
}
const intTensor = (n: number, hi: number) => {
  return remember(k.Tensor.from(Int32Array.from({ length: n }, () => (rnd() < 0.05 ? pick([-1, 2 ** 31 - 1, hi + 1]) : ri(hi + 1))), [n]));
};
const floatTensor = (shape: number[], dtype: k.DType = pick(['f32', 'f16', 'bf16'] as const)) => {
  const n = shape.reduce((a, b) => a * b, 1);
  return remember(k.Tensor.from(Float32Array.from({ length: n }, () => rnd() * 2 - 1), shape, { dtype }));
};

// Plausible-but-perturbed arguments for each op, so calls reach the kernels' own checks too.
function opArgs(op: string): Record<string, unknown> {
  const B = 1 + ri(2), Hkv = 1 + ri(2), g = pick([1, 2]), D = pick([4, 8]), P = pick([1, 2, 4]), N = 1 + ri(6);
  const dt = pick(['f32', 'f16', 'bf16'] as const);
  const lists = B * Hkv;
  const kPool = () => floatTensor([N, P, D], dt);
  switch (op) {
    case 'decodeAttention':
    case 'questBounds':
    case 'questSelect': {
      const indptr = Int32Array.from({ length: lists + 1 }, (_, i) => i * (1 + ri(2)));
      return obj(['q', 'kPool', 'vPool', 'metaPool', 'pageIndptr', 'pageIds', 'kvLen', 'numKvHeads', 'pageSize', 'scorePool', 'reduce', 'lse', 'share', 'selIndptr', 'selPages', 'scoresBefore', 'scoresAfter', 'budgetPages', 'qChecked'], (key) => {
        switch (key) {
          case 'q': return maybe(() => floatTensor([B, Hkv * g, D]));
          case 'kPool': case 'vPool': return maybe(kPool);
          case 'metaPool': return maybe(() => floatTensor([N, 2, D], dt));
          case 'pageIndptr': return maybe(() => k.Tensor.from(indptr, [indptr.length]));
          case 'pageIds': return maybe(() => intTensor(indptr[lists], N));
          case 'kvLen': return maybe(() => intTensor(lists, 2 * P + 1));
          case 'numKvHeads': return maybe(() => Hkv);
          case 'pageSize': return maybe(() => P);
          case 'scorePool': return maybe(() => floatTensor([N, P], 'f32'));
          case 'selIndptr': return rnd() < 0.5 ? undefined : intTensor(B * Hkv * g + 1, 2);
          case 'selPages': return rnd() < 0.5 ? undefined : intTensor(2, 2);
          case 'scoresBefore': case 'scoresAfter': return rnd() < 0.6 ? undefined : maybe(() => floatTensor([ri(3 * P + 2)], 'f32'));
          case 'budgetPages': return maybe(() => ri(4));
          case 'qChecked': return maybe(() => rnd() < 0.5);
          default: return junk();
        }
      });
    }
    case 'windowScores': {
      const L = 1 + ri(9);
      return obj(['q', 'k', 'window', 'scale', 'reduce'], (key) =>
        key === 'q' ? maybe(() => floatTensor([Hkv * g, L, D], dt)) : key === 'k' ? maybe(() => floatTensor([Hkv, L, D], dt)) : key === 'window' ? maybe(() => ri(L + 2)) : junk());
    }
    case 'pool1d':
    case 'chunkScores':
      return obj(['x', 'n', 'kernel', 'mode', 'chunk'], (key) => (key === 'x' ? maybe(() => floatTensor([1 + ri(3), ri(12)], 'f32')) : maybe(() => ri(14) - 1)));
    case 'countNonFinite':
      return obj(['x'], () =>
        maybe(() => (rnd() < 0.5 ? floatTensor([ri(9)]) : Array.from({ length: ri(4) }, () => (rnd() < 0.8 ? floatTensor([1 + ri(5)]) : junk())))));
    case 'topk':
      return obj(['scores', 'k', 'lengths'], (key) =>
        key === 'scores' ? maybe(() => floatTensor([2, ri(20)], 'f32')) : key === 'k' ? maybe(() => ri(25) - 2) : maybe(() => intTensor(2, 20)));
    case 'append':
    case 'gather':
    case 'pageMeta':
    case 'readScores': {
      const cnt = ri(4);
      return obj(['kNew', 'vNew', 'kSrc', 'vSrc', 'dstSlot', 'srcRow', 'kPool', 'vPool', 'metaPool', 'scorePool', 'scoreSrc', 'resetMeta', 'pageIds', 'fill', 'pageIndptr', 'kvLen'], (key) => {
        switch (key) {
          case 'kNew': case 'vNew': return maybe(() => floatTensor([cnt, D], dt));
          case 'kSrc': case 'vSrc': return maybe(() => floatTensor([3, D], dt));
          case 'dstSlot': case 'srcRow': return maybe(() => intTensor(cnt, N * P));
          case 'kPool': case 'vPool': return maybe(kPool);
          case 'metaPool': return maybe(() => floatTensor([N, 2, D], dt));
          case 'scorePool': return maybe(() => floatTensor([N, P], 'f32'));
          case 'scoreSrc': return maybe(() => floatTensor([3], 'f32'));
          case 'pageIds': return maybe(() => intTensor(cnt, N));
          case 'fill': return maybe(() => intTensor(cnt, P));
          case 'pageIndptr': return maybe(() => k.Tensor.from(Int32Array.from([0, ri(3)]), [2]));
          case 'kvLen': return maybe(() => intTensor(1, 2 * P));
          default: return junk();
        }
      });
    }
  }
  return {};
}

const OPS = ['decodeAttention', 'windowScores', 'pool1d', 'chunkScores', 'topk', 'questBounds', 'questSelect', 'append', 'gather', 'pageMeta', 'readScores', 'countNonFinite'];

type Target = () => unknown;
const targets: Array<[string, Target]> = [
  ['Tensor.from', () => k.Tensor.from(junk() as never, junk() as never, rnd() < 0.5 ? ({ dtype: junk(), device: junk() } as never) : (junk() as never))],
  ['Tensor.zeros', () => k.Tensor.zeros(rnd() < 0.5 ? smallShape() : (junk() as never), { dtype: junk() as never })],
  ['NativeTensor', () => new (native.NativeTensor as unknown as new (...a: unknown[]) => unknown)(junk(), junk(), junk(), junk())],
  ['tensor methods', () => {
    const t = (rnd() < 0.3 && disposed.length ? pick(disposed) : tensor()) as k.Tensor;
    const m = ri(5);
    if (m === 0) return t.toArray();
    if (m === 1) return t.toFloat32();
    if (m === 2) return t.to(junk() as string);
    if (m === 3) {
      t.dispose();
      disposed.push(t);
      if (disposed.length > 32) disposed.shift();
      return undefined;
    }
    return t.shape;
  }],
  ['native op', () => {
    const op = pick(OPS);
    const f = (native as unknown as Record<string, (o: unknown) => unknown>)[op + (rnd() < 0.1 ? 'Async' : '')];
    const r = f(rnd() < 0.9 ? opArgs(op) : junk());
    if (r !== null && typeof (r as { then?: unknown })?.then === "function") return (r as Promise<unknown>).catch((e) => check(e, op + 'Async'));
    return r;
  }],
  ['ops wrapper', () => {
    const op = pick(OPS);
    const a = opArgs(op);
    const o = k.ops as unknown as Record<string, (...x: unknown[]) => unknown>;
    if (op === 'windowScores') return o.windowScores(a.q, a.k, rnd() < 0.8 ? a : junk());
    if (op === 'pool1d' || op === 'chunkScores') return o[op](a.x, rnd() < 0.8 ? a : junk());
    if (op === 'topk') return o.topk(a.scores, a.k, rnd() < 0.8 ? { lengths: a.lengths } : junk());
    return o[op](rnd() < 0.9 ? a : junk());
  }],
  ['backend', () => (rnd() < 0.5 ? k.backend.setThreads(junk() as number) : k.backend.info())],
  ['decodeRowCheck', () => (native.decodeRowCheck as unknown as (...a: unknown[]) => unknown)(junk(), rnd() < 0.5 ? pick(['f32', 'f16', 'bf16']) : junk(), junk())],
  ['policies', () => {
    const C = pick([k.SnapKV, k.PyramidKV, k.ChunkKV, k.StreamingLLM, k.H2O, k.Quest, k.ShotKV] as unknown as Array<new (o: unknown) => unknown>);
    return new C(rnd() < 0.5 ? junk() : { budget: junk(), ratio: rnd() < 0.3 ? junk() : undefined, window: junk(), shots: junk(), heavy: junk(), recent: junk(), kernel: junk(), pool: junk() });
  }],
  ['cache', () => fuzzCache()],
  ['safetensors', () => {
    const bytes = new Uint8Array(ri(64)).map(() => ri(256));
    if (bytes.length >= 8 && rnd() < 0.5) bytes.set([ri(60), 0, 0, 0, 0, 0, 0, 0]);
    return k.readSafetensors(rnd() < 0.9 ? bytes : (junk() as Uint8Array));
  }],
];

// A small cache driven with random, partly invalid calls.
let cache: k.PagedKVCache | undefined;
let seqs: k.Sequence[] = [];
function fuzzCache(): unknown {
  if (!cache || rnd() < 0.02) {
    cache?.dispose();
    seqs = [];
    cache = rnd() < 0.1 ? new k.PagedKVCache(junk() as never) : new k.PagedKVCache({ layers: 2, kvHeads: 2, qHeads: 4, headDim: 8, pageSize: pick([1, 4, 16]), pages: pick([4, 16, 64]), dtype: pick(['f32', 'f16', 'bf16'] as const) });
  }
  const c = cache;
  switch (ri(6)) {
    case 0: {
      const pol = pick([null, new k.SnapKV({ budget: 6, window: 2 }), new k.StreamingLLM({ budget: 5, sinks: 1 }), new k.ChunkKV({ budget: 8, window: 2, chunk: 2 })]);
      const dec = pick([null, new k.H2O({ heavy: 2, recent: 2 }), new k.Quest({ budget: 8, denseLayers: 0 }), new k.StreamingLLM({ budget: 5, sinks: 1 })]);
      const s = c.addSequence(rnd() < 0.9 ? { prefill: pol, decode: dec } : (junk() as never));
      seqs.push(s);
      return s;
    }
    case 1: {
      if (!seqs.length) return undefined;
      const L = 1 + ri(20);
      const s = pick(seqs);
      return s.prefill(rnd() < 0.9 ? ri(2) : (junk() as number), maybe(() => floatTensor([4, L, 8])) as k.Tensor, maybe(() => floatTensor([2, L, 8])) as k.Tensor, maybe(() => floatTensor([2, L, 8])) as k.Tensor);
    }
    case 2: {
      if (!seqs.length) return undefined;
      const batch = seqs.filter(() => rnd() < 0.5);
      const B = batch.length;
      return c.decode(rnd() < 0.9 ? ri(2) : (junk() as number), rnd() < 0.9 ? batch : (junk() as never), maybe(() => floatTensor([B, 4, 8])) as k.Tensor, maybe(() => floatTensor([B, 2, 8])) as k.Tensor, maybe(() => floatTensor([B, 2, 8])) as k.Tensor);
    }
    case 3:
      if (!seqs.length) return undefined;
      return c.attend(ri(2), [pick(seqs)], maybe(() => floatTensor([1, 4, 8])) as k.Tensor);
    case 4:
      if (!seqs.length) return undefined;
      return rnd() < 0.5 ? pick(seqs).remove() : pick(seqs).kept(junk() as number);
    default:
      return c.stats();
  }
}

function check(e: unknown, where: string): void {
  if (!(e instanceof k.KvsqError) || !CODES.has(e.code)) {
    throw new Error(`fuzz (seed ${SEED}) ${where}: expected a KvsqError with a known code, got ${e instanceof Error ? `${e.constructor.name}: ${e.message}\n${e.stack}` : String(e)}`);
  }
}

test(`fuzz ${CALLS} calls (seed ${SEED}; replay with KVSQ_FUZZ_SEED)`, async () => {
  const codes = new Map<string, number>();
  let ok = 0;
  const pending: Promise<unknown>[] = [];
  const spent = new Map<string, number>();
  for (let i = 0; i < CALLS; i++) {
    const [name, fn] = targets[i % targets.length];
    const t0 = performance.now();
    try {
      const r = fn();
      if (r !== null && typeof (r as { then?: unknown })?.then === "function") pending.push(r as Promise<unknown>);
      ok++;
    } catch (e) {
      check(e, name);
      const code = (e as k.KvsqError).code;
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    spent.set(name, (spent.get(name) ?? 0) + performance.now() - t0);
    if (pending.length > 64) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
  for (const t of live) t.dispose();
  cache?.dispose();
  const ms = Object.fromEntries([...spent].map(([k2, v]) => [k2, Math.round(v)]));
  console.log(`fuzz seed ${SEED}: ${CALLS} calls, ${ok} succeeded, errors by code ${JSON.stringify(Object.fromEntries(codes))}; ms per target ${JSON.stringify(ms)}`);
  expect(ok + [...codes.values()].reduce((a, b) => a + b, 0)).toBe(CALLS);
}, 180000);
