// A one-line progress bar for the CLI on a terminal; plain start/end lines elsewhere (CI logs).

export class Progress {
  private last = -1;
  private start = performance.now();
  constructor(
    private readonly label: string,
    private readonly write: (s: string) => void,
    private readonly tty = Boolean(process.stderr.isTTY),
  ) {
    if (!tty) write(`${label} …\n`);
  }
  /** fraction in [0, 1]; `detail` is shown after the bar */
  update(fraction: number, detail = ""): void {
    if (!this.tty) return;
    const pct = Math.floor(Math.max(0, Math.min(1, fraction)) * 100);
    if (pct === this.last && !detail) return;
    this.last = pct;
    const width = 28;
    const full = Math.round((pct / 100) * width);
    this.write(`\r${this.label} [${"#".repeat(full)}${"-".repeat(width - full)}] ${String(pct).padStart(3)}% ${detail}\x1b[K`);
  }
  done(detail = ""): void {
    const secs = ((performance.now() - this.start) / 1000).toFixed(2);
    if (this.tty) this.write(`\r${this.label} [${"#".repeat(28)}] 100% ${detail} (${secs} s)\x1b[K\n`);
    else this.write(`${this.label} done ${detail} (${secs} s)\n`);
  }
}

export { formatBytes } from "../ir/memory.js";
