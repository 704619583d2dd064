/**
 * PagedKVCache: bad inputs (each a KvsqError with its code, the cache left
 * exactly as it was), pool exhaustion, freeing, attention over the
 * compressed cache against exact float64 attention over the kept positions,
 * and the memory accounting (the project's acceptance figure: SnapKV at
 * budget 1024 on a 32K prompt frees >= 95% of the sequence's pages).
 */
import { PagedKVCache, Sequence, Tensor, KvsqError, SnapKV, H2O, StreamingLLM } from '../lib';
import type { DType } from '../lib';
import * as R from './ref/prefill-ref';
import { rand, randInt, expectCode, type FDType } from './helpers';



/** Everything observable about a cache and its sequences. */
function snapshot(cache: PagedKVCache, seqs: Sequence[]): unknown {
  return {
    stats: cache.stats(),
    size: cache.size,
    seqs: seqs.map((s) =>
      s.removed
        ? 'removed'
        : {
            stats: s.stats(),
            promptLength: s.promptLength,
            layers: Array.from({ length: cache.numLayers }, (_, l) => ({
              kept: s.kept(l).map((x) => Array.from(x)),
              slots: s.slots(l).map((x) => Array.from(x)),
              length: s.length(l),
            })),
          },
    ),
  };
}

interface Prompt {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  dispose(): void;
}
function prompt(Hq: number, Hkv: number, L: number, D: number, dtype: FDType = 'f32'): Prompt {
  const q = Tensor.from(rand(Hq * L * D), [Hq, L, D], { dtype });
  const k = Tensor.from(rand(Hkv * L * D), [Hkv, L, D], { dtype });
  const v = Tensor.from(rand(Hkv * L * D), [Hkv, L, D], { dtype });
  return { q, k, v, dispose: () => [q, k, v].forEach((t) => t.dispose()) };
}

// ---------------------------------------------------------------- bad inputs

describe('PagedKVCache: invalid options', () => {
  const base = { layers: 2, kvHeads: 2, headDim: 16 };
  const cases: [string, unknown, string][] = [
    ['no options', undefined, 'KVSQ_ARG'],
    ['null options', null, 'KVSQ_ARG'],
    ['missing layers', { kvHeads: 2, headDim: 16 }, 'KVSQ_RANGE'],
    ['missing kvHeads', { layers: 2, headDim: 16 }, 'KVSQ_RANGE'],
    ['missing headDim', { layers: 2, kvHeads: 2 }, 'KVSQ_RANGE'],
    ['negative layers', { ...base, layers: -1 }, 'KVSQ_RANGE'],
    ['zero layers', { ...base, layers: 0 }, 'KVSQ_RANGE'],
    ['fractional kvHeads', { ...base, kvHeads: 1.5 }, 'KVSQ_RANGE'],
    ['NaN headDim', { ...base, headDim: NaN }, 'KVSQ_RANGE'],
    ['string headDim', { ...base, headDim: '16' }, 'KVSQ_RANGE'],
    ['negative pages', { ...base, pages: -4 }, 'KVSQ_RANGE'],
    ['zero pages', { ...base, pages: 0 }, 'KVSQ_RANGE'],
    ['fractional pageSize', { ...base, pageSize: 2.5 }, 'KVSQ_RANGE'],
    ['zero pageSize', { ...base, pageSize: 0 }, 'KVSQ_RANGE'],
    ['Infinity pages', { ...base, pages: Infinity }, 'KVSQ_RANGE'],
    ['unknown dtype', { ...base, dtype: 'f64' }, 'KVSQ_DTYPE'],
    ['i32 dtype', { ...base, dtype: 'i32' }, 'KVSQ_DTYPE'],
    ['qHeads not a multiple of kvHeads', { ...base, qHeads: 3 }, 'KVSQ_SHAPE'],
    ['unknown device', { ...base, device: 'tpu:0' }, 'KVSQ_DEVICE'],
  ];
  it.each(cases)('%s', (_n, o, code) => {
    expectCode(() => new PagedKVCache(o as never), code);
  });
});

