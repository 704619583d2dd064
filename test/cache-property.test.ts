/**
 * Property test of PagedKVCache over random operation sequences (fast-check):
 * a small cache (random layers, heads, page size, pool size, dtype), then
 * addSequence with random prefill/decode policies (per layer or one for all),
 * prefill of random layers with random L, decode steps over random batches
 * (H2O, StreamingLLM, Quest, ShotKV, none), attend, remove, and operations
 * that must fail (a pool too small, a bad tensor, a bad sequence in the middle
 * of a batch, a wrong L, a layer prefilled twice, shots past the prompt).
 *
 * After every operation:
 * - no page leaked or double-freed: pool.used == the pages of all live lists,
 *   every list page is allocated, no page is in two lists, and a list holds
 *   exactly ceil(slots / pageSize) pages;
 * - stats() and seq.stats() accounting exact (pages, bytes, tokens);
 * - kept positions ascending, unique, < the sequence's length at the layer,
 *   equal to the slot table without its hole; held tokens <= pages * pageSize;
 * - a failed operation throws the expected KvsqError code and leaves kept(),
 *   slots(), length() and stats() exactly unchanged; a successful decode step
 *   changes only its batch's lists at its layer, adds the new position, and
 *   evicts at most one position per head, the one the policy's rule allows.
 *
 * Data are drawn from a seeded PRNG inside each operation, so a failing run
 * reproduces (and shrinks) from fast-check's seed.
 */
import fc from 'fast-check';
import { PagedKVCache, Sequence, Tensor, KvsqError, SnapKV, PyramidKV, ChunkKV, StreamingLLM, H2O, Quest, ShotKV } from '../lib';
import type { PrefillPolicy, DecodePolicy } from '../lib';

// ---------------------------------------------------------------- internals seen by the invariants

interface HeadListView {
  pages: number[];
  len: number;
  hole: number;
}
interface LayerView {
  heads: HeadListView[];
  nextPos: number;
}
const layersOf = (s: Sequence) => s.layers as unknown as (LayerView | undefined)[];

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
function randTensor(r: () => number, shape: number[], dtype: 'f32' | 'f16' | 'bf16' = 'f32'): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = 2 * r() - 1;
  return Tensor.from(a, shape, { dtype });
}

// ---------------------------------------------------------------- policies

type PrefillDesc =
  | { kind: 'none' }
  | { kind: 'snap'; budget: number; window: number; kernel: number; pool: 'max' | 'avg'; gqa: 'mean' | 'sum' | 'max' }
  | { kind: 'pyramid'; budget: number; window: number }
  | { kind: 'chunk'; budget: number; window: number; chunk: number; reuse: number }
  | { kind: 'stream'; budget: number; sinks: number }
  | { kind: 'h2o'; heavy: number; recent: number }
  | { kind: 'shot'; bounds: number[]; prefillBudget: number; decodeBudget: number; window: number };
type DecodeDesc =
  | { kind: 'none' }
  | { kind: 'h2o'; heavy: number; recent: number; gqa: 'mean' | 'sum' | 'max' }
  | { kind: 'stream'; budget: number; sinks: number }
  | { kind: 'quest'; budget: number; denseLayers: number; share: boolean }
  | { kind: 'shot'; decodeBudget: number };

