// Synthetic traces (lib/eval/generator.ts): reproducible, the documented
// shapes, and the planted structure visible under full attention. No native
// code: the generator builds the Trace object itself.
import {
  applyRope,
  attentionMassKept,
  fullAttention,
  generateTrace,
  GeneratorOptions,
  needleRecall,
  promptAttention,
  TraceTruth,
} from '../lib/eval/generator';
import { KvsqError } from '../lib/errors';
import type { Trace } from '../lib/trace';

const SMALL: GeneratorOptions = { layers: 2, qHeads: 8, kvHeads: 2, headDim: 32, seqLen: 512, decodeSteps: 6, needles: 6, shots: 4 };
const MEDIUM: GeneratorOptions = { layers: 2, qHeads: 8, kvHeads: 4, headDim: 128, seqLen: 1024, decodeSteps: 8, needles: 8 };

const f32 = (e: { data: unknown }) => e.data as Float32Array;
const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

function row(t: Trace, which: 'q' | 'k' | 'dq' | 'dk', layer: number, head: number, pos: number): Float32Array {
  const H = which === 'q' || which === 'dq' ? t.numQHeads : t.numKvHeads;
  const n = which === 'q' || which === 'k' ? t.seqLen : t.steps;
  const D = t.headDim;
  const off = ((layer * H + head) * n + pos) * D;
  return f32(t[which]!).subarray(off, off + D);
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};
const cosine = (a: ArrayLike<number>, b: ArrayLike<number>) => dot(a, b) / Math.sqrt(dot(a, a) * dot(b, b));

/** Mean per-position full-attention mass (over layers, steps, heads) of the positions in `set`, in units of the uniform 1/n. */
function relativeMass(t: Trace, pick: (n: number) => number[]): number {
  let acc = 0;
  let cnt = 0;
  for (let l = 0; l < t.numLayers; l++)
    for (let s = 0; s < t.steps; s++) {
      const p = fullAttention(t, l, s);
      const n = t.seqLen + s + 1;
      const set = pick(n);
      for (let h = 0; h < t.numQHeads; h++) {
        let m = 0;
        for (const x of set) m += p[h * n + x];
        acc += (m / set.length) * n;
        cnt++;
      }
    }
  return acc / cnt;
}

/** Needles whose querying decode steps attend (group mean over the KV group's query heads) most to the needle among prompt positions. */
function needleTop1(t: Trace, truth: TraceTruth): { hit: number; total: number; meanMass: number } {
  const g = t.numQHeads / t.numKvHeads;
  const L = t.seqLen;
  let hit = 0;
  let total = 0;
  let mass = 0;
  for (const nd of truth.needles)
    for (const s of nd.steps) {
      const p = fullAttention(t, nd.layer, s);
      const n = L + s + 1;
      const m = new Float64Array(L);
      for (let r = 0; r < g; r++) for (let x = 0; x < L; x++) m[x] += p[(nd.kvHead * g + r) * n + x] / g;
      let best = 0;
      for (let x = 1; x < L; x++) if (m[x] > m[best]) best = x;
      total++;
      mass += m[nd.position];
      if (best === nd.position) hit++;
    }
  return { hit, total, meanMass: mass / total };
}

