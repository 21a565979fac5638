/**
 * adapterkit in the browser: load a Hugging Face T5 from a URL (the bundled tiny model by default), run it on
 * WebGPU (wasm when navigator.gpu is absent), hot-swap adapters without reloading the model, load adapters
 * from files (adapterkit or PEFT format), train a LoRA in the tab with a live loss chart, download it.
 */
import { initBackend, setWasmPaths, type BackendInfo } from '@adapterkit/backend';
import type { AdapterFiles } from '@adapterkit/core';
import '@adapterkit/lora';
import { T5ForConditionalGeneration } from '@adapterkit/t5';
import { CategoryScale, Chart, LinearScale, LineController, LineElement, PointElement } from 'chart.js';
import { shiftTaskExamples as shiftExamples, Trainer } from '@adapterkit/train';

Chart.register(LineController, LineElement, PointElement, LinearScale, CategoryScale);

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const ui = {
  backend: $('backend'),
  backendNote: $('backend-note'),
  modelUrl: $<HTMLInputElement>('model-url'),
  loadModel: $<HTMLButtonElement>('load-model'),
  modelStatus: $('model-status'),
  adapterList: $('adapter-list'),
  adapterFiles: $<HTMLInputElement>('adapter-files'),
  adapterName: $<HTMLInputElement>('adapter-name'),
  adapterStatus: $('adapter-status'),
  genInput: $<HTMLInputElement>('gen-input'),
  genIds: $<HTMLInputElement>('gen-ids'),
  genMax: $<HTMLInputElement>('gen-max'),
  generate: $<HTMLButtonElement>('generate'),
  genOutput: $('gen-output'),
  trainConfig: $<HTMLInputElement>('train-config'),
  trainSteps: $<HTMLInputElement>('train-steps'),
  trainLr: $<HTMLInputElement>('train-lr'),
  trainBatch: $<HTMLInputElement>('train-batch'),
  train: $<HTMLButtonElement>('train'),
  download: $<HTMLButtonElement>('download'),
  trainStatus: $('train-status'),
};

let model: T5ForConditionalGeneration | undefined;
let modelLoads = 0;
let active: string | null = null;
let trained: string | undefined;
let busy = false;

function status(el: HTMLElement, text: string, state = 'ok') {
  el.textContent = text;
  el.dataset.state = state;
}

async function guard(el: HTMLElement, fn: () => Promise<void>) {
  if (busy) return;
  busy = true;
  setButtons();
  try {
    await fn();
  } catch (e) {
    console.error(e);
    status(el, `${(e as Error).name}: ${(e as Error).message}`, 'error');
  } finally {
    busy = false;
    setButtons();
  }
}

