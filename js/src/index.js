// adamax-onnx for JavaScript: train models built by adamax-onnx with onnxruntime-node or
// onnxruntime-web, one InferenceSession.run per step, the same numbers as Python.
export {
  TrainingSession,
  FeedError,
  ModelError,
  LearningRateTableExhausted,
  CONTRACT_KEY,
  INFERENCE_GRAPH_KEY,
} from "./session.js";
export { CheckpointError, readCheckpoint, writeCheckpoint, FORMAT as CHECKPOINT_FORMAT } from "./npz.js";
