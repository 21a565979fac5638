import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import {
  AdapterError,
  ConfigError,
  ModelMismatchError,
  NonFiniteLossError,
  rejectUnknownOptions,
  SeededRandom,
  WeightError,
  type AdapterComposition,
  type AdapterHost,
  type ModelDims,
  type OptionKeys,
} from '@adapterkit/core';
import {
  checkCompatible,
  packCheckpoint,
  readCheckpoint,
  unpackCheckpoint,
  writeCheckpoint,
  CHECKPOINT_FORMAT,
  CHECKPOINT_VERSION,
  type CheckpointFiles,
  type TrainerState,
} from './checkpoint.js';
import { BatchStream, evalBatches, toSource, type Batch, type DataInput, type EncoderOptions } from './data.js';
import { createOptimizer, globalNorm, scaleToNorm, type NamedVariable, type Optimizer, type OptimizerName } from './optimizers.js';
import { createSchedule, type Schedule, type ScheduleConfig, type ScheduleName } from './schedules.js';

type Ids = number[][];

/**
 * What the trainer needs from a model (T5ForConditionalGeneration has all of it). Only `loss`, the adapter
 * host and `trainAdapter` are required; `forward` enables teacher-forced token accuracy, `generate`
 * generation metrics, `tokenizer` text rows.
 */
export interface TrainableModel {
  readonly dims: ModelDims;
  readonly adapters: AdapterHost;
  trainAdapter(names: string | string[]): void;
  loss(input: { inputIds: Ids; attentionMask?: Ids; labels: Ids; training?: boolean; labelSmoothing?: number; seed?: number; baseDropout?: boolean }): Tensor;
  forward?(input: { inputIds: Ids; attentionMask?: Ids; decoderInputIds: Ids }): { logits: Tensor; encoderLastHiddenState: Tensor };
  shiftRight?(labels: Ids): Ids;
  generate?(options: { inputIds: Ids; attentionMask?: Ids; maxNewTokens?: number }): Promise<number[][]>;
  tokenizer?: { encode(text: string): number[] };
  readonly config?: { padTokenId?: number; eosTokenId?: number | number[] };
}

export type EvalMetric = 'loss' | 'tokenAccuracy' | 'generationTokenAccuracy' | 'exactMatch';

export interface TrainerOptions {
  /** Adapters to train (must exist on the model). */
  adapters: string | string[];
  /** Training rows: an array, a JSONL source (jsonlSource / jsonlFileSource) or any DataSource. */
  trainData: DataInput;
  maxSteps: number;
  optimizer?: OptimizerName | Optimizer;
  /** AdamW: betas, eps, weightDecay; Adafactor: eps, clipThreshold, decayRate, beta1, weightDecay, scaleParameter, relativeStep. */
  optimizerOptions?: Record<string, unknown>;
  /** Peak learning rate (default 1e-3). */
  lr?: number;
  schedule?: ScheduleName | ScheduleConfig | Schedule;
  warmupSteps?: number;
  batchSize?: number;
  /** Micro-batches per optimizer step; the loss is weighted by target tokens, so k×batch b == one batch k·b. */
  gradientAccumulationSteps?: number;
  /** Clip the global gradient norm (default 1.0; 0 or Infinity: off). */
  maxGradNorm?: number;
  labelSmoothing?: number;
  /** Dropout in the base model as well as the adapters during training (PyTorch's model.train()). Default true. */
  baseDropout?: boolean;
  seed?: number;
  shuffle?: boolean;
  shuffleBuffer?: number;
  /** Length bucketing window in batches (default 8; 1 = off). */
  bucketWindow?: number;
  maxSourceLength?: number;
  maxTargetLength?: number;
  /** Rows longer than the maximum: 'truncate' (warn) or 'error'. Default 'truncate'. */
  truncation?: 'truncate' | 'error';
  /** AdapterDrop: each step drops the adapters of the lowest k ∈ [0, maxLayers] layers of each stack. */
  adapterDrop?: number | { maxLayers: number };
  evalData?: DataInput;
  evalEvery?: number;
  evalBatchSize?: number;
  /** Generation metrics in evaluation (greedy decoding). Default true when the model can generate. */
  evalGenerate?: boolean;
  earlyStopping?: { metric?: EvalMetric; patience: number; minDelta?: number };
  checkpointDir?: string;
  checkpointEvery?: number;
  /** Checkpoints to keep (default 2). */
  keepCheckpoints?: number;
  onProgress?: (p: TrainProgress) => void;
  onEval?: (e: EvalResult & { step: number }) => void;
  onWarning?: (message: string) => void;
  signal?: AbortSignal;
}

