/**
 * adapterkit in the browser: load a Hugging Face T5 by URL (the bundled tiny model by default) with a
 * progress bar, run it on WebGPU (wasm when navigator.gpu is absent), hot-swap adapters loaded from files,
 * generate with streamed text, and train an adapter on the user's own examples (held-out split, live loss and
 * accuracy chart, stop/resume), then download it in adapterkit, PEFT or AdapterHub adapters format.
 */
import { initBackend, setWasmPaths, type BackendInfo } from '@adapterkit/backend';
import type { AdapterFiles } from '@adapterkit/core';
import '@adapterkit/lora';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { shiftTaskExamples, Trainer, type ExampleRow, type TrainerOptions } from '@adapterkit/train';
import { LineChart } from './chart.js';
import { adapterNameProblem, detectFormat, nextFreeName, parseDataset, splitHeldOut, toJsonl } from './dataset.js';
import { modelSourceUrl, withDownloadProgress } from './source.js';
import { textStream } from './stream.js';
import { zipFiles } from './zip.js';

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const ui = {
  backend: $('backend'),
  backendNote: $('backend-note'),
  modelForm: $<HTMLFormElement>('model-form'),
  modelUrl: $<HTMLInputElement>('model-url'),
  loadModel: $<HTMLButtonElement>('load-model'),
  modelProgress: $<HTMLProgressElement>('model-progress'),
  modelStatus: $('model-status'),
  adapterList: $<HTMLFieldSetElement>('adapter-list'),
  adapterFiles: $<HTMLInputElement>('adapter-files'),
  adapterName: $<HTMLInputElement>('adapter-name'),
  adapterStatus: $('adapter-status'),
  genInput: $<HTMLInputElement>('gen-input'),
  genIds: $<HTMLInputElement>('gen-ids'),
  genMax: $<HTMLInputElement>('gen-max'),
  generate: $<HTMLButtonElement>('generate'),
  genStream: $<HTMLOutputElement>('gen-stream'),
  genOutput: $('gen-output'),
  trainData: $<HTMLTextAreaElement>('train-data'),
  trainFile: $<HTMLInputElement>('train-file'),
  trainExample: $<HTMLButtonElement>('train-example'),
  trainDataStatus: $('train-data-status'),
  trainName: $<HTMLInputElement>('train-name'),
  trainNameError: $('train-name-error'),
  trainMethod: $<HTMLSelectElement>('train-method'),
  trainConfig: $<HTMLInputElement>('train-config'),
  trainSteps: $<HTMLInputElement>('train-steps'),
  trainLr: $<HTMLInputElement>('train-lr'),
  trainBatch: $<HTMLInputElement>('train-batch'),
  trainHeldOut: $<HTMLInputElement>('train-heldout'),
  trainEvalEvery: $<HTMLInputElement>('train-eval-every'),
  train: $<HTMLButtonElement>('train'),
  trainStop: $<HTMLButtonElement>('train-stop'),
  trainResume: $<HTMLButtonElement>('train-resume'),
  trainProgress: $<HTMLProgressElement>('train-progress'),
  trainStatus: $('train-status'),
  download: $<HTMLButtonElement>('download'),
  downloadPeft: $<HTMLButtonElement>('download-peft'),
  downloadAdapters: $<HTMLButtonElement>('download-adapters'),
  downloadStatus: $('download-status'),
};

let model: T5ForConditionalGeneration | undefined;
let modelLoads = 0;
let active: string | null = null;
let busy = false;

/** The adapter being trained (or last trained) and its trainer, kept for Resume. */
let run: { name: string; trainer: Trainer; options: TrainerOptions; stop?: AbortController; heldOut: ExampleRow[] } | undefined;
let training = false;

function status(el: HTMLElement, text: string, state = 'ok') {
  el.textContent = text;
  el.dataset.state = state;
}

const errorText = (e: unknown) => `${(e as Error).name}: ${(e as Error).message}`;

async function guard(el: HTMLElement, fn: () => Promise<void>) {
  if (busy) return;
  busy = true;
  setButtons();
  try {
    await fn();
  } catch (e) {
    console.error(e);
    status(el, errorText(e), 'error');
  } finally {
    busy = false;
    setButtons();
  }
}

