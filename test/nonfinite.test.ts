/**
 * NaN and Inf in Q, K, V and scores: what each entry point does today,
 * enforced, on both kernel paths (AVX2 and portable, switched with
 * backend.forceSimd). The table is in docs/reliability.md.
 *
 * Contract (methods.md): NaN scores are an input error (KVSQ_NAN). The
 * standalone kernels propagate: a NaN/Inf in an input gives NaN outputs where
 * it takes part (the same on both paths), and never corrupts memory. The
 * cache refuses non-finite Q/K/V, and values that overflow its dtype, with
 * KVSQ_NAN before it changes anything.
 */
import { PagedKVCache, Sequence, Tensor, KvsqError, ops, backend, H2O, SnapKV, StreamingLLM, Quest } from '../lib';
import type { DecodePolicy, PrefillPolicy } from '../lib';

const SIMD_AVAILABLE = (() => {
  const info = backend.info() as unknown as { cpu?: { simd?: unknown }; simd?: unknown };
  const s = info.cpu?.simd ?? info.simd;
  return s !== undefined && s !== false && s !== 'none' && s !== 'scalar' && s !== 'portable';
})();
const MODES: [string, 0 | 1][] = SIMD_AVAILABLE ? [['avx2', 1], ['portable', 0]] : [['portable', 0]];
afterAll(() => backend.forceSimd(-1));

const temps: Tensor[] = [];
afterEach(() => {
  for (const t of temps.splice(0)) t.dispose();
});
const keep = <T extends Tensor>(t: T) => (temps.push(t), t);
const F = (a: ArrayLike<number>, shape: number[], dtype: 'f32' | 'f16' | 'bf16' = 'f32') => keep(Tensor.from(Float32Array.from(a), shape, { dtype }));
const I = (a: number[]) => keep(Tensor.from(Int32Array.from(a), [a.length]));

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
function rnd(n: number, seed: number): Float32Array {
  const r = prng(seed);
  return Float32Array.from({ length: n }, () => 2 * r() - 1);
}
function codeOf(fn: () => unknown): string | null {
  try {
    fn();
    return null;
  } catch (e) {
    if (!(e instanceof KvsqError)) throw e;
    return e.code;
  }
}
const nans = (a: ArrayLike<number>) => Array.from(a).filter(Number.isNaN).length;

// ---------------------------------------------------------------- top-k: the contract

describe.each(MODES)('topk (%s): NaN scores are KVSQ_NAN, Inf are ordinary values', (_m, mode) => {
  beforeAll(() => backend.forceSimd(mode));
  it('NaN anywhere in the scanned range: KVSQ_NAN, whatever k (k = 0 and k >= length included)', () => {
    for (const n of [3, 40, 1000])
      for (const at of [0, n >> 1, n - 1])
        for (const k of [0, 1, 5, n]) {
          const a = rnd(n, n + at);
          a[at] = NaN;
          expect(codeOf(() => ops.topk(F(a, [n]), k))).toBe('KVSQ_NAN');
          expect(codeOf(() => ops.topk(F(a, [1, n]), I([k]), {}))).toBe('KVSQ_NAN');
        }
  });
  it('NaN outside a row\'s length is not scanned', () => {
    const r = ops.topk(F([1, 3, 2, NaN, NaN], [1, 5]), 2, { lengths: I([3]) });
    keep(r.indices);
    keep(r.counts);
    expect(Array.from(r.indices.toArray())).toEqual([1, 2]);
  });
  it('+Inf wins, -Inf loses, ties to the lower index', () => {
    const r = ops.topk(F([1, Infinity, -Infinity, 2, Infinity], [5]), 3);
    keep(r.indices);
    keep(r.counts);
    expect(Array.from(r.indices.toArray())).toEqual([1, 3, 4]);
  });
});

// ---------------------------------------------------------------- score helpers: propagation

