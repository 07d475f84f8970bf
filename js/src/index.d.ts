// Types of the adamax-onnx JavaScript package.
import type { InferenceSession, Tensor } from "onnxruntime-common";

/** The onnxruntime module: `import * as ort from "onnxruntime-node"` (or "onnxruntime-web"). */
export interface OrtModule {
  InferenceSession: typeof InferenceSession;
  Tensor: typeof Tensor;
}

export interface CreateOptions {
  /** The onnxruntime module to run with: `import * as ort from "onnxruntime-node"` (or -web). */
  ort: OrtModule;
  /** Passed to InferenceSession.create (executionProviders, intraOpNumThreads, ...). */
  sessionOptions?: InferenceSession.SessionOptions;
  /**
   * Default true: the session's copy of the model takes the float state of each element type
   * as one flat tensor (sliced and concatenated inside the graph: exact copies), so a step
   * moves a few tensors instead of three per parameter. The model file is not changed.
   */
  pack?: boolean;
}

/** The roles recorded in the model's `adamax_onnx.contract` metadata (see passes/contract.py). */
export interface Contract {
  kind: "training" | "optimizer";
  params: string[];
  data_inputs: string[];
  loss: string | null;
  model_inputs: string[];
  model_outputs: string[];
  lr_inputs: Record<string, string>;
  tables: Record<string, number>;
  hyper: Record<string, number>;
  groups: Record<string, unknown>[];
  overflow: string | null;
  extra_state: string[];
  initial: Record<string, string>;
  format: number;
}

export interface OptimizerState {
  globalStep: number;
  beta1Power: number;
  m: Record<string, Tensor>;
  v: Record<string, Tensor>;
  /** Further carried state (a dynamic loss scale), by input name. */
  extra?: Record<string, Tensor>;
}

/** Train a model built by adamax-onnx: one InferenceSession.run per step, as in Python. */
export class TrainingSession {
  static create(modelBytes: Uint8Array | ArrayBuffer, options: CreateOptions): Promise<TrainingSession>;
  readonly contract: Contract;
  readonly session: InferenceSession;
  /** True when the last step was skipped (a NaN/Inf gradient; models built with skip_nonfinite). */
  lastOverflow: boolean;
  readonly globalStep: number;
  /** The current dynamic loss scale, or null without a dynamic loss-scale manager. */
  readonly lossScale: number | null;
  /** Current fixed learning rate of each fixed-lr group, by group index. */
  readonly learningRates: Record<number, number>;
  /** One step on a batch (input name -> Tensor); resolves to the unscaled loss (null: optimizer model). */
  step(feeds: Record<string, Tensor>): Promise<number | null>;
  /** Current parameter values (copies), by name. */
  parameters(): Record<string, Tensor>;
  state(): OptimizerState;
  /** Every carried tensor (parameters, optimizer state, learning rates) by input name (copies). */
  tensors(): Record<string, Tensor>;
  setParameters(values: Record<string, Tensor>): void;
  /** Change a fixed learning rate between steps (every fixed-lr group, or `group`). */
  setLearningRate(value: number, group?: number | null): void;
  /** The model fingerprint stored in checkpoints (equal to Python's TrainingSession.identity()). */
  identity(): Promise<string>;
  /** The checkpoint (.npz bytes, adamax_onnx/checkpoint.py's format) of the current state. */
  saveCheckpoint(): Promise<Uint8Array>;
  /** Restore a checkpoint (from Python or JS); refused (CheckpointError) if it is another model's. */
  loadCheckpoint(bytes: Uint8Array | ArrayBuffer): Promise<void>;
  /** The original inference model with the trained parameters, as .onnx bytes. */
  exportInferenceModel(): Uint8Array;
  release(): Promise<void>;
}

export class FeedError extends Error {}
export class ModelError extends Error {}
export class CheckpointError extends Error {}
export class LearningRateTableExhausted extends Error {}

export interface NpyArray {
  type: "float32" | "float16" | "float64" | "int64" | "int32" | "int8" | "uint8" | "bool";
  data: Float32Array | Uint16Array | Float64Array | BigInt64Array | Int32Array | Int8Array | Uint8Array;
  dims: number[];
}
export function readCheckpoint(bytes: Uint8Array | ArrayBuffer): Promise<{ arrays: Record<string, NpyArray>; meta: Record<string, unknown> }>;
export function writeCheckpoint(arrays: Record<string, NpyArray>, meta: Record<string, unknown>): Promise<Uint8Array>;
export const CHECKPOINT_FORMAT: string;
export const CONTRACT_KEY: string;
export const INFERENCE_GRAPH_KEY: string;