function setButtons() {
  const idle = !busy && !!model;
  ui.generate.disabled = !idle;
  ui.train.disabled = !idle;
  ui.loadModel.disabled = busy;
  ui.trainStop.disabled = !training;
  ui.trainResume.disabled = !idle || !run || run.trainer.currentStep >= run.options.maxSteps;
  ui.download.disabled = !idle || !run || run.trainer.currentStep === 0;
  ui.downloadPeft.disabled = ui.download.disabled;
  ui.downloadAdapters.disabled = ui.download.disabled;
}

// ---------------------------------------------------------------- backend: WebGPU, else wasm (visible)
async function startBackend(): Promise<BackendInfo> {
  // The wasm backend's .wasm files are emitted under /tfjs-wasm/ by vite.config.ts.
  setWasmPaths(new URL('tfjs-wasm/', document.baseURI).href);
  const forced = new URLSearchParams(location.search).get('backend');
  let info: BackendInfo;
  let note = '';
  if (forced) info = await initBackend(forced as 'wasm' | 'webgpu' | 'cpu');
  else if (!(navigator as Navigator & { gpu?: unknown }).gpu) {
    note = 'navigator.gpu is absent: this browser has no WebGPU, falling back to wasm';
    info = await initBackend('wasm');
  } else {
    try {
      info = await initBackend('webgpu');
    } catch (e) {
      note = `WebGPU failed (${(e as Error).message}); falling back to wasm`;
      info = await initBackend('wasm');
    }
  }
  ui.backend.textContent = `backend: ${info.name} — ${info.device}${info.isFallbackAdapter ? ' (software adapter)' : ''}`;
  ui.backend.dataset.backend = info.name;
  if (note) {
    ui.backendNote.textContent = note;
    ui.backendNote.hidden = false;
  }
  return info;
}

// ---------------------------------------------------------------- model
const kB = (n: number) => `${(n / 1024).toFixed(n < 10 * 1024 ? 1 : 0)} kB`;

