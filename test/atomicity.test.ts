/**
 * Failure atomicity, targeted: operations that fail midway (after pages were
 * taken, after the policy ran, after the kernels appended and accumulated)
 * must leave every sequence's cache exactly as before - stats(), kept(),
 * slots(), length() - and the steps that follow must give the same outputs
 * (bit for bit), the same kept positions and the same accumulated scores as a
 * twin cache that never saw the failure. (test/cache-property.test.ts covers
 * random failing operations; these are the hard cases named in the issue.)
 *
 * The twin is built from the same seeded data; the pool's free list may hand
 * out different physical pages after a failure gave pages back, which must
 * not change any result.
 */
import { PagedKVCache, Sequence, Tensor, KvsqError, H2O, Quest, SnapKV, ChunkKV, StreamingLLM } from '../lib';
import type { DecodePolicy, DecodeHeadView, PrefillPolicy, PrefillContext, PrefillDecision, QuestConfig, Reduce } from '../lib';

// ---------------------------------------------------------------- data and observation

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const temps: Tensor[] = [];
afterEach(() => {
  for (const t of temps.splice(0)) t.dispose();
});
function rt(seed: number, shape: number[], scale = 1, dtype: 'f32' | 'f16' | 'bf16' = 'f32'): Tensor {
  const r = prng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = scale * (2 * r() - 1);
  const t = Tensor.from(a, shape, { dtype });
  temps.push(t);
  return t;
}

function observe(cache: PagedKVCache, seqs: readonly Sequence[]): unknown {
  return {
    stats: cache.stats(),
    seqs: seqs.map((s) => ({
      stats: s.stats(),
      promptLength: s.promptLength,
      state: [...s.state.entries()].map(([k, v]) => [k, v instanceof Int32Array ? Array.from(v) : v]),
      layers: Array.from({ length: cache.numLayers }, (_, l) => ({
        kept: s.kept(l).map((x) => Array.from(x)),
        slots: s.slots(l).map((x) => Array.from(x)),
        length: s.length(l),
      })),
    })),
  };
}
/** Positions-only view (slot order may differ from a twin's only if pages differ, which they must not). */
function keptOf(cache: PagedKVCache, seqs: readonly Sequence[]): unknown {
  return seqs.filter((s) => !s.removed).map((s) => Array.from({ length: cache.numLayers }, (_, l) => ({ kept: s.kept(l).map((x) => Array.from(x)), slots: s.slots(l).map((x) => Array.from(x)), length: s.length(l) })));
}

function failsWith(fn: () => unknown, check: (e: unknown) => void): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new Error('expected the call to fail');
  check(err);
}
const code = (c: string) => (e: unknown) => {
  expect(e).toBeInstanceOf(KvsqError);
  expect((e as KvsqError).code).toBe(c);
};

// ---------------------------------------------------------------- instrumented policies

/** Wraps a decode policy: records the scores it is shown; can be armed to throw at the n-th evict call. */
class Spy implements DecodePolicy {
  readonly name: string;
  readonly params: Readonly<Record<string, unknown>>;
  readonly accumulate: Reduce | null;
  readonly wantsPrefillScores: boolean;
  readonly quest: QuestConfig | null;
  log: number[][][] = [];
  throwAt = -1; // evict calls until the throw (0 = the next call)
  badSlot = false;
  constructor(readonly inner: DecodePolicy) {
    this.name = `spy(${inner.name})`;
    this.params = inner.params;
    this.accumulate = inner.accumulate;
    this.wantsPrefillScores = inner.wantsPrefillScores;
    this.quest = inner.quest;
  }
  evict(views: DecodeHeadView[], layer: number): number[] {
    if (this.throwAt === 0) {
      this.throwAt = -1;
      throw new Error('injected eviction failure');
    }
    if (this.throwAt > 0) this.throwAt--;
    if (this.badSlot) {
      this.badSlot = false;
      return views.map((v) => v.length); // one past the end: the cache must refuse it
    }
    this.log.push(views.map((v) => (v.scores ? Array.from(v.scores) : [])));
    return this.inner.evict(views, layer);
  }
}

