// ESM TypeScript through ts-jest, transpile-only (`npm test` type-checks with tsc first).
export default {
  testEnvironment: "node",
  extensionsToTreatAsEsm: [".ts"],
  moduleNameMapper: { "^(\\.{1,2}/.*)\\.js$": "$1" },
  transform: { "^.+\\.ts$": ["ts-jest", { useESM: true }] },
  testMatch: ["<rootDir>/test/**/*.test.ts"],
  testPathIgnorePatterns: ["\\.gpu\\.test\\.ts$"],
  testTimeout: 120000,
  // engineers keep git worktrees under .wt/ (ignored): not part of this package
  modulePathIgnorePatterns: ["<rootDir>/.wt/"],
};
