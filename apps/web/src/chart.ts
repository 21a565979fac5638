/**
 * A small canvas line chart for training curves: loss series on the left axis (auto-scaled), accuracy series
 * on the right axis (0–100 %). No dependency; redraws on every point and on resize (sharp on HiDPI screens).
 */
export interface Series {
  label: string;
  color: string;
  axis: 'loss' | 'accuracy';
  points: [step: number, value: number][];
  dashed?: boolean;
}

export class LineChart {
  private readonly series: Series[];

  constructor(
    private readonly canvas: HTMLCanvasElement,
    series: Omit<Series, 'points'>[],
    legend?: HTMLElement,
  ) {
    this.series = series.map((s) => ({ ...s, points: [] }));
    // The legend is HTML (wraps on narrow screens, readable by screen readers).
    legend?.replaceChildren(
      ...this.series.map((s) => {
        const item = document.createElement('li');
        const swatch = document.createElement('span');
        swatch.className = s.dashed ? 'swatch dashed' : 'swatch';
        swatch.style.borderColor = s.color;
        item.append(swatch, `${s.label} (${s.axis === 'loss' ? 'left axis' : 'right axis, %'})`);
        return item;
      }),
    );
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  add(label: string, step: number, value: number): void {
    const s = this.series.find((x) => x.label === label);
    if (!s) throw new Error(`no series '${label}'`);
    s.points.push([step, value]);
    this.draw();
  }

  clear(): void {
    for (const s of this.series) s.points = [];
    this.draw();
  }

  /** Points per series (the e2e test reads this through data attributes). */
  counts(): Record<string, number> {
    return Object.fromEntries(this.series.map((s) => [s.label, s.points.length]));
  }

  draw(): void {
    const c = this.canvas;
    const dpr = globalThis.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
    const g = c.getContext('2d')!;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = '11px system-ui, sans-serif';
    const pad = { l: 44, r: 40, t: 10, b: 22 };
    const pw = w - pad.l - pad.r;
    const ph = h - pad.t - pad.b;
    const all = this.series.flatMap((s) => s.points);
    const maxStep = Math.max(1, ...all.map((p) => p[0]));
    const losses = this.series.filter((s) => s.axis === 'loss').flatMap((s) => s.points.map((p) => p[1]));
    const maxLoss = losses.length ? Math.max(...losses) * 1.05 || 1 : 1;
    const x = (step: number) => pad.l + (step / maxStep) * pw;
    const y = (v: number, axis: Series['axis']) => pad.t + ph - (v / (axis === 'loss' ? maxLoss : 1)) * ph;

    // axes and grid
    g.strokeStyle = '#d5d9de';
    g.fillStyle = '#555';
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const yy = pad.t + (ph * i) / 4;
      g.beginPath();
      g.moveTo(pad.l, yy);
      g.lineTo(pad.l + pw, yy);
      g.stroke();
      g.textAlign = 'right';
      g.fillText((maxLoss * (1 - i / 4)).toPrecision(2), pad.l - 4, yy + 4);
      g.textAlign = 'left';
      g.fillText(`${100 - i * 25}%`, pad.l + pw + 4, yy + 4);
    }
    g.textAlign = 'center';
    g.fillText(`step ${maxStep}`, pad.l + pw, h - 6);
    g.fillText('0', pad.l, h - 6);

    // series
    for (const s of this.series) {
      if (!s.points.length) continue;
      g.strokeStyle = s.color;
      g.fillStyle = s.color;
      g.lineWidth = 2;
      g.setLineDash(s.dashed ? [5, 3] : []);
      g.beginPath();
      s.points.forEach(([st, v], i) => (i ? g.lineTo(x(st), y(v, s.axis)) : g.moveTo(x(st), y(v, s.axis))));
      g.stroke();
      if (s.points.length === 1 || s.dashed) for (const [st, v] of s.points) g.fillRect(x(st) - 2, y(v, s.axis) - 2, 4, 4);
    }
    g.setLineDash([]);
  }
}
