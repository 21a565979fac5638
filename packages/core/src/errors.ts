/**
 * Typed errors. Every error adapterkit throws on bad input is an AdapterkitError with a stable `code`, and
 * its message names the file, field, argument or adapter at fault.
 */
export class AdapterkitError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** A config.json / adapter_config.json / adapter config value is missing, of the wrong type or out of range. */
export class ConfigError extends AdapterkitError {
  constructor(
    message: string,
    readonly field?: string,
  ) {
    super('CONFIG_ERROR', message);
  }
}

/** A safetensors file is malformed (header, offsets, dtype, sizes). */
export class SafetensorsError extends AdapterkitError {
  constructor(
    message: string,
    readonly file?: string,
  ) {
    super('SAFETENSORS_ERROR', file ? `${file}: ${message}` : message);
  }
}

/**
 * A PyTorch checkpoint (torch.save zip: pytorch_model.bin, adapter_model.bin) is malformed, in the legacy
 * format, or asks for something the safe reader refuses (a global or opcode outside what torch.save emits
 * for tensors, compressed entries, big-endian data, non-contiguous strides).
 */
export class TorchCheckpointError extends AdapterkitError {
  constructor(
    message: string,
    readonly file?: string,
  ) {
    super('TORCH_CHECKPOINT', file ? `${file}: ${message}` : message);
  }
}

/** A weight is missing, unexpected, or has the wrong shape for the model. */
export class WeightError extends AdapterkitError {
  constructor(
    message: string,
    readonly weight?: string,
  ) {
    super('WEIGHT_ERROR', message);
  }
}

/** A required file is missing or unreadable. */
export class FileError extends AdapterkitError {
  constructor(
    message: string,
    readonly path?: string,
  ) {
    super('FILE_ERROR', message);
  }
}

/** Inputs to forward/generate are malformed: shapes, ranges, empty batch. */
export class InputError extends AdapterkitError {
  constructor(
    message: string,
    readonly argument?: string,
  ) {
    super('INPUT_ERROR', message);
  }
}

/** An adapter name is unknown, duplicated, or in the wrong state. */
export class AdapterError extends AdapterkitError {
  constructor(
    message: string,
    readonly adapter?: string,
  ) {
    super('ADAPTER_ERROR', message);
  }
}

/** A composition is invalid or uses a block a method cannot do. */
export class CompositionError extends AdapterkitError {
  constructor(
    message: string,
    readonly block?: string,
    readonly child?: string,
    readonly method?: string,
  ) {
    super('COMPOSITION_ERROR', message);
  }
}

/** An adapter file was made for a model of another type or shape. */
export class ModelMismatchError extends AdapterkitError {
  constructor(message: string) {
    super('MODEL_MISMATCH', message);
  }
}

/** A tensor entering attention or the cache has the wrong rank/layout (an internal invariant, asserted). */
export class LayoutError extends AdapterkitError {
  constructor(message: string) {
    super('LAYOUT_ERROR', message);
  }
}

/** A feature of an imported format that adapterkit does not support (e.g. PEFT use_dora). */
export class UnsupportedError extends AdapterkitError {
  constructor(
    message: string,
    readonly option?: string,
  ) {
    super('UNSUPPORTED', message);
  }
}

/** Training produced a non-finite loss. */
export class NonFiniteLossError extends AdapterkitError {
  constructor(
    message: string,
    readonly step?: number,
  ) {
    super('NON_FINITE_LOSS', message);
  }
}

/** A generation was stopped through its AbortSignal (a client went away); no result, nothing leaked. */
export class AbortedError extends AdapterkitError {
  constructor(message = 'generation was aborted') {
    super('ABORTED', message);
  }
}

/** What a Hugging Face Hub request was about: the repository, the file in it and the revision asked for. */
export interface HubFileRef {
  repo: string;
  file: string;
  revision: string;
}

/** A file could not be had from the Hugging Face Hub (or its cache); `reason` says why, the fields say which. */
export class HubError extends AdapterkitError {
  readonly repo: string;
  readonly file: string;
  readonly revision: string;
  constructor(
    readonly reason: 'auth' | 'not_found' | 'integrity' | 'offline' | 'network' | 'protocol',
    message: string,
    ref: HubFileRef,
  ) {
    super('HUB_ERROR', message);
    this.repo = ref.repo;
    this.file = ref.file;
    this.revision = ref.revision;
  }
}

/** 401/403: the repository is private or gated and no (or a wrong) token was sent. */
export class HubAuthError extends HubError {
  constructor(message: string, ref: HubFileRef) {
    super('auth', message, ref);
  }
}

/** 404: the repository, the revision or the file does not exist. */
export class HubNotFoundError extends HubError {
  constructor(message: string, ref: HubFileRef) {
    super('not_found', message, ref);
  }
}

/** A download ended short, or its bytes do not match the size or sha256 the Hub announced. */
export class HubIntegrityError extends HubError {
  constructor(message: string, ref: HubFileRef) {
    super('integrity', message, ref);
  }
}

/** Offline (HF_HUB_OFFLINE or `offline: true`), or the Hub unreachable, and the file is not in the cache. */
export class HubOfflineError extends HubError {
  constructor(message: string, ref: HubFileRef, reason: 'offline' | 'network' = 'offline') {
    super(reason, message, ref);
  }
}