describe.each(MODES)('pool1d and chunkScores (%s): NaN propagates', (_m, mode) => {
  beforeAll(() => backend.forceSimd(mode));
  it('pool1d max: the NaN position stays NaN (so a later topk says KVSQ_NAN); avg: every window holding it is NaN', () => {
    const x = F([1, NaN, 2, 3, 0, 5, 4], [1, 7]);
    const mx = keep(ops.pool1d(x, { kernel: 3 })).toFloat32();
    expect(Number.isNaN(mx[1])).toBe(true);
    expect(Array.from(mx.slice(3))).toEqual([3, 5, 5, 5]);
    const av = keep(ops.pool1d(x, { kernel: 3, mode: 'avg' })).toFloat32();
    expect([0, 1, 2].every((i) => Number.isNaN(av[i]))).toBe(true);
    expect(av[3]).toBeCloseTo(5 / 3, 6);
    expect(codeOf(() => ops.topk(keep(ops.pool1d(x, { kernel: 3 })), 2))).toBe('KVSQ_NAN');
  });
  it('pool1d max: +Inf spreads over its window', () => {
    const mx = keep(ops.pool1d(F([1, Infinity, 2, -Infinity, 0], [1, 5]), { kernel: 3 })).toFloat32();
    expect(Array.from(mx)).toEqual([Infinity, Infinity, Infinity, 2, 0]);
  });
  it('chunkScores: the chunk holding a NaN is NaN, the others exact', () => {
    const c = keep(ops.chunkScores(F([1, NaN, 2, 3], [1, 4]), { chunk: 2 })).toFloat32();
    expect(Number.isNaN(c[0])).toBe(true);
    expect(c[1]).toBe(5);
  });
});

// ---------------------------------------------------------------- decode attention

describe.each(MODES)('decodeAttention (%s)', (_m, mode) => {
  beforeAll(() => backend.forceSimd(mode));
  const D = 16;
  const P = 16;
  const g = 2;
  /** One list of n slots, two query heads; poison one element; returns o, lse and the scores added. */
  function run(n: number, what: 'q' | 'k' | 'v', val: number, dtype: 'f32' | 'f16' = 'f32') {
    const pages = Math.ceil(n / P);
    const q = rnd(g * D, 7);
    const k = rnd(pages * P * D, 9);
    const v = rnd(pages * P * D, 11);
    const at = n >> 1;
    if (what === 'q') q[1] = val; // query head 0 only
    if (what === 'k') k[at * D + 1] = val;
    if (what === 'v') v[at * D + 1] = val;
    const sp = keep(Tensor.zeros([pages, P]));
    const r = ops.decodeAttention({
      q: F(q, [1, g, D], dtype), kPool: F(k, [pages, P, D], dtype), vPool: F(v, [pages, P, D], dtype),
      pageIndptr: I([0, pages]), pageIds: I(Array.from({ length: pages }, (_, i) => i)), kvLen: I([n]),
      numKvHeads: 1, scorePool: sp, reduce: 'sum', lse: true,
    });
    keep(r.o);
    keep(r.lse!);
    return { o: r.o.toFloat32(), lse: r.lse!.toFloat32(), scores: sp.toFloat32().slice(0, n), at };
  }
  const sizes = [5, 40, 700, 1500]; // one block, several blocks, several flash-decoding splits

  it.each(sizes)('NaN in a key (n = %i): every head of the list gives NaN, lse = -Inf, no score added', (n) => {
    for (const dtype of ['f32', 'f16'] as const) {
      const r = run(n, 'k', NaN, dtype);
      expect(nans(r.o)).toBe(g * D);
      expect(Array.from(r.lse)).toEqual([-Infinity, -Infinity]);
      expect(r.scores.every((x) => x === 0)).toBe(true);
    }
  });
  it.each(sizes)('NaN in a value (n = %i): only that channel of o is NaN; lse and scores as without it', (n) => {
    const r = run(n, 'v', NaN);
    const clean = run(n, 'v', 0.5);
    expect(nans(r.o)).toBe(g); // channel 1 of both heads
    expect(Number.isNaN(r.o[1]) && Number.isNaN(r.o[D + 1])).toBe(true);
    expect(Array.from(r.lse)).toEqual(Array.from(clean.lse));
    expect(Array.from(r.scores)).toEqual(Array.from(clean.scores));
    expect(nans(r.scores)).toBe(0);
  });
  it.each(sizes)('NaN in q (n = %i): that head\'s o is all zeros and lse = -Inf (silent: see the report); the other head is exact; no score from it', (n) => {
    const r = run(n, 'q', NaN);
    const clean = run(n, 'q', 0.25);
    expect(Array.from(r.o.slice(0, D))).toEqual(new Array(D).fill(0));
    expect(r.lse[0]).toBe(-Infinity);
    expect(Array.from(r.o.slice(D))).toEqual(Array.from(clean.o.slice(D)));
    expect(r.lse[1]).toBe(clean.lse[1]);
    // Only head 1's probabilities were added (they sum to 1).
    expect(r.scores.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 4);
  });
  it.each(sizes)('+Inf and -Inf in a key (n = %i): a +Inf logit makes the head NaN (lse -Inf), a -Inf logit drops the slot', (n) => {
    const r = run(n, 'k', Infinity);
    // q[h][1] > 0 gives a +Inf logit, < 0 a -Inf logit: one head of each here.
    const q = rnd(g * D, 7);
    for (let h = 0; h < g; h++) {
      const row = r.o.slice(h * D, (h + 1) * D);
      if (q[h * D + 1] > 0) {
        expect(nans(row)).toBe(D);
        expect(r.lse[h]).toBe(-Infinity);
      } else {
        expect(nans(row)).toBe(0);
        expect(Number.isFinite(r.lse[h])).toBe(true);
      }
    }
    expect(nans(r.scores)).toBe(0);
    expect(r.scores[r.at]).toBe(0);
  });
  it('the score pool never receives a NaN or an Inf from a decode step', () => {
    for (const n of sizes)
      for (const [w, val] of [['q', NaN], ['q', Infinity], ['k', NaN], ['k', Infinity], ['k', -Infinity], ['v', NaN], ['v', Infinity]] as const) {
        const r = run(n, w, val);
        expect(r.scores.every(Number.isFinite)).toBe(true);
      }
  });
});

