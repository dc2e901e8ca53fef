// The GPU tests (`npm run test:gpu [-- pattern]`, on the GPU machine): the base config with the
// *.gpu.test.ts files instead of the CPU ones. The patterns live here and not on the command line,
// where jest's array options swallowed a following test-name pattern as one more ignore pattern.
import base from "./jest.config.js";

export default {
  ...base,
  testMatch: ["<rootDir>/test/**/*.gpu.test.ts"],
  testPathIgnorePatterns: ["/node_modules/"],
};
