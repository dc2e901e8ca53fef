export * from "./cache.js";
export * from "./functional.js";
export * from "./layers.js";
export * from "./model.js";
export * from "./module.js";
export { arange, constant, full, scalar, Tensor } from "./tensor.js";
export type { TensorLike } from "./tensor.js";
export { codeFrame } from "./source.js";