const gqaArb = fc.constantFrom('mean' as const, 'sum' as const, 'max' as const);
const prefillArb: fc.Arbitrary<PrefillDesc> = fc.oneof(
  fc.constant({ kind: 'none' as const }),
  fc.record({ kind: fc.constant('snap' as const), budget: fc.integer({ min: 2, max: 40 }), window: fc.integer({ min: 1, max: 8 }), kernel: fc.constantFrom(1, 3, 5), pool: fc.constantFrom('max' as const, 'avg' as const), gqa: gqaArb }),
  fc.record({ kind: fc.constant('pyramid' as const), budget: fc.integer({ min: 3, max: 40 }), window: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ kind: fc.constant('chunk' as const), budget: fc.integer({ min: 2, max: 40 }), window: fc.integer({ min: 1, max: 6 }), chunk: fc.integer({ min: 1, max: 5 }), reuse: fc.integer({ min: 1, max: 3 }) }),
  fc.record({ kind: fc.constant('stream' as const), budget: fc.integer({ min: 3, max: 30 }), sinks: fc.integer({ min: 0, max: 2 }) }),
  fc.record({ kind: fc.constant('h2o' as const), heavy: fc.integer({ min: 0, max: 10 }), recent: fc.integer({ min: 1, max: 10 }) }),
  fc.record({
    kind: fc.constant('shot' as const),
    bounds: fc.uniqueArray(fc.integer({ min: 0, max: 45 }), { maxLength: 8 }),
    prefillBudget: fc.integer({ min: 1, max: 40 }),
    decodeBudget: fc.integer({ min: 0, max: 5 }),
    window: fc.integer({ min: 1, max: 4 }),
  }),
);
const decodeArb: fc.Arbitrary<DecodeDesc> = fc.oneof(
  fc.constant({ kind: 'none' as const }),
  fc.record({ kind: fc.constant('h2o' as const), heavy: fc.integer({ min: 0, max: 8 }), recent: fc.integer({ min: 1, max: 8 }), gqa: gqaArb }),
  fc.record({ kind: fc.constant('stream' as const), budget: fc.integer({ min: 3, max: 20 }), sinks: fc.integer({ min: 0, max: 2 }) }),
  fc.record({ kind: fc.constant('quest' as const), budget: fc.integer({ min: 1, max: 32 }), denseLayers: fc.integer({ min: 0, max: 1 }), share: fc.boolean() }),
  fc.record({ kind: fc.constant('shot' as const), decodeBudget: fc.integer({ min: 0, max: 4 }) }),
);

function shotsOf(bounds: number[]): [number, number][] {
  const b = [...bounds].sort((x, y) => x - y);
  const out: [number, number][] = [];
  for (let i = 0; i + 1 < b.length; i += 2) out.push([b[i], b[i + 1]]);
  return out;
}
function makePrefill(d: PrefillDesc): PrefillPolicy | null {
  switch (d.kind) {
    case 'none':
      return null;
    case 'snap':
      return new SnapKV({ budget: d.budget, window: d.window, kernel: d.kernel, pool: d.pool, gqa: d.gqa });
    case 'pyramid':
      return new PyramidKV({ budget: d.budget, window: d.window });
    case 'chunk':
      return new ChunkKV({ budget: d.budget, window: d.window, chunk: d.chunk, reuse: d.reuse });
    case 'stream':
      return new StreamingLLM({ budget: d.budget, sinks: d.sinks });
    case 'h2o':
      return new H2O({ heavy: d.heavy, recent: d.recent });
    case 'shot':
      return new ShotKV({ shots: shotsOf(d.bounds), prefillBudget: d.prefillBudget, decodeBudget: d.decodeBudget, window: d.window });
  }
}
function makeDecode(d: DecodeDesc): DecodePolicy | null {
  switch (d.kind) {
    case 'none':
      return null;
    case 'h2o':
      return new H2O({ heavy: d.heavy, recent: d.recent, gqa: d.gqa });
    case 'stream':
      return new StreamingLLM({ budget: d.budget, sinks: d.sinks });
    case 'quest':
      return new Quest({ budget: d.budget, denseLayers: d.denseLayers, share: d.share });
    case 'shot':
      return new ShotKV({ shots: [], decodeBudget: d.decodeBudget });
  }
}

// ---------------------------------------------------------------- operations

