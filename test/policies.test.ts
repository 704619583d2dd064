/**
 * Every prefill method through the cache (PagedKVCache.addSequence({prefill})
 * + seq.prefill + seq.kept) against the independent float64 reference of
 * test/ref/prefill-ref.ts, on fresh random inputs (Math.random, new every run)
 * of awkward sizes: L 1, 17, 300, 1000; D 16, 40, 64; g 1, 2, 4; budgets as
 * tokens and as ratios; budgets >= L keep everything.
 *
 * The reference gets the values the cache really holds (q and k rounded
 * through the input dtype and then the cache dtype). Its scores are exact;
 * the kernels' are fp32, so a selection may differ where two candidates'
 * scores are within fp32 error of each other: compareKept excuses a swap only
 * when the two reference scores differ by at most 1e-5 relative (and never
 * when they are exactly equal: those must follow the lower-index rule). To
 * make the selections meaningful rather than noise, inputs have planted
 * structure: some keys are aligned with the window queries with varied
 * strengths, so scores spread over orders of magnitude.
 */
import { PagedKVCache, Tensor, StreamingLLM, SnapKV, PyramidKV, ChunkKV, ShotKV, H2O } from '../lib';
import type { PrefillPolicy } from '../lib';
import * as R from './ref/prefill-ref';
import { rand, randInt, type FDType } from './helpers';



interface Layer {
  /** values the cache holds (rounded) */
  q: Float32Array;
  k: Float32Array;
  tq: Tensor;
  tk: Tensor;
  tv: Tensor;
}

/**
 * Random q [Hq, L, D], k and v [Hkv, L, D] with structure: a direction u per
 * KV head; the window queries lean towards u, and about a tenth of the keys
 * (`planted`, or random ones) get u times a random strength. Tensors are made
 * in `inDtype`; the returned q/k are what a cache of `cacheDtype` holds.
 */
function makeLayer(d: R.Dims, inDtype: FDType, cacheDtype: FDType, planted?: { pos: number[]; strength?: number[] }): Layer {
  const { Hq, Hkv, L, D } = d;
  const g = Hq / Hkv;
  const q = rand(Hq * L * D);
  const k = rand(Hkv * L * D);
  const v = rand(Hkv * L * D);
  const u: Float32Array[] = [];
  for (let j = 0; j < Hkv; j++) {
    const x = rand(D);
    const n = Math.hypot(...x);
    u.push(x.map((y) => (y / n) * Math.sqrt(D)));
  }
  for (let h = 0; h < Hq; h++) {
    const j = Math.floor(h / g);
    for (let p = Math.max(0, L - 64); p < L; p++) for (let x = 0; x < D; x++) q[(h * L + p) * D + x] += 0.5 * u[j][x];
  }
  const pos = planted?.pos ?? Array.from({ length: Math.ceil(L / 10) }, () => randInt(0, L - 1));
  pos.forEach((t, i) => {
    for (let j = 0; j < Hkv; j++) {
      const s = planted?.strength?.[i] ?? 0.3 + 1.2 * Math.random();
      for (let x = 0; x < D; x++) k[(j * L + t) * D + x] += s * u[j][x];
    }
  });
  const mk = (a: Float32Array, shape: number[]) => Tensor.from(a, shape, { dtype: inDtype });
  const tq = mk(q, [Hq, L, D]);
  const tk = mk(k, [Hkv, L, D]);
  const tv = mk(v, [Hkv, L, D]);
  return { q: R.rounded(tq.toFloat32(), cacheDtype), k: R.rounded(tk.toFloat32(), cacheDtype), tq, tk, tv };
}
function disposeLayer(x: Layer): void {
  x.tq.dispose();
  x.tk.dispose();
  x.tv.dispose();
}

interface Case {
  name: string;
  d: R.Dims;
  layers?: number;
  dtype?: FDType;
  inDtype?: FDType;
}