describe('PagedKVCache: invalid calls leave the cache unchanged', () => {
  const Hq = 4;
  const Hkv = 2;
  const D = 16;
  const L = 37;
  let cache: PagedKVCache;
  let other: PagedKVCache;
  let good: Prompt;
  let seq: Sequence; // prefilled at layer 0 only
  let fresh: Sequence; // never prefilled
  let foreign: Sequence;
  const all = () => [seq, fresh];

  beforeEach(() => {
    cache = new PagedKVCache({ layers: 2, kvHeads: Hkv, qHeads: Hq, headDim: D, dtype: 'f16', pageSize: 8, pages: 64 });
    other = new PagedKVCache({ layers: 2, kvHeads: Hkv, qHeads: Hq, headDim: D, pages: 16 });
    good = prompt(Hq, Hkv, L, D);
    seq = cache.addSequence({ prefill: new SnapKV({ budget: 20, window: 4 }) });
    seq.prefill(0, good.q, good.k, good.v);
    fresh = cache.addSequence();
    foreign = other.addSequence();
    foreign.prefill(0, good.q, good.k, good.v);
  });
  afterEach(() => {
    good.dispose();
    cache.dispose();
    other.dispose();
  });

  const t = (shape: number[], dtype: DType = 'f32') => Tensor.from(dtype === 'i32' ? new Int32Array(shape.reduce((a, b) => a * b, 1)) : rand(shape.reduce((a, b) => a * b, 1)), shape, { dtype });
  const step = (B: number) => ({ q: t([B, Hq, D]), k: t([B, Hkv, D]), v: t([B, Hkv, D]) });

  const cases: [string, () => unknown, string][] = [
    ['prefill: q with the wrong head count', () => seq.prefill(1, t([2, L, D]), good.k, good.v), 'KVSQ_SHAPE'],
    ['prefill: k with the wrong head count', () => seq.prefill(1, good.q, t([1, L, D]), good.v), 'KVSQ_SHAPE'],
    ['prefill: v with a different L', () => seq.prefill(1, good.q, good.k, t([Hkv, L - 1, D])), 'KVSQ_SHAPE'],
    ['prefill: wrong head dim', () => fresh.prefill(0, t([Hq, L, 8]), t([Hkv, L, 8]), t([Hkv, L, 8])), 'KVSQ_SHAPE'],
    ['prefill: 2-D q', () => seq.prefill(1, t([Hq, L * D]), good.k, good.v), 'KVSQ_SHAPE'],
    ['prefill: 4-D k', () => seq.prefill(1, good.q, t([1, Hkv, L, D]), good.v), 'KVSQ_SHAPE'],
    ['prefill: empty prompt', () => fresh.prefill(0, t([Hq, 0, D]), t([Hkv, 0, D]), t([Hkv, 0, D])), 'KVSQ_SHAPE'],
    ['prefill: i32 q', () => seq.prefill(1, t([Hq, L, D], 'i32'), good.k, good.v), 'KVSQ_DTYPE'],
    ['prefill: i32 v', () => seq.prefill(1, good.q, good.k, t([Hkv, L, D], 'i32')), 'KVSQ_DTYPE'],
    ['prefill: q not a tensor', () => seq.prefill(1, {} as Tensor, good.k, good.v), 'KVSQ_ARG'],
    ['prefill: k a Float32Array', () => seq.prefill(1, good.q, new Float32Array(Hkv * L * D) as unknown as Tensor, good.v), 'KVSQ_ARG'],
    ['prefill: v undefined', () => seq.prefill(1, good.q, good.k, undefined as unknown as Tensor), 'KVSQ_ARG'],
    ['prefill: a disposed k', () => {
      const k = t([Hkv, L, D]);
      k.dispose();
      return seq.prefill(1, good.q, k, good.v);
    }, 'KVSQ_DISPOSED'],
    ['prefill: layer -1', () => seq.prefill(-1, good.q, good.k, good.v), 'KVSQ_RANGE'],
    ['prefill: layer == layers', () => seq.prefill(2, good.q, good.k, good.v), 'KVSQ_RANGE'],
    ['prefill: layer 0.5', () => seq.prefill(0.5, good.q, good.k, good.v), 'KVSQ_RANGE'],
    ['prefill: layer "1"', () => seq.prefill('1' as unknown as number, good.q, good.k, good.v), 'KVSQ_RANGE'],
    ['prefill twice', () => seq.prefill(0, good.q, good.k, good.v), 'KVSQ_STATE'],
    ['prefill: a different L than layer 0', () => {
      const p = prompt(Hq, Hkv, L + 3, D);
      try {
        return seq.prefill(1, p.q, p.k, p.v);
      } finally {
        p.dispose();
      }
    }, 'KVSQ_SHAPE'],
    ['kept: layer out of range', () => seq.kept(2), 'KVSQ_RANGE'],
    ['decode before prefill', () => {
      const s = step(1);
      return cache.decode(0, [fresh], s.q, s.k, s.v);
    }, 'KVSQ_STATE'],
    ['decode before prefill, last in a batch', () => {
      const s = step(2);
      return cache.decode(0, [seq, fresh], s.q, s.k, s.v);
    }, 'KVSQ_STATE'],
    ['decode at a layer not prefilled', () => {
      const s = step(1);
      return cache.decode(1, [seq], s.q, s.k, s.v);
    }, 'KVSQ_STATE'],
    ['decode: a sequence of another cache', () => {
      const s = step(2);
      return cache.decode(0, [seq, foreign], s.q, s.k, s.v);
    }, 'KVSQ_STATE'],
    ['attend: a sequence of another cache', () => cache.attend(0, [foreign], t([1, Hq, D])), 'KVSQ_STATE'],
    ['decode: the same sequence twice', () => {
      const s = step(2);
      return cache.decode(0, [seq, seq], s.q, s.k, s.v);
    }, 'KVSQ_ARG'],
    ['decode: empty batch', () => {
      const s = step(1);
      return cache.decode(0, [], s.q, s.k, s.v);
    }, 'KVSQ_ARG'],
    ['decode: not a sequence', () => {
      const s = step(1);
      return cache.decode(0, [{} as Sequence], s.q, s.k, s.v);
    }, 'KVSQ_ARG'],
    ['decode: q batch size differs', () => {
      const s = step(1);
      return cache.decode(0, [seq], t([2, Hq, D]), s.k, s.v);
    }, 'KVSQ_SHAPE'],
    ['decode: k head count wrong', () => {
      const s = step(1);
      return cache.decode(0, [seq], s.q, t([1, Hq, D]), s.v);
    }, 'KVSQ_SHAPE'],
    ['decode: v i32', () => {
      const s = step(1);
      return cache.decode(0, [seq], s.q, s.k, t([1, Hkv, D], 'i32'));
    }, 'KVSQ_DTYPE'],
    ['decode: v disposed', () => {
      const s = step(1);
      s.v.dispose();
      return cache.decode(0, [seq], s.q, s.k, s.v);
    }, 'KVSQ_DISPOSED'],
    ['decode: layer out of range', () => {
      const s = step(1);
      return cache.decode(5, [seq], s.q, s.k, s.v);
    }, 'KVSQ_RANGE'],
    ['attend: q not a tensor', () => cache.attend(0, [seq], [1, 2] as unknown as Tensor), 'KVSQ_ARG'],
    ['attend: not prefilled', () => cache.attend(1, [seq], t([1, Hq, D])), 'KVSQ_STATE'],
    ['addSequence: prefill policies for the wrong number of layers', () => cache.addSequence({ prefill: [new SnapKV()] }), 'KVSQ_SHAPE'],
    ['addSequence: a decode policy where a prefill policy goes', () => cache.addSequence({ prefill: {} as never }), 'KVSQ_ARG'],
    ['addSequence: a prefill-only policy as decode policy', () => cache.addSequence({ decode: new SnapKV() as never }), 'KVSQ_ARG'],
    ['addSequence: null options', () => cache.addSequence(null as never), 'KVSQ_ARG'],
  ];
  it.each(cases)('%s', (_n, fn, code) => {
    const before = snapshot(cache, all());
    expectCode(fn, code);
    expect(snapshot(cache, all())).toEqual(before);
  });

  it('a removed sequence: every use throws KVSQ_DISPOSED, remove() again is a no-op', () => {
    const used = cache.stats().pages.used;
    const held = seq.stats().pages;
    seq.remove();
    expect(cache.stats().pages.used).toBe(used - held);
    seq.remove();
    expect(cache.stats().pages.used).toBe(used - held);
    const s = step(1);
    expectCode(() => seq.kept(0), 'KVSQ_DISPOSED');
    expectCode(() => seq.slots(0), 'KVSQ_DISPOSED');
    expectCode(() => seq.stats(), 'KVSQ_DISPOSED');
    expectCode(() => seq.prefill(1, good.q, good.k, good.v), 'KVSQ_DISPOSED');
    expectCode(() => cache.decode(0, [seq], s.q, s.k, s.v), 'KVSQ_DISPOSED');
    expectCode(() => cache.attend(0, [seq], s.q), 'KVSQ_DISPOSED');
    expect(cache.size).toBe(1);
  });

  it('a disposed cache: every call throws KVSQ_DISPOSED, dispose is idempotent', () => {
    cache.dispose();
    cache.dispose();
    const s = step(1);
    expectCode(() => cache.addSequence(), 'KVSQ_DISPOSED');
    expectCode(() => cache.stats(), 'KVSQ_DISPOSED');
    expectCode(() => seq.kept(0), 'KVSQ_DISPOSED');
    expectCode(() => seq.stats(), 'KVSQ_DISPOSED');
    expectCode(() => fresh.prefill(0, good.q, good.k, good.v), 'KVSQ_DISPOSED');
    expectCode(() => cache.decode(0, [seq], s.q, s.k, s.v), 'KVSQ_DISPOSED');
    expectCode(() => cache.attend(0, [seq], s.q), 'KVSQ_DISPOSED');
    seq.remove(); // no-op: already removed by dispose
  });
});

