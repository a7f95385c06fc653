// A Netlify function in TypeScript, called locally as Netlify calls it: the request is the
// JSON `body` of a HandlerEvent, and the page goes back as the `body` of the answer.
//
// Set up:    cd examples/netlify_ts && npm install      (esbuild strips the types)
// Run it:    connector run releases
// Then look: python ../show.py warehouse.duckdb
//
// `import type` needs nothing installed: @netlify/functions only lends its types.
import type { Handler, HandlerEvent, HandlerResponse } from "@netlify/functions";

interface SyncRequest {
  state: { after?: string };
  secrets: Record<string, unknown>;
  sync_id: string;
}

interface Release {
  version: string;
  publishedAt: string;
  yanked: boolean;
  notes: string;
}

const PAGE_SIZE = 3;
const RELEASES: Release[] = [
  { version: "1.0.0", publishedAt: "2025-01-10T09:00:00Z", yanked: false, notes: "First release" },
  { version: "1.1.0", publishedAt: "2025-02-03T14:30:00Z", yanked: false, notes: "Retries" },
  { version: "1.1.1", publishedAt: "2025-02-04T08:15:00Z", yanked: true, notes: "Broke retries" },
  { version: "1.1.2", publishedAt: "2025-02-05T10:00:00Z", yanked: false, notes: "Fixes 1.1.1" },
  { version: "1.2.0", publishedAt: "2025-03-20T16:45:00Z", yanked: false, notes: "TypeScript" },
];

export const handler: Handler = async (event: HandlerEvent): Promise<HandlerResponse> => {
  const request = JSON.parse(event.body ?? "{}") as SyncRequest;
  const after = request.state.after ?? "";
  const page = RELEASES.filter((release) => release.publishedAt > after).slice(0, PAGE_SIZE);
  const last = page.at(-1)?.publishedAt ?? after;
  return {
    statusCode: 200,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      state: { after: last },
      insert: { releases: page },
      schema: { releases: { primary_key: ["version"] } },
      hasMore: RELEASES.some((release) => release.publishedAt > last),
    }),
  };
};