// ---------------------------------------------------------------- window scores (path-dependent today)

describe.each(MODES)('windowScores (%s)', (m, mode) => {
  beforeAll(() => backend.forceSimd(mode));
  const D = 8;
  function ws(L: number, what: 'q' | 'k', val: number, w = L) {
    const q = rnd(2 * L * D, 3);
    const k = rnd(L * D, 5);
    const at = L >> 1;
    if (what === 'q') q[at * D + 1] = val;
    else k[at * D + 1] = val;
    return { s: keep(ops.windowScores(F(q, [2, L, D]), F(k, [1, L, D]), { window: w })).toFloat32(), at };
  }
  it('finite output or NaN, never an exception; NaN in k never yields a finite non-zero score at its own column', () => {
    for (const L of [5, 40, 300])
      for (const [w, val] of [['q', NaN], ['k', NaN], ['k', Infinity], ['q', Infinity]] as const) {
        const { s, at } = ws(L, w, val);
        expect(s.length).toBe(L);
        if (w === 'k') expect(s[at] === 0 || Number.isNaN(s[at])).toBe(true);
      }
  });
  it(`${m} path: a NaN in k makes every score NaN (propagation)`, () => {
    for (const L of [5, 40, 300]) expect(nans(ws(L, 'k', NaN).s)).toBe(L);
  });
});

// ---------------------------------------------------------------- Quest metadata

describe.each(MODES)('append / pageMeta with NaN keys (%s)', (_m, mode) => {
  beforeAll(() => backend.forceSimd(mode));
  const D = 4;
  const P = 4;
  it('a NaN key that starts a page sets that channel\'s kmin/kmax to NaN; a NaN key later in the page never widens them', () => {
    for (const first of [true, false]) {
      const kp = keep(Tensor.zeros([1, P, D]));
      const vp = keep(Tensor.zeros([1, P, D]));
      const meta = keep(Tensor.zeros([1, 2, D]));
      const rows = first ? [NaN, 1, 2, 3, 5, 6, 7, 8] : [5, 6, 7, 8, NaN, 1, 2, 3];
      ops.append({ kNew: F(rows, [2, D]), vNew: F(new Array(8).fill(0), [2, D]), dstSlot: I([0, 1]), kPool: kp, vPool: vp, metaPool: meta });
      const m = Array.from(meta.toFloat32());
      if (first) expect(m.map((x) => (Number.isNaN(x) ? 'NaN' : x))).toEqual(['NaN', 1, 2, 3, 'NaN', 6, 7, 8]);
      else expect(m).toEqual([5, 1, 2, 3, 5, 6, 7, 8]);
      const meta2 = keep(Tensor.zeros([1, 2, D]));
      ops.pageMeta({ kPool: kp, metaPool: meta2, pageIds: I([0]), fill: I([2]) });
      expect(Array.from(meta2.toFloat32()).map((x) => (Number.isNaN(x) ? 'NaN' : x))).toEqual(m.map((x) => (Number.isNaN(x) ? 'NaN' : x)));
    }
  });
});