/**
 * Runs `policy` over every layer of a fresh cache and compares each layer's
 * kept positions (both the prefill's return value and seq.kept) with `ref`.
 */
function runCase(
  c: Case,
  policy: PrefillPolicy | PrefillPolicy[],
  ref: (layers: Layer[], l: number) => R.RefResult,
  planted?: (l: number) => { pos: number[]; strength?: number[] },
  rel = 1e-5,
): { kept: Int32Array[][]; excused: number } {
  const NL = c.layers ?? 1;
  const dtype = c.dtype ?? 'f16';
  const inDtype = c.inDtype ?? 'f32';
  const { Hq, Hkv, L, D } = c.d;
  const P = 16;
  const cache = new PagedKVCache({ layers: NL, kvHeads: Hkv, qHeads: Hq, headDim: D, dtype, pageSize: P, pages: NL * Hkv * Math.ceil(L / P) + 4 });
  const layers: Layer[] = [];
  const out: Int32Array[][] = [];
  let excused = 0;
  try {
    const seq = cache.addSequence({ prefill: policy });
    for (let l = 0; l < NL; l++) layers.push(makeLayer(c.d, inDtype, dtype, planted?.(l)));
    for (let l = 0; l < NL; l++) {
      const got = seq.prefill(l, layers[l].tq, layers[l].tk, layers[l].tv);
      const kept = seq.kept(l);
      expect(got.map((x) => Array.from(x))).toEqual(kept.map((x) => Array.from(x)));
      for (const x of kept) expect(x.constructor.name).toBe('Int32Array');
      const r = ref(layers, l);
      const cmp = R.compareKept(kept, r, rel);
      if (cmp.problems.length) throw new Error(`${c.name} layer ${l}:\n  ${cmp.problems.join('\n  ')}`);
      excused += cmp.excused;
      out.push(kept);
      // Accounting agrees with what is held.
      const st = seq.stats();
      expect(st.tokens[l]).toEqual(kept.map((x) => x.length));
    }
    // A near-tie may excuse a swap now and then, never a wholesale difference.
    expect(excused).toBeLessThanOrEqual(2 * NL * Hkv);
    return { kept: out, excused };
  } finally {
    layers.forEach(disposeLayer);
    cache.dispose();
  }
}

const dims = (L: number, D: number, g: number, Hkv = 2): R.Dims => ({ Hq: g * Hkv, Hkv, L, D });
const allPositions = (L: number) => Array.from({ length: L }, (_, i) => i);

// ---------------------------------------------------------------- StreamingLLM

describe('StreamingLLM prefill', () => {
  const cases: [string, number, { budget?: number; ratio?: number; sinks?: number }][] = [
    ['L 1', 1, { budget: 8 }],
    ['L 17, budget 10', 17, { budget: 10 }],
    ['L 17, budget 17 keeps all', 17, { budget: 17 }],
    ['L 300, budget 100, sinks 0', 300, { budget: 100, sinks: 0 }],
    ['L 300, ratio 0.25, sinks 7', 300, { ratio: 0.25, sinks: 7 }],
    ['L 1000, ratio 0.1', 1000, { ratio: 0.1 }],
    ['L 1000, budget 5000 keeps all', 1000, { budget: 5000 }],
  ];
  it.each(cases)('%s', (name, L, o) => {
    const d = dims(L, 16, 2);
    runCase({ name, d }, new StreamingLLM(o), () => R.streamingRef(d, o));
  });
  it('exact positions for a small case', () => {
    const d = dims(17, 16, 1);
    const { kept } = runCase({ name: 'small', d }, new StreamingLLM({ budget: 10, sinks: 3 }), () => R.streamingRef(d, { budget: 10, sinks: 3 }));
    expect(Array.from(kept[0][0])).toEqual([0, 1, 2, 10, 11, 12, 13, 14, 15, 16]);
  });
});

// ---------------------------------------------------------------- SnapKV