type Op =
  | { t: 'add'; pre: PrefillDesc[]; dec: DecodeDesc[]; perLayer: boolean }
  | { t: 'prefill'; s: number; layer: number; L: number; fault: 'none' | 'shape' | 'dtype' | 'disposed' | 'notTensor' | 'wrongL' | 'again'; dtype: 'f32' | 'f16' | 'bf16'; seed: number }
  | { t: 'decode'; layer: number; pick: number[]; fault: 'none' | 'shape' | 'disposed' | 'notPrefilled' | 'dup' | 'foreign' | 'removed'; at: number; seed: number }
  | { t: 'attend'; layer: number; pick: number[]; seed: number }
  | { t: 'remove'; s: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ t: fc.constant('add' as const), pre: fc.array(prefillArb, { minLength: 3, maxLength: 3 }), dec: fc.array(decodeArb, { minLength: 3, maxLength: 3 }), perLayer: fc.boolean() }), weight: 2 },
  {
    arbitrary: fc.record({
      t: fc.constant('prefill' as const),
      s: fc.nat(),
      layer: fc.nat(),
      L: fc.oneof(fc.integer({ min: 1, max: 12 }), fc.integer({ min: 1, max: 50 })),
      fault: fc.constantFrom('none' as const, 'none' as const, 'none' as const, 'none' as const, 'shape' as const, 'dtype' as const, 'disposed' as const, 'notTensor' as const, 'wrongL' as const, 'again' as const),
      dtype: fc.constantFrom('f32' as const, 'f16' as const, 'bf16' as const),
      seed: fc.nat(),
    }),
    weight: 6,
  },
  {
    arbitrary: fc.record({
      t: fc.constant('decode' as const),
      layer: fc.nat(),
      pick: fc.array(fc.nat(), { minLength: 1, maxLength: 4 }),
      fault: fc.constantFrom('none' as const, 'none' as const, 'none' as const, 'none' as const, 'none' as const, 'shape' as const, 'disposed' as const, 'notPrefilled' as const, 'dup' as const, 'foreign' as const, 'removed' as const),
      at: fc.nat(),
      seed: fc.nat(),
    }),
    weight: 6,
  },
  { arbitrary: fc.record({ t: fc.constant('attend' as const), layer: fc.nat(), pick: fc.array(fc.nat(), { minLength: 1, maxLength: 3 }), seed: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ t: fc.constant('remove' as const), s: fc.nat() }), weight: 1 },
);

const configArb = fc.record({
  layers: fc.integer({ min: 1, max: 3 }),
  kvHeads: fc.integer({ min: 1, max: 3 }),
  g: fc.integer({ min: 1, max: 2 }),
  headDim: fc.constantFrom(4, 8, 12),
  pageSize: fc.integer({ min: 1, max: 8 }),
  pages: fc.oneof(fc.integer({ min: 2, max: 40 }), fc.integer({ min: 40, max: 400 })),
  dtype: fc.constantFrom('f32' as const, 'f16' as const, 'bf16' as const),
});

// ---------------------------------------------------------------- observation and invariants

function observe(cache: PagedKVCache, seqs: readonly Sequence[]): unknown {
  return {
    stats: cache.stats(),
    seqs: seqs.map((s) => ({
      stats: s.stats(),
      layers: Array.from({ length: cache.numLayers }, (_, l) => ({
        kept: s.kept(l).map((x) => Array.from(x)),
        slots: s.slots(l).map((x) => Array.from(x)),
        length: s.length(l),
      })),
    })),
  };
}

function checkInvariants(cache: PagedKVCache, live: readonly Sequence[]): void {
  const P = cache.pageSize;
  const pool = cache.pool;
  const bpp = pool.bytesPerPage;
  const seen = new Map<number, string>();
  let pages = 0;
  let full = 0;
  const tokens = Array.from({ length: cache.numLayers }, () => new Array(cache.numKvHeads).fill(0));
  for (const s of live) {
    let sp = 0;
    let sf = 0;
    const st = s.stats();
    layersOf(s).forEach((ly, l) => {
      const kept = s.kept(l);
      const slots = s.slots(l);
      if (!ly) {
        expect(kept).toEqual([]);
        expect(st.tokens[l]).toEqual([]);
        return;
      }
      expect(ly.heads.length).toBe(cache.numKvHeads);
      expect(s.length(l)).toBe(ly.nextPos);
      sf += cache.numKvHeads * Math.ceil(ly.nextPos / P);
      ly.heads.forEach((h, j) => {
        for (const p of h.pages) {
          if (!pool.isAllocated(p)) throw new Error(`seq ${s.id} layer ${l} head ${j}: page ${p} is not allocated`);
          if (seen.has(p)) throw new Error(`page ${p} in two lists: ${seen.get(p)} and seq ${s.id} layer ${l} head ${j}`);
          seen.set(p, `seq ${s.id} layer ${l} head ${j}`);
        }
        expect(h.pages.length).toBe(Math.ceil(h.len / P));
        sp += h.pages.length;
        const k = Array.from(kept[j]);
        const held = h.len - (h.hole >= 0 ? 1 : 0);
        expect(k.length).toBe(held);
        expect(held).toBeLessThanOrEqual(h.pages.length * P);
        for (let i = 0; i < k.length; i++) {
          if (i > 0 && !(k[i] > k[i - 1])) throw new Error(`seq ${s.id} layer ${l} head ${j}: kept not ascending/unique: ${k}`);
          if (!(k[i] >= 0 && k[i] < ly.nextPos)) throw new Error(`seq ${s.id} layer ${l} head ${j}: kept ${k[i]} outside [0, ${ly.nextPos})`);
        }
        expect(Array.from(slots[j]).filter((p) => p >= 0).sort((a, b) => a - b)).toEqual(k);
        expect(slots[j].length).toBe(h.len);
        tokens[l][j] += held;
        expect(st.tokens[l][j]).toBe(held);
      });
    });
    expect(st.pages).toBe(sp);
    expect(st.bytesHeld).toBe(sp * bpp);
    expect(st.bytesFull).toBe(sf * bpp);
    expect(st.bytesSaved).toBe((sf - sp) * bpp);
    pages += sp;
    full += sf;
  }
  expect(pool.used).toBe(pages);
  const cs = cache.stats();
  expect(cs.pages.used).toBe(pages);
  expect(cs.pages.free).toBe(cs.pages.total - pages);
  expect(cs.bytes.held).toBe(pages * bpp);
  expect(cs.bytes.full).toBe(full * bpp);
  expect(cs.bytes.saved).toBe((full - pages) * bpp);
  expect(cs.sequences).toBe(live.length);
  expect(cs.tokens).toEqual(tokens);
}

