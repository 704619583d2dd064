/**
 * Recompress (periodic decode-time re-compression, lib/policies/recompress.ts).
 *
 * The test keeps its own copy of every K/V row and decode query (rounded
 * through the cache dtype), so after a trigger step it can check the held set
 * two ways: (1) the same scorer class called directly on tensors the test
 * builds from its own rows (exact: same inputs, same kernels), and (2) the
 * float64 SnapKV reference of test/ref/prefill-ref.ts (compareKept: near-ties
 * excused). Plus: kept ⊆ previously held, count == the scorer's budget, the
 * old pages are freed, and attention after compaction equals float64
 * attention over the kept tokens.
 *
 * Tolerances: attention over <= ~60 tokens in f32 vs f64: 1e-4 * max(1, |o|)
 * (same argument as test/decode.test.ts).
 */
import { H2O, KvsqError, ops, PagedKVCache, PrefillContext, PrefillDecision, PrefillPolicy, Recompress, Sequence, SnapKV, StreamingLLM, Tensor } from '../lib';
import { makeMethod } from '../lib/methods';
import * as R from './ref/prefill-ref';

const SEED = process.env.KVSQ_SEED ? Number(process.env.KVSQ_SEED) : Math.floor(Math.random() * 2 ** 31);
let rngState = SEED >>> 0;
function rnd(): number {
  rngState = (rngState + 0x6d2b79f5) >>> 0;
  let t = rngState;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
function randArray(n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rnd() * 2 - 1) * (rnd() < 0.1 ? 2.5 : 1);
  return a;
}
const why = `(KVSQ_SEED=${SEED})`;

function expectCode(fn: () => unknown, code: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(KvsqError);
  expect((err as KvsqError).code).toBe(code);
}

type FDType = 'f32' | 'f16';
const Hq = 4;
const Hkv = 2;
const g = Hq / Hkv;
const D = 16;
const L = 40;
const P = 8;

/** The test's own record of one sequence at layer 0: rows by position, queries by step. */
class Model {
  k: Float32Array[][] = []; // [pos][head] D values (rounded)
  v: Float32Array[][] = [];
  queries: Float32Array[] = []; // per step, [Hq * D] (rounded)
  constructor(readonly dtype: FDType) {}
  prefillTensors(): { q: Tensor; k: Tensor; v: Tensor } {
    const q = R.rounded(randArray(Hq * L * D), this.dtype);
    const k = R.rounded(randArray(Hkv * L * D), this.dtype);
    const v = R.rounded(randArray(Hkv * L * D), this.dtype);
    for (let t = 0; t < L; t++) {
      this.k.push(Array.from({ length: Hkv }, (_, j) => k.slice((j * L + t) * D, (j * L + t + 1) * D)));
      this.v.push(Array.from({ length: Hkv }, (_, j) => v.slice((j * L + t) * D, (j * L + t + 1) * D)));
    }
    const o = { dtype: this.dtype };
    return { q: Tensor.from(q, [Hq, L, D], o), k: Tensor.from(k, [Hkv, L, D], o), v: Tensor.from(v, [Hkv, L, D], o) };
  }
  stepTensors(): { q: Tensor; k: Tensor; v: Tensor } {
    const q = R.rounded(randArray(Hq * D), this.dtype);
    const k = R.rounded(randArray(Hkv * D), this.dtype);
    const v = R.rounded(randArray(Hkv * D), this.dtype);
    this.queries.push(q);
    this.k.push(Array.from({ length: Hkv }, (_, j) => k.slice(j * D, (j + 1) * D)));
    this.v.push(Array.from({ length: Hkv }, (_, j) => v.slice(j * D, (j + 1) * D)));
    const o = { dtype: this.dtype };
    return { q: Tensor.from(q, [1, Hq, D], o), k: Tensor.from(k, [1, Hkv, D], o), v: Tensor.from(v, [1, Hkv, D], o) };
  }
  /** ctx.q rows: the last `w` step queries of the query heads of `heads`, [hq, w, D] flat. */
  windowQ(heads: number[], w: number): Float32Array {
    const rows = this.queries.slice(-w);
    const out = new Float32Array(heads.length * g * rows.length * D);
    heads.forEach((j, jj) => {
      for (let x = 0; x < g; x++)
        rows.forEach((r, i) => out.set(r.subarray((j * g + x) * D, (j * g + x + 1) * D), ((jj * g + x) * rows.length + i) * D));
    });
    return out;
  }
  /** K rows of `positions` for each head, [heads, n, D] flat. */
  keys(heads: number[], positions: Int32Array[]): Float32Array {
    const n = positions[0].length;
    const out = new Float32Array(heads.length * n * D);
    heads.forEach((j, jj) => positions[jj].forEach((p, i) => out.set(this.k[p][j], (jj * n + i) * D)));
    return out;
  }
}