describe('SnapKV prefill', () => {
  type O = R.SnapRefOptions;
  const cases: [string, R.Dims, O, FDType, FDType][] = [
    ['L 1 keeps all', dims(1, 16, 2), { budget: 64 }, 'f16', 'f32'],
    ['L 17, w 4, budget 10, g 1', dims(17, 16, 1), { budget: 10, window: 4 }, 'f32', 'f32'],
    ['L 300, D 40, g 2, budget 100 (defaults w 32, k 7, max, mean)', dims(300, 40, 2), { budget: 100 }, 'f16', 'f32'],
    ['L 300, D 40, g 4, avg pool k 5, gqa sum, bf16', dims(300, 40, 4), { budget: 90, kernel: 5, pool: 'avg', gqa: 'sum' }, 'bf16', 'f32'],
    ['L 1000, D 64, g 4, ratio 0.2, gqa max', dims(1000, 64, 4), { ratio: 0.2, gqa: 'max' }, 'f16', 'f16'],
    ['L 1000, D 16, g 2, k 5 avg, window 16, ratio 0.05', dims(1000, 16, 2, 3), { ratio: 0.05, kernel: 5, pool: 'avg', window: 16 }, 'f32', 'bf16'],
    ['L 1000, D 64, g 1, kernel 1, budget 40', dims(1000, 64, 1, 2), { budget: 40, kernel: 1 }, 'f16', 'f32'],
    ['L 1000, D 40, kernel 31 max, budget 300', dims(1000, 40, 2, 2), { budget: 300, kernel: 31 }, 'f16', 'f32'],
    ['L 300, budget 300 keeps all', dims(300, 16, 2), { budget: 300 }, 'f16', 'f32'],
    ['L 300, ratio 1 keeps all', dims(300, 16, 2), { ratio: 1 }, 'f16', 'f32'],
  ];
  it.each(cases)('%s', (name, d, o, dtype, inDtype) => {
    runCase({ name, d, dtype, inDtype }, new SnapKV(o), (ls, l) => R.snapkvRef(ls[l].q, ls[l].k, d, o));
  });

  it('keeps C tokens per head, the window among them, and heads may differ', () => {
    const d = dims(300, 40, 2, 4);
    const o = { budget: 80, window: 16 };
    const { kept } = runCase({ name: 'heads', d }, new SnapKV(o), (ls, l) => R.snapkvRef(ls[l].q, ls[l].k, d, o));
    for (const h of kept[0]) {
      expect(h.length).toBe(80);
      expect(Array.from(h.slice(64))).toEqual(Array.from({ length: 16 }, (_, i) => 284 + i));
    }
  });

  it('max-pool plateaus tie exactly: the lower positions win', () => {
    // One dominant key per head: max pooling spreads its score over k = 7
    // positions (exact ties); with C - w = 3 only the 3 lowest of them stay.
    const d = dims(300, 16, 1, 1);
    const o = { budget: 35, window: 32 };
    const { kept } = runCase({ name: 'plateau', d }, new SnapKV(o), (ls, l) => R.snapkvRef(ls[l].q, ls[l].k, d, o), () => ({ pos: [100], strength: [6] }));
    expect(Array.from(kept[0][0].slice(0, 3))).toEqual([97, 98, 99]);
  });
});

// ---------------------------------------------------------------- PyramidKV