function setButtons() {
  ui.generate.disabled = busy || !model;
  ui.train.disabled = busy || !model;
  ui.loadModel.disabled = busy;
  ui.download.disabled = busy || !trained;
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
async function loadModel() {
  const url = new URL(ui.modelUrl.value.trim() || 'tiny-gated/', document.baseURI).href;
  status(ui.modelStatus, `loading ${url} …`, 'loading');
  const t0 = performance.now();
  const next = await T5ForConditionalGeneration.fromPretrained(url.replace(/\/+$/, ''));
  model?.dispose();
  model = next;
  modelLoads++;
  active = null;
  trained = undefined;
  const d = model.dims;
  status(
    ui.modelStatus,
    `ready: ${url} — d_model ${d.dModel}, ${d.numEncoderLayers}+${d.numDecoderLayers} layers, vocab ${d.vocabSize}, ${model.baseParameterCount().toLocaleString('en-US')} parameters (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    'ready',
  );
  ui.modelStatus.dataset.loads = String(modelLoads);
  renderAdapters();
}

function renderAdapters() {
  ui.adapterList.replaceChildren();
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
async function loadAdapterFromFiles() {
  if (!model) throw new Error('load a model first');
  const files: AdapterFiles = {};
  for (const f of Array.from(ui.adapterFiles.files ?? [])) {
    const key = f.name.endsWith('.json') ? 'adapter_config.json' : f.name.endsWith('.safetensors') ? 'adapter_model.safetensors' : '';
    if (key) files[key] = new Uint8Array(await f.arrayBuffer());
  }
  if (!files['adapter_config.json'] || !files['adapter_model.safetensors']) throw new Error('pick both adapter_config.json and adapter_model.safetensors');
  const wanted = ui.adapterName.value.trim();
  const name = model.adapters.loadAdapterFiles(files, { ...(wanted ? { name: wanted } : {}), fallbackName: `adapter${model.adapters.listAdapters().length + 1}`, overwrite: true });
  active = name;
  ui.adapterFiles.value = '';
  ui.adapterName.value = '';
  renderAdapters();
  status(ui.adapterStatus, `loaded '${name}' (${model.adapters.adapterConfig(name).method}) and made it active`);
}

// ---------------------------------------------------------------- generate
async function generate() {
  if (!model) return;
  let ids: number[];
  const text = ui.genInput.value;
  if (ui.genIds.checked) {
    ids = text
      .split(/[\s,]+/)
      .filter(Boolean)
      .map(Number);
    if (!ids.length || ids.some((t) => !Number.isInteger(t) || t < 0 || t >= model!.dims.vocabSize)) throw new Error(`token ids must be integers in [0, ${model.dims.vocabSize})`);
  } else {
    if (!model.tokenizer) throw new Error('this model has no tokenizer: use token ids');
    ids = model.tokenizer.encode(text);
  }
  const t0 = performance.now();
  ui.genOutput.textContent = '';
  ui.genOutput.dataset.ids = '';
  const out = await model.generate({
    inputIds: [ids],
    maxNewTokens: Number(ui.genMax.value) || 8,
    composition: active,
    onToken: (_step, tokens) => {
      ui.genOutput.textContent += `${tokens[0]} `;
    },
  });
  const eos = model.generationConfig.eosTokenId;
  const row: number[] = [];
  for (const t of out[0].slice(1)) {
    row.push(t);
    if (t === eos) break;
  }
  const decoded = model.tokenizer ? `\ntext: ${JSON.stringify(model.tokenizer.decode(row, { skipSpecialTokens: true }))}` : '';
  ui.genOutput.textContent = `adapter: ${active ?? 'none'}\ninput ids:  ${JSON.stringify(ids)}\noutput ids: ${JSON.stringify(row)}${decoded}\n(${((performance.now() - t0) / 1000).toFixed(2)} s)`;
  ui.genOutput.dataset.ids = JSON.stringify(row);
  ui.genOutput.dataset.adapter = active ?? '';
}

// ---------------------------------------------------------------- train a LoRA in the tab
const chart = new Chart($<HTMLCanvasElement>('loss-chart'), {
  type: 'line',
  data: { labels: [], datasets: [{ label: 'training loss', data: [], borderColor: '#2f6fb0', pointRadius: 0, borderWidth: 2 }] },
  options: {
    animation: false,
    responsive: true,
    maintainAspectRatio: false,
    scales: { x: { title: { display: true, text: 'step' } }, y: { title: { display: true, text: 'loss' } } },
  },
});

async function train() {
  if (!model) return;
  const name = `lora${model.adapters.listAdapters().length + 1}`;
  const steps = Number(ui.trainSteps.value) || 50;
  model.addAdapter(name, ui.trainConfig.value.trim(), { seed: 0 });
  chart.data.labels = [];
  chart.data.datasets[0].data = [];
  chart.update();
  const trainer = new Trainer(model, {
    adapters: name,
    trainData: shiftExamples(1000, 0, 2),
    maxSteps: steps,
    lr: Number(ui.trainLr.value) || 1e-2,
    optimizer: 'adamw',
    optimizerOptions: { weightDecay: 0 },
    batchSize: Number(ui.trainBatch.value) || 16,
    seed: 0,
    onProgress: (p) => {
      (chart.data.labels as number[]).push(p.step);
      (chart.data.datasets[0].data as number[]).push(p.loss);
      chart.update();
      status(ui.trainStatus, `step ${p.step}/${p.maxSteps} — loss ${p.loss.toFixed(4)} — ${p.stepsPerSecond.toFixed(2)} steps/s`);
      ui.trainStatus.dataset.steps = String(p.step);
    },
  });
  try {
    await trainer.train();
  } finally {
    trainer.dispose();
  }
  trained = name;
  active = name;
  renderAdapters();
  status(ui.trainStatus, `${ui.trainStatus.textContent} — done; '${name}' is active`);
  ui.trainStatus.dataset.done = name;
}

async function download() {
  if (!model || !trained) return;
  const files = await model.adapters.serializeAdapterAsync(trained);
  for (const [file, bytes] of Object.entries(files)) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes as BlobPart], { type: file.endsWith('.json') ? 'application/json' : 'application/octet-stream' }));
    a.download = `${trained}-${file}`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }
}

// ---------------------------------------------------------------- wire up
ui.loadModel.addEventListener('click', () => guard(ui.modelStatus, loadModel));
ui.adapterFiles.addEventListener('change', () => guard(ui.adapterStatus, loadAdapterFromFiles));
ui.generate.addEventListener('click', () => guard(ui.genOutput, generate));
ui.train.addEventListener('click', () => guard(ui.trainStatus, train));
ui.download.addEventListener('click', () => guard(ui.trainStatus, download));

(async () => {
  try {
    await startBackend();
  } catch (e) {
    status(ui.backend, `no backend: ${(e as Error).message}`, 'error');
    return;
  }
  await guard(ui.modelStatus, loadModel);
})();
