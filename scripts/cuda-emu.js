#!/usr/bin/env node
// Rewrites CUDA kernel files into C++ for the CPU emulator
// (test/native/emu/cuda_emu.h), so the native suite can run the kernels' own
// source without a GPU:
//   node scripts/cuda-emu.js OUT_DIR cuda/topk.cu [... test/native/test_cuda_x.cu]
// writes OUT_DIR/<name>_emu.cc for each file (one translation unit each, as
// in the real build) and OUT_DIR/emu_launchers.h (cuda/launchers.h with the
// launchers in namespace kvsq::emu_cuda: the emulated code and the tests use
// those, never the real kvsq:: ones). cuda/common.cuh is inlined into each.
// A CUDA test file (under test/) runs against the emulated launchers, its
// tests renamed cuda_* -> emu_* (so the filter "cuda_" still picks the
// device tests alone); KVSQ_CUDA_EMU is defined for it, for the few places
// where a test differs under the emulator (sizes, the emulated part).
// Inline asm becomes a call to the emulator's model of the instruction
// (cp.async, ldmatrix, mma.sync; any other fails the launch that reaches it). Static __shared__
// variables become per-block emulator memory. Constructs with no model
// (textures, other __shared__ forms) stop the rewrite with an error.
'use strict';
const fs = require('fs');
const path = require('path');

const argv = process.argv.slice(2);
// --addon: the emulated code keeps namespace kvsq and the real launchers.h,
// to be linked into an addon in place of the CUDA objects (an emulated
// device behind the N-API bindings: scripts/cuda-emu-smoke.sh).
const addon = argv[0] === '--addon';
if (addon) argv.shift();
const [out, ...srcs] = argv;
if (!out || srcs.length === 0) {
  console.error('usage: cuda-emu.js [--addon] OUT_DIR IN.cu [IN.cu ...]');
  process.exit(2);
}
const die = (msg) => {
  console.error(`cuda-emu: ${msg}`);
  process.exit(1);
};

let sharedId = 0;

// Splits s at top-level occurrences of sep (outside parentheses, brackets
// and string literals).
function splitTop(s, sep) {
  const parts = [];
  let depth = 0;
  let cur = '';
  for (let i = 0; i < s.length; ++i) {
    const c = s[i];
    if (c === '"') {
      let j = i + 1;
      for (; s[j] !== '"'; ++j) if (s[j] === '\\') ++j;
      cur += s.slice(i, j + 1);
      i = j;
      continue;
    }
    if (c === '(' || c === '[' || c === '{') depth++;
    if (c === ')' || c === ']' || c === '}') depth--;
    if (c === sep && depth === 0) {
      parts.push(cur);
      cur = '';
    } else cur += c;
  }
  parts.push(cur);
  return parts;
}

// Rewrites every match of re (which ends at an opening parenthesis) up to
// its matching closing one: fn(match, inside) gives the replacement.
function rewriteCalls(text, re, file, fn) {
  let res = '';
  let last = 0;
  let m;
  while ((m = re.exec(text))) {
    let depth = 1;
    let i = m.index + m[0].length;
    for (; i < text.length && depth > 0; ++i) {
      if (text[i] === '(') depth++;
      else if (text[i] === ')') depth--;
      else if (text[i] === '"') for (++i; text[i] !== '"'; ++i) if (text[i] === '\\') ++i;
    }
    if (depth !== 0) die(`unbalanced parentheses after "${m[0]}" in ${file}`);
    res += text.slice(last, m.index) + fn(m, text.slice(m.index + m[0].length, i - 1));
    last = i;
    re.lastIndex = i;
  }
  return res + text.slice(last);
}

// `asm volatile("tpl" : "=r"(x), ... : "r"(y), ... : clobbers);` ->
// ::cuda_emu::ptx("tpl", {Opnd::ref(x), ..., Opnd::val(y), ...}), which
// models the few instructions the kernels use (cuda_emu.h) and fails a launch
// that reaches any other.
function rewriteAsm(text, file) {
  return rewriteCalls(text, /\basm\s*(?:volatile\s*)?\(/g, file, (m, inner) => {
    const [tpl, outs = '', ins = ''] = splitTop(inner, ':');
    const operand = (o, kind) => {
      const mm = /^\s*"([^"]*)"\s*\(([\s\S]*)\)\s*$/.exec(o);
      if (!mm) die(`asm operand "${o.trim()}" in ${file}`);
      return `::cuda_emu::Opnd::${kind}(${mm[2]})`;
    };
    const ops = [
      ...splitTop(outs, ',').filter((o) => o.trim()).map((o) => operand(o, 'ref')),
      ...splitTop(ins, ',').filter((o) => o.trim()).map((o) => operand(o, 'val')),
    ];
    return `::cuda_emu::ptx(${tpl.trim()}, {${ops.join(', ')}})`;
  });
}

