/**
 * `kvsqueeze eval`: the report's shape on a small synthetic trace, the files
 * it writes, and bad arguments. Runs the built CLI (dist/) in a child process:
 * the SVG renderer is an ES module, which jest's sandbox does not import.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { METHODS } from '../lib/methods';

const root = path.join(__dirname, '..');
const cli = path.join(root, 'bin', 'kvsqueeze.js');

function run(args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', env: process.env, timeout: 120000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('eval', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvsq-eval-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('runs every method at the given budgets and writes report.json and the SVG', () => {
    const r = run(['eval', '--out', dir, '--layers', '2', '--seq-len', '512', '--steps', '4', '--budgets', '10%,0.5', '--no-progress']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    for (const m of METHODS) expect(r.out).toContain(m);
    const report = JSON.parse(fs.readFileSync(path.join(dir, 'report.json'), 'utf8'));
    expect(report.trace).toMatchObject({ layers: 2, seqLen: 512, steps: 4 });
    expect(report.rows).toHaveLength(METHODS.length * 2);
    for (const row of report.rows) {
      expect(METHODS).toContain(row.method);
      expect([0.1, 0.5]).toContain(row.budget);
      for (const key of ['errMean', 'errWorst', 'massKept', 'bytesHeld', 'bytesFull', 'memoryPct', 'prefillMsPerLayer', 'decodeMsPerStep'])
        expect(Number.isFinite(row[key])).toBe(true);
      expect(row.errWorst).toBeGreaterThanOrEqual(row.errMean);
      expect(row.massKept).toBeGreaterThan(0);
      expect(row.massKept).toBeLessThanOrEqual(1 + 1e-6);
      expect(row.needleRecall).toBeGreaterThanOrEqual(0);
      expect(row.needleRecall).toBeLessThanOrEqual(1);
      // Eviction methods hold less than the full cache; Quest holds everything but reads less.
      if (row.method === 'quest') expect(row.memoryPct).toBeCloseTo(100, 5);
      else expect(row.memoryPct).toBeLessThan(100);
    }
    // More budget keeps at least as much attention mass for these methods on this trace.
    for (const m of ['snapkv', 'h2o', 'quest', 'streamingllm']) {
      const rows = report.rows.filter((x: { method: string }) => x.method === m);
      expect(rows[1].massKept).toBeGreaterThanOrEqual(rows[0].massKept - 1e-9);
    }
    const svg = fs.readFileSync(path.join(dir, 'error-vs-budget.svg'), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('snapkv');
  });

  it('--json prints the report; --methods and a user --trace are honoured', () => {
    const trace = path.join(root, 'test', 'fixtures', 'tiny-trace.safetensors');
    const r = run(['eval', '--out', dir, '--trace', trace, '--methods', 'snapkv,quest', '--budgets', '50%', '--json']);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out);
    expect(report.trace.source).toBe('tiny-trace.safetensors');
    expect(report.rows.map((x: { method: string }) => x.method)).toEqual(['snapkv', 'quest']);
    expect(report.rows[0].needleRecall).toBeNull(); // no planted needles in a user trace
  });

  it.each([
    [['eval', '--methods', 'snapkv,bogus'], /unknown method 'bogus'/],
    [['eval', '--budgets', '150%'], /not a fraction/],
    [['eval', '--budgets', ''], /empty list/],
    [['eval', '--seq-len', '-3'], /integer >= 8/],
    [['eval', '--dtype', 'f64'], /--dtype/],
    [['eval', '--trace', '/nonexistent.safetensors'], /no such file/],
    [['eval', '--frobnicate'], /unknown option/],
  ])('%j: a clear message and exit code 2', (args, msg) => {
    const r = run(args as string[]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(msg as RegExp);
  });
});
