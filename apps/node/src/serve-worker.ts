/**
 * `serve`'s generation worker: loads the backend, the model and the adapters, and runs the generation
 * engine. It lives in a worker thread so that the HTTP thread stays responsive during generation and can
 * start a fresh worker when the backend fails unrecoverably (a wasm heap that ran out).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { initBackend, type BackendRequest } from '@adapterkit/backend';
import { setNativeKernelThreads } from '@adapterkit/kernels';
import { loadModel } from './common.js';
import { BackendFailure, errorInfo, GenerationEngine, isUnrecoverable } from './serve-engine.js';
import type { AdapterInfo, FromWorker, ToWorker, WorkerInit } from './serve-protocol.js';
import type { T5ForConditionalGeneration } from '@adapterkit/t5';

const port = parentPort!;
const init = workerData as WorkerInit;
const emit = (m: FromWorker) => port.postMessage(m);

function adapterInfo(model: T5ForConditionalGeneration): AdapterInfo[] {
  return model.adapters.adapterSummary().map(({ name, method, parameters, percent }) => ({ name, method, parameters, percent }));
}

function die(e: unknown): never {
  emit({ type: 'fatal', message: e instanceof Error ? e.message : String(e) });
  process.exit(1);
}

async function main() {
  const backend = await initBackend(init.backend as BackendRequest);
  setNativeKernelThreads(init.kernelThreads);
  const model = await loadModel(init.modelDir);
  for (const [name, dir] of init.adapters) await model.loadAdapter(dir, { name });
  const engine = new GenerationEngine(model, { emit, poisonInput: init.poisonInput });
  engine.finished.catch((e) => die(e instanceof BackendFailure ? e.message : e));
  port.on('message', (m: ToWorker) => {
    if (m.type === 'generate') engine.submit(m.job);
    else if (m.type === 'cancel') engine.cancel(m.id);
    else if (m.type === 'load') {
      model
        .loadAdapter(m.dir, m.name ? { name: m.name } : {})
        .then((name) => emit({ type: 'loaded', id: m.id, name, adapters: adapterInfo(model) }))
        .catch((e) => (isUnrecoverable(e) ? die(e) : emit({ type: 'failed', id: m.id, error: errorInfo(e) })));
    }
  });
  emit({ type: 'ready', backend: backend.name, vocabSize: model.dims.vocabSize, eosTokenId: model.generationConfig.eosTokenId, adapters: adapterInfo(model) });
}

main().catch(die);
