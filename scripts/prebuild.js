#!/usr/bin/env node
// npm run prebuild: prebuilds/linux-x64/node.napi.node with the CPU kernels
// and, when nvcc is here, CUDA for sm_80, 86, 89, 90 plus PTX, the CUDA
// runtime linked statically, stripped. prebuildify names and strips the
// binary; cmake-js builds it (through scripts/cmake-gyp.js).
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');
const fs = require('fs');

const root = path.join(__dirname, '..');
const prebuildify = require.resolve('prebuildify/bin.js', { paths: [root] });
const r = spawnSync(
  process.execPath,
  // prebuildify spawns the node-gyp stand-in directly (no shell): an executable path.
  // prebuildify 6 names the file after --name (default: the package name);
  // 'node.napi' gives node.napi.node, which node-gyp-build reads as runtime
  // node + Node-API.
  [prebuildify, '--napi', '--strip', '--name', 'node.napi', '--node-gyp', path.join(root, 'scripts', 'cmake-gyp.js')],
  { cwd: root, stdio: 'inherit' },
);
if (r.status !== 0) process.exit(r.status === null ? 1 : r.status);
const out = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'node.napi.node');
if (!fs.existsSync(out)) {
  console.error(`prebuild: ${out} was not written`);
  process.exit(1);
}
console.log(`prebuild: ${path.relative(root, out)} (${fs.statSync(out).size} bytes)`);