describe('PyramidKV prefill', () => {
  it('capacity formula matches the spec for the hand-worked cases', () => {
    // C 100, w 8: b 92, min floor(92/20) = 4, max 180, step floor(176/3) = 58.
    expect([0, 1, 2, 3].map((l) => R.pyramidCap(100, 8, 1000, l, 4))).toEqual([180, 122, 64, 6]);
    // L 186: max 180 >= 178 = L - w, so max 178, min 184 - 178 = 6, step floor(172/3) = 57.
    expect([0, 1, 2, 3].map((l) => R.pyramidCap(100, 8, 186, l, 4))).toEqual([178, 121, 64, 7]);
    expect(R.pyramidCap(100, 8, 150, 2, 4)).toBe(92); // L < 2b: uniform
    expect(R.pyramidCap(100, 8, 99, 0, 4)).toBeNull(); // L < C
  });

  type O = R.PyramidRefOptions;
  const cases: [string, R.Dims, number, O][] = [
    ['L >= 2b, 4 layers, C 100, w 8 (caps 180/122/64/6)', dims(1000, 40, 2), 4, { budget: 100, window: 8 }],
    ['max >= L - w branch, L 186', dims(186, 16, 4), 4, { budget: 100, window: 8 }],
    ['L < 2b: uniform SnapKV, L 150', dims(150, 64, 1), 3, { budget: 100, window: 8 }],
    ['L < C keeps all', dims(99, 16, 2), 3, { budget: 100, window: 8 }],
    ['L == C', dims(100, 16, 2), 2, { budget: 100, window: 8 }],
    ['ratio 0.1 at L 1000, avg k 5, gqa sum, 5 layers', dims(1000, 16, 2), 5, { ratio: 0.1, kernel: 5, pool: 'avg', gqa: 'sum' }],
    ['one layer (step 0), gqa max, beta 4', dims(300, 40, 4), 1, { budget: 64, window: 16, gqa: 'max', beta: 4 }],
    ['L 17, w 2, C 6, 3 layers', dims(17, 16, 2), 3, { budget: 6, window: 2 }],
    ['L 1', dims(1, 16, 2), 2, { budget: 4 }],
  ];
  it.each(cases)('%s', (name, d, NL, o) => {
    const { kept } = runCase({ name, d, layers: NL }, new PyramidKV(o), (ls, l) => R.pyramidkvRef(ls[l].q, ls[l].k, d, l, NL, o));
    // Lower layers never keep less.
    for (let l = 1; l < NL; l++) expect(kept[l][0].length).toBeLessThanOrEqual(kept[l - 1][0].length);
  });
});

// ---------------------------------------------------------------- ChunkKV