/** A prefill policy that misbehaves after the scoring, in one of several ways. */
class BadPrefill implements PrefillPolicy {
  readonly name = 'bad';
  readonly params = {};
  calls = 0;
  constructor(
    readonly how: 'unsorted' | 'outOfRange' | 'wrongHeads' | 'badScores' | 'disposeK' | 'stateThenThrow' | 'ok',
    readonly inner: PrefillPolicy = new SnapKV({ budget: 8, window: 2, kernel: 1 }),
  ) {}
  select(ctx: PrefillContext): PrefillDecision {
    this.calls++;
    const d = this.inner.select(ctx);
    const kept = d.kept ?? Array.from({ length: ctx.numKvHeads }, () => Int32Array.from({ length: ctx.seqLen }, (_, i) => i));
    switch (this.how) {
      case 'unsorted':
        return { kept: kept.map((h, j) => (j === kept.length - 1 ? h.slice().reverse() : h)) };
      case 'outOfRange':
        return { kept: kept.map((h, j) => (j === kept.length - 1 ? Int32Array.from([...h.slice(0, -1), ctx.seqLen]) : h)) };
      case 'wrongHeads':
        return { kept: kept.slice(1) };
      case 'badScores': {
        // Scores one column short: the gather kernel refuses them, after the pages were taken.
        const s = Tensor.zeros([ctx.numKvHeads, ctx.seqLen - 1]);
        this.lastScores = s;
        return { kept, scores: s };
      }
      case 'disposeK':
        ctx.k.dispose();
        return { kept };
      case 'stateThenThrow':
        ctx.state.set('bad', Int32Array.from([1, 2, 3]));
        throw new Error('injected prefill policy failure');
      default:
        return { kept };
    }
  }
  lastScores?: Tensor;
}

// ---------------------------------------------------------------- setups

const D = 8;
const Hkv = 2;
const Hq = 4;
const P = 4;

interface World {
  cache: PagedKVCache;
  seqs: Sequence[];
  spies: Spy[];
}

/**
 * A cache with three sequences of prompt lengths `Ls` at `layers` layers.
 * decode policy per sequence: a Spy around `dec()`. Prompt data from seeds.
 */
function world(o: { layers?: number; Ls: number[]; pages: number; dec: () => DecodePolicy | null; pre?: () => PrefillPolicy | null; dtype?: 'f32' | 'f16' | 'bf16' }): World {
  const layers = o.layers ?? 1;
  const cache = new PagedKVCache({ layers, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: o.pages, dtype: o.dtype ?? 'f32' });
  const spies: Spy[] = [];
  const seqs = o.Ls.map((L, i) => {
    const inner = o.dec();
    const spy = inner ? new Spy(inner) : null;
    if (spy) spies.push(spy);
    const s = cache.addSequence({ prefill: o.pre?.() ?? null, decode: spy });
    for (let l = 0; l < layers; l++) s.prefill(l, rt(100 * i + l, [Hq, L, D]), rt(100 * i + l + 50, [Hkv, L, D]), rt(100 * i + l + 70, [Hkv, L, D]));
    return s;
  });
  return { cache, seqs, spies };
}

/** One decode step at `layer` for `batch` (indices into w.seqs), data from `seed`. */
function step(w: World, layer: number, batch: number[], seed: number, kScale = 1): Float32Array {
  const B = batch.length;
  const o = w.cache.decode(layer, batch.map((b) => w.seqs[b]), rt(seed, [B, Hq, D]), rt(seed + 1, [B, Hkv, D], kScale), rt(seed + 2, [B, Hkv, D]));
  const a = o.toFloat32();
  o.dispose();
  return a;
}

/** Runs the same steps on the cache that failed and on its twin: identical outputs, kept positions and scores. */
function sameFuture(a: World, b: World, steps: { layer: number; batch: number[] }[], seed: number): void {
  a.spies.forEach((s) => (s.log = []));
  b.spies.forEach((s) => (s.log = []));
  steps.forEach((st, i) => {
    const oa = step(a, st.layer, st.batch, seed + 10 * i);
    const ob = step(b, st.layer, st.batch, seed + 10 * i);
    expect(Array.from(oa)).toEqual(Array.from(ob));
    expect(a.cache.lastSelection?.map((x) => Array.from(x)) ?? null).toEqual(b.cache.lastSelection?.map((x) => Array.from(x)) ?? null);
  });
  expect(keptOf(a.cache, a.seqs)).toEqual(keptOf(b.cache, b.seqs));
  expect(a.spies.map((s) => s.log)).toEqual(b.spies.map((s) => s.log));
  const sa = a.cache.stats();
  const sb = b.cache.stats();
  expect(sa.pages.used).toBe(sb.pages.used);
  expect(sa.tokens).toEqual(sb.tokens);
}