function expectKvsq(fn: () => unknown, code: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof KvsqError)) throw new Error(`expected ${code}, got ${err === undefined ? 'no error' : String(err)}`);
  if (err.code !== code) throw new Error(`expected ${code}, got ${err.code}: ${err.message}`);
}

// ---------------------------------------------------------------- the model run

interface Meta {
  dec: (DecodePolicy | null)[];
}

interface Cfg {
  layers: number;
  kvHeads: number;
  g: number;
  headDim: number;
  pageSize: number;
  pages: number;
  dtype: 'f32' | 'f16' | 'bf16';
}

/** Outcomes over all runs, to show the operations were exercised. */
const tally: Record<string, number> = {};
const count = (k: string) => (tally[k] = (tally[k] ?? 0) + 1);

function run(cfg: Cfg, ops: Op[]): void {
  const Hkv = cfg.kvHeads;
  const Hq = cfg.kvHeads * cfg.g;
  const D = cfg.headDim;
  const NL = cfg.layers;
  const P = cfg.pageSize;
  const cache = new PagedKVCache({ layers: NL, kvHeads: Hkv, qHeads: Hq, headDim: D, pageSize: P, pages: cfg.pages, dtype: cfg.dtype });
  const other = new PagedKVCache({ layers: NL, kvHeads: Hkv, qHeads: Hq, headDim: D, pages: 4 });
  const foreign = other.addSequence();
  const live: Sequence[] = [];
  const removed: Sequence[] = [];
  const meta = new Map<Sequence, Meta>();
  const temps: Tensor[] = [];
  const T = (t: Tensor) => (temps.push(t), t);
  try {
    for (const op of ops) {
      const apply = (): void => {
      const before = observe(cache, live);
      /** Runs a call that must fail with `code` and change nothing observable. */
      const mustFail = (fn: () => unknown, code: string) => {
        expectKvsq(fn, code);
        count(`${op.t} fails ${code}`);
        expect(observe(cache, live)).toEqual(before);
      };

      if (op.t === 'add') {
        const pre = op.perLayer ? op.pre.slice(0, NL).concat(op.pre).slice(0, NL).map(makePrefill) : makePrefill(op.pre[0]);
        const decArr = op.perLayer ? op.dec.slice(0, NL).concat(op.dec).slice(0, NL).map(makeDecode) : makeDecode(op.dec[0]);
        const s = cache.addSequence({ prefill: pre, decode: decArr });
        live.push(s);
        meta.set(s, { dec: Array.isArray(decArr) ? decArr : new Array(NL).fill(decArr) });
        count('add');
      } else if (op.t === 'remove') {
        if (!live.length) return;
        const s = live[op.s % live.length];
        const used = cache.pool.used;
        const held = s.stats().pages;
        s.remove();
        live.splice(live.indexOf(s), 1);
        removed.push(s);
        expect(cache.pool.used).toBe(used - held);
        count('remove');
      } else if (op.t === 'prefill') {
        if (!live.length) return;
        const s = live[op.s % live.length];
        let layer = op.layer % NL;
        if (op.fault !== 'again') {
          const open = Array.from({ length: NL }, (_, l) => (op.layer + l) % NL).find((l) => layersOf(s)[l] === undefined);
          if (open !== undefined && op.s % 5 !== 0) layer = open; // now and then a layer already done: KVSQ_STATE
        }
        const r = prng(op.seed);
        const done = layersOf(s)[layer] !== undefined;
        let fault = op.fault;
        // 'again': pick a layer already prefilled when there is one.
        let lay = layer;
        if (fault === 'again') {
          const l2 = layersOf(s).findIndex((x) => x !== undefined);
          if (l2 < 0) fault = 'none';
          else lay = l2;
        }
        const L = s.promptLength >= 0 && fault !== 'wrongL' ? s.promptLength : fault === 'wrongL' && s.promptLength >= 0 ? s.promptLength + 1 + (op.L % 5) : op.L;
        if (fault === 'wrongL' && s.promptLength < 0) fault = 'none';
        const q = T(randTensor(r, [Hq, L, D], op.dtype));
        let k: Tensor = T(randTensor(r, [Hkv, L, D], op.dtype));
        const v = T(randTensor(r, [Hkv, L, D], op.dtype));
        if (fault === 'shape') k = T(randTensor(r, [Hkv, L + 1, D]));
        if (fault === 'dtype') k = T(Tensor.from(new Int32Array(Hkv * L * D), [Hkv, L, D]));
        if (fault === 'disposed') k.dispose();
        if (fault === 'notTensor') k = { shape: [Hkv, L, D], dtype: 'f32' } as unknown as Tensor;
        const call = () => s.prefill(lay, q, k, v);
        const doneAt = layersOf(s)[lay] !== undefined;
        if (fault === 'again' || (doneAt && fault === 'none')) mustFail(call, 'KVSQ_STATE');
        else if (doneAt) mustFail(call, 'KVSQ_STATE');
        else if (fault === 'shape' || fault === 'wrongL') mustFail(call, 'KVSQ_SHAPE');
        else if (fault === 'dtype') mustFail(call, 'KVSQ_DTYPE');
        else if (fault === 'disposed') mustFail(call, 'KVSQ_DISPOSED');
        else if (fault === 'notTensor') mustFail(call, 'KVSQ_ARG');
        else {
          const pol = s.prefillPolicy(lay);
          const shotPast = pol instanceof ShotKV && pol.shots.some(([, b]) => b > L);
          const free = cache.pool.free;
          let err: unknown;
          let got: Int32Array[] | undefined;
          try {
            got = call();
          } catch (e) {
            err = e;
          }
          if (shotPast) {
            expect((err as KvsqError)?.code).toBe('KVSQ_RANGE');
            count('prefill fails KVSQ_RANGE (shot past the prompt)');
            expect(observe(cache, live)).toEqual(before);
          } else if (err) {
            // Only the pool can refuse a valid prefill, and only when it is short.
            if (!(err instanceof KvsqError) || err.code !== 'KVSQ_OOM') throw err;
            expect(free).toBeLessThan(Hkv * Math.ceil(L / P));
            expect(observe(cache, live)).toEqual(before);
            expect(layersOf(s)[lay]).toBeUndefined();
            count('prefill fails KVSQ_OOM');
          } else {
            expect(got!.map((x) => Array.from(x))).toEqual(s.kept(lay).map((x) => Array.from(x)));
            expect(s.length(lay)).toBe(L);
            expect(s.promptLength).toBe(L);
            // Without a prefill policy the whole prompt is kept.
            if (!pol) for (const h of got!) expect(h.length).toBe(L);
            count('prefill ok');
          }
        }
        void done;
      } else if (op.t === 'decode' || op.t === 'attend') {
        const withReady = Array.from({ length: NL }, (_, l) => (op.layer + l) % NL).filter((l) => live.some((s) => layersOf(s)[l] !== undefined));
        if (!withReady.length) return;
        const layer = withReady[0];
        const ready = live.filter((s) => layersOf(s)[layer] !== undefined);
        const r = prng(op.seed);
        if (!ready.length) return;
        const batch = [...new Set(op.pick.map((i) => ready[i % ready.length]))];
        if (op.t === 'attend') {
          const B = batch.length;
          const q = T(randTensor(r, [B, Hq, D]));
          const pending = batch.some((s) => layersOf(s)[layer]!.heads.some((h) => h.hole >= 0 && h.hole < h.len - 1));
          // An empty list (H2O with heavy = recent = 0 keeps nothing) has no
          // attention to give: today the native kernel answers KVSQ_SHAPE
          // ("sizes are inconsistent"); any KvsqError that changes nothing is
          // accepted here (see the report: the message is misleading).
          const empty = batch.some((s) => layersOf(s)[layer]!.heads.some((h) => h.len - (h.hole >= 0 ? 1 : 0) === 0));
          if (pending) mustFail(() => cache.attend(layer, batch, q), 'KVSQ_STATE');
          else if (empty) {
            let err: unknown;
            try {
              T(cache.attend(layer, batch, q));
            } catch (e) {
              err = e;
            }
            expect(err).toBeInstanceOf(KvsqError);
            expect(observe(cache, live)).toEqual(before);
            count('attend fails (an empty list)');
          } else {
            const o = T(cache.attend(layer, batch, q));
            expect(o.shape).toEqual([B, Hq, D]);
            const a = o.toFloat32();
            for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) throw new Error('attend: non-finite output');
            expect(observe(cache, live)).toEqual(before);
            count('attend ok');
          }
          return;
        }
        let fault = op.fault;
        let bad: Sequence | undefined;
        if (fault === 'notPrefilled') bad = live.find((s) => layersOf(s)[layer] === undefined);
        if (fault === 'foreign') bad = foreign;
        if (fault === 'removed') bad = removed[0];
        if (fault === 'dup') bad = batch[0];
        if ((fault === 'notPrefilled' || fault === 'removed') && !bad) fault = 'none';
        const seqs = [...batch];
        if (bad && fault !== 'none') seqs.splice(op.at % (seqs.length + 1), 0, bad); // in the middle of the batch, say
        const B = seqs.length;
        const q = T(randTensor(r, [B, Hq, D]));
        let k = T(randTensor(r, [B, Hkv, D]));
        const v = T(randTensor(r, [B, Hkv, D], cfg.dtype));
        if (fault === 'shape') k = T(randTensor(r, [B, Hkv, D + 1]));
        if (fault === 'disposed') v.dispose();
        const call = () => T(cache.decode(layer, seqs, q, k, v));
        const code = { shape: 'KVSQ_SHAPE', disposed: 'KVSQ_DISPOSED', notPrefilled: 'KVSQ_STATE', dup: 'KVSQ_ARG', foreign: 'KVSQ_STATE', removed: 'KVSQ_DISPOSED' } as const;
        if (fault !== 'none') {
          mustFail(call, code[fault]);
          return;
        }
        // Pages this step needs: lists with no hole whose last page is full.
        let need = 0;
        for (const s of seqs) for (const h of layersOf(s)[layer]!.heads) if (h.hole < 0 && h.len === h.pages.length * P) need++;
        if (need > cache.pool.free) {
          mustFail(call, 'KVSQ_OOM');
          return;
        }
        const keptBefore = seqs.map((s) => s.kept(layer).map((x) => Array.from(x)));
        const o = call();
        expect(o.shape).toEqual([B, Hq, D]);
        count(`decode ok (batch ${B})`);
        seqs.forEach((s, b) => {
          const newPos = (before as { seqs: { layers: { length: number }[] }[] }).seqs[live.indexOf(s)].layers[layer].length;
          expect(s.length(layer)).toBe(newPos + 1);
          const pol = meta.get(s)!.dec[layer];
          const after = s.kept(layer).map((x) => Array.from(x));
          const evicted: number[] = [];
          after.forEach((h, j) => {
            const cand = [...keptBefore[b][j], newPos];
            const gone = cand.filter((p) => !h.includes(p));
            expect(h.filter((p) => !cand.includes(p))).toEqual([]);
            expect(gone.length).toBeLessThanOrEqual(1);
            if (!pol || pol instanceof Quest) expect(gone).toEqual([]);
            if (pol instanceof StreamingLLM && gone.length) {
              // The oldest non-sink position, and only beyond the capacity.
              expect(cand.length).toBeGreaterThan(pol.capacity(s.promptLength));
              expect(gone[0]).toBe(Math.min(...cand.filter((p) => p >= pol.sinks)));
            }
            if (pol instanceof StreamingLLM && !gone.length) expect(cand.length).toBeLessThanOrEqual(pol.capacity(s.promptLength));
            if (pol instanceof H2O) {
              const [heavy, recent] = pol.sizes(s.promptLength);
              if (gone.length) {
                expect(cand.length).toBeGreaterThan(heavy + recent);
                expect(gone[0]).toBeLessThanOrEqual(newPos - recent);
              } else if (cand.some((p) => p <= newPos - recent)) expect(cand.length).toBeLessThanOrEqual(heavy + recent);
            }
            if (pol instanceof ShotKV && gone.length) expect(gone[0]).toBeGreaterThanOrEqual(s.promptLength);
            evicted.push(gone[0] ?? -1);
            if (gone.length) count(`decode evicts (${pol?.name})`);
          });
          if (pol instanceof ShotKV) expect(new Set(evicted).size).toBe(1); // every head evicts the same token
        });
        // Nothing else changed: other sequences, other layers.
        const now = observe(cache, live) as { seqs: { layers: unknown[] }[] };
        const was = before as { seqs: { layers: unknown[] }[] };
        live.forEach((s, i) => {
          for (let l = 0; l < NL; l++) if (l !== layer || !seqs.includes(s)) expect(now.seqs[i].layers[l]).toEqual(was.seqs[i].layers[l]);
        });
      }
      };
      apply();
      checkInvariants(cache, live);
      for (const t of temps.splice(0)) t.dispose();
    }
    // Removing everything returns the pool to empty.
    for (const s of live.splice(0)) s.remove();
    expect(cache.pool.used).toBe(0);
    expect(cache.stats().bytes.held).toBe(0);
  } finally {
    for (const t of temps) t.dispose();
    cache.dispose();
    other.dispose();
  }
}

