/**
 * Packaging: `npm run prebuild`, `npm pack`, install the tarball into an empty
 * project with no compilers on PATH, and load it. Slow (it builds the CUDA
 * prebuild for four architectures when nvcc is present), so it runs only with
 * KVSQ_PACK_TEST=1; .ci/run sets it.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const root = path.join(__dirname, '..');
const enabled = process.env.KVSQ_PACK_TEST === '1';
const maybe = enabled ? describe : describe.skip;

function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): string {
  return execFileSync(cmd, args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
}

maybe('npm pack with the prebuild', () => {
  jest.setTimeout(30 * 60 * 1000);
  let work: string;
  let tarball: string;
  let noCompilers: NodeJS.ProcessEnv;

  beforeAll(() => {
    const prebuild = path.join(root, 'prebuilds', 'linux-x64', 'node.napi.node');
    if (!fs.existsSync(prebuild) || process.env.KVSQ_PACK_REBUILD === '1') sh('npm', ['run', 'prebuild'], root);
    expect(fs.existsSync(prebuild)).toBe(true);
    const dynamic = sh('readelf', ['-d', prebuild], root);
    expect(dynamic).not.toMatch(/libcuda|libcudart/);

    work = fs.mkdtempSync(path.join(os.tmpdir(), 'kvsq-pack-'));
    const json = sh('npm', ['pack', '--json', '--pack-destination', work], root);
    const info = JSON.parse(json.slice(json.indexOf('[')));
    tarball = path.join(work, info[0].filename);
    const files: string[] = info[0].files.map((f: { path: string }) => f.path);
    expect(files).toContain('prebuilds/linux-x64/node.napi.node');
    expect(files.some((f) => f.startsWith('build/'))).toBe(false);
    expect(files).toContain('dist/index.js');
    expect(files).toContain('dist/index.d.ts');

    // PATH with node, npm and sh (npm runs scripts through it) only: no cmake, no compiler, no make.
    const bin = path.join(work, 'bin');
    fs.mkdirSync(bin);
    fs.symlinkSync(process.execPath, path.join(bin, 'node'));
    fs.symlinkSync('/bin/sh', path.join(bin, 'sh'));
    const npmCli = fs.realpathSync(sh('sh', ['-c', 'command -v npm'], root).trim());
    fs.writeFileSync(path.join(bin, 'npm'), `#!/bin/sh\nexec "${process.execPath}" "${npmCli}" "$@"\n`, { mode: 0o755 });
    noCompilers = { ...process.env, PATH: bin, CC: 'false', CXX: 'false', npm_config_node_gyp: '/nonexistent' };
  });

  afterAll(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  const check = (dir: string) => {
    const pkgDir = path.join(dir, 'node_modules', 'kvsqueeze');
    expect(fs.existsSync(path.join(pkgDir, 'build'))).toBe(false);
    const script = [
      "const k = require('kvsqueeze');",
      'const i = k.backend.info();',
      "const t = k.Tensor.from(new Float32Array([1, 2, 3]), [3], { dtype: 'f16' });",
      'console.log(JSON.stringify({ cuda: i.cuda, sum: Array.from(t.toFloat32()).reduce((a, b) => a + b) }));',
    ].join('\n');
    const out = JSON.parse(sh('node', ['-e', script], dir, noCompilers));
    expect(out.sum).toBe(6);
    expect(typeof out.cuda.available).toBe('boolean');
    const esm = sh('node', ['--input-type=module', '-e', "import { backend } from 'kvsqueeze'; console.log(typeof backend.info);"], dir, noCompilers);
    expect(esm.trim()).toBe('function');
  };

  for (const ignoreScripts of [false, true]) {
    it(`installs and loads without compiling${ignoreScripts ? ' (--ignore-scripts)' : ''}`, () => {
      const dir = path.join(work, ignoreScripts ? 'app-noscripts' : 'app');
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
      const args = ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball];
      if (ignoreScripts) args.push('--ignore-scripts');
      sh('npm', args, dir, noCompilers);
      check(dir);
    });
  }
});