// ---------------------------------------------------------------- pool exhaustion and freeing

describe('PagedKVCache: pool exhaustion and freeing', () => {
  it('prefill that does not fit: KVSQ_OOM, stats() and kept() exactly as before; fits after a remove', () => {
    // 2 layers, 2 KV heads, pages of 4: a prompt of 30 needs 8 pages per head uncompressed.
    const cache = new PagedKVCache({ layers: 2, kvHeads: 2, qHeads: 2, headDim: 8, pageSize: 4, pages: 36 });
    const p = prompt(2, 2, 30, 8);
    try {
      const a = cache.addSequence();
      a.prefill(0, p.q, p.k, p.v);
      a.prefill(1, p.q, p.k, p.v); // 32 pages used, 4 free
      const b = cache.addSequence({ prefill: new StreamingLLM({ budget: 12, sinks: 2 }) }); // 3 pages per head: 6 > 4
      const before = snapshot(cache, [a, b]);
      expectCode(() => b.prefill(0, p.q, p.k, p.v), 'KVSQ_OOM');
      expect(snapshot(cache, [a, b])).toEqual(before);
      expect(b.kept(0)).toEqual([]);
      expect(b.promptLength).toBe(-1);
      // A smaller prompt still fits, and a failed layer can be retried after freeing.
      a.remove();
      expect(cache.stats().pages.used).toBe(0);
      b.prefill(0, p.q, p.k, p.v);
      expect(cache.stats().pages.used).toBe(6);
      expect(Array.from(b.kept(0)[1])).toEqual([0, 1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]);
    } finally {
      p.dispose();
      cache.dispose();
    }
  });

  it('decode that needs a page the pool does not have: KVSQ_OOM, nothing changes', () => {
    const cache = new PagedKVCache({ layers: 1, kvHeads: 2, qHeads: 4, headDim: 8, pageSize: 4, pages: 4 });
    const p = prompt(4, 2, 8, 8); // 2 pages per head: the pool is full
    try {
      const a = cache.addSequence();
      a.prefill(0, p.q, p.k, p.v);
      const before = snapshot(cache, [a]);
      const q = Tensor.from(rand(4 * 8), [1, 4, 8]);
      const kv = Tensor.from(rand(2 * 8), [1, 2, 8]);
      expectCode(() => cache.decode(0, [a], q, kv, kv), 'KVSQ_OOM');
      expect(snapshot(cache, [a])).toEqual(before);
      expect(a.length(0)).toBe(8);
      // The attention over the unchanged cache still works.
      cache.attend(0, [a], q).dispose();
      q.dispose();
      kv.dispose();
    } finally {
      p.dispose();
      cache.dispose();
    }
  });

  test('a decode step whose policy fails leaves the cache exactly as it was', () => {
    const cache = new PagedKVCache({ layers: 1, kvHeads: 2, qHeads: 2, headDim: 8, pageSize: 4, pages: 20 });
    const p = prompt(2, 2, 4, 8);
    try {
      const bad = { name: 'bad', params: {}, accumulate: null, wantsPrefillScores: false, quest: null, evict: () => [99, 99] };
      const good = cache.addSequence();
      const s = cache.addSequence({ decode: bad });
      good.prefill(0, p.q, p.k, p.v);
      s.prefill(0, p.q, p.k, p.v);
      const before = snapshot(cache, [good, s]);
      const q = Tensor.from(rand(2 * 2 * 8), [2, 2, 8]);
      const kv = Tensor.from(rand(2 * 2 * 8), [2, 2, 8]);
      expectCode(() => cache.decode(0, [good, s], q, kv, kv), 'KVSQ_STATE');
      q.dispose();
      kv.dispose();
      expect(snapshot(cache, [good, s])).toEqual(before);
    } finally {
      p.dispose();
      cache.dispose();
    }
  });

  it('remove() returns every page of a sequence, whatever it held', () => {
    const cache = new PagedKVCache({ layers: 3, kvHeads: 2, qHeads: 4, headDim: 16, pageSize: 8, pages: 200 });
    const seqs: Sequence[] = [];
    try {
      const pols = [undefined, new SnapKV({ budget: 30, window: 8 }), new StreamingLLM({ budget: 20 }), new H2O({ heavy: 10, recent: 10 })];
      for (const pol of pols) {
        const s = cache.addSequence({ prefill: pol, decode: pol instanceof H2O ? pol : undefined });
        const L = randInt(40, 90);
        for (let l = 0; l < 3; l++) {
          const p = prompt(4, 2, L, 16);
          s.prefill(l, p.q, p.k, p.v);
          p.dispose();
        }
        seqs.push(s);
      }
      // A few decode steps on layer 0 for all of them.
      for (let i = 0; i < 20; i++) {
        const q = Tensor.from(rand(4 * 4 * 16), [4, 4, 16]);
        const kv = Tensor.from(rand(4 * 2 * 16), [4, 2, 16]);
        cache.decode(0, seqs, q, kv, kv).dispose();
        q.dispose();
        kv.dispose();
      }
      const total = seqs.reduce((n, s) => n + s.stats().pages, 0);
      expect(cache.stats().pages.used).toBe(total);
      for (const s of [seqs[2], seqs[0], seqs[3], seqs[1]]) {
        const used = cache.stats().pages.used;
        const held = s.stats().pages;
        expect(held).toBeGreaterThan(0);
        s.remove();
        expect(cache.stats().pages.used).toBe(used - held);
      }
      expect(cache.stats().pages.used).toBe(0);
      expect(cache.stats().pages.free).toBe(200);
      expect(cache.stats().bytes.held).toBe(0);
      expect(cache.stats().sequences).toBe(0);
      expect(cache.size).toBe(0);
    } finally {
      cache.dispose();
    }
  });
});