// ---------------------------------------------------------------- Quest bounds and selection

describe.each(MODES)('questBounds / questSelect (%s)', (_m, mode) => {
  beforeAll(() => backend.forceSimd(mode));
  // Two lists of 3 pages of 4 tokens, D 4, one query head each (g 1).
  const args = (q: number[], meta: Float32Array) => ({
    q: F(q, [1, 2, 4]),
    metaPool: F(meta, [6, 2, 4]),
    pageIndptr: I([0, 3, 6]),
    pageIds: I([0, 1, 2, 3, 4, 5]),
    kvLen: I([10, 12]),
    numKvHeads: 2,
    pageSize: 4,
    budgetPages: 2,
  });
  it('finite inputs whose bound overflows both ways (inf - inf): +Inf, not NaN, and the page is chosen', () => {
    // q . k is +Inf on dim 0 and -Inf on dim 1 for physical pages 1 and 3
    // (list 0 page 1, list 1 page 0); every other bound is 0.
    const q = [1e30, -1e30, 0, 0, 1e30, -1e30, 0, 0];
    const meta = new Float32Array(6 * 2 * 4);
    for (const page of [1, 3]) meta.set([1e30, 1e30, 0, 0, 1e30, 1e30, 0, 0], page * 8);
    const a = args(q, meta);
    expect(Array.from(keep(ops.questBounds(a)).toFloat32())).toEqual([0, Infinity, Infinity, 0]);
    for (const share of [false, true]) {
      const r = ops.questSelect({ ...a, share });
      expect(Array.from(keep(r.selIndptr).toArray())).toEqual([0, 2, 4]);
      expect(Array.from(keep(r.selPages).toArray())).toEqual([1, 2, 0, 2]);
    }
  });
  it('questBounds: a NaN in q[h] makes that head\'s bounds NaN (propagation); questSelect: KVSQ_NAN, also when every list is dense', () => {
    const meta = rnd(6 * 2 * 4, 7);
    for (let i = 0; i < meta.length; i += 8)
      for (let d = 0; d < 4; d++) {
        const [lo, hi] = [meta[i + d], meta[i + 4 + d]].sort((x, y) => x - y);
        meta[i + d] = lo;
        meta[i + 4 + d] = hi;
      }
    const q = Array.from(rnd(8, 9));
    q[5] = NaN;
    const u = Array.from(keep(ops.questBounds(args(q, meta))).toFloat32());
    expect(u.slice(0, 2).some(Number.isNaN)).toBe(false);
    expect(u.slice(2).every(Number.isNaN)).toBe(true);
    for (const bad of [NaN, Infinity, -Infinity]) {
      q[5] = bad;
      for (const budgetPages of [2, 3])
        for (const qChecked of [undefined, true])
          expect(codeOf(() => ops.questSelect({ ...args(q, meta), budgetPages, qChecked }))).toBe('KVSQ_NAN');
    }
  });
});

describe('countNonFinite', () => {
  it('counts NaN and +-Inf in every float dtype at awkward sizes; an array of tensors gives the total', () => {
    const r = prng(11);
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      const parts: Tensor[] = [];
      let total = 0;
      for (const n of [1, 17, 1000, 4099]) {
        const x = rnd(n, n);
        let bad = 0;
        for (let i = 0; i < n; i++)
          if (r() < 0.05) {
            x[i] = [NaN, Infinity, -Infinity][Math.floor(r() * 3)];
            bad++;
          }
        const t = F(x, [n], dtype);
        expect(ops.countNonFinite(t)).toBe(bad);
        parts.push(t);
        total += bad;
      }
      expect(ops.countNonFinite(parts)).toBe(total);
    }
    // a value beyond f16's range becomes Inf in the tensor, and counts
    expect(ops.countNonFinite(F([1e6, 1], [2], 'f16'))).toBe(1);
  });
  it('bad arguments: typed errors', async () => {
    const t = F([1, 2], [2]);
    expect(codeOf(() => ops.countNonFinite([]))).toBe('KVSQ_ARG');
    expect(codeOf(() => ops.countNonFinite(new Array(65).fill(t)))).toBe('KVSQ_ARG');
    expect(codeOf(() => ops.countNonFinite([t, 3 as unknown as Tensor]))).toBe('KVSQ_ARG');
    expect(codeOf(() => ops.countNonFinite([t, I([1])]))).toBe('KVSQ_DTYPE');
    const gone = Tensor.from(new Float32Array([1]), [1]);
    gone.dispose();
    expect(codeOf(() => ops.countNonFinite([t, gone]))).toBe('KVSQ_DISPOSED');
    expect(await ops.countNonFiniteAsync([t, F([NaN], [1])])).toBe(1);
  });
});

