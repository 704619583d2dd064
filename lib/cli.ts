/**
 * The command line: `npx kvsqueeze <command>`. Bad arguments print a clear
 * message and exit with code 2; failures of the work itself exit with 1.
 */
import { Command, CommanderError } from 'commander';
import { backend } from './backend';
import { registerEval } from './commands/eval';
import { registerSelect } from './commands/select';
import { KvsqError } from './errors';
import { registerBench } from './bench';

function formatInfo(): string {
  const i = backend.info();
  const lines = [
    `kvsqueeze ${i.version}`,
    `cpu:  ${i.cpu.threads} threads (${i.cpu.hardwareThreads} hardware), SIMD ${i.cpu.simd} (avx2 ${i.cpu.avx2}, fma ${i.cpu.fma}, f16c ${i.cpu.f16c})`,
    `cuda: compiled ${i.cuda.compiled}${i.cuda.compiled ? ` (archs ${i.cuda.archs}, runtime ${i.cuda.runtimeVersion})` : ''}, ` +
      (i.cuda.available
        ? `available: ${i.cuda.devices
            .map((d) => `${d.name} (sm ${d.computeCapability}, ${(d.memoryBytes / 2 ** 30).toFixed(1)} GiB${d.runnable ? '' : ', no code for it in this build'}${d.wgmma === 'off' ? '' : `, wgmma ${d.wgmma}`})`)
            .join(', ')}`
        : `unavailable: ${i.cuda.reason}`),
    `build: napi ${i.build.napiVersion}, ${i.build.compiler ?? 'unknown compiler'}`,
  ];
  return lines.join('\n');
}

export type CommandRegistrar = (program: Command, io: CliIO) => void;
export interface CliIO {
  out: (s: string) => void;
  err: (s: string) => void;
}

/** Further commands register themselves here (select, eval, bench). */
export const commands: CommandRegistrar[] = [];
commands.push(registerBench);

export function buildProgram(io: CliIO): Command {
  const program = new Command();
  program
    .name('kvsqueeze')
    .description('KV-cache compression for LLM inference: kernels, policies, trace replay and evaluation')
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err });
  program
    .command('info')
    .description('backends, devices, build flags, and why CUDA is unavailable if it is')
    .option('--json', 'print JSON')
    .action((opts: { json?: boolean }) => {
      io.out((opts.json ? JSON.stringify(backend.info(), null, 2) : formatInfo()) + '\n');
    });
  registerSelect(program, io);
  registerEval(program, io);
  for (const register of commands) register(program, io);
  return program;
}

/** Runs the CLI; resolves to the exit code. */
export async function main(argv: string[], io: CliIO = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) }): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version exit 0; every parse error exits 2
      return e.exitCode === 0 ? 0 : 2;
    }
    if (e instanceof KvsqError && (e.code === 'KVSQ_ARG' || e.code === 'KVSQ_RANGE' || e.code === 'KVSQ_FORMAT')) {
      io.err(`kvsqueeze: ${e.message} (${e.code})\n`);
      return 2;
    }
    if (e instanceof KvsqError) {
      io.err(`kvsqueeze: ${e.message} (${e.code})\n`);
      return 1;
    }
    throw e;
  }
}
