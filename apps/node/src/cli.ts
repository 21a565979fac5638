#!/usr/bin/env node
/**
 * adapterkit — command line for adapter training and serving on T5 (TensorFlow.js backends).
 * Exit codes: 0 ok, 1 runtime error, 2 usage error.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { tf } from '@adapterkit/backend';
import { checkAdapterName, openSource, TextStreamer, type AdapterComposition } from '@adapterkit/core';
import {
  BUNDLED_MODEL,
  UsageError,
  configureHub,
  describeError,
  exitCodeFor,
  hubOptions,
  loadAdapters,
  loadModel,
  modelSource,
  padRows,
  parseComposition,
  parseAdapterSpec,
  parseConfigOption,
  parseIds,
  readStdin,
  startBackend,
  trimGenerated,
} from './common.js';
import { runDemo } from './demo.js';
import { writeCheckpoint } from './merge.js';
import { makeProgress } from './progress.js';
import { createAdapterServer } from './serve.js';
import { evaluate, type Example } from './task.js';
import { hasCheckpoint, trainAdapter } from './training.js';

const VERSION = '0.1.0';

const int =
  (name: string, min = 0) =>
  (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}`);
    return n;
  };
const float = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number`);
  return n;
};
const collect = (v: string, prev: string[] = []) => [...prev, v];

function common(cmd: Command, opts: { model?: boolean } = { model: true }): Command {
  cmd.addOption(new Option('-b, --backend <name>', 'tensor backend').choices(['auto', 'cpu', 'wasm', 'webgpu', 'tensorflow']).default('auto'));
  cmd.option('--json', 'print one JSON document on stdout (for scripts)', false);
  if (opts.model) {
    cmd.option('-m, --model <dir|id>', 'Hugging Face T5 model: a directory, or a Hub id such as google/flan-t5-small[@revision] (default: the bundled tiny model)');
    cmd.option('--offline', 'use only the Hugging Face cache for Hub ids, never the network (as HF_HUB_OFFLINE=1)', false);
  }
  return cmd;
}

function printJson(x: unknown) {
  process.stdout.write(`${JSON.stringify(x, null, 2)}\n`);
}

/** JSONL: {"input_ids":[…],"labels":[…]} or {"input": "text", "target": "text"} per line. */
function readJsonl(file: string, model: Awaited<ReturnType<typeof loadModel>>): Example[] {
  if (!existsSync(file)) throw new UsageError(`data file not found: ${file}`);
  const lines = readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim());
  if (lines.length === 0) throw new UsageError(`${file} has no examples`);
  return lines.map((line, i) => {
    // biome-ignore lint/suspicious/noExplicitAny: one untrusted JSON line, checked field by field below
    let o: any;
    try {
      o = JSON.parse(line);
    } catch {
      throw new UsageError(`${file}:${i + 1} is not valid JSON`);
    }
    if (Array.isArray(o.input_ids) && Array.isArray(o.labels)) return { inputIds: o.input_ids, labels: o.labels };
    if (typeof o.input === 'string' && typeof o.target === 'string') {
      if (!model.tokenizer) throw new UsageError('text examples need a model with tokenizer.json; give input_ids/labels instead');
      return { inputIds: model.tokenizer.encode(o.input), labels: model.tokenizer.encode(o.target) };
    }
    throw new UsageError(`${file}:${i + 1} needs {"input_ids", "labels"} or {"input", "target"}`);
  });
}

function compositionFor(names: string[], text?: string): AdapterComposition | null {
  if (text) return parseComposition(text);
  if (names.length === 0) return null;
  return names.length === 1 ? names[0] : parseComposition(`Stack(${names.join(',')})`);
}

