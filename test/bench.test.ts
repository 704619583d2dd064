/**
 * `kvsqueeze bench --quick --json`: the shape of the report only. Timings are
 * never asserted (the machine is shared and noisy).
 */
import { main } from '../lib/cli';
import { BenchReport, formatReport, runBench } from '../lib/bench';

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

describe('bench', () => {
  it('--quick --json: rooflines and one row per kernel with the documented fields', async () => {
    const r = await run(['bench', '--backend', 'cpu', '--quick', '--json', '--no-native-peak']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as BenchReport;
    expect(j.backend).toBe('cpu');
    expect(j.quick).toBe(true);
    expect(j.rooflines.copyGbps).toBeGreaterThan(0);
    expect(typeof j.rooflines.copyMethod).toBe('string');
    expect(j.rooflines.fmaPeakGflops).toBeNull();
    expect(j.rooflines.fmaPeakSource).toMatch(/^n\/a/);
    const kernels = new Set(j.rows.map((x) => x.kernel));
    for (const k of ['decodeAttention', 'windowScores', 'pool1d', 'chunkScores', 'topk', 'questBounds', 'append', 'gather']) expect(kernels).toContain(k);
    for (const row of j.rows) checkRow(row as unknown as Record<string, unknown>);
    const dec = j.rows.filter((x) => x.kernel === 'decodeAttention');
    expect(dec.length).toBe(2);
    for (const d of dec) expect(d.ort).toBeDefined();
  });

  it('--kernel selects rows; the human table names every column', async () => {
    const r = await runBench({ quick: true, kernels: ['topk', 'pool1d'], ort: false, nativePeak: false });
    expect(r.rows.map((x) => x.id)).toEqual(['topk', 'pool1d-max', 'pool1d-avg']);
    const t = formatReport(r);
    expect(t).toMatch(/copy roofline: [\d.]+ GB\/s/);
    expect(t).toMatch(/FMA peak: n\/a/);
    for (const h of ['kernel', 'ms', 'GB/s', '% copy', 'TS ref ms', 'speedup']) expect(t).toContain(h);
  });

  it('bad options: unknown kernel and backend exit 2, cuda is unsupported (exit 1)', async () => {
    const a = await run(['bench', '--quick', '--kernel', 'nope', '--no-native-peak']);
    expect(a.code).toBe(2);
    expect(a.err).toMatch(/unknown kernel 'nope'/);
    const b = await run(['bench', '--quick', '--backend', 'tpu', '--no-native-peak']);
    expect(b.code).toBe(2);
    const c = await run(['bench', '--quick', '--backend', 'cuda', '--no-native-peak']);
    expect(c.code).toBe(1);
    expect(c.err).toMatch(/KVSQ_UNSUPPORTED/);
  });
});