function step(cache: PagedKVCache, seqs: Sequence[], models: Model[]): void {
  const ts = models.map((m) => m.stepTensors());
  const cat = (x: 'q' | 'k' | 'v', H: number) => {
    const a = new Float32Array(seqs.length * H * D);
    ts.forEach((t, b) => a.set(t[x].toFloat32(), b * H * D));
    return Tensor.from(a, [seqs.length, H, D], { dtype: models[0].dtype });
  };
  const [q, k, v] = [cat('q', Hq), cat('k', Hkv), cat('v', Hkv)];
  try {
    cache.decode(0, seqs, q, k, v).dispose();
  } finally {
    for (const t of [q, k, v]) t.dispose();
    for (const t of ts) for (const x of [t.q, t.k, t.v]) x.dispose();
  }
}

/** What the scorer keeps of `held` (positions per head), computed by calling it directly on the test's own rows. */
function scorerKeeps(scorer: PrefillPolicy, model: Model, held: Int32Array[], w: number, heads: number[], scale: number): Int32Array[] {
  const n = held[heads[0]].length;
  const o = { dtype: model.dtype };
  const q = Tensor.from(model.windowQ(heads, w), [heads.length * g, Math.min(w, model.queries.length), D], o);
  const k = Tensor.from(model.keys(heads, heads.map((j) => held[j])), [heads.length, n, D], o);
  try {
    const ctx: PrefillContext = { layer: 0, numLayers: 1, q, k, seqLen: n, numQHeads: heads.length * g, numKvHeads: heads.length, headDim: D, state: new Map(), scale };
    const d = scorer.select(ctx);
    d.scores?.dispose();
    return heads.map((j, jj) => (d.kept ? Int32Array.from(d.kept[jj], (i) => held[j][i]) : held[j]));
  } finally {
    q.dispose();
    k.dispose();
  }
}

/** Float64 attention of q [Hq, D] over the model's rows at `kept` per head. */
function attendRef(model: Model, kept: Int32Array[], q: Float32Array, scale: number): Float64Array {
  const out = new Float64Array(Hq * D);
  for (let h = 0; h < Hq; h++) {
    const j = Math.floor(h / g);
    const z = Array.from(kept[j], (p) => {
      let s = 0;
      for (let x = 0; x < D; x++) s += q[h * D + x] * model.k[p][j][x];
      return s * scale;
    });
    const m = Math.max(...z);
    const e = z.map((x) => Math.exp(x - m));
    const sum = e.reduce((a, b) => a + b, 0);
    kept[j].forEach((p, i) => {
      for (let x = 0; x < D; x++) out[h * D + x] += (e[i] / sum) * model.v[p][j][x];
    });
  }
  return out;
}

function checkAttention(cache: PagedKVCache, seq: Sequence, model: Model): void {
  const qa = R.rounded(randArray(Hq * D), model.dtype);
  const q = Tensor.from(qa, [1, Hq, D], { dtype: model.dtype });
  const o = cache.attend(0, [seq], q);
  const got = o.toFloat32();
  q.dispose();
  o.dispose();
  const ref = attendRef(model, seq.kept(0), qa, cache.scale);
  let worst = 0;
  for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(got[i] - ref[i]) / Math.max(1, Math.abs(ref[i])));
  const tol = model.dtype === 'f32' ? 1e-4 : 2e-4 + 2 ** -11;
  if (worst > tol) throw new Error(`attention after compaction off by ${worst} ${why}`);
}

const arr = (x: Int32Array[]) => x.map((a) => Array.from(a));
const prefillAll = (cache: PagedKVCache, seq: Sequence, model: Model) => {
  const t = model.prefillTensors();
  seq.prefill(0, t.q, t.k, t.v);
  for (const x of [t.q, t.k, t.v]) x.dispose();
};
const snapOpts = { budget: 32, window: 4, kernel: 3 };

