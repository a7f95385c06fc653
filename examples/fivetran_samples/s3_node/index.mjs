// Fivetran's S3 mode in Node.js, with the AWS SDK v3: each page's rows go to the S3 object
// the request names (`bucket`, `file`); the answer carries only the cursor, the schema and
// `hasMore`. For pages larger than the 6 MB an AWS Lambda answer can hold.
//
// Run it:  npm install        (AWS Lambda's Node.js runtimes already include the SDK)
//          set `bucket` in connectors.yaml (and `endpoint_url` for an S3-compatible store),
//          put AWS credentials in the environment, then: connector run
// The runtime reads each page's object after the call, writes its rows together with the
// page's state, and deletes the object.

import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';

// The region comes from the environment (AWS_REGION on Lambda). Run locally, the runtime
// sets AWS_ENDPOINT_URL_S3 to the config's endpoint_url, which the SDK reads; stores other
// than AWS's want path-style addresses.
const s3 = new S3Client({ forcePathStyle: Boolean(process.env.AWS_ENDPOINT_URL_S3) });
const TOTAL = 2500;
const PAGE_SIZE = 1000;

export const handler = async (event) => {
  const start = event.state.nextId ?? 1;
  const end = Math.min(start + PAGE_SIZE, TOTAL + 1);
  const events = [];
  for (let id = start; id < end; id += 1) {
    events.push({ id, kind: id % 3 ? 'view' : 'click', at: new Date(Date.UTC(2025, 4, 1, id % 24)).toISOString() });
  }
  const page = { insert: { events } };
  await s3.send(new PutObjectCommand({ Bucket: event.bucket, Key: event.file, Body: JSON.stringify(page) }));
  return {
    state: { nextId: end },
    schema: { events: { primary_key: ['id'] } },
    hasMore: end <= TOTAL,
  };
};