const TRAINER_OPTIONS = {
  adapters: true,
  trainData: true,
  maxSteps: true,
  optimizer: true,
  optimizerOptions: true,
  lr: true,
  schedule: true,
  warmupSteps: true,
  batchSize: true,
  gradientAccumulationSteps: true,
  maxGradNorm: true,
  labelSmoothing: true,
  baseDropout: true,
  seed: true,
  shuffle: true,
  shuffleBuffer: true,
  bucketWindow: true,
  maxSourceLength: true,
  maxTargetLength: true,
  truncation: true,
  adapterDrop: true,
  evalData: true,
  evalEvery: true,
  evalBatchSize: true,
  evalGenerate: true,
  earlyStopping: true,
  checkpointDir: true,
  checkpointEvery: true,
  keepCheckpoints: true,
  onProgress: true,
  onEval: true,
  onWarning: true,
  signal: true,
} as const satisfies OptionKeys<TrainerOptions>;

export interface TrainProgress {
  step: number;
  maxSteps: number;
  epoch: number;
  loss: number;
  lr: number;
  gradNorm: number;
  stepsPerSecond: number;
  tokensPerSecond: number;
  /** Seconds left at the current pace. */
  eta: number;
  elapsed: number;
}

export interface EvalResult {
  loss: number;
  /** Teacher-forced argmax accuracy over target tokens. */
  tokenAccuracy?: number;
  /** Greedy generation: fraction of target positions generated correctly. */
  generationTokenAccuracy?: number;
  /** Greedy generation equals the target exactly. */
  exactMatch?: number;
  examples: number;
  tokens: number;
}

export interface TrainResult {
  step: number;
  losses: number[];
  stoppedEarly: boolean;
  lastEval?: EvalResult;
  best?: number;
}

const HIGHER_IS_BETTER: Record<EvalMetric, boolean> = { loss: false, tokenAccuracy: true, generationTokenAccuracy: true, exactMatch: true };

/**
 * Trains only the named adapters of a model: the base weights are plain tensors that are never
 * differentiated, and only the adapter variables get gradients and optimizer state. Emits 'progress',
 * 'eval' and 'checkpoint' events (CustomEvent detail) besides the callbacks.
 */
export class Trainer extends EventTarget {
  readonly options: TrainerOptions;
  readonly adapterNames: string[];
  readonly optimizer: Optimizer;
  private readonly schedule: Schedule;
  private readonly stepRng: SeededRandom;
  private readonly stream: BatchStream;
  private readonly encoder: EncoderOptions;
  private step = 0;
  private best: number | null = null;
  private badEvals = 0;
  private readonly padId: number;
  private warned = 0;

