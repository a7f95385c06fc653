// Fivetran's Node.js shape, `exports.handler = async (event) => ...`, with a string cursor.
//
// Run it:    cd examples/fivetran_samples/node_cursor && connector run   (Node.js 18 or later)
// Then look: python ../../show.py warehouse.duckdb
//
// The "API" is a feed of contact changes ordered by `modifiedAt`. Each call asks for the
// changes after the cursor, an ISO timestamp kept as a string in `state`, and sends the
// changed contacts; a contact changed twice arrives twice and is upserted by its id. A
// later sync finds nothing new and keeps the cursor.

const PAGE_SIZE = 3;
const CHANGES = [
  { id: 1, name: 'Ada', email: 'ada@example.com', modifiedAt: '2025-04-01T08:00:00.000Z' },
  { id: 2, name: 'Ben', email: 'ben@example.com', modifiedAt: '2025-04-01T09:30:00.000Z' },
  { id: 3, name: 'Cleo', email: 'cleo@example.com', modifiedAt: '2025-04-02T11:15:00.000Z' },
  { id: 2, name: 'Ben', email: 'ben@example.org', modifiedAt: '2025-04-03T16:45:00.000Z' },
  { id: 4, name: 'Dev', email: 'dev@example.com', modifiedAt: '2025-04-04T07:05:00.000Z' },
];

async function changesAfter(since) {
  return CHANGES.filter((change) => change.modifiedAt > since).slice(0, PAGE_SIZE);
}

exports.handler = async (event) => {
  const since = event.state.since || '1970-01-01T00:00:00.000Z';
  const contacts = await changesAfter(since);
  return {
    state: { since: contacts.length ? contacts[contacts.length - 1].modifiedAt : since },
    insert: { contacts },
    schema: { contacts: { primary_key: ['id'] } },
    hasMore: contacts.length === PAGE_SIZE,
  };
};