describe.each(['f32', 'f16'] as const)('Recompress with a SnapKV scorer (%s)', (dtype) => {
  it('re-compresses every interval steps to what the scorer keeps; nothing changes between triggers', () => {
    const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64, dtype });
    const model = new Model(dtype);
    const pol = new Recompress({ interval: 8, target: 48, window: 8, scorer: new SnapKV(snapOpts) });
    const seq = cache.addSequence({ decode: pol });
    try {
      prefillAll(cache, seq, model);
      let triggers = 0;
      for (let s = 1; s <= 48; s++) {
        const before = seq.kept(0);
        const held = before.map((x) => Int32Array.from([...x, L + s - 1]));
        const usedBefore = cache.stats().pages.used;
        step(cache, [seq], [model]);
        const after = seq.kept(0);
        const trigger = s % 8 === 0 && held[0].length > 48;
        if (!trigger) {
          expect(arr(after)).toEqual(arr(held)); // no eviction without an inner policy
          continue;
        }
        triggers++;
        // (1) the same scorer on the test's own tensors.
        expect(arr(after)).toEqual(arr(scorerKeeps(new SnapKV(snapOpts), model, held, 8, [0, 1], cache.scale)));
        // (2) the float64 reference (over the held tokens as a prompt, relabelled).
        const n = held[0].length;
        const qPad = new Float32Array(Hq * n * D);
        const wq = model.windowQ([0, 1], 8);
        for (let h = 0; h < Hq; h++) qPad.set(wq.subarray(h * 8 * D, (h + 1) * 8 * D), (h * n + n - 8) * D);
        const ref = R.snapkvRef(qPad, model.keys([0, 1], held), { Hq, Hkv, L: n, D }, { ...snapOpts, scale: cache.scale } as R.SnapRefOptions);
        const relabelled = after.map((a, j) => Int32Array.from(a, (p) => held[j].indexOf(p)));
        const cmp = R.compareKept(relabelled, ref, 1e-4);
        expect(cmp.problems).toEqual([]);
        for (let j = 0; j < Hkv; j++) {
          expect(after[j].length).toBe(32); // the scorer's budget
          for (const p of after[j]) expect(held[j].includes(p)).toBe(true);
          expect(after[j].includes(L + s - 1)).toBe(true); // the window tail survives
        }
        // Old pages freed: 32 tokens per head in 4 pages.
        expect(cache.stats().pages.used).toBe(Hkv * 4);
        expect(usedBefore).toBeGreaterThan(Hkv * 4);
        expect(seq.slots(0).map((x) => Array.from(x))).toEqual(arr(after)); // compacted in position order, no hole
        checkAttention(cache, seq, model);
      }
      expect(triggers).toBe(2); // steps 16 and 40
      checkAttention(cache, seq, model);
      expect(seq.length(0)).toBe(L + 48);
    } finally {
      cache.dispose();
    }
  });
});

