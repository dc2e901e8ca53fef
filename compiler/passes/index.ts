// The passes Kiln ships, registered by name for pipeline strings ("cse,dce").

import { csePass } from "./cse.js";
import { dcePass } from "./dce.js";
import { fuseAttentionPass } from "./fuse-attention.js";
import { fuseElementwisePass } from "./fuse-elementwise.js";
import { fuseNormPass } from "./fuse-norm.js";
import { fuseResidualPass } from "./fuse-residual.js";
import { placementPass } from "./placement.js";
import { quantizeLinearPass } from "./quantize-linear.js";
import { unpadVarlenPass } from "./unpad-varlen.js";
import { registerPass } from "./manager.js";

export * from "./manager.js";
export { dce, dcePass } from "./dce.js";
export { cse, csePass } from "./cse.js";
export { fuseElementwise, fuseElementwisePass } from "./fuse-elementwise.js";
export { fuseAttention, fuseAttentionPass } from "./fuse-attention.js";
export { fuseNorm, fuseNormPass } from "./fuse-norm.js";
export { fuseResidual, fuseResidualPass } from "./fuse-residual.js";

registerPass(dcePass);
registerPass(csePass);
registerPass(fuseElementwisePass);
registerPass(fuseNormPass);
registerPass(fuseResidualPass);
registerPass(fuseAttentionPass);
registerPass(quantizeLinearPass);
registerPass(unpadVarlenPass);
registerPass(placementPass);
export { quantizeLinear, quantizeLinearPass } from "./quantize-linear.js";
export type { QuantOptions } from "./quantize-linear.js";
export { unpadVarlen, unpadVarlenPass } from "./unpad-varlen.js";
export { describePlacement, dimBounds, parseMaxMemory, parseSize, place, placementPass } from "./placement.js";
export type { DeviceBytes, MaxMemory, Placement, PlacementOptions } from "./placement.js";