  constructor(
    readonly model: TrainableModel,
    options: TrainerOptions,
  ) {
    super();
    rejectUnknownOptions(options, TRAINER_OPTIONS, 'Trainer');
    this.options = options;
    this.adapterNames = typeof options.adapters === 'string' ? [options.adapters] : [...(options.adapters ?? [])];
    if (this.adapterNames.length === 0) throw new ConfigError('Trainer needs at least one adapter to train (options.adapters)', 'adapters');
    for (const n of this.adapterNames) {
      if (!model.adapters.hasAdapter(n)) throw new AdapterError(`cannot train adapter '${n}': the model has no such adapter (add it first with addAdapter)`, n);
    }
    if (!Number.isInteger(options.maxSteps) || options.maxSteps < 1) throw new ConfigError(`maxSteps must be an integer ≥ 1, got ${options.maxSteps}`, 'maxSteps');
    const accum = options.gradientAccumulationSteps ?? 1;
    if (!Number.isInteger(accum) || accum < 1) throw new ConfigError(`gradientAccumulationSteps must be an integer ≥ 1, got ${accum}`, 'gradientAccumulationSteps');
    const lr = options.lr ?? 1e-3;
    if (!(lr > 0) || !Number.isFinite(lr)) throw new ConfigError(`lr must be a finite number > 0, got ${lr}`, 'lr');
    const ls = options.labelSmoothing ?? 0;
    if (!(ls >= 0 && ls < 1)) throw new ConfigError(`labelSmoothing must be in [0, 1), got ${ls}`, 'labelSmoothing');
    this.optimizer = createOptimizer(options.optimizer ?? 'adamw', options.optimizerOptions);
    const sched = options.schedule ?? 'constant';
    this.schedule = createSchedule(typeof sched === 'string' && options.warmupSteps ? { type: sched, warmupSteps: options.warmupSteps } : sched, options.maxSteps);
    const seed = options.seed ?? 42;
    this.stepRng = new SeededRandom(seed ^ 0x5bd1e995);
    const eos = model.config?.eosTokenId;
    this.padId = model.config?.padTokenId ?? 0;
    this.encoder = {
      tokenizer: model.tokenizer,
      vocabSize: model.dims.vocabSize,
      maxSourceLength: options.maxSourceLength ?? 512,
      maxTargetLength: options.maxTargetLength ?? 512,
      truncation: options.truncation ?? 'truncate',
      eosTokenId: Array.isArray(eos) ? eos[0] : (eos ?? 1),
      onWarning: (m) => this.warn(m),
    };
    if (options.truncation !== undefined && options.truncation !== 'truncate' && options.truncation !== 'error')
      throw new ConfigError(`truncation must be 'truncate' or 'error', got ${options.truncation}`, 'truncation');
    this.stream = new BatchStream(
      toSource(options.trainData, 'trainData'),
      {
        batchSize: options.batchSize ?? 8,
        shuffle: options.shuffle ?? true,
        shuffleBuffer: options.shuffleBuffer,
        bucketWindow: options.bucketWindow ?? 8,
        padId: this.padId,
        encoder: this.encoder,
      },
      new SeededRandom(seed),
    );
    const drop = options.adapterDrop;
    const dropMax = typeof drop === 'number' ? drop : drop?.maxLayers;
    const dropLimit = Math.min(model.dims.numEncoderLayers, model.dims.numDecoderLayers) - 1;
    if (dropMax !== undefined && !(Number.isInteger(dropMax) && dropMax >= 0 && dropMax <= dropLimit)) {
      throw new ConfigError(`adapterDrop maxLayers must be an integer in [0, ${dropLimit}] (the top layer of each stack always keeps its adapters), got ${dropMax}`, 'adapterDrop');
    }
  }

  /** Steps taken so far. */
  get currentStep(): number {
    return this.step;
  }

  private warn(message: string) {
    this.warned++;
    this.dispatchEvent(new CustomEvent('warning', { detail: message }));
    if (this.options.onWarning) this.options.onWarning(message);
    else if (this.warned <= 3) console.warn(`[adapterkit/train] ${message}${this.warned === 3 ? ' (further warnings are not printed)' : ''}`);
  }

  /** The trained variables under stable names `${adapter}/${tensorName}` (the optimizer state's keys). */
  namedVariables(): NamedVariable[] {
    return this.adapterNames.flatMap((a) => [...this.model.adapters.adapterVariables(a)].map(([k, variable]) => ({ name: `${a}/${k}`, variable })));
  }