describe('Recompress composition and shapes', () => {
  it('with an inner H2O: H2O evicts every step, the scorer re-compresses what H2O holds, scores carry over', () => {
    const mk = () => new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64, dtype: 'f32' });
    const a = mk();
    const b = mk();
    const ma = new Model('f32');
    const h2o = () => new H2O({ heavy: 30, recent: 20 });
    const pol = new Recompress({ interval: 8, target: 40, window: 8, scorer: new SnapKV({ budget: 24, window: 4, kernel: 3 }), decode: h2o() });
    expect(pol.accumulate).toBe('mean');
    expect(pol.wantsPrefillScores).toBe(true);
    const sa = a.addSequence({ decode: pol });
    const sb = b.addSequence({ decode: h2o() }); // the twin: plain H2O, equal until the first trigger
    try {
      const t = ma.prefillTensors();
      sa.prefill(0, t.q, t.k, t.v);
      sb.prefill(0, t.q, t.k, t.v);
      for (const x of [t.q, t.k, t.v]) x.dispose();
      for (let s = 1; s <= 8; s++) {
        const ts = ma.stepTensors();
        a.decode(0, [sa], ts.q, ts.k, ts.v).dispose();
        b.decode(0, [sb], ts.q, ts.k, ts.v).dispose();
        for (const x of [ts.q, ts.k, ts.v]) x.dispose();
      }
      // Step 8: H2O held 48 (> 40) in the twin; Recompress scored exactly that set.
      const held = sb.kept(0);
      expect(held[0].length).toBe(48);
      expect(arr(sa.kept(0))).toEqual(arr(scorerKeeps(new SnapKV({ budget: 24, window: 4, kernel: 3 }), ma, held, 8, [0, 1], a.scale)));
      expect(sa.kept(0).every((x) => x.length === 24)).toBe(true);
      // The kept tokens' accumulated H2O scores are copied bit for bit (the twin holds the same scores).
      const scores = (c: PagedKVCache, s: Sequence) => {
        const t = c.pageTables([s], 0);
        const r = ops.readScores({ scorePool: c.pool.scores!, pageIndptr: t.indptr, pageIds: t.ids, kvLen: t.len });
        const f = r.toFloat32();
        for (const x of [t.indptr, t.ids, t.len, r]) x.dispose();
        const out: Map<number, number>[] = [];
        let o = 0;
        s.slots(0).forEach((sl) => {
          const m = new Map<number, number>();
          sl.forEach((p, i) => p >= 0 && m.set(p, f[o + i]));
          o += sl.length;
          out.push(m);
        });
        return out;
      };
      const sA = scores(a, sa);
      const sB = scores(b, sb);
      sA.forEach((m, j) => m.forEach((v, p) => expect(v).toBe(sB[j].get(p))));
      expect([...sA[0].values()].some((v) => v > 0)).toBe(true);
      checkAttention(a, sa, ma);
      // Afterwards: H2O keeps evicting (cap 50) and re-compression fires again at step 32 (held 48 > 40).
      for (let s = 9; s <= 40; s++) {
        const prev = sa.kept(0);
        step(a, [sa], [ma]);
        const now = sa.kept(0);
        for (let j = 0; j < Hkv; j++) {
          for (const p of now[j]) expect(p === L + s - 1 || prev[j].includes(p)).toBe(true);
          expect(now[j].length).toBe(s === 32 ? 24 : Math.min(50, 24 + (s <= 32 ? s - 8 : s - 32)));
        }
      }
      checkAttention(a, sa, ma);
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('KV heads holding different counts: the scorer runs per head over target', () => {
    // A prefill policy keeping the whole prompt on head 0 and its last 30 positions on head 1.
    const uneven: PrefillPolicy = {
      name: 'uneven',
      params: {},
      select: (ctx: PrefillContext): PrefillDecision => ({
        kept: [Int32Array.from({ length: ctx.seqLen }, (_, i) => i), Int32Array.from({ length: 30 }, (_, i) => ctx.seqLen - 30 + i)],
      }),
    };
    const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64, dtype: 'f32' });
    const model = new Model('f32');
    const seq = cache.addSequence({ prefill: uneven, decode: new Recompress({ interval: 8, target: 44, window: 8, scorer: new SnapKV(snapOpts) }) });
    try {
      prefillAll(cache, seq, model);
      for (let s = 1; s <= 7; s++) step(cache, [seq], [model]);
      const held = seq.kept(0).map((x) => Int32Array.from([...x, L + 7]));
      step(cache, [seq], [model]);
      const after = seq.kept(0);
      expect(held.map((x) => x.length)).toEqual([48, 38]);
      // Head 0 (48 > 44): SnapKV on head 0 alone (its query group); head 1 (38): untouched.
      expect(Array.from(after[0])).toEqual(Array.from(scorerKeeps(new SnapKV(snapOpts), model, held, 8, [0], cache.scale)[0]));
      expect(after[0].length).toBe(32);
      expect(Array.from(after[1])).toEqual(Array.from(held[1]));
      expect(cache.stats().pages.used).toBe(4 + 5);
      checkAttention(cache, seq, model);
    } finally {
      cache.dispose();
    }
  });

  it('StreamingLLM as the scorer keeps sinks + recent of the held tokens; batch with a plain sequence', () => {
    const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64, dtype: 'f32' });
    const ma = new Model('f32');
    const mb = new Model('f32');
    const sa = cache.addSequence({ decode: new Recompress({ interval: 4, target: 42, scorer: new StreamingLLM({ budget: 20, sinks: 2 }) }) });
    const sb = cache.addSequence();
    try {
      prefillAll(cache, sa, ma);
      prefillAll(cache, sb, mb);
      for (let s = 1; s <= 4; s++) step(cache, [sa, sb], [ma, mb]);
      const want = [0, 1, ...Array.from({ length: 18 }, (_, i) => L + 4 - 18 + i)];
      expect(arr(sa.kept(0))).toEqual([want, want]);
      expect(sb.kept(0)[0].length).toBe(L + 4);
      checkAttention(cache, sa, ma);
      checkAttention(cache, sb, mb);
    } finally {
      cache.dispose();
    }
  });
});