describe('ChunkKV prefill', () => {
  type O = R.ChunkRefOptions;
  const cases: [string, R.Dims, number, O][] = [
    ['L 300, c 10, last partial chunk of 8, reuse 1', dims(300, 40, 2), 3, { budget: 100 }],
    ['L 300, reuse 2 over 4 layers', dims(300, 16, 4), 4, { budget: 100, chunk: 7, reuse: 2 }],
    ['L 1000, reuse 3 over 5 layers, c 20, gqa sum', dims(1000, 64, 1), 5, { ratio: 0.1, chunk: 20, reuse: 3, gqa: 'sum' }],
    ['L 1000, c 1 (per token), gqa max', dims(1000, 16, 4), 1, { budget: 60, chunk: 1, gqa: 'max', window: 16 }],
    ['L 17, w 4, c 3 (partial chunk of 1)', dims(17, 16, 2), 2, { budget: 10, window: 4, chunk: 3 }],
    ['C - w < c: window only', dims(300, 16, 2), 1, { budget: 40, window: 32, chunk: 10 }],
    ['budget >= L keeps all', dims(300, 16, 2), 2, { budget: 300 }],
    ['L 1', dims(1, 16, 2), 1, { budget: 4 }],
  ];
  it.each(cases)('%s', (name, d, NL, o) => {
    let refs: R.RefResult[] | undefined;
    const { kept } = runCase({ name, d, layers: NL }, new ChunkKV(o), (ls, l) => (refs ??= R.chunkkvLayersRef(ls, d, o))[l]);
    // Every head of a layer keeps the same positions; reused layers equal their source.
    const N = o.reuse ?? 1;
    for (let l = 0; l < NL; l++) {
      for (const h of kept[l]) expect(Array.from(h)).toEqual(Array.from(kept[l][0]));
      if (l % N) expect(Array.from(kept[l][0])).toEqual(Array.from(kept[l - (l % N)][0]));
    }
  });

  test('reuse after a failed (KVSQ_OOM) prefill of the source layer does not take its chunks', () => {
    const d = { Hq: 2, Hkv: 2, L: 100, D: 8 };
    const o = { budget: 40, window: 8, chunk: 4, reuse: 2 };
    const cache = new PagedKVCache({ layers: 2, kvHeads: 2, qHeads: 2, headDim: 8, pageSize: 4, pages: 30, dtype: 'f32' });
    const A = makeLayer(d, 'f32', 'f32');
    const B = makeLayer(d, 'f32', 'f32');
    const blk = makeLayer({ ...d, L: 40 }, 'f32', 'f32');
    try {
      const blocker = cache.addSequence();
      blocker.prefill(0, blk.tq, blk.tk, blk.tv); // 20 of 30 pages
      const s = cache.addSequence({ prefill: new ChunkKV(o) });
      expect(() => s.prefill(0, A.tq, A.tk, A.tv)).toThrow(expect.objectContaining({ code: 'KVSQ_OOM' })); // needs 20
      blocker.remove();
      s.prefill(1, B.tq, B.tk, B.tv);
      expect(R.compareKept(s.kept(1), R.chunkkvRef(B.q, B.k, d, o)).problems).toEqual([]);
    } finally {
      [A, B, blk].forEach(disposeLayer);
      cache.dispose();
    }
  });

  it('the last partial chunk is a chunk, selected when its keys dominate', () => {
    // L 300, w 32: prefix 268, chunks of 10, the last [260, 268) has 8 tokens.
    const d = dims(300, 16, 2);
    const o = { budget: 52, window: 32, chunk: 10 }; // 2 chunks
    const pos = [260, 261, 262, 263, 264, 265, 266, 267, 50, 51, 52, 53];
    const strength = [3, 3, 3, 3, 3, 3, 3, 3, 2.5, 2.5, 2.5, 2.5];
    const { kept } = runCase({ name: 'partial', d }, new ChunkKV(o), (ls, l) => R.chunkkvRef(ls[l].q, ls[l].k, d, o), () => ({ pos, strength }));
    const k0 = Array.from(kept[0][0]);
    expect(k0.length).toBe(8 + 10 + 32);
    for (const t of [50, 260, 267]) expect(k0).toContain(t);
  });

  it('chunk scores are sums, not means: a short strong partial chunk loses to a long one', () => {
    // L 294, w 32: prefix 262, last chunk [260, 262) of 2 tokens at strength
    // 2.5 (logit ~5 with D 16) against [100, 110) at 2 (logit ~4): the mean
    // favours the partial chunk by ~e, the sum the full one by ~10 / (2e).
    const d = dims(294, 16, 1, 1);
    const o = { budget: 42, window: 32, chunk: 10 }; // 1 chunk
    const pos = [260, 261, ...Array.from({ length: 10 }, (_, i) => 100 + i)];
    const strength = [2.5, 2.5, ...new Array(10).fill(2)];
    const { kept } = runCase({ name: 'sum', d }, new ChunkKV(o), (ls, l) => R.chunkkvRef(ls[l].q, ls[l].k, d, o), () => ({ pos, strength }));
    expect(Array.from(kept[0][0].slice(0, 10))).toEqual(Array.from({ length: 10 }, (_, i) => 100 + i));
  });
});

// ---------------------------------------------------------------- ShotKV