function done(...ws: World[]): void {
  for (const w of ws) w.cache.dispose();
}

// ---------------------------------------------------------------- decode

describe('decode failing midway leaves every sequence as it was', () => {
  it('pool exhausted in a batch where only the last sequence needs a new page: KVSQ_OOM, nothing changed, same future as a twin', () => {
    // Prompt lengths 5, 6, 8 with P = 4: the first two have room in their last
    // page (3 and 2 slots), the third's last page is full, so its 2 KV heads
    // need 2 new pages.
    const Ls = [5, 6, 8];
    const pages = Hkv * Ls.reduce((n, L) => n + Math.ceil(L / P), 0); // exactly what the prompts take
    const make = () => world({ Ls, pages, dec: () => new H2O({ heavy: 100, recent: 100 }) });
    const a = make();
    const b = make();
    try {
      expect(a.cache.stats().pages.free).toBe(0);
      const before = observe(a.cache, a.seqs);
      failsWith(() => step(a, 0, [0, 1, 2], 7), code('KVSQ_OOM'));
      expect(observe(a.cache, a.seqs)).toEqual(before);
      // The same batch without the third sequence fits; then free the third's pages and go on.
      sameFuture(a, b, [{ layer: 0, batch: [0, 1] }, { layer: 0, batch: [1, 0] }], 1000);
      a.seqs[2].remove();
      b.seqs[2].remove();
      sameFuture(a, b, [{ layer: 0, batch: [0, 1] }, { layer: 0, batch: [0] }], 2000);
      expect(a.cache.stats()).toEqual(b.cache.stats());
    } finally {
      done(a, b);
    }
  });

  it('a disposed tensor as v, a disposed q, an i32 k: the batch is refused before anything is written', () => {
    const make = () => world({ Ls: [9, 5, 13], pages: 64, dec: () => new H2O({ heavy: 3, recent: 3 }) });
    const a = make();
    const b = make();
    try {
      step(a, 0, [0, 1, 2], 11);
      step(b, 0, [0, 1, 2], 11);
      const seqs = a.seqs;
      const before = observe(a.cache, seqs);
      const v = rt(1, [3, Hkv, D]);
      v.dispose();
      failsWith(() => a.cache.decode(0, seqs, rt(2, [3, Hq, D]), rt(3, [3, Hkv, D]), v), code('KVSQ_DISPOSED'));
      const q = rt(4, [3, Hq, D]);
      q.dispose();
      failsWith(() => a.cache.decode(0, seqs, q, rt(5, [3, Hkv, D]), rt(6, [3, Hkv, D])), code('KVSQ_DISPOSED'));
      const kI = Tensor.from(new Int32Array(3 * Hkv * D), [3, Hkv, D]);
      temps.push(kI);
      failsWith(() => a.cache.decode(0, seqs, rt(7, [3, Hq, D]), kI, rt(8, [3, Hkv, D])), code('KVSQ_DTYPE'));
      expect(observe(a.cache, seqs)).toEqual(before);
      sameFuture(a, b, [{ layer: 0, batch: [0, 1, 2] }, { layer: 0, batch: [2, 0] }, { layer: 0, batch: [1] }], 3000);
    } finally {
      done(a, b);
    }
  });

  it('an eviction policy that throws for the second sequence of a batch (after the first one evicted): scores, holes and pages restored', () => {
    // H2O over budget: every step evicts, so the first sequence's eviction is
    // applied before the second's throws; attention has added this step's
    // probabilities to all three sequences' scores by then.
    const make = () => world({ Ls: [12, 10, 14], pages: 64, dec: () => new H2O({ heavy: 3, recent: 3 }) });
    const a = make();
    const b = make();
    try {
      for (let i = 0; i < 3; i++) {
        step(a, 0, [0, 1, 2], 20 + 5 * i);
        step(b, 0, [0, 1, 2], 20 + 5 * i);
      }
      const before = observe(a.cache, a.seqs);
      a.spies[1].throwAt = 0;
      // A step whose data would shift the scores a lot, had it been kept.
      failsWith(() => step(a, 0, [0, 1, 2], 99, 30), (e) => expect((e as Error).message).toBe('injected eviction failure'));
      expect(observe(a.cache, a.seqs)).toEqual(before);
      sameFuture(a, b, [{ layer: 0, batch: [0, 1, 2] }, { layer: 0, batch: [2, 1, 0] }, { layer: 0, batch: [1] }, { layer: 0, batch: [0, 1, 2] }], 4000);
    } finally {
      done(a, b);
    }
  });

  it('an eviction policy that names a slot past the end: KVSQ_STATE, nothing changed', () => {
    const make = () => world({ Ls: [12, 10], pages: 64, dec: () => new H2O({ heavy: 3, recent: 3 }) });
    const a = make();
    const b = make();
    try {
      step(a, 0, [0, 1], 31);
      step(b, 0, [0, 1], 31);
      const before = observe(a.cache, a.seqs);
      a.spies[1].badSlot = true;
      failsWith(() => step(a, 0, [0, 1], 32), code('KVSQ_STATE'));
      expect(observe(a.cache, a.seqs)).toEqual(before);
      sameFuture(a, b, [{ layer: 0, batch: [0, 1] }, { layer: 0, batch: [1, 0] }], 5000);
    } finally {
      done(a, b);
    }
  });

  it('Quest: a failure after append widened the page metadata restores it (later page selections equal the twin\'s)', () => {
    // Prompts of 41 tokens: 11 pages per head, Quest reads 2 per step. The
    // failing step appends a key 40x larger than the others into the last
    // page; kept, that page's kmin/kmax would change every later bound.
    const make = () => world({ Ls: [41, 38], pages: 128, dec: () => new Quest({ budget: 2 * P, denseLayers: 0 }) });
    const a = make();
    const b = make();
    try {
      step(a, 0, [0, 1], 41);
      step(b, 0, [0, 1], 41);
      expect(a.cache.lastSelection).not.toBeNull();
      const before = observe(a.cache, a.seqs);
      a.spies[1].throwAt = 0;
      failsWith(() => step(a, 0, [0, 1], 42, 40), (e) => expect((e as Error).message).toBe('injected eviction failure'));
      expect(observe(a.cache, a.seqs)).toEqual(before);
      sameFuture(a, b, [{ layer: 0, batch: [0, 1] }, { layer: 0, batch: [1] }, { layer: 0, batch: [0, 1] }, { layer: 0, batch: [0] }], 6000);
    } finally {
      done(a, b);
    }
  });

  it('a mixed batch (H2O, StreamingLLM, none) failing in the last sequence\'s policy: all three restored', () => {
    const decs = [() => new H2O({ heavy: 3, recent: 2 }), () => new StreamingLLM({ budget: 6, sinks: 1 }), () => new H2O({ heavy: 2, recent: 2, gqa: 'max' })];
    const make = () => {
      const w = world({ Ls: [11, 9, 13], pages: 64, dec: () => null });
      // Re-create the sequences with per-sequence policies (world() gives all the same one).
      for (const s of w.seqs) s.remove();
      w.seqs = decs.map((d, i) => {
        const spy = new Spy(d());
        w.spies.push(spy);
        const s = w.cache.addSequence({ decode: spy });
        const L = [11, 9, 13][i];
        s.prefill(0, rt(300 + i, [Hq, L, D]), rt(350 + i, [Hkv, L, D]), rt(370 + i, [Hkv, L, D]));
        return s;
      });
      return w;
    };
    const a = make();
    const b = make();
    try {
      for (let i = 0; i < 2; i++) {
        step(a, 0, [0, 1, 2], 500 + 7 * i);
        step(b, 0, [0, 1, 2], 500 + 7 * i);
      }
      const before = observe(a.cache, a.seqs);
      a.spies[2].throwAt = 0;
      failsWith(() => step(a, 0, [0, 1, 2], 600, 25), (e) => expect((e as Error).message).toBe('injected eviction failure'));
      expect(observe(a.cache, a.seqs)).toEqual(before);
      sameFuture(a, b, [{ layer: 0, batch: [0, 1, 2] }, { layer: 0, batch: [2, 0] }, { layer: 0, batch: [0, 1, 2] }], 7000);
    } finally {
      done(a, b);
    }
  });
});

