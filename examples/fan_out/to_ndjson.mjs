// A destination function: each synced contact arrives as one event, and is appended
// to contacts.ndjson. A real one would call an app's API, enrich the record, or put it
// on a queue; it answers a status, and 429 or 5xx make the runtime try again later.
import { appendFile } from "node:fs/promises";

const OUT = new URL("./contacts.ndjson", import.meta.url);

export const handler = async (event) => {
  const { data, context } = event;
  if (!data.id) {
    return { statusCode: 400, message: "a contact without an id" };
  }
  const line = { event_id: context.event_id, op: context.operation, ...data };
  await appendFile(OUT, JSON.stringify(line) + "\n");
  return { statusCode: 200, message: "appended" };
};