  private adapterDropLayers(): number[] | undefined {
    const drop = this.options.adapterDrop;
    const max = typeof drop === 'number' ? drop : drop?.maxLayers;
    if (!max) return undefined;
    const k = Math.floor(this.stepRng.next() * (max + 1));
    const n = this.model.dims.numEncoderLayers;
    const layers: number[] = [];
    for (let i = 0; i < k; i++) layers.push(i, n + i);
    return layers;
  }

  /**
   * Gradients of the token-weighted mean loss over micro-batches (sum of per-batch gradients × tokens/total,
   * so accumulation equals one big batch). Returns the loss value and gradients in `vars` order.
   */
  private computeGradients(batches: Batch[], vars: Variable[], seed: number): { loss: Tensor; grads: (Tensor | undefined)[] } {
    const total = batches.reduce((a, b) => a + b.targetTokens, 0);
    let loss: Tensor | undefined;
    let acc: (Tensor | undefined)[] | undefined;
    batches.forEach((b, i) => {
      const weight = b.targetTokens / total;
      const { value, grads } = this.variableGrads(
        () =>
          this.model
            .loss({
              inputIds: b.inputIds,
              attentionMask: b.attentionMask,
              labels: b.labels,
              training: true,
              labelSmoothing: this.options.labelSmoothing ?? 0,
              seed: seed + i,
              baseDropout: this.options.baseDropout ?? true,
            })
            .mul(weight) as tf.Scalar,
        vars,
      );
      // A variable the loss does not reach (AdapterDrop) has no gradient: undefined, not zero.
      const list: (Tensor | undefined)[] = vars.map((v) => grads[v.name]);
      if (!acc) acc = list;
      else {
        const next = acc.map((a, j) => (a && list[j] ? a.add(list[j]!) : (a ?? list[j])));
        acc.forEach((a, j) => a && list[j] && tf.dispose([a, list[j]!]));
        acc = next;
      }
      if (!loss) loss = value;
      else {
        const next = loss.add(value);
        tf.dispose([loss, value]);
        loss = next;
      }
    });
    return { loss: loss!, grads: acc! };
  }

  private variableGrads(f: () => tf.Scalar, vars: Variable[]) {
    try {
      return tf.variableGrads(f, vars);
    } catch (e) {
      if (/Cannot find a connection/.test(String((e as Error).message))) {
        throw new AdapterError(`no variable of the trained adapters [${this.adapterNames}] affects the loss: are they active (or all dropped by AdapterDrop / leave_out)?`);
      }
      throw e;
    }
  }

