#!/usr/bin/env node
// npm install hook. In order:
//   1. a binary that loads already (a prebuild in prebuilds/, or an earlier
//      build in build/Release): nothing to do;
//   2. cmake-js (present in a clone, where devDependencies are installed) and
//      cmake on PATH: the full build, with CUDA when nvcc is found (for the
//      local GPUs' architectures, or KVSQ_CUDA_ARCHS);
//   3. otherwise node-gyp with binding.gyp: the CPU-only addon.
// KVSQ_BUILD_FROM_SOURCE=1 skips step 1.
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');
const fs = require('fs');

const root = path.join(__dirname, '..');

function run(cmd, args) {
  console.log(`kvsqueeze: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: false });
  return r.status === 0;
}

function loads() {
  try {
    require('node-gyp-build')(root);
    return true;
  } catch {
    return false;
  }
}

function has(cmd) {
  const r = spawnSync(cmd, ['--version'], { stdio: 'ignore' });
  return r.status === 0;
}

function main() {
  if (!process.env.KVSQ_BUILD_FROM_SOURCE && loads()) {
    console.log('kvsqueeze: using the existing binary (prebuild or earlier build)');
    return 0;
  }
  let cmakeJs = null;
  try {
    cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  } catch {
    cmakeJs = null;
  }
  if (cmakeJs && has('cmake')) {
    const cuda = process.env.KVSQ_CUDA || 'AUTO';
    // Architectures: CMakeLists.txt picks this machine's GPUs unless told.
    const archs = process.env.KVSQ_CUDA_ARCHS ? [`--CDKVSQ_CUDA_ARCHS=${process.env.KVSQ_CUDA_ARCHS}`] : [];
    if (run(process.execPath, [cmakeJs, 'rebuild', `--CDKVSQ_CUDA=${cuda}`, ...archs])) return 0;
    console.error('kvsqueeze: the cmake-js build failed; trying the CPU-only node-gyp build');
  }
  const gyp = process.env.npm_config_node_gyp;
  const ok = gyp && fs.existsSync(gyp) ? run(process.execPath, [gyp, 'rebuild']) : run('npx', ['--yes', 'node-gyp', 'rebuild']);
  return ok ? 0 : 1;
}

process.exitCode = main();
