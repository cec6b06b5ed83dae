// Numbers, sizes and times as the pages show them; "—" for missing values.

const DASH = "—";
const isNum = (x) => typeof x === "number" && Number.isFinite(x);

export const pct = (x, digits = 1) => (isNum(x) ? `${(100 * x).toFixed(digits)}%` : DASH);
export const num = (x, digits = 4) => (isNum(x) ? Number(x.toPrecision(digits)).toString() : DASH);
export const int = (x) => (isNum(x) ? Math.round(x).toLocaleString("en-US") : DASH);

export function bytes(n) {
  if (!isNum(n)) return DASH;
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
}

export function seconds(s) {
  if (!isNum(s)) return DASH;
  if (s < 1) return `${(1000 * s).toFixed(s < 0.01 ? 2 : 0)} ms`;
  if (s < 90) return `${s.toFixed(1)} s`;
  if (s < 5400) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export function ago(iso, now = Date.now()) {
  if (!iso) return DASH;
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

export const datetime = (iso) => (iso ? new Date(iso).toLocaleString() : DASH);

export function duration(startIso, endIso) {
  if (!startIso) return DASH;
  const end = endIso ? Date.parse(endIso) : Date.now();
  return seconds((end - Date.parse(startIso)) / 1000);
}

export const shortId = (id) => (id ? id.slice(0, 8) : DASH);
