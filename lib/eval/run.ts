/**
 * The evaluation behind `kvsqueeze eval`: every method at several budgets on
 * one trace, through the real cache (prefill, then the trace's decode steps),
 * against exact float64 attention over the full context.
 *
 * Metrics, per method and budget, over layers x decode steps x query heads:
 * - attention-output relative error ||o - o_full|| / ||o_full|| (mean, worst);
 * - attention mass kept: the full-attention probability mass on the tokens the
 *   method attended at that step (for Quest: the tokens of the pages it read);
 * - needle recall (generated traces): the fraction of planted needles the
 *   method attended at the steps that query them;
 * - memory held by the sequence at the end (bytes, % of the same cache
 *   without compression) and time (prefill per layer, decode per layer-step).
 */
import { PagedKVCache } from '../cache/paged-cache';
import { makeMethod, MethodName, MethodOptions } from '../methods';
import { DType, Tensor } from '../tensor';
import { entryToFloat32 } from '../io/safetensors';
import { layerTensors, stepTensors, Trace, traceShots } from '../trace';
import type { TraceTruth } from './generator';

export interface EvalOptions {
  methods: MethodName[];
  /** Budgets as fractions of the prompt length. */
  budgets: number[];
  /** Cache dtype (default f16). */
  dtype?: DType;
  pageSize?: number;
  onProgress?: (label: string) => void;
}

export interface EvalRow {
  method: string;
  budget: number;
  budgetTokens: number;
  params: Record<string, unknown>;
  errMean: number;
  errWorst: number;
  massKept: number;
  needleRecall: number | null;
  bytesHeld: number;
  bytesFull: number;
  memoryPct: number;
  prefillMsPerLayer: number;
  decodeMsPerStep: number;
}

export interface EvalReport {
  trace: { layers: number; qHeads: number; kvHeads: number; headDim: number; seqLen: number; steps: number; dtype: string; source: string };
  dtype: DType;
  /** Error of the uncompressed cache (storage rounding only): the floor of every row. */
  fullCache: { errMean: number; errWorst: number };
  rows: EvalRow[];
  seconds: number;
}

/** Exact reference: probabilities and outputs of every probe, in float64 arithmetic. */
interface Reference {
  probes: number; // decode steps, or 1 probe (the last prompt query) when the trace has none
  /** probs[l][s]: Float32Array [Hq, n] over positions 0..n-1 (n = L + s + 1, or L for the probe) */
  probs: Float32Array[][];
  /** out[l][s]: Float64Array [Hq, D] */
  out: Float64Array[][];
}

function computeReference(t: Trace): Reference {
  const { numLayers: NL, numQHeads: Hq, numKvHeads: Hkv, seqLen: L, headDim: D, steps: T } = t;
  const g = Hq / Hkv;
  const q = entryToFloat32(t.q);
  const k = entryToFloat32(t.k);
  const v = entryToFloat32(t.v);
  const dq = t.dq ? entryToFloat32(t.dq) : undefined;
  const dk = t.dk ? entryToFloat32(t.dk) : undefined;
  const dv = t.dv ? entryToFloat32(t.dv) : undefined;
  const probes = T > 0 ? T : 1;
  const scale = 1 / Math.sqrt(D);
  const probs: Float32Array[][] = [];
  const out: Float64Array[][] = [];
  const z = new Float64Array(L + T);
  for (let l = 0; l < NL; l++) {
    probs.push([]);
    out.push([]);
    for (let s = 0; s < probes; s++) {
      const n = T > 0 ? L + s + 1 : L;
      const p = new Float32Array(Hq * n);
      const o = new Float64Array(Hq * D);
      const keyRow = (j: number, t2: number) => (t2 < L ? [k, ((l * Hkv + j) * L + t2) * D] : [dk!, ((l * Hkv + j) * T + (t2 - L)) * D]) as [Float32Array, number];
      const valRow = (j: number, t2: number) => (t2 < L ? [v, ((l * Hkv + j) * L + t2) * D] : [dv!, ((l * Hkv + j) * T + (t2 - L)) * D]) as [Float32Array, number];
      for (let h = 0; h < Hq; h++) {
        const j = Math.floor(h / g);
        const [qa, qo] = T > 0 ? [dq!, ((l * Hq + h) * T + s) * D] : [q, ((l * Hq + h) * L + (L - 1)) * D];
        let max = -Infinity;
        for (let t2 = 0; t2 < n; t2++) {
          const [ka, ko] = keyRow(j, t2);
          let d = 0;
          for (let i = 0; i < D; i++) d += qa[qo + i] * ka[ko + i];
          z[t2] = d * scale;
          if (z[t2] > max) max = z[t2];
        }
        let sum = 0;
        for (let t2 = 0; t2 < n; t2++) {
          z[t2] = Math.exp(z[t2] - max);
          sum += z[t2];
        }
        for (let t2 = 0; t2 < n; t2++) {
          const w = z[t2] / sum;
          p[h * n + t2] = w;
          const [va, vo] = valRow(j, t2);
          for (let i = 0; i < D; i++) o[h * D + i] += w * va[vo + i];
        }
      }
      probs[l].push(p);
      out[l].push(o);
    }
  }
  return { probes, probs, out };
}