describe('Recompress failure atomicity', () => {
  function snapshot(cache: PagedKVCache, seqs: Sequence[]): unknown {
    return { stats: cache.stats(), seqs: seqs.map((s) => ({ stats: s.stats(), kept: arr(s.kept(0)), slots: arr(s.slots(0)), length: s.length(0) })) };
  }

  it('KVSQ_OOM during compaction leaves the cache unchanged (queries ring included: same future as a twin)', () => {
    // At step 16 each head holds 56 tokens in 7 pages (14 in all); compaction needs 8 fresh pages
    // while the old 14 are still held: 22 pages, 2 of them taken by a ballast sequence, leave 6.
    const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 22, dtype: 'f32' });
    const twin = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64, dtype: 'f32' });
    const mk = () => new Recompress({ interval: 8, target: 48, window: 8, scorer: new SnapKV(snapOpts) });
    const model = new Model('f32');
    const seq = cache.addSequence({ decode: mk() });
    const tw = twin.addSequence({ decode: mk() });
    const ballast = cache.addSequence();
    try {
      const t = model.prefillTensors();
      seq.prefill(0, t.q, t.k, t.v);
      tw.prefill(0, t.q, t.k, t.v);
      for (const x of [t.q, t.k, t.v]) x.dispose();
      const run = (s: Sequence, c: PagedKVCache, ts: { q: Tensor; k: Tensor; v: Tensor }) => c.decode(0, [s], ts.q, ts.k, ts.v).dispose();
      const inputs = Array.from({ length: 16 }, () => model.stepTensors());
      for (let s = 0; s < 15; s++) {
        run(seq, cache, inputs[s]);
        run(tw, twin, inputs[s]);
      }
      const bt = { q: Tensor.from(randArray(Hq * 8 * D), [Hq, 8, D]), k: Tensor.from(randArray(Hkv * 8 * D), [Hkv, 8, D]), v: Tensor.from(randArray(Hkv * 8 * D), [Hkv, 8, D]) };
      ballast.prefill(0, bt.q, bt.k, bt.v);
      for (const x of [bt.q, bt.k, bt.v]) x.dispose();
      expect(cache.stats().pages.free).toBe(22 - 14 - 2);
      const before = snapshot(cache, [seq, ballast]);
      expectCode(() => run(seq, cache, inputs[15]), 'KVSQ_OOM');
      expect(snapshot(cache, [seq, ballast])).toEqual(before);
      // With the ballast gone the same step succeeds and matches the twin that never failed.
      ballast.remove();
      run(seq, cache, inputs[15]);
      run(tw, twin, inputs[15]);
      expect(arr(seq.kept(0))).toEqual(arr(tw.kept(0)));
      expect(seq.kept(0)[0].length).toBe(32);
      checkAttention(cache, seq, model);
      for (const x of inputs) for (const y of [x.q, x.k, x.v]) y.dispose();
    } finally {
      cache.dispose();
      twin.dispose();
    }
  });

  it('a failure midway (the pool-to-pool copy, or the scorer) gives the fresh pages back and changes nothing', () => {
    let failScorer = false;
    const inner = new SnapKV(snapOpts);
    const scorer: PrefillPolicy = {
      name: 'flaky',
      params: {},
      select: (ctx) => {
        if (failScorer) throw new Error('injected scorer failure');
        return inner.select(ctx);
      },
    };
    const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: 64, dtype: 'f32' });
    const model = new Model('f32');
    const seq = cache.addSequence({ decode: new Recompress({ interval: 8, target: 48, window: 8, scorer, decode: new H2O({ heavy: 40, recent: 10 }) }) });
    try {
      prefillAll(cache, seq, model);
      const inputs = Array.from({ length: 16 }, () => model.stepTensors());
      const run = (i: number) => cache.decode(0, [seq], inputs[i].q, inputs[i].k, inputs[i].v).dispose();
      for (let s = 0; s < 15; s++) run(s);
      const before = snapshot(cache, [seq]);
      failScorer = true;
      expect(() => run(15)).toThrow('injected scorer failure');
      expect(snapshot(cache, [seq])).toEqual(before);
      failScorer = false;
      const real = ops.gather;
      const spy = jest.spyOn(ops, 'gather').mockImplementation((a) => {
        if (a.kPool === a.kSrc) throw new Error('injected copy failure');
        return real(a);
      });
      try {
        expect(() => run(15)).toThrow('injected copy failure');
      } finally {
        spy.mockRestore();
      }
      expect(snapshot(cache, [seq])).toEqual(before);
      run(15);
      expect(seq.kept(0)[0].length).toBe(32);
      expect(cache.stats().pages.used).toBe(Hkv * 4);
      checkAttention(cache, seq, model);
      for (const x of inputs) for (const y of [x.q, x.k, x.v]) y.dispose();
    } finally {
      cache.dispose();
    }
  });
});

