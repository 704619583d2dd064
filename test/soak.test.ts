/**
 * Soak: many Tensor create/dispose cycles and many cache
 * addSequence/prefill/decode/remove cycles. Native memory must come back:
 * process RSS after the run is within 20 MB of RSS after a warm-up, and the
 * page pool's accounting returns to zero after every cycle.
 *
 * Counts: KVSQ_SOAK_FULL=1 runs the issue's full counts (100,000 tensor
 * cycles, 1,000 cache cycles); the default (CI, `npm test`) runs 20,000 and
 * 200. KVSQ_SOAK_TENSORS / KVSQ_SOAK_CACHE override either count.
 *
 * RSS is noisy (the V8 heap, jest's own allocations, glibc arenas that keep
 * freed 1 MB blocks once the dynamic mmap threshold has risen), so: the work
 * runs in ROUNDS equal rounds after a warm-up round, RSS is sampled after
 * each (median of 5 samples, each after a full garbage collection: V8's gc,
 * exposed at run time through v8.setFlagsFromString, then a timer turn so
 * N-API finalizers run), and the assertion is on the growth from the end of
 * the first round to the highest later sample. An allocator plateau shows
 * up in the first round and is not growth; a leak grows with every round.
 */
import * as v8 from 'v8';
import * as vm from 'vm';
import { PagedKVCache, Tensor, SnapKV, H2O, StreamingLLM, Quest, PyramidKV } from '../lib';
import type { DType, PrefillPolicy, DecodePolicy } from '../lib';

const FULL = process.env.KVSQ_SOAK_FULL === '1';
const TENSOR_CYCLES = Number(process.env.KVSQ_SOAK_TENSORS ?? (FULL ? 100_000 : 20_000));
const CACHE_CYCLES = Number(process.env.KVSQ_SOAK_CACHE ?? (FULL ? 1_000 : 200));
const MB = 1024 * 1024;
const LIMIT_MB = 20;
const ROUNDS = 5;

v8.setFlagsFromString('--expose-gc');
const gc: () => void = (globalThis as { gc?: () => void }).gc ?? (vm.runInNewContext('gc') as () => void);

function rss(): number {
  return process.memoryUsage().rss;
}
function median(a: number[]): number {
  const s = [...a].sort((x, y) => x - y);
  return s[s.length >> 1];
}
async function settledRss(samples = 5): Promise<number> {
  const out: number[] = [];
  for (let i = 0; i < samples; i++) {
    gc();
    // N-API finalizers of collected tensors run from the event loop after the
    // collection (a setImmediate turn is not always enough; a timer is).
    await new Promise((r) => setTimeout(r, 10));
    gc();
    out.push(rss());
  }
  return median(out);
}

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

// ---------------------------------------------------------------- tensor cycles

const DTYPES: DType[] = ['f32', 'f16', 'bf16', 'i32'];
const small = new Float32Array(64).map((_, i) => i * 0.25 - 8);
const smallI = new Int32Array(64).map((_, i) => i - 32);
const big = new Float32Array(256 * 1024).fill(0.5); // 1 MB of f32

/** One cycle: a tensor of each dtype (and every 100th cycle a 1 MB one), read back, disposed. */
function tensorCycle(i: number): number {
  let sum = 0;
  const dt = DTYPES[i % 4];
  const t = dt === 'i32' ? Tensor.from(smallI, [4, 16]) : Tensor.from(small, [4, 16], { dtype: dt });
  sum += t.nbytes;
  if (i % 7 === 0) sum += t.toFloat32()[1];
  t.dispose();
  const z = Tensor.zeros([3, 5], { dtype: dt });
  sum += z.nbytes;
  z.dispose();
  if (i % 100 === 0) {
    const b = Tensor.from(big, [256, 1024], { dtype: i % 200 === 0 ? 'f32' : 'f16' });
    sum += b.toArray().length;
    b.dispose();
  }
  return sum;
}

// ---------------------------------------------------------------- cache cycles

const LAYERS = 3;
const KVH = 2;
const QH = 4;
const D = 16;
const P = 8;

function policies(i: number): { prefill: PrefillPolicy | PrefillPolicy[]; decode: DecodePolicy | null } {
  switch (i % 4) {
    case 0:
      return { prefill: new SnapKV({ budget: 24, window: 4, kernel: 3 }), decode: new H2O({ heavy: 10, recent: 10 }) };
    case 1:
      return { prefill: new StreamingLLM({ budget: 20, sinks: 2 }), decode: new StreamingLLM({ budget: 20, sinks: 2 }) };
    case 2:
      return { prefill: new PyramidKV({ budget: 24, window: 4 }), decode: new Quest({ budget: 16, denseLayers: 1 }) };
    default:
      return { prefill: new H2O({ heavy: 8, recent: 8 }), decode: new H2O({ heavy: 8, recent: 8 }) };
  }
}

const cache = new PagedKVCache({ layers: LAYERS, kvHeads: KVH, qHeads: QH, headDim: D, pageSize: P, pages: 512, dtype: 'f16' });
afterAll(() => cache.dispose());

function randTensor(r: () => number, shape: number[], dtype: DType = 'f32'): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = 2 * r() - 1;
  return Tensor.from(a, shape, { dtype });
}