describe('PagedKVCache under random operation sequences', () => {
  afterAll(() => console.log(`operations exercised: ${JSON.stringify(tally, Object.keys(tally).sort(), 1)}`));
  it('keeps its invariants; failed operations change nothing', () => {
    fc.assert(
      fc.property(configArb, fc.array(opArb, { minLength: 10, maxLength: 40 }), (cfg, ops) => run(cfg, ops)),
      { numRuns: 50 },
    );
  });

  it('decode-heavy runs: prefilled sequences, then mostly decode steps over random batches', () => {
    const addArb = fc.record({ t: fc.constant('add' as const), pre: fc.array(prefillArb, { minLength: 3, maxLength: 3 }), dec: fc.array(decodeArb, { minLength: 3, maxLength: 3 }), perLayer: fc.boolean() });
    const prefillFor = (n: number, NL: number, Ls: number[]): Op[] => {
      const out: Op[] = [];
      for (let i = 0; i < n; i++)
        for (let l = 0; l < NL; l++) out.push({ t: 'prefill', s: i + 5 * n, layer: l, L: Ls[i], fault: 'none', dtype: 'f32', seed: 7 * i + l });
      return out;
    };
    fc.assert(
      fc.property(
        configArb.map((c) => ({ ...c, pages: c.pages + 400 })),
        fc.array(addArb, { minLength: 2, maxLength: 4 }),
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 4, maxLength: 4 }),
        fc.array(opArb.filter((o) => o.t === 'decode' || o.t === 'attend' || o.t === 'remove'), { minLength: 10, maxLength: 40 }),
        (cfg, adds, Ls, rest) => run(cfg, [...adds, ...prefillFor(adds.length, cfg.layers, Ls), ...rest]),
      ),
      { numRuns: 30 },
    );
  });

  it('a pool too small for any prompt: every prefill is KVSQ_OOM and nothing changes', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 5, max: 40 }), fc.nat(), (Hkv, L, seed) => {
        const cache = new PagedKVCache({ layers: 1, kvHeads: Hkv, headDim: 4, pageSize: 4, pages: Hkv * Math.ceil(L / 4) - 1 }); // one page short
        const r = prng(seed);
        const q = randTensor(r, [Hkv, L, 4]);
        const k = randTensor(r, [Hkv, L, 4]);
        try {
          const s = cache.addSequence();
          const before = observe(cache, [s]);
          expectKvsq(() => s.prefill(0, q, k, k), 'KVSQ_OOM');
          expect(observe(cache, [s])).toEqual(before);
          expect(cache.pool.used).toBe(0);
        } finally {
          q.dispose();
          k.dispose();
          cache.dispose();
        }
      }),
      { numRuns: 30 },
    );
  });
});