describe('generateTrace: reproducible and well-formed', () => {
  it('same seed gives identical bytes and truth; another seed differs', () => {
    const a = generateTrace({ ...SMALL, seed: 7 });
    const b = generateTrace({ ...SMALL, seed: 7 });
    const c = generateTrace({ ...SMALL, seed: 8 });
    for (const n of ['q', 'k', 'v', 'dq', 'dk', 'dv'] as const) {
      expect(bytesOf(f32(a.trace[n]!)).equals(bytesOf(f32(b.trace[n]!)))).toBe(true);
      expect(bytesOf(f32(a.trace[n]!)).equals(bytesOf(f32(c.trace[n]!)))).toBe(false);
    }
    expect(b.truth).toEqual(a.truth);
    expect(b.trace.metadata).toEqual(a.trace.metadata);
    expect(c.truth.needles.map((n) => n.position)).not.toEqual(a.truth.needles.map((n) => n.position));
  });

  it('shapes, dtype and the Trace fields; all values finite', () => {
    const { trace: t, truth } = generateTrace(SMALL);
    expect(t).toMatchObject({ dtype: 'f32', numLayers: 2, numQHeads: 8, numKvHeads: 2, seqLen: 512, headDim: 32, steps: 6 });
    expect(t.q).toMatchObject({ dtype: 'F32', shape: [2, 8, 512, 32] });
    expect(t.k.shape).toEqual([2, 2, 512, 32]);
    expect(t.v.shape).toEqual([2, 2, 512, 32]);
    expect(t.dq!.shape).toEqual([2, 8, 6, 32]);
    expect(t.dk!.shape).toEqual([2, 2, 6, 32]);
    expect(t.dv!.shape).toEqual([2, 2, 6, 32]);
    for (const n of ['q', 'k', 'v', 'dq', 'dk', 'dv'] as const) {
      const d = f32(t[n]!);
      expect(d).toBeInstanceOf(Float32Array);
      expect(d.length).toBe(t[n]!.shape.reduce((x, y) => x * y, 1));
      expect(d.every(Number.isFinite)).toBe(true);
    }
    expect(truth.sinks).toBe(4);
    expect(truth.options).toMatchObject({ seed: 1, ropeTheta: 10000, heavyFraction: 0.02, window: 32, rope: true });
  });

  it('defaults: an 8B-like model with 4 layers (32/8 heads, D 128, L 4096, 16 steps, 8 needles, 6 shots); generation is fast and needles are retrieved', () => {
    const t0 = process.hrtime.bigint();
    const { trace: t, truth } = generateTrace();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    expect(t.q.shape).toEqual([4, 32, 4096, 128]);
    expect(t.dk!.shape).toEqual([4, 8, 16, 128]);
    expect(truth.needles).toHaveLength(8);
    expect(truth.shots).toHaveLength(6);
    expect(truth.heavy).toHaveLength(Math.round(0.02 * 4096));
    expect(ms).toBeLessThan(30000); // about 1.5 s on an idle core; generous for loaded CI machines
    const r = needleTop1(t, truth);
    if (process.env.KVSQ_GEN_REPORT) console.log(`defaults: generated in ${ms.toFixed(0)} ms; needles top-1 ${r.hit}/${r.total}, mean mass ${r.meanMass.toFixed(3)}`);
    expect(r.hit / r.total).toBeGreaterThanOrEqual(0.9);
  });

  it('decodeSteps 0: no dq/dk/dv, every needle is asked for by window queries', () => {
    const { trace: t, truth } = generateTrace({ ...SMALL, decodeSteps: 0 });
    expect(t.steps).toBe(0);
    expect(t.dq).toBeUndefined();
    expect(truth.needles.length).toBeGreaterThan(0);
    for (const nd of truth.needles) {
      expect(nd.steps).toEqual([]);
      expect(nd.windowQueried).toBe(true);
    }
    expect(() => fullAttention(t, 0, 0)).toThrow(expect.objectContaining({ code: 'KVSQ_RANGE' }));
  });

  it('tiny prompts still generate (no room for needles or shots)', () => {
    const { trace: t, truth } = generateTrace({ ...SMALL, seqLen: 8 });
    expect(t.seqLen).toBe(8);
    expect(truth.needles).toEqual([]);
    expect(truth.shots).toEqual([]);
    expect(t.metadata.shots).toBeUndefined();
  });

  it('truth is consistent: needles outside the last 2 windows, in range, not heavy; distinct querying rows per head', () => {
    const { trace: t, truth } = generateTrace({ ...MEDIUM, needles: 12 });
    const L = t.seqLen;
    const heavy = new Set(truth.heavy);
    expect(truth.needles).toHaveLength(12);
    expect(truth.heavy).toEqual([...truth.heavy].sort((a, b) => a - b));
    for (const x of truth.heavy) expect(x >= truth.sinks && x < L - truth.window).toBe(true);
    const seen = new Set<string>();
    for (const nd of truth.needles) {
      expect(nd.position).toBeGreaterThanOrEqual(truth.sinks);
      expect(nd.position).toBeLessThan(L - 2 * truth.window);
      expect(heavy.has(nd.position)).toBe(false);
      expect(nd.layer >= 0 && nd.layer < t.numLayers && nd.kvHead >= 0 && nd.kvHead < t.numKvHeads).toBe(true);
      expect(nd.steps.length).toBeGreaterThan(0);
      for (const s of nd.steps) {
        expect(s >= 0 && s < t.steps).toBe(true);
        const key = `${nd.layer}/${nd.kvHead}/d${s}`;
        expect(seen.has(key)).toBe(false);
        seen.add(key);
      }
      expect(nd.windowQueried).toBe(nd.windowQueries.length > 0);
      for (const p of nd.windowQueries) {
        expect(p >= L - truth.window && p < L).toBe(true);
        const key = `${nd.layer}/${nd.kvHead}/w${p}`;
        expect(seen.has(key)).toBe(false);
        seen.add(key);
      }
    }
    // About half the needles are also asked for by the observation window.
    const w = truth.needles.filter((n) => n.windowQueried).length;
    expect(w).toBe(6);
  });

  it('shots: metadata.shots is JSON [[s, e], ...], ascending, disjoint, inside the prompt middle, as truth.shots', () => {
    const { trace: t, truth } = generateTrace({ ...MEDIUM, shots: 6 });
    const shots = JSON.parse(t.metadata.shots) as Array<[number, number]>;
    expect(shots).toEqual(truth.shots);
    expect(shots).toHaveLength(6);
    let prev = truth.sinks;
    for (const [s, e] of shots) {
      expect(Number.isInteger(s) && Number.isInteger(e)).toBe(true);
      expect(s).toBeGreaterThanOrEqual(prev);
      expect(e).toBeGreaterThan(s);
      prev = e;
    }
    expect(shots[0][0]).toBeGreaterThanOrEqual(t.seqLen / 8);
    expect(prev).toBeLessThanOrEqual(t.seqLen - 2 * truth.window);
    expect(generateTrace({ ...SMALL, shots: 0 }).trace.metadata.shots).toBeUndefined();
  });

  it('invalid options are KvsqErrors with a code', () => {
    const cases: [GeneratorOptions, string][] = [
      [{ qHeads: 6, kvHeads: 4 }, 'KVSQ_RANGE'],
      [{ headDim: 33 }, 'KVSQ_RANGE'],
      [{ headDim: 4 }, 'KVSQ_RANGE'],
      [{ seqLen: 0 }, 'KVSQ_RANGE'],
      [{ layers: 1.5 }, 'KVSQ_ARG'],
      [{ seed: '1' as unknown as number }, 'KVSQ_ARG'],
      [{ seqLen: 16, sinks: 17 }, 'KVSQ_RANGE'],
      [{ heavyFraction: 2 }, 'KVSQ_RANGE'],
      [{ ropeTheta: NaN }, 'KVSQ_ARG'],
      [{ gains: { needle: -1 } }, 'KVSQ_RANGE'],
      [{ rope: 1 as unknown as boolean }, 'KVSQ_ARG'],
      [{ layers: 1000, seqLen: 2 ** 20 }, 'KVSQ_RANGE'],
    ];
    for (const [o, code] of cases) {
      let err: unknown;
      try {
        generateTrace({ ...SMALL, ...o });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(KvsqError);
      expect((err as KvsqError).code).toBe(code);
    }
  });
});

describe('generateTrace: RoPE', () => {
  it('q, k, dq and dk are the rope:false vectors rotated at their positions (rotate-half, pairs (i, i + D/2))', () => {
    const o = { ...SMALL, ropeTheta: 500000 };
    const { trace: r } = generateTrace(o);
    const { trace: raw } = generateTrace({ ...o, rope: false });
    expect(raw.metadata.rope).toBe('false');
    const D = r.headDim;
    const checks: Array<['q' | 'k' | 'dq' | 'dk', number, number, number, number]> = [
      ['q', 0, 3, 0, 0],
      ['q', 1, 5, 300, 300],
      ['q', 1, 7, 511, 511],
      ['k', 0, 1, 2, 2],
      ['k', 1, 0, 400, 400],
      ['dq', 1, 2, 3, 512 + 3],
      ['dk', 0, 1, 5, 512 + 5],
    ];
    for (const [which, l, h, i, pos] of checks) {
      const x = row(raw, which, l, h, i);
      const y = row(r, which, l, h, i);
      const want = applyRope(x, pos, 500000);
      for (let d = 0; d < D; d++) expect(y[d]).toBeCloseTo(want[d], 3);
      // Each pair (i, i + D/2) keeps its norm; at pos > 0 the fastest pair really turns.
      for (let p = 0; p < D / 2; p++) expect(Math.hypot(y[p], y[p + D / 2])).toBeCloseTo(Math.hypot(x[p], x[p + D / 2]), 3);
      if (pos > 0) expect(Math.abs(y[0] - x[0]) + Math.abs(y[D / 2] - x[D / 2])).toBeGreaterThan(1e-3);
    }
  });

  it('applyRope: the rotate-half formula; dot products depend only on the relative position', () => {
    const x = [1, 2, 3, 4, 5, 6, 7, 8];
    const y = [0.5, -1, 2, 0.25, -3, 1, 0, 2];
    const a = applyRope(x, 3, 10000);
    const ang = 3 * Math.pow(10000, -2 / 8); // pair 1: dims (1, 5)
    expect(a[1]).toBeCloseTo(2 * Math.cos(ang) - 6 * Math.sin(ang), 12);
    expect(a[5]).toBeCloseTo(6 * Math.cos(ang) + 2 * Math.sin(ang), 12);
    expect(Array.from(applyRope(x, 0))).toEqual(x);
    const d1 = dot(applyRope(x, 100), applyRope(y, 40));
    const d2 = dot(applyRope(x, 1100), applyRope(y, 1040));
    const d3 = dot(applyRope(x, 100), applyRope(y, 41));
    expect(d2).toBeCloseTo(d1, 9);
    expect(Math.abs(d3 - d1)).toBeGreaterThan(1e-3);
    // In the trace: q(p) . k(t) depends on p - t; the same pre-RoPE pair at shifted positions gives the same dot.
    const { trace: raw } = generateTrace({ ...SMALL, rope: false });
    const qv = row(raw, 'q', 0, 0, 200);
    const kv = row(raw, 'k', 0, 0, 150);
    expect(dot(applyRope(qv, 450), applyRope(kv, 400))).toBeCloseTo(dot(applyRope(qv, 200), applyRope(kv, 150)), 6);
  });
});

describe('generateTrace: planted structure under full attention', () => {
  // One medium trace shared by the structure tests.
  const { trace: t, truth } = generateTrace(MEDIUM);
  const L = t.seqLen;

  it('attention sinks: positions 0 .. sinks-1 get > 10x the mean per-position mass', () => {
    const sinks = relativeMass(t, () => [0, 1, 2, 3]);
    if (process.env.KVSQ_GEN_REPORT) console.log(`sinks: ${sinks.toFixed(1)}x the mean per-position mass`);
    expect(sinks).toBeGreaterThan(10);
  });

  it('heavy hitters get several times the mass of ordinary positions', () => {
    const heavy = relativeMass(t, () => truth.heavy);
    const special = new Set([...truth.heavy, ...truth.needles.map((n) => n.position)]);
    const ordinary: number[] = [];
    for (let x = truth.sinks; x < L - 64; x++) if (!special.has(x)) ordinary.push(x);
    const base = relativeMass(t, () => ordinary);
    if (process.env.KVSQ_GEN_REPORT) console.log(`heavy: ${heavy.toFixed(1)}x the mean, ${(heavy / base).toFixed(1)}x ordinary positions`);
    expect(heavy).toBeGreaterThan(1);
    expect(heavy / base).toBeGreaterThan(4);
    // Their column mass over all prompt queries is above average too (what H2O accumulates).
    let hv = 0;
    let all = 0;
    for (let p = L - 64; p < L; p += 4) {
      const a = promptAttention(t, 0, p);
      for (let h = 0; h < t.numQHeads; h++) {
        for (const x of truth.heavy) hv += a[h * (p + 1) + x];
        for (let x = 0; x <= p; x++) all += a[h * (p + 1) + x];
      }
    }
    expect(hv / truth.heavy.length / (all / L)).toBeGreaterThan(3);
  });

  it('recency: the last 32 positions before a decode step get > 3x the mean per-position mass', () => {
    const recent = relativeMass(t, (n) => Array.from({ length: 32 }, (_, i) => n - 32 + i));
    if (process.env.KVSQ_GEN_REPORT) console.log(`recency: last 32 get ${recent.toFixed(1)}x the mean`);
    expect(recent).toBeGreaterThan(3);
  });

  it('needles: the querying decode step of the KV group attends most to the needle (>= 90%)', () => {
    const r = needleTop1(t, truth);
    if (process.env.KVSQ_GEN_REPORT) console.log(`needles: top-1 ${r.hit}/${r.total}, mean mass ${r.meanMass.toFixed(3)}`);
    expect(r.total).toBeGreaterThanOrEqual(truth.needles.length);
    expect(r.hit / r.total).toBeGreaterThanOrEqual(0.9);
    expect(r.meanMass).toBeGreaterThan(0.5);
  });

  it('needles: window queries that ask for a needle attend most to it; other window rows do not', () => {
    const g = t.numQHeads / t.numKvHeads;
    let hit = 0;
    let total = 0;
    for (const nd of truth.needles.filter((n) => n.windowQueried)) {
      for (const p of nd.windowQueries) {
        const a = promptAttention(t, nd.layer, p);
        const m = new Float64Array(p + 1);
        for (let r = 0; r < g; r++) for (let x = 0; x <= p; x++) m[x] += a[(nd.kvHead * g + r) * (p + 1) + x];
        let best = 0;
        for (let x = 1; x <= p; x++) if (m[x] > m[best]) best = x;
        total++;
        if (best === nd.position) hit++;
      }
      // A window row that does not ask for it gives it no special mass.
      const other = L - 1 - [...Array(truth.window).keys()].find((i) => !nd.windowQueries.includes(L - 1 - i))!;
      const a = promptAttention(t, nd.layer, other);
      expect(a[nd.kvHead * g * (other + 1) + nd.position]).toBeLessThan(0.2);
    }
    expect(total).toBeGreaterThan(0);
    expect(hit / total).toBeGreaterThanOrEqual(0.9);
  });

  it('needle values are distinctive (4x the norm of ordinary values)', () => {
    const vnorm = (l: number, j: number, x: number) => {
      const o = ((l * t.numKvHeads + j) * L + x) * t.headDim;
      return Math.sqrt(dot(f32(t.v).subarray(o, o + t.headDim), f32(t.v).subarray(o, o + t.headDim)));
    };
    for (const nd of truth.needles) {
      const ordinary = vnorm(nd.layer, nd.kvHead, nd.position + 1);
      expect(vnorm(nd.layer, nd.kvHead, nd.position)).toBeGreaterThan(2 * ordinary);
    }
  });

  it('GQA: query heads of one group are similar but not identical; across groups they are not', () => {
    const g = t.numQHeads / t.numKvHeads;
    let same = 0;
    let cross = 0;
    let ns = 0;
    let nc = 0;
    for (let p = 100; p < L; p += 97)
      for (let h1 = 0; h1 < t.numQHeads; h1++)
        for (let h2 = h1 + 1; h2 < t.numQHeads; h2++) {
          const c = cosine(row(t, 'q', 1, h1, p), row(t, 'q', 1, h2, p));
          if (Math.floor(h1 / g) === Math.floor(h2 / g)) {
            same += c;
            ns++;
            expect(c).toBeLessThan(0.99);
          } else {
            cross += c;
            nc++;
          }
        }
    if (process.env.KVSQ_GEN_REPORT) console.log(`GQA: mean cosine ${(same / ns).toFixed(2)} within a group, ${(cross / nc).toFixed(2)} across`);
    expect(same / ns).toBeGreaterThan(0.5);
    expect(Math.abs(cross / nc)).toBeLessThan(0.2);
  });

  it('needleRecall and attentionMassKept', () => {
    const all = Array.from({ length: L }, (_, i) => i);
    expect(needleRecall(() => all, truth)).toBe(1);
    expect(needleRecall(() => [], truth)).toBe(0);
    const first = truth.needles[0];
    expect(needleRecall((l, j) => (l === first.layer && j === first.kvHead ? [first.position] : []), truth)).toBeCloseTo(1 / truth.needles.length, 12);
    expect(needleRecall(() => [], { ...truth, needles: [] })).toBe(1);
    expect(attentionMassKept(t, 1, 0, () => all)).toBeCloseTo(1, 9);
    expect(attentionMassKept(t, 1, 0, () => [])).toBe(0);
    // Sinks + the last 64 hold far more than their share (68 / 1024 positions), averaged over the decode steps.
    const stream = [0, 1, 2, 3, ...Array.from({ length: 64 }, (_, i) => L - 64 + i)];
    let m = 0;
    for (let s = 0; s < t.steps; s++) m += attentionMassKept(t, 1, s, () => stream) / t.steps;
    if (process.env.KVSQ_GEN_REPORT) console.log(`sinks + last 64 (6.6% of the prompt) hold ${(m * 100).toFixed(1)}% of the prompt mass at layer 1`);
    expect(m).toBeGreaterThan(3 * (68 / L));
    // fullAttention rows are distributions.
    const p = fullAttention(t, 0, 2);
    for (let h = 0; h < t.numQHeads; h++) {
      let s = 0;
      for (let x = 0; x < L + 3; x++) s += p[h * (L + 3) + x];
      expect(s).toBeCloseTo(1, 12);
    }
  });
});