// ---------------------------------------------------------------- through the cache

const Hkv = 1;
const D = 8;
function observe(cache: PagedKVCache, seqs: readonly Sequence[]): unknown {
  return {
    stats: cache.stats(),
    seqs: seqs.map((s) => ({
      stats: s.stats(),
      layers: Array.from({ length: cache.numLayers }, (_, l) => ({ kept: s.kept(l).map((x) => Array.from(x)), slots: s.slots(l).map((x) => Array.from(x)), length: s.length(l) })),
    })),
  };
}
function mkCache(dtype: 'f32' | 'f16' = 'f32', qHeads = 1) {
  return new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads, headDim: D, pageSize: 4, pages: 64, dtype });
}
function promptOf(L: number, poison?: (q: Float32Array, k: Float32Array, v: Float32Array) => void, qHeads = 1) {
  const q = rnd(qHeads * L * D, 3);
  const k = rnd(Hkv * L * D, 5);
  const v = rnd(Hkv * L * D, 7);
  poison?.(q, k, v);
  return [F(q, [qHeads, L, D]), F(k, [Hkv, L, D]), F(v, [Hkv, L, D])] as const;
}
function decodeStep(cache: PagedKVCache, seqs: Sequence[], seed: number, poison?: (q: Float32Array, k: Float32Array, v: Float32Array) => void): Float32Array {
  const B = seqs.length;
  const Hq = cache.numQHeads;
  const q = rnd(B * Hq * D, seed);
  const k = rnd(B * Hkv * D, seed + 1);
  const v = rnd(B * Hkv * D, seed + 2);
  poison?.(q, k, v);
  const o = cache.decode(0, seqs, F(q, [B, Hq, D]), F(k, [B, Hkv, D]), F(v, [B, Hkv, D]));
  const a = o.toFloat32();
  o.dispose();
  return a;
}
const L = 12;
const kNaN = (_q: Float32Array, k: Float32Array) => void (k[3 * D + 1] = NaN);