async function loadModel() {
  const url = modelSourceUrl(ui.modelUrl.value, document.baseURI);
  status(ui.modelStatus, `loading ${url} …`, 'loading');
  ui.modelProgress.hidden = false;
  ui.modelProgress.removeAttribute('value'); // indeterminate until a size is known
  const t0 = performance.now();
  let downloaded = 0;
  const next = await withDownloadProgress(
    url,
    (p) => {
      downloaded = p.loaded;
      if (p.total) ui.modelProgress.value = Math.min(1, p.loaded / p.total);
      status(ui.modelStatus, `downloading ${p.file}: ${kB(p.loaded)}${p.total ? ` of ${kB(p.total)}` : ''} (${p.files} files done)`, 'loading');
    },
    () => T5ForConditionalGeneration.fromPretrained(url),
  ).finally(() => {
    ui.modelProgress.hidden = true;
  });
  model?.dispose();
  model = next;
  modelLoads++;
  active = null;
  run = undefined;
  const d = model.dims;
  status(
    ui.modelStatus,
    `ready: ${url} — d_model ${d.dModel}, ${d.numEncoderLayers}+${d.numDecoderLayers} layers, vocab ${d.vocabSize}, ${model.baseParameterCount().toLocaleString('en-US')} parameters (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    'ready',
  );
  ui.modelStatus.dataset.loads = String(modelLoads);
  ui.modelStatus.dataset.downloaded = String(downloaded);
  renderAdapters();
  checkName();
}

function renderAdapters() {
  const legend = ui.adapterList.querySelector('legend')!;
  ui.adapterList.replaceChildren(legend);
  const rows = [
    { name: null as string | null, label: 'none (base model)' },
    ...(model?.adapters.adapterSummary() ?? []).map((r) => ({
      name: r.name,
      label: `${r.name} — ${r.method}, ${r.parameters.toLocaleString('en-US')} params (${r.percent.toFixed(2)}%)`,
    })),
  ];
  for (const r of rows) {
    const label = document.createElement('label');
    const input = document.createElement('input');
    input.type = 'radio';
    input.name = 'adapter';
    input.value = r.name ?? '';
    input.checked = r.name === active;
    // Hot swap: the base model stays loaded; only the composition passed to generate changes.
    input.addEventListener('change', () => {
      active = r.name;
      ui.adapterList.dataset.active = active ?? '';
    });
    label.append(input, ' ', r.label);
    ui.adapterList.append(label);
  }
  ui.adapterList.dataset.active = active ?? '';
}

// ---------------------------------------------------------------- adapters from files
const ADAPTER_FILES: [RegExp, string][] = [
  [/\.json$/i, 'adapter_config.json'],
  [/\.safetensors$/i, 'adapter_model.safetensors'],
  [/\.bin$/i, 'adapter_model.bin'],
];

async function loadAdapterFromFiles() {
  if (!model) throw new Error('load a model first');
  const files: AdapterFiles = {};
  for (const f of Array.from(ui.adapterFiles.files ?? [])) {
    const key = ADAPTER_FILES.find(([re]) => re.test(f.name))?.[1];
    if (key) files[key] = new Uint8Array(await f.arrayBuffer());
  }
  ui.adapterFiles.value = '';
  if (!files['adapter_config.json'] || !(files['adapter_model.safetensors'] || files['adapter_model.bin']))
    throw new Error('pick adapter_config.json and its weights file (.safetensors or .bin) together');
  const wanted = ui.adapterName.value.trim();
  const problem = wanted ? adapterNameProblem(wanted, []) : undefined;
  if (problem) throw new Error(`adapter name: ${problem}`);
  const name = model.adapters.loadAdapterFiles(files, { ...(wanted ? { name: wanted } : {}), fallbackName: `adapter${model.adapters.listAdapters().length + 1}`, overwrite: true });
  active = name;
  ui.adapterName.value = '';
  renderAdapters();
  checkName();
  status(ui.adapterStatus, `loaded '${name}' (${model.adapters.adapterConfig(name).method}) and made it active`);
}

// ---------------------------------------------------------------- generate (streamed)
function inputIds(m: T5ForConditionalGeneration): number[] {
  const text = ui.genInput.value;
  if (!ui.genIds.checked) {
    if (!m.tokenizer) throw new Error('this model has no tokenizer: give token ids');
    return m.tokenizer.encode(text);
  }
  const ids = text
    .split(/[\s,]+/)
    .filter(Boolean)
    .map(Number);
  if (!ids.length || ids.some((t) => !Number.isInteger(t) || t < 0 || t >= m.dims.vocabSize)) throw new Error(`token ids must be integers in [0, ${m.dims.vocabSize})`);
  return ids;
}

async function generate() {
  if (!model) return;
  const m = model;
  const ids = inputIds(m);
  const eos = m.generationConfig.eosTokenId;
  const eosIds = Array.isArray(eos) ? eos : [eos];
  const asText = !ui.genIds.checked && !!m.tokenizer;
  const stream = textStream((row) => (asText ? m.tokenizer!.decode(row, { skipSpecialTokens: true }) : `${row.join(' ')} `), asText ? [] : eosIds);
  const t0 = performance.now();
  ui.genStream.textContent = '';
  ui.genOutput.textContent = '';
  ui.genOutput.dataset.ids = '';
  let finished = false;
  const out = await m.generate({
    inputIds: [ids],
    maxNewTokens: Number(ui.genMax.value) || 8,
    composition: active,
    onToken: (_step, tokens) => {
      if (finished) return;
      ui.genStream.textContent = stream.push(tokens[0]);
      finished = eosIds.includes(tokens[0]);
    },
  });
  ui.genStream.textContent = stream.end();
  const row: number[] = [];
  for (const t of out[0].slice(1)) {
    row.push(t);
    if (eosIds.includes(t)) break;
  }
  const decoded = m.tokenizer ? `\ntext: ${JSON.stringify(m.tokenizer.decode(row, { skipSpecialTokens: true }))}` : '';
  ui.genOutput.textContent = `adapter: ${active ?? 'none'}\ninput ids:  ${JSON.stringify(ids)}\noutput ids: ${JSON.stringify(row)}${decoded}\n(${((performance.now() - t0) / 1000).toFixed(2)} s)`;
  ui.genOutput.dataset.ids = JSON.stringify(row);
  ui.genOutput.dataset.adapter = active ?? '';
}

// ---------------------------------------------------------------- train on the user's examples
const chart = new LineChart(
  $<HTMLCanvasElement>('train-chart'),
  [
    { label: 'training loss', color: '#2f6fb0', axis: 'loss' },
    { label: 'held-out loss', color: '#c0541b', axis: 'loss', dashed: true },
    { label: 'held-out token accuracy', color: '#2f7d4f', axis: 'accuracy', dashed: true },
  ],
  $('train-legend'),
);

function chartPoint(label: string, step: number, value: number) {
  chart.add(label, step, value);
  $('train-chart').dataset.points = JSON.stringify(chart.counts());
}

const adapterNames = () => (model?.adapters.listAdapters() ?? []).map((a) => a.name);

/** Validates the name as the user types; returns the problem, if any. */
function checkName(): string | undefined {
  const problem = adapterNameProblem(
    ui.trainName.value.trim(),
    (model?.adapters.listAdapters() ?? []).map((a) => a.name),
  );
  ui.trainName.setAttribute('aria-invalid', String(!!problem));
  status(ui.trainNameError, problem ?? '', problem ? 'error' : 'ok');
  return problem;
}

function readExamples(): { train: ExampleRow[]; heldOut: ExampleRow[] } {
  const rows = parseDataset(ui.trainData.value, detectFormat(ui.trainData.value, ui.trainFile.files?.[0]?.name));
  const split = splitHeldOut(rows, (Number(ui.trainHeldOut.value) || 0) / 100, 0);
  status(ui.trainDataStatus, `${rows.length} examples: ${split.train.length} to train, ${split.heldOut.length} held out`);
  return split;
}

async function evaluate(r: NonNullable<typeof run>) {
  if (!r.heldOut.length) return;
  const e = await r.trainer.evaluate(r.heldOut, { generate: false });
  chartPoint('held-out loss', r.trainer.currentStep, e.loss);
  if (e.tokenAccuracy !== undefined) chartPoint('held-out token accuracy', r.trainer.currentStep, e.tokenAccuracy);
  ui.trainStatus.dataset.accuracy = String(e.tokenAccuracy ?? '');
  return e;
}

async function startTraining() {
  if (!model) return;
  const problem = checkName();
  if (problem) throw new Error(`adapter name: ${problem}`);
  let split: ReturnType<typeof readExamples>;
  try {
    split = readExamples();
  } catch (e) {
    status(ui.trainDataStatus, errorText(e), 'error');
    throw new Error('the examples need fixing (see above)');
  }
  const name = ui.trainName.value.trim();
  const maxSteps = Number(ui.trainSteps.value);
  if (!Number.isInteger(maxSteps) || maxSteps < 1) throw new Error('steps must be a whole number ≥ 1');
  model.addAdapter(name, ui.trainConfig.value.trim(), { seed: 0 });
  const evalEvery = Math.max(1, Math.round(Number(ui.trainEvalEvery.value) || 10));
  const options: TrainerOptions = {
    adapters: name,
    trainData: split.train,
    maxSteps,
    lr: Number(ui.trainLr.value) || 1e-2,
    optimizer: 'adamw',
    optimizerOptions: { weightDecay: 0 },
    batchSize: Number(ui.trainBatch.value) || 16,
    seed: 0,
    ...(split.heldOut.length ? { evalData: split.heldOut, evalEvery, evalGenerate: false } : {}),
    onProgress: (p) => {
      chartPoint('training loss', p.step, p.loss);
      ui.trainProgress.value = p.step / p.maxSteps;
      status(ui.trainStatus, `step ${p.step}/${p.maxSteps} — loss ${p.loss.toFixed(4)} — ${p.stepsPerSecond.toFixed(2)} steps/s`, 'training');
      ui.trainStatus.dataset.steps = String(p.step);
    },
    onEval: (e) => {
      chartPoint('held-out loss', e.step, e.loss);
      if (e.tokenAccuracy !== undefined) chartPoint('held-out token accuracy', e.step, e.tokenAccuracy);
      ui.trainStatus.dataset.accuracy = String(e.tokenAccuracy ?? '');
    },
  };
  let trainer: Trainer;
  try {
    trainer = new Trainer(model, options);
  } catch (e) {
    model.deleteAdapter(name);
    throw e;
  }
  run?.trainer.dispose();
  run = { name, trainer, options, heldOut: split.heldOut };
  active = name;
  renderAdapters();
  // The name is taken now: offer a free one for the next adapter.
  ui.trainName.value = nextFreeName(name, adapterNames());
  checkName();
  chart.clear();
  ui.trainProgress.value = 0;
  delete ui.trainStatus.dataset.done;
  ui.trainStatus.dataset.steps = '0';
  model.setActiveAdapters(name);
  await evaluate(run); // the step-0 point: the untrained adapter on the held-out rows
  await continueTraining();
}

async function continueTraining() {
  const r = run;
  if (!r) return;
  r.stop = new AbortController();
  // The trainer reads options.signal before every step: a fresh signal per run lets the same trainer (its
  // optimizer state and data position) stop and resume.
  r.options.signal = r.stop.signal;
  training = true;
  setButtons();
  let last: Awaited<ReturnType<Trainer['train']>>;
  try {
    last = await r.trainer.train();
  } finally {
    training = false;
  }
  const step = r.trainer.currentStep;
  const evalEvery = r.options.evalEvery ?? 0;
  const e = evalEvery && step % evalEvery === 0 ? last.lastEval : await evaluate(r);
  const acc = e?.tokenAccuracy !== undefined ? `, held-out token accuracy ${(e.tokenAccuracy * 100).toFixed(1)}%` : '';
  if (step < r.options.maxSteps) {
    status(ui.trainStatus, `stopped at step ${step}/${r.options.maxSteps}${acc} — Resume continues; '${r.name}' is active`, 'stopped');
  } else {
    status(ui.trainStatus, `done: ${step} steps${acc}; '${r.name}' is active`, 'done');
    ui.trainStatus.dataset.done = r.name;
  }
  // Try it: the first held-out example goes into the generate box.
  const sample = r.heldOut[0];
  if (sample) {
    ui.genIds.checked = 'inputIds' in sample;
    ui.genInput.value = 'inputIds' in sample ? sample.inputIds.join(',') : sample.input;
  }
}

async function download(format: 'adapterkit' | 'peft' | 'adapters') {
  if (!model || !run) return;
  const files = await model.adapters.serializeAdapterAsync(run.name, { format });
  const folder = format === 'adapterkit' ? run.name : `${run.name}-${format}`;
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([zipFiles(folder, files) as BlobPart], { type: 'application/zip' }));
  a.download = `${folder}.zip`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  status(ui.downloadStatus, `downloaded ${folder}.zip (${format} format: unzip it, then load the folder)`);
}

async function readDatasetFile() {
  const f = ui.trainFile.files?.[0];
  if (!f) return;
  ui.trainData.value = await f.text();
  readExamples();
}

function fillExample() {
  // The built-in example: the shift-2 copy task in token ids (the bundled tiny model was trained on shift 1).
  ui.trainData.value = toJsonl(shiftTaskExamples(400, 0, 2));
  ui.trainFile.value = '';
  readExamples();
}

// ---------------------------------------------------------------- wire up
ui.modelForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  guard(ui.modelStatus, loadModel);
});
ui.adapterFiles.addEventListener('change', () => guard(ui.adapterStatus, loadAdapterFromFiles));
ui.generate.addEventListener('click', () => guard(ui.genOutput, generate));
ui.train.addEventListener('click', () => guard(ui.trainStatus, startTraining));
ui.trainResume.addEventListener('click', () => guard(ui.trainStatus, continueTraining));
ui.trainStop.addEventListener('click', () => run?.stop?.abort());
ui.download.addEventListener('click', () => guard(ui.downloadStatus, () => download('adapterkit')));
ui.downloadPeft.addEventListener('click', () => guard(ui.downloadStatus, () => download('peft')));
ui.downloadAdapters.addEventListener('click', () => guard(ui.downloadStatus, () => download('adapters')));
ui.trainName.addEventListener('input', checkName);
ui.trainMethod.addEventListener('change', () => {
  ui.trainConfig.value = ui.trainMethod.value;
});
ui.trainFile.addEventListener('change', () => guard(ui.trainDataStatus, readDatasetFile));
ui.trainExample.addEventListener('click', () => {
  try {
    fillExample();
  } catch (e) {
    status(ui.trainDataStatus, errorText(e), 'error');
  }
});
ui.trainData.addEventListener('change', () => {
  try {
    readExamples();
  } catch (e) {
    status(ui.trainDataStatus, errorText(e), 'error');
  }
});
ui.trainConfig.value = ui.trainMethod.value;
fillExample();

(async () => {
  try {
    await startBackend();
  } catch (e) {
    status(ui.backend, `no backend: ${(e as Error).message}`, 'error');
    return;
  }
  await guard(ui.modelStatus, loadModel);
})();