describe('ShotKV prefill', () => {
  /**
   * Shots with well separated planted strengths (a shot's keys all lean
   * towards u by its strength), so that shot scores never near-tie unless
   * made equal on purpose.
   */
  function shotPlant(shots: [number, number][], strengths: number[]) {
    const pos: number[] = [];
    const str: number[] = [];
    shots.forEach(([a, b], i) => {
      for (let t = a; t < b; t++) {
        pos.push(t);
        str.push(strengths[i]);
      }
    });
    return { pos, strength: str };
  }
  const shots: [number, number][] = [
    [10, 40],
    [45, 80],
    [90, 100],
    [120, 170],
    [180, 200],
    [210, 260],
  ];
  const shotLen = shots.reduce((n, [a, b]) => n + b - a, 0); // 185
  const always = 300 - shotLen; // 115

  const cases: [string, R.Dims, R.ShotRefOptions, number[]][] = [
    // Best first: [120,170) (50) fits, [10,40) (30) fits, [210,260) (50) does not fit, [90,100) (10) does.
    ['shots that do not fit are skipped, a later smaller one fits', dims(300, 40, 2), { shots, prefillBudget: always + 95 }, [1.0, 0.2, 0.5, 1.4, 0.1, 0.8]],
    ['prefillRatio 0.3, gqa sum, g 4', dims(300, 16, 4), { shots, prefillRatio: 0.3, gqa: 'sum' }, [0.3, 1.1, 0.6, 0.2, 1.3, 0.9]],
    ['budget below the always-kept tokens keeps no shot', dims(300, 16, 2), { shots, prefillBudget: 50 }, [1, 1.2, 0.4, 0.6, 0.8, 0.2]],
    ['budget >= L keeps all', dims(300, 16, 2), { shots, prefillBudget: 300 }, [1, 1.2, 0.4, 0.6, 0.8, 0.2]],
    ['shots given out of order, window 8, D 64, g 1', dims(300, 64, 1), { shots: [...shots].reverse(), prefillBudget: always + 60, window: 8 }, [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]],
    ['no shots: everything is always kept', dims(17, 16, 2), { shots: [], prefillBudget: 4 }, []],
  ];
  it.each(cases)('%s', (name, d, o, strengths) => {
    const pl = shotPlant(o.shots as [number, number][], strengths);
    const { kept } = runCase({ name, d }, new ShotKV(o), (ls, l) => R.shotkvRef(ls[l].q, ls[l].k, d, o), () => pl);
    for (const h of kept[0]) expect(Array.from(h)).toEqual(Array.from(kept[0][0]));
  });

  it('the hand-worked case keeps exactly the shots the spec says', () => {
    const d = dims(300, 40, 2);
    const o = { shots, prefillBudget: always + 95 };
    const pl = shotPlant(shots, [1.0, 0.2, 0.5, 1.4, 0.1, 0.8]);
    let order: number[] = [];
    const { kept } = runCase({ name: 'hand', d }, new ShotKV(o), (ls, l) => {
      const r = R.shotkvRef(ls[l].q, ls[l].k, d, o);
      order = r.order;
      return r;
    }, () => pl);
    expect(order.slice(0, 3)).toEqual([3, 0, 5]); // by planted strength
    const set = new Set(kept[0][0]);
    const keptShots = shots.map(([a, b]) => set.has(a) && set.has(b - 1));
    // 95 for shots: [120,170) 50 -> 45 left, [10,40) 30 -> 15, [210,260) 50 does not
    // fit, [90,100) 10 -> 5, [45,80) 35 and [180,200) 20 do not fit.
    expect(keptShots).toEqual([true, false, true, true, false, false]);
    expect(kept[0][0].length).toBe(always + 90);
  });

  it('equal shot scores: the earlier shot is kept', () => {
    // Shots [1, 4) and [8, 11) hold identical keys, both seen by the whole
    // observation window (the last 2 rows), inside one 16-key block of the
    // window-scores kernel: their token scores are bit-identical, so the shot
    // scores tie exactly. (Across blocks the kernel's block-wise softmax may
    // round identical keys 1 ulp apart, which is no tie.) The budget fits one.
    const d = dims(16, 16, 2);
    const sh: [number, number][] = [
      [8, 11],
      [1, 4],
      [12, 14],
    ];
    const o = { shots: sh, prefillBudget: 16 - 8 + 3, window: 2 };
    const cache = new PagedKVCache({ layers: 1, kvHeads: d.Hkv, qHeads: d.Hq, headDim: d.D, dtype: 'f32', pages: 64 });
    try {
      const x = makeLayer(d, 'f32', 'f32', shotPlant(sh, [1.5, 1.5, 0.2]));
      const k = x.k.slice();
      for (let j = 0; j < d.Hkv; j++) k.copyWithin((j * d.L + 8) * d.D, (j * d.L + 1) * d.D, (j * d.L + 4) * d.D);
      const tk = Tensor.from(k, [d.Hkv, d.L, d.D]);
      const seq = cache.addSequence({ prefill: new ShotKV(o) });
      seq.prefill(0, x.tq, tk, x.tv);
      const r = R.shotkvRef(x.q, k, d, o);
      expect(r.shotScores[0]).toBe(r.shotScores[1]);
      const cmp = R.compareKept(seq.kept(0), r);
      expect(cmp.problems).toEqual([]);
      const s = new Set(seq.kept(0)[0]);
      expect(s.has(1) && s.has(3)).toBe(true);
      expect(s.has(8) || s.has(10)).toBe(false);
      disposeLayer(x);
      tk.dispose();
    } finally {
      cache.dispose();
    }
  });
});