  /** Runs training until maxSteps, early stopping or abort. `resumeFrom`: a checkpoint (or checkpointDir) to continue from; `true` = options.checkpointDir. */
  async train(run: { resumeFrom?: string | true } = {}): Promise<TrainResult> {
    const o = this.options;
    this.model.trainAdapter(this.adapterNames);
    if (run.resumeFrom) {
      const from = run.resumeFrom === true ? o.checkpointDir : run.resumeFrom;
      if (!from) throw new ConfigError('resumeFrom: true needs options.checkpointDir', 'resumeFrom');
      await this.loadCheckpoint(from);
    }
    const named = this.namedVariables();
    const vars = named.map((n) => n.variable);
    if (vars.length === 0) throw new AdapterError(`adapters [${this.adapterNames}] have no trainable variables`);
    const accum = o.gradientAccumulationSteps ?? 1;
    const peakLr = o.lr ?? 1e-3;
    const maxGradNorm = o.maxGradNorm ?? 1.0;
    const losses: number[] = [];
    let stoppedEarly = false;
    let lastEval: EvalResult | undefined;
    let busy = 0;
    let tokens = 0;
    let stepsThisRun = 0;
    const t0 = performance.now();
    const host = this.model.adapters;
    try {
      while (this.step < o.maxSteps) {
        if (o.signal?.aborted) break;
        const tStep = performance.now();
        const batches: Batch[] = [];
        for (let i = 0; i < accum; i++) batches.push(await this.stream.next());
        const stepNo = this.step + 1;
        const dropSeed = Math.floor(this.stepRng.next() * 2 ** 31);
        const skip = this.adapterDropLayers();
        const prevComp: AdapterComposition | null = host.activeComposition;
        const prevSkip = [...host.skippedLayers];
        if (skip) host.setActiveAdapters(prevComp, { skipLayers: skip });
        let lossT: Tensor;
        let grads: (Tensor | undefined)[];
        try {
          ({ loss: lossT, grads } = this.computeGradients(batches, vars, dropSeed));
        } finally {
          if (skip) host.setActiveAdapters(prevComp, { skipLayers: prevSkip });
        }
        // Loss and gradient norm are read together as one tensor: one GPU sync per step.
        const stats = tf.tidy(() => tf.stack([lossT.reshape([]), globalNorm(grads)]));
        const [loss, norm] = Array.from((await stats.data()) as Float32Array);
        tf.dispose([lossT, stats]);
        if (!Number.isFinite(loss) || !Number.isFinite(norm)) {
          tf.dispose(grads.filter((g): g is Tensor => !!g));
          const what = Number.isFinite(loss) ? `gradient norm is ${norm} (loss ${loss})` : `training loss is ${loss}`;
          throw new NonFiniteLossError(
            `${what} at step ${stepNo}; the adapters keep their step-${this.step} weights${o.checkpointDir ? ` and ${o.checkpointDir} keeps the last good checkpoint` : ''} (lower the lr, or check the data)`,
            stepNo,
          );
        }
        const clippedGrads = scaleToNorm(grads, norm, maxGradNorm > 0 ? maxGradNorm : Infinity);
        tf.dispose(grads.filter((g): g is Tensor => !!g));
        const lr = peakLr * this.schedule(this.step);
        this.optimizer.apply(named, clippedGrads, lr);
        tf.dispose(clippedGrads.filter((g): g is Tensor => !!g));
        this.step = stepNo;
        stepsThisRun++;
        losses.push(loss);
        busy += (performance.now() - tStep) / 1000;
        tokens += batches.reduce((a, b) => a + b.sourceTokens + b.targetTokens, 0);
        const progress: TrainProgress = {
          step: this.step,
          maxSteps: o.maxSteps,
          epoch: this.stream.epoch,
          loss,
          lr,
          gradNorm: norm,
          stepsPerSecond: stepsThisRun / busy,
          tokensPerSecond: tokens / busy,
          eta: ((o.maxSteps - this.step) * busy) / stepsThisRun,
          elapsed: (performance.now() - t0) / 1000,
        };
        o.onProgress?.(progress);
        this.dispatchEvent(new CustomEvent('progress', { detail: progress }));

        if (o.evalData && o.evalEvery && this.step % o.evalEvery === 0) {
          lastEval = await this.evaluate();
          const detail = { ...lastEval, step: this.step };
          o.onEval?.(detail);
          this.dispatchEvent(new CustomEvent('eval', { detail }));
          if (o.earlyStopping && this.updateEarlyStopping(lastEval)) stoppedEarly = true;
        }
        if (o.checkpointDir && o.checkpointEvery && this.step % o.checkpointEvery === 0) await this.saveCheckpoint();
        if (stoppedEarly) break;
      }
    } finally {
      await this.stream.close().catch(() => undefined);
    }
    return { step: this.step, losses, stoppedEarly, lastEval, best: this.best ?? undefined };
  }

  /** True when training should stop. */
  private updateEarlyStopping(e: EvalResult): boolean {
    const es = this.options.earlyStopping!;
    const metric = es.metric ?? 'loss';
    const value = e[metric];
    if (value === undefined)
      throw new ConfigError(
        `earlyStopping metric '${metric}' is not computed (it needs ${metric === 'tokenAccuracy' ? 'model.forward' : 'model.generate and evalGenerate'})`,
        'earlyStopping',
      );
    const sign = HIGHER_IS_BETTER[metric] ? 1 : -1;
    if (this.best === null || sign * (value - this.best) > (es.minDelta ?? 0)) {
      this.best = value;
      this.badEvals = 0;
      return false;
    }
    this.badEvals++;
    return this.badEvals >= es.patience;
  }

