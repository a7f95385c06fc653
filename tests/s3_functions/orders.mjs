// orders.py's twin in JavaScript, with the AWS SDK v3: each page's rows go to the S3
// object the request names, the answer carries the cursor, the schema and hasMore.
import { appendFileSync } from "node:fs";
import { PutObjectCommand, S3Client } from "@aws-sdk/client-s3";

const DAYS = ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"];
const END = "2024-01-04T00:00:00Z";
const LOG = new URL("./requests.jsonl", import.meta.url);
// the SDK reads AWS_ENDPOINT_URL_S3, which the runtime sets for its workers
const s3 = new S3Client({});

export const handler = async (request) => {
  const cursor = request.state.cursor ?? DAYS[0];
  const day = DAYS.indexOf(cursor);
  const { bucket, file, sync_id } = request;
  appendFileSync(LOG, JSON.stringify({ bucket, file, sync_id }) + "\n");

  const orders = [1, 2].map((n) => ({ id: day * 10 + n, amount: n * 2.5, placed: cursor }));
  const page = { insert: { orders }, delete: day === 1 ? { orders: [{ id: 1 }] } : {} };
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: file, Body: JSON.stringify(page) }));

  const following = day + 1 < DAYS.length ? DAYS[day + 1] : END;
  return {
    state: { cursor: following },
    schema: { orders: { primary_key: ["id"] } },
    hasMore: following !== END,
  };
};