function relErr(o: Float32Array, ref: Float64Array, h: number, D: number): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < D; i++) {
    const d = o[h * D + i] - ref[h * D + i];
    num += d * d;
    den += ref[h * D + i] * ref[h * D + i];
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

/** Budget fraction -> the method's options (the same token budget C for every method). */
export function budgetOptions(method: MethodName, C: number, L: number): MethodOptions {
  switch (method) {
    case 'h2o':
      return { heavy: Math.max(1, Math.floor(C / 2)), recent: Math.max(1, C - Math.floor(C / 2)) };
    case 'shotkv':
      return { prefillBudget: C };
    case 'snapkv':
    case 'pyramidkv':
    case 'chunkkv':
      // The default window (32) must fit the budget; small budgets use a smaller window.
      return { budget: C, window: Math.max(1, Math.min(32, Math.floor(C / 2))) };
    default:
      return { budget: Math.min(C, L) };
  }
}

interface RunOutcome {
  errs: number[];
  mass: number[];
  recall: number | null;
  bytesHeld: number;
  bytesFull: number;
  prefillMs: number;
  decodeMs: number;
}

function runOne(t: Trace, ref: Reference, truth: TraceTruth | undefined, m: ReturnType<typeof makeMethod> | null, dtype: DType, pageSize: number): RunOutcome {
  const { numLayers: NL, numQHeads: Hq, numKvHeads: Hkv, seqLen: L, headDim: D, steps: T } = t;
  const g = Hq / Hkv;
  const P = pageSize;
  const cache = new PagedKVCache({ layers: NL, kvHeads: Hkv, qHeads: Hq, headDim: D, dtype, pageSize: P, pages: NL * Hkv * (Math.ceil((L + T) / P) + 1) });
  const errs: number[] = [];
  const mass: number[] = [];
  // attended[l][s][j] positions attended at probe s by KV head j (for recall).
  const attendedAt: Array<Array<Array<Set<number>>>> = [];
  let prefillMs = 0;
  let decodeMs = 0;
  try {
    const seq = cache.addSequence({ prefill: m?.prefill ?? null, decode: m?.decode ?? null });
    for (let l = 0; l < NL; l++) {
      const x = layerTensors(t, l);
      const t0 = performance.now();
      try {
        seq.prefill(l, x.q, x.k, x.v);
      } finally {
        prefillMs += performance.now() - t0;
        x.q.dispose();
        x.k.dispose();
        x.v.dispose();
      }
      attendedAt.push([]);
    }
    const probes = ref.probes;
    for (let s = 0; s < probes; s++) {
      for (let l = 0; l < NL; l++) {
        let attended: Int32Array[][]; // per query head (by KV group), positions
        let o: Float32Array;
        if (T > 0) {
          const before = seq.kept(l);
          const x = stepTensors(t, l, s);
          const t0 = performance.now();
          try {
            const out = cache.decode(l, [seq], x.q, x.k, x.v);
            decodeMs += performance.now() - t0;
            o = out.toFloat32();
            out.dispose();
          } finally {
            x.q.dispose();
            x.k.dispose();
            x.v.dispose();
          }
          const sel = cache.lastSelection;
          if (sel) {
            // Quest: the tokens of the pages read, per query head (slot = position: Quest never evicts).
            attended = [Array.from({ length: Hq }, (_, h) => {
              const pages = sel[h];
              const pos: number[] = [];
              for (const p of pages) for (let i = p * P; i < Math.min((p + 1) * P, L + s + 1); i++) pos.push(i);
              return Int32Array.from(pos);
            })];
          } else {
            attended = [Array.from({ length: Hq }, (_, h) => {
              const b = before[Math.floor(h / g)];
              const a = new Int32Array(b.length + 1);
              a.set(b);
              a[b.length] = L + s;
              return a;
            })];
          }
        } else {
          const x = layerTensors(t, l);
          const qLast = new Float32Array(Hq * D);
          const qf = x.q.toFloat32();
          for (let h = 0; h < Hq; h++) qLast.set(qf.subarray((h * L + L - 1) * D, (h * L + L) * D), h * D);
          x.q.dispose();
          x.k.dispose();
          x.v.dispose();
          const qt = Tensor.from(qLast, [1, Hq, D], { dtype });
          const out = cache.attend(l, [seq], qt);
          qt.dispose();
          o = out.toFloat32();
          out.dispose();
          const kept = seq.kept(l);
          attended = [Array.from({ length: Hq }, (_, h) => kept[Math.floor(h / g)])];
        }
        const p = ref.probs[l][s];
        const n = p.length / Hq;
        const perKv: Array<Set<number>> = Array.from({ length: Hkv }, () => new Set());
        for (let h = 0; h < Hq; h++) {
          errs.push(relErr(o, ref.out[l][s], h, D));
          let mk = 0;
          for (const pos of attended[0][h]) {
            if (pos < n) mk += p[h * n + pos];
            perKv[Math.floor(h / g)].add(pos);
          }
          mass.push(mk);
        }
        attendedAt[l].push(perKv);
      }
    }
    let recall: number | null = null;
    if (truth && truth.needles.length) {
      let hit = 0;
      for (const nd of truth.needles) {
        const steps = T > 0 && nd.steps.length ? nd.steps : [0];
        const ok = steps.every((s) => attendedAt[nd.layer]?.[Math.min(s, probes - 1)]?.[nd.kvHead]?.has(nd.position));
        if (ok) hit++;
      }
      recall = hit / truth.needles.length;
    }
    const st = seq.stats();
    return { errs, mass, recall, bytesHeld: st.bytesHeld, bytesFull: st.bytesFull, prefillMs, decodeMs };
  } finally {
    cache.dispose();
  }
}

const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / Math.max(1, a.length);

export function runEval(trace: Trace, truth: TraceTruth | undefined, o: EvalOptions, source = 'synthetic'): EvalReport {
  const started = performance.now();
  const dtype = o.dtype ?? 'f16';
  const P = o.pageSize ?? 16;
  o.onProgress?.('exact reference');
  const ref = computeReference(trace);
  const full = runOne(trace, ref, truth, null, dtype, P);
  o.onProgress?.('full cache');
  const rows: EvalRow[] = [];
  const shots = traceShots(trace);
  const L = trace.seqLen;
  const NL = trace.numLayers;
  const probes = ref.probes;
  for (const method of o.methods) {
    for (const b of o.budgets) {
      const C = Math.max(1, Math.ceil(b * L));
      const opts = { ...budgetOptions(method, C, L), shots };
      const m = makeMethod(method, opts);
      const r = runOne(trace, ref, truth, m, dtype, P);
      rows.push({
        method,
        budget: b,
        budgetTokens: C,
        params: m.params,
        errMean: mean(r.errs),
        errWorst: Math.max(...r.errs),
        massKept: mean(r.mass),
        needleRecall: r.recall,
        bytesHeld: r.bytesHeld,
        bytesFull: r.bytesFull,
        memoryPct: (100 * r.bytesHeld) / Math.max(1, r.bytesFull),
        prefillMsPerLayer: r.prefillMs / NL,
        decodeMsPerStep: trace.steps > 0 ? r.decodeMs / (NL * probes) : 0,
      });
      o.onProgress?.(`${method} ${Math.round(b * 100)}%`);
    }
  }
  return {
    trace: {
      layers: NL, qHeads: trace.numQHeads, kvHeads: trace.numKvHeads, headDim: trace.headDim, seqLen: L, steps: trace.steps, dtype: trace.dtype, source,
    },
    dtype,
    fullCache: { errMean: mean(full.errs), errWorst: Math.max(...full.errs) },
    rows,
    seconds: (performance.now() - started) / 1000,
  };
}