// ---------------------------------------------------------------- H2O

describe('H2O prefill', () => {
  type O = R.H2ORefOptions;
  const cases: [string, R.Dims, O][] = [
    ['L 1', dims(1, 16, 2), {}],
    ['L 17, heavy 3, recent 2, g 1', dims(17, 16, 1), { heavy: 3, recent: 2 }],
    ['L 300, D 40, g 2, defaults (0.1 + 0.1)', dims(300, 40, 2), {}],
    ['L 300, D 64, g 4, gqa sum, heavy 0.25 recent 0.05', dims(300, 64, 4), { heavy: 0.25, recent: 0.05, gqa: 'sum' }],
    ['L 1000, D 16, g 4, gqa max, heavy 50 recent 30', dims(1000, 16, 4, 1), { heavy: 50, recent: 30, gqa: 'max' }],
    ['L 300, heavy + recent >= L keeps all', dims(300, 16, 2), { heavy: 200, recent: 100 }],
    ['recent 0', dims(300, 16, 2), { heavy: 40, recent: 0 }],
  ];
  it.each(cases)('%s', (name, d, o) => {
    runCase({ name, d }, new H2O(o), (ls, l) => R.h2oRef(ls[l].q, ls[l].k, d, o), undefined, 2e-5);
  });
});

describe('reference self-checks', () => {
  it('top-k: larger wins, equal scores the lower index, ascending output', () => {
    expect(Array.from(R.topk([1, 3, 3, 2, 3], 5, 2))).toEqual([1, 2]);
    expect(Array.from(R.topk([5, 1, 5], 3, 5))).toEqual([0, 1, 2]);
    expect(Array.from(R.topk([5, 1, 5], 2, 1))).toEqual([0]);
  });
  it('pooling: max over in-range neighbours, avg zero-padded and divided by k', () => {
    expect(Array.from(R.pool([1, 5, 2, 0, 0, 9], 5, 3, 'max'))).toEqual([5, 5, 5, 2, 0]);
    const a = R.pool([3, 3, 3], 3, 3, 'avg');
    expect(a[0]).toBeCloseTo(2, 12);
    expect(a[1]).toBeCloseTo(3, 12);
  });
  it('window scores of one row sum to 1 per query head', () => {
    const d = { Hq: 2, Hkv: 1, L: 9, D: 4 };
    const q = rand(2 * 9 * 4);
    const k = rand(9 * 4);
    const S = R.windowScores(q, k, d, 1, 'sum');
    expect(S[0].reduce((a, b) => a + b, 0)).toBeCloseTo(2, 12);
    expect(allPositions(3)).toEqual([0, 1, 2]);
  });
});