// ---------------------------------------------------------------- prefill

describe('prefill failing after the policy ran leaves the cache as it was', () => {
  const L = 20;
  const cases: [string, BadPrefill['how'], string][] = [
    ['unsorted positions', 'unsorted', 'KVSQ_STATE'],
    ['a position past the prompt', 'outOfRange', 'KVSQ_STATE'],
    ['one head too few', 'wrongHeads', 'KVSQ_STATE'],
    ['initial scores of the wrong shape (the gather kernel refuses them, pages already taken)', 'badScores', '*'],
    ['k disposed by the policy (the gather kernel refuses it, pages already taken)', 'disposeK', 'KVSQ_DISPOSED'],
  ];
  it.each(cases)('policy returns %s: the error, pages given back, nothing changed; a retry equals the twin', (_name, how, c) => {
    const cache = new PagedKVCache({ layers: 2, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64, dtype: 'f32' });
    const twin = new PagedKVCache({ layers: 2, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64, dtype: 'f32' });
    try {
      const bad = new BadPrefill(how);
      const decode = () => new Spy(new H2O({ heavy: 4, recent: 4 }));
      const other = cache.addSequence({ prefill: new SnapKV({ budget: 10, window: 2 }), decode: decode() });
      other.prefill(0, rt(1, [Hq, L, D]), rt(2, [Hkv, L, D]), rt(3, [Hkv, L, D]));
      const s = cache.addSequence({ prefill: [new SnapKV({ budget: 8, window: 2, kernel: 1 }), bad], decode: decode() });
      s.prefill(0, rt(4, [Hq, L, D]), rt(5, [Hkv, L, D]), rt(6, [Hkv, L, D]));
      const before = observe(cache, [other, s]);
      const used = cache.stats().pages.used;
      const k = rt(8, [Hkv, L, D]);
      failsWith(() => s.prefill(1, rt(7, [Hq, L, D]), k, rt(9, [Hkv, L, D])), c === '*' ? (e) => expect(e).toBeInstanceOf(KvsqError) : code(c));
      expect(bad.calls).toBe(1);
      if (bad.lastScores) expect(bad.lastScores.disposed).toBe(true); // the cache disposed the policy's scores
      expect(cache.stats().pages.used).toBe(used);
      expect(observe(cache, [other, s])).toEqual(before);

      // The twin: the same sequences with a policy that behaves.
      const tOther = twin.addSequence({ prefill: new SnapKV({ budget: 10, window: 2 }), decode: decode() });
      tOther.prefill(0, rt(1, [Hq, L, D]), rt(2, [Hkv, L, D]), rt(3, [Hkv, L, D]));
      const ts = twin.addSequence({ prefill: [new SnapKV({ budget: 8, window: 2, kernel: 1 }), new BadPrefill('ok')], decode: decode() });
      ts.prefill(0, rt(4, [Hq, L, D]), rt(5, [Hkv, L, D]), rt(6, [Hkv, L, D]));
      // Retry on the failed cache with a behaving policy at that layer is not
      // possible (policies are fixed per sequence), so compare the layer that
      // did not fail under the same decode steps.
      const wa: World = { cache, seqs: [other, s], spies: [] };
      const wb: World = { cache: twin, seqs: [tOther, ts], spies: [] };
      sameFuture(wa, wb, [{ layer: 0, batch: [0, 1] }, { layer: 0, batch: [1, 0] }, { layer: 0, batch: [1] }], 8000);
    } finally {
      cache.dispose();
      twin.dispose();
    }
  });

  it('a policy that writes per-sequence state and then throws: the state is not committed', () => {
    const cache = new PagedKVCache({ layers: 3, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64 });
    try {
      const chunk = new ChunkKV({ budget: 10, window: 2, chunk: 3, reuse: 3 });
      const s = cache.addSequence({ prefill: [chunk, new BadPrefill('stateThenThrow', chunk), chunk] });
      s.prefill(0, rt(1, [Hq, L, D]), rt(2, [Hkv, L, D]), rt(3, [Hkv, L, D]));
      const before = observe(cache, [s]);
      failsWith(() => s.prefill(1, rt(4, [Hq, L, D]), rt(5, [Hkv, L, D]), rt(6, [Hkv, L, D])), (e) => expect((e as Error).message).toBe('injected prefill policy failure'));
      expect(s.state.has('bad')).toBe(false);
      expect(observe(cache, [s])).toEqual(before);
      // Layer 2 still reuses layer 0's chunks (the state survived the failure intact).
      const k2 = s.prefill(2, rt(7, [Hq, L, D]), rt(8, [Hkv, L, D]), rt(9, [Hkv, L, D]));
      expect(k2.map((x) => Array.from(x))).toEqual(s.kept(0).map((x) => Array.from(x)));
    } finally {
      cache.dispose();
    }
  });

  it('a wrong-dtype k (i32) is refused before the policy runs', () => {
    const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64 });
    try {
      const bad = new BadPrefill('ok');
      const s = cache.addSequence({ prefill: bad });
      const kI = Tensor.from(new Int32Array(Hkv * L * D), [Hkv, L, D]);
      temps.push(kI);
      const before = observe(cache, [s]);
      failsWith(() => s.prefill(0, rt(1, [Hq, L, D]), kI, rt(2, [Hkv, L, D])), code('KVSQ_DTYPE'));
      expect(bad.calls).toBe(0);
      expect(observe(cache, [s])).toEqual(before);
      expect(s.promptLength).toBe(-1);
    } finally {
      cache.dispose();
    }
  });

  it('pool exhausted at layer 1 after layer 0 succeeded (ChunkKV index reuse): nothing changed; after freeing pages the retry equals the twin', () => {
    const mk = (pages: number) => new PagedKVCache({ layers: 2, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages });
    const pre = () => new ChunkKV({ budget: 10, window: 2, chunk: 3, reuse: 2 });
    // Layer 0 keeps 2 chunks of 3 plus the window of 2 = 8 tokens per head
    // (2 pages each): 4 pages. A filler takes 8 more; 2 are left, layer 1 needs 4.
    const cache = mk(4 + 8 + 2);
    const twin = mk(64);
    try {
      const s = cache.addSequence({ prefill: pre() });
      s.prefill(0, rt(1, [Hq, L, D]), rt(2, [Hkv, L, D]), rt(3, [Hkv, L, D]));
      expect(cache.stats().pages.used).toBe(4);
      const filler = cache.addSequence();
      filler.prefill(0, rt(10, [Hq, 16, D]), rt(11, [Hkv, 16, D]), rt(12, [Hkv, 16, D])); // 8 pages
      const before = observe(cache, [s, filler]);
      failsWith(() => s.prefill(1, rt(4, [Hq, L, D]), rt(5, [Hkv, L, D]), rt(6, [Hkv, L, D])), code('KVSQ_OOM'));
      expect(observe(cache, [s, filler])).toEqual(before);
      filler.remove();
      const got = s.prefill(1, rt(4, [Hq, L, D]), rt(5, [Hkv, L, D]), rt(6, [Hkv, L, D]));
      const ts = twin.addSequence({ prefill: pre() });
      ts.prefill(0, rt(1, [Hq, L, D]), rt(2, [Hkv, L, D]), rt(3, [Hkv, L, D]));
      const want = ts.prefill(1, rt(4, [Hq, L, D]), rt(5, [Hkv, L, D]), rt(6, [Hkv, L, D]));
      expect(got.map((x) => Array.from(x))).toEqual(want.map((x) => Array.from(x)));
      expect(keptOf(cache, [s])).toEqual(keptOf(twin, [ts]));
      sameFuture({ cache, seqs: [s], spies: [] }, { cache: twin, seqs: [ts], spies: [] }, [{ layer: 0, batch: [0] }, { layer: 1, batch: [0] }], 9000);
    } finally {
      cache.dispose();
      twin.dispose();
    }
  });
});