// kernel<<<grid, block[, smem[, stream]]>>>(args)  ->  chevron(grid, ...)([&] { kernel(args); })
// (each emulated thread evaluates the call: its own copies of the
// arguments, template arguments deduced as nvcc does)
function rewriteChevrons(text, file) {
  return rewriteCalls(text, /([\w:]+(?:<[^<>;]*>)?)\s*<<<([^;]*?)>>>\s*\(/g, file,
    (m, args) => `::cuda_emu::chevron(${m[2]})([&] { ${m[1]}(${args}); })`);
}

function rewrite(file, text, isTest = false) {
  const dir = path.dirname(path.resolve(file));
  if (/\btex[123]D\b|\bcudaTextureObject_t\b/.test(text)) die(`${file} uses textures`);
  text = rewriteAsm(text, file);
  // CUDA headers are replaced by the emulator's; project headers keep working.
  text = text.replace(/^#include <(cuda_runtime|cooperative_groups|cuda_bf16|cuda_fp16|cuda)\.h>\s*$/gm, '');
  text = text.replace(/^#include "common\.cuh"\s*$/m, '');
  // launchers.h declares the real kvsq:: launchers, which argument-dependent
  // lookup would find beside the emulated ones: the emulated declarations instead.
  if (!addon) text = text.replace(/^#include "(?:\.\.\/)*(?:cuda\/)?launchers\.h"\s*$/m, '#include "emu_launchers.h"');
  // includes relative to the file become absolute; others (include paths) stay
  text = text.replace(/^#include "(?!emu_launchers\.h)([^"]+)"\s*$/gm, (m, f) =>
    fs.existsSync(path.join(dir, f)) ? `#include "${path.join(dir, f)}"` : m);
  text = text.replace(/^\s*#pragma unroll.*$/gm, '');
  // extern __shared__ [__align__(N)] T name[];  ->  T* name = the block's dynamic shared memory
  text = text.replace(
    /extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+(?:\s+[\w:]+)*?)\s+(\w+)\[\]\s*;/g,
    (m, type, name) => `${type}* ${name} = ::cuda_emu::dynamic_smem<${type}>();`,
  );
  // __shared__ [__align__(N)] T a[N][M], b, c[K];  ->  references into per-block emulator memory
  text = text.replace(
    /__shared__\s+(?:__align__\(\d+\)\s+)?((?:(?:unsigned|signed|long|short|const)\s+)*[\w:]+)\s+([^;]+);/g,
    (m, type, decls) =>
      splitTop(decls, ',')
        .map((d) => {
          const dm = /^\s*(\w+)\s*((?:\[[^\]]+\])*)\s*$/.exec(d);
          if (!dm) die(`__shared__ declarator "${d.trim()}" in ${file}`);
          const [, name, dims] = dm;
          const id = sharedId++;
          if (!dims) return `${type}& ${name} = ::cuda_emu::static_smem<${type}>(${id}, 1)[0];`;
          return `${type} (&${name})${dims} = *reinterpret_cast<${type} (*)${dims}>(` +
            `::cuda_emu::static_smem<${type}>(${id}, sizeof(${type}${dims}) / sizeof(${type})));`;
        })
        .join(' '),
  );
  if (/\b__shared__\b/.test(text.replace(/\/\/.*$/gm, ''))) die(`${file}: a __shared__ form the rewrite does not know`);
  text = rewriteChevrons(text, file);
  if (addon) return text;
  // common.cuh's qualified names point at the emulated namespace
  text = text.replace(/::kvsq::(?!emu_cuda)/g, '::kvsq::emu_cuda::');
  if (isTest) {
    // a CUDA test file: its tests run the emulated launchers, under new names
    text = text.replace(/^using namespace kvsq;\s*$/m, 'using namespace kvsq;\nusing namespace kvsq::emu_cuda;');
    text = text.replace(/\bKVSQ_TEST\(cuda_/g, 'KVSQ_TEST(emu_');
    return text;
  }
  let opened = 0;
  text = text.replace(/^namespace kvsq \{\s*$/gm, () => {
    opened++;
    return 'namespace kvsq {\nnamespace emu_cuda {';
  });
  text = text.replace(/^\}\s*\/\/\s*namespace kvsq\s*$/gm, '}  // namespace emu_cuda\n}  // namespace kvsq');
  if (opened === 0) die(`no "namespace kvsq {" line in ${file}`);
  return text;
}

const common = path.resolve(__dirname, '../cuda/common.cuh');
const emuHeader = path.resolve(__dirname, '../test/native/emu/cuda_emu.h');
const commonText = fs.readFileSync(common, 'utf8').replace(/^#pragma once\s*$/m, '');
fs.mkdirSync(out, { recursive: true });
const launchers = path.resolve(__dirname, '../cuda/launchers.h');
let decl = fs.readFileSync(launchers, 'utf8');
decl = decl.replace(/^#include "([^"]+)"\s*$/gm, (m, f) => `#include "${path.join(path.dirname(launchers), f)}"`);
decl = decl.replace(/^namespace kvsq \{\s*$/m, 'namespace kvsq {\nnamespace emu_cuda {');
decl = decl.replace(/^\}\s*\/\/\s*namespace kvsq\s*$/m, '}  // namespace emu_cuda\n}  // namespace kvsq');
if (!addon) fs.writeFileSync(path.join(out, 'emu_launchers.h'), `// Generated by scripts/cuda-emu.js from launchers.h: do not edit.\n${decl}`);
for (const src of srcs) {
  const name = path.basename(src).replace(/\.cu$/, '');
  let body = `// Generated by scripts/cuda-emu.js from ${path.basename(src)}: do not edit.\n#include "${emuHeader}"\n`;
  const isTest = /(^|\/)test\//.test(path.relative(path.resolve(__dirname, '..'), path.resolve(src)));
  if (isTest && addon) die(`${src}: test files have no place in an addon`);
  body += '#define KVSQ_CUDA_EMU 1\n';
  let text = fs.readFileSync(src, 'utf8');
  // A test file may use common.cuh's device helpers (its own small kernels):
  // they come emulated, in kvsq::emu_cuda as for the kernel files (the real
  // copy is in the nvcc-compiled twin of the file: one definition each).
  const testCommon = /^#include "(?:\.\.\/)*cuda\/common\.cuh"\s*$/m;
  if (!isTest || testCommon.test(text)) body += `// ---- common.cuh\n${rewrite(common, commonText)}\n`;
  if (isTest) text = text.replace(testCommon, '');
  body += `// ---- ${path.basename(src)}\n${rewrite(src, text, isTest)}`;
  fs.writeFileSync(path.join(out, `${name}_emu.cc`), body);
}
