import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { main } from '../lib/cli';
import { readSafetensorsFile } from '../lib/io/safetensors';
import { METHODS } from '../lib/methods';

const fixture = path.join(__dirname, 'fixtures', 'tiny-trace.safetensors');

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(['node', 'kvsqueeze', ...args], { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
}

describe('select: bad arguments', () => {
  it.each([
    [['select', fixture], /method/],
    [['select', fixture, '--method', 'nope'], /Allowed choices/],
    [['select', '/nonexistent.safetensors', '--method', 'snapkv'], /no such file/],
    [['select', fixture, '--method', 'snapkv', '--budget', '1.5'], /integer/],
    [['select', fixture, '--method', 'snapkv', '--kernel', '4'], /odd/],
    [['select', fixture, '--method', 'snapkv', '--budget', '8', '--ratio', '0.5'], /not both/],
    [['select', fixture, '--method', 'snapkv', '--out-tensors', '/tmp/x.safetensors', '--prefill-only'], /decode steps/],
  ])('%j exits 2', async (args, msg) => {
    const r = await run(args as string[]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(msg as RegExp);
  });
  it('a malformed trace file is KVSQ_FORMAT, exit 2', async () => {
    const bad = path.join(os.tmpdir(), `kvsq-bad-${process.pid}.safetensors`);
    fs.writeFileSync(bad, Buffer.from([1, 2, 3]));
    const r = await run(['select', bad, '--method', 'snapkv']);
    fs.unlinkSync(bad);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/KVSQ_FORMAT/);
  });
});

describe('select on the committed tiny trace', () => {
  it.each(METHODS)('%s writes the documented JSON', async (m) => {
    const r = await run(['select', fixture, '--method', m, '--budget', '12', '--window', '4', '--page-size', '4', '--dense-layers', '0', '--heavy', '4', '--recent', '4', '--prefill-budget', '18', '--decode-budget', '2']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.method).toBe(m);
    expect(typeof j.params).toBe('object');
    expect(j.layers).toHaveLength(2);
    for (const layer of j.layers) {
      expect(layer.heads).toHaveLength(2);
      for (const h of layer.heads) {
        const k: number[] = h.kept;
        expect(k.length).toBeGreaterThan(0);
        for (let i = 1; i < k.length; i++) expect(k[i]).toBeGreaterThan(k[i - 1]);
        expect(k[k.length - 1]).toBeLessThan(24 + 3);
        // the newest decode token is held after its step (ShotKV may evict it: it protects no recent window)
        if (m !== 'shotkv') expect(k).toContain(26);
      }
      if (m === 'quest') {
        expect(layer.steps).toHaveLength(3);
        for (const st of layer.steps) {
          expect(st.heads).toHaveLength(4);
          for (const h of st.heads) {
            // budget 12 / page 4 = 3 pages: 2 by bound + the current page
            expect(h.pages.length).toBe(3);
            expect(h.pages[h.pages.length - 1]).toBe(6); // 25..27 tokens -> 7 pages, last is 6
          }
        }
      } else {
        expect(layer.steps).toBeUndefined();
      }
    }
  });

  it('--json and --out-tensors write files', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvsq-select-'));
    const json = path.join(dir, 'out.json');
    const tens = path.join(dir, 'o.safetensors');
    const r = await run(['select', fixture, '--method', 'h2o', '--json', json, '--out-tensors', tens]);
    expect(r.code).toBe(0);
    expect(JSON.parse(fs.readFileSync(json, 'utf8')).method).toBe('h2o');
    const o = readSafetensorsFile(tens).tensors.get('o')!;
    expect(o.shape).toEqual([2, 4, 3, 16]);
    expect((o.data as Float32Array).every((x) => Number.isFinite(x))).toBe(true);
    fs.rmSync(dir, { recursive: true });
  });
});
