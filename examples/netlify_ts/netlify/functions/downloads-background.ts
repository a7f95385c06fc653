// A Netlify background function in TypeScript. Its name ends in -background, so the
// runtime starts it without waiting for its answer, as Netlify answers its caller 202 at
// once. The request (the event's JSON body) carries `callback: {url, token}`: when the
// slow work is done the function POSTs its page there, with Authorization: Bearer <token>.
// What it returns is ignored, as on Netlify; a thrown error fails the sync at once.
//
// Set up:    cd examples/netlify_ts && npm install      (esbuild strips the types)
// Run it:    connector run downloads
// Then look: python ../show.py warehouse.duckdb
import type { Handler, HandlerEvent } from "@netlify/functions";

interface SyncRequest {
  state: { day?: string };
  callback: { url: string; token: string };
}

// Downloads per version and day, as a slow analytics query would tally them.
const DAYS = ["2025-03-20", "2025-03-21"];
const DOWNLOADS: Record<string, Record<string, number>> = {
  "2025-03-20": { "1.1.2": 1520, "1.2.0": 310 },
  "2025-03-21": { "1.1.2": 980, "1.2.0": 2240 },
};

async function tally(day: string): Promise<{ day: string; version: string; downloads: number }[]> {
  await new Promise((resolve) => setTimeout(resolve, 100)); // the slow part
  return Object.entries(DOWNLOADS[day]).map(([version, downloads]) => ({ day, version, downloads }));
}

export const handler: Handler = async (event: HandlerEvent) => {
  const request = JSON.parse(event.body ?? "{}") as SyncRequest;
  const day = DAYS.find((candidate) => candidate > (request.state.day ?? "")) ?? DAYS[0];
  const page = {
    state: { day },
    insert: { downloads: await tally(day) },
    schema: { downloads: { primary_key: ["day", "version"] } },
    hasMore: day !== DAYS.at(-1),
  };
  const { url, token } = request.callback;
  const response = await fetch(url, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(page),
  });
  if (!response.ok) {
    throw new Error(`the callback answered ${response.status}: ${await response.text()}`);
  }
};