  /**
   * Evaluates on `data` (default options.evalData) with dropout off: mean token loss, teacher-forced token
   * accuracy, and with greedy generation the generated-token accuracy and exact match.
   */
  async evaluate(data?: DataInput, options: { generate?: boolean; batchSize?: number } = {}): Promise<EvalResult> {
    const src = data ?? this.options.evalData;
    if (!src) throw new ConfigError('evaluate needs data (or options.evalData)', 'evalData');
    const source = toSource(src, 'evalData');
    const m = this.model;
    const gen = (options.generate ?? this.options.evalGenerate ?? true) && typeof m.generate === 'function';
    let lossSum = 0;
    let tokens = 0;
    let examples = 0;
    let tfCorrect = 0;
    let genCorrect = 0;
    let exact = 0;
    const canForward = typeof m.forward === 'function' && typeof m.shiftRight === 'function';
    for await (const { batch, examples: exs } of evalBatches(source, options.batchSize ?? this.options.evalBatchSize ?? this.options.batchSize ?? 8, this.padId, this.encoder)) {
      const lossT = m.loss({ inputIds: batch.inputIds, attentionMask: batch.attentionMask, labels: batch.labels, training: false });
      lossSum += ((await lossT.data()) as Float32Array)[0] * batch.targetTokens;
      lossT.dispose();
      tokens += batch.targetTokens;
      examples += exs.length;
      if (canForward) {
        const out = m.forward!({ inputIds: batch.inputIds, attentionMask: batch.attentionMask, decoderInputIds: m.shiftRight!(batch.labels) });
        const arg = tf.argMax(out.logits, -1);
        const pred = (await arg.array()) as number[][];
        tf.dispose([arg, out.logits, out.encoderLastHiddenState]);
        exs.forEach((e, r) => e.targetIds.forEach((t, j) => (tfCorrect += pred[r][j] === t ? 1 : 0)));
      }
      if (gen) {
        const maxNewTokens = Math.max(...exs.map((e) => e.targetIds.length));
        const out = await m.generate!({ inputIds: batch.inputIds, attentionMask: batch.attentionMask, maxNewTokens });
        exs.forEach((e, r) => {
          const pred = out[r].slice(1); // drop the decoder start token
          let ok = 0;
          e.targetIds.forEach((t, j) => (ok += pred[j] === t ? 1 : 0));
          genCorrect += ok;
          if (ok === e.targetIds.length) exact++;
        });
      }
    }
    return {
      loss: lossSum / tokens,
      ...(canForward ? { tokenAccuracy: tfCorrect / tokens } : {}),
      ...(gen ? { generationTokenAccuracy: genCorrect / tokens, exactMatch: exact / examples } : {}),
      examples,
      tokens,
    };
  }

  // ------------------------------------------------------------------ checkpoints
  private adapterConfigs(): Record<string, unknown> {
    return Object.fromEntries(this.adapterNames.map((n) => [n, this.model.adapters.adapterConfig(n)]));
  }

  /** The full training state as files (adapter weights, optimizer state, step, RNG states, data position). */
  async checkpointFiles(): Promise<CheckpointFiles> {
    const optState = await this.optimizer.getState();
    const state: TrainerState = {
      format: CHECKPOINT_FORMAT,
      version: CHECKPOINT_VERSION,
      step: this.step,
      adapters: this.adapterNames,
      adapterConfigs: this.adapterConfigs(),
      dims: this.model.dims,
      optimizer: { config: this.optimizer.config, step: optState.step, paramSteps: optState.paramSteps },
      data: this.stream.position,
      rng: { data: this.stream.rng.getState(), step: this.stepRng.getState() },
      seed: this.options.seed ?? 42,
      batchSize: this.options.batchSize ?? 8,
      gradientAccumulationSteps: this.options.gradientAccumulationSteps ?? 1,
      earlyStopping: { best: this.best, badEvals: this.badEvals },
    };
    const adapterFiles: Record<string, Record<string, Uint8Array>> = {};
    for (const n of this.adapterNames) adapterFiles[n] = await this.model.adapters.serializeAdapterAsync(n);
    return packCheckpoint(state, optState, adapterFiles);
  }