// ---------------------------------------------------------------- attention over the compressed cache

/** Exact attention of q [B, Hq, D] over K/V rows `pos` of each KV head (float64). */
function attendRef(q: Float32Array, b: number, Hq: number, D: number, kv: { k: Float32Array; v: Float32Array; L: number }, kept: Int32Array[], Hkv: number): Float64Array {
  const g = Hq / Hkv;
  const s = 1 / Math.sqrt(D);
  const out = new Float64Array(Hq * D);
  for (let h = 0; h < Hq; h++) {
    const j = Math.floor(h / g);
    const pos = kept[j];
    const z = new Float64Array(pos.length);
    let m = -Infinity;
    pos.forEach((t, i) => {
      let dot = 0;
      for (let x = 0; x < D; x++) dot += q[(b * Hq + h) * D + x] * kv.k[(j * kv.L + t) * D + x];
      z[i] = s * dot;
      m = Math.max(m, z[i]);
    });
    let sum = 0;
    for (let i = 0; i < z.length; i++) sum += (z[i] = Math.exp(z[i] - m));
    pos.forEach((t, i) => {
      for (let x = 0; x < D; x++) out[h * D + x] += (z[i] / sum) * kv.v[(j * kv.L + t) * D + x];
    });
  }
  return out;
}

describe('PagedKVCache: attention over the compressed cache', () => {
  const dtypes: FDType[] = ['f16', 'bf16', 'f32'];
  it.each(dtypes)('attend() equals exact attention over the kept positions (%s storage)', (dtype) => {
    const Hkv = 2;
    const Hq = 8;
    const D = 40;
    const NL = 2;
    const cache = new PagedKVCache({ layers: NL, kvHeads: Hkv, qHeads: Hq, headDim: D, dtype, pageSize: 16, pages: 400 });
    try {
      const pols = [new SnapKV({ budget: 70, window: 16 }), new H2O({ heavy: 20, recent: 13 }), undefined, new StreamingLLM({ ratio: 0.3 })];
      const Ls = [300, 211, 17, 1];
      const seqs: Sequence[] = [];
      const data: { k: Float32Array; v: Float32Array; L: number }[][] = [];
      pols.forEach((pol, i) => {
        const s = cache.addSequence({ prefill: pol });
        data.push([]);
        for (let l = 0; l < NL; l++) {
          const p = prompt(Hq, Hkv, Ls[i], D);
          s.prefill(l, p.q, p.k, p.v);
          data[i].push({ k: R.rounded(p.k.toFloat32(), dtype), v: R.rounded(p.v.toFloat32(), dtype), L: Ls[i] });
          p.dispose();
        }
        seqs.push(s);
      });
      for (let l = 0; l < NL; l++) {
        // Batches in a different order and a subset.
        for (const batch of [[0, 1, 2, 3], [3, 1], [2]]) {
          const B = batch.length;
          const qd = rand(B * Hq * D, -2, 2);
          const q = Tensor.from(qd, [B, Hq, D]);
          const o = cache.attend(l, batch.map((i) => seqs[i]), q);
          expect(o.shape).toEqual([B, Hq, D]);
          expect(o.dtype).toBe('f32');
          const got = o.toFloat32();
          o.dispose();
          q.dispose();
          batch.forEach((i, b) => {
            const want = attendRef(qd, b, Hq, D, data[i][l], seqs[i].kept(l), Hkv);
            for (let x = 0; x < Hq * D; x++) {
              if (!(Math.abs(got[b * Hq * D + x] - want[x]) <= 1e-5)) throw new Error(`seq ${i} layer ${l} [${x}]: got ${got[b * Hq * D + x]}, want ${want[x]}`);
            }
          });
        }
      }
    } finally {
      cache.dispose();
    }
  });

  it('decode appends: attend after steps covers the kept prompt positions and the new tokens', () => {
    const Hkv = 2;
    const Hq = 4;
    const D = 16;
    const L = 100;
    const dtype = 'f16';
    const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, dtype, pageSize: 8, pages: 100 });
    try {
      const s = cache.addSequence({ prefill: new SnapKV({ budget: 30, window: 8 }) });
      const p = prompt(Hq, Hkv, L, D);
      s.prefill(0, p.q, p.k, p.v);
      // The full K/V over positions 0 .. L + steps - 1.
      const steps = 13;
      const k = new Float32Array(Hkv * (L + steps) * D);
      const v = new Float32Array(Hkv * (L + steps) * D);
      const pk = R.rounded(p.k.toFloat32(), dtype);
      const pv = R.rounded(p.v.toFloat32(), dtype);
      for (let j = 0; j < Hkv; j++) {
        k.set(pk.subarray(j * L * D, (j + 1) * L * D), j * (L + steps) * D);
        v.set(pv.subarray(j * L * D, (j + 1) * L * D), j * (L + steps) * D);
      }
      p.dispose();
      for (let i = 0; i < steps; i++) {
        const qd = rand(Hq * D);
        const kd = R.rounded(rand(Hkv * D), dtype);
        const vd = R.rounded(rand(Hkv * D), dtype);
        for (let j = 0; j < Hkv; j++) {
          k.set(kd.subarray(j * D, (j + 1) * D), (j * (L + steps) + L + i) * D);
          v.set(vd.subarray(j * D, (j + 1) * D), (j * (L + steps) + L + i) * D);
        }
        const q = Tensor.from(qd, [1, Hq, D]);
        const kt = Tensor.from(kd, [1, Hkv, D]);
        const vt = Tensor.from(vd, [1, Hkv, D]);
        const o = cache.decode(0, [s], q, kt, vt);
        // The step's own output: attention over the kept prompt plus every token so far.
        const kept = s.kept(0);
        for (const h of kept) expect(h[h.length - 1]).toBe(L + i);
        const want = attendRef(qd, 0, Hq, D, { k, v, L: L + steps }, kept, Hkv);
        const got = o.toFloat32();
        for (let x = 0; x < Hq * D; x++) expect(Math.abs(got[x] - want[x])).toBeLessThanOrEqual(1e-5);
        [q, kt, vt, o].forEach((t) => t.dispose());
      }
      expect(s.length(0)).toBe(L + steps);
      expect(s.kept(0).map((h) => h.length)).toEqual([30 + steps, 30 + steps]);
      const qd = rand(Hq * D);
      const q = Tensor.from(qd, [1, Hq, D]);
      const o = cache.attend(0, [s], q);
      const want = attendRef(qd, 0, Hq, D, { k, v, L: L + steps }, s.kept(0), Hkv);
      const got = o.toFloat32();
      for (let x = 0; x < Hq * D; x++) expect(Math.abs(got[x] - want[x])).toBeLessThanOrEqual(1e-5);
      q.dispose();
      o.dispose();
    } finally {
      cache.dispose();
    }
  });
});