export function buildProgram(): Command {
  const program = new Command('adapterkit')
    .description('Parameter-efficient adapters (LoRA, IA3, bottleneck, prefix, prompt) for T5 on TensorFlow.js: train, generate, merge, convert, serve.')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .hook('preAction', (_program, command) => {
      const o = command.opts();
      configureHub({ offline: !!o.offline, quiet: !!o.json });
    });

  // ---------------------------------------------------------------- generate
  common(program.command('generate'))
    .description('generate text (or token ids) with the model and any adapters; streams tokens for a single input')
    .argument('[inputs...]', 'input texts (or comma-separated token ids with --ids); read from stdin, one per line, when absent')
    .option('-a, --adapter <dir>', 'adapter directory or Hub id (adapterkit or PEFT), as dir or name=dir; repeatable', collect, [])
    .option('-c, --composition <expr>', 'how adapters combine, e.g. "Stack(a,b)", "Parallel(a,b)", "BatchSplit(a,b;2,1)", "Average(a,b;0.7,0.3)"')
    .option('--ids', 'inputs are token ids ("12,14,53,1") and outputs are printed as ids', false)
    .option('--max-new-tokens <n>', 'tokens to generate', int('--max-new-tokens', 1))
    .option('--num-beams <n>', 'beam search width', int('--num-beams', 1), 1)
    .option('--do-sample', 'sample instead of greedy', false)
    .option('--temperature <t>', 'sampling temperature', float('--temperature'))
    .option('--top-k <k>', 'sampling top-k', int('--top-k'))
    .option('--top-p <p>', 'sampling top-p', float('--top-p'))
    .option('--seed <n>', 'sampling seed', int('--seed'), 0)
    .action(async (inputs: string[], o) => {
      const backend = await startBackend(o.backend, { quiet: o.json });
      const model = await loadModel(o.model);
      const names = await loadAdapters(model, o.adapter);
      const composition = compositionFor(names, o.composition);
      if (inputs.length === 0) inputs = (await readStdin()).split('\n').filter((l) => l.trim());
      if (inputs.length === 0) throw new UsageError('no inputs: pass them as arguments or on stdin');
      let rows: number[][];
      if (o.ids) rows = inputs.map((s) => parseIds(s, model.dims.vocabSize));
      else {
        if (!model.tokenizer) throw new UsageError('this model has no tokenizer.json: use --ids');
        rows = inputs.map((s) => model.tokenizer!.encode(s));
      }
      const { inputIds, attentionMask } = padRows(rows);
      const stream = !o.json && rows.length === 1 && !(o.numBeams > 1) && !o.composition?.startsWith('Parallel');
      const tok = model.tokenizer;
      const eos = model.generationConfig.eosTokenId;
      const eosIds = new Set(Array.isArray(eos) ? eos : [eos]);
      // Text streams through a TextStreamer (whole words, never half a character): it prints exactly the final text.
      const streamer = stream && !o.ids && tok ? new TextStreamer(tok, (text) => process.stdout.write(text)) : undefined;
      let ended = false;
      const out = await model.generate({
        inputIds,
        attentionMask,
        composition,
        maxNewTokens: o.maxNewTokens,
        numBeams: o.numBeams,
        doSample: o.doSample,
        temperature: o.temperature,
        topK: o.topK,
        topP: o.topP,
        seed: o.seed,
        onToken: stream
          ? (step, tokens) => {
              const t = tokens[0];
              if (ended) return;
              ended = eosIds.has(t);
              if (o.ids) process.stdout.write(`${step ? ',' : ''}${t}`);
              else streamer?.put(t);
            }
          : undefined,
      });
      const ids = out.map((r) => trimGenerated(r, eos));
      if (stream) {
        streamer?.end();
        process.stdout.write('\n');
        return;
      }
      const results = ids.map((r, i) => ({ input: inputs[i % inputs.length], ids: r, ...(tok ? { text: tok.decode(r, { skipSpecialTokens: true }) } : {}) }));
      if (o.json) printJson({ backend: backend.name, composition: composition === null ? null : JSON.parse(JSON.stringify(composition)), outputs: results });
      else for (const r of results) process.stdout.write(`${o.ids ? r.ids.join(',') : (r.text ?? r.ids.join(','))}\n`);
    });

  // ---------------------------------------------------------------- inspect
  common(program.command('inspect'))
    .description('summarise a model and adapters: dims, parameter counts, % trainable')
    .option('-a, --adapter <dir>', 'adapter directory or Hub id, as dir or name=dir; repeatable', collect, [])
    .action(async (o) => {
      const backend = await startBackend(o.backend, { quiet: o.json });
      const model = await loadModel(o.model);
      await loadAdapters(model, o.adapter);
      const base = model.baseParameterCount();
      const adapters = model.adapters
        .adapterSummary()
        .map((r) => ({ name: r.name, method: r.method, parameters: r.parameters, percentOfBase: r.percent, config: model.adapters.adapterConfig(r.name) }));
      const adapterParams = adapters.reduce((a, r) => a + r.parameters, 0);
      const report = {
        backend: backend.name,
        model: { dir: modelSource(o.model), dims: model.dims, parameters: base, hasTokenizer: !!model.tokenizer, generation: model.generationConfig },
        adapters,
        adapterParameters: adapterParams,
        trainablePercent: (100 * adapterParams) / (base + adapterParams),
      };
      if (o.json) return printJson(report);
      const d = model.dims;
      console.log(`model ${report.model.dir}`);
      console.log(
        `  ${d.modelType}: d_model ${d.dModel}, d_kv ${d.dKv}, heads ${d.numHeads}, d_ff ${d.dFf} (${d.feedForwardProj}), layers ${d.numEncoderLayers}+${d.numDecoderLayers}, vocab ${d.vocabSize}`,
      );
      console.log(`  parameters ${base.toLocaleString('en-US')}`);
      for (const a of adapters)
        console.log(`adapter ${a.name}: ${a.method}, ${a.parameters.toLocaleString('en-US')} parameters (${a.percentOfBase.toFixed(3)}% of base) ${JSON.stringify(a.config)}`);
      if (adapters.length) console.log(`trainable: ${report.trainablePercent.toFixed(3)}% of all parameters`);
    });

  // ---------------------------------------------------------------- convert
  common(program.command('convert'))
    .description('convert an adapter between adapterkit, PEFT and AdapterHub adapters formats (load, then save)')
    .argument('<input>', 'adapter directory (format detected)')
    .argument('<output>', 'directory to write')
    .addOption(new Option('--to <format>', 'output format').choices(['peft', 'adapterkit', 'adapters']).makeOptionMandatory())
    .option('--bin', 'write the weights as a torch.save file (PEFT: adapter_model.bin, adapters: pytorch_adapter.bin) instead of safetensors')
    .action(async (input: string, output: string, o) => {
      if (o.bin && o.to === 'adapterkit') throw new UsageError("--bin is for --to peft or --to adapters; adapterkit's own format is always safetensors");
      const backend = await startBackend(o.backend, { quiet: o.json });
      const model = await loadModel(o.model);
      const [name] = await loadAdapters(model, [input]);
      const safeSerialization = !o.bin;
      await model.saveAdapter(resolve(output), name, { format: o.to, safeSerialization });
      const result = {
        backend: backend.name,
        input: resolve(input),
        output: resolve(output),
        format: o.to,
        safeSerialization,
        adapter: name,
        method: model.adapters.adapterConfig(name).method,
      };
      if (o.json) printJson(result);
      else console.log(`wrote ${result.method} adapter '${name}' in ${o.to} format${o.bin ? ' (torch.save .bin)' : ''} to ${result.output}`);
    });

  // ---------------------------------------------------------------- merge
  common(program.command('merge'))
    .description('fold a LoRA adapter into the weights and write a new Hugging Face checkpoint directory')
    .requiredOption('-a, --adapter <dir>', 'LoRA adapter directory', collect, [])
    .requiredOption('-o, --out <dir>', 'output checkpoint directory')
    .action(async (o) => {
      const backend = await startBackend(o.backend, { quiet: o.json });
      const source = modelSource(o.model);
      const model = await loadModel(source);
      const names = await loadAdapters(model, o.adapter);
      for (const n of names) model.mergeAdapter(n);
      // a Hub id's config and tokenizer files come from the Hub cache the model was loaded through
      const w = await writeCheckpoint(model, await openSource(source, hubOptions()), resolve(o.out), { merged_adapters: names.join(',') });
      const result = { backend: backend.name, out: resolve(o.out), merged: names, ...w };
      if (o.json) printJson(result);
      else console.log(`merged ${names.join(', ')} into ${result.out} (${w.tensors} tensors; ${w.files.join(', ')})`);
    });

  // ---------------------------------------------------------------- train
  common(program.command('train'))
    .description('train an adapter on a JSONL dataset; resumes from --out when it holds a checkpoint')
    .requiredOption('-d, --data <file>', 'JSONL: {"input_ids":[..],"labels":[..]} or {"input":"..","target":".."} per line')
    .requiredOption('-o, --out <dir>', 'output directory (checkpoint/ inside it while training, the adapter at the end)')
    .option('-c, --config <config>', 'adapter config or preset, e.g. "lora[r=8]", "seq_bn", or a JSON object', 'lora[r=8,alpha=16]')
    .option('-n, --name <name>', 'adapter name', 'adapter')
    .option('--steps <n>', 'optimizer steps', int('--steps', 1), 200)
    .option('--lr <lr>', 'peak AdamW learning rate', float('--lr'), 3e-3)
    .addOption(new Option('--schedule <name>', 'learning-rate schedule').choices(['constant', 'linear', 'cosine']).default('constant'))
    .option('--batch-size <n>', 'examples per step', int('--batch-size', 1), 16)
    .option('--seed <n>', 'init and data-order seed', int('--seed'), 0)
    .option('--checkpoint-every <n>', 'write a checkpoint every n steps', int('--checkpoint-every', 1), 50)
    .action(async (o) => {
      const config = parseConfigOption(o.config, '--config');
      checkAdapterName(o.name, '--name');
      const backend = await startBackend(o.backend, { quiet: o.json });
      const model = await loadModel(o.model);
      const data = readJsonl(resolve(o.data), model);
      model.addAdapter(o.name, config, { seed: o.seed });
      const ckpt = resolve(o.out, 'checkpoint');
      if (hasCheckpoint(ckpt) && !o.json) process.stderr.write(`resuming from the checkpoint in ${ckpt}\n`);
      const bar = makeProgress(o.json, o.steps);
      const r = await trainAdapter(model, o.name, data, {
        steps: o.steps,
        lr: o.lr,
        schedule: o.schedule,
        batchSize: o.batchSize,
        seed: o.seed,
        checkpointDir: ckpt,
        checkpointEvery: o.checkpointEvery,
        onProgress: (e) => bar.update(e.step, e.loss),
      });
      bar.stop();
      await model.saveAdapter(resolve(o.out), o.name);
      const result = {
        backend: backend.name,
        out: resolve(o.out),
        adapter: o.name,
        config: model.adapters.adapterConfig(o.name),
        resumedFromStep: r.startStep,
        steps: r.steps,
        // A finished run asked again trains no step: say so rather than print a loss of NaN.
        alreadyTrained: r.startStep >= o.steps,
        firstLoss: r.losses.length ? r.firstLoss : null,
        lastLoss: r.losses.length ? r.lastLoss : null,
        seconds: r.seconds,
      };
      if (o.json) printJson(result);
      else if (result.alreadyTrained)
        console.log(
          `adapter '${o.name}' was already trained for ${r.startStep} steps (checkpoint in ${ckpt}); nothing to do, saved it to ${result.out} again. Pass --steps above ${r.startStep} to train further, or another --out to start over.`,
        );
      else
        console.log(
          `saved adapter '${o.name}' to ${result.out} (steps ${r.startStep}→${r.steps}, loss ${r.firstLoss.toFixed(4)} → ${r.lastLoss.toFixed(4)}, ${r.seconds.toFixed(1)} s)`,
        );
    });

  // ---------------------------------------------------------------- eval
  common(program.command('eval'))
    .description('evaluate loss and greedy accuracy on a JSONL dataset')
    .requiredOption('-d, --data <file>', 'JSONL dataset (same format as train)')
    .option('-a, --adapter <dir>', 'adapter directory or Hub id, as dir or name=dir; repeatable', collect, [])
    .option('-c, --composition <expr>', 'composition of the loaded adapters')
    .action(async (o) => {
      const backend = await startBackend(o.backend, { quiet: o.json });
      const model = await loadModel(o.model);
      const names = await loadAdapters(model, o.adapter);
      const composition = compositionFor(names, o.composition);
      const data = readJsonl(resolve(o.data), model);
      model.setActiveAdapters(composition);
      let lossSum = 0;
      for (let i = 0; i < data.length; i += 32) {
        const chunk = data.slice(i, i + 32);
        const { inputIds, attentionMask } = padRows(chunk.map((e) => e.inputIds));
        const L = Math.max(...chunk.map((e) => e.labels.length));
        const labels = chunk.map((e) => [...e.labels, ...new Array(L - e.labels.length).fill(-100)]);
        const l = model.loss({ inputIds, attentionMask, labels });
        lossSum += (await l.data())[0] * chunk.length;
        l.dispose();
      }
      const r = await evaluate(model, data, composition);
      const result = { backend: backend.name, examples: data.length, loss: lossSum / data.length, tokenAccuracy: r.tokenAccuracy, exactMatch: r.exactMatch };
      if (o.json) printJson(result);
      else
        console.log(
          `${data.length} examples: loss ${result.loss.toFixed(4)}, token accuracy ${(100 * r.tokenAccuracy).toFixed(2)}%, exact match ${(100 * r.exactMatch).toFixed(2)}%`,
        );
    });

  // ---------------------------------------------------------------- bench
  common(program.command('bench'))
    .description(
      'benchmarks: runs tools/bench (when built in this checkout) with the arguments after --, else times forward passes and greedy generation (tokens/s) at batch 1 and 32',
    )
    .argument('[benchArgs...]', 'arguments passed to tools/bench, e.g. -- --backends wasm,cpu --quick')
    .option('--builtin', 'use the built-in timing even when tools/bench exists', false)
    .option('--iterations <n>', 'timed repetitions (built-in)', int('--iterations', 1), 5)
    .option('--max-new-tokens <n>', 'tokens per generation (built-in)', int('--max-new-tokens', 1), 16)
    .action(async (benchArgs: string[], o) => {
      const toolsBench = resolve(BUNDLED_MODEL, '../../../../tools/bench/dist/index.js');
      if (existsSync(toolsBench) && !o.builtin) {
        const args = [...benchArgs, ...(o.json ? ['--json'] : [])];
        if (o.backend !== 'auto' && !benchArgs.includes('--backends')) args.push('--backends', o.backend);
        const code = await new Promise<number>((done) => spawn(process.execPath, [toolsBench, ...args], { stdio: 'inherit' }).on('exit', (c) => done(c ?? 1)));
        if (code !== 0) throw new Error(`tools/bench exited with code ${code}`);
        return;
      }
      if (benchArgs.length) throw new UsageError(`tools/bench is not built here, so its arguments (${benchArgs.join(' ')}) cannot be used; drop them or build tools/bench`);
      const backend = await startBackend(o.backend, { quiet: o.json });
      const model = await loadModel(o.model);
      const rows: Record<string, unknown>[] = [];
      for (const batch of [1, 32]) {
        const ids = Array.from({ length: batch }, (_, i) => [10 + (i % 50), 20, 30, 40, 50, 60, 1]);
        await model.generate({ inputIds: ids, maxNewTokens: 2 }); // warm-up
        let t0 = performance.now();
        for (let i = 0; i < o.iterations; i++) {
          const out = model.forward({ inputIds: ids, decoderInputIds: ids.map((r) => [0, ...r.slice(0, -1)]) });
          await out.logits.data();
          tf.dispose([out.logits, out.encoderLastHiddenState]);
        }
        const forwardMs = (performance.now() - t0) / o.iterations;
        t0 = performance.now();
        for (let i = 0; i < o.iterations; i++) await model.generate({ inputIds: ids, maxNewTokens: o.maxNewTokens, eosTokenId: -1 });
        const genS = (performance.now() - t0) / 1000 / o.iterations;
        rows.push({ batch, forwardMs: +forwardMs.toFixed(2), generateTokensPerSecond: +((batch * o.maxNewTokens) / genS).toFixed(1) });
      }
      if (o.json) return printJson({ backend: backend.name, rows });
      console.log(`backend ${backend.name}`);
      for (const r of rows) console.log(`  batch ${String(r.batch).padStart(2)}: forward ${r.forwardMs} ms, generate ${r.generateTokensPerSecond} tokens/s`);
    });

  // ---------------------------------------------------------------- serve
  common(program.command('serve'))
    .description('serve generation over HTTP on 127.0.0.1: continuous batching of every adapter and the base model in one BatchSplit step, in a restartable worker')
    .option('-p, --port <n>', 'port (0 = any free port)', int('--port'), 8080)
    .option('-a, --adapter <dir>', 'adapter directory to load at start, as dir or name=dir; repeatable', collect, [])
    .option('--max-batch-rows <n>', 'rows decoding at once', int('--max-batch-rows', 1), 64)
    .option('--threads <n>', 'threads of the native CPU kernels (default: every processor but one, kept for HTTP)', int('--threads', 1))
    .option('--max-queue <n>', 'requests waiting before 503 + Retry-After', int('--max-queue', 1), 256)
    .option('--request-timeout-ms <ms>', 'a request not answered by then gets 504 and is cancelled', int('--request-timeout-ms', 1), 120_000)
    .option('--api-key <key>', 'require this key (Authorization: Bearer or X-API-Key) on every route but /health (default: $ADAPTERKIT_API_KEY)')
    .option('--adapter-root <dir>', 'allow POST /v1/adapters to load adapters from inside this directory (off by default)')
    .option('--allowed-host <name>', 'a Host name to accept besides 127.0.0.1/localhost/[::1]; repeatable', collect, [])
    .option('--allowed-origin <origin>', 'an Origin allowed to call besides the server itself; repeatable', collect, [])
    .option('--log-requests', 'also log each queued request on stderr (every answered request is logged)', false)
    .action(async (o) => {
      const apiKey = o.apiKey ?? process.env.ADAPTERKIT_API_KEY;
      if (apiKey !== undefined && apiKey.length < 8) throw new UsageError('--api-key must be at least 8 characters');
      const adapters = (o.adapter as string[]).map(parseAdapterSpec);
      const srv = createAdapterServer({
        model: o.model,
        backend: o.backend,
        adapters,
        maxBatchRows: o.maxBatchRows,
        kernelThreads: o.threads,
        maxQueue: o.maxQueue,
        requestTimeoutMs: o.requestTimeoutMs,
        apiKey: apiKey || undefined,
        adapterRoot: o.adapterRoot,
        allowedHosts: o.allowedHost,
        allowedOrigins: o.allowedOrigin,
        logRequests: o.logRequests,
        log: (l) => process.stderr.write(`${l}\n`),
      });
      const port = await srv.listen(o.port);
      // One line on stdout that scripts (and tests) can wait for.
      process.stdout.write(`${JSON.stringify({ listening: `http://127.0.0.1:${port}`, port, backend: srv.worker.info?.backend, adapters: adapters.map(([n]) => n) })}\n`);
      const stop = async (signal: string) => {
        process.stderr.write(`${signal}: finishing in-flight requests, then exiting\n`);
        await srv.close();
        process.stderr.write(`served ${srv.stats.completed} requests in ${srv.stats.steps} decode steps\n`);
        process.exit(0);
      };
      process.once('SIGTERM', () => void stop('SIGTERM'));
      process.once('SIGINT', () => void stop('SIGINT'));
      await new Promise(() => {}); // run until a signal
    });

  // ---------------------------------------------------------------- demo
  common(program.command('demo'), { model: false })
    .description('the main job on the bundled tiny model: train a LoRA on the shift-2 task, compare accuracy, save, generate, reload')
    .option('-o, --out <dir>', 'where to save the trained adapter (default: a new temp directory)')
    .option('--steps <n>', 'training steps', int('--steps', 1), 600)
    .option('--lr <lr>', 'peak AdamW learning rate (cosine decay)', float('--lr'), 1e-2)
    .option('--batch-size <n>', 'examples per step', int('--batch-size', 1), 32)
    .option('--rank <r>', 'LoRA rank', int('--rank', 1), 16)
    .option('--seed <n>', 'seed', int('--seed'), 0)
    .action(async (o) => {
      const backend = await startBackend(o.backend, { quiet: o.json });
      const r = await runDemo({ out: o.out, steps: o.steps, lr: o.lr, batchSize: o.batchSize, rank: o.rank, seed: o.seed, json: o.json });
      if (o.json) printJson({ backend: backend.name, ...r });
    });

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  program.exitOverride();
  for (const c of program.commands) c.exitOverride();
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return 2; // commander already printed the message
    }
    process.stderr.write(`adapterkit: ${describeError(e)}\n`);
    return exitCodeFor(e);
  }
}

/** Runs the CLI on `argv` and exits with its code (the bin, bin/adapterkit.js, calls this). */
export function run(argv: string[]): void {
  main(argv).then((code) => {
    // Exit explicitly: a GPU backend may keep handles open after the work is done.
    process.stdout.write('', () => process.exit(code));
  });
}

/** Whether node was started on this file (`node apps/node/dist/cli.js …`), not importing it (tests, the bin). */
function isMain(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) run(process.argv);