describe.each(MODES)('the cache with non-finite inputs (%s)', (_m, mode) => {
  beforeAll(() => backend.forceSimd(mode));

  // One behaviour for every policy: the cache refuses NaN/Inf in q, k or v
  // (also values that overflow the cache dtype) with KVSQ_NAN before it
  // changes anything; the same sequences then go on as if nothing happened.
  const policies: [string, () => { prefill?: PrefillPolicy; decode?: DecodePolicy }][] = [
    ['none', () => ({})],
    ['StreamingLLM', () => ({ prefill: new StreamingLLM({ budget: 6, sinks: 1 }), decode: new StreamingLLM({ budget: 6, sinks: 1 }) })],
    ['SnapKV', () => ({ prefill: new SnapKV({ budget: 6, window: 2, kernel: 3 }) })],
    ['H2O', () => ({ prefill: new H2O({ heavy: 3, recent: 3 }), decode: new H2O({ heavy: 3, recent: 3 }) })],
    ['Quest', () => ({ decode: new Quest({ budget: 4, denseLayers: 0 }) })],
  ];
  const poisons: [string, (q: Float32Array, k: Float32Array, v: Float32Array) => void][] = [
    ['NaN in k', (_q, k) => void (k[3 * D + 1] = NaN)],
    ['NaN in q', (q) => void (q[(L - 1) * D + 2] = NaN)],
    ['+Inf in v', (_q, _k, v) => void (v[5] = Infinity)],
    ['-Inf in k', (_q, k) => void (k[0] = -Infinity)],
  ];

  it.each(policies)('%s: a non-finite prefill is KVSQ_NAN with nothing changed', (_name, pol) => {
    for (const [, poison] of poisons) {
      const c = mkCache();
      try {
        const other = c.addSequence();
        other.prefill(0, ...promptOf(L));
        const s = c.addSequence(pol());
        const before = observe(c, [other, s]);
        expect(codeOf(() => s.prefill(0, ...promptOf(L, poison)))).toBe('KVSQ_NAN');
        expect(observe(c, [other, s])).toEqual(before);
        expect(s.promptLength).toBe(-1);
        s.prefill(0, ...promptOf(L)); // the same sequence takes a finite prompt afterwards
        expect(s.kept(0).length).toBe(Hkv);
      } finally {
        c.dispose();
      }
    }
  });

  it.each(policies)('%s: a non-finite decode step is KVSQ_NAN with nothing changed; later steps match a twin', (_name, pol) => {
    const mk = () => {
      const c = mkCache();
      const seqs = [0, 1].map(() => c.addSequence(pol()));
      for (const s of seqs) s.prefill(0, ...promptOf(L));
      return { c, seqs };
    };
    const a = mk();
    const b = mk();
    try {
      const stepPoisons: Array<(q: Float32Array, k: Float32Array, v: Float32Array) => void> = [
        (_q, k) => void (k[1] = NaN),
        (q) => void (q[2] = NaN),
        (_q, _k, v) => void (v[5] = Infinity),
        (_q, k) => void (k[k.length - 1] = -Infinity),
      ];
      for (const poison of stepPoisons) {
        const before = observe(a.c, a.seqs);
        expect(codeOf(() => decodeStep(a.c, a.seqs, 700, poison))).toBe('KVSQ_NAN');
        expect(observe(a.c, a.seqs)).toEqual(before);
      }
      for (let t = 0; t < 4; t++) expect(Array.from(decodeStep(a.c, a.seqs, 800 + t))).toEqual(Array.from(decodeStep(b.c, b.seqs, 800 + t)));
      expect(observe(a.c, a.seqs)).toEqual(observe(b.c, b.seqs));
    } finally {
      a.c.dispose();
      b.c.dispose();
    }
  });

  it('values beyond the cache dtype (1e6 into f16) are refused like Inf, at prefill and at decode', () => {
    const c = mkCache('f16');
    try {
      const s = c.addSequence({ decode: new H2O({ heavy: 3, recent: 3 }) });
      expect(codeOf(() => s.prefill(0, ...promptOf(L, (_q, k) => void (k[3 * D + 1] = 1e6))))).toBe('KVSQ_NAN');
      s.prefill(0, ...promptOf(L));
      const before = observe(c, [s]);
      expect(codeOf(() => decodeStep(c, [s], 900, (_q, _k, v) => void (v[2] = -1e6)))).toBe('KVSQ_NAN');
      expect(observe(c, [s])).toEqual(before);
    } finally {
      c.dispose();
    }
  });
});

// ---------------------------------------------------------------- one behaviour on every kernel path

(SIMD_AVAILABLE ? describe : describe.skip)('NaN handling is independent of the kernel path', () => {
  afterAll(() => backend.forceSimd(-1));
  it('windowScores: a NaN in k makes every score NaN on both paths', () => {
    const L = 40;
    const q = rnd(2 * L * 8, 3);
    const k = rnd(L * 8, 5);
    k[(L >> 1) * 8 + 1] = NaN;
    for (const mode of [1, 0] as const) {
      backend.forceSimd(mode);
      expect(nans(keep(ops.windowScores(F(q, [2, L, 8]), F(k, [1, L, 8]), { window: L })).toFloat32())).toBe(L);
    }
  });
  it('SnapKV on scores with a NaN: topk says KVSQ_NAN on both paths', () => {
    const L = 40;
    const q = rnd(2 * L * 8, 3);
    const k = rnd(L * 8, 5);
    k[(L >> 1) * 8 + 1] = NaN;
    for (const mode of [1, 0] as const) {
      backend.forceSimd(mode);
      const s = keep(ops.windowScores(F(q, [2, L, 8]), F(k, [1, L, 8]), { window: 4 }));
      expect(codeOf(() => ops.topk(s, 3))).toBe('KVSQ_NAN');
    }
  });
});