// ---------------------------------------------------------------- H2O decode against a float64 model

describe('H2O decode steps against a float64 model of methods.md', () => {
  // Per KV head: the kept (position, score) pairs, scores from the prefill
  // column sums; each step appends the new token with score 0, attends over
  // the kept tokens plus the new one (its output checked too), adds the
  // group-reduced probabilities, and beyond heavy + recent evicts the
  // lowest-scoring token older than the last `recent` positions (ties: lower
  // position). Accumulated fp32 scores can near-tie: a different eviction is
  // accepted only between scores within 1e-4 relative, and the model then
  // follows the library's choice.
  const cases: ['mean' | 'sum' | 'max', number, number, number][] = [
    ['mean', 2, 80, 1],
    ['sum', 2, 61, 2],
    ['max', 1, 50, 4],
  ];
  it.each(cases)('gqa %s, g %d, L %d, Hkv %d', (gqa, g, L, Hkv) => {
    const Hq = g * Hkv;
    const D = 16;
    const dtype = 'f16';
    const o = { heavy: 7, recent: 5, gqa };
    const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, dtype, pageSize: 4, pages: 200 });
    try {
      const h2o = new H2O(o);
      const s = cache.addSequence({ prefill: h2o, decode: h2o });
      const p = prompt(Hq, Hkv, L, D);
      s.prefill(0, p.q, p.k, p.v);
      const d = { Hq, Hkv, L, D };
      const qr = R.rounded(p.q.toFloat32(), dtype);
      const K = new Map<string, Float32Array>();
      const V = new Map<string, Float32Array>();
      const pk = R.rounded(p.k.toFloat32(), dtype);
      const pv = R.rounded(p.v.toFloat32(), dtype);
      for (let j = 0; j < Hkv; j++)
        for (let t = 0; t < L; t++) {
          K.set(`${j}:${t}`, pk.subarray((j * L + t) * D, (j * L + t + 1) * D));
          V.set(`${j}:${t}`, pv.subarray((j * L + t) * D, (j * L + t + 1) * D));
        }
      p.dispose();
      const ref = R.h2oRef(qr, pk, d, o);
      expect(R.compareKept(s.kept(0), ref, 2e-5).problems).toEqual([]);
      // Model state from the library's prefill choice (near-ties aside, the same).
      const model = s.kept(0).map((h, j) => Array.from(h).map((t) => ({ pos: t, score: ref.S[j][t] })));
      let resyncs = 0;
      const scale = 1 / Math.sqrt(D);
      for (let step = 0; step < 40; step++) {
        const newPos = L + step;
        const qd = rand(Hq * D, -2, 2);
        const kd = R.rounded(rand(Hkv * D), dtype);
        const vd = R.rounded(rand(Hkv * D), dtype);
        for (let j = 0; j < Hkv; j++) {
          K.set(`${j}:${newPos}`, kd.subarray(j * D, (j + 1) * D));
          V.set(`${j}:${newPos}`, vd.subarray(j * D, (j + 1) * D));
          model[j].push({ pos: newPos, score: 0 });
        }
        const q = Tensor.from(qd, [1, Hq, D]);
        const kt = Tensor.from(kd, [1, Hkv, D]);
        const vt = Tensor.from(vd, [1, Hkv, D]);
        const out = cache.decode(0, [s], q, kt, vt);
        const got = out.toFloat32();
        [q, kt, vt, out].forEach((t) => t.dispose());
        // Attention and the score update.
        const add = model.map((m) => new Float64Array(m.length).fill(gqa === 'max' ? -Infinity : 0));
        for (let h = 0; h < Hq; h++) {
          const j = Math.floor(h / g);
          const z = model[j].map(({ pos }) => {
            const kv = K.get(`${j}:${pos}`)!;
            let dot = 0;
            for (let x = 0; x < D; x++) dot += qd[h * D + x] * kv[x];
            return scale * dot;
          });
          const m = Math.max(...z);
          const e = z.map((x) => Math.exp(x - m));
          const sum = e.reduce((a, b) => a + b, 0);
          const oh = new Float64Array(D);
          model[j].forEach(({ pos }, i) => {
            const pr = e[i] / sum;
            const vv = V.get(`${j}:${pos}`)!;
            for (let x = 0; x < D; x++) oh[x] += pr * vv[x];
            add[j][i] = gqa === 'max' ? Math.max(add[j][i], pr) : add[j][i] + pr;
          });
          for (let x = 0; x < D; x++) if (!(Math.abs(got[h * D + x] - oh[x]) <= 1e-5)) throw new Error(`step ${step} head ${h}: output ${got[h * D + x]} vs ${oh[x]}`);
        }
        model.forEach((m, j) => m.forEach((e, i) => (e.score += gqa === 'mean' ? add[j][i] / g : add[j][i])));
        // Eviction.
        const lib = s.kept(0);
        model.forEach((m, j) => {
          if (m.length > o.heavy + o.recent) {
            let best = -1;
            m.forEach((e, i) => {
              if (e.pos > newPos - o.recent) return;
              if (best < 0 || e.score < m[best].score || (e.score === m[best].score && e.pos < m[best].pos)) best = i;
            });
            const libSet = new Set(lib[j]);
            const libGone = m.findIndex((e) => !libSet.has(e.pos));
            if (libGone !== best) {
              const a = m[libGone]?.score;
              const b = m[best].score;
              if (a === undefined || !(Math.abs(a - b) <= 1e-4 * Math.max(a, b))) throw new Error(`step ${step} head ${j}: evicted position ${m[libGone]?.pos} (model score ${a}), the model evicts ${m[best].pos} (score ${b})`);
              resyncs++;
              best = libGone;
            }
            m.splice(best, 1);
          }
          expect(Array.from(lib[j])).toEqual(m.map((e) => e.pos).sort((x, y) => x - y));
        });
      }
      expect(resyncs).toBeLessThanOrEqual(3);
      expect(s.kept(0).map((h) => h.length)).toEqual(new Array(Hkv).fill(o.heavy + o.recent));
    } finally {
      cache.dispose();
    }
  });
});