  /** Writes `checkpointDir/checkpoint-<step>` atomically (Node); returns its path. */
  async saveCheckpoint(dir = this.options.checkpointDir): Promise<string> {
    if (!dir) throw new ConfigError('saveCheckpoint needs a directory (options.checkpointDir)', 'checkpointDir');
    const path = await writeCheckpoint(dir, this.step, await this.checkpointFiles(), this.options.keepCheckpoints ?? 2);
    this.dispatchEvent(new CustomEvent('checkpoint', { detail: { step: this.step, path } }));
    return path;
  }

  /** Loads a checkpoint directory (or a checkpointDir's latest) into this trainer and the model's adapters. */
  async loadCheckpoint(source: string): Promise<void> {
    const { files, path } = await readCheckpoint(source);
    await this.restoreCheckpointFiles(files, path);
  }

  /** Restores the state from checkpoint files; refuses a checkpoint of another model/config (ModelMismatchError). */
  async restoreCheckpointFiles(files: CheckpointFiles, where = 'checkpoint'): Promise<void> {
    const { state, slots, adapterWeights } = unpackCheckpoint(files, where);
    checkCompatible(state, this.model.dims, this.adapterNames, this.adapterConfigs(), this.optimizer.config);
    if (state.batchSize !== (this.options.batchSize ?? 8) || state.gradientAccumulationSteps !== (this.options.gradientAccumulationSteps ?? 1)) {
      throw new ModelMismatchError(
        `checkpoint was trained with batchSize ${state.batchSize} × ${state.gradientAccumulationSteps} accumulation, this trainer uses ${this.options.batchSize ?? 8} × ${this.options.gradientAccumulationSteps ?? 1}`,
      );
    }
    // Validate everything before assigning anything.
    for (const n of this.adapterNames) {
      const vars = this.model.adapters.adapterVariables(n);
      const w = adapterWeights.get(n)!;
      for (const [k, v] of vars) {
        const t = w.get(k);
        if (!t) throw new WeightError(`${where}: adapter '${n}' lacks tensor '${k}'`, k);
        if (t.shape.join(',') !== v.shape.join(',')) throw new ModelMismatchError(`${where}: tensor '${n}/${k}' has shape [${t.shape}], the adapter expects [${v.shape}]`);
      }
    }
    for (const n of this.adapterNames) {
      const w = adapterWeights.get(n)!;
      for (const [k, v] of this.model.adapters.adapterVariables(n)) {
        const t = w.get(k)!;
        tf.tidy(() => v.assign(tf.tensor(t.data, t.shape, 'float32')));
      }
    }
    this.optimizer.setState({ config: state.optimizer.config, step: state.optimizer.step, paramSteps: state.optimizer.paramSteps, slots });
    this.step = state.step;
    this.stepRng.setState(state.rng.step);
    await this.stream.restore(state.data);
    // restore() re-shuffles the buffer from its saved RNG state; the RNG then stands where it stood at saving.
    if (this.stream.rng.getState() !== state.rng.data) throw new ModelMismatchError(`${where}: the training data differs from the checkpoint's (its shuffle does not replay)`);
    this.best = state.earlyStopping?.best ?? null;
    this.badEvals = state.earlyStopping?.badEvals ?? 0;
  }

  /** Frees the optimizer state. */
  dispose(): void {
    this.optimizer.dispose();
  }
}
