/**
 * `kvsqueeze bench --quick --json`: the shape of the report only. Timings are
 * never asserted (the machine is shared and noisy): no test compares a time,
 * a ratio or a `met` flag with anything.
 */
import { main } from '../lib/cli';
import { backend } from '../lib/backend';
import { BenchReport, formatReport, runBench } from '../lib/bench';
import { DECODE_IDS, METHOD_IDS, PREFILL_IDS, randomF16Bits, selectMethodIds } from '../lib/bench/methods';

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(['node', 'kvsqueeze', ...args], { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
}

function checkRow(r: Record<string, unknown>) {
  for (const k of ['kernel', 'id', 'shape', 'dtype', 'baselineName', 'baselineNote']) expect(typeof r[k]).toBe('string');
  for (const k of ['ms', 'runs', 'bytes', 'gbps', 'rooflinePct', 'baseline', 'speedup']) {
    expect(typeof r[k]).toBe('number');
    expect(Number.isFinite(r[k] as number)).toBe(true);
    expect(r[k] as number).toBeGreaterThan(0);
  }
  expect(r.runs as number).toBeGreaterThanOrEqual(10);
  expect(['memory', 'compute']).toContain(r.bound);
  expect(r.gflops === null || typeof r.gflops === 'number').toBe(true);
  expect(r.peakPct === null || typeof r.peakPct === 'number').toBe(true);
  if (r.kernel === 'decodeAttention' && r.ort !== 'unavailable') {
    const o = r.ort as { ms: number; speedup: number; maxAbsDiff: number };
    expect(o.ms).toBeGreaterThan(0);
    expect(o.speedup).toBeGreaterThan(0);
    expect(o.maxAbsDiff).toBeLessThan(1e-2); // ORT and our kernel compute the same attention
  }
}

const positive = (x: unknown) => {
  expect(typeof x).toBe('number');
  expect(Number.isFinite(x as number)).toBe(true);
  expect(x as number).toBeGreaterThan(0);
};

function checkMethodRow(r: Record<string, unknown>) {
  expect(['prefill', 'decode']).toContain(r.kind);
  for (const k of ['id', 'method', 'shape', 'params', 'dtype']) expect(typeof r[k]).toBe('string');
  expect(METHOD_IDS).toContain(r.id);
  expect((r.id as string).startsWith(r.kind as string)).toBe(true);
  for (const k of ['L', 'ms', 'runs', 'tokensKept']) positive(r[k]);
  expect(r.note === undefined || typeof r.note === 'string').toBe(true);
  if (r.kind === 'prefill') {
    const m = r.memory as Record<string, number>;
    expect(m).toBeDefined();
    for (const k of ['bytesFull', 'bytesHeld', 'bytesPerPage']) positive(m[k]);
    for (const k of ['bytesSaved', 'freedPct', 'pagesFreed']) {
      expect(Number.isFinite(m[k])).toBe(true);
      expect(m[k]).toBeGreaterThanOrEqual(0);
    }
    expect(m.bytesHeld + m.bytesSaved).toBe(m.bytesFull);
    expect(m.freedPct).toBeLessThanOrEqual(100);
    expect(r.tokensKept as number).toBeLessThanOrEqual(r.L as number);
  } else {
    expect(r.memory).toBeUndefined();
  }
}

describe('bench', () => {
  it('--quick --json: rooflines, one row per kernel and every method row, with the documented fields', async () => {
    const r = await run(['bench', '--backend', 'cpu', '--quick', '--json', '--no-native-peak']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as BenchReport;
    expect(j.backend).toBe('cpu');
    expect(j.device).toBe('cpu');
    expect(j.quick).toBe(true);
    expect(j.skipped).toBeUndefined();
    expect(j.rooflines).not.toBeNull();
    expect(j.rooflines!.copyGbps).toBeGreaterThan(0);
    expect(typeof j.rooflines!.copyMethod).toBe('string');
    expect(j.rooflines!.fmaPeakGflops).toBeNull();
    expect(j.rooflines!.fmaPeakSource).toMatch(/^n\/a/);
    const kernels = new Set(j.rows.map((x) => x.kernel));
    for (const k of ['decodeAttention', 'windowScores', 'pool1d', 'chunkScores', 'topk', 'questBounds', 'append', 'gather']) expect(kernels).toContain(k);
    for (const row of j.rows) checkRow(row as unknown as Record<string, unknown>);
    const dec = j.rows.filter((x) => x.kernel === 'decodeAttention');
    expect(dec.length).toBe(2);
    for (const d of dec) expect(d.ort).toBeDefined();

    // method-level rows: every prefill and decode row, in the documented order
    expect(j.methodRows.map((x) => x.id)).toEqual([...PREFILL_IDS, ...DECODE_IDS]);
    for (const row of j.methodRows) checkMethodRow(row as unknown as Record<string, unknown>);
    const methods = new Set(j.methodRows.filter((x) => x.kind === 'prefill').map((x) => x.method));
    for (const m of ['streamingllm', 'snapkv', 'pyramidkv', 'chunkkv', 'shotkv', 'h2o']) expect(methods).toContain(m);
    const full = j.methodRows.find((x) => x.id === 'prefill-none')!;
    expect(full.memory!.bytesSaved).toBe(0);
    expect(full.tokensKept).toBe(full.L);
    // a compressing method frees pages (a fact of the bookkeeping, not a timing)
    expect(j.methodRows.find((x) => x.id === 'prefill-snapkv')!.memory!.pagesFreed).toBeGreaterThan(0);
    // the ratios, with their targets; their values and `met` are not asserted
    expect(j.ratios.map((x) => x.id)).toEqual(['h2o-step-overhead', 'quest-speedup-repeated-kv', 'quest-speedup', 'quest-share-speedup']);
    for (const x of j.ratios) {
      positive(x.value);
      expect(typeof x.what).toBe('string');
      if (x.id === 'quest-speedup-repeated-kv') {
        // shown for comparison with the paper's accounting: no target, no verdict
        expect(x.target).toBeUndefined();
        expect(x.met).toBeUndefined();
        continue;
      }
      expect(typeof x.met).toBe('boolean');
      expect(x.target).toMatch(/^(<=|>=) [\d.]+$/);
    }
    expect(Array.isArray(j.notes)).toBe(true);
  });

  it('--kernel selects kernel rows only; the human table names every column', async () => {
    const r = await runBench({ quick: true, kernels: ['topk', 'pool1d'], ort: false, nativePeak: false });
    expect(r.rows.map((x) => x.id)).toEqual(['topk', 'pool1d-max', 'pool1d-avg']);
    expect(r.methodRows).toEqual([]);
    expect(r.ratios).toEqual([]);
    const t = formatReport(r);
    expect(t).toMatch(/copy roofline: [\d.]+ GB\/s/);
    expect(t).toMatch(/FMA peak: n\/a/);
    for (const h of ['kernel', 'ms', 'GB/s', '% copy', 'TS ref ms', 'speedup']) expect(t).toContain(h);
    expect(t).not.toContain('Prefill compression');
  });

  it('--method selects method rows only (plus the rows their ratios need); the human report has both sections', async () => {
    const r = await runBench({ quick: true, methods: ['h2o', 'prefill-snapkv'], nativePeak: false });
    expect(r.rows).toEqual([]);
    expect(r.rooflines).toBeNull();
    expect(r.methodRows.map((x) => x.id)).toEqual(['prefill-snapkv', 'prefill-h2o', 'decode-dense-kept', 'decode-h2o']);
    for (const row of r.methodRows) checkMethodRow(row as unknown as Record<string, unknown>);
    expect(r.ratios.map((x) => x.id)).toEqual(['h2o-step-overhead']);
    const t = formatReport(r);
    expect(t).toContain('Prefill compression per method');
    expect(t).toContain('Decode step per method');
    for (const h of ['kept/head', 'freed %', 'pages freed', 'ms/layer/token']) expect(t).toContain(h);
    expect(t).toMatch(/H2O decode step \/ plain decode step .*\(target <= 1\.2\): (met|NOT met)/);
    expect(t).not.toContain('copy roofline');
  });

  it('method selection expands groups, names and ratio dependencies', () => {
    expect(selectMethodIds(['all'])).toEqual([...METHOD_IDS]);
    expect(selectMethodIds(['prefill'])).toEqual([...PREFILL_IDS]);
    expect(selectMethodIds(['decode'])).toEqual([...DECODE_IDS]);
    expect(selectMethodIds(['quest'])).toEqual(['decode-dense', 'decode-dense-repeat', 'decode-quest', 'decode-quest-share']);
    expect(selectMethodIds(['decode-quest'])).toEqual(['decode-dense', 'decode-dense-repeat', 'decode-quest']);
    expect(selectMethodIds(['decode-quest-share'])).toEqual(['decode-dense', 'decode-quest-share']);
    expect(selectMethodIds(['shotkv'])).toEqual(['prefill-shotkv', 'decode-shotkv']);
    expect(() => selectMethodIds(['nope'])).toThrow(/unknown method row 'nope'/);
  });

  it('random f16 prompt values are finite, of both signs, with magnitudes in [1/32, 1)', () => {
    const b = randomF16Bits(4096);
    let neg = 0;
    for (const x of b) {
      const e = (x >> 10) & 31;
      expect(e).toBeGreaterThanOrEqual(10);
      expect(e).toBeLessThanOrEqual(14);
      if (x & 0x8000) neg++;
    }
    expect(neg).toBeGreaterThan(1000);
    expect(neg).toBeLessThan(3096);
  });

  it('bad options: unknown kernel, method or backend exit 2', async () => {
    const a = await run(['bench', '--quick', '--kernel', 'nope', '--no-native-peak']);
    expect(a.code).toBe(2);
    expect(a.err).toMatch(/unknown kernel 'nope'/);
    const m = await run(['bench', '--quick', '--method', 'nope', '--no-native-peak']);
    expect(m.code).toBe(2);
    expect(m.err).toMatch(/unknown method row 'nope'/);
    const b = await run(['bench', '--quick', '--backend', 'tpu', '--no-native-peak']);
    expect(b.code).toBe(2);
    const c = await run(['bench', '--quick', '--backend', 'cuda:x', '--no-native-peak']);
    expect(c.code).toBe(2);
  });

  const cuda = backend.info().cuda;
  (cuda.available ? it.skip : it)('--backend cuda without CUDA: one line saying why, exit 0, no rows', async () => {
    const h = await run(['bench', '--quick', '--backend', 'cuda', '--no-native-peak']);
    expect(h.code).toBe(0);
    expect(h.out).toBe(`CUDA unavailable: ${cuda.reason}\n`);
    const j = await run(['bench', '--quick', '--backend', 'cuda:0', '--json']);
    expect(j.code).toBe(0);
    const r = JSON.parse(j.out) as BenchReport;
    expect(r.rows).toEqual([]);
    expect(r.methodRows).toEqual([]);
    expect(r.rooflines).toBeNull();
    expect(r.skipped).toBe(`CUDA unavailable: ${cuda.reason}`);
  });

  (cuda.available ? it : it.skip)('--backend cuda with CUDA: kernel rows on the device (or a note per kernel the build lacks)', async () => {
    const j = await run(['bench', '--quick', '--backend', 'cuda', '--json', '--kernel', 'topk,gather']);
    expect(j.code).toBe(0);
    const r = JSON.parse(j.out) as BenchReport;
    expect(r.device).toBe('cuda:0');
    expect(r.skipped).toBeUndefined();
    expect(r.rows.length + r.notes.filter((n) => /^(topk|gather):/.test(n)).length).toBe(2);
    for (const row of r.rows) checkRow(row as unknown as Record<string, unknown>);
    expect(r.notes.some((n) => /L2 flushed/.test(n))).toBe(true);
  });
});