// ---------------------------------------------------------------- stats

describe('PagedKVCache: stats()', () => {
  it('accounting: bytes and tokens agree with pages and kept positions', () => {
    const cache = new PagedKVCache({ layers: 2, kvHeads: 3, qHeads: 6, headDim: 16, dtype: 'bf16', pageSize: 8, pages: 300 });
    try {
      const a = cache.addSequence({ prefill: new SnapKV({ budget: 40, window: 8 }) });
      const b = cache.addSequence();
      const pa = prompt(6, 3, 203, 16);
      const pb = prompt(6, 3, 50, 16);
      a.prefill(0, pa.q, pa.k, pa.v);
      a.prefill(1, pa.q, pa.k, pa.v);
      b.prefill(1, pb.q, pb.k, pb.v);
      pa.dispose();
      pb.dispose();
      const st = cache.stats();
      const bpp = 2 * 8 * 16 * 2 + 2 * 16 * 2 + 4 * 8; // K, V, Quest kmin/kmax, scores
      expect(st.pages.bytesPerPage).toBe(bpp);
      expect(st.pages.pageSize).toBe(8);
      expect(st.pages.total).toBe(300);
      expect(st.pages.used).toBe(2 * 3 * 5 + 3 * 7);
      expect(st.pages.free).toBe(300 - st.pages.used);
      expect(st.bytes.pool).toBe(300 * bpp);
      expect(st.bytes.held).toBe(st.pages.used * bpp);
      expect(st.bytes.full).toBe((2 * 3 * 26 + 3 * 7) * bpp);
      expect(st.bytes.saved).toBe(st.bytes.full - st.bytes.held);
      expect(st.sequences).toBe(2);
      expect(st.tokens).toEqual([
        [40, 40, 40],
        [90, 90, 90],
      ]);
      const sa = a.stats();
      expect(sa).toMatchObject({ id: a.id, promptLength: 203, pages: 30, bytesHeld: 30 * bpp, bytesFull: 156 * bpp, bytesSaved: 126 * bpp });
      expect(sa.tokens).toEqual([
        [40, 40, 40],
        [40, 40, 40],
      ]);
      const sb = b.stats();
      expect(sb.tokens).toEqual([[], [50, 50, 50]]);
      expect(sb.bytesSaved).toBe(0);
    } finally {
      cache.dispose();
    }
  });

  it('acceptance: SnapKV at budget 1024 on a 32K prompt frees >= 95% of the pages', () => {
    const Hkv = 8;
    const Hq = 32;
    const D = 128;
    const L = 32768;
    const P = 16;
    const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, qHeads: Hq, headDim: D, dtype: 'f16', pageSize: P, pages: Hkv * (L / P) + 64 });
    // f16 bit patterns of random values in [-1, 1]; only the window rows of q matter for the scores.
    const tab = Tensor.from(rand(4096), [4096], { dtype: 'f16' });
    const bits = tab.toArray() as Uint16Array;
    tab.dispose();
    const fill = (a: Uint16Array, from = 0, to = a.length) => {
      for (let i = from; i < to; i++) a[i] = bits[(Math.random() * 4096) | 0];
      return a;
    };
    const qb = new Uint16Array(Hq * L * D);
    for (let h = 0; h < Hq; h++) fill(qb, (h * L + L - 32) * D, (h + 1) * L * D);
    const q = Tensor.from(qb, [Hq, L, D], { dtype: 'f16' });
    const k = Tensor.from(fill(new Uint16Array(Hkv * L * D)), [Hkv, L, D], { dtype: 'f16' });
    const v = Tensor.from(new Uint16Array(Hkv * L * D), [Hkv, L, D], { dtype: 'f16' });
    try {
      const s = cache.addSequence({ prefill: new SnapKV({ budget: 1024 }) });
      s.prefill(0, q, k, v);
      for (const h of s.kept(0)) {
        expect(h.length).toBe(1024);
        expect(h[1023]).toBe(L - 1);
        expect(h[1024 - 32]).toBe(L - 32);
      }
      const st = s.stats();
      const frac = st.bytesSaved / st.bytesFull;
      console.log(`SnapKV budget 1024 on a 32K prompt (Hkv 8, Hq 32, D 128, f16): pages ${st.pages} of ${Hkv * (L / P)}, bytesSaved / bytesFull = ${frac.toFixed(4)}`);
      expect(st.bytesFull).toBe(Hkv * (L / P) * cache.stats().pages.bytesPerPage);
      expect(st.pages).toBe(Hkv * (1024 / P));
      expect(frac).toBeGreaterThanOrEqual(0.95);
      expect(cache.stats().pages.used).toBe(st.pages);
    } finally {
      [q, k, v].forEach((t) => t.dispose());
      cache.dispose();
    }
  });
});