describe('Recompress options', () => {
  const scorer = new SnapKV({ budget: 64, window: 8 });
  it('bad options: KVSQ_RANGE / KVSQ_ARG', () => {
    expectCode(() => new Recompress(undefined as never), 'KVSQ_ARG');
    expectCode(() => new Recompress(null as never), 'KVSQ_ARG');
    expectCode(() => new Recompress({ interval: 0, target: 8, scorer }), 'KVSQ_RANGE');
    expectCode(() => new Recompress({ interval: 1.5, target: 8, scorer }), 'KVSQ_RANGE');
    expectCode(() => new Recompress({ interval: 8, target: 0, scorer }), 'KVSQ_RANGE');
    expectCode(() => new Recompress({ interval: 8, target: '8' as never, scorer }), 'KVSQ_RANGE');
    expectCode(() => new Recompress({ interval: 8, target: 8, scorer, window: 0 }), 'KVSQ_RANGE');
    expectCode(() => new Recompress({ interval: 8, target: 8, scorer: undefined as never }), 'KVSQ_ARG');
    expectCode(() => new Recompress({ interval: 8, target: 8, scorer: new H2O() as never as PrefillPolicy }), 'KVSQ_ARG');
    expectCode(() => new Recompress({ interval: 8, target: 8, scorer, decode: {} as never }), 'KVSQ_ARG');
    const r = new Recompress({ interval: 8, target: 8, scorer });
    expectCode(() => new Recompress({ interval: 8, target: 8, scorer, decode: r }), 'KVSQ_ARG');
    // The scorer's window (8) needs 8 queries at the first trigger.
    expectCode(() => new Recompress({ interval: 4, target: 8, scorer }), 'KVSQ_RANGE');
    expectCode(() => new Recompress({ interval: 8, target: 8, scorer, window: 4 }), 'KVSQ_RANGE');
    expect(r.params).toEqual({ interval: 8, target: 8, window: 32, scorer: { method: 'snapkv', ...scorer.params } });
    expect(r.accumulate).toBe(null);
    expect(r.evict([{ length: 3, positions: new Int32Array(3), frozenSlots: 0, newest: 2, promptLength: 2 }], 0)).toEqual([-1]);
  });

  it('methods: --decode recompress wraps the method\'s own decode policy; bad options are KVSQ_RANGE', () => {
    const m = makeMethod('h2o', { decode: 'recompress', interval: 32, target: 64, scorer: 'snapkv' });
    expect(m.decode?.name).toBe('recompress');
    expect((m.decode as Recompress).inner?.name).toBe('h2o');
    expect((m.decode as Recompress).recompress.scorer.params).toMatchObject({ budget: 64 });
    expect((m.params.decode as Record<string, unknown>).method).toBe('recompress');
    expect(makeMethod('snapkv', { decode: 'recompress', interval: 32, target: 64 }).decode?.name).toBe('recompress');
    expectCode(() => makeMethod('snapkv', { decode: 'recompress', target: 64 }), 'KVSQ_RANGE');
    expectCode(() => makeMethod('snapkv', { decode: 'recompress', interval: 32, target: 64, scorer: 'quest' }), 'KVSQ_RANGE');
    expectCode(() => makeMethod('snapkv', { decode: 'recompress', interval: 16, target: 64 }), 'KVSQ_RANGE'); // window 32 > interval
  });
});