/** addSequence (two of them), prefill every layer, 4 batched decode steps per layer, remove both. */
function cacheCycle(i: number): void {
  const r = prng(i + 1);
  const L = 40 + (i % 17);
  const seqs = [cache.addSequence(policies(i)), cache.addSequence(policies(i + 1))];
  for (const s of seqs)
    for (let l = 0; l < LAYERS; l++) {
      const q = randTensor(r, [QH, L, D]);
      const k = randTensor(r, [KVH, L, D], l === 1 ? 'f16' : 'f32');
      const v = randTensor(r, [KVH, L, D]);
      try {
        s.prefill(l, q, k, v);
      } finally {
        q.dispose();
        k.dispose();
        v.dispose();
      }
    }
  for (let step = 0; step < 4; step++)
    for (let l = 0; l < LAYERS; l++) {
      const q = randTensor(r, [2, QH, D]);
      const k = randTensor(r, [2, KVH, D]);
      const v = randTensor(r, [2, KVH, D]);
      try {
        cache.decode(l, seqs, q, k, v).dispose();
      } finally {
        q.dispose();
        k.dispose();
        v.dispose();
      }
    }
  for (const s of seqs) s.remove();
  const st = cache.stats();
  if (st.pages.used !== 0 || st.bytes.held !== 0 || st.sequences !== 0)
    throw new Error(`cycle ${i}: pages.used ${st.pages.used}, bytes.held ${st.bytes.held}, sequences ${st.sequences} after remove`);
}

// ---------------------------------------------------------------- the runs

const figures: string[] = [];
afterAll(() => console.log(`soak (${FULL ? 'full' : 'bounded'}):\n  ${figures.join('\n  ')}`));

describe('soak', () => {
  it(`${TENSOR_CYCLES} tensor create/dispose cycles: RSS grows < ${LIMIT_MB} MB`, async () => {
    let sink = 0;
    const per = Math.ceil(TENSOR_CYCLES / ROUNDS);
    for (let i = 0; i < per; i++) sink += tensorCycle(i); // warm-up round
    const samples = [await settledRss()];
    const t0 = Date.now();
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < per; i++) sink += tensorCycle(r * per + i);
      samples.push(await settledRss());
    }
    const ms = Date.now() - t0;
    const growth = (Math.max(...samples.slice(2)) - samples[1]) / MB;
    figures.push(`tensors: ${per * ROUNDS} cycles in ${(ms / 1000).toFixed(1)} s; RSS per round (MB): ${samples.map((x) => (x / MB).toFixed(1)).join(' ')}; growth after round 1: ${growth.toFixed(1)} MB`);
    expect(sink).toBeGreaterThan(0);
    expect(growth).toBeLessThan(LIMIT_MB);
  });

  it(`${CACHE_CYCLES} cache prefill/decode/remove cycles: pool back to zero, RSS grows < ${LIMIT_MB} MB`, async () => {
    const per = Math.ceil(CACHE_CYCLES / ROUNDS);
    for (let i = 0; i < per; i++) cacheCycle(i); // warm-up round
    const samples = [await settledRss()];
    const t0 = Date.now();
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < per; i++) cacheCycle((r + 1) * per + i);
      samples.push(await settledRss());
    }
    const ms = Date.now() - t0;
    const growth = (Math.max(...samples.slice(2)) - samples[1]) / MB;
    figures.push(`cache: ${per * ROUNDS} cycles (2 sequences x ${LAYERS} layers, 4 batched decode steps each) in ${(ms / 1000).toFixed(1)} s; RSS per round (MB): ${samples.map((x) => (x / MB).toFixed(1)).join(' ')}; growth after round 1: ${growth.toFixed(1)} MB`);
    const st = cache.stats();
    expect(st.pages.used).toBe(0);
    expect(st.pages.free).toBe(st.pages.total);
    expect(st.bytes.held).toBe(0);
    expect(st.sequences).toBe(0);
    expect(st.tokens.flat().every((n) => n === 0)).toBe(true);
    expect(growth).toBeLessThan(LIMIT_MB);
  });

  it('forgotten tensors (never disposed) are freed by their finalizers', async () => {
    // 3 rounds of 100 x 1 MB tensors never disposed: without finalizers RSS
    // would grow by 200 MB after the first round. Finalizers run late and
    // glibc keeps some freed blocks, so the bound here is looser than the
    // soak's: most of it must come back.
    // The property is that the memory comes back, not when: V8 may defer a
    // collection's finalizers past one settle, so a round above the bound is
    // settled again (up to 10 times) before it counts.
    const samples = [await settledRss()];
    for (let r = 0; r < 3; r++) {
      for (let i = 0; i < 100; i++) Tensor.from(big, [256, 1024]);
      let s = await settledRss();
      for (let tries = 0; r > 0 && tries < 10 && (s - Math.max(samples[0], samples[1])) / MB >= 80; tries++) s = await settledRss();
      samples.push(s);
    }
    // Measured from the higher of the readings before and after round 1: the
    // earlier soak tests' memory sometimes goes back to the system during
    // round 1 (a clean CI run read 340.6 -> 285.8 -> 379.8 -> 338.9 MB), which
    // made the low after-round-1 reading look like 94 MB of growth. A leak
    // still shows: without finalizers each round adds 100 MB.
    const growth = (Math.max(...samples.slice(2)) - Math.max(samples[0], samples[1])) / MB;
    figures.push(`finalizers: 3 x 100 x 1 MB tensors never disposed: RSS per round (MB): ${samples.map((x) => (x / MB).toFixed(1)).join(' ')}`);
    expect(growth).toBeLessThan(80);
  });
});
